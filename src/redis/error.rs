//! [`BackplaneError`]: what went wrong talking to Redis.

use std::error::Error as StdError;
use std::fmt;

use super::DecodeError;

/// A backplane operation failed.
///
/// Opaque, like `hyper::Error`: ask what happened with the `is_*` methods,
/// which say what the caller can do. The [`Display`](fmt::Display) text and
/// the [`source`](StdError::source) chain (often a `redis::RedisError`) are
/// for logs, not for matching, and may change between releases.
///
/// ```no_run
/// use longpoll::redis::Channel;
///
/// /// The status of an HTTP answer to a change.
/// async fn change(channel: &Channel<u32>, value: u32) -> u16 {
///     match channel.publish(value).await {
///         Ok(_) => 200,
///         Err(e) if e.is_unavailable() => 503, // with Retry-After
///         Err(e) if e.is_closed() => 503,      // shutting down
///         Err(_) => 500,
///     }
/// }
/// # #[tokio::main] async fn main() {
/// # let backplane = longpoll::redis::Backplane::connect("redis://127.0.0.1/").await.unwrap();
/// # let channel = backplane.channel("c", 0u32).await.unwrap();
/// # assert_eq!(change(&channel, 1).await, 200);
/// # }
/// ```
pub struct BackplaneError {
    kind: Kind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Unavailable,
    Server,
    Decode,
    Closed,
    Config,
}

impl BackplaneError {
    pub(crate) fn new(kind: Kind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        BackplaneError {
            kind,
            source: Some(source.into()),
        }
    }

    pub(crate) fn closed() -> Self {
        BackplaneError {
            kind: Kind::Closed,
            source: None,
        }
    }

    /// An error of the same kind whose source is `shared`: for a failure
    /// that is both kept (as a channel's [`failure`](super::Channel::failure))
    /// and returned.
    pub(crate) fn shared(shared: &std::sync::Arc<BackplaneError>) -> Self {
        BackplaneError::new(shared.kind, std::sync::Arc::clone(shared))
    }

    /// Classifies an error of the Redis client.
    pub(crate) fn from_redis(err: ::redis::RedisError) -> Self {
        use ::redis::{ErrorKind, ServerErrorKind};
        let unavailable = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_unrecoverable_error()
            || matches!(
                err.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::ReadOnly
                            // A cluster reshaping (a failover, a slot
                            // moving) faster than the client followed.
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                    )
            );
        let kind = if unavailable {
            Kind::Unavailable
        } else if err.code() == Some("LONGPOLL_CORRUPT") {
            // A script found a field of the channel's state that is not a
            // number: the data, not the command, is wrong.
            Kind::Decode
        } else {
            Kind::Server
        };
        BackplaneError::new(kind, err)
    }

    /// Whether a caller's [`ModifyScript`](super::ModifyScript) snippet
    /// raised this error (the channel itself is fine).
    pub(crate) fn is_snippet(&self) -> bool {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<::redis::RedisError>())
            .is_some_and(|e| e.code() == Some(super::keys::SNIPPET_ERROR))
    }

    /// Redis could not be reached, or did not answer in time, or is not
    /// ready to write (loading its data, a replica). Nothing is known to
    /// have been published; retry later. An HTTP server answers `503` with
    /// `Retry-After`.
    ///
    /// A command whose answer timed out may still have run: its change then
    /// reaches every instance through the subscription like any other.
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// Redis answered with an error: a script error (including one raised by
    /// a [`ModifyScript`](super::ModifyScript) snippet), a key of another
    /// type under the channel's name, out of memory, missing permissions.
    /// Retrying the same call will likely fail the same way.
    pub fn is_server(&self) -> bool {
        self.kind == Kind::Server
    }

    /// What Redis holds or sent for the channel is not what this crate
    /// writes: a value that does not decode as the channel's type (see
    /// [`Codec`](super::Codec)), a field of its state that is not a number,
    /// a message or reply of the wrong shape. Another program or another
    /// version wrote the key. Retrying reads the same data; the channel
    /// heals once a good value is published (or the key is deleted).
    pub fn is_decode(&self) -> bool {
        self.kind == Kind::Decode
    }

    /// The channel's local broadcaster was closed (the server is shutting
    /// down): nothing was sent to Redis.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The backplane or channel was set up wrongly: an invalid Redis URL, or
    /// a channel name already opened with another value type. Fix the
    /// configuration or the code.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl From<DecodeError> for BackplaneError {
    fn from(e: DecodeError) -> Self {
        BackplaneError::new(Kind::Decode, e)
    }
}

impl fmt::Debug for BackplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("BackplaneError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for BackplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Unavailable => "redis unavailable",
            Kind::Server => "redis refused the command",
            Kind::Decode => "stored value does not decode",
            Kind::Closed => "channel closed",
            Kind::Config => "invalid backplane configuration",
        };
        match &self.source {
            // The same failure, kept and returned: said once.
            Some(source) if source.is::<std::sync::Arc<BackplaneError>>() => {
                fmt::Display::fmt(source, f)
            }
            // A decode error already says what it is.
            Some(source) if self.kind == Kind::Decode => fmt::Display::fmt(source, f),
            Some(source) => write!(f, "{what}: {source}"),
            None => f.write_str(what),
        }
    }
}

impl StdError for BackplaneError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
