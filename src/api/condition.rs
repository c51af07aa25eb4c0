//! Status conditions shared by every girder kind.
//!
//! A condition list is a list-map keyed by `type`; `lastTransitionTime` moves
//! only when a condition's status changes, so re-deciding the same thing never
//! produces a status write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observation about an object, in the Kubernetes convention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, e.g. `Ready` or `Blocked`; unique within the list.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Stable CamelCase cause of the current status, for tools and alerts.
    pub reason: String,
    /// What is going on and, when something is wrong, how to get out.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was decided from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The tri-state of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

impl Condition {
    /// A condition decided now, for `generation`.
    pub fn new(
        type_: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status: status.into(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: Time(jiff::Timestamp::now()),
            observed_generation: generation,
        }
    }
}

/// Merges freshly decided conditions with the ones already in status: a
/// condition whose status did not change keeps its `lastTransitionTime`.
/// Conditions of types this component does not decide are kept as they are.
pub fn merge(existing: &[Condition], decided: Vec<Condition>) -> Vec<Condition> {
    let mut merged: Vec<Condition> =
        existing.iter().filter(|old| !decided.iter().any(|new| new.type_ == old.type_)).cloned().collect();
    for mut new in decided {
        if let Some(old) = existing.iter().find(|old| old.type_ == new.type_)
            && old.status == new.status
        {
            new.last_transition_time = old.last_transition_time.clone();
        }
        merged.push(new);
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Schema override marking a condition list as a list-map keyed by `type`.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn cond(type_: &str, status: bool, seconds: i64) -> Condition {
        Condition { last_transition_time: at(seconds), ..Condition::new(type_, status, "Reason", "message", Some(1)) }
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let existing = vec![cond("Ready", false, 10)];
        let merged = merge(&existing, vec![cond("Ready", false, 99)]);
        assert_eq!(merged[0].last_transition_time, at(10));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let existing = vec![cond("Ready", false, 10)];
        let merged = merge(&existing, vec![cond("Ready", true, 99)]);
        assert_eq!(merged[0].last_transition_time, at(99));
    }

    #[test]
    fn foreign_conditions_are_kept_and_order_is_stable() {
        let existing = vec![cond("Zeta", true, 1), cond("Ready", false, 10)];
        let merged = merge(&existing, vec![cond("Blocked", true, 5)]);
        let types: Vec<_> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Blocked", "Ready", "Zeta"]);
    }
}
