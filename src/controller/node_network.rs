//! The node-network controller: copies each node's addresses from the
//! Networks it joins into its `status.addresses`, with the interface that
//! carries each network, and says in its `NetworkReady` condition whether
//! every network gave it an address.
//!
//! It owns only `status.addresses` and the `NetworkReady` condition (field
//! manager `girder-operator/node-network`): conditions are a list-map keyed
//! by `type`, so server-side apply leaves every other controller's conditions
//! on the node alone. The Network's `status.allocations` is the record (see
//! [`super::network`]); this is a copy for the node's readers (PXE, agent,
//! DNS).
//!
//! The interface comes from the node's `interface` override, else from the
//! Network's `conduit` applied to the node's NIC inventory (exact speed
//! classes, NICs in name order: [`crate::ipam::conduit`]); a bond is named
//! after its members joined by `+` (`eth2+eth3`). Without an inventory yet
//! the addresses are published without an interface, and the condition says
//! the interface is decided after inspection: that is not an error.

use super::cache::Deleted;
use super::network::{GuardedNetwork, GuardedNode, announce, bounded_sentences, membership, pools};
use super::{Context, Error, key};
use crate::api::condition::{self, Condition};
use crate::api::network::Allocation;
use crate::api::node::{NodeAddress, NodeNetwork};
use crate::api::{BareMetalNode, ConditionStatus, Network};
use crate::ipam::conduit::{self, Conduit, Nic, Policy, Selection};
use crate::k8s::{apply_status, manager};
use futures::StreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::{Api, ResourceExt};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How many node status writes may be in flight at once.
const CONCURRENCY: u16 = 16;

/// Why a node lacks something on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Issue {
    reason: &'static str,
    message: String,
}

impl Issue {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// What this controller decides for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// One entry per network the node joins, in `spec.networks` order.
    pub addresses: Vec<NodeAddress>,
    /// `NetworkReady`, merged with the one already on the node.
    pub condition: Condition,
}

/// Decides a node's addresses and `NetworkReady` condition (pure), from the
/// readable Networks of its namespace and the names of those that cannot be
/// read.
pub fn decide(node: &BareMetalNode, networks: &[&Network], unreadable_networks: &BTreeSet<String>) -> Decision {
    let generation = node.metadata.generation;
    let node_name = node.name_any();
    let nics = inventory(node);
    let mut addresses = Vec::with_capacity(node.spec.networks.len());
    let mut issues: Vec<Issue> = Vec::new();
    let mut uninspected: Vec<String> = Vec::new();
    for entry in &node.spec.networks {
        let network = networks.iter().find(|n| n.name_any() == entry.network);
        let mut address = NodeAddress { network: entry.network.clone(), ..NodeAddress::default() };
        match network {
            None if unreadable_networks.contains(&entry.network) => issues.push(Issue::new(
                "InvalidNetwork",
                format!("network {} cannot be read; fix or re-create it", entry.network),
            )),
            None => issues.push(Issue::new(
                "NetworkNotFound",
                format!(
                    "network {} does not exist in namespace {}; create it or fix spec.networks",
                    entry.network,
                    node.namespace().unwrap_or_default()
                ),
            )),
            Some(network) => {
                // What the installed system needs to configure the address (cloud-init's network-config).
                address.gateway = network.spec.gateway.clone();
                address.dns_servers = network.spec.dns_servers.clone();
                address.domain = network.spec.domain.clone();
                address.mtu = network.spec.mtu;
                addresses_on(network, &node_name, entry, &mut address, &mut issues);
                if let Some(issue) = carrier(network, &node_name, entry, &nics, &mut address) {
                    issues.push(issue);
                } else if address.interface.is_none() && nics.is_empty() && network.spec.conduit.is_some() {
                    uninspected.push(entry.network.clone());
                }
            }
        }
        if address.interface.is_none() {
            address.interface = entry.interface.clone();
        }
        addresses.push(address);
    }
    let decided = network_ready(node, &issues, &uninspected, generation);
    let existing = node.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let existing: Vec<Condition> = condition::find(existing, NETWORK_READY).into_iter().cloned().collect();
    // Only this controller's condition: the transition time moves only when its status does.
    let condition = condition::merge(&existing, vec![decided.clone()]).into_iter().next().unwrap_or(decided);
    Decision { addresses, condition }
}

const NETWORK_READY: &str = "NetworkReady";

/// The node's NICs, as the conduit rules see them.
fn inventory(node: &BareMetalNode) -> Vec<Nic> {
    let nics = node.status.as_ref().and_then(|s| s.hardware.as_ref()).map(|h| h.nics.as_slice()).unwrap_or_default();
    nics.iter()
        .map(|nic| Nic {
            name: nic.name.clone(),
            mac: nic.mac.clone(),
            speed_mbps: nic.speed_mbps.and_then(|s| u64::try_from(s).ok()),
        })
        .collect()
}

/// Fills in the node's IPv4 and IPv6 addresses on `network`, or says why
/// one is missing.
fn addresses_on(
    network: &Network,
    node_name: &str,
    entry: &NodeNetwork,
    address: &mut NodeAddress,
    issues: &mut Vec<Issue>,
) {
    let name = &entry.network;
    let pools = match pools(network) {
        Ok(pools) => pools,
        Err(err) => {
            issues.push(Issue::new(err.reason(), err.to_string()));
            return;
        }
    };
    let status = network.status.as_ref();
    let allocations = status.map(|s| s.allocations.as_slice()).unwrap_or_default();
    let held = allocations.iter().find(|a| a.node == node_name);
    let current = status.is_some_and(|s| s.observed_generation == network.metadata.generation);
    let pending =
        || Issue::new("Pending", format!("network {name} has not given this node an address yet; it will shortly"));

    if let Some(pool) = &pools.v4 {
        match held.and_then(|a| a.ipv4.as_deref()) {
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    address.ipv4 = Some(format!("{ip}/{}", pool.cidr().prefix_len()));
                    if let Some(why) = pool.unusable(ip) {
                        issues.push(Issue::new(
                            "StaleAllocation",
                            format!(
                                "this node holds {ip} on network {name}, which is now {why}; take the network out of spec.networks, then put it back, to renumber it"
                            ),
                        ));
                    }
                }
                Err(_) => issues.push(unreadable_allocation(name, text)),
            },
            None if !current => issues.push(pending()),
            None => issues.push(missing_v4(network, pool, node_name, entry).unwrap_or_else(pending)),
        }
    }
    if let Some(pool) = &pools.v6 {
        match held.and_then(|a| a.ipv6.as_deref()) {
            Some(text) => match text.parse::<Ipv6Addr>() {
                Ok(ip) => address.ipv6 = Some(format!("{ip}/{}", pool.prefix().prefix_len())),
                Err(_) => issues.push(unreadable_allocation(name, text)),
            },
            None if !current => issues.push(pending()),
            None => issues.push(missing_v6(network, pool, node_name, entry).unwrap_or_else(pending)),
        }
    }
}

/// Why a node has no IPv4 address on a network whose status is current,
/// when that is not just a matter of time.
fn missing_v4(network: &Network, pool: &crate::ipam::v4::Pool, node_name: &str, entry: &NodeNetwork) -> Option<Issue> {
    let name = &entry.network;
    let allocations = network.status.as_ref().map(|s| s.allocations.as_slice()).unwrap_or_default();
    if let Some(hint) = &entry.ipv4_address {
        let Ok(ip) = hint.parse::<Ipv4Addr>() else {
            return Some(Issue::new(
                "InvalidHint",
                format!("ipv4Address {hint:?} for network {name} is not an IPv4 address"),
            ));
        };
        if let Some(why) = pool.unusable(ip) {
            return Some(Issue::new(
                "HintUnusable",
                format!("this node asks for {ip} on network {name}, but that address is {why}"),
            ));
        }
        if !pool.allocatable(ip) {
            return Some(Issue::new(
                "HintUnusable",
                format!("this node asks for {ip} on network {name}, but that address is outside its static ranges"),
            ));
        }
        let holds = |a: &&Allocation| a.ipv4.as_deref().and_then(|t| t.parse::<Ipv4Addr>().ok()) == Some(ip);
        let holder = allocations.iter().filter(|a| a.node != node_name).find(holds);
        return holder.map(|holder| {
            Issue::new(
                "HintTaken",
                format!("this node asks for {ip} on network {name}, but node {} holds it", holder.node),
            )
        });
    }
    let free = network.status.as_ref().and_then(|s| s.free);
    (free == Some(0)).then(|| {
        Issue::new(
            "Exhausted",
            format!(
                "network {name} has no free IPv4 address left for this node; widen a static range of network {name} or remove nodes from it"
            ),
        )
    })
}

/// Why a node has no IPv6 address on a network whose status is current,
/// when that is not just a matter of time: only its hint can be refused.
fn missing_v6(network: &Network, pool: &crate::ipam::v6::Pool, node_name: &str, entry: &NodeNetwork) -> Option<Issue> {
    let name = &entry.network;
    let hint = entry.ipv6_address.as_ref()?;
    let Ok(ip) = hint.parse::<Ipv6Addr>() else {
        return Some(Issue::new(
            "InvalidHint",
            format!("ipv6Address {hint:?} for network {name} is not an IPv6 address"),
        ));
    };
    if let Some(why) = pool.unusable(ip) {
        return Some(Issue::new(
            "HintUnusable",
            format!("this node asks for {ip} on network {name}, but that address is {why}"),
        ));
    }
    let allocations = network.status.as_ref().map(|s| s.allocations.as_slice()).unwrap_or_default();
    let holds = |a: &&Allocation| a.ipv6.as_deref().and_then(|t| t.parse::<Ipv6Addr>().ok()) == Some(ip);
    let holder = allocations.iter().filter(|a| a.node != node_name).find(holds)?;
    Some(Issue::new(
        "HintTaken",
        format!("this node asks for {ip} on network {name}, but node {} holds it", holder.node),
    ))
}

fn unreadable_allocation(network: &str, text: &str) -> Issue {
    Issue::new(
        "InvalidAllocation",
        format!(
            "network {network} records {text:?} for this node, which is not an IP address; see the network's Conflict condition"
        ),
    )
}

/// Decides which interface carries `network` and fills in its name and
/// MACs; says what is missing when the node cannot carry it.
fn carrier(
    network: &Network,
    node_name: &str,
    entry: &NodeNetwork,
    nics: &[Nic],
    address: &mut NodeAddress,
) -> Option<Issue> {
    let name = &entry.network;
    let selection: Result<Selection, conduit::ConduitError> = if let Some(interface) = &entry.interface {
        if nics.is_empty() {
            // Named by the node; its MAC is known after inspection.
            return None;
        }
        conduit::select_interface(name, node_name, interface, nics)
    } else if let Some(text) = &network.spec.conduit {
        let conduit = match text.parse::<Conduit>() {
            Ok(conduit) => conduit,
            Err(err) => return Some(Issue::new(err.reason(), format!("network {name}: {err}"))),
        };
        if nics.is_empty() {
            return None;
        }
        conduit::select(name, node_name, &conduit, nics, Policy::Strict)
    } else {
        return None;
    };
    match selection {
        Ok(selection) => {
            address.interface = Some(selection.interfaces().join("+"));
            address.macs = selection.macs();
            None
        }
        Err(err) => Some(Issue::new("ConduitMissing", err.to_string())),
    }
}

fn network_ready(node: &BareMetalNode, issues: &[Issue], uninspected: &[String], generation: Option<i64>) -> Condition {
    let networks: Vec<&str> = node.spec.networks.iter().map(|n| n.network.as_str()).collect();
    if networks.is_empty() {
        return Condition::new(NETWORK_READY, true, "NoNetworks", "the node joins no network", generation);
    }
    if issues.is_empty() {
        let mut message = format!("every network gave this node its addresses: {}", networks.join(", "));
        if !uninspected.is_empty() {
            message.push_str(&format!(
                "; the interfaces carrying {} are decided after inspection (no NIC inventory yet)",
                uninspected.join(", ")
            ));
        }
        return Condition::new(NETWORK_READY, true, "AddressesAssigned", message, generation);
    }
    // A problem someone must fix names the condition; waiting comes last.
    let reason = issues.iter().find(|i| i.reason != "Pending").unwrap_or(&issues[0]).reason;
    let messages: Vec<String> = issues.iter().map(|i| i.message.clone()).collect();
    Condition::new(NETWORK_READY, false, reason, bounded_sentences(&messages), generation)
}

/// The part of the node's status this controller owns.
#[derive(Serialize)]
struct OwnStatus<'a> {
    #[serde(skip_serializing_if = "<[NodeAddress]>::is_empty")]
    addresses: &'a [NodeAddress],
    conditions: [&'a Condition; 1],
}

struct NodeNetworkContext {
    ctx: Arc<Context>,
    networks: Store<GuardedNetwork>,
}

#[tracing::instrument(skip_all, fields(namespace = guard.namespace().unwrap_or_default(), node = %guard.name_any()))]
async fn reconcile(guard: Arc<GuardedNode>, nc: Arc<NodeNetworkContext>) -> Result<Action, Error> {
    let ctx = &nc.ctx;
    let Some(node) = super::readable(ctx, guard.as_ref()).await else {
        return Ok(Action::await_change());
    };
    let started = Instant::now();
    let namespace =
        node.namespace().ok_or_else(|| Error::NoNamespace { kind: "BareMetalNode", name: node.name_any() })?;
    let network_guards = nc.networks.state();
    let mut networks = Vec::new();
    let mut unreadable = BTreeSet::new();
    for guard in network_guards.iter().filter(|g| g.namespace().as_deref() == Some(namespace.as_str())) {
        match &guard.0 {
            Ok(network) => networks.push(network),
            Err(_) => {
                unreadable.insert(guard.name_any());
            }
        }
    }
    let decision = decide(node, &networks, &unreadable);
    let status = node.status.as_ref();
    let before = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let unchanged = status.map(|s| s.addresses.as_slice()).unwrap_or_default() == decision.addresses.as_slice()
        && condition::find(before, NETWORK_READY) == Some(&decision.condition);
    if !unchanged {
        let api: Api<BareMetalNode> = Api::namespaced(ctx.client.clone(), &namespace);
        let own = OwnStatus { addresses: &decision.addresses, conditions: [&decision.condition] };
        apply_status(&api, node, manager::NODE_NETWORK, &own).await.map_err(|source| Error::StatusWrite {
            kind: "BareMetalNode",
            namespace: namespace.clone(),
            name: node.name_any(),
            source,
        })?;
        // Labelled by controller: the node lifecycle controller writes BareMetalNode status too.
        ctx.metrics.status_written("NodeNetwork");
        let bad = |c: &Condition| c.status == ConditionStatus::False && c.reason != "Pending";
        let after = std::slice::from_ref(&decision.condition);
        announce(ctx, node, before, after, NETWORK_READY, bad, "AssignAddresses").await;
    }
    ctx.metrics.reconciled("NodeNetwork", started.elapsed());
    ctx.backoff.succeeded(&key(&ObjectRef::from_obj(guard.as_ref())));
    Ok(Action::requeue(Duration::from_secs(3600)))
}

fn error_policy(guard: Arc<GuardedNode>, err: &Error, nc: Arc<NodeNetworkContext>) -> Action {
    tracing::warn!(node = %guard.name_any(), error = %err, "reconcile failed");
    nc.ctx.metrics.failed("NodeNetwork", err.metric_label());
    super::warn_later(nc.ctx.clone(), guard.clone(), err);
    Action::requeue(nc.ctx.backoff.failed(&key(&ObjectRef::from_obj(guard.as_ref()))))
}

/// The nodes of the network's namespace that join it.
fn members_of(nodes: &Store<GuardedNode>, network: &GuardedNetwork) -> Vec<ObjectRef<GuardedNode>> {
    let namespace = network.namespace();
    let name = network.name_any();
    nodes
        .state()
        .iter()
        .filter(|n| n.namespace() == namespace)
        .filter(|n| n.0.as_ref().is_ok_and(|node| membership(node, &name).is_some()))
        .map(|n| ObjectRef::from_obj(n.as_ref()))
        .collect()
}

/// The caches and change streams the node-network controller runs on.
pub struct Watches {
    pub nodes: Store<GuardedNode>,
    pub node_changes: ReflectHandle<GuardedNode>,
    pub networks: Store<GuardedNetwork>,
    pub network_changes: ReflectHandle<GuardedNetwork>,
    pub deleted_networks: Deleted<GuardedNetwork>,
}

/// Runs the node-network controller until `shutdown`; the caches must be ready.
pub async fn run(ctx: Arc<Context>, watches: Watches, shutdown: CancellationToken) {
    let Watches { nodes, node_changes, networks, network_changes, deleted_networks } = watches;
    let (for_changes, for_deleted) = (nodes.clone(), nodes.clone());
    let deleted_networks = super::cache::stream(deleted_networks)
        .flat_map(move |network| futures::stream::iter(members_of(&for_deleted, &network)));
    Controller::for_shared_stream(node_changes, nodes)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .watches_shared_stream(network_changes, move |network: Arc<GuardedNetwork>| members_of(&for_changes, &network))
        .reconcile_on(deleted_networks)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, Arc::new(NodeNetworkContext { ctx, networks }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::{AddressRange, Allocation, RangeType};
    use crate::api::node::{HardwareDetails, NicDetails};
    use crate::api::{BareMetalNodeSpec, BareMetalNodeStatus, NetworkSpec, NetworkStatus};

    fn network(name: &str, conduit: Option<&str>, allocations: &[(&str, &str)], free: i64) -> Network {
        let mut network = Network::new(
            name,
            NetworkSpec {
                cidr: Some("10.0.0.0/24".into()),
                ipv6_prefix: Some("fd00:1::/64".into()),
                gateway: Some("10.0.0.1".into()),
                dns_servers: vec!["10.0.0.2".into()],
                conduit: conduit.map(String::from),
                ranges: vec![AddressRange {
                    name: "static".into(),
                    type_: RangeType::Static,
                    start: "10.0.0.10".into(),
                    end: "10.0.0.99".into(),
                }],
                ..Default::default()
            },
        );
        network.metadata.namespace = Some("lab".into());
        network.metadata.generation = Some(1);
        network.status = Some(NetworkStatus {
            observed_generation: Some(1),
            free: Some(free),
            allocations: allocations
                .iter()
                .map(|(node, ipv4)| Allocation {
                    node: node.to_string(),
                    ipv4: Some(ipv4.to_string()),
                    ipv6: Some("fd00:1::1234".into()),
                })
                .collect(),
            ..Default::default()
        });
        network
    }

    fn node(networks: &[&str], nics: &[(&str, &str, i64)]) -> BareMetalNode {
        let mut node = BareMetalNode::new(
            "n1",
            BareMetalNodeSpec {
                networks: networks
                    .iter()
                    .map(|n| NodeNetwork {
                        network: n.to_string(),
                        interface: None,
                        ipv4_address: None,
                        ipv6_address: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        node.metadata.namespace = Some("lab".into());
        node.metadata.generation = Some(4);
        if !nics.is_empty() {
            node.status = Some(BareMetalNodeStatus {
                hardware: Some(HardwareDetails {
                    nics: nics
                        .iter()
                        .map(|(name, mac, speed)| NicDetails {
                            name: Some(name.to_string()),
                            mac: mac.to_string(),
                            speed_mbps: Some(*speed),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        node
    }

    const NICS: [(&str, &str, i64); 3] = [
        ("eno1", "aa:00:00:00:00:01", 1000),
        ("ens2f0", "aa:00:00:00:00:02", 10000),
        ("ens2f1", "aa:00:00:00:00:03", 10000),
    ];

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn addresses_carry_prefix_lengths_and_the_conduit_interface() {
        let admin = network("admin", Some("10g1"), &[("n1", "10.0.0.23")], 10);
        let decision = decide(&node(&["admin"], &NICS), &[&admin], &none());
        assert_eq!(
            decision.addresses,
            [NodeAddress {
                network: "admin".into(),
                interface: Some("ens2f1".into()),
                macs: vec!["aa:00:00:00:00:03".into()],
                ipv4: Some("10.0.0.23/24".into()),
                ipv6: Some("fd00:1::1234/64".into()),
                gateway: Some("10.0.0.1".into()),
                dns_servers: vec!["10.0.0.2".into()],
                domain: None,
                mtu: None,
            }]
        );
        let ready = &decision.condition;
        assert_eq!((ready.status, ready.reason.as_str()), (ConditionStatus::True, "AddressesAssigned"));
        assert_eq!(ready.observed_generation, Some(4));
    }

    #[test]
    fn a_bond_is_named_after_its_members() {
        let storage = network("storage", Some("10g0,10g1"), &[("n1", "10.0.0.23")], 10);
        let decision = decide(&node(&["storage"], &NICS), &[&storage], &none());
        assert_eq!(decision.addresses[0].interface.as_deref(), Some("ens2f0+ens2f1"));
        assert_eq!(decision.addresses[0].macs, ["aa:00:00:00:00:02", "aa:00:00:00:00:03"]);
    }

    #[test]
    fn without_inventory_the_interface_is_decided_after_inspection() {
        let admin = network("admin", Some("10g0"), &[("n1", "10.0.0.23")], 10);
        let decision = decide(&node(&["admin"], &[]), &[&admin], &none());
        assert_eq!(decision.addresses[0].interface, None);
        assert_eq!(decision.addresses[0].ipv4.as_deref(), Some("10.0.0.23/24"));
        assert_eq!(decision.condition.status, ConditionStatus::True);
        assert!(decision.condition.message.contains("decided after inspection"), "{}", decision.condition.message);
    }

    #[test]
    fn a_named_interface_overrides_the_conduit() {
        let admin = network("admin", Some("10g0"), &[("n1", "10.0.0.23")], 10);
        let mut n1 = node(&["admin"], &NICS);
        n1.spec.networks[0].interface = Some("eno1".into());
        let decision = decide(&n1, &[&admin], &none());
        assert_eq!(decision.addresses[0].interface.as_deref(), Some("eno1"));
        assert_eq!(decision.addresses[0].macs, ["aa:00:00:00:00:01"]);
        n1.spec.networks[0].interface = Some("eth9".into());
        let decision = decide(&n1, &[&admin], &none());
        assert_eq!(decision.condition.reason, "ConduitMissing");
        assert!(decision.condition.message.contains("interface eth9"), "{}", decision.condition.message);
    }

    #[test]
    fn a_missing_nic_is_named_with_the_network() {
        let admin = network("admin", Some("25g0"), &[("n1", "10.0.0.23")], 10);
        let decision = decide(&node(&["admin"], &NICS), &[&admin], &none());
        let ready = &decision.condition;
        assert_eq!((ready.status, ready.reason.as_str()), (ConditionStatus::False, "ConduitMissing"));
        assert!(ready.message.contains("network admin") && ready.message.contains("25 Gbit/s"), "{}", ready.message);
        assert_eq!(decision.addresses[0].ipv4.as_deref(), Some("10.0.0.23/24"), "the address is still published");
    }

    #[test]
    fn a_full_network_says_exhausted_and_a_busy_one_pending() {
        let full = network("admin", None, &[("other", "10.0.0.10")], 0);
        let decision = decide(&node(&["admin"], &[]), &[&full], &none());
        assert_eq!(
            (decision.condition.status, decision.condition.reason.as_str()),
            (ConditionStatus::False, "Exhausted")
        );
        assert!(decision.condition.message.contains("network admin"), "{}", decision.condition.message);

        let mut busy = network("admin", None, &[], 10);
        busy.metadata.generation = Some(2);
        let decision = decide(&node(&["admin"], &[]), &[&busy], &none());
        assert_eq!(decision.condition.reason, "Pending");
        assert!(decision.condition.message.contains("network admin"), "{}", decision.condition.message);
    }

    #[test]
    fn a_problem_someone_must_fix_names_the_condition_before_waiting() {
        let mut busy = network("admin", None, &[], 10);
        busy.metadata.generation = Some(2);
        let decision = decide(&node(&["admin", "missing"], &[]), &[&busy], &none());
        assert_eq!(decision.condition.reason, "NetworkNotFound");
        assert!(decision.condition.message.contains("network missing does not exist"));
        assert!(decision.condition.message.contains("network admin has not given"));
        assert_eq!(decision.addresses.len(), 2, "one entry per network the node joins");
    }

    #[test]
    fn a_taken_hint_names_the_holder() {
        let admin = network("admin", None, &[("other", "10.0.0.50")], 10);
        let mut n1 = node(&["admin"], &[]);
        n1.spec.networks[0].ipv4_address = Some("10.0.0.50".into());
        let decision = decide(&n1, &[&admin], &none());
        assert_eq!(decision.condition.reason, "HintTaken");
        assert!(decision.condition.message.contains("node other holds it"), "{}", decision.condition.message);
    }

    #[test]
    fn an_ipv6_hint_is_compared_as_an_address_not_as_text() {
        let admin = network("admin", None, &[("other", "10.0.0.50")], 10);
        let mut n1 = node(&["admin"], &[]);
        n1.spec.networks[0].ipv6_address = Some("fd00:1:0:0::1234".into());
        let decision = decide(&n1, &[&admin], &none());
        assert_eq!(decision.condition.reason, "HintTaken");
        assert!(decision.condition.message.contains("fd00:1::1234"), "{}", decision.condition.message);
    }

    #[test]
    fn deciding_again_keeps_the_transition_time_and_ignores_other_conditions() {
        let admin = network("admin", None, &[("n1", "10.0.0.23")], 10);
        let mut n1 = node(&["admin"], &[]);
        let first = decide(&n1, &[&admin], &none());
        let mut old = first.condition.clone();
        old.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        let foreign = Condition::new("PoweredOn", true, "On", "on", Some(4));
        n1.status = Some(BareMetalNodeStatus {
            conditions: vec![foreign, old.clone()],
            addresses: first.addresses.clone(),
            ..Default::default()
        });
        let again = decide(&n1, &[&admin], &none());
        assert_eq!(again.condition, old);
        assert_eq!(again.addresses, first.addresses);
    }

    #[test]
    fn a_node_on_no_network_is_ready() {
        let decision = decide(&node(&[], &[]), &[], &none());
        assert!(decision.addresses.is_empty());
        assert_eq!(
            (decision.condition.status, decision.condition.reason.as_str()),
            (ConditionStatus::True, "NoNetworks")
        );
    }
}
