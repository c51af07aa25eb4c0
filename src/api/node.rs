//! BareMetalNode: one physical (or emulated) machine.

use super::condition::{Condition, conditions_schema};
pub use super::provisioning::{AgentStatus, ProvisioningStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A machine girder drives through its BMC, boots over the network, installs
/// and hands roles to.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "girder.dev",
    version = "v1alpha1",
    kind = "BareMetalNode",
    namespaced,
    doc = "A bare-metal machine girder drives through its BMC, boots over the network, installs and hands roles to.",
    status = "BareMetalNodeStatus",
    shortname = "bmn",
    category = "girder",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the node is in its lifecycle"
    ),
    printcolumn(
        name = "Power",
        type_ = "string",
        json_path = ".status.powerState",
        description = "Power state last read from the BMC"
    ),
    printcolumn(name = "BMC", type_ = "string", json_path = ".spec.bmc.address", description = "BMC address"),
    printcolumn(name = "Online", type_ = "boolean", json_path = ".spec.online", description = "Desired power"),
    printcolumn(
        name = "Maintenance",
        type_ = "boolean",
        json_path = ".spec.maintenance",
        priority = 1,
        description = "Automation stopped"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!(has(self.image) && has(self.bootProfile))").message("set either image or bootProfile, not both").field_path(".image"))]
#[serde(rename_all = "camelCase")]
pub struct BareMetalNodeSpec {
    /// How to reach the node's baseboard management controller. Absent on
    /// nodes that were discovered by PXE and have no BMC declared yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcSpec>,
    /// MAC address of the NIC the node PXE-boots from, e.g. `52:54:00:12:34:56`.
    #[serde(default, rename = "bootMACAddress", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"))]
    pub boot_mac_address: Option<String>,
    /// Desired power: true keeps the node powered on, false powered off.
    #[serde(default)]
    pub online: bool,
    /// Firmware boot mode used for network boot.
    #[serde(default)]
    pub boot_mode: BootMode,
    /// How the hardware inventory is gathered.
    #[serde(default)]
    pub inspection: InspectionMode,
    /// A disk image to write to the root device. Setting it (or `bootProfile`)
    /// provisions the node; clearing both deprovisions it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// A kernel, initrd and command line to network-boot instead of an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_profile: Option<BootProfile>,
    /// Secret whose `userData` key is handed to the installed system (cloud-init or similar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretReference>,
    /// Which Network each of the node's interfaces joins, with optional address hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["network"]))]
    pub networks: Vec<NodeNetwork>,
    /// Stops all automation on this node (no BMC calls, no tasks) without losing state.
    #[serde(default)]
    pub maintenance: bool,
    /// How `online: false` turns the machine off: `Soft` (the default) asks
    /// the operating system to shut down (Redfish GracefulShutdown, or the
    /// power button where that is all the BMC offers; IPMI soft off) and
    /// forces power off if it is still on after the operator's
    /// --soft-power-off-timeout; `Hard` forces it off at once.
    #[serde(default)]
    pub power_off_mode: PowerOffMode,
    /// Which disk to install to, when the node has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// What deprovisioning wipes before the node is Available again:
    /// `Metadata` (partition tables and the first and last MiB of every
    /// disk, the default), `Full` (every byte of every disk) or `Disabled`.
    #[serde(default)]
    pub cleaning: CleaningMode,
}

/// How a machine is turned off.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PowerOffMode {
    /// Ask the operating system to shut down, then force it after a timeout.
    #[default]
    Soft,
    /// Force power off at once.
    Hard,
}

/// How much of the disks deprovisioning wipes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum CleaningMode {
    /// Leave the disks as they are.
    Disabled,
    /// Partition tables and the first and last MiB of every disk and partition.
    #[default]
    Metadata,
    /// Every byte of every disk.
    Full,
}

/// Where and how to reach a BMC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcSpec {
    /// BMC address: `redfish://host[:port][/redfish/v1/Systems/ID]` (HTTPS),
    /// `redfish+http://...` (plain HTTP) or `ipmi://host[:port]` (IPMI 2.0 lanplus).
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(r"self.matches('^redfish(\\+https?)?://(\\[[0-9a-fA-F:.]+\\]|[^/:?#\\[\\]@]+)(:[0-9]{1,5})?(/redfish/v1/Systems/[^/?#]+)?/?$') || self.matches('^ipmi://(\\[[0-9a-fA-F:.]+\\]|[^/:?#\\[\\]@]+)(:[0-9]{1,5})?/?$')").message("must be redfish://host[:port][/redfish/v1/Systems/ID], redfish+http://host[:port][/redfish/v1/Systems/ID] or ipmi://host[:port]"))]
    pub address: String,
    /// Secret in the node's namespace holding the BMC `username` and `password`.
    pub credentials_secret_ref: SecretReference,
    /// Accept a BMC certificate that does not verify. Off by default; turn it
    /// on only for BMCs with self-signed certificates you cannot replace.
    #[serde(default)]
    pub disable_certificate_verification: bool,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Firmware boot mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BootMode {
    #[default]
    UEFI,
    Legacy,
}

/// How inventory is gathered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum InspectionMode {
    /// Read through the BMC (Redfish).
    #[default]
    OutOfBand,
    /// Boot the discovery image and let the agent report.
    InBand,
    /// Do not inspect.
    Disabled,
}

/// A disk image to install.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// HTTP(S) URL of the image.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("must be an http:// or https:// URL"))]
    pub url: String,
    /// Checksum of the image, hex encoded.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{32,128}$"))]
    pub checksum: String,
    /// Algorithm of `checksum`.
    #[serde(default)]
    pub checksum_type: ChecksumType,
    /// Image format. A `raw` image may also be gzip- or zstd-compressed
    /// (recognised by its first bytes); the checksum is of the file as served.
    #[serde(default)]
    pub format: ImageFormat,
}

/// Checksum algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    #[default]
    Sha256,
    Sha512,
}

/// Disk image format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Raw,
    Qcow2,
}

/// A network boot of a kernel and initrd.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootProfile {
    /// URL or asset path of the kernel.
    #[schemars(length(min = 1, max = 2048))]
    pub kernel: String,
    /// URL or asset path of the initrd.
    #[schemars(length(min = 1, max = 2048))]
    pub initrd: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    pub cmdline: String,
}

/// One network membership of a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetwork {
    /// Name of the Network (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
    /// Interface name to use, overriding the Network's conduit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub interface: Option<String>,
    /// IPv4 address to allocate, if free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("must be an IPv4 address"))]
    pub ipv4_address: Option<String>,
    /// IPv6 address to allocate, if free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6").message("must be an IPv6 address"))]
    pub ipv6_address: Option<String>,
}

/// Hints selecting the root disk; every hint given must match, and of the
/// disks that match the smallest is chosen. Removable and read-only disks are
/// never chosen, nor, unless `minSizeGigabytes` says otherwise, disks under
/// 4 GiB. Without hints: the smallest disk of at least 4 GiB.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootDeviceHints {
    /// Linux device name, e.g. `/dev/sda`, or a `/dev/disk/by-path/` link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/dev/"))]
    pub device_name: Option<String>,
    /// Disk serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Disk model (substring match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Disk vendor (substring match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// World Wide Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Smallest acceptable size, in GiB (replaces the 4 GiB floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_size_gigabytes: Option<i64>,
    /// True for spinning disks only, false for solid state only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

/// Observed state of a BareMetalNode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalNodeStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// BMCReachable, CredentialsValid, PoweredOn, Inspected, NetworkReady, Provisioned, Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Power state last read from the BMC: On, Off, PoweringOn, PoweringOff or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// When the operating system was asked to shut down (spec.powerOffMode
    /// Soft); power is forced off if it is still on after the operator's
    /// --soft-power-off-timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_power_off_since: Option<Time>,
    /// Hardware inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareDetails>,
    /// Addresses the node holds, per network and interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// State of each role bound to this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRoleStatus>,
    /// The last error, until the operation that failed succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
    /// When each lifecycle operation last started and ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_history: Option<OperationHistory>,
    /// The operator's side of the work done on the machine through its
    /// agent: the agent session, the run asked for, what is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningStatus>,
    /// What the node's agent reports (written by `girder agent` on the
    /// machine, and by nothing else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
}

/// Lifecycle phase of a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    Registering,
    Inspecting,
    Available,
    Provisioning,
    Provisioned,
    Deprovisioning,
    Discovered,
}

/// Hardware inventory of a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDetails {
    /// System manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// System model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// System UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Serial number of the main board (DMI), when the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_serial_number: Option<String>,
    /// Processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuDetails>,
    /// Installed memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mebibytes: Option<i64>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicDetails>,
    /// Disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<DiskDetails>,
    /// Firmware versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareDetails>,
}

/// Processors of a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuDetails {
    /// Processor model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Number of sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<i32>,
    /// Total cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<i32>,
    /// Total hardware threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Architecture, e.g. x86_64 or aarch64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// One network interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NicDetails {
    /// Interface name as the BMC or the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MAC address.
    pub mac: String,
    /// Link speed, in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<i64>,
    /// Whether the node can PXE-boot from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pxe: Option<bool>,
    /// Whether the link is up (carrier), as the agent saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<bool>,
    /// Kernel driver, as the agent saw it, e.g. `virtio_net` or `ixgbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// One disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskDetails {
    /// Device name or BMC identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Whether the disk spins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// World Wide Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Stable path of the disk, as `/dev/disk/by-path/` names it (e.g.
    /// `pci-0000:00:05.0`), when the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_path: Option<String>,
}

/// Firmware versions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareDetails {
    /// BIOS or UEFI firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<String>,
    /// BMC firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<String>,
}

/// An address a node holds on a network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    /// Name of the Network.
    pub network: String,
    /// Interface (or bond) carrying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// MAC addresses of the interface's members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<String>,
    /// IPv4 address with prefix length, e.g. `10.0.0.23/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// IPv6 address with prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The Network's default gateway, for the installed system's network configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The Network's DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    /// The Network's DNS domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The Network's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
}

/// The state of one role on this node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoleStatus {
    /// Workload that placed the role.
    pub workload: String,
    /// Role name.
    pub role: String,
    /// Annealer state.
    pub state: crate::graph::BindingState,
    /// Why it is in that state, e.g. which ancestor blocks it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The last failure on a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// Kind of failure, e.g. `RegistrationError` or `PowerManagementError`.
    #[serde(rename = "type")]
    pub type_: String,
    /// What failed and what to do about it.
    pub message: String,
    /// How many times in a row it failed.
    pub count: i32,
    /// When the first of those failures happened.
    pub since: Time,
}

/// Start and end of each lifecycle operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationHistory {
    /// Registration with the BMC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<OperationWindow>,
    /// Inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<OperationWindow>,
    /// Installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<OperationWindow>,
    /// Removal of the installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprovision: Option<OperationWindow>,
}

/// When an operation ran.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationWindow {
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}
