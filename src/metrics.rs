//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Label values are bounded: `service_id` is a configured service or `unknown` (or `none` when
//! the body had no readable id), so a forger sending random ids cannot grow the series count;
//! reasons, hints, actions and kinds come from fixed lists in the code.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
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

/// Label values of the configured services, built with each key set.
#[derive(Debug, Default)]
pub struct ServiceLabels(HashMap<u64, ServiceLabel>);

impl ServiceLabels {
    pub fn new(keys: &KeySet) -> ServiceLabels {
        ServiceLabels(
            keys.iter()
                .map(|(id, _)| (id, ServiceLabel::Id(Arc::from(id.to_string()))))
                .collect(),
        )
    }

    /// Configured ids only: anything else folds into `unknown` (or `none`).
    pub fn get(&self, service_id: Option<u64>) -> ServiceLabel {
        match service_id {
            None => ServiceLabel::Fixed("none"),
            Some(id) => self
                .0
                .get(&id)
                .cloned()
                .unwrap_or(ServiceLabel::Fixed("unknown")),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    pub service_id: ServiceLabel,
    /// `prepare`, `complete`, or `unknown` when the body did not say.
    pub action: &'static str,
    /// `verified`, `rejected`, or `would_reject` (shadow mode: forwarded anyway).
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
    pub gateway_seconds: Family<RouteLabels, Histogram>,
    pub upstream_seconds: Family<RouteLabels, Histogram>,
    pub sign_time_skew_seconds: Histogram,
    pub open_connections: Gauge,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub generation: Gauge,
    pub last_reload_success: Gauge<f64, AtomicU64>,
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
            gateway_seconds: Family::new_with_constructor(latency_histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            // 1 s .. ~36 h, absolute value: how far sign_time is from now.
            sign_time_skew_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            open_connections: Gauge::default(),
            connections_closed: Family::default(),
            tls_handshake_failures: Family::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            last_reload_success: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "callbacks",
            "Click callbacks by service, action and outcome (verified, rejected, would_reject) with the rejection reason and hint",
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
            "Requests the backend did not answer, by kind (connect, connect_timeout, timeout, closed: connection closed or reset before the response, retried: an idempotent request resent after that, stalled: response body stopped)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused before reaching the backend for transport reasons (body_too_large, body_timeout, body_aborted, busy)",
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
            "Client connections closed by the gateway's deadlines (first_request_timeout, idle)",
            m.connections_closed.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (timeout, error)",
            m.tls_handshake_failures.clone(),
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
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format (OpenMetrics), for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a backend response by status class.
    pub fn upstream_status(&self, route: &'static str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.upstream_responses
            .get_or_create(&StatusClassLabels { route, class })
            .inc();
    }

    pub fn upstream_error(&self, route: &'static str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { route, kind })
            .inc();
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
