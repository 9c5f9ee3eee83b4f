//! `tower::Service` for the endpoints (feature `tower`).
//!
//! Each endpoint takes the `http::Request<B>` by value, whatever its body
//! type `B`, and keeps nothing of it while it waits. The services are
//! always ready and never fail (`Error = Infallible`): every outcome is an
//! HTTP answer.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hash::Hash;
use std::str::FromStr;
use std::task::{Context, Poll};

use ::http::{Request, Response};
use tower_service::Service;

use super::{FullBody, KeyedPoll, KeyedResponseFuture, LongPoll, ResponseFuture};
use crate::sse::{SseBody, SseEndpoint};

impl<T, B> Service<Request<B>> for LongPoll<T> {
    type Response = Response<FullBody>;
    type Error = Infallible;
    type Future = ResponseFuture<T>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// [`LongPoll::handle`].
    fn call(&mut self, req: Request<B>) -> ResponseFuture<T> {
        self.handle(req)
    }
}

impl<T, B> Service<Request<B>> for SseEndpoint<T> {
    type Response = Response<SseBody<T>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<SseBody<T>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// [`SseEndpoint::handle`].
    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.handle(req)))
    }
}

impl<K, T, B> Service<Request<B>> for KeyedPoll<K, T>
where
    K: Hash + Eq + Clone + FromStr,
{
    type Response = Response<FullBody>;
    type Error = Infallible;
    type Future = KeyedResponseFuture<K, T>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// [`KeyedPoll::handle`].
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.handle(req)
    }
}
