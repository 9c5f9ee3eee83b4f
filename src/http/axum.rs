//! axum integration (feature `axum`): [`PollRequest`] (and
//! [`KeyedRequest`]) as extractors whose rejection is the endpoint's own
//! `400`, and [`RequestError`] as a response.
//!
//! The extractors read the URI and headers only, and own what they keep:
//! put one last in a handler's arguments and axum drops the request before
//! the handler waits.

use axum_core::extract::{FromRef, FromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use super::{
    KeyedPoll, KeyedPollConfig, KeyedRequest, KeyedRequestError, LongPoll, PollConfig, PollRequest,
    RequestError,
};

impl<S> FromRequestParts<S> for PollRequest
where
    S: Send + Sync,
    PollConfig: FromRef<S>,
{
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, RequestError> {
        PollRequest::from_parts(&parts.uri, &parts.headers, &PollConfig::from_ref(state))
    }
}

impl<S> FromRequestParts<S> for KeyedRequest
where
    S: Send + Sync,
    KeyedPollConfig: FromRef<S>,
{
    type Rejection = KeyedRequestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, KeyedRequestError> {
        KeyedRequest::from_uri(&parts.uri, &KeyedPollConfig::from_ref(state))
    }
}

/// A handler whose state is the endpoint extracts its [`PollRequest`] with
/// the endpoint's config.
impl<T> FromRef<LongPoll<T>> for PollConfig {
    fn from_ref(poll: &LongPoll<T>) -> PollConfig {
        *poll.config()
    }
}

/// A handler whose state is the keyed endpoint extracts its requests with
/// the endpoint's config.
impl<K, T> FromRef<KeyedPoll<K, T>> for KeyedPollConfig {
    fn from_ref(poll: &KeyedPoll<K, T>) -> KeyedPollConfig {
        *poll.config()
    }
}

impl<K, T> FromRef<KeyedPoll<K, T>> for PollConfig {
    fn from_ref(poll: &KeyedPoll<K, T>) -> PollConfig {
        *poll.config().get_poll()
    }
}

impl IntoResponse for RequestError {
    /// The `400` of [`RequestError::into_response`].
    fn into_response(self) -> Response {
        RequestError::into_response(self).map(axum_core::body::Body::from)
    }
}

impl IntoResponse for KeyedRequestError {
    /// The `400` of [`KeyedRequestError::into_response`].
    fn into_response(self) -> Response {
        KeyedRequestError::into_response(self).map(axum_core::body::Body::from)
    }
}
