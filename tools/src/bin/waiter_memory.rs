//! Memory per parked waiter: parks N tasks on a `longpoll` wait, on a tokio
//! `watch` receiver, and on a bare `std::future::pending()`, and prints the
//! bytes each costs over the bare task.
//!
//! ```text
//! cargo run --release -p longpoll-tools --bin waiter_memory              # N = 100000 and 1000000
//! cargo run --release -p longpoll-tools --bin waiter_memory -- 250000    # any list of N
//! ```
//!
//! Each (variant, N) runs in a child process of its own on a current-thread
//! runtime, so that memory freed by one measurement is not reused by the
//! next. Two figures per task:
//!
//! * `heap B/task`: bytes requested from the allocator while the N tasks are
//!   spawned and parked, counted exactly by a counting `#[global_allocator]`
//!   (the `cap` crate) and divided by N. This is the precise figure.
//! * `RSS B/task`: growth of the resident set (`/proc/self/statm`), which
//!   adds the allocator's own rounding and bookkeeping.
//!
//! Both include what the runtime spends per task (the task cell, which
//! tokio aligns to 128 bytes on x86_64 and aarch64, and its run queue), the
//! same for every variant; the `over bare` columns subtract it. The last
//! lines separate the waiter list from the task: N `Wait` futures held in
//! one `Vec` and polled once, without tasks, so that only the future and the
//! broadcaster's waiter list are counted.

use std::alloc::System;
use std::future::Future as _;
use std::process::{Command, ExitCode};
use std::time::Instant;

use cap::Cap;
use longpoll::{Broadcaster, Cursor, Version};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const VARIANTS: [&str; 4] = ["bare", "bare_48b", "longpoll", "tokio_watch"];

/// Resident set size in bytes, from `/proc/self/statm` (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What one child process measured.
struct Measured {
    heap: usize,
    rss: Option<u64>,
    future_size: usize,
}

/// Spawns `n` tasks of `variant` on a current-thread runtime, lets each be
/// polled once, and measures what that cost.
fn measure(variant: &str, n: usize) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let broadcaster = Broadcaster::new(0u64);
    let (tx, _rx) = tokio::sync::watch::channel(0u64);
    // Warm the runtime up: its first spawn allocates internal structures.
    rt.block_on(async { tokio::spawn(async {}).await.expect("warm-up task") });

    let heap0 = ALLOC.allocated();
    let rss0 = rss_bytes();
    let mut future_size = 0;
    rt.block_on(async {
        match variant {
            "bare" => {
                for _ in 0..n {
                    let fut = std::future::pending::<()>();
                    future_size = size_of_val(&fut);
                    drop(tokio::spawn(fut));
                }
            }
            "bare_48b" => {
                // A bare task whose future is as large as the longpoll one.
                for _ in 0..n {
                    let pad = [0u64; 5];
                    let fut = async move {
                        std::future::pending::<()>().await;
                        std::hint::black_box(pad);
                    };
                    future_size = size_of_val(&fut);
                    drop(tokio::spawn(fut));
                }
            }
            "longpoll" => {
                for _ in 0..n {
                    let b = broadcaster.clone();
                    let fut = async move {
                        let _ = b.wait(Cursor::at(Version::ZERO)).await;
                    };
                    future_size = size_of_val(&fut);
                    drop(tokio::spawn(fut));
                }
            }
            "tokio_watch" => {
                for _ in 0..n {
                    let mut rx = tx.subscribe();
                    let fut = async move {
                        let _ = rx.changed().await;
                    };
                    future_size = size_of_val(&fut);
                    drop(tokio::spawn(fut));
                }
            }
            other => panic!("unknown variant {other}"),
        }
        // The run queue is FIFO: once a task spawned last has run, every
        // task before it has been polled once, and so is parked.
        tokio::spawn(async {}).await.expect("sentinel task");
    });
    let heap = ALLOC.allocated() - heap0;
    let rss = rss_bytes().zip(rss0).map(|(a, b)| a.saturating_sub(b));
    if variant == "longpoll" {
        assert_eq!(broadcaster.waiter_count(), n, "every task is parked");
    }
    // Leave without tearing a million tasks down: the figures are taken.
    std::mem::forget(rt);
    Measured {
        heap,
        rss,
        future_size,
    }
}

/// N `Wait` futures in one `Vec`, each polled once with a no-op waker: the
/// bytes of the futures plus the broadcaster's waiter list, without tasks.
fn waits_without_tasks(n: usize) -> (usize, usize) {
    let b = Broadcaster::new(0u64);
    let heap0 = ALLOC.allocated();
    let mut waits = Vec::with_capacity(n);
    for _ in 0..n {
        waits.push(b.wait(Cursor::at(Version::ZERO)));
    }
    let vec_bytes = ALLOC.allocated() - heap0;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for w in &mut waits {
        assert!(std::pin::Pin::new(w).poll(&mut cx).is_pending());
    }
    assert_eq!(b.waiter_count(), n);
    let list_bytes = ALLOC.allocated() - heap0 - vec_bytes;
    (vec_bytes, list_bytes)
}

fn child(variant: &str, n: usize) {
    let m = measure(variant, n);
    println!(
        "heap={} rss={} future={}",
        m.heap,
        m.rss.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        m.future_size
    );
}

fn parse_child(out: &str) -> Option<Measured> {
    let mut heap = None;
    let mut rss = None;
    let mut future_size = None;
    for kv in out.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "heap" => heap = v.parse().ok(),
            "rss" => rss = v.parse().ok(),
            "future" => future_size = v.parse().ok(),
            _ => {}
        }
    }
    Some(Measured {
        heap: heap?,
        rss,
        future_size: future_size?,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let n = args[2].parse().expect("N");
        child(&args[1], n);
        return ExitCode::SUCCESS;
    }
    let ns: Vec<usize> = if args.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        match args.iter().map(|a| a.replace('_', "").parse()).collect() {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("usage: waiter_memory [N ...]  ({e})");
                return ExitCode::FAILURE;
            }
        }
    };
    let exe = std::env::current_exe().expect("own path");
    println!("memory per parked task (heap: counting allocator, exact; RSS: /proc/self/statm)");
    println!(
        "{:<12} {:>9} {:>9} {:>12} {:>11} {:>15} {:>14}",
        "variant", "N", "future B", "heap B/task", "RSS B/task", "heap over bare", "RSS over bare"
    );
    for &n in &ns {
        let mut bare: Option<Measured> = None;
        for variant in VARIANTS {
            let started = Instant::now();
            let out = Command::new(&exe)
                .args(["--child", variant, &n.to_string()])
                .output()
                .expect("run child");
            if !out.status.success() {
                eprintln!(
                    "{variant} N={n} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return ExitCode::FAILURE;
            }
            let Some(m) = parse_child(&String::from_utf8_lossy(&out.stdout)) else {
                eprintln!("{variant} N={n}: unreadable child output");
                return ExitCode::FAILURE;
            };
            let per = |b: f64| b / n as f64;
            let heap = per(m.heap as f64);
            let rss = m.rss.map(|r| per(r as f64));
            let (heap_over, rss_over) = match &bare {
                Some(b) => (
                    format!("{:+.1}", heap - per(b.heap as f64)),
                    rss.zip(b.rss)
                        .map_or("-".into(), |(r, br)| format!("{:+.1}", r - per(br as f64))),
                ),
                None => ("".into(), "".into()),
            };
            println!(
                "{variant:<12} {n:>9} {:>9} {heap:>12.1} {:>11} {heap_over:>15} {rss_over:>14}   ({:.1?})",
                m.future_size,
                rss.map_or("-".into(), |r| format!("{r:.1}")),
                started.elapsed()
            );
            if variant == "bare" {
                bare = Some(m);
            }
        }
    }
    for &n in &ns {
        let (vec_bytes, list_bytes) = waits_without_tasks(n);
        println!(
            "longpoll without tasks, N={n}: Wait future {} B ({:.1} B each in a Vec), \
             waiter list {:.1} B per waiter",
            size_of::<longpoll::Wait<'static, u64>>(),
            vec_bytes as f64 / n as f64,
            list_bytes as f64 / n as f64
        );
    }
    ExitCode::SUCCESS
}
