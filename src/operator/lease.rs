//! Leader election on a `coordination.k8s.io` Lease.
//!
//! One replica holds the Lease and renews it every retry period; the others
//! poll it and take it over once its record has not changed for a whole lease
//! duration, measured on their own clock (so clock skew between replicas does
//! not matter).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<(String, Instant)>,
}

/// Why this replica stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLost {
    #[error("Lease {namespace}/{name} was taken over by {holder}")]
    TakenOver { namespace: String, name: String, holder: String },
    #[error("could not renew Lease {namespace}/{name} within {deadline:?}: {last_error}")]
    RenewDeadline { namespace: String, name: String, deadline: Duration, last_error: String },
}

enum Attempt {
    Holding,
    HeldBy(String),
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// Waits until this replica holds the Lease; `false` when `shutdown` fired first.
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        let mut announced = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => return true,
                Ok(Attempt::HeldBy(holder)) => {
                    if announced.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.config.name, %holder, "standing by: another replica leads");
                        announced = Some(holder);
                    }
                }
                Err(err) => {
                    tracing::warn!(lease = %self.config.name, error = %err, "cannot read or write the Lease; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Renews the Lease until it is lost; returns why.
    pub async fn hold(&mut self) -> LeaseLost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => last_renewed = Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return LeaseLost::TakenOver {
                        namespace: self.config.namespace.clone(),
                        name: self.config.name.clone(),
                        holder,
                    };
                }
                Err(err) => {
                    tracing::warn!(lease = %self.config.name, error = %err, "cannot renew the Lease");
                    if last_renewed.elapsed() > self.config.renew_deadline {
                        return LeaseLost::RenewDeadline {
                            namespace: self.config.namespace.clone(),
                            name: self.config.name.clone(),
                            deadline: self.config.renew_deadline,
                            last_error: err.to_string(),
                        };
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the Lease"),
            Err(err) => {
                tracing::warn!(lease = %self.config.name, error = %err, "cannot release the Lease")
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> kube::Result<Attempt> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_seconds = i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Holding),
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    Ok(Attempt::HeldBy("another replica".into()))
                }
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!("{holder}@{:?}", spec.renew_time.as_ref().map(|t| t.0));
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let mine = holder == self.config.identity;
        let expired = holder.is_empty() || first_seen.elapsed() > held_for;
        if !mine && !expired {
            return Ok(Attempt::HeldBy(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: if mine { spec.acquire_time } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(if mine { transitions } else { transitions.saturating_add(1) }),
            ..spec
        });
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                if !mine {
                    tracing::info!(lease = %self.config.name, previous = %holder, "acquired the Lease");
                }
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::HeldBy("another replica".into())),
            Err(err) => Err(err),
        }
    }
}
