//! `GET /metrics` and the logs.
//!
//! The metrics recorder is Prometheus's (`metrics-exporter-prometheus`),
//! installed once per process before the cart's broadcaster is built: a
//! broadcaster registers its metric handles with the recorder in place when
//! it is built. `longpoll`'s own metrics (`longpoll_*`) appear when the
//! example is built with `--features metrics`; the cart's gauges
//! (`shopping_cart_*`, set at each scrape) always do.
//!
//! Logs go to stderr (stdout's first line is the address, for scripts),
//! filtered by `RUST_LOG` (default `info`); `longpoll`'s events appear with
//! `--features tracing`, e.g. `RUST_LOG=info,longpoll=debug`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of the `*_seconds` metrics: 1 µs to 1 min.
const SECONDS: [f64; 10] = [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 5.0, 15.0, 60.0];

/// Histogram buckets of the counts (`longpoll_fanout_waiters`,
/// `longpoll_backplane_catchup_versions`).
const COUNTS: [f64; 7] = [0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

/// How often the recorder drops histogram samples it has already folded
/// into its buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// The recorder's handle, installing the recorder the first time.
///
/// If another recorder is in place already (a test process that installed
/// its own), that one keeps recording and `/metrics` shows this one, empty.
pub(crate) fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_waiters".into()), &COUNTS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_versions".into()), &COUNTS))
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            })
            .expect("a thread can be started");
        handle
    })
}

/// Every metric, in Prometheus's text format.
pub(crate) fn render() -> String {
    recorder().render()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub(crate) fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
