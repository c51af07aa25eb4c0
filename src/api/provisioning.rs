//! The part of a BareMetalNode's status that concerns the work done on the
//! machine itself through `girder agent`: what the operator asks
//! ([`ProvisioningStatus`], written by the operator) and what the agent
//! reports ([`AgentStatus`], written by the agent and nothing else).
//!
//! Work reaches the agent as a *run* with an id inside an agent *session*.
//! A session is one grant of access: the node's agent Secret is re-created
//! for each one, and every token bound to the previous Secret stops working.
//! A session may carry several runs (a retry after a failed checksum does
//! not need a reboot while the agent is still connected).

use super::node::{CleaningMode, HardwareDetails, ImageSpec, RootDeviceHints, SecretReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The operator's record of the agent work on a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningStatus {
    /// The agent session the operator expects, if any. Only an agent of
    /// this session may report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// What the agent is asked to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<AgentRun>,
    /// Where the current operation stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProvisioningState>,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since: Option<Time>,
    /// The image installed, or being installed, as the spec gave it when
    /// provisioning started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// The disk the image was written to, e.g. `/dev/vdb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<String>,
    /// How long each step of the last operation took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTiming>,
    /// Failed attempts of the current operation in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: i32,
    /// No new attempt before this time (capped exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Where an operation done through the agent stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProvisioningState {
    /// The machine is being booted into girder's ramdisk.
    BootingRamdisk,
    /// Waiting for the agent to connect and report the run.
    WaitingForAgent,
    /// The last run failed; the next attempt waits for `retryAfter` or a spec change.
    Failed,
    /// The image is written; the machine is booting from its disk.
    BootingDisk,
    /// Done.
    Complete,
}

/// A unit of work for the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRun {
    /// Unique within the node; a result names the run it belongs to.
    pub id: String,
    /// What to do.
    pub action: RunAction,
    /// The image to write (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Which disk to write it to (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// Secret whose `userData` becomes the cloud-init user-data (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretReference>,
    /// What to wipe (Clean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<CleaningMode>,
}

/// The work an agent does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunAction {
    /// Report the hardware inventory.
    Inspect,
    /// Write an image to the root disk, with its cloud-init seed.
    Deploy,
    /// Wipe the disks (cleaning).
    Clean,
}

/// What the agent on the machine reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The session the agent's credentials belong to.
    pub session: String,
    /// Whether the agent runs from girder's network-booted ramdisk or from
    /// the installed system on the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
    /// Version of `girder agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When this agent process connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<Time>,
    /// The hardware inventory, read on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<HardwareDetails>,
    /// The last run the agent took up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunReport>,
}

/// Where the agent's system was booted from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BootSource {
    /// girder's ramdisk, booted over the network.
    Network,
    /// The installed system, booted from the disk.
    Disk,
}

/// How a run went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// The run this reports on.
    pub id: String,
    /// Running, Succeeded or Failed.
    pub state: RunState,
    /// The step under way, or the one that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why it failed, CamelCase, e.g. `ImageChecksumMismatch` or `NoMatchingDisk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The disk the image went to (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<String>,
    /// Each step and how long it took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTiming>,
}

/// The state of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
}

/// One step of an operation and how long it took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTiming {
    /// e.g. `download`, `write`, `verify`, `seed`, `boot`, `wipe`.
    pub name: String,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// How long it took, in milliseconds; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milliseconds: Option<i64>,
    /// Bytes it moved, where that means something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Anything worth knowing about it, e.g. a resumed download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
