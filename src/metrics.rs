//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Label values are bounded: `service_id` is a configured service or `unknown` (or `none` when
//! the body had no readable id), so a forger sending random ids cannot grow the series count;
//! reasons, hints, actions and kinds come from fixed lists in the code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::click::KeySet;

/// `service_id` as a label value: a configured id, `unknown` or `none`. Cloning it is a
/// reference count, so the hot path allocates nothing for labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ServiceLabel {
    Fixed(&'static str),
    Id(Arc<str>),
}

impl EncodeLabelValue for ServiceLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            ServiceLabel::Fixed(s) => s,
            ServiceLabel::Id(s) => s,
        })
    }
}

/// The counters a verified callback of one configured service moves, resolved when the key
/// set is built so the hot path does no label hashing: one atomic add each.
#[derive(Debug, Clone)]
pub struct ServiceCounters {
    pub label: ServiceLabel,
    /// `X-Click-Signature-Verified: <service_id>`, made once (cloning it is a reference count).
    pub verified_header: http::HeaderValue,
    /// `callbacks_total{outcome="verified"}` for prepare and complete.
    pub verified: [Counter; 2],
    /// `verifications_total` by key slot.
    pub slots: Vec<Counter>,
}

/// Per-service counters and label values of the configured services, built with each key set.
#[derive(Debug, Default)]
pub struct ServiceLabels(HashMap<u64, ServiceCounters>);

impl ServiceLabels {
    pub fn new(keys: &KeySet, metrics: &Metrics) -> ServiceLabels {
        ServiceLabels(
            keys.iter()
                .map(|(id, svc)| {
                    let label = ServiceLabel::Id(Arc::from(id.to_string()));
                    let verified = ["prepare", "complete"].map(|action| {
                        metrics
                            .callbacks
                            .get_or_create(&CallbackLabels {
                                service_id: label.clone(),
                                action,
                                outcome: "verified",
                                reason: "none",
                                hint: "none",
                            })
                            .clone()
                    });
                    let slots = (0..svc.keys.len() as u64)
                        .map(|slot| {
                            metrics
                                .verifications
                                .get_or_create(&SlotLabels {
                                    service_id: label.clone(),
                                    slot,
                                })
                                .clone()
                        })
                        .collect();
                    (
                        id,
                        ServiceCounters {
                            label,
                            verified_header: http::HeaderValue::from(id),
                            verified,
                            slots,
                        },
                    )
                })
                .collect(),
        )
    }

    /// The counters of a configured service.
    pub fn counters(&self, service_id: u64) -> Option<&ServiceCounters> {
        self.0.get(&service_id)
    }

    /// Configured ids only: anything else folds into `unknown` (or `none`).
    pub fn get(&self, service_id: Option<u64>) -> ServiceLabel {
        match service_id {
            None => ServiceLabel::Fixed("none"),
            Some(id) => self
                .0
                .get(&id)
                .map(|c| c.label.clone())
                .unwrap_or(ServiceLabel::Fixed("unknown")),
        }
    }
}

/// The series of one route (`callback` or `proxy`), resolved once.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub gateway_seconds: Histogram,
    pub upstream_seconds: Histogram,
    /// `upstream_responses_total` by class: 1xx .. 5xx.
    pub status: [Counter; 5],
    /// `upstream_errors_total{kind="stalled"}`: response bodies cut for stalling.
    pub stalled: Counter,
}

impl RouteMetrics {
    /// Unregistered series, replaced before `Metrics::new` returns.
    fn placeholder() -> RouteMetrics {
        RouteMetrics {
            gateway_seconds: latency_histogram(),
            upstream_seconds: latency_histogram(),
            status: Default::default(),
            stalled: Counter::default(),
        }
    }

    fn new(m: &Metrics, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            gateway_seconds: m
                .gateway_seconds
                .get_or_create(&RouteLabels { route })
                .clone(),
            upstream_seconds: m
                .upstream_seconds
                .get_or_create(&RouteLabels { route })
                .clone(),
            status: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                m.upstream_responses
                    .get_or_create(&StatusClassLabels { route, class })
                    .clone()
            }),
            stalled: m
                .upstream_errors
                .get_or_create(&KindLabels {
                    route,
                    kind: "stalled",
                })
                .clone(),
        }
    }

    /// Counts a backend response by status class.
    pub fn upstream_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    pub service_id: ServiceLabel,
    /// `prepare`, `complete`, or `unknown` when the body did not say.
    pub action: &'static str,
    /// `verified`, `rejected`, `would_reject` (shadow mode: forwarded anyway), or `refused` (no
    /// answer from the backend for a transport reason, or no record written).
    pub outcome: &'static str,
    /// `none` when verified, otherwise the rejection reason.
    pub reason: &'static str,
    /// What would have made a failed signature verify, or `none`.
    pub hint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub service_id: ServiceLabel,
    pub slot: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabels {
    pub route: &'static str,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub route: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    /// `signature` (rule 1) or `transaction` (rule 2).
    pub rule: &'static str,
    /// Rule 1: `first`, `retry`, `replayed_with_changes`, `store_error`; rule 2: `first`,
    /// `consistent`, `contradicts`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub callbacks: Family<CallbackLabels, Counter>,
    pub verifications: Family<SlotLabels, Counter>,
    pub upstream_responses: Family<StatusClassLabels, Counter>,
    pub upstream_errors: Family<KindLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub gateway_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub sign_time_skew_seconds: Histogram,
    pub open_connections: Gauge,
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Connections closed at once when accepted: `address_cap` (the address holds
    /// `server.max_connections_per_address`), `global_cap` (nothing could be closed for room).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// 1 while open connections are at 90 % of the cap (until below 80 %).
    pub under_pressure: Gauge,
    /// Refusals not logged one by one but summarised (a line per address and interval).
    pub refusals_unlogged: Counter,
    /// Ledger rows of refused callbacks not recorded: `rate` (the address's refusals are over
    /// `ledger.refused_per_second`), `size` (the ledger is at `ledger.max_size` or its disk
    /// below `ledger.min_free`).
    pub ledger_unrecorded: Family<ReasonLabels, Counter>,
    /// `connections_closed_total{reason="send_timeout"}`, resolved once.
    pub send_timeouts: Counter,
    pub upstream_open_connections: Gauge,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    /// The replay guard's checks by rule and outcome.
    pub guard_checks: Family<GuardLabels, Counter>,
    pub generation: Gauge,
    pub last_reload_success: Gauge<f64, AtomicU64>,
    /// Callback ledger rows committed to the database.
    pub ledger_rows_written: Counter,
    /// Ledger rows lost, by reason (`queue_full`, `write_failed`, `shutdown`): a callback is
    /// never delayed for its row, so a row that cannot be written is counted instead.
    pub ledger_dropped: Family<ReasonLabels, Counter>,
    /// Rows waiting for the ledger writer.
    pub ledger_queue_depth: Gauge,
    /// Time of one ledger transaction (a batch of rows), from BEGIN to COMMIT.
    pub ledger_commit_seconds: Histogram,
    /// The ledger file was found deleted or replaced, or failed, and was opened again.
    pub ledger_reopens: Counter,
    /// Rows deleted for being older than `ledger.retention`.
    pub ledger_pruned_rows: Counter,
    /// Resolved series of the two routes.
    pub callback_route: RouteMetrics,
    pub proxy_route: RouteMetrics,
}

/// A histogram observed without a lock: one atomic add per bucket, count and sum. The
/// workers observe on every request; prometheus-client's own `Histogram` takes a mutex for
/// each observation, a cache line the worker threads would pass back and forth per request.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, ascending; the last bucket (`+Inf`) has none.
    bounds: Box<[f64]>,
    /// One per bound, and one for `+Inf`: observations in that bucket alone.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, in nanounits (so that it adds atomically).
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: impl Iterator<Item = f64>) -> Histogram {
        let bounds: Box<[f64]> = bounds.collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts,
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, value: f64) {
        let h = &self.0;
        let bucket = h.bounds.partition_point(|b| *b < value);
        if let Some(c) = h.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        // Negative and NaN observations add nothing to the sum (none are made here).
        h.sum_nanos
            .fetch_add((value.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    /// Observations so far (for tests).
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        // The encoder accumulates the buckets; infinity is written `+Inf`.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, h.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("click_gateway");
        let m = Metrics {
            callbacks: Family::default(),
            verifications: Family::default(),
            upstream_responses: Family::default(),
            upstream_errors: Family::default(),
            refused: Family::default(),
            gateway_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            // 1 s .. ~36 h, absolute value: how far sign_time is from now.
            sign_time_skew_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            open_connections: Gauge::default(),
            connections_closed: Family::default(),
            connections_refused: Family::default(),
            under_pressure: Gauge::default(),
            refusals_unlogged: Counter::default(),
            ledger_unrecorded: Family::default(),
            send_timeouts: Counter::default(),
            upstream_open_connections: Gauge::default(),
            tls_handshake_failures: Family::default(),
            reloads: Family::default(),
            guard_checks: Family::default(),
            generation: Gauge::default(),
            last_reload_success: Gauge::default(),
            ledger_rows_written: Counter::default(),
            ledger_dropped: Family::default(),
            ledger_queue_depth: Gauge::default(),
            // 100 µs .. ~6.5 s: a commit is an fsync, which a sick disk can stretch.
            ledger_commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 17)),
            ledger_reopens: Counter::default(),
            ledger_pruned_rows: Counter::default(),
            registry: Registry::default(),
            callback_route: RouteMetrics::placeholder(),
            proxy_route: RouteMetrics::placeholder(),
        };
        registry.register(
            "callbacks",
            "Click callbacks, each counted once however it ended, by service, action and outcome (verified; rejected: answered with a Click error; would_reject: shadow mode, forwarded; refused: no answer from the backend for a transport reason or a ledger row that could not be written, the reason saying which) with the reason and hint",
            m.callbacks.clone(),
        );
        registry.register(
            "verifications",
            "Verified callbacks by the key slot that matched",
            m.verifications.clone(),
        );
        registry.register(
            "upstream_responses",
            "Backend responses by status class",
            m.upstream_responses.clone(),
        );
        registry.register(
            "upstream_errors",
            "Backend failures by kind: connect, connect_timeout, timeout (no response headers in time), closed (connection closed or reset before the response), retried (an idempotent request resent after closed; it may then have succeeded), stalled (response body stopped and was cut), bad_uri, busy (no backend connection free within the response timeout, upstream.max_connections: 503)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused before reaching the backend, by reason: body_too_large, body_timeout, body_aborted, busy (no memory left for bodies), address_memory (the client address's share of it), address_streams (its HTTP/2 streams at server.http2_max_streams_per_address), store_unavailable (a callback's ledger row not written within guard.timeout; guard.on_store_error = refuse)",
            m.refused.clone(),
        );
        registry.register(
            "gateway_duration_seconds",
            "Time spent in the gateway per request, excluding the wait for the backend",
            m.gateway_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to the backend to its response headers",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "sign_time_skew_seconds",
            "Distance between a verified callback's sign_time (in click.sign_time_zone) and the gateway's clock",
            m.sign_time_skew_seconds.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections closed by the gateway, by reason (first_request_timeout, idle, send_timeout; pressure_idle, pressure_waiting: closed to make room at server.max_connections)",
            m.connections_closed.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed as soon as they were accepted, by reason (address_cap: the address already holds server.max_connections_per_address; global_cap: at server.max_connections with no idle or waiting connection to close for room)",
            m.connections_refused.clone(),
        );
        registry.register(
            "under_pressure",
            "1 while open connections are at 90% of server.max_connections (until they fall below 80%): deadlines cut to server.pressure_timeout",
            m.under_pressure.clone(),
        );
        registry.register(
            "refusals_unlogged",
            "Refusals (rejected callbacks, refused connections and requests) summarised in a line per address and interval instead of a line each",
            m.refusals_unlogged.clone(),
        );
        registry.register(
            "ledger_unrecorded",
            "Callbacks not recorded in the ledger, by reason (rate: refused, over ledger.refused_per_second for their address; size: refused, the ledger at ledger.max_size or its disk below ledger.min_free; store_error: forwarded without a record, guard.on_store_error allowing it)",
            m.ledger_unrecorded.clone(),
        );
        registry.register(
            "upstream_open_connections",
            "Open connections to the backend, idle pooled ones included (at most upstream.max_connections)",
            m.upstream_open_connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (timeout, error)",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "guard_checks",
            "Replay guard checks of verified callbacks by rule (signature: one signature one message; transaction: Completes that contradict) and outcome",
            m.guard_checks.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads by result (success, failure)",
            m.reloads.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the keys and settings in force",
            m.generation.clone(),
        );
        registry.register(
            "last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of the configuration (startup or reload)",
            m.last_reload_success.clone(),
        );
        registry.register(
            "ledger_rows_written",
            "Callback ledger rows committed to the database",
            m.ledger_rows_written.clone(),
        );
        registry.register(
            "ledger_dropped",
            "Callback ledger rows lost instead of delaying a callback, by reason (queue_full: the writer is behind; write_failed: the database failed; shutdown: still queued at the stop deadline)",
            m.ledger_dropped.clone(),
        );
        registry.register(
            "ledger_queue_depth",
            "Callback ledger rows waiting for the writer",
            m.ledger_queue_depth.clone(),
        );
        registry.register(
            "ledger_commit_duration_seconds",
            "Time of one ledger transaction (a batch of rows), BEGIN to COMMIT",
            m.ledger_commit_seconds.clone(),
        );
        registry.register(
            "ledger_reopens",
            "Times the ledger database was opened again: its file deleted or replaced, or after a failure",
            m.ledger_reopens.clone(),
        );
        registry.register(
            "ledger_pruned_rows",
            "Callback ledger rows deleted for being older than ledger.retention",
            m.ledger_pruned_rows.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let callback_route = RouteMetrics::new(&m, "callback");
        let proxy_route = RouteMetrics::new(&m, "proxy");
        let send_timeouts = m
            .connections_closed
            .get_or_create(&ReasonLabels {
                reason: "send_timeout",
            })
            .clone();
        Metrics {
            registry,
            callback_route,
            proxy_route,
            send_timeouts,
            ..m
        }
    }

    /// The resolved series of a route.
    pub fn route(&self, route: &'static str) -> &RouteMetrics {
        if route == "callback" {
            &self.callback_route
        } else {
            &self.proxy_route
        }
    }

    /// The text exposition format (OpenMetrics), for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn upstream_error(&self, route: &'static str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { route, kind })
            .inc();
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts `n` ledger rows lost for `reason`.
    pub fn ledger_drop(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.ledger_dropped
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn the_lock_free_histogram_encodes_as_prometheus_expects() {
        let h = Histogram::new([0.1, 1.0].into_iter());
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "t_sum 3.65",
            "t_count 4",
            "t_bucket{le=\"0.1\"} 2",
            "t_bucket{le=\"1.0\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
        assert_eq!(h.count(), 4);
    }
}
