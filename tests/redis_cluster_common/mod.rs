//! A private Redis Cluster for the tests that need one: three masters and
//! three replicas on free loopback ports, run as child processes of the
//! test and torn down when the [`Cluster`] is dropped (processes killed,
//! directories removed), also when the test panics.
//!
//! [`Cluster::start`] spawns six `redis-server --cluster-enabled yes`, joins
//! them with `redis-cli --cluster create ... --cluster-replicas 1`, and
//! returns once every node reports `cluster_state:ok`, every node sees the
//! same masters owning the same slots, and every replica is in sync with
//! its master. The helpers then tell which master owns a key or slot,
//! find hash tags that land on each shard, kill a master and wait for its
//! replica to take over ([`Cluster::kill_master`]), bring a killed node back
//! ([`Cluster::restart`]), and move a slot with its keys from one master to
//! another while clients keep using it ([`Cluster::move_slot`], or step by
//! step with [`Cluster::begin_migration`]).
//!
//! Without `redis-server` 7 or `redis-cli` the test is skipped with a
//! message on stderr, unless `LONGPOLL_REQUIRE_REDIS=1` (CI), which turns the
//! skip into a failure.
//!
//! Every node runs with `--enable-debug-command yes`, so a test may use
//! `DEBUG SLEEP` on it.

#![allow(dead_code)] // each test file uses its own subset

mod migration;
mod node;
pub(crate) mod sequence;
mod topology;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::FromRedisValue;

#[allow(unused_imports)] // named by the tests that step through a migration
pub(crate) use migration::Migration;
use node::{free_ports, missing_tools, Node};
use topology::{parse_nodes, shards_of};
#[allow(unused_imports)] // each test file uses its own subset
pub(crate) use topology::{slot_of, tag_for_slot, Shard};

/// `cluster-node-timeout` of the test clusters: how long a master may be
/// unreachable before the others mark it failed. Short, so that a failover
/// takes about two seconds; long enough that a busy 2-core machine never
/// fails a healthy node over.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// How long the cluster may take to come up, fail over or settle after a
/// change before the harness gives up (and panics with the nodes' state).
const SETTLE: Duration = Duration::from_secs(30);

/// How often the harness polls the nodes while it waits.
const POLL: Duration = Duration::from_millis(20);

/// Whether a missing `redis-server` or `redis-cli` fails the test instead of
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

/// What [`Cluster::kill_master`] did.
#[derive(Clone, Debug)]
pub(crate) struct Failover {
    /// The address of the killed master.
    pub(crate) killed: String,
    /// The shard as it is now, with the promoted replica as its master.
    pub(crate) shard: Shard,
    /// From the kill to a cluster in agreement and `ok` again.
    pub(crate) took: Duration,
}

/// A running test cluster; dropping it kills every node and removes their
/// directories.
pub(crate) struct Cluster {
    root: PathBuf,
    nodes: Vec<Node>,
    node_timeout: Duration,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Cluster {
    /// Starts a cluster of three masters with one replica each, or returns
    /// `None` (after printing why) if `redis-server` 7+ and `redis-cli` are
    /// not there.
    ///
    /// # Panics
    ///
    /// If the tools are missing and `LONGPOLL_REQUIRE_REDIS=1`, or if the
    /// cluster does not come up (with the nodes' state and logs).
    pub(crate) async fn start(test: &str) -> Option<Cluster> {
        Self::start_with(test, NODE_TIMEOUT).await
    }

    /// As [`start`](Self::start), with another `cluster-node-timeout`.
    pub(crate) async fn start_with(test: &str, node_timeout: Duration) -> Option<Cluster> {
        if let Some(why) = missing_tools() {
            skip(test, &why);
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let root = std::env::temp_dir().join(format!(
            "longpoll-cluster-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cluster = Cluster {
            root,
            nodes: Vec::new(),
            node_timeout,
        };
        // A port may be taken between choosing and binding it: try again
        // with other ports.
        let mut last = String::new();
        for _ in 0..3 {
            match cluster.spawn_nodes().await {
                Ok(()) => {
                    cluster.create().await;
                    cluster.wait_ready().await;
                    return Some(cluster);
                }
                Err(why) => {
                    for node in &mut cluster.nodes {
                        node.kill();
                    }
                    cluster.nodes.clear();
                    let _ = std::fs::remove_dir_all(&cluster.root);
                    last = why;
                }
            }
        }
        panic!("{test}: the cluster's nodes did not start: {last}");
    }

    async fn spawn_nodes(&mut self) -> Result<(), String> {
        let ports = free_ports(12);
        for i in 0..6 {
            let mut node = Node {
                port: ports[i],
                bus_port: ports[6 + i],
                dir: self.root.join(format!("node-{i}")),
                child: None,
            };
            let spawned = node.spawn(self.node_timeout);
            self.nodes.push(node);
            spawned?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..6 {
            loop {
                let addr = self.nodes[i].addr();
                if query::<String>(&addr, &redis::cmd("PING")).await.is_ok() {
                    break;
                }
                if self.nodes[i].exited() {
                    return Err(format!(
                        "redis-server on port {} exited: {}",
                        self.nodes[i].port,
                        self.nodes[i].log_tail(5)
                    ));
                }
                if Instant::now() > deadline {
                    return Err(format!("redis-server on {addr} does not answer"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// `redis-cli --cluster create`: the first three nodes become masters,
    /// each of the others a replica of one of them.
    async fn create(&self) {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(node.addr());
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(SETTLE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("redis-cli --cluster create did not finish"))
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn wait_ready(&self) {
        self.settle("the cluster comes up", |shards| {
            shards.len() == 3 && shards.iter().all(|s| s.replicas.len() == 1)
        })
        .await;
        // And the replicas hold their master's data, so that a failover
        // loses nothing written before it.
        let deadline = Instant::now() + SETTLE;
        for shard in self.shards().await {
            for replica in &shard.replicas {
                loop {
                    let info: String = query(replica, redis::cmd("INFO").arg("replication"))
                        .await
                        .unwrap_or_default();
                    if info.contains("master_link_status:up") {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica {replica} never synced:\n{info}"
                    );
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// The directory under which every node keeps its config and log.
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The `cluster-node-timeout` the nodes run with.
    pub(crate) fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The addresses (`127.0.0.1:port`) of the nodes that are running.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(Node::addr)
            .collect()
    }

    /// The URLs (`redis://127.0.0.1:port/`) of the running nodes: seeds for
    /// a cluster client.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.addrs()
            .iter()
            .map(|a| format!("redis://{a}/"))
            .collect()
    }

    /// The shards (masters and their slots) as the running nodes agree on
    /// them, ordered by slot. Call after the cluster settled (every helper
    /// returns settled).
    pub(crate) async fn shards(&self) -> Vec<Shard> {
        for addr in self.addrs() {
            if let Ok(text) = query::<String>(&addr, redis::cmd("CLUSTER").arg("NODES")).await {
                return shards_of(&parse_nodes(&text));
            }
        }
        panic!("no node answers CLUSTER NODES");
    }

    /// The shard whose master owns `slot`.
    pub(crate) async fn shard_of_slot(&self, slot: u16) -> Shard {
        self.shards()
            .await
            .into_iter()
            .find(|s| s.owns(slot))
            .unwrap_or_else(|| panic!("no master owns slot {slot}"))
    }

    /// The shard whose master owns the slot of `key`.
    pub(crate) async fn shard_of_key(&self, key: &[u8]) -> Shard {
        self.shard_of_slot(slot_of(key)).await
    }

    /// Kills the master at `addr` (SIGKILL, as a crash) and waits until its
    /// replica took over and every running node agrees and is `ok` again.
    ///
    /// # Panics
    ///
    /// If `addr` is not a master with a replica, or the failover does not
    /// complete.
    pub(crate) async fn kill_master(&mut self, addr: &str) -> Failover {
        let shards = self.shards().await;
        let shard = shards
            .iter()
            .find(|s| s.master == addr)
            .unwrap_or_else(|| panic!("{addr} is not a master: {shards:?}"))
            .clone();
        assert!(
            !shard.replicas.is_empty(),
            "{addr} has no replica to take over"
        );
        let started = Instant::now();
        self.node_mut(addr).kill();
        let now = self
            .settle("a replica takes over", |shards| {
                shards
                    .iter()
                    .any(|s| s.slots == shard.slots && shard.replicas.contains(&s.master))
            })
            .await;
        let took = started.elapsed();
        Failover {
            killed: addr.to_owned(),
            shard: now
                .into_iter()
                .find(|s| s.slots == shard.slots)
                .expect("checked by settle"),
            took,
        }
    }

    /// Starts the killed node at `addr` again, with its cluster config: it
    /// rejoins as a replica (of the master that replaced it). Waits until it
    /// is in sync.
    ///
    /// # Panics
    ///
    /// If the node is running, or does not rejoin.
    pub(crate) async fn restart(&mut self, addr: &str) -> Duration {
        let started = Instant::now();
        let node_timeout = self.node_timeout;
        let node = self.node_mut(addr);
        assert!(!node.is_running(), "{addr} is running");
        node.spawn(node_timeout).expect("redis-server restarts");
        let owned = addr.to_owned();
        self.settle("the restarted node rejoins", |shards| {
            shards.iter().any(|s| s.replicas.contains(&owned))
        })
        .await;
        loop {
            let info: String = query(addr, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(started.elapsed() < SETTLE, "{addr} never synced:\n{info}");
            tokio::time::sleep(POLL).await;
        }
        started.elapsed()
    }

    /// Waits until every running node is `ok`, all of them see the same
    /// shards, and `want` holds for those shards; returns them.
    async fn settle(&self, what: &str, want: impl Fn(&[Shard]) -> bool) -> Vec<Shard> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let seen = self.observe().await;
            if let Ok(shards) = &seen {
                if want(shards) {
                    return shards.clone();
                }
            }
            if Instant::now() > deadline {
                let mut report = format!("{what}: not settled after {SETTLE:?}: {seen:?}\n");
                for node in &self.nodes {
                    let _ = writeln!(
                        report,
                        "--- {} ({}):\n{}",
                        node.addr(),
                        if node.is_running() {
                            "running"
                        } else {
                            "killed"
                        },
                        node.log_tail(8)
                    );
                }
                panic!("{report}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The shards, if every running node is `ok`, knows every node, and
    /// sees the same shards covering every slot; otherwise why not.
    async fn observe(&self) -> Result<Vec<Shard>, String> {
        let mut agreed: Option<Vec<Shard>> = None;
        for addr in self.addrs() {
            let info: String = query(&addr, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("{addr}: not ok"));
            }
            let known = info
                .lines()
                .find_map(|l| l.strip_prefix("cluster_known_nodes:"))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if known != Some(self.nodes.len()) {
                return Err(format!("{addr}: knows {known:?} nodes"));
            }
            let text: String = query(&addr, redis::cmd("CLUSTER").arg("NODES"))
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let views = parse_nodes(&text);
            if views.iter().any(|v| v.migrating) {
                return Err(format!("{addr}: a slot is importing or migrating"));
            }
            let shards = shards_of(&views);
            let covered: u32 = shards
                .iter()
                .flat_map(|s| &s.slots)
                .map(|&(lo, hi)| u32::from(hi - lo) + 1)
                .sum();
            if covered != u32::from(SLOTS) {
                return Err(format!("{addr}: {covered} slots covered"));
            }
            match &agreed {
                None => agreed = Some(shards),
                Some(first) if *first == shards => {}
                Some(first) => {
                    return Err(format!("{addr} sees {shards:?}, another node {first:?}"));
                }
            }
        }
        agreed.ok_or_else(|| String::from("no node running"))
    }

    fn node_mut(&mut self, addr: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node at {addr}"))
    }
}

/// One command on the node at `addr`, on a fresh connection with timeouts.
pub(crate) async fn query<T: FromRedisValue>(
    addr: &str,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    cmd.query_async(&mut conn).await
}

/// As [`query`], for a step that must succeed.
async fn admin<T: FromRedisValue>(addr: &str, cmd: &redis::Cmd) -> T {
    query(addr, cmd)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {cmd:?} failed: {e}"))
}
