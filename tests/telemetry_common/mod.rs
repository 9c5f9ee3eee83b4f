//! Helpers for the telemetry tests: a `metrics::Recorder` that keeps what it
//! is given and reads it back without resetting anything, and a `tracing`
//! layer that captures every event (and counts spans).
#![allow(dead_code, unreachable_pub)] // each test file uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

// ---------------------------------------------------------------- metrics

/// What a [`TestRecorder`] holds.
#[derive(Default)]
struct Store {
    counters: HashMap<Key, Arc<AtomicU64>>,
    /// `f64` bits, as `metrics` implements `GaugeFn` for `AtomicU64`.
    gauges: HashMap<Key, Arc<AtomicU64>>,
    histograms: HashMap<Key, Arc<Samples>>,
    described: HashMap<String, (Option<Unit>, String)>,
}

/// A histogram's samples, in the order recorded.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// A recorder for one test: install it with `metrics::with_local_recorder`
/// (handles registered then stay bound to it) or
/// `metrics::set_default_local_recorder`.
#[derive(Clone, Default)]
pub struct TestRecorder {
    store: Arc<Mutex<Store>>,
    /// How many times a handle was asked for (a registry lookup).
    lookups: Arc<AtomicUsize>,
}

impl TestRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> Key {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string()))
            .collect();
        Key::from_parts(name.to_string(), labels)
    }

    /// The counter's value, 0 if never registered.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let store = self.store.lock().unwrap();
        store
            .counters
            .get(&Self::key(name, labels))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// The gauge's value, `None` if never registered.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        let store = self.store.lock().unwrap();
        store
            .gauges
            .get(&Self::key(name, &[]))
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    /// Every sample of the histogram, empty if never registered.
    pub fn histogram(&self, name: &str) -> Vec<f64> {
        let store = self.store.lock().unwrap();
        store
            .histograms
            .get(&Self::key(name, &[]))
            .map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
    }

    /// Every registered metric: name and labels.
    pub fn keys(&self) -> Vec<(String, Vec<(String, String)>)> {
        let store = self.store.lock().unwrap();
        store
            .counters
            .keys()
            .chain(store.gauges.keys())
            .chain(store.histograms.keys())
            .map(|k| {
                let labels = k
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (k.name().to_owned(), labels)
            })
            .collect()
    }

    /// The unit and description given for `name`.
    pub fn described(&self, name: &str) -> Option<(Option<Unit>, String)> {
        self.store.lock().unwrap().described.get(name).cloned()
    }

    /// How many handles were asked for so far.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Every metric's labels are `reason` only, from the documented
    /// values, and nothing names `forbidden` (a key or channel name the
    /// test used).
    pub fn assert_no_names_in_labels(&self, forbidden: &[&str]) {
        const REASONS: [&str; 6] = [
            "full",
            "closed",
            "too_many_keys",
            "lagged",
            "ahead",
            "other_epoch",
        ];
        let keys = self.keys();
        assert!(!keys.is_empty(), "nothing was recorded");
        for (name, labels) in keys {
            assert!(name.starts_with("longpoll_"), "{name}");
            for (k, v) in &labels {
                assert_eq!(k, "reason", "{name} has a label {k}={v}");
                assert!(REASONS.contains(&v.as_str()), "{name}{{reason={v}}}");
            }
            for f in forbidden {
                assert!(!name.contains(f), "{name} names {f}");
                assert!(
                    labels.iter().all(|(k, v)| !k.contains(f) && !v.contains(f)),
                    "{name} {labels:?} names {f}"
                );
            }
        }
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap();
        Counter::from_arc(Arc::clone(store.counters.entry(key.clone()).or_default()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap();
        Gauge::from_arc(Arc::clone(
            store
                .gauges
                .entry(key.clone())
                .or_insert_with(|| Arc::new(AtomicU64::new(0f64.to_bits()))),
        ))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap();
        Histogram::from_arc(Arc::clone(store.histograms.entry(key.clone()).or_default()))
    }
}

impl TestRecorder {
    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.store
            .lock()
            .unwrap()
            .described
            .insert(key.as_str().to_owned(), (unit, description.into_owned()));
    }
}

// ---------------------------------------------------------------- tracing

/// One captured event.
#[derive(Clone, Debug)]
pub struct Event {
    pub target: String,
    pub level: tracing::Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// A field's value as recorded (`Display` or `Debug` of it).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// A field's value as a number.
    pub fn u64(&self, name: &str) -> u64 {
        self.field(name)
            .unwrap_or_else(|| panic!("{self:?} has no {name}"))
            .parse()
            .unwrap_or_else(|_| panic!("{self:?}: {name} is not a number"))
    }
}

/// A layer that keeps every event and counts spans.
#[derive(Clone, Default)]
pub struct Capture {
    events: Arc<Mutex<Vec<Event>>>,
    spans: Arc<AtomicUsize>,
}

impl Capture {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event captured so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The events with this target and message.
    pub fn find(&self, target: &str, message: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.target == target && e.message == message)
            .collect()
    }

    /// The only event with this target and message.
    pub fn one(&self, target: &str, message: &str) -> Event {
        let mut found = self.find(target, message);
        assert_eq!(
            found.len(),
            1,
            "{target}: {message:?}: {:#?}",
            self.events()
        );
        found.pop().unwrap()
    }

    /// Spans created so far.
    pub fn spans(&self) -> usize {
        self.spans.load(Ordering::SeqCst)
    }

    /// Drops what was captured.
    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }

    /// Sets a subscriber of this layer (everything enabled) as this
    /// thread's default until the guard drops.
    ///
    /// Every thread that hits the crate's events in a test binary should
    /// have one: while a single thread-local subscriber is alive, `tracing`
    /// caches an event's interest from the thread that hits it first, so a
    /// thread without one (or with a filter) would turn it off for the
    /// others.
    pub fn set_default(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }
}

struct Fields<'a>(&'a mut Event);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = v;
        } else {
            self.0.fields.insert(field.name().to_owned(), v);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.message = value.to_owned();
        } else {
            self.0
                .fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut e = Event {
            target: meta.target().to_owned(),
            level: *meta.level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut Fields(&mut e));
        self.events.lock().unwrap().push(e);
    }

    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.spans.fetch_add(1, Ordering::SeqCst);
    }
}
