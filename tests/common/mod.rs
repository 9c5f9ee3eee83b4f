//! Helpers for the shopping-cart tests: the example's server started in
//! this process, or the example's binary started as a child process.
//!
//! Most tests run the server in-process: the example's own files are
//! compiled into the test (`#[path]` below), and its `serve` function is
//! called on a `127.0.0.1:0` listener with a shutdown future the test
//! controls. That is the code the binary runs, minus the flag parsing and
//! the signal handler, and it needs no build step. The tests of those two
//! (the first stdout line, SIGTERM, the exit) start the real binary, built by
//! [`example_binary`].
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../../examples/shopping_cart/main.rs"]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod shopping_cart;

pub(crate) use shopping_cart::App;

/// The example's server, running in this process.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts the server with these flags (as on the command line; `--addr`
    /// is always `127.0.0.1:0`).
    pub(crate) async fn start(flags: &[&str]) -> Server {
        let args = shopping_cart::Args::try_parse_from(
            ["shopping_cart", "--addr", "127.0.0.1:0"]
                .iter()
                .chain(flags),
        )
        .expect("valid flags");
        let listener = TcpListener::bind(args.addr)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let app = args.app();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(shopping_cart::serve_with(
            listener,
            Arc::clone(&app),
            args.limits(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            app,
            shutdown: Some(tx),
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the graceful shutdown; the returned handle ends when `serve`
    /// has returned.
    pub(crate) fn shutdown(mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
    }
}

/// A client that never uses a proxy and opens as many connections as asked.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The JSON body of a response, asserting the status first.
pub(crate) async fn json(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(
        resp.status().as_u16(),
        status,
        "unexpected status for {}",
        resp.url()
    );
    resp.json().await.expect("a JSON body")
}

/// `POST /cart` the way a browser form (and jQuery) sends it.
pub(crate) async fn post_cart(
    client: &reqwest::Client,
    server: &Server,
    session: &str,
    action: &str,
) -> reqwest::Response {
    client
        .post(server.url("/cart"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(format!("session={session}&action={action}"))
        .send()
        .await
        .expect("POST /cart")
}

/// `GET /stats`.
pub(crate) async fn stats(client: &reqwest::Client, server: &Server) -> serde_json::Value {
    json(client.get(server.url("/stats")).send().await.unwrap(), 200).await
}

/// The example's binary, built once per test process with the features this
/// test was built with (a no-op when it is up to date).
pub(crate) fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // This test runs from target/<profile>/deps/.
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let profile = profile_dir.file_name().unwrap().to_str().unwrap();
            let profile = if profile == "debug" { "dev" } else { profile };
            let mut features = vec!["http"];
            if cfg!(feature = "redis") {
                features.push("redis");
            }
            if cfg!(feature = "tokio") {
                features.push("tokio");
            }
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--example", "shopping_cart"])
                .args(["--profile", profile, "--no-default-features"])
                .args(["--features", &features.join(",")])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building the shopping_cart example failed"
            );
            profile_dir.join("examples").join("shopping_cart")
        })
        .clone()
}

/// The binary, started with these flags on `127.0.0.1:0`; returns the child
/// and the address it printed on its first line.
pub(crate) fn spawn_binary(flags: &[&str]) -> (Child, String) {
    use std::io::{BufRead, BufReader};

    let mut child = Command::new(example_binary())
        .args(["--addr", "127.0.0.1:0"])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the example starts");
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .trim_end()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first stdout line is {first:?}"))
        .to_owned();
    (child, addr)
}
