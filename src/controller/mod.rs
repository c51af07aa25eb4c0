//! One reconciler per kind. Each is thin: read what it needs from the
//! caches, call a pure function that decides, apply the decision.

pub mod role;
pub mod workload;

use crate::operator::metrics::Metrics;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The namespace to watch, or every namespace when `None`.
    pub namespace: Option<String>,
    pub backoff: Backoff,
}

/// Why a reconcile failed; it is retried with capped backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the status of {kind} {namespace}/{name}: {source}")]
    StatusWrite {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{kind} {name} has no namespace")]
    NoNamespace { kind: &'static str, name: String },
}

impl Error {
    /// Label for the error metric and the Warning event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::StatusWrite { .. } => "StatusWriteFailed",
            Error::NoNamespace { .. } => "NoNamespace",
        }
    }
}

/// Capped exponential backoff with jitter, per object: 1 s, 2 s, 4 s ...
/// up to 5 minutes, each randomised to between half and all of it.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let attempt = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let count = failures.entry(key.to_string()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let full = Self::BASE
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(Self::CAP);
        let jitter = rand::rng().random_range(0.5..=1.0);
        full.mul_f64(jitter)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The backoff key of an object.
pub fn key<K: Resource<DynamicType = ()>>(obj: &ObjectRef<K>) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace.as_deref().unwrap_or(""),
        obj.name
    )
}

impl Context {
    /// Records an event on `obj`; a failure to record is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %err, "cannot record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let backoff = Backoff::default();
        let first = backoff.failed("a");
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let mut last = first;
        for _ in 0..30 {
            last = backoff.failed("a");
        }
        assert!(last <= Backoff::CAP && last >= Backoff::CAP / 2);
        assert!(backoff.failed("b") <= Duration::from_secs(1));
        backoff.succeeded("a");
        assert!(backoff.failed("a") <= Duration::from_secs(1));
    }
}
