//! The few Redfish resources girder reads, parsed tolerantly.
//!
//! Every field is optional and parsed on its own: a field that is missing,
//! `null`, of the wrong type (a number sent as a string, an object where a
//! string was expected) becomes `None` instead of failing the resource, and
//! unknown fields (OEM extras) are ignored. Vendors differ; a power action
//! must not fail because a BMC spells an inventory field its own way.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

/// Any value that parses as `T`, else `None`.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// The elements of an array that parse as `T`; anything else is empty.
fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect(),
        _ => Vec::new(),
    })
}

/// An integer, whether sent as an integer, a float or a string.
fn lenient_i64<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i64),
        _ => None,
    })
}

/// A number, whether sent as a number or a string.
fn lenient_f64<'de, D>(d: D) -> Result<Option<f64>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    })
    .map(|f| f.filter(|f| f.is_finite()))
}

/// A non-empty string, trimmed.
fn lenient_string<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A UUID, unless it is a placeholder: all zeros (some HPE firmware) or all
/// ones say nothing about which machine this is.
fn lenient_uuid<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(lenient_string(d)?.filter(|u| !blank_uuid(u)))
}

/// An all-zero or all-F UUID: no identity (some firmware reports one).
pub fn blank_uuid(uuid: &str) -> bool {
    let digits: Vec<char> = uuid.chars().filter(|c| *c != '-').collect();
    !digits.is_empty() && (digits.iter().all(|c| *c == '0') || digits.iter().all(|c| c.eq_ignore_ascii_case(&'f')))
}

/// `{"@odata.id": "..."}`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Link {
    #[serde(rename = "@odata.id", deserialize_with = "lenient_string")]
    pub id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ServiceRoot {
    #[serde(deserialize_with = "lenient")]
    pub systems: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub session_service: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub links: Option<ServiceRootLinks>,
    #[serde(deserialize_with = "lenient_string")]
    pub redfish_version: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub vendor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ServiceRootLinks {
    #[serde(deserialize_with = "lenient")]
    pub sessions: Option<Link>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Collection {
    #[serde(rename = "Members", deserialize_with = "lenient_vec")]
    pub members: Vec<Link>,
    #[serde(rename = "Members@odata.nextLink", deserialize_with = "lenient_string")]
    pub next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ComputerSystem {
    #[serde(rename = "@odata.id", deserialize_with = "lenient_string")]
    pub odata_id: Option<String>,
    #[serde(rename = "@odata.etag", deserialize_with = "lenient_string")]
    pub odata_etag: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(rename = "UUID", deserialize_with = "lenient_uuid")]
    pub uuid: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub manufacturer: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub serial_number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub power_state: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub bios_version: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub boot: Option<Boot>,
    #[serde(deserialize_with = "lenient")]
    pub processor_summary: Option<ProcessorSummary>,
    #[serde(deserialize_with = "lenient")]
    pub memory_summary: Option<MemorySummary>,
    #[serde(deserialize_with = "lenient")]
    pub processors: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub memory: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub ethernet_interfaces: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub storage: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub simple_storage: Option<Link>,
    #[serde(deserialize_with = "lenient")]
    pub links: Option<SystemLinks>,
    #[serde(deserialize_with = "lenient")]
    pub actions: Option<SystemActions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SystemLinks {
    #[serde(deserialize_with = "lenient_vec")]
    pub managed_by: Vec<Link>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset", deserialize_with = "lenient")]
    pub reset: Option<ResetAction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResetAction {
    #[serde(deserialize_with = "lenient_string")]
    pub target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues", deserialize_with = "lenient")]
    pub allowable_values: Option<Vec<String>>,
    #[serde(rename = "@Redfish.ActionInfo", deserialize_with = "lenient_string")]
    pub action_info: Option<String>,
}

/// `ActionInfo`: where some BMCs list the allowed `ResetType`s instead.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ActionInfo {
    #[serde(deserialize_with = "lenient_vec")]
    pub parameters: Vec<ActionParameter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ActionParameter {
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub allowable_values: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Boot {
    #[serde(rename = "BootSourceOverrideTarget", deserialize_with = "lenient_string")]
    pub target: Option<String>,
    #[serde(rename = "BootSourceOverrideEnabled", deserialize_with = "lenient_string")]
    pub enabled: Option<String>,
    #[serde(rename = "BootSourceOverrideMode", deserialize_with = "lenient_string")]
    pub mode: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues", deserialize_with = "lenient")]
    pub allowable_targets: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ProcessorSummary {
    #[serde(deserialize_with = "lenient_i64")]
    pub count: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub core_count: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub logical_processor_count: Option<i64>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MemorySummary {
    #[serde(rename = "TotalSystemMemoryGiB", deserialize_with = "lenient_f64")]
    pub total_system_memory_gib: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Processor {
    #[serde(deserialize_with = "lenient_string")]
    pub processor_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub total_cores: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub total_threads: Option<i64>,
    #[serde(deserialize_with = "lenient_string")]
    pub processor_architecture: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub instruction_set: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub status: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Status {
    #[serde(deserialize_with = "lenient_string")]
    pub state: Option<String>,
}

impl Status {
    /// `Absent` marks an empty socket or slot.
    pub fn is_absent(status: &Option<Status>) -> bool {
        status.as_ref().and_then(|s| s.state.as_deref()).is_some_and(|s| s.eq_ignore_ascii_case("Absent"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MemoryModule {
    #[serde(rename = "CapacityMiB", deserialize_with = "lenient_i64")]
    pub capacity_mib: Option<i64>,
    #[serde(rename = "Status", deserialize_with = "lenient")]
    pub status: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct EthernetInterface {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(rename = "MACAddress", deserialize_with = "lenient_string")]
    pub mac_address: Option<String>,
    #[serde(rename = "PermanentMACAddress", deserialize_with = "lenient_string")]
    pub permanent_mac_address: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub speed_mbps: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Storage {
    #[serde(deserialize_with = "lenient_vec")]
    pub drives: Vec<Link>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Drive {
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub capacity_bytes: Option<i64>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub serial_number: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub media_type: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub status: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SimpleStorage {
    #[serde(deserialize_with = "lenient_vec")]
    pub devices: Vec<SimpleStorageDevice>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SimpleStorageDevice {
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub capacity_bytes: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub status: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Manager {
    #[serde(deserialize_with = "lenient_string")]
    pub firmware_version: Option<String>,
}

/// A session as `POST .../Sessions` returns it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Session {
    #[serde(rename = "@odata.id", deserialize_with = "lenient_string")]
    pub odata_id: Option<String>,
}

/// The body of a Redfish error answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    #[serde(deserialize_with = "lenient")]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorInfo {
    #[serde(deserialize_with = "lenient_string")]
    pub message: Option<String>,
    #[serde(rename = "@Message.ExtendedInfo", deserialize_with = "lenient_vec")]
    pub extended_info: Vec<ExtendedInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ExtendedInfo {
    #[serde(deserialize_with = "lenient_string")]
    pub message: Option<String>,
}

impl ErrorBody {
    /// The most specific message a Redfish error answer carries, if any.
    pub fn message(body: &[u8]) -> Option<String> {
        let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
        let error = parsed.error?;
        error.extended_info.into_iter().find_map(|info| info.message).or(error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_placeholder_uuid_is_no_uuid() {
        for placeholder in ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"] {
            let system: ComputerSystem = serde_json::from_value(json!({ "UUID": placeholder })).unwrap();
            assert_eq!(system.uuid, None, "{placeholder} names no machine");
        }
        let system: ComputerSystem =
            serde_json::from_value(json!({ "UUID": "30373237-3132-584D-5132-30323030304E" })).unwrap();
        assert_eq!(system.uuid.as_deref(), Some("30373237-3132-584D-5132-30323030304E"));
    }

    #[test]
    fn a_system_with_odd_fields_still_parses() {
        let system: ComputerSystem = serde_json::from_value(serde_json::json!({
            "Id": 1,
            "UUID": null,
            "PowerState": "On",
            "Manufacturer": {"unexpected": "object"},
            "MemorySummary": {"TotalSystemMemoryGiB": "64"},
            "ProcessorSummary": {"Count": 2.0, "CoreCount": "16", "Model": ""},
            "Boot": {"BootSourceOverrideTarget@Redfish.AllowableValues": "not a list"},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}, 42]},
            "Actions": {"#ComputerSystem.Reset": {"target": "/x/Reset", "Oem": {}}},
            "Oem": {"Vendor": {"Whatever": [1, 2, 3]}}
        }))
        .unwrap();
        assert_eq!(system.id.as_deref(), Some("1"));
        assert_eq!(system.uuid, None);
        assert_eq!(system.power_state.as_deref(), Some("On"));
        assert_eq!(system.manufacturer, None);
        assert_eq!(system.memory_summary.unwrap().total_system_memory_gib, Some(64.0));
        let cpus = system.processor_summary.unwrap();
        assert_eq!((cpus.count, cpus.core_count, cpus.model), (Some(2), Some(16), None));
        assert_eq!(system.boot.unwrap().allowable_targets, None);
        assert_eq!(system.links.unwrap().managed_by.len(), 1);
        let reset = system.actions.unwrap().reset.unwrap();
        assert_eq!(reset.target.as_deref(), Some("/x/Reset"));
        assert_eq!(reset.allowable_values, None);
    }

    #[test]
    fn an_empty_object_parses_as_all_absent() {
        let system: ComputerSystem = serde_json::from_str("{}").unwrap();
        assert!(system.power_state.is_none() && system.actions.is_none());
    }

    #[test]
    fn error_messages_prefer_extended_info() {
        let body = br#"{"error":{"code":"Base.1.0.GeneralError","message":"A general error","@Message.ExtendedInfo":[{"MessageId":"x"},{"Message":"Server is already powered ON."}]}}"#;
        assert_eq!(ErrorBody::message(body).as_deref(), Some("Server is already powered ON."));
        assert_eq!(ErrorBody::message(b"<html>").as_deref(), None);
    }
}
