//! The Redfish driver.
//!
//! - Discovery: the service root, then `Systems`. An address that names no
//!   system uses the BMC's only one, or is refused with the list of choices.
//! - Authentication: one session per BMC from the SessionService, reused
//!   (`X-Auth-Token`), renewed on `401`; basic authentication where the BMC
//!   offers no sessions. [`RedfishClient::close`] deletes the session, and so
//!   does dropping the client (in the background) if nobody closed it.
//! - TLS is verified unless `disable_certificate_verification`; a CA bundle
//!   replaces the platform trust store.
//! - Every request has a timeout, a per-BMC concurrency limit, and bounded
//!   retries on `503` that honour `Retry-After`. A `PATCH` sends `If-Match`
//!   with the ETag the BMC gave; on `412` it reads again and sends the fresh
//!   ETag in the strong form (some BMCs give weak ETags and compare them
//!   strongly), then, on a second `412`, no `If-Match`.
//!
//! ## Why no `redfish-codegen` types
//! The issue asked for the `redfish-codegen` crate (0.3.1). It is unusable for
//! a client here: its links (`IdRef`) and every resource's `@odata.id` are
//! `#[serde(skip_deserializing)]`, so a parsed resource cannot say where its
//! members, actions or managers are; collections *require*
//! `Members@odata.count`; its enums (`PowerState`, `BootSource`...) have no
//! catch-all, so one vendor value unknown to the schema fails the whole
//! resource; and it is 3,200 generated files (16 MB of source) to compile on
//! a 2-core machine for the dozen fields girder reads. [`model`] has small
//! structs instead, where every field is optional and parsed on its own.

mod describe;
mod inventory;
mod model;
mod transport;

#[cfg(test)]
mod tests;

pub use transport::AuthMode;

use super::{
    Bmc, BmcAddress, BmcError, BmcOptions, BootDevice, BootOverride, Credentials, Description, PowerAction, PowerState,
    SystemIdentity,
};
use crate::api::node::{BootMode, HardwareDetails};
use async_trait::async_trait;
use model::{ActionInfo, Collection, ComputerSystem, Link, ServiceRoot};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt;
use transport::{DEFAULT_SESSIONS_PATH, Reply, Transport};

/// Members followed in one collection, and pages read: bounds on what a
/// confused BMC can make girder fetch.
const MAX_MEMBERS: usize = 256;
const MAX_PAGES: usize = 16;

/// A Redfish BMC and the one system girder drives through it.
pub struct RedfishClient {
    address: BmcAddress,
    transport: Transport,
    system: SystemInfo,
}

/// What discovery learnt about the system.
#[derive(Debug, Clone)]
struct SystemInfo {
    path: String,
    reset_target: String,
    /// `None`: the BMC does not say, so every reset type is tried as asked.
    reset_types: Option<Vec<String>>,
}

impl fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishClient")
            .field("bmc", &self.transport.bmc)
            .field("system", &self.system.path)
            .field("auth", &self.transport.auth_mode())
            .finish_non_exhaustive()
    }
}

impl RedfishClient {
    /// Connects: reads the service root, logs in and finds the system. On
    /// failure nothing is left open on the BMC.
    pub async fn connect(address: BmcAddress, credentials: Credentials, options: BmcOptions) -> Result<Self, BmcError> {
        let bmc = address.to_string();
        let base = address
            .redfish_base_url()
            .ok_or_else(|| BmcError::InvalidAddress { address: bmc.clone(), reason: "not a Redfish address".into() })?;
        let transport = Transport::new(bmc, base, credentials, &options)?;

        // The service root is readable without credentials on most BMCs; a
        // few want them, and then the standard paths are assumed.
        let root_reply = transport.send_anonymous(Method::GET, "/redfish/v1/").await?;
        let root: Option<ServiceRoot> = match root_reply.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => None,
            _ => Some(parse(&transport, &transport.check(root_reply, "GET /redfish/v1/")?, "GET /redfish/v1/")?),
        };
        let sessions_path = match &root {
            None => Some(DEFAULT_SESSIONS_PATH.to_string()),
            Some(root) => root
                .links
                .as_ref()
                .and_then(|l| l.sessions.as_ref())
                .and_then(|s| s.id.clone())
                .or_else(|| root.session_service.is_some().then(|| DEFAULT_SESSIONS_PATH.to_string())),
        };
        transport.set_sessions_path(sessions_path);
        let systems_path = root
            .as_ref()
            .and_then(|r| r.systems.as_ref())
            .and_then(|s| s.id.clone())
            .unwrap_or_else(|| "/redfish/v1/Systems".to_string());

        match find_system(&transport, &address, &systems_path).await {
            Ok(system) => Ok(Self { address, transport, system }),
            Err(e) => {
                if let Err(close) = transport.close().await {
                    tracing::warn!(bmc = %transport.bmc, error = %close, "could not delete the session after a failed connect");
                }
                Err(e)
            }
        }
    }

    /// The system's Redfish path, e.g. `/redfish/v1/Systems/1`.
    pub fn system_path(&self) -> &str {
        &self.system.path
    }

    /// How requests are authenticated right now.
    pub fn auth_mode(&self) -> AuthMode {
        self.transport.auth_mode()
    }

    async fn get_system(&self) -> Result<(ComputerSystem, Reply), BmcError> {
        let what = format!("GET {}", self.system.path);
        let reply = self.transport.send(Method::GET, &self.system.path, None, None).await?;
        let reply = self.transport.check(reply, &what)?;
        let system = parse(&self.transport, &reply, &what)?;
        Ok((system, reply))
    }

    /// A resource the inventory can do without: `None` when the BMC does not
    /// have it or sends something unreadable. Authentication, connection and
    /// timeout failures still fail.
    async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BmcError> {
        let reply = self.transport.send(Method::GET, path, None, None).await?;
        if matches!(reply.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(self.transport.status_error(&reply, &format!("GET {path}")));
        }
        if !reply.status.is_success() {
            tracing::debug!(bmc = %self.transport.bmc, path, status = reply.status.as_u16(), "inventory: resource not offered");
            return Ok(None);
        }
        match serde_json::from_slice(&reply.body) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                tracing::debug!(bmc = %self.transport.bmc, path, error = %e, "inventory: unreadable resource");
                Ok(None)
            }
        }
    }

    /// The members of an optional collection, each read as `T`.
    async fn get_members<T: DeserializeOwned>(&self, link: &Option<Link>) -> Result<Vec<T>, BmcError> {
        let Some(path) = link.as_ref().and_then(|l| l.id.clone()) else {
            return Ok(Vec::new());
        };
        let mut items = Vec::new();
        for member in optional_member_paths(self, &path).await? {
            if let Some(item) = self.get_optional(&member).await? {
                items.push(item);
            }
        }
        Ok(items)
    }

    async fn reset(&self, reset_type: &str) -> Result<Reply, BmcError> {
        self.transport
            .send(Method::POST, &self.system.reset_target, Some(&json!({ "ResetType": reset_type })), None)
            .await
    }
}

#[async_trait]
impl Bmc for RedfishClient {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let (system, _) = self.get_system().await?;
        Ok(power_state(system.power_state.as_deref()))
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let needs_state = action == PowerAction::PowerCycle
            && self.system.reset_types.as_ref().is_some_and(|t| !contains(t, "PowerCycle"));
        let state = if needs_state { Some(self.power_state().await?) } else { None };
        let reset_type = reset_type(action, self.system.reset_types.as_deref(), state)
            .map_err(|what| BmcError::Unsupported { bmc: self.transport.bmc.clone(), what })?;
        // The power button toggles: pressed on a system that is off, it
        // would turn it on.
        if reset_type == "PushPowerButton"
            && matches!(self.power_state().await?, PowerState::Off | PowerState::PoweringOff)
        {
            return Ok(());
        }
        let what = format!("POST {} ({reset_type})", self.system.reset_target);
        let reply = self.reset(reset_type).await?;
        if reply.status.is_success() {
            tracing::info!(bmc = %self.transport.bmc, %action, reset_type, "power action accepted");
            return Ok(());
        }
        // Many BMCs refuse to power on what is on (or off what is off) with a
        // 400 or 409: that is success for a caller who wants the state.
        if matches!(reply.status, StatusCode::BAD_REQUEST | StatusCode::CONFLICT)
            && matches!(action, PowerAction::On | PowerAction::ForceOff | PowerAction::GracefulShutdown)
            && self.power_state().await? == action.target_state()
        {
            tracing::debug!(bmc = %self.transport.bmc, %action, "already in the requested power state");
            return Ok(());
        }
        Err(self.transport.status_error(&reply, &what))
    }

    async fn set_boot_override(&self, boot: BootOverride) -> Result<(), BmcError> {
        let unsupported = |what: String| BmcError::Unsupported { bmc: self.transport.bmc.clone(), what };
        if boot.device == BootDevice::Http && boot.mode == BootMode::Legacy {
            return Err(unsupported("HTTP boot in Legacy mode (it needs UEFI)".into()));
        }
        let target = boot_target(boot.device);
        let mode = match boot.mode {
            BootMode::UEFI => "UEFI",
            BootMode::Legacy => "Legacy",
        };
        let what = format!("PATCH {} (boot override {target}, {mode})", self.system.path);
        // On 412 the system is read again and written with its fresh ETag,
        // in the strong form if the BMC gave a weak one (some BMCs give
        // W/"..." and compare If-Match strongly); on a second 412, without
        // If-Match.
        let mut precondition_failed = 0;
        loop {
            let (system, reply) = self.get_system().await?;
            let current = system.boot.unwrap_or_default();
            let mode_changes = current.mode.as_deref().is_none_or(|m| !m.eq_ignore_ascii_case(mode));
            // The allowed targets are those of the current mode; they say
            // nothing about the targets of the mode being switched to.
            if !mode_changes
                && let Some(allowed) = &current.allowable_targets
                && !contains(allowed, target)
            {
                return Err(unsupported(format!("boot override to {target} (the BMC allows {})", allowed.join(", "))));
            }
            let mut patch = json!({
                "BootSourceOverrideEnabled": "Once",
                "BootSourceOverrideTarget": target,
            });
            if mode_changes {
                patch["BootSourceOverrideMode"] = json!(mode);
            }
            let etag = match precondition_failed {
                0 => reply.etag().or(system.odata_etag),
                1 => reply.etag().or(system.odata_etag).map(|e| e.trim_start_matches("W/").to_string()),
                _ => None,
            };
            let reply = self
                .transport
                .send(Method::PATCH, &self.system.path, Some(&json!({ "Boot": patch })), etag.as_deref())
                .await?;
            if reply.status == StatusCode::PRECONDITION_FAILED && precondition_failed < 2 {
                precondition_failed += 1;
                tracing::debug!(bmc = %self.transport.bmc, attempt = precondition_failed, "412 on the boot override; reading the system again");
                continue;
            }
            // A target the current mode does not list, refused with the mode
            // switch: say what the BMC allows, not just that it refused.
            if reply.status == StatusCode::BAD_REQUEST
                && mode_changes
                && let Some(allowed) = current.allowable_targets.as_ref().filter(|a| !contains(a, target))
            {
                let now = current.mode.as_deref().unwrap_or("unknown");
                return Err(unsupported(format!(
                    "boot override to {target} in {mode} mode (refused with 400; the BMC lists {} for its current mode, {now})",
                    allowed.join(", ")
                )));
            }
            self.transport.check(reply, &what)?;
            tracing::info!(bmc = %self.transport.bmc, target, mode, "boot override set");
            return Ok(());
        }
    }

    async fn identity(&self) -> Result<SystemIdentity, BmcError> {
        let (system, _) = self.get_system().await?;
        Ok(SystemIdentity {
            vendor: system.manufacturer,
            model: system.model,
            serial_number: system.serial_number,
            uuid: system.uuid,
        })
    }

    async fn inventory(&self) -> Result<HardwareDetails, BmcError> {
        let (system, _) = self.get_system().await?;
        let mut parts = inventory::Parts {
            processors: self.get_members(&system.processors).await?,
            nics: self.get_members(&system.ethernet_interfaces).await?,
            ..Default::default()
        };
        let memory_known =
            system.memory_summary.as_ref().and_then(|m| m.total_system_memory_gib).is_some_and(|gib| gib > 0.0);
        if !memory_known {
            parts.memory = self.get_members(&system.memory).await?;
        }
        let storages: Vec<model::Storage> = self.get_members(&system.storage).await?;
        for drive in storages.iter().flat_map(|s| s.drives.iter()).take(MAX_MEMBERS) {
            if let Some(path) = &drive.id
                && let Some(drive) = self.get_optional(path).await?
            {
                parts.drives.push(drive);
            }
        }
        if parts.drives.is_empty() {
            parts.simple_storage = self.get_members(&system.simple_storage).await?;
        }
        if let Some(manager) = system.links.as_ref().and_then(|l| l.managed_by.first()).and_then(|m| m.id.clone()) {
            parts.manager = self.get_optional(&manager).await?;
        }
        parts.system = system;
        Ok(inventory::hardware(&parts))
    }

    async fn close(&self) -> Result<(), BmcError> {
        self.transport.close().await
    }

    async fn describe(&self) -> Result<Description, BmcError> {
        self.describe_bmc().await
    }
}

/// Reads `body` as every kind of Redfish resource girder reads, and makes
/// inventory of it as the driver would (the body as the system, and as each
/// of its parts): for the fuzz target, since whatever a BMC sends must give
/// an answer or an error, never a panic. Not an API.
#[doc(hidden)]
pub fn read_untrusted(body: &[u8]) -> HardwareDetails {
    fn each<T: DeserializeOwned + Default>(body: &[u8]) -> T {
        serde_json::from_slice(body).unwrap_or_default()
    }
    let _: ServiceRoot = each(body);
    let _: Collection = each(body);
    let _: ActionInfo = each(body);
    let _: model::Session = each(body);
    let _: model::Storage = each(body);
    let _ = model::ErrorBody::message(body);
    let parts = inventory::Parts {
        system: each(body),
        processors: vec![each(body)],
        memory: vec![each(body)],
        nics: vec![each(body)],
        drives: vec![each(body)],
        simple_storage: vec![each(body)],
        manager: Some(each(body)),
    };
    inventory::hardware(&parts)
}

/// Finds the system the address names, or the BMC's only one.
async fn find_system(transport: &Transport, address: &BmcAddress, systems_path: &str) -> Result<SystemInfo, BmcError> {
    let path = match address.system_path() {
        Some(path) => path,
        None => {
            let members = member_paths(transport, systems_path).await?;
            match members.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(BmcError::SystemNotFound {
                        bmc: transport.bmc.clone(),
                        wanted: "(any)".into(),
                        choices: Vec::new(),
                    });
                }
                _ => {
                    return Err(BmcError::AmbiguousSystem { bmc: transport.bmc.clone(), choices: members });
                }
            }
        }
    };
    let what = format!("GET {path}");
    let reply = transport.send(Method::GET, &path, None, None).await?;
    if reply.status == StatusCode::NOT_FOUND {
        let choices = member_paths(transport, systems_path).await.unwrap_or_default();
        return Err(BmcError::SystemNotFound { bmc: transport.bmc.clone(), wanted: path, choices });
    }
    let reply = transport.check(reply, &what)?;
    let system: ComputerSystem = parse(transport, &reply, &what)?;
    // An alias (a name that redirects to the UUID) is kept as its canonical path.
    let path = system
        .odata_id
        .clone()
        .filter(|id| id.starts_with('/'))
        .map(|id| id.trim_end_matches('/').to_string())
        .unwrap_or(path);
    let reset = system.actions.and_then(|a| a.reset).unwrap_or_default();
    let reset_target = reset.target.unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
    let mut reset_types = reset.allowable_values;
    if reset_types.is_none()
        && let Some(info) = reset.action_info
    {
        reset_types = action_info_reset_types(transport, &info).await;
    }
    Ok(SystemInfo { path, reset_target, reset_types })
}

/// The `ResetType` values an `ActionInfo` lists, if it can be read.
async fn action_info_reset_types(transport: &Transport, path: &str) -> Option<Vec<String>> {
    let reply = transport.send(Method::GET, path, None, None).await.ok()?;
    if !reply.status.is_success() {
        return None;
    }
    let info: ActionInfo = serde_json::from_slice(&reply.body).ok()?;
    info.parameters.into_iter().find(|p| p.name.as_deref() == Some("ResetType")).and_then(|p| p.allowable_values)
}

/// The member paths of a collection the driver needs (`Systems`).
async fn member_paths(transport: &Transport, path: &str) -> Result<Vec<String>, BmcError> {
    let mut members: Vec<String> = Vec::new();
    let mut seen_pages = std::collections::HashSet::new();
    let mut next = Some(path.to_string());
    for _ in 0..MAX_PAGES {
        let Some(page) = next.take() else { break };
        if !seen_pages.insert(page.clone()) {
            break;
        }
        let what = format!("GET {page}");
        let reply = transport.send(Method::GET, &page, None, None).await?;
        let reply = transport.check(reply, &what)?;
        let collection: Collection = parse(transport, &reply, &what)?;
        for member in collection.members.into_iter().filter_map(|m| m.id) {
            if !members.contains(&member) {
                members.push(member);
            }
        }
        if members.len() >= MAX_MEMBERS {
            members.truncate(MAX_MEMBERS);
            break;
        }
        next = collection.next_link;
    }
    Ok(members)
}

/// The member paths of a collection the inventory can do without.
async fn optional_member_paths(client: &RedfishClient, path: &str) -> Result<Vec<String>, BmcError> {
    let mut members: Vec<String> = Vec::new();
    let mut seen_pages = std::collections::HashSet::new();
    let mut next = Some(path.to_string());
    for _ in 0..MAX_PAGES {
        let Some(page) = next.take() else { break };
        if !seen_pages.insert(page.clone()) {
            break;
        }
        let Some(collection) = client.get_optional::<Collection>(&page).await? else {
            break;
        };
        for member in collection.members.into_iter().filter_map(|m| m.id) {
            if !members.contains(&member) {
                members.push(member);
            }
        }
        if members.len() >= MAX_MEMBERS {
            members.truncate(MAX_MEMBERS);
            break;
        }
        next = collection.next_link;
    }
    Ok(members)
}

fn parse<T: DeserializeOwned>(transport: &Transport, reply: &Reply, what: &str) -> Result<T, BmcError> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| transport.invalid(what, format!("not a Redfish JSON resource: {e}")))
}

fn contains(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v.eq_ignore_ascii_case(wanted))
}

pub(crate) fn power_state(value: Option<&str>) -> PowerState {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("on") => PowerState::On,
        Some("off") => PowerState::Off,
        Some("poweringon") => PowerState::PoweringOn,
        Some("poweringoff") => PowerState::PoweringOff,
        _ => PowerState::Unknown,
    }
}

fn boot_target(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Http => "UefiHttp",
        BootDevice::Disk => "Hdd",
        BootDevice::Cd => "Cd",
    }
}

/// The `ResetType` to send for `action`, given what the BMC allows (`None`:
/// it does not say) and, for a power cycle it does not offer, the current
/// state. `Err` says what is not supported.
pub(crate) fn reset_type(
    action: PowerAction,
    allowed: Option<&[String]>,
    state: Option<PowerState>,
) -> Result<&'static str, String> {
    let offers = |t: &str| allowed.is_none_or(|a| contains(a, t));
    let choice = match action {
        PowerAction::On => ["On", "ForceOn"].into_iter().find(|t| offers(t)),
        PowerAction::ForceOff => offers("ForceOff").then_some("ForceOff"),
        // Where the BMC does not list GracefulShutdown: some Supermicro
        // firmware lists it run together with the next value
        // ("GracefulShutdownGracefulRestart"), and it works; HPE offers
        // PushPowerButton, the ACPI power button (sent only to a system
        // that is on, see `power`).
        PowerAction::GracefulShutdown if offers("GracefulShutdown") => Some("GracefulShutdown"),
        PowerAction::GracefulShutdown
            if allowed.is_some_and(|a| a.iter().any(|t| t.starts_with("GracefulShutdown"))) =>
        {
            Some("GracefulShutdown")
        }
        PowerAction::GracefulShutdown => offers("PushPowerButton").then_some("PushPowerButton"),
        PowerAction::ForceRestart => ["ForceRestart", "PowerCycle"].into_iter().find(|t| offers(t)),
        PowerAction::PowerCycle if offers("PowerCycle") => Some("PowerCycle"),
        // No PowerCycle: a system that is off is turned on, one that is on is
        // restarted, which is what a power cycle would have left.
        PowerAction::PowerCycle => match state {
            Some(PowerState::Off | PowerState::PoweringOff) => ["On", "ForceOn"].into_iter().find(|t| offers(t)),
            _ => offers("ForceRestart").then_some("ForceRestart"),
        },
    };
    choice.ok_or_else(|| {
        format!("power action {action} (the BMC allows {})", allowed.map(|a| a.join(", ")).unwrap_or_default())
    })
}
