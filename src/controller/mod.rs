//! One reconciler per kind. Each is thin: read what it needs from the
//! caches, call a pure function that decides, apply the decision.

pub mod cache;
pub mod dns;
pub mod network;
pub mod node;
pub mod node_network;
pub mod role;
pub mod workload;

use crate::api::ConditionStatus;
use crate::api::condition::{self, Condition};
use crate::operator::metrics::Metrics;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
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
    StatusWrite { kind: &'static str, namespace: String, name: String, source: kube::Error },
    #[error("cannot write {kind} {namespace}/{name}: {source}")]
    Write { kind: &'static str, namespace: String, name: String, source: kube::Error },
    #[error("{kind} {namespace}/{name}: {field}: {message}")]
    Invalid { kind: &'static str, namespace: String, name: String, field: &'static str, message: String },
    #[error("{kind} {name} has no namespace")]
    NoNamespace { kind: &'static str, name: String },
    /// Decided from a copy older than the object: decided again shortly.
    #[error("{kind} {namespace}/{name} changed while it was being decided; deciding again")]
    Stale { kind: &'static str, namespace: String, name: String },
}

impl Error {
    /// Label for the error metric and the Warning event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::StatusWrite { .. } => "StatusWriteFailed",
            Error::Write { .. } => "WriteFailed",
            Error::Invalid { .. } => "InvalidSpec",
            Error::NoNamespace { .. } => "NoNamespace",
            Error::Stale { .. } => "Conflict",
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
        let full = Self::BASE.saturating_mul(1u32 << (attempt - 1).min(16)).min(Self::CAP);
        let jitter = rand::rng().random_range(0.5..=1.0);
        full.mul_f64(jitter)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The backoff key of an object.
pub fn key<K: Resource<DynamicType = ()>>(obj: &ObjectRef<K>) -> String {
    format!("{}/{}/{}", K::kind(&()), obj.namespace.as_deref().unwrap_or(""), obj.name)
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
        let event =
            Event { type_, reason: reason.to_string(), note: Some(note), action: action.to_string(), secondary: None };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %err, "cannot record event");
        }
    }
}

/// Records an event when the `Blocked` condition changes status or reason:
/// a Warning when something now blocks, a Normal event when it clears.
pub async fn announce_blocked<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    before: &[Condition],
    after: &[Condition],
    action: &str,
) {
    let Some(now) = condition::find(after, "Blocked") else {
        return;
    };
    let was = condition::find(before, "Blocked");
    if was.is_some_and(|was| was.status == now.status && was.reason == now.reason) {
        return;
    }
    let type_ = if now.status == ConditionStatus::True { EventType::Warning } else { EventType::Normal };
    ctx.event(obj, type_, &now.reason, now.message.clone(), action).await;
}

/// The object inside a guard, or `None` after recording a Warning event
/// that says why it cannot be read: one malformed object never stops the
/// watch of the others.
pub async fn readable<'a, K>(ctx: &Context, guard: &'a DeserializeGuard<K>) -> Option<&'a K>
where
    K: Resource<DynamicType = ()>,
{
    match &guard.0 {
        Ok(obj) => Some(obj),
        Err(InvalidObject { error, metadata }) => {
            let name = metadata.name.as_deref().unwrap_or_default();
            let kind = K::kind(&());
            tracing::warn!(%kind, %name, %error, "cannot read object; skipping it until it changes");
            let note =
                format!("cannot read {kind} {name}: {error}; fix the object (kubectl edit) or delete and re-create it");
            ctx.event(guard, EventType::Warning, "InvalidObject", note, "Read").await;
            None
        }
    }
}

/// Records a failed reconcile as a Warning event whose reason is the error
/// variant, without blocking the (synchronous) error policy.
pub fn warn_later<K>(ctx: Arc<Context>, obj: Arc<K>, err: &Error)
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let reason = err.metric_label();
    let note = err.to_string();
    tokio::spawn(async move { ctx.event(obj.as_ref(), EventType::Warning, reason, note, "Reconcile").await });
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
