//! A small WebDriver client for Debian's `chromium` driven by `chromedriver`.
//!
//! Just the W3C WebDriver commands the browser tests use, as JSON over HTTP to
//! a `chromedriver` that this module starts on a free loopback port. Each
//! [`Session`] is its own headless chromium with a fresh profile, so two
//! sessions are two visitors with separate cookies.
//!
//! Cleanup does not depend on the test finishing: `chromedriver` runs in its
//! own process group, and dropping the [`ChromeDriver`] (also while a failed
//! assertion unwinds) kills that group, chromium included, and removes the
//! temporary profiles.

use std::fmt;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Where Debian's `chromium` package puts the browser; `LONGPOLL_CHROMIUM`
/// overrides it.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts the driver;
/// `LONGPOLL_CHROMEDRIVER` overrides it.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn chromium() -> PathBuf {
    std::env::var_os("LONGPOLL_CHROMIUM").map_or_else(|| CHROMIUM.into(), PathBuf::from)
}

fn chromedriver() -> PathBuf {
    std::env::var_os("LONGPOLL_CHROMEDRIVER").map_or_else(|| CHROMEDRIVER.into(), PathBuf::from)
}

/// How long `chromedriver` may take to start listening.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for any single WebDriver command (starting chromium included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`wait_until`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A failed WebDriver command or wait, with what was being done.
#[derive(Debug)]
pub(crate) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Result of a WebDriver call.
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Why one attempt to start chromedriver failed.
enum StartError {
    /// It exited before listening: worth another try.
    Exited(Error),
    Other(Error),
}

impl From<Error> for StartError {
    fn from(e: Error) -> Self {
        StartError::Other(e)
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// Passes with a note, or fails under `LONGPOLL_REQUIRE_BROWSER=1`.
pub(crate) fn skip(reason: &str) {
    use std::io::Write as _;

    if std::env::var_os("LONGPOLL_REQUIRE_BROWSER").is_some_and(|v| v == "1") {
        panic!("LONGPOLL_REQUIRE_BROWSER=1, but the browser test cannot run: {reason}");
    }
    // Straight to stderr rather than `eprintln!`, which the test harness
    // captures and hides for a passing test.
    let _ = writeln!(std::io::stderr(), "skipped: browser test: {reason}");
}

/// Whether the browser tests can run here: `Ok(())` if both binaries exist,
/// otherwise the reason they cannot.
pub(crate) fn browser_available() -> std::result::Result<(), String> {
    for path in [chromium(), chromedriver()] {
        if !path.exists() {
            return Err(format!(
                "{} not found (install the Debian packages chromium and chromium-driver)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A running `chromedriver`; dropping it kills the driver and every browser
/// it started, and removes their profiles.
pub(crate) struct ChromeDriver {
    child: Child,
    base: String,
    http: reqwest::Client,
    /// Temporary directory holding one profile per session, and the
    /// browser's config and cache directories.
    scratch: PathBuf,
    profiles: AtomicUsize,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free loopback port and waits until it
    /// listens.
    ///
    /// chromedriver picks its port itself (`--port=0`) and now and then
    /// exits at once with "bind() failed: Address already in use" (its IPv4
    /// and IPv6 listeners race other processes for the same number): such a
    /// start is tried again, up to three times in all.
    pub(crate) fn start() -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Err(StartError::Exited(e)) if attempt < 3 => {
                    eprintln!("chromedriver exited at start ({e}); trying again");
                    attempt += 1;
                }
                Err(StartError::Exited(e) | StartError::Other(e)) => return Err(e),
                Ok(driver) => return Ok(driver),
            }
        }
    }

    fn start_once() -> std::result::Result<Self, StartError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let scratch =
            std::env::temp_dir().join(format!("longpoll-browser-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&scratch)
            .map_err(|e| err(format!("cannot create {}: {e}", scratch.display())))?;

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| err(format!("http client: {e}")))?;
        let driver_path = chromedriver();
        let spawned = Command::new(&driver_path)
            .arg("--port=0")
            // Its own process group, so that Drop can end chromium too.
            .process_group(0)
            // Keep chromium's crash database and caches out of $HOME.
            .env("XDG_CONFIG_HOME", scratch.join("config"))
            .env("XDG_CACHE_HOME", scratch.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(err(format!("cannot start {}: {e}", driver_path.display())).into());
            }
        };

        // chromedriver prints "... started successfully on port N." once it
        // listens. A thread reads its stdout (to the end, so the pipe never
        // fills) and reports the port.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(port) = parse_port(&line) {
                    let _ = tx.send(port);
                }
            }
        });
        // From here on, dropping `driver` cleans up.
        let mut driver = ChromeDriver {
            child,
            base: String::new(),
            http,
            scratch,
            profiles: AtomicUsize::new(0),
        };
        let port = rx.recv_timeout(DRIVER_START_TIMEOUT).map_err(|e| match e {
            // The reader thread ended: chromedriver closed its stdout,
            // that is, it exited without listening.
            mpsc::RecvTimeoutError::Disconnected => StartError::Exited(err(format!(
                "{} exited before it reported a port",
                driver_path.display()
            ))),
            mpsc::RecvTimeoutError::Timeout => StartError::Other(err(format!(
                "{} did not report a port within {DRIVER_START_TIMEOUT:?}",
                driver_path.display()
            ))),
        })?;
        driver.base = format!("http://127.0.0.1:{port}");
        Ok(driver)
    }

    /// Starts a headless chromium with a fresh profile and a window of the
    /// given size in CSS pixels.
    pub(crate) async fn new_session(&self, width: u32, height: u32) -> Result<Session<'_>> {
        let n = self.profiles.fetch_add(1, Ordering::Relaxed);
        let profile = self.scratch.join(format!("profile-{n}"));
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            // Containers often have a tiny /dev/shm.
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chromium(), "args": args },
                }
            }
        });
        let value = self
            .command(
                reqwest::Method::POST,
                "/session".to_owned(),
                Some(capabilities),
            )
            .await?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| err(format!("new session: no sessionId in {value}")))?
            .to_owned();
        Ok(Session { driver: self, id })
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let what = format!("{method} {path}");
        let response = request
            .send()
            .await
            .map_err(|e| err(format!("{what}: {e}")))?;
        let status = response.status();
        let mut answer: Value = response
            .json()
            .await
            .map_err(|e| err(format!("{what}: {status}, body is not JSON: {e}")))?;
        if !status.is_success() {
            return Err(err(format!(
                "{what}: {status} {} {}",
                answer["value"]["error"], answer["value"]["message"]
            )));
        }
        Ok(answer["value"].take())
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group's id is the driver's pid; chromium and its helpers are in
        // it. `kill -KILL -PGID` signals the whole group.
        let pgid = self.child.id();
        let _ = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("kill -KILL -{pgid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.scratch).is_ok() || !self.scratch.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn parse_port(line: &str) -> Option<u16> {
    let rest = line.split("started successfully on port ").nth(1)?;
    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// One browser: a WebDriver session with its own chromium and profile.
pub(crate) struct Session<'d> {
    driver: &'d ChromeDriver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.id);
        self.driver.command(method, path, body).await
    }

    /// Opens `url` and waits for the page to load.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Reloads the page and waits for it to load.
    pub(crate) async fn refresh(&self) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/refresh", Some(json!({})))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub(crate) async fn execute(&self, script: &str, args: Value) -> Result<Value> {
        let body = json!({ "script": script, "args": args });
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    async fn element(&self, css: &str) -> Result<String> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self
            .cmd(reqwest::Method::POST, "/element", Some(body))
            .await?;
        value[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| err(format!("find {css}: no element reference in {value}")))
    }

    /// The rendered text of the element matching `css`.
    pub(crate) async fn text(&self, css: &str) -> Result<String> {
        let id = self.element(css).await?;
        let value = self
            .cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| err(format!("text of {css}: not a string: {value}")))
    }

    /// Whether the element matching `css` is displayed.
    pub(crate) async fn displayed(&self, css: &str) -> Result<bool> {
        let id = self.element(css).await?;
        let value = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{id}/displayed"),
                None,
            )
            .await?;
        value
            .as_bool()
            .ok_or_else(|| err(format!("displayed {css}: not a bool: {value}")))
    }

    /// Whether the element matching `css` is enabled.
    pub(crate) async fn enabled(&self, css: &str) -> Result<bool> {
        let id = self.element(css).await?;
        let value = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{id}/enabled"),
                None,
            )
            .await?;
        value
            .as_bool()
            .ok_or_else(|| err(format!("enabled {css}: not a bool: {value}")))
    }

    /// Clicks the element matching `css` as a user would (it must be
    /// displayed and enabled).
    pub(crate) async fn click(&self, css: &str) -> Result<()> {
        let id = self.element(css).await?;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot_png(&self) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let value = self.cmd(reqwest::Method::GET, "/screenshot", None).await?;
        let encoded = value
            .as_str()
            .ok_or_else(|| err("screenshot: not a string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| err(format!("screenshot: bad base64: {e}")))
    }

    /// Ends the session and its chromium.
    pub(crate) async fn quit(self) -> Result<()> {
        self.cmd(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

/// Asks `probe` every 50 ms until it reports success, for at most `timeout`.
///
/// `probe` returns `Ok(Ok(value))` when done, `Ok(Err(what_it_saw))` to keep
/// waiting, and `Err(_)` when a WebDriver command failed, which ends the wait
/// at once. Running out of time is an error naming `what` and the last thing
/// the probe saw.
pub(crate) async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await? {
            Ok(found) => return Ok(found),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(err(format!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
