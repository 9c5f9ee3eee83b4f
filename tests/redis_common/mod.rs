//! Helpers for the tests that need a Redis: find the shared one at
//! 127.0.0.1:6379 (or skip), give each test its own key prefix, and run a
//! private `redis-server` that a test may kill and restart.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shared Redis every test may use (with its own prefix).
pub(crate) const SHARED: &str = "127.0.0.1:6379";

/// Whether a missing Redis (or `redis-server`) fails the test instead of
/// skipping it: CI sets `LONGPOLL_REQUIRE_REDIS=1`.
fn required() -> bool {
    std::env::var_os("LONGPOLL_REQUIRE_REDIS").is_some_and(|v| v == "1")
}

fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: {why}, and LONGPOLL_REQUIRE_REDIS=1 requires it"
    );
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Whether a Redis answers `PING` at `addr` within half a second.
pub(crate) fn answers(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The URL of the shared Redis, or `None` (after printing why) if it does
/// not answer.
pub(crate) fn shared_redis(test: &str) -> Option<String> {
    if answers(SHARED) {
        Some(format!("redis://{SHARED}/"))
    } else {
        skip(test, &format!("no Redis answers at {SHARED}"));
        None
    }
}

/// A key prefix no other test (in this run or another) uses.
pub(crate) fn unique_prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "longpoll-test:{test}:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under `prefix` (best effort), so that the shared Redis
/// does not fill up with test data.
pub(crate) async fn delete_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Runs one command on the Redis at `url`.
pub(crate) async fn command<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(url).expect("valid url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers");
    cmd.query_async(&mut conn).await.expect("command succeeds")
}

/// A private `redis-server` on a free port, that a test may kill, restart,
/// put to sleep (`DEBUG` is enabled) and restore from an older RDB file.
/// Without persistence unless started with [`OwnRedis::start_with`]. Killed
/// on drop, its directory removed.
pub(crate) struct OwnRedis {
    port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
    persistent: bool,
}

impl OwnRedis {
    /// Starts one, or returns `None` (after printing why) if `redis-server`
    /// cannot be run.
    pub(crate) fn start(test: &str) -> Option<OwnRedis> {
        Self::start_with(test, false)
    }

    /// As [`start`](Self::start), with `appendonly yes` and
    /// `appendfsync always` when `persistent`: a restart keeps every write.
    pub(crate) fn start_with(test: &str, persistent: bool) -> Option<OwnRedis> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("longpoll-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut redis = OwnRedis {
            port,
            child: None,
            dir,
            persistent,
        };
        match redis.spawn() {
            Ok(()) => Some(redis),
            Err(why) => {
                skip(test, &why);
                None
            }
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", "always", "--enable-debug-command", "yes"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if answers(&self.addr()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// Kills the server at once (SIGKILL): its data is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port: empty, or with every
    /// write if persistent, or from the RDB file if one was put in place.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn().expect("redis-server restarts");
    }

    /// Blocks the server for `seconds` (`DEBUG SLEEP`), as a slow script
    /// would; returns once it answers again.
    pub(crate) async fn sleep(&self, seconds: f64) {
        let addr = self.addr();
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).expect("redis answers");
            write!(s, "DEBUG SLEEP {seconds}\r\n").expect("the command is sent");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("redis wakes up");
            assert_eq!(&buf, b"+OK\r\n");
        })
        .await
        .expect("the sleeper finishes");
    }

    /// Writes an RDB snapshot now (`SAVE`) and returns its bytes, or `None`
    /// if Redis refused (a background save in progress, say).
    pub(crate) async fn snapshot(&self) -> Option<Vec<u8>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let saved: redis::RedisResult<()> = redis::cmd("SAVE").query_async(&mut conn).await;
        saved.ok()?;
        std::fs::read(self.dir.join("dump.rdb")).ok()
    }

    /// Kills the server and starts it again from `rdb` (an older
    /// [`snapshot`](Self::snapshot)), as after a restore from backup.
    pub(crate) fn restore(&mut self, rdb: &[u8]) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        std::fs::write(self.dir.join("dump.rdb"), rdb).expect("the snapshot is put back");
        let persistent = std::mem::replace(&mut self.persistent, false);
        self.spawn()
            .expect("redis-server restarts from the snapshot");
        self.persistent = persistent;
        if persistent {
            // From here on, every write is kept again.
            let mut s = TcpStream::connect(self.addr()).expect("redis answers");
            s.write_all(b"CONFIG SET appendonly yes\r\n").expect("sent");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("answered");
        }
    }

    /// Kills the server and starts it again with no data at all, as a
    /// restart without persistence.
    pub(crate) fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.spawn().expect("redis-server restarts");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
