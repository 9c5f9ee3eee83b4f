//! [`ModifyScript`]: a read-modify-publish in Redis, and what it did.

use std::fmt;
use std::sync::Arc;

use ::redis::Script;

use super::error::BackplaneError;
use super::keys::{Outcome, MODIFY_LUA};
use super::{Channel, Codec};
use crate::Update;

/// A read-modify-publish in Redis, written as a Lua snippet.
///
/// The snippet is the body of a Lua function
/// `function(value, KEYS, ARGV)`: `value` is the channel's current value as
/// stored (see [`Codec`]), `KEYS` and `ARGV` are the keys and arguments given
/// to [`Modify::key`] and [`Modify::arg`]. It returns up to two results:
///
/// 1. the new value (a string; a number is converted with `tostring`), or
///    `nil`/`false` to publish nothing;
/// 2. optionally, a note for the caller (a string), returned as
///    [`Modified::note`]: why nothing was published, for instance.
///
/// The snippet runs inside the publish script, atomically with the version
/// bump and the `PUBLISH`: no other publish, on any instance, comes between
/// its read and its write. It may read and write the keys it is given, and
/// raise an error with `error(...)` (the call then fails with
/// [`is_server`](BackplaneError::is_server) and nothing is published).
///
/// Build it once (its SHA-1 is computed here) and reuse it.
///
/// ```no_run
/// use longpoll::redis::{Backplane, ModifyScript};
///
/// # #[tokio::main] async fn main() -> Result<(), longpoll::redis::BackplaneError> {
/// // Take `ARGV[1]` units, unless fewer are left.
/// let take = ModifyScript::new(r#"
///     local left = tonumber(value) - tonumber(ARGV[1])
///     if left < 0 then return nil, 'sold out' end
///     return left
/// "#);
/// let backplane = Backplane::connect("redis://127.0.0.1:6379/").await?;
/// let stock = backplane.channel("stock", 10u32).await?;
/// let done = stock.modify(&take).arg("3").invoke().await?;
/// if done.is_published() {
///     println!("{} left at version {}", done.update().value(), done.update().version());
/// } else {
///     println!("{}", String::from_utf8_lossy(done.note()));
/// }
/// # Ok(()) }
/// ```
pub struct ModifyScript {
    pub(super) script: Script,
}

impl ModifyScript {
    /// Wraps `body`, the Lua body of `function(value, KEYS, ARGV)`.
    pub fn new(body: &str) -> Self {
        ModifyScript {
            script: Script::new(&compose_modify(body, true)),
        }
    }
}

impl fmt::Debug for ModifyScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModifyScript")
            .field("sha1", &self.script.get_hash())
            .finish()
    }
}

/// A [`ModifyScript`] call being prepared: see [`Channel::modify`].
#[must_use = "nothing happens until `invoke` is awaited"]
pub struct Modify<'a, T> {
    pub(super) channel: &'a Channel<T>,
    pub(super) script: &'a ModifyScript,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) args: Vec<Vec<u8>>,
    pub(super) once: Option<Vec<u8>>,
}

impl<T> fmt::Debug for Modify<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Modify")
            .field("script", self.script)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .field("once", &self.once.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Codec + Send + Sync + 'static> Modify<'_, T> {
    /// Appends a key: the snippet's `KEYS[1]`, `KEYS[2]`, ... in order.
    /// Give the full key name (with your prefix).
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    /// Appends an argument: the snippet's `ARGV[1]`, `ARGV[2]`, ... in order.
    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Self {
        self.args.push(arg.as_ref().to_vec());
        self
    }

    /// Makes the call safe to retry, as [`Channel::publish_once`]: if a
    /// call with this `id` published already (within
    /// [`remember_publishes`](super::ChannelBuilder::remember_publishes)),
    /// the snippet does not run again and the result says
    /// [`is_repeat`](Modified::is_repeat).
    pub fn once(mut self, id: impl AsRef<[u8]>) -> Self {
        self.once = Some(id.as_ref().to_vec());
        self
    }

    /// Runs the script in Redis; if it published, wakes this instance's
    /// waiters before returning (other instances' through their
    /// subscription, as for [`Channel::publish`]).
    ///
    /// # Errors
    ///
    /// As [`Channel::publish`]; a snippet that raised an error gives
    /// [`is_server`](BackplaneError::is_server) (the channel is fine), a new
    /// value that is not a `T` gives [`is_decode`](BackplaneError::is_decode)
    /// (it was published nevertheless, and the channel is broken until a
    /// good value follows).
    ///
    /// # Cancel safety
    ///
    /// As [`Channel::publish`].
    pub async fn invoke(self) -> Result<Modified<T>, BackplaneError> {
        let channel = self.channel;
        let inner = &channel.inner;
        let core = &channel.backplane.shared.core;
        let mut call = inner.modify_call(core, self.once.as_deref(), &self.keys)?;
        for arg in &self.args {
            call.arg(arg);
        }
        let reply = inner.run_modify(core, &self.script.script, &call).await?;
        if reply.outcome == Outcome::Repeated {
            return Ok(Modified {
                update: channel.current(),
                published: true,
                repeat: true,
                note: Vec::new(),
            });
        }
        let decoded = T::decode(&reply.value).map_err(|e| {
            let e = std::sync::Arc::new(BackplaneError::from(e));
            if reply.outcome == Outcome::Published {
                core.channel_failed(&**inner, std::sync::Arc::clone(&e));
            }
            BackplaneError::shared(&e)
        })?;
        // Decoded twice: once for the caller, once for the broadcaster,
        // which takes its value by value.
        let update = Update {
            epoch: reply.epoch,
            version: reply.version,
            value: Arc::new(T::decode(&reply.value)?),
        };
        if reply.outcome == Outcome::Published {
            inner.settle(core, &reply, decoded).await;
        }
        Ok(Modified {
            update,
            published: reply.outcome == Outcome::Published,
            repeat: false,
            note: reply.note,
        })
    }
}

/// What a [`Modify`] call did.
#[derive(Debug)]
pub struct Modified<T> {
    update: Update<T>,
    published: bool,
    repeat: bool,
    note: Vec<u8>,
}

impl<T> Modified<T> {
    /// The state the script left in Redis: the new update if it published,
    /// the unchanged current one otherwise. For a
    /// [repeat](Self::is_repeat), the state this instance holds.
    pub fn update(&self) -> &Update<T> {
        &self.update
    }

    /// The state the script left in Redis, by value.
    pub fn into_update(self) -> Update<T> {
        self.update
    }

    /// Whether the snippet returned a new value, published as a new version
    /// (by this call, or by the first call with the same
    /// [`once`](Modify::once) id).
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Whether a call with the same [`once`](Modify::once) id published
    /// already, so that this one did nothing.
    pub fn is_repeat(&self) -> bool {
        self.repeat
    }

    /// The snippet's second result, or empty if it returned none (or for a
    /// [repeat](Self::is_repeat)).
    pub fn note(&self) -> &[u8] {
        &self.note
    }
}

/// The script text for a modify snippet; `echo` makes it return the new
/// value (a plain publish knows it already).
pub(super) fn compose_modify(body: &str, echo: bool) -> String {
    format!(
        "local function modify(value, KEYS, ARGV)\n{body}\nend\nlocal echo = {echo}\n{MODIFY_LUA}"
    )
}
