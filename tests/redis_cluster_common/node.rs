//! One `redis-server` of the cluster, as a child process.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(super) struct Node {
    pub(super) port: u16,
    pub(super) bus_port: u16,
    pub(super) dir: PathBuf,
    pub(super) child: Option<Child>,
}

impl Node {
    pub(super) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(super) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(super) fn spawn(&mut self, node_timeout: Duration) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create node dir: {e}"))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--cluster-node-timeout",
                &node_timeout.as_millis().to_string(),
            ])
            // A replica takes over however long its link was down.
            .args(["--cluster-replica-validity-factor", "0"])
            // A master left without replica keeps none taken from another.
            .args(["--cluster-allow-replica-migration", "no"])
            // Replicas sync at once, not after the 5 s default delay.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--logfile", "redis.log"])
            .args(["--daemonize", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process exited (a port taken by someone else, say).
    pub(super) fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(super) fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Why the tools cannot run here, if they cannot.
pub(super) fn missing_tools() -> Option<String> {
    let version = |tool: &str| -> Result<String, String> {
        let out = Command::new(tool)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let server = match version("redis-server") {
        Ok(v) => v,
        Err(why) => return Some(why),
    };
    if let Err(why) = version("redis-cli") {
        return Some(why);
    }
    // "Redis server v=7.0.15 sha=..."
    let major = server
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= 7 => None,
        _ => Some(format!(
            "a cluster with sharded Pub/Sub needs redis-server 7 or later, found {:?}",
            server.trim()
        )),
    }
}

/// `n` distinct free loopback ports.
pub(super) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}
