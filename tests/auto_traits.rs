//! Auto traits and common traits of every public type and future, checked at
//! compile time: a change that makes `Wait` `!Send`, or `Broadcaster<Rc<_>>`
//! `Send`, fails to build this file.
#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::Debug;
use std::future::Future;
use std::rc::Rc;

use futures::StreamExt;
use longpoll::{
    Broadcaster, Builder, Changed, ChangedStream, ClosedError, Cursor, Epoch, OwnedWait,
    ParseEpochError, ParseVersionError, PublishError, Registration, Resync, Update, Version, Wait,
    WaitError,
};

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}
fn clone<T: Clone>() {}
fn copy<T: Copy>() {}
fn debug<T: Debug>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}
fn spawnable<F: Future + Send + 'static>(_: F) {}

/// Fails to compile if `$ty` implements `$tr` (the ambiguity trick of the
/// `static_assertions` crate: with an impl, `_` has two candidates).
macro_rules! assert_not_impl {
    ($ty:ty: $tr:path) => {
        const _: fn() = || {
            trait AmbiguousIfImpl<A> {
                fn some_item() {}
            }
            impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
            struct Invalid;
            impl<T: ?Sized + $tr> AmbiguousIfImpl<Invalid> for T {}
            let _ = <$ty as AmbiguousIfImpl<_>>::some_item;
        };
    };
}

#[test]
fn every_public_type_is_send_and_sync_when_t_is() {
    send::<Broadcaster<u32>>();
    sync::<Broadcaster<u32>>();
    send::<Builder>();
    sync::<Builder>();
    send::<Wait<'static, u32>>();
    sync::<Wait<'static, u32>>();
    send::<OwnedWait<u32>>();
    sync::<OwnedWait<u32>>();
    send::<ChangedStream<u32>>();
    sync::<ChangedStream<u32>>();
    send::<Registration<u32>>();
    sync::<Registration<u32>>();
    send::<Changed<u32>>();
    sync::<Changed<u32>>();
    send::<Update<u32>>();
    sync::<Update<u32>>();
    send::<Cursor>();
    sync::<Cursor>();
    send::<Version>();
    sync::<Version>();
    send::<Epoch>();
    sync::<Epoch>();
    send::<Resync>();
    sync::<Resync>();
}

#[test]
fn every_error_is_a_send_sync_static_error_and_copy() {
    error::<WaitError>();
    error::<ClosedError>();
    error::<PublishError>();
    error::<ParseVersionError>();
    error::<ParseEpochError>();
    copy::<WaitError>();
    copy::<ClosedError>();
    copy::<PublishError>();
    copy::<ParseVersionError>();
    copy::<ParseEpochError>();
    // Boxes into the usual error types.
    let _: Box<dyn std::error::Error + Send + Sync> = Box::new(WaitError::Closed);
}

#[test]
fn handles_and_answers_are_clone_and_cursor_parts_are_copy() {
    clone::<Broadcaster<NotClone>>();
    clone::<Builder>();
    clone::<Changed<NotClone>>();
    clone::<Update<NotClone>>();
    copy::<Cursor>();
    copy::<Version>();
    copy::<Epoch>();
    copy::<Resync>();
}

/// A value type that is not `Clone`: handles and answers share it by `Arc`.
struct NotClone;

assert_not_impl!(Wait<'static, u32>: Clone);
assert_not_impl!(ChangedStream<u32>: Clone);
assert_not_impl!(OwnedWait<u32>: Clone);

// A bare version does not convert into a cursor: it would drop the epoch
// (`Cursor::at` says "any epoch" explicitly).
assert_not_impl!(Cursor: From<Version>);
assert_not_impl!(Cursor: From<Option<Version>>);
assert_not_impl!(Registration<u32>: Clone);

#[test]
fn futures_streams_and_handles_are_unpin() {
    unpin::<Broadcaster<std::marker::PhantomPinned>>();
    unpin::<Wait<'static, std::marker::PhantomPinned>>();
    unpin::<ChangedStream<std::marker::PhantomPinned>>();
    unpin::<OwnedWait<std::marker::PhantomPinned>>();
    unpin::<Registration<std::marker::PhantomPinned>>();
    unpin::<Changed<std::marker::PhantomPinned>>();
    unpin::<Update<std::marker::PhantomPinned>>();
}

#[test]
fn every_public_type_is_debug() {
    debug::<Broadcaster<NotClone>>();
    debug::<Builder>();
    debug::<Wait<'static, NotClone>>();
    debug::<ChangedStream<NotClone>>();
    debug::<OwnedWait<NotClone>>();
    debug::<Registration<NotClone>>();
    debug::<Changed<u32>>();
    debug::<Update<u32>>();
    debug::<Cursor>();
    debug::<Version>();
    debug::<Epoch>();
    debug::<Resync>();
}

#[test]
fn cursor_parts_are_unwind_safe() {
    fn unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    unwind_safe::<Cursor>();
    unwind_safe::<Version>();
    unwind_safe::<Epoch>();
    unwind_safe::<Resync>();
    unwind_safe::<WaitError>();
    unwind_safe::<PublishError>();
}

#[test]
fn async_blocks_awaiting_waits_and_streams_can_be_spawned_on_a_multi_thread_runtime() {
    let b = Broadcaster::new(0u32);
    spawnable({
        let b = b.clone();
        async move { b.wait(Cursor::NEXT).await.map(|c| c.version()) }
    });
    spawnable({
        let mut stream = b.stream(Cursor::NEXT);
        async move { stream.next().await.map(|r| r.map(|c| c.version())) }
    });
    spawnable({
        let wait = b.wait_owned(Cursor::NEXT);
        async move { wait.await.map(|c| c.version()) }
    });
    spawnable({
        let reg = b.register(Cursor::NEXT, |_| {}).unwrap();
        async move { reg.cancel() }
    });
}

// A value that is not `Send + Sync` keeps everything that shares it on one
// thread.
assert_not_impl!(Broadcaster<Rc<u32>>: Send);
assert_not_impl!(Broadcaster<Rc<u32>>: Sync);
assert_not_impl!(Broadcaster<Cell<u32>>: Send);
assert_not_impl!(Broadcaster<Cell<u32>>: Sync);
assert_not_impl!(Wait<'static, Rc<u32>>: Send);
assert_not_impl!(ChangedStream<Rc<u32>>: Send);
assert_not_impl!(OwnedWait<Rc<u32>>: Send);
assert_not_impl!(Registration<Rc<u32>>: Send);
assert_not_impl!(Changed<Rc<u32>>: Send);
assert_not_impl!(Update<Rc<u32>>: Send);

#[test]
fn broadcaster_of_a_non_send_value_still_works_on_one_thread() {
    let b = Broadcaster::new(Rc::new(1));
    b.notify(Rc::new(2)).unwrap();
    let changed = futures::executor::block_on(b.wait(Cursor::at(Version::ZERO))).unwrap();
    assert_eq!(**changed.value(), Rc::new(2));
}

/// `WaitTimeout` comes with the `tokio` feature (on by default).
#[cfg(feature = "tokio")]
mod wait_timeout {
    use super::*;
    use longpoll::WaitTimeout;

    #[test]
    fn wait_timeout_is_send_sync_and_debug_and_spawnable() {
        send::<WaitTimeout<'static, u32>>();
        sync::<WaitTimeout<'static, u32>>();
        debug::<WaitTimeout<'static, NotClone>>();
        let b = Broadcaster::new(0u32);
        spawnable(async move {
            b.wait_timeout(Cursor::NEXT, std::time::Duration::from_secs(1))
                .await
                .map(|c| c.version())
        });
    }

    assert_not_impl!(WaitTimeout<'static, u32>: Clone);
    // It holds a tokio `Sleep`: pin it (`std::pin::pin!`) to poll it by hand.
    assert_not_impl!(WaitTimeout<'static, u32>: Unpin);
    assert_not_impl!(WaitTimeout<'static, Rc<u32>>: Send);
}
