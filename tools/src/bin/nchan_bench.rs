//! The shopping cart against nginx + Nchan (and the `raw_fanout` floor),
//! side by side in one run: each server started fresh on a free port,
//! driven by the same `loadgen`, stopped, and the next one started; the
//! order rotates between runs. Prints each server's figures (medians over
//! `--rounds` rounds) and their ratios to Nchan's in the same run.
//!
//! ```text
//! cargo build --release --example shopping_cart
//! cargo build --release -p longpoll-tools
//! target/release/nchan_bench --polls 10000,19000
//! # the build with every feature as a second cart:
//! cp target/release/examples/shopping_cart target/release/shopping_cart_default
//! cargo build --release --all-features --example shopping_cart
//! target/release/nchan_bench --cart target/release/shopping_cart_default \
//!     --cart-all target/release/examples/shopping_cart
//! ```
//!
//! nginx runs as a child process (not a daemon) with a prefix directory of
//! its own under the system's temporary directory, from
//! `tools/nchan/nginx.conf` with `NCHAN_LISTEN` replaced by its address; its
//! workers' memory and CPU time are summed (`loadgen --children-of`). Needs
//! Debian's `nginx` and `libnginx-mod-nchan`. Only loopback addresses are
//! used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use longpoll_tools::client::Result;

#[derive(Parser, Debug)]
#[command(about = "The shopping cart against nginx + Nchan and raw_fanout, in one run")]
struct Args {
    /// Held polls, one measurement each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,19000")]
    polls: Vec<usize>,
    /// Rounds per mode, per server start.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How many times the whole comparison is repeated (the order of the
    /// servers rotates); the figures are the medians over runs.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The shopping_cart binary.
    #[arg(long, default_value = "target/release/examples/shopping_cart")]
    cart: PathBuf,
    /// A second shopping_cart binary, built with every feature.
    #[arg(long)]
    cart_all: Option<PathBuf>,
    /// Flags for both shopping_cart binaries (one string, split at spaces).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    cart_flags: String,
    /// The raw_fanout binary (`--core minimal`); `none` leaves it out.
    #[arg(long, default_value = "target/release/raw_fanout")]
    raw: String,
    /// The loadgen binary (default: next to this one).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// nginx.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// The nginx configuration with `NCHAN_LISTEN` in it.
    #[arg(long, default_value = "tools/nchan/nginx.conf")]
    nginx_conf: PathBuf,
    /// Leave nginx out (measure the carts alone).
    #[arg(long)]
    no_nchan: bool,
}

/// One server under test.
#[derive(Clone, Debug)]
enum Server {
    Nchan,
    Cart { label: &'static str, path: PathBuf },
    Raw(PathBuf),
}

impl Server {
    fn label(&self) -> &'static str {
        match self {
            Server::Nchan => "nginx + Nchan",
            Server::Cart { label, .. } => label,
            Server::Raw(_) => "raw_fanout (minimal)",
        }
    }
}

/// A started server: its process, where it listens, and what loadgen
/// should measure.
struct Running {
    child: Child,
    addr: SocketAddr,
    loadgen_args: Vec<String>,
    /// nginx's prefix directory, removed at the end.
    prefix: Option<PathBuf>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Reads `listening on http://ADDR` from the first line of `child`'s stdout.
fn listening_addr(child: &mut Child) -> Result<SocketAddr> {
    let mut first = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut first)?;
    Ok(first
        .trim_end()
        .strip_prefix("listening on http://")
        .ok_or_else(|| format!("first stdout line is {first:?}"))?
        .parse()?)
}

fn start(server: &Server, args: &Args) -> Result<Running> {
    match server {
        Server::Cart { path, .. } => {
            let mut child = Command::new(path)
                .args(["--addr", "127.0.0.1:0"])
                .args(args.cart_flags.split_whitespace())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let addr = listening_addr(&mut child)?;
            let pid = child.id().to_string();
            Ok(Running {
                child,
                addr,
                loadgen_args: vec!["--pid".into(), pid],
                prefix: None,
            })
        }
        Server::Raw(path) => {
            let mut child = Command::new(path)
                .args(["--addr", "127.0.0.1:0", "--core", "minimal"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let addr = listening_addr(&mut child)?;
            let pid = child.id().to_string();
            Ok(Running {
                child,
                addr,
                loadgen_args: vec!["--pid".into(), pid],
                prefix: None,
            })
        }
        Server::Nchan => {
            let port = free_port()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let prefix =
                std::env::temp_dir().join(format!("longpoll-nchan-{}-{port}", std::process::id()));
            std::fs::create_dir_all(prefix.join("tmp"))?;
            let conf = std::fs::read_to_string(&args.nginx_conf)
                .map_err(|e| format!("{}: {e}", args.nginx_conf.display()))?
                .replace("NCHAN_LISTEN", &addr.to_string());
            std::fs::write(prefix.join("nginx.conf"), conf)?;
            let mut p = prefix.clone().into_os_string();
            p.push("/");
            let child = Command::new(&args.nginx)
                .arg("-p")
                .arg(&p)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .arg("-e")
                .arg(prefix.join("error.log"))
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("{}: {e}", args.nginx.display()))?;
            // Up once it accepts connections and has its workers.
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).is_err()
                || longpoll_tools::procfs::children_of(child.id()).is_empty()
            {
                if Instant::now() > deadline {
                    return Err("nginx did not start within 10 s (see its error.log)".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let pid = child.id().to_string();
            Ok(Running {
                child,
                addr,
                loadgen_args: vec![
                    "--target".into(),
                    "nchan".into(),
                    "--children-of".into(),
                    pid,
                ],
                prefix: Some(prefix),
            })
        }
    }
}

fn stop(mut running: Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = running.child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = running.child.kill();
            let _ = running.child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(prefix) = running.prefix {
        let _ = std::fs::remove_dir_all(prefix);
    }
}

/// One loadgen run against `running`; its summary line's JSON.
fn measure(
    running: &Running,
    polls: usize,
    args: &Args,
    loadgen: &PathBuf,
) -> Result<serde_json::Value> {
    let out = Command::new(loadgen)
        .arg("--url")
        .arg(format!("http://{}", running.addr))
        .args(["--polls", &polls.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--mode", "both", "--summary"])
        .args(&running.loadgen_args)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("loadgen failed:\n{stdout}").into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .ok_or("loadgen printed no summary")?;
    Ok(serde_json::from_str(line)?)
}

/// The figures compared, with how to read each from a summary.
const FIGURES: &[(&str, &str, &str)] = &[
    ("fan-out immediate ms", "immediate", "last_ms"),
    ("fan-out deferred ms", "deferred", "last_ms"),
    ("server CPU immediate ms", "immediate", "server_cpu_ms"),
    ("server CPU deferred ms", "deferred", "server_cpu_ms"),
    ("RSS/poll first hold B", "", "rss_per_poll_first_hold"),
    ("RSS/poll after immediate B", "immediate", "rss_per_poll"),
    ("RSS/poll after deferred B", "deferred", "rss_per_poll"),
];

fn figure(summary: &serde_json::Value, mode: &str, key: &str) -> Option<f64> {
    let v = if mode.is_empty() {
        &summary[key]
    } else {
        &summary[mode][key]
    };
    v.as_f64()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

fn run(args: &Args) -> Result<()> {
    let loadgen = match &args.loadgen {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("loadgen"),
    };
    let mut servers = Vec::new();
    if !args.no_nchan {
        servers.push(Server::Nchan);
    }
    servers.push(Server::Cart {
        label: "shopping_cart",
        path: args.cart.clone(),
    });
    if let Some(path) = &args.cart_all {
        servers.push(Server::Cart {
            label: "shopping_cart (all features)",
            path: path.clone(),
        });
    }
    if args.raw != "none" {
        servers.push(Server::Raw(PathBuf::from(&args.raw)));
    }
    for &polls in &args.polls {
        // label -> figure -> one value per run
        let mut results: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
        for r in 0..args.runs {
            let mut order = servers.clone();
            order.rotate_left(r % servers.len());
            for server in &order {
                eprintln!(
                    "nchan_bench: {polls} polls, run {}: {}",
                    r + 1,
                    server.label()
                );
                let running = start(server, args)?;
                let outcome = measure(&running, polls, args, &loadgen);
                stop(running);
                let summary = outcome?;
                let entry = results.entry(server.label()).or_default();
                for &(name, mode, key) in FIGURES {
                    if let Some(v) = figure(&summary, mode, key) {
                        entry.entry(name).or_default().push(v);
                    }
                }
                eprintln!("  {summary}");
            }
        }
        print_table(polls, args, &servers, &results);
    }
    Ok(())
}

fn print_table(
    polls: usize,
    args: &Args,
    servers: &[Server],
    results: &BTreeMap<&str, BTreeMap<&str, Vec<f64>>>,
) {
    println!(
        "\n{polls} held polls, median over {} rounds x {} runs; in brackets the ratio to nginx + Nchan",
        args.rounds, args.runs
    );
    let nchan = results.get(Server::Nchan.label());
    print!("| {:<28}", "server");
    for &(name, _, _) in FIGURES {
        print!(" | {name}");
    }
    println!(" |");
    print!("|{}", "-".repeat(30));
    for _ in FIGURES {
        print!("|---");
    }
    println!("|");
    for server in servers {
        let Some(figures) = results.get(server.label()) else {
            continue;
        };
        print!("| {:<28}", server.label());
        for &(name, _, _) in FIGURES {
            let value = figures.get(name).cloned().and_then(median);
            let base = nchan.and_then(|n| n.get(name)).cloned().and_then(median);
            match (value, base) {
                (Some(v), Some(b)) if b > 0.0 && !matches!(server, Server::Nchan) => {
                    print!(" | {v:.0} ({:.2})", v / b)
                }
                (Some(v), _) => print!(" | {v:.0}"),
                (None, _) => print!(" | -"),
            }
        }
        println!(" |");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nchan_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
