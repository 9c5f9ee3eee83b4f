//! The command connection: to one Redis (a multiplexed connection) or to a
//! Redis Cluster (redis-rs's cluster connection, which follows `MOVED` and
//! `ASK`), opened once and shared, replaced when it fails; scripts and
//! batches of commands over it.
//!
//! A cluster connection can get stuck: after a master is killed under
//! load, every later request on it may time out, to every shard, while a
//! new connection from the same seeds works at once. So any request that
//! fails as unavailable drops the connection, and the next one opens a new
//! one (one opening at a time, shared by every caller waiting): the
//! watchdog is the rule "an unavailable error replaces the connection".

use std::sync::Arc;

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, RedisResult, Script, Value};
use parking_lot::Mutex;

use super::backplane::{Config, Core};
use super::error::{BackplaneError, Kind};

/// How many commands of a batch are in flight at once on a cluster.
const CLUSTER_BATCH: usize = 256;

/// Where the backplane's Redis is.
#[derive(Clone)]
pub(super) enum Server {
    /// One Redis (or a primary with replicas).
    Single(Box<Client>),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster(Box<ClusterClient>),
}

impl Server {
    /// The command that publishes to a channel: sharded Pub/Sub on a
    /// cluster, so that a message goes to the shard that owns its slot
    /// only, where the script that publishes it runs.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Server::Single(_) => "PUBLISH",
            Server::Cluster(_) => "SPUBLISH",
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Server::Cluster(_))
    }
}

/// An open command connection; clones share it.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// `SCRIPT LOAD`: on a cluster, on every primary.
    async fn load(&mut self, script: &Script) -> RedisResult<String> {
        match self {
            Conn::Single(c) => script.prepare_invoke().load_async(c).await,
            Conn::Cluster(c) => script.prepare_invoke().load_async(c).await,
        }
    }
}

/// Opens a command connection.
async fn open(server: &Server, config: &Config) -> Result<Conn, BackplaneError> {
    match server {
        Server::Single(client) => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.command_timeout));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Conn::Single)
                .map_err(BackplaneError::from_redis)
        }
        Server::Cluster(client) => {
            // The client's own settings (see `cluster_client`) bound every
            // request; this bounds the opening.
            let opening = client.get_async_connection();
            match tokio::time::timeout(config.connect_timeout * 2, opening).await {
                Ok(Ok(conn)) => Ok(Conn::Cluster(conn)),
                Ok(Err(e)) => Err(BackplaneError::from_redis(e)),
                Err(elapsed) => Err(BackplaneError::new(Kind::Unavailable, elapsed)),
            }
        }
    }
}

/// The cluster client for commands: RESP2, no push sender (subscriptions
/// have connections of their own), and every retry and timeout explicit.
/// The default retry waits start at 1.28 s and a request has no overall
/// timeout, which can hang forever.
pub(super) fn cluster_client(
    seeds: &[String],
    config: &Config,
) -> Result<ClusterClient, BackplaneError> {
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .retries(4)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.command_timeout)
        .overall_response_timeout(Some(config.command_timeout * 2))
        .build()
        .map_err(|e| BackplaneError::new(Kind::Config, e))
}

/// The result of opening a command connection, for every caller waiting.
pub(super) type Connecting =
    tokio::sync::watch::Receiver<Option<Result<Conn, Arc<BackplaneError>>>>;

/// The command connection of a [`Core`]: the connection, and the opening
/// in progress, if any.
#[derive(Default)]
pub(super) struct CommandSlot {
    /// `None` after it failed.
    conn: Arc<Mutex<Option<Conn>>>,
    /// A burst of publishes after an outage opens one connection, not one
    /// each. The opening runs in a task of its own, so that a caller that
    /// stops polling holds nobody up.
    connecting: Arc<Mutex<Option<Connecting>>>,
}

impl CommandSlot {
    /// Forgets the connection: the next command opens a new one.
    pub(super) fn reset(&self) {
        self.conn.lock().take();
    }
}

impl Core {
    /// The command connection, opened if needed.
    pub(super) async fn command(&self) -> Result<Conn, BackplaneError> {
        let slot = &self.command;
        if let Some(conn) = slot.conn.lock().clone() {
            return Ok(conn);
        }
        let mut opened = {
            let mut connecting = slot.connecting.lock();
            if let Some(conn) = slot.conn.lock().clone() {
                return Ok(conn);
            }
            match &*connecting {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    *connecting = Some(rx.clone());
                    let (server, config) = (self.server.clone(), self.config.clone());
                    let (conn, connecting) = (Arc::clone(&slot.conn), Arc::clone(&slot.connecting));
                    tokio::spawn(async move {
                        let opened = open(&server, &config).await.map_err(Arc::new);
                        if let Ok(c) = &opened {
                            *conn.lock() = Some(c.clone());
                        }
                        *connecting.lock() = None;
                        let _ = tx.send(Some(opened));
                    });
                    rx
                }
            }
        };
        let Ok(opened) = opened.wait_for(Option::is_some).await else {
            return Err(BackplaneError::new(
                Kind::Unavailable,
                "connecting was cut short",
            ));
        };
        match opened.as_ref().expect("waited for a result") {
            Ok(conn) => Ok(conn.clone()),
            Err(e) => Err(BackplaneError::shared(e)),
        }
    }

    /// Classifies a failed command; one that failed as unavailable drops
    /// the command connection, so that the next command opens a new one.
    fn check_command(&self, e: ::redis::RedisError) -> BackplaneError {
        let e = BackplaneError::from_redis(e);
        if e.is_unavailable() {
            self.command.reset();
        }
        e
    }

    /// Runs `call` of `script` on the command connection, loading the
    /// script first if Redis does not know it (a restart, a failover to a
    /// replica, which has no scripts).
    pub(super) async fn run_script(
        &self,
        script: &Script,
        call: &ScriptCall,
    ) -> Result<Value, BackplaneError> {
        let mut conn = self.command().await?;
        let cmd = call.cmd(script);
        match conn.query(&cmd).await {
            Ok(v) => Ok(v),
            Err(e)
                if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
            {
                conn.load(script).await.map_err(|e| self.check_command(e))?;
                conn.query(&cmd).await.map_err(|e| self.check_command(e))
            }
            Err(e) => Err(self.check_command(e)),
        }
    }

    /// Runs `cmds` in one go and returns each command's own result: one
    /// command's error does not fail the others. One pipeline on a single
    /// Redis; on a cluster, where a pipeline cannot span slots, concurrent
    /// requests (which its connections pipeline per node). Fails as a
    /// whole only if the connection does.
    pub(super) async fn run_batch(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<Result<Value, BackplaneError>>, BackplaneError> {
        let mut conn = self.command().await?;
        match &mut conn {
            Conn::Single(c) => {
                let mut pipe = ::redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                let replies: Vec<RedisResult<Value>> = pipe
                    .ignore_errors()
                    .query_async(c)
                    .await
                    .map_err(|e| self.check_command(e))?;
                Ok(replies
                    .into_iter()
                    .map(|r| r.map_err(BackplaneError::from_redis))
                    .collect())
            }
            Conn::Cluster(c) => {
                let mut out = Vec::with_capacity(cmds.len());
                for chunk in cmds.chunks(CLUSTER_BATCH) {
                    let replies = futures_util::future::join_all(chunk.iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Value>(&mut c).await }
                    }))
                    .await;
                    out.extend(
                        replies
                            .into_iter()
                            .map(|r| r.map_err(|e| self.check_command(e))),
                    );
                }
                Ok(out)
            }
        }
    }

    /// Runs every call of `script` (whose text is `source`) in one go (see
    /// [`run_batch`](Self::run_batch)), loading the script first.
    pub(super) async fn run_scripts(
        &self,
        script: &Script,
        source: &str,
        calls: &[ScriptCall],
    ) -> Result<Vec<Result<Value, BackplaneError>>, BackplaneError> {
        if self.server.is_cluster() {
            // Loaded on every primary first; a call that still meets
            // `NOSCRIPT` (a failover meanwhile) loads it again.
            if let Ok(mut conn) = self.command().await {
                let _ = conn.load(script).await;
            }
            let mut out = Vec::with_capacity(calls.len());
            for chunk in calls.chunks(CLUSTER_BATCH) {
                let replies = futures_util::future::join_all(
                    chunk.iter().map(|c| self.run_script(script, c)),
                )
                .await;
                out.extend(replies);
            }
            return Ok(out);
        }
        let mut cmds = Vec::with_capacity(calls.len() + 1);
        // Loads the script if Redis lost it (a restart): cheaper than
        // retrying every call of the pipeline on `NOSCRIPT`.
        let mut load = ::redis::cmd("SCRIPT");
        load.arg("LOAD").arg(source);
        cmds.push(load);
        cmds.extend(calls.iter().map(|c| c.cmd(script)));
        let mut replies = self.run_batch(cmds).await?;
        if replies.len() != calls.len() + 1 {
            return Err(BackplaneError::from(super::DecodeError::new(format!(
                "{} replies for {} commands",
                replies.len(),
                calls.len() + 1
            ))));
        }
        let _load = replies.remove(0);
        Ok(replies)
    }
}

/// The keys and arguments of one script call (`EVALSHA`).
#[derive(Default)]
pub(super) struct ScriptCall {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    pub(super) fn key(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    pub(super) fn arg(&mut self, arg: impl AsRef<[u8]>) -> &mut Self {
        self.args.push(arg.as_ref().to_vec());
        self
    }

    pub(super) fn cmd(&self, script: &Script) -> Cmd {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}
