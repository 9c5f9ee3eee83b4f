//! The last `Broadcaster` handle dropped: nothing can be published again,
//! so every pending stream, owned wait and callback learns it (as a
//! `tokio::sync::watch` receiver does when its sender goes). Streams,
//! owned waits and registrations are not handles: they do not keep the
//! broadcaster open.

use std::sync::mpsc;

use longpoll::keyed::Keyed;
use longpoll::{Broadcaster, Cursor, WaitError};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

#[test]
fn last_handle_dropped_then_pending_stream_yields_closed_then_ends() {
    let b = Broadcaster::new(0u32);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    drop(b);
    assert!(stream.is_woken());
    let err = assert_ready!(stream.poll_next()).unwrap().unwrap_err();
    assert_eq!(err, WaitError::Closed);
    assert!(assert_ready!(stream.poll_next()).is_none());
}

#[test]
fn last_handle_dropped_then_pending_owned_wait_resolves_closed() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait_owned(Cursor::NEXT));
    assert_pending!(wait.poll());
    drop(b);
    assert!(wait.is_woken());
    assert_eq!(assert_ready!(wait.poll()).unwrap_err(), WaitError::Closed);
}

#[test]
fn last_handle_dropped_then_owned_wait_first_polled_after_resolves_closed() {
    let b = Broadcaster::new(0u32);
    b.notify(1).unwrap();
    let wait = b.wait_owned(Cursor::NEXT);
    drop(b);
    assert!(assert_ready!(spawn(wait).poll()).unwrap_err().is_closed());
}

#[test]
fn last_handle_dropped_on_another_thread_then_awaited_stream_ends() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        let b = Broadcaster::new(0u32);
        let mut stream = b.stream(Cursor::NEXT);
        let waiter = tokio::spawn(async move {
            let mut items = 0;
            while let Some(Ok(_)) = stream.next().await {
                items += 1;
            }
            items
        });
        let publisher = tokio::task::spawn_blocking(move || {
            for i in 1..=100 {
                b.notify(i).unwrap();
            }
        });
        publisher.await.unwrap();
        // Every handle is gone: the stream ends instead of waiting forever.
        let items = waiter.await.unwrap();
        assert!(items <= 100);
    });
}

#[test]
fn last_handle_dropped_then_detached_callback_is_called_with_closed() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| tx.send(r.unwrap_err()).unwrap())
        .unwrap()
        .detach();
    drop(b);
    assert_eq!(rx.try_recv(), Ok(WaitError::Closed));
}

#[test]
fn last_handle_dropped_then_registration_held_is_called_with_closed() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let reg = b
        .register(Cursor::NEXT, move |r| tx.send(r.unwrap_err()).unwrap())
        .unwrap();
    drop(b);
    assert_eq!(rx.try_recv(), Ok(WaitError::Closed));
    assert!(!reg.cancel(), "already called");
}

#[test]
fn one_of_two_handles_dropped_then_stream_still_waits_and_gets_the_change() {
    let b = Broadcaster::new(0u32);
    let other = b.clone();
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    drop(b);
    assert!(!stream.is_woken());
    assert_pending!(stream.poll_next());
    other.notify(1).unwrap();
    assert_eq!(
        assert_ready!(stream.poll_next())
            .unwrap()
            .unwrap()
            .version()
            .get(),
        1
    );
}

#[test]
fn last_handle_dropped_then_stream_created_earlier_and_first_polled_after_ends() {
    let b = Broadcaster::new(0u32);
    let stream = b.stream(Cursor::NEXT);
    drop(b);
    let mut stream = spawn(stream);
    assert!(assert_ready!(stream.poll_next())
        .unwrap()
        .unwrap_err()
        .is_closed());
    assert!(assert_ready!(stream.poll_next()).is_none());
}

#[test]
fn last_handle_dropped_then_stream_behind_still_yields_what_it_missed_first() {
    let b = Broadcaster::builder().history(4).build(0u32);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    b.notify(1).unwrap();
    drop(b);
    // A close delivers nothing more, as `close` does.
    assert!(assert_ready!(stream.poll_next())
        .unwrap()
        .unwrap_err()
        .is_closed());
}

#[test]
fn callback_holding_a_clone_keeps_the_broadcaster_open() {
    let b = Broadcaster::new(0u32);
    let keep = b.clone();
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| {
        let _keep = &keep;
        tx.send(r.map(|c| c.version().get())).unwrap();
    })
    .unwrap()
    .detach();
    let probe = b.clone();
    drop(b);
    // The callback's clone is a handle: the broadcaster is still open.
    assert!(!probe.is_closed());
    drop(probe);
    assert!(
        rx.try_recv().is_err(),
        "a handle remains inside the callback"
    );
}

#[test]
fn keyed_hub_dropped_then_pending_keyed_wait_resolves_closed() {
    let hub: Keyed<String, u32> = Keyed::builder().build();
    let mut wait = spawn(hub.wait("a", Cursor::NEXT).unwrap());
    assert_pending!(wait.poll());
    drop(hub);
    assert!(wait.is_woken());
    assert!(assert_ready!(wait.poll()).unwrap_err().is_closed());
}

/// The SSE body is not a handle either: it ends when the last one goes.
#[cfg(feature = "http")]
#[tokio::test]
async fn last_handle_dropped_then_pending_event_stream_ends() {
    use bytes::Bytes;
    use longpoll::sse::EventStreams;
    use longpoll::Update;

    let b = Broadcaster::new("a".to_string());
    let sse = EventStreams::new(|u: &Update<String>| Bytes::from(u.value().to_string()));
    let mut events = spawn(sse.stream(&b, Some(b.current().cursor())));
    assert!(
        assert_ready!(events.poll_next()).is_some(),
        "the retry frame"
    );
    assert_pending!(events.poll_next());
    drop(b);
    assert!(events.is_woken());
    assert!(assert_ready!(events.poll_next()).is_none());
}

#[test]
fn last_handle_dropped_with_a_panicking_callback_then_the_drop_panics_after_telling_the_rest() {
    let b = Broadcaster::new(0u32);
    b.register(Cursor::NEXT, |_| panic!("callback failed"))
        .unwrap()
        .detach();
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| tx.send(r.unwrap_err()).unwrap())
        .unwrap()
        .detach();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(b)));
    assert!(dropped.is_err(), "the callback's panic resumes in the drop");
    assert_eq!(rx.try_recv(), Ok(WaitError::Closed));
}

#[test]
fn last_handle_dropped_while_unwinding_with_a_panicking_callback_does_not_abort() {
    let b = Broadcaster::new(0u32);
    b.register(Cursor::NEXT, |_| panic!("callback failed"))
        .unwrap()
        .detach();
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| tx.send(r.unwrap_err()).unwrap())
        .unwrap()
        .detach();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _b = b;
        panic!("the owner fails");
    }));
    // The owner's panic, not the callback's (which is dropped: a second
    // panic while unwinding would abort the process).
    let payload = unwound.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("the owner fails")
    );
    assert_eq!(rx.try_recv(), Ok(WaitError::Closed));
}
