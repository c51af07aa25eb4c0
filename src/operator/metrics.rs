//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    kind: &'static str,
    error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<ErrorLabel, Counter>,
    status_writes: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    leader: Gauge,
    bmc_calls: Family<CallLabel, Counter>,
    credentials_reads: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    call: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("girder");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<ErrorLabel, Counter>::default();
        let status_writes = Family::<KindLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let leader = Gauge::default();
        let bmc_calls = Family::<CallLabel, Counter>::default();
        let credentials_reads = Counter::default();
        registry.register("reconciles", "Reconciles that completed", reconciles.clone());
        registry.register("reconcile_failures", "Reconciles that failed, by error", failures.clone());
        registry.register("status_writes", "Status writes to the API server", status_writes.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        registry.register("bmc_calls", "Calls made to BMCs, by kind of call", bmc_calls.clone());
        registry.register(
            "credentials_reads",
            "BMC credentials Secrets read from the API server",
            credentials_reads.clone(),
        );
        Self { registry, reconciles, failures, status_writes, duration, leader, bmc_calls, credentials_reads }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        self.duration.get_or_create(&KindLabel { kind }).observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str, error: &'static str) {
        self.failures.get_or_create(&ErrorLabel { kind, error }).inc();
    }

    pub fn status_written(&self, kind: &'static str) {
        self.status_writes.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn bmc_call(&self, call: &'static str) {
        self.bmc_calls.get_or_create(&CallLabel { call }).inc();
    }

    pub fn credentials_read(&self) {
        self.credentials_reads.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
