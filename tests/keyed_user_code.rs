//! User code the keyed hub calls (a key's `Hash` and `Clone`/`to_owned`,
//! `init`, `configure`, a value's `Drop`) runs outside every shard lock, so
//! it may call back into the hub; and a panic in it costs nothing: no place
//! under `max_keys` is lost.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::Duration;

use longpoll::keyed::Keyed;
use longpoll::{Builder, Cursor};

/// Runs `f` on its own thread and fails the test if it has not returned
/// within ten seconds: a deadlock becomes a failure instead of a hang.
fn within_ten_seconds<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(r) => r,
            Err(p) => panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: still running after 10 s"),
    }
}

#[test]
fn init_panics_then_no_place_under_max_keys_is_lost() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .max_keys(1)
        .init(|k: &String| {
            if k.starts_with("bad") {
                panic!("init failed")
            } else {
                7
            }
        })
        .build_with_init();
    for i in 0..5 {
        let key = format!("bad{i}");
        assert!(panic::catch_unwind(AssertUnwindSafe(|| hub.broadcaster(&key))).is_err());
    }
    assert_eq!(hub.len(), 0);
    assert_eq!(**hub.broadcaster("good").unwrap().current().value(), 7);
    assert!(hub.broadcaster("other").is_err(), "the limit still holds");
}

#[test]
fn configure_panics_or_asks_for_history_zero_then_no_place_is_lost() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .max_keys(1)
        .configure(|k: &String| match k.as_str() {
            "panics" => panic!("configure failed"),
            "zero" => Builder::new().history(0),
            _ => Builder::new(),
        })
        .build();
    for key in ["panics", "zero", "panics", "zero"] {
        assert!(panic::catch_unwind(AssertUnwindSafe(|| hub.notify(key, 1))).is_err());
    }
    assert_eq!(hub.len(), 0);
    hub.notify("fine", 1).unwrap();
    assert_eq!(hub.len(), 1);
}

/// A key whose `Clone` (hence `to_owned`) can be made to panic.
#[derive(PartialEq, Eq, Hash, Debug)]
struct Fragile(u32);

impl Clone for Fragile {
    fn clone(&self) -> Self {
        assert!(self.0 != 13, "clone failed");
        Fragile(self.0)
    }
}

#[test]
fn to_owned_panics_then_no_place_is_lost() {
    let hub: Keyed<Fragile, u32> = Keyed::builder().max_keys(1).build();
    for _ in 0..3 {
        assert!(
            panic::catch_unwind(AssertUnwindSafe(|| hub.wait(&Fragile(13), Cursor::NEXT))).is_err()
        );
    }
    assert_eq!(hub.len(), 0);
    hub.notify(&Fragile(1), 1).unwrap();
}

// A key type whose `Hash` and `Clone` call back into the hub, and a value
// type whose `Drop` does: with a single shard, any of them running under the
// shard lock deadlocks (the lock is not reentrant).

static KEYS_HUB: OnceLock<Keyed<Reentrant, u32>> = OnceLock::new();
static VALUES_HUB: OnceLock<Keyed<u32, Noisy>> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);
static REENTERED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Calls into the hubs (which takes a shard lock) once per outermost call.
fn reenter() {
    if !ARMED.load(Ordering::SeqCst) || DEPTH.get() > 0 {
        return;
    }
    DEPTH.set(1);
    if let Some(hub) = KEYS_HUB.get() {
        let _ = hub.contains_key(&Reentrant(u32::MAX));
        REENTERED.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(hub) = VALUES_HUB.get() {
        let _ = hub.contains_key(&u32::MAX);
        REENTERED.fetch_add(1, Ordering::SeqCst);
    }
    DEPTH.set(0);
}

#[derive(PartialEq, Eq, Debug)]
struct Reentrant(u32);

impl Hash for Reentrant {
    fn hash<H: Hasher>(&self, state: &mut H) {
        reenter();
        self.0.hash(state);
    }
}

impl Clone for Reentrant {
    fn clone(&self) -> Self {
        reenter();
        Reentrant(self.0)
    }
}

#[derive(Default)]
struct Noisy;

impl Drop for Noisy {
    fn drop(&mut self) {
        reenter();
    }
}

/// Every path of the hub that hashes or clones a key: creation, growth
/// of the map (rehashing), lookups, parking, removal, shrinking.
#[test]
fn key_hash_and_clone_that_call_back_into_the_hub_do_not_deadlock() {
    let hub = KEYS_HUB.get_or_init(|| {
        Keyed::builder()
            .shards(1)
            .idle_timeout(Duration::from_secs(3600))
            .build()
    });
    ARMED.store(true, Ordering::SeqCst);
    let before = REENTERED.load(Ordering::SeqCst);
    within_ten_seconds(move || {
        for k in 0..2_000 {
            hub.notify(&Reentrant(k), 1).unwrap();
        }
        for k in 0..2_000 {
            assert!(hub.contains_key(&Reentrant(k)));
            drop(hub.get(&Reentrant(k)).unwrap());
        }
        assert_eq!(hub.sweep(), 0);
        for k in 0..2_000 {
            drop(hub.broadcaster(&Reentrant(k)).unwrap());
        }
        drop(hub.wait(&Reentrant(0), Cursor::NEXT).unwrap());
        drop(
            hub.wait_many((0..10).map(|k| (Reentrant(k), Cursor::NEXT)))
                .unwrap(),
        );
        for k in 0..2_000 {
            assert!(hub.remove(&Reentrant(k)));
        }
        hub.sweep();
    });
    assert!(REENTERED.load(Ordering::SeqCst) > before, "the hooks ran");
}

/// Every path of the hub that drops a value: parking a key (its live
/// broadcaster goes), bringing it back with a shorter history (the parked
/// values that no longer fit go), removal.
#[test]
fn value_drop_that_calls_back_into_the_hub_does_not_deadlock() {
    let history = Arc::new(AtomicUsize::new(4));
    let configured = Arc::clone(&history);
    let hub = VALUES_HUB.get_or_init(move || {
        Keyed::builder()
            .shards(1)
            .idle_timeout(Duration::from_secs(3600))
            .configure(move |_| Builder::new().history(configured.load(Ordering::SeqCst)))
            .build()
    });
    ARMED.store(true, Ordering::SeqCst);
    let before = REENTERED.load(Ordering::SeqCst);
    within_ten_seconds(move || {
        for k in 0..100 {
            for _ in 0..4 {
                hub.notify(&k, Noisy).unwrap();
            }
        }
        assert_eq!(hub.sweep(), 0, "parked");
        history.store(1, Ordering::SeqCst);
        for k in 0..100 {
            drop(hub.broadcaster(&k).unwrap());
        }
        assert_eq!(hub.sweep(), 0, "parked again");
        for k in 0..100 {
            assert!(hub.remove(&k));
        }
    });
    assert!(REENTERED.load(Ordering::SeqCst) > before, "the hooks ran");
}
