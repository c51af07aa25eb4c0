//! What `girder bmc probe` shows of a Redfish BMC: the service, how girder
//! authenticates, the systems to choose from, power and boot as the BMC
//! offers them, virtual media, BIOS, and each variation from the standard
//! the driver works around. Read as loose JSON: a probe reports what is
//! there rather than failing on what is not.

use super::model::Link;
use super::model::blank_uuid;
use super::{RedfishClient, contains, member_paths, reset_type};
use crate::bmc::{AuthMode, BmcError, Description, PowerAction};
use serde_json::Value;

/// The string at `pointer` in `value`, if it is one.
fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The strings of the array at `pointer`.
fn strings(value: &Value, pointer: &str) -> Option<Vec<String>> {
    let list = value.pointer(pointer)?.as_array()?;
    Some(list.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

impl RedfishClient {
    pub(super) async fn describe_bmc(&self) -> Result<Description, BmcError> {
        let mut out = Description::default();
        let root = self.get_optional::<Value>("/redfish/v1/").await?.unwrap_or(Value::Null);
        let service = [text(&root, "/Vendor"), text(&root, "/Product")].into_iter().flatten().collect::<Vec<_>>();
        out.fact(
            "service",
            format!(
                "Redfish {} {}",
                text(&root, "/RedfishVersion").unwrap_or("(version not given)"),
                service.join(" ")
            )
            .trim_end()
            .to_string(),
        );
        match self.auth_mode() {
            AuthMode::Basic => {
                out.fact("authentication", "HTTP basic on every request");
                out.quirks.push("no session service: girder sends HTTP basic authentication on every request".into());
            }
            _ => out.fact("authentication", "a session (X-Auth-Token), deleted when girder is done"),
        }
        let systems_path = text(&root, "/Systems/@odata.id").unwrap_or("/redfish/v1/Systems");
        let systems = member_paths(&self.transport, systems_path).await?;
        out.fact("systems", systems.join(", "));
        out.fact("system", self.system.path.clone());

        // Read as loose JSON too, for what the model leaves out (BIOS,
        // virtual media, the raw UUID).
        let (_, reply) = self.get_system().await?;
        let system: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let model = [text(&system, "/Manufacturer"), text(&system, "/Model")].into_iter().flatten();
        out.fact("machine", model.collect::<Vec<_>>().join(" "));
        if let Some(uuid) = text(&system, "/UUID").filter(|u| blank_uuid(u)) {
            out.quirks.push(format!("system UUID {uuid} is a placeholder: girder reports no UUID"));
        }
        out.fact("power", text(&system, "/PowerState").unwrap_or("(not given)"));
        match &self.system.reset_types {
            Some(types) => out.fact("reset types", types.join(", ")),
            None => out.fact("reset types", "(not listed: girder sends each as asked)"),
        }
        if let Some(types) = &self.system.reset_types
            && !contains(types, "GracefulShutdown")
        {
            let soft = match reset_type(PowerAction::GracefulShutdown, Some(types), None) {
                Ok(value) => format!("girder sends {value} for a soft power-off"),
                Err(_) => "a soft power-off is forced at once (ForceOff)".to_string(),
            };
            out.quirks.push(format!("reset types do not list GracefulShutdown: {soft}"));
        }
        let boot = system.get("Boot").cloned().unwrap_or(Value::Null);
        out.fact(
            "boot override",
            format!(
                "{} to {} in {} mode",
                text(&boot, "/BootSourceOverrideEnabled").unwrap_or("(enabled not given)"),
                text(&boot, "/BootSourceOverrideTarget").unwrap_or("(target not given)"),
                text(&boot, "/BootSourceOverrideMode").unwrap_or("(mode not given)")
            ),
        );
        match strings(&boot, "/BootSourceOverrideTarget@Redfish.AllowableValues") {
            Some(targets) => out.fact("boot targets", targets.join(", ")),
            None => {
                out.fact("boot targets", "(not listed)");
                out.quirks.push("boot targets not listed: girder sends its target and reports a refusal".into());
            }
        }
        let etag = reply.etag().or_else(|| text(&system, "/@odata.etag").map(str::to_string));
        match etag {
            None => out.fact("ETag", "none: changes are sent without If-Match"),
            Some(tag) if tag.starts_with("W/") => {
                out.fact("ETag", format!("weak ({tag})"));
                out.quirks.push(
                    "weak ETags: a change refused with 412 is sent again with the strong form, then without If-Match"
                        .into(),
                );
            }
            Some(tag) => out.fact("ETag", format!("strong ({tag})")),
        }

        match text(&system, "/Bios/@odata.id") {
            Some(path) => {
                let bios = self.get_optional::<Value>(path).await?.unwrap_or(Value::Null);
                let count = bios.get("Attributes").and_then(Value::as_object).map(|a| a.len()).unwrap_or(0);
                let settings =
                    text(&bios, "/@Redfish.Settings/SettingsObject/@odata.id").unwrap_or("(no settings object)");
                out.fact("BIOS", format!("{path}: {count} attributes; pending changes go to {settings}"));
            }
            None => out.fact("BIOS", "(not offered)"),
        }

        // Virtual media sits below the system on newer services, below the
        // manager on most.
        let manager_path = text(&system, "/Links/ManagedBy/0/@odata.id").map(str::to_string);
        let manager = match &manager_path {
            Some(path) => self.get_optional::<Value>(path).await?,
            None => None,
        };
        if let Some(manager) = &manager {
            let name = [text(manager, "/Model"), text(manager, "/FirmwareVersion")].into_iter().flatten();
            out.fact(
                "manager",
                format!("{} {}", manager_path.as_deref().unwrap_or_default(), name.collect::<Vec<_>>().join(" "))
                    .trim_end()
                    .to_string(),
            );
        }
        let media_path = text(&system, "/VirtualMedia/@odata.id")
            .or_else(|| manager.as_ref().and_then(|m| text(m, "/VirtualMedia/@odata.id")))
            .map(str::to_string);
        let media: Vec<Value> = self.get_members(&media_path.map(|id| Link { id: Some(id) })).await?;
        if media.is_empty() {
            out.fact("virtual media", "(not offered)");
        }
        for device in &media {
            let id = text(device, "/Id").unwrap_or("?");
            let types = strings(device, "/MediaTypes").unwrap_or_default().join("/");
            let inserted = match (device.get("Inserted").and_then(Value::as_bool), text(device, "/Image")) {
                (Some(true), Some(image)) if !image.is_empty() => format!("holds {image}"),
                (Some(true), _) => "inserted".to_string(),
                _ => "empty".to_string(),
            };
            let insert = text(device, "/Actions/#VirtualMedia.InsertMedia/target").is_some();
            let how = if insert { "InsertMedia" } else { "no InsertMedia action" };
            out.fact("virtual media", format!("{id} ({types}): {inserted}; {how}"));
        }
        Ok(out)
    }
}
