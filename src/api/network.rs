//! Network: an L2/L3 network the nodes live on.

use super::condition::{Condition, conditions_schema};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The numeric value of a dotted IPv4 string in CEL, so ranges can be ordered
/// at admission (CEL has no IP ordering).
macro_rules! ipv4_value {
    ($field:literal) => {
        concat!(
            "(int(",
            $field,
            ".split('.')[0]) * 16777216 + int(",
            $field,
            ".split('.')[1]) * 65536 + int(",
            $field,
            ".split('.')[2]) * 256 + int(",
            $field,
            ".split('.')[3]))"
        )
    };
}

/// A network girder gives addresses on, boots from, or registers in DNS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "girder.dev",
    version = "v1alpha1",
    kind = "Network",
    namespaced,
    doc = "An L2/L3 network the nodes live on: addresses, DHCP, conduits and DNS registration.",
    status = "NetworkStatus",
    shortname = "gnet",
    category = "girder",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr", description = "IPv4 network"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".spec.ipv6Prefix", description = "IPv6 prefix"),
    printcolumn(
        name = "Category",
        type_ = "string",
        json_path = ".spec.category",
        description = "What the network is for"
    ),
    printcolumn(name = "DHCP", type_ = "string", json_path = ".spec.dhcp.mode", description = "How DHCP is done"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free", description = "Free static addresses"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.cidr) || has(self.ipv6Prefix)").message("set cidr, ipv6Prefix or both").field_path(".cidr"))]
#[x_kube(validation = Rule::new("!has(self.cidr) || !isCIDR(self.cidr) || !has(self.ranges) || self.ranges.all(r, !isIP(r.start) || !isIP(r.end) || ip(r.start).family() != 4 || (cidr(self.cidr).containsIP(r.start) && cidr(self.cidr).containsIP(r.end)))").message("every IPv4 range must lie inside cidr").field_path(".ranges"))]
#[x_kube(validation = Rule::new("!has(self.ipv6Prefix) || !isCIDR(self.ipv6Prefix) || !has(self.ranges) || self.ranges.all(r, !isIP(r.start) || !isIP(r.end) || ip(r.start).family() != 6 || (cidr(self.ipv6Prefix).containsIP(r.start) && cidr(self.ipv6Prefix).containsIP(r.end)))").message("every IPv6 range must lie inside ipv6Prefix").field_path(".ranges"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.cidr) || !isCIDR(self.cidr) || !isIP(self.gateway) || cidr(self.cidr).containsIP(self.gateway)").message("gateway must lie inside cidr").field_path(".gateway"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// IPv4 network in CIDR form, e.g. `10.10.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4").message("must be an IPv4 CIDR such as 10.10.0.0/24"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("must be the network address of the prefix, without host bits set"))]
    pub cidr: Option<String>,
    /// IPv6 prefix of length /64 or shorter, e.g. `fd00:10::/64`; each node gets a stable address derived from its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6 && cidr(self).prefixLength() <= 64").message("must be an IPv6 prefix of length /64 or shorter, such as fd00:10::/64"))]
    pub ipv6_prefix: Option<String>,
    /// Default IPv4 gateway handed to nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("must be an IPv4 address"))]
    pub gateway: Option<String>,
    /// DNS resolvers handed to nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(s, isIP(s))").message("every entry must be an IP address"))]
    pub dns_servers: Vec<DnsServerAddress>,
    /// DNS domain of the nodes' names on this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
        length(max = 253)
    )]
    pub domain: Option<String>,
    /// 802.1Q VLAN ID; absent or 0 for untagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan: Option<i32>,
    /// MTU of the interfaces carrying this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: Option<i32>,
    /// What the network is for.
    #[serde(default)]
    pub category: NetworkCategory,
    /// Networks of one group align host parts: a node that is .23 on one is .23 on the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub group: Option<String>,
    /// Address ranges: static (allocated to known nodes), dhcp (leases) and discovery (unknown machines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub ranges: Vec<AddressRange>,
    /// How DHCP is done on this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpSpec>,
    /// Which NICs carry this network, by speed and order: `1g0`, `10g1`, or a bond `10g0,10g1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9]+g[0-9]+(,[0-9]+g[0-9]+)*$')").message("must name NICs by speed and order, e.g. 1g0, 10g1 or a bond 10g0,10g1"))]
    pub conduit: Option<String>,
    /// Registration of node records in the site's DNS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsRegistration>,
}

/// An IP address string.
pub type DnsServerAddress = String;

/// What a network is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkCategory {
    #[default]
    Provisioning,
    Admin,
    Bmc,
    Public,
    Storage,
    Other,
}

/// A contiguous range of addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!isIP(self.start) || !isIP(self.end) || ip(self.start).family() == ip(self.end).family()").message("start and end must both be IPv4 or both IPv6").field_path(".end"))]
#[x_kube(validation = Rule::new(concat!("!isIP(self.start) || !isIP(self.end) || ip(self.start).family() != 4 || ip(self.end).family() != 4 || ", ipv4_value!("self.start"), " <= ", ipv4_value!("self.end"))).message("start must not come after end").field_path(".end"))]
#[serde(rename_all = "camelCase")]
pub struct AddressRange {
    /// Name of the range, unique within the network.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// What the range is for.
    #[serde(rename = "type")]
    pub type_: RangeType,
    /// First address of the range (inclusive).
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IP address"))]
    pub start: String,
    /// Last address of the range (inclusive).
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IP address"))]
    pub end: String,
}

/// What a range is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RangeType {
    /// Allocated to declared nodes, persistently.
    Static,
    /// Leased by girder's DHCP server in Managed mode.
    Dhcp,
    /// Leased to unknown machines that boot the discovery image.
    Discovery,
}

/// DHCP behaviour on a network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhcpSpec {
    /// Managed: girder answers DHCP. Proxy: the site's DHCP gives addresses and girder answers only PXE. Disabled: the site's DHCP also points PXE clients at girder.
    #[serde(default)]
    pub mode: DhcpMode,
    /// Lease time, in seconds, in Managed mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 2592000))]
    pub lease_seconds: Option<i32>,
    /// Whether machines nobody declared get the discovery image and become BareMetalNodes in phase Discovered.
    #[serde(default)]
    pub allow_discovery: bool,
}

/// How DHCP is done.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DhcpMode {
    #[default]
    Managed,
    Proxy,
    Disabled,
}

/// RFC 2136 registration of node records in the site's DNS server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRegistration {
    /// The DNS server accepting dynamic updates, as `host` or `host:port`.
    #[schemars(length(min = 1, max = 260))]
    pub server: String,
    /// Forward zone the A and AAAA records go into.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// Reverse zone for PTR records; derived from the CIDR when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub reverse_zone: Option<String>,
    /// Secret holding the TSIG key: `keyName`, `algorithm` and `secret` (base64).
    pub tsig_secret_ref: super::node::SecretReference,
    /// TTL of the records, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub ttl: Option<i32>,
}

/// Observed state of a Network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// Ready, Exhausted, Conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses allocated to nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    /// Free addresses left in the static ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<i64>,
}

/// One node's addresses on this network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// BareMetalNode name.
    pub node: String,
    /// IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}
