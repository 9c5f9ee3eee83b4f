//! Bringing a channel in line with Redis: when it opens, after a reconnect
//! (every channel in one pipeline, reading only what is missing), after an
//! epoch change or a gap, and at each periodic check. Also where every
//! channel failure is recorded.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::redis::Value;

use super::backplane::Core;
use super::commands::ScriptCall;
use super::error::BackplaneError;
use super::keys::{parse_probe, parse_snapshot, Keys, Snapshot, SYNC_LUA};
use super::relay::Relay;
use super::subscription::jitter;
use crate::{Epoch, Version};

/// How many times a resync that found Redis unavailable is retried (with
/// backoff) before it is left to the next check or reconnect.
const RESYNC_RETRIES: u32 = 8;

impl Core {
    /// The `sync.lua` call for a channel: `held` is the position this
    /// instance holds (`None` when opening); `create` the time to live of
    /// a state created if missing (`None`: a missing state is read as
    /// missing, and nothing is written).
    pub(super) fn sync_call(
        &self,
        keys: &Keys,
        initial: &[u8],
        history: usize,
        held: Option<(Epoch, Version)>,
        retired: String,
        create: Option<Option<std::time::Duration>>,
    ) -> ScriptCall {
        let (held_epoch, held_version) = match held {
            Some((e, v)) => (e.to_string(), v.get()),
            None => (String::new(), 0),
        };
        let ttl = create.flatten().map_or(0, |t| t.as_millis().max(1));
        let mut call = ScriptCall::default();
        call.key(&keys.state)
            .arg(Epoch::random().to_string())
            .arg(initial)
            .arg(held_epoch)
            .arg(held_version.to_string())
            .arg(keys.channel())
            .arg(history.to_string())
            // The current state is returned apart: `k - 1` entries before it.
            .arg((history - 1).to_string())
            .arg(retired)
            .arg(self.server.publish_command())
            .arg(if create.is_some() { "1" } else { "0" })
            .arg(ttl.to_string());
        call
    }

    /// Reads (or creates, or moves to a new epoch) a channel's state.
    pub(super) async fn read(&self, call: &ScriptCall) -> Result<Option<Snapshot>, BackplaneError> {
        let reply = self.run_script(&self.sync_script, call).await?;
        Ok(parse_snapshot(reply)?)
    }

    fn relay_call(&self, relay: &dyn Relay) -> ScriptCall {
        self.sync_call(
            relay.keys(),
            relay.initial(),
            relay.history(),
            Some(relay.position()),
            relay.retired(),
            relay.creates(),
        )
    }

    /// Reads the channel from Redis and applies what it holds. Single
    /// flight: waits for a read in progress, and returns at once if a read
    /// that started after this call was applied meanwhile.
    pub(super) async fn resync(&self, relay: &dyn Relay) -> Result<(), BackplaneError> {
        let sync = relay.sync();
        let ticket = sync.request();
        let one_at_a_time = sync.lock.lock().await;
        if sync.is_covered(ticket) {
            return Ok(());
        }
        let starting = sync.starting();
        let call = self.relay_call(relay);
        let read = self.run_script(&self.sync_script, &call).await;
        let healing = crate::telemetry::read_applying(&sync.behind, || relay.position());
        let settled = self.settle_read(relay, starting, read);
        let healed = crate::telemetry::read_applied(healing, || relay.position());
        drop(one_at_a_time);
        crate::telemetry::versions_healed(&self.telemetry, healed);
        settled
    }

    /// Applies one read's result (with the channel's sync lock held).
    fn settle_read(
        &self,
        relay: &dyn Relay,
        starting: u64,
        read: Result<Value, BackplaneError>,
    ) -> Result<(), BackplaneError> {
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        let applied = read
            .and_then(|v| Ok(parse_snapshot(v)?))
            .and_then(|snapshot| Ok(relay.apply(snapshot)?));
        match applied {
            Ok(restarted) => {
                relay.sync().applied(starting);
                if restarted {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    crate::telemetry::epoch_restarted(relay.keys().channel(), relay.position().0);
                }
                self.channel_healed(relay);
                Ok(())
            }
            Err(e) => {
                let e = Arc::new(e);
                self.channel_failed(relay, Arc::clone(&e));
                Err(BackplaneError::shared(&e))
            }
        }
    }

    /// Reads every open channel again after (re)subscribing; see
    /// [`catch_up`](Self::catch_up).
    pub(super) async fn catch_up_all(&self) -> Result<(), BackplaneError> {
        let relays: Vec<Arc<dyn Relay>> = self.channels.read().values().cloned().collect();
        self.catch_up(relays).await
    }

    /// Reads `relays` again after (re)subscribing, in one pipeline (on a
    /// cluster, concurrent requests): only the history after what each
    /// holds comes back. A channel whose data is unusable is marked broken
    /// and the others go on. Fails only if the command connection does.
    pub(super) async fn catch_up(
        &self,
        mut relays: Vec<Arc<dyn Relay>>,
    ) -> Result<(), BackplaneError> {
        if relays.is_empty() {
            return Ok(());
        }
        relays.sort_by(|a, b| a.keys().channel().cmp(b.keys().channel()));
        relays.dedup_by(|a, b| Arc::ptr_eq(a, b));
        // One read at a time per channel, in the same order everywhere.
        let mut guards = Vec::with_capacity(relays.len());
        let mut starting = Vec::with_capacity(relays.len());
        for relay in &relays {
            relay.sync().request();
            guards.push(relay.sync().lock.lock().await);
            starting.push(relay.sync().starting());
        }
        let catch_up = crate::telemetry::catch_up_started(relays.iter().map(|r| r.position()));
        let calls: Vec<ScriptCall> = relays.iter().map(|r| self.relay_call(&**r)).collect();
        let replies = self
            .run_scripts(&self.sync_script, SYNC_LUA, &calls)
            .await?;
        if replies.len() != relays.len() {
            return Err(BackplaneError::from(super::DecodeError::new(format!(
                "catch-up: {} replies for {} channels",
                replies.len(),
                relays.len()
            ))));
        }
        let mut unavailable = None;
        for ((relay, reply), starting) in relays.iter().zip(replies).zip(starting) {
            match reply {
                Err(e) if e.is_unavailable() => {
                    relay.sync().stale.store(true, Ordering::Release);
                    unavailable = Some(e);
                }
                read => {
                    let _ = self.settle_read(&**relay, starting, read);
                }
            }
        }
        crate::telemetry::caught_up(catch_up, relays.iter().map(|r| r.position()));
        drop(guards);
        unavailable.map_or(Ok(()), Err)
    }

    /// The periodic check: one `HMGET` per channel that has local waiters,
    /// is broken or missed a read, pipelined; a channel whose position in
    /// Redis is not the one this instance holds is read again. Heals lost
    /// Pub/Sub messages without a reconnect.
    pub(super) async fn check(self: &Arc<Self>) {
        let relays: Vec<Arc<dyn Relay>> = self
            .channels
            .read()
            .values()
            .filter(|r| r.waiters() > 0 || r.is_failing() || r.sync().stale.load(Ordering::Acquire))
            .cloned()
            .collect();
        if relays.is_empty() {
            return;
        }
        let cmds = relays
            .iter()
            .map(|relay| {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(&relay.keys().state).arg("epoch").arg("version");
                cmd
            })
            .collect();
        let Ok(replies) = self.run_batch(cmds).await else {
            return; // Redis is away: the subscription's keep-alive notices
        };
        for (relay, reply) in relays.into_iter().zip(replies) {
            let at = reply.ok().and_then(|v| parse_probe(v).ok());
            let in_line = at.is_some_and(|at| relay.is_at(at));
            if !in_line {
                crate::telemetry::check_found_behind(&relay.sync().behind, at.flatten());
            }
            if !in_line || relay.is_failing() || relay.sync().stale.load(Ordering::Acquire) {
                self.request_resync(relay);
            }
        }
    }

    /// Reads `relay` again in a task of its own, so that the subscription
    /// goes on relaying meanwhile. Retries with backoff while Redis is
    /// unavailable, a few times, then leaves it to the next check.
    pub(super) fn request_resync(self: &Arc<Self>, relay: Arc<dyn Relay>) {
        if relay.sync().scheduled.swap(true, Ordering::AcqRel) {
            return; // one is on its way, and will start after this request
        }
        let core = Arc::clone(self);
        tokio::spawn(async move {
            relay.sync().scheduled.store(false, Ordering::Release);
            let mut backoff = core.config.backoff_min;
            for _ in 0..RESYNC_RETRIES {
                match core.resync(&*relay).await {
                    Err(e) if e.is_unavailable() && !core.stopped.load(Ordering::Acquire) => {
                        tokio::time::sleep(jitter(backoff)).await;
                        backoff = (backoff * 2).min(core.config.backoff_max);
                    }
                    _ => return,
                }
            }
        });
    }

    /// Every "this channel failed" goes through here. Redis being away is
    /// not a channel failure: the channel is only marked for reading again.
    /// Anything else (a key of another type, a field or value that does not
    /// parse or decode) breaks the channel: its waiters are answered, and
    /// [`Channel::failure`](super::Channel::failure) says why.
    pub(super) fn channel_failed(&self, relay: &dyn Relay, error: Arc<BackplaneError>) {
        if error.is_unavailable() {
            relay.sync().stale.store(true, Ordering::Release);
            return;
        }
        if relay.set_failure(Some(Arc::clone(&error))) {
            self.stats.channel_failures.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::channel_broke(relay.keys().channel(), &error);
        }
    }

    /// A channel that was broken holds a usable state again.
    fn channel_healed(&self, relay: &dyn Relay) {
        if relay.set_failure(None) {
            self.stats.healed.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::channel_healed(relay.keys().channel());
        }
    }

    /// Every Pub/Sub message that cannot be relayed goes through here: the
    /// channel is read again, which tells whether its state is usable.
    pub(super) fn message_rejected(self: &Arc<Self>, relay: Arc<dyn Relay>, error: BackplaneError) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::message_rejected(relay.keys().channel(), &error);
        self.request_resync(relay);
    }
}
