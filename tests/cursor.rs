//! The cursor table: what a wait, a callback and a stream answer for each kind
//! of cursor, and how `Version`, `Epoch` and `Cursor` parse, print and convert.

use std::sync::mpsc;

use longpoll::{Broadcaster, Changed, Cursor, Epoch, Resync, Version, WaitError};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

fn versions<T>(changed: &Changed<T>) -> Vec<u64> {
    changed
        .updates()
        .iter()
        .map(|u| u.version().get())
        .collect()
}

fn epoch(n: u64) -> Epoch {
    Epoch::new(n).expect("non-zero epoch")
}

/// A broadcaster in epoch 1 that has published `1..=n` (versions 1..=n).
fn published(n: u32) -> Broadcaster<u32> {
    let b = Broadcaster::builder().epoch(epoch(1)).build(0);
    for i in 1..=n {
        b.notify(i).unwrap();
    }
    b
}

// ---- absent / NEXT -------------------------------------------------------

#[test]
fn next_cursor_waits_then_notify_wakes_and_answers_with_the_new_value() {
    let b = published(3);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    assert!(!wait.is_woken());
    assert_eq!(b.waiter_count(), 1);

    assert_eq!(b.notify(4).unwrap(), Version::new(4));
    assert!(wait.is_woken());
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [4]);
    assert_eq!(**changed.value(), 4);
    assert_eq!(changed.epoch(), epoch(1));
    assert_eq!(changed.resync(), None);
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn next_cursor_created_then_notify_then_first_poll_sees_that_notify() {
    let b = published(0);
    let wait = b.wait(Cursor::NEXT);
    b.notify(1).unwrap();
    let mut wait = spawn(wait);
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [1]);
    assert_eq!(changed.resync(), None);
    assert_eq!(b.waiter_count(), 0, "answered without registering");
}

#[test]
fn next_cursor_created_then_two_notifies_then_first_poll_gets_latest_flagged_lagged() {
    let b = published(0);
    let wait = b.wait(Cursor::NEXT);
    b.notify(1).unwrap();
    b.notify(2).unwrap();
    let changed = assert_ready!(spawn(wait).poll()).unwrap();
    assert_eq!(versions(&changed), [2]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 1 }));
}

#[test]
fn notify_then_next_cursor_created_does_not_see_that_notify() {
    let b = published(0);
    b.notify(1).unwrap();
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    b.notify(2).unwrap();
    assert!(wait.is_woken());
    assert_eq!(versions(&assert_ready!(wait.poll()).unwrap()), [2]);
}

#[test]
fn no_version_is_next_and_default_cursor_is_next() {
    assert_eq!(Cursor::new(None, None), Cursor::NEXT);
    assert_eq!(Cursor::default(), Cursor::NEXT);
    assert_eq!(Cursor::NEXT.version(), None);
    assert_eq!(Cursor::NEXT.epoch(), None);
}

// ---- equal ---------------------------------------------------------------

#[test]
fn cursor_at_current_version_without_epoch_waits_for_next_notify() {
    let b = published(5);
    let mut wait = spawn(b.wait(Cursor::at(Version::new(5))));
    assert_pending!(wait.poll());
    b.notify(6).unwrap();
    assert!(wait.is_woken());
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [6]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn cursor_at_current_version_and_epoch_waits_for_next_notify() {
    let b = published(5);
    let mut wait = spawn(b.wait(Cursor::at(Version::new(5)).with_epoch(epoch(1))));
    assert_pending!(wait.poll());
    b.notify(6).unwrap();
    assert!(wait.is_woken());
    assert_eq!(versions(&assert_ready!(wait.poll()).unwrap()), [6]);
}

#[test]
fn cursor_at_initial_version_of_a_builder_waits() {
    let b = Broadcaster::builder()
        .initial_version(Version::new(1000))
        .build("a");
    assert_eq!(b.version(), Version::new(1000));
    let mut wait = spawn(b.wait(Cursor::at(Version::new(1000))));
    assert_pending!(wait.poll());
    assert_eq!(b.notify("b").unwrap(), Version::new(1001));
    assert_eq!(versions(&assert_ready!(wait.poll()).unwrap()), [1001]);
}

#[test]
fn answer_cursor_chained_into_the_next_wait_waits_for_the_following_notify() {
    let b = published(0);
    b.notify(1).unwrap();
    let first = assert_ready!(spawn(b.wait(Cursor::at(Version::ZERO))).poll()).unwrap();
    assert_eq!(
        first.cursor(),
        Cursor::at(Version::new(1)).with_epoch(epoch(1))
    );
    let mut next = spawn(b.wait(&first));
    assert_pending!(next.poll());
    b.notify(2).unwrap();
    assert_eq!(versions(&assert_ready!(next.poll()).unwrap()), [2]);
}

// ---- older ---------------------------------------------------------------

#[test]
fn cursor_one_behind_is_answered_at_once_with_the_missed_update() {
    let b = published(5);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(4)))).poll()).unwrap();
    assert_eq!(versions(&changed), [5]);
    assert_eq!(**changed.value(), 5);
    assert_eq!(changed.resync(), None);
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn cursor_several_behind_with_default_history_gets_latest_flagged_lagged() {
    let b = published(5);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(1)))).poll()).unwrap();
    assert_eq!(versions(&changed), [5]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 3 }));
}

#[test]
fn cursor_behind_with_matching_epoch_is_answered_at_once() {
    let b = published(2);
    let c = Cursor::at(Version::new(1)).with_epoch(epoch(1));
    let changed = assert_ready!(spawn(b.wait(c)).poll()).unwrap();
    assert_eq!(versions(&changed), [2]);
    assert_eq!(changed.resync(), None);
}

// ---- newer ---------------------------------------------------------------

#[test]
fn cursor_ahead_of_current_is_answered_at_once_flagged_ahead() {
    let b = published(5);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(9)))).poll()).unwrap();
    assert_eq!(changed.version(), Version::new(5));
    assert_eq!(**changed.value(), 5);
    assert_eq!(changed.resync(), Some(Resync::Ahead));
}

#[test]
fn cursor_at_u64_max_is_ahead_not_an_overflow() {
    let b = published(1);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(u64::MAX)))).poll()).unwrap();
    assert_eq!(changed.resync(), Some(Resync::Ahead));
    assert_eq!(changed.version(), Version::new(1));
}

// ---- other epoch ---------------------------------------------------------

#[test]
fn cursor_at_current_version_of_another_epoch_is_answered_at_once_flagged_other_epoch() {
    let b = published(5);
    let c = Cursor::at(Version::new(5)).with_epoch(epoch(2));
    let changed = assert_ready!(spawn(b.wait(c)).poll()).unwrap();
    assert_eq!(changed.version(), Version::new(5));
    assert_eq!(changed.epoch(), epoch(1));
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
}

#[test]
fn cursor_behind_in_another_epoch_is_other_epoch_not_lagged() {
    let b = published(5);
    let c = Cursor::at(Version::new(1)).with_epoch(epoch(2));
    let changed = assert_ready!(spawn(b.wait(c)).poll()).unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
}

#[test]
fn cursor_of_a_random_epoch_broadcaster_used_on_another_is_other_epoch() {
    let a = Broadcaster::new(0);
    let b = Broadcaster::new(0);
    assert_ne!(a.epoch(), b.epoch());
    let changed = assert_ready!(spawn(b.wait(a.current().cursor())).poll()).unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
}

// ---- epoch without version -----------------------------------------------

#[test]
fn epoch_without_version_of_current_epoch_waits_for_next_notify() {
    let b = published(3);
    let mut wait = spawn(b.wait(Cursor::new(None, Some(epoch(1)))));
    assert_pending!(wait.poll());
    b.notify(4).unwrap();
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [4]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn epoch_without_version_of_another_epoch_is_answered_at_once_flagged_other_epoch() {
    let b = published(3);
    let changed = assert_ready!(spawn(b.wait(Cursor::new(None, Some(epoch(7))))).poll()).unwrap();
    assert_eq!(changed.version(), Version::new(3));
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
}

#[test]
fn epoch_without_version_created_then_notify_then_first_poll_sees_that_notify() {
    let b = published(3);
    let wait = b.wait(Cursor::new(None, Some(epoch(1))));
    b.notify(4).unwrap();
    assert_eq!(versions(&assert_ready!(spawn(wait).poll()).unwrap()), [4]);
}

// ---- one table, three ways of waiting -----------------------------------

/// What a cursor gets from a broadcaster at version 5 of epoch 1.
#[derive(Debug, PartialEq)]
enum Expect {
    Waits,
    AtOnce(Option<Resync>),
}

fn table() -> Vec<(&'static str, Cursor, Expect)> {
    let v = |n| Some(Version::new(n));
    vec![
        ("none", Cursor::NEXT, Expect::Waits),
        ("equal", Cursor::new(v(5), None), Expect::Waits),
        (
            "equal+epoch",
            Cursor::new(v(5), Some(epoch(1))),
            Expect::Waits,
        ),
        (
            "epoch only",
            Cursor::new(None, Some(epoch(1))),
            Expect::Waits,
        ),
        ("one behind", Cursor::new(v(4), None), Expect::AtOnce(None)),
        (
            "behind+epoch",
            Cursor::new(v(4), Some(epoch(1))),
            Expect::AtOnce(None),
        ),
        (
            "far behind",
            Cursor::new(v(0), None),
            Expect::AtOnce(Some(Resync::Lagged { skipped: 4 })),
        ),
        (
            "ahead",
            Cursor::new(v(6), None),
            Expect::AtOnce(Some(Resync::Ahead)),
        ),
        (
            "ahead+epoch",
            Cursor::new(v(6), Some(epoch(1))),
            Expect::AtOnce(Some(Resync::Ahead)),
        ),
        (
            "other epoch",
            Cursor::new(v(5), Some(epoch(2))),
            Expect::AtOnce(Some(Resync::OtherEpoch)),
        ),
        (
            "other epoch only",
            Cursor::new(None, Some(epoch(2))),
            Expect::AtOnce(Some(Resync::OtherEpoch)),
        ),
    ]
}

#[test]
fn every_cursor_case_answers_the_same_from_wait() {
    for (name, cursor, expect) in table() {
        let b = published(5);
        let mut wait = spawn(b.wait(cursor));
        let got = match wait.poll() {
            std::task::Poll::Pending => Expect::Waits,
            std::task::Poll::Ready(r) => {
                let changed = r.unwrap();
                assert_eq!(changed.version(), Version::new(5), "{name}");
                Expect::AtOnce(changed.resync())
            }
        };
        assert_eq!(got, expect, "{name}");
        if expect == Expect::Waits {
            b.notify(6).unwrap();
            assert!(wait.is_woken(), "{name}");
            let changed = assert_ready!(wait.poll()).unwrap();
            assert_eq!(versions(&changed), [6], "{name}");
            assert_eq!(changed.resync(), None, "{name}");
        }
    }
}

#[test]
fn every_cursor_case_answers_the_same_from_register() {
    for (name, cursor, expect) in table() {
        let b = published(5);
        let (tx, rx) = mpsc::channel();
        let reg = b
            .register(cursor, move |r: Result<Changed<u32>, WaitError>| {
                let changed = r.unwrap();
                tx.send((changed.version(), changed.resync())).unwrap();
            })
            .unwrap();
        match expect {
            Expect::Waits => {
                assert!(rx.try_recv().is_err(), "{name}: fired too early");
                assert_eq!(b.waiter_count(), 1, "{name}");
                b.notify(6).unwrap();
                assert_eq!(rx.try_recv().unwrap(), (Version::new(6), None), "{name}");
            }
            Expect::AtOnce(resync) => {
                assert_eq!(b.waiter_count(), 0, "{name}");
                assert_eq!(
                    rx.try_recv().unwrap(),
                    (Version::new(5), resync),
                    "{name}: must fire before register returns"
                );
            }
        }
        drop(reg);
    }
}

#[test]
fn every_cursor_case_answers_the_same_from_stream() {
    for (name, cursor, expect) in table() {
        let b = published(5);
        let mut stream = spawn(b.stream(cursor));
        let got = match stream.poll_next() {
            std::task::Poll::Pending => Expect::Waits,
            std::task::Poll::Ready(item) => {
                let changed = item.unwrap().unwrap();
                assert_eq!(changed.version(), Version::new(5), "{name}");
                Expect::AtOnce(changed.resync())
            }
        };
        assert_eq!(got, expect, "{name}");
        // Whatever the first answer, the stream goes on from the current state.
        assert_pending!(stream.poll_next());
        b.notify(6).unwrap();
        assert!(stream.is_woken(), "{name}");
        let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
        assert_eq!(versions(&changed), [6], "{name}");
        assert_eq!(changed.resync(), None, "{name}");
    }
}

// ---- conversions ---------------------------------------------------------

#[test]
fn cursor_converts_from_update_and_changed_carrying_their_epoch() {
    let b = published(2);
    assert_eq!(
        Cursor::at(Version::new(3)),
        Cursor::new(Some(Version::new(3)), None)
    );
    let current = b.current();
    let expected = Cursor::new(Some(Version::new(2)), Some(epoch(1)));
    assert_eq!(Cursor::from(&current), expected);
    assert_eq!(current.cursor(), expected);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(1)))).poll()).unwrap();
    assert_eq!(Cursor::from(&changed), expected);
    assert_eq!(changed.latest().cursor(), expected);
}

#[test]
fn with_epoch_keeps_the_version_and_replaces_the_epoch() {
    let c = Cursor::new(Some(Version::new(8)), Some(epoch(1))).with_epoch(epoch(2));
    assert_eq!(c.version(), Some(Version::new(8)));
    assert_eq!(c.epoch(), Some(epoch(2)));
    assert_eq!(Cursor::NEXT.with_epoch(epoch(3)).version(), None);
}

// ---- Version -------------------------------------------------------------

#[test]
fn version_parses_decimal_digits_and_prints_them_back() {
    for (s, n) in [
        ("0", 0),
        ("7", 7),
        ("42", 42),
        ("007", 7),
        ("18446744073709551615", u64::MAX),
        ("00000000000000000001", 1),
    ] {
        let v: Version = s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(v.get(), n, "{s:?}");
        assert_eq!(v.to_string(), n.to_string());
        assert_eq!(v.to_string().parse::<Version>(), Ok(v));
    }
}

#[test]
fn version_rejects_signs_spaces_non_digits_overflow_and_too_many_digits() {
    for s in [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "abc",
        "١",
        "18446744073709551616",
        "99999999999999999999",
        // 21 digits: the documented limit is 20, even with leading zeros.
        "000000000000000000001",
    ] {
        let err = s
            .parse::<Version>()
            .expect_err(&format!("{s:?} must not parse"));
        assert_eq!(
            err.to_string(),
            "invalid version: expected an unsigned 64-bit decimal integer"
        );
    }
}

#[test]
fn version_next_rises_by_one_and_orders_numerically() {
    assert_eq!(Version::ZERO, Version::default());
    assert_eq!(Version::ZERO.next(), Version::new(1));
    assert!(Version::new(9) < Version::new(10));
    assert_eq!(u64::from(Version::new(12)), 12);
    assert_eq!(Version::from(12u64), Version::new(12));
    assert_eq!(Version::new(u64::MAX - 1).next().get(), u64::MAX);
}

#[test]
#[should_panic(expected = "version overflow")]
fn version_next_at_u64_max_panics() {
    let _ = Version::new(u64::MAX).next();
}

#[test]
fn notify_at_u64_max_panics_and_leaves_the_broadcaster_usable() {
    let b = Broadcaster::builder()
        .initial_version(Version::new(u64::MAX))
        .build(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.notify(1)));
    assert!(r.is_err());
    assert_eq!(b.version(), Version::new(u64::MAX));
    assert_eq!(**b.current().value(), 0);
}

// ---- Epoch ---------------------------------------------------------------

#[test]
fn epoch_parses_one_to_sixteen_hex_digits_in_either_case() {
    for (s, n) in [
        ("1", 1),
        ("ff", 255),
        ("FF", 255),
        ("00000000000000ff", 255),
        ("DeadBeef", 0xdead_beef),
        ("ffffffffffffffff", u64::MAX),
    ] {
        let e: Epoch = s.parse().unwrap_or_else(|err| panic!("{s:?}: {err}"));
        assert_eq!(e.get(), n, "{s:?}");
    }
}

#[test]
fn epoch_prints_sixteen_lowercase_hex_digits_and_parses_back() {
    assert_eq!(epoch(255).to_string(), "00000000000000ff");
    assert_eq!(epoch(0xDEAD_BEEF).to_string(), "00000000deadbeef");
    assert_eq!(epoch(u64::MAX).to_string(), "ffffffffffffffff");
    for _ in 0..100 {
        let e = Epoch::random();
        let s = e.to_string();
        assert_eq!(s.len(), 16);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_eq!(s.parse::<Epoch>(), Ok(e));
    }
}

#[test]
fn epoch_rejects_zero_empty_too_long_signs_spaces_and_non_hex() {
    for s in [
        "",
        "0",
        "0000000000000000",
        "00000000000000001",
        "1ffffffffffffffff",
        "-1",
        "+1",
        " 1",
        "1 ",
        "0x1",
        "g",
        "ü",
    ] {
        let err = s
            .parse::<Epoch>()
            .expect_err(&format!("{s:?} must not parse"));
        assert_eq!(
            err.to_string(),
            "invalid epoch: expected 1 to 16 hex digits, not all zero"
        );
    }
}

#[test]
fn epoch_zero_is_not_an_epoch_and_random_epochs_differ() {
    assert_eq!(Epoch::new(0), None);
    assert_eq!(Epoch::new(5).map(Epoch::get), Some(5));
    let mut seen: Vec<Epoch> = (0..10_000).map(|_| Epoch::random()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10_000);
}

#[test]
fn builder_epoch_is_used_and_default_epoch_is_random_per_broadcaster() {
    let b = Broadcaster::builder().epoch(epoch(42)).build(());
    assert_eq!(b.epoch(), epoch(42));
    assert_eq!(b.current().epoch(), epoch(42));
    let (x, y) = (Broadcaster::new(()), Broadcaster::new(()));
    assert_ne!(x.epoch(), y.epoch());
    // Clones share one sequence.
    assert_eq!(x.clone().epoch(), x.epoch());
    assert!(x.clone().same_broadcaster(&x));
    assert!(!x.same_broadcaster(&y));
}

#[test]
fn wait_on_the_last_answer_then_restart_at_the_same_version_answers_other_epoch() {
    let b = published(2);
    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::new(1)))).poll()).unwrap();
    b.restart(epoch(9), changed.version(), 7).unwrap();
    // The easy chaining keeps the epoch: the restart is not taken for a
    // continuation of the old sequence.
    let again = assert_ready!(spawn(b.wait(&changed)).poll()).unwrap();
    assert_eq!(again.resync(), Some(Resync::OtherEpoch));
    assert_eq!(**again.value(), 7);
    let again = assert_ready!(spawn(b.wait(changed.cursor())).poll()).unwrap();
    assert_eq!(again.resync(), Some(Resync::OtherEpoch));
    // `Cursor::at` is the explicit "any epoch": it waits.
    let mut any = spawn(b.wait(Cursor::at(changed.version())));
    assert_pending!(any.poll());
}
