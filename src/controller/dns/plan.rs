//! What the site's DNS should hold for one Network, what was last published,
//! and the UPDATE messages that take the one to the other. Pure: no
//! Kubernetes calls, no DNS traffic.

use crate::api::network::DnsRegistration;
use crate::api::{Network, Workload};
use crate::dns::{self, Change, RData, RecordType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most changes in one UPDATE message, so a large site's sync stays well
/// under the 64 KiB a DNS message can hold.
const CHANGES_PER_MESSAGE: usize = 400;

/// The records girder owns at one name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSet {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub a: BTreeSet<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub aaaa: BTreeSet<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ptr: BTreeSet<String>,
}

impl RecordSet {
    fn is_empty(&self) -> bool {
        self.a.is_empty() && self.aaaa.is_empty() && self.ptr.is_empty()
    }

    fn add(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(v4) => self.a.insert(v4),
            IpAddr::V6(v6) => self.aaaa.insert(v6),
        };
    }

    fn union(&mut self, other: &RecordSet) {
        self.a.extend(other.a.iter().copied());
        self.aaaa.extend(other.aaaa.iter().copied());
        self.ptr.extend(other.ptr.iter().cloned());
    }
}

/// Records by zone, then by owner name (lower case, no trailing dot). The
/// same shape says what should be published and what was.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    #[serde(default)]
    pub zones: BTreeMap<String, BTreeMap<String, RecordSet>>,
}

impl Records {
    fn entry(&mut self, zone: &str, name: &str) -> &mut RecordSet {
        self.zones.entry(zone.to_string()).or_default().entry(name.to_string()).or_default()
    }

    /// Every name of both, with the records of both: what may be in the DNS
    /// while an update is under way, so a failed update forgets nothing.
    pub fn union(&self, other: &Records) -> Records {
        let mut merged = self.clone();
        for (zone, names) in &other.zones {
            for (name, set) in names {
                merged.entry(zone, name).union(set);
            }
        }
        merged
    }

    /// Number of owner names.
    pub fn names(&self) -> usize {
        self.zones.values().map(BTreeMap::len).sum()
    }
}

/// What the controller decided should be in the DNS, and what it had to leave out.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    pub records: Records,
    /// Records that cannot be published, each as a sentence.
    pub skipped: Vec<String>,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reverse zones of a network: the spec's `reverseZone` for its family,
/// otherwise derived from the CIDR and the IPv6 prefix.
pub fn reverse_zones(network: &Network, dns: &DnsRegistration) -> (Option<String>, Option<String>) {
    let given = dns.reverse_zone.as_deref().map(normalise);
    let given_v4 = given.clone().filter(|z| z.ends_with("in-addr.arpa"));
    let given_v6 = given.filter(|z| z.ends_with("ip6.arpa"));
    let parse = |cidr: &str| -> Option<(IpAddr, u8)> {
        let (addr, len) = cidr.split_once('/')?;
        Some((addr.parse().ok()?, len.parse().ok()?))
    };
    let v4 = given_v4.or_else(|| match parse(network.spec.cidr.as_deref()?)? {
        (IpAddr::V4(addr), len) => Some(dns::reverse_zone_v4(addr, len)),
        _ => None,
    });
    let v6 = given_v6.or_else(|| match parse(network.spec.ipv6_prefix.as_deref()?)? {
        (IpAddr::V6(addr), len) => Some(dns::reverse_zone_v6(addr, len)),
        _ => None,
    });
    (v4, v6)
}

/// The records a Network with `spec.dns` should have: `<node>.<zone>` with
/// A/AAAA and matching PTRs for every allocation, and one name per DNS pool
/// of a Workload on this network, holding the addresses of the pool's
/// members. Membership is the Workload role's `nodes` list (the annealer does
/// not assign roles yet); a role without `nodes` gives an empty pool.
pub fn desired(network: &Network, dns: &DnsRegistration, workloads: &[&Workload]) -> Desired {
    let zone = normalise(&dns.zone);
    let (reverse_v4, reverse_v6) = reverse_zones(network, dns);
    let mut out = Desired::default();
    let allocations = network.status.as_ref().map(|s| s.allocations.as_slice()).unwrap_or_default();
    let mut by_node: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for allocation in allocations {
        let addrs = by_node.entry(allocation.node.as_str()).or_default();
        for addr in [&allocation.ipv4, &allocation.ipv6].into_iter().flatten() {
            match addr.parse::<IpAddr>() {
                Ok(ip) => addrs.push(ip),
                Err(_) => out.skipped.push(format!("node {}: {addr:?} is not an IP address", allocation.node)),
            }
        }
    }
    for (node, addrs) in &by_node {
        let fqdn = format!("{}.{zone}", node.to_ascii_lowercase());
        let forward = out.records.entry(&zone, &fqdn);
        for addr in addrs {
            forward.add(*addr);
        }
        for addr in addrs {
            let reverse = if addr.is_ipv4() { &reverse_v4 } else { &reverse_v6 };
            let owner = dns::reverse_name(*addr);
            match reverse {
                Some(rz) if dns::in_zone(&owner, rz) => {
                    out.records.entry(rz, &owner).ptr.insert(fqdn.clone());
                }
                _ => out.skipped.push(format!("no PTR for {addr} of node {node}: it lies in no reverse zone")),
            }
        }
    }
    let network_name = network.metadata.name.as_deref().unwrap_or_default();
    for workload in workloads {
        for pool in workload.spec.dns_pools.iter().filter(|p| p.network == network_name) {
            let name = normalise(&pool.name);
            if !dns::in_zone(&name, &zone) || name == zone {
                let workload = workload.metadata.name.as_deref().unwrap_or_default();
                out.skipped.push(format!("pool {name} of workload {workload} is not a name under zone {zone}"));
                continue;
            }
            // The nodes whose binding of the role is Active, as the annealer
            // reports them: a member joins the name once it serves.
            let members: BTreeSet<&str> = workload
                .status
                .iter()
                .flat_map(|s| s.roles.iter())
                .filter(|r| r.role == pool.role)
                .flat_map(|r| r.active_nodes.iter().map(String::as_str))
                .collect();
            let set = out.records.entry(&zone, &name);
            for addr in members.iter().filter_map(|m| by_node.get(m)).flatten() {
                set.add(*addr);
            }
        }
    }
    out
}

/// One UPDATE to send.
#[derive(Debug, PartialEq)]
pub struct Message {
    pub zone: String,
    pub changes: Vec<Change>,
}

/// The UPDATE messages that take the DNS from `published` to `desired`:
/// every name when `full` (a periodic re-assertion, or after a failure),
/// otherwise only the names whose records differ. Names no longer desired
/// lose the record types girder published there, nothing else.
pub fn plan(desired: &Records, published: &Records, full: bool) -> Vec<Message> {
    let empty = BTreeMap::new();
    // Forward zones first: a node's name matters more than its PTR, and a
    // failure then names the zone a person looks at first.
    let zones: BTreeSet<(bool, &String)> =
        desired.zones.keys().chain(published.zones.keys()).map(|z| (z.ends_with(".arpa"), z)).collect();
    let mut messages = Vec::new();
    for (_, zone) in zones {
        let want = desired.zones.get(zone).unwrap_or(&empty);
        let have = published.zones.get(zone).unwrap_or(&empty);
        let mut changes = Vec::new();
        for (name, set) in want {
            let old = have.get(name);
            if !full && old == Some(set) {
                continue;
            }
            let old = old.cloned().unwrap_or_default();
            let types = [
                (RecordType::A, set.a.iter().map(|a| RData::A(*a)).collect::<Vec<_>>(), old.a.is_empty()),
                (RecordType::Aaaa, set.aaaa.iter().map(|a| RData::Aaaa(*a)).collect(), old.aaaa.is_empty()),
                (RecordType::Ptr, set.ptr.iter().map(|p| RData::Ptr(format!("{p}."))).collect(), old.ptr.is_empty()),
            ];
            for (rtype, data, was_empty) in types {
                // An empty RRset that was never published needs no delete.
                if !data.is_empty() || !was_empty {
                    changes.push(Change::Replace { name: name.clone(), rtype, data });
                }
            }
        }
        for (name, old) in have.iter().filter(|(name, _)| !want.contains_key(*name)) {
            for (rtype, had) in [
                (RecordType::A, !old.a.is_empty()),
                (RecordType::Aaaa, !old.aaaa.is_empty()),
                (RecordType::Ptr, !old.ptr.is_empty()),
            ] {
                if had {
                    changes.push(Change::Delete { name: name.clone(), rtype });
                }
            }
        }
        for chunk in changes.chunks(CHANGES_PER_MESSAGE) {
            messages.push(Message { zone: zone.clone(), changes: chunk.to_vec() });
        }
    }
    messages
}

/// Drops names left with no records, so the record of what was published stays small.
pub fn prune(mut records: Records) -> Records {
    for names in records.zones.values_mut() {
        names.retain(|_, set| !set.is_empty());
    }
    records.zones.retain(|_, names| !names.is_empty());
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::Allocation;
    use crate::api::{NetworkSpec, NetworkStatus, WorkloadSpec};

    fn registration(reverse: Option<&str>) -> DnsRegistration {
        DnsRegistration {
            server: "127.0.0.1:53".into(),
            zone: "Lab.Test.".into(),
            reverse_zone: reverse.map(String::from),
            tsig_secret_ref: serde_json::from_value(serde_json::json!({"name": "tsig"})).unwrap(),
            ttl: None,
        }
    }

    fn network(allocations: &[(&str, Option<&str>, Option<&str>)]) -> Network {
        let mut n = Network::new(
            "admin",
            NetworkSpec {
                cidr: Some("10.20.30.0/24".into()),
                ipv6_prefix: Some("fd00:20::/64".into()),
                ..Default::default()
            },
        );
        n.status = Some(NetworkStatus {
            allocations: allocations
                .iter()
                .map(|(node, v4, v6)| Allocation {
                    node: node.to_string(),
                    ipv4: v4.map(String::from),
                    ipv6: v6.map(String::from),
                })
                .collect(),
            ..Default::default()
        });
        n
    }

    /// A workload whose `role` is Active on `nodes` (placed on one more,
    /// not yet Active), with a pool of it.
    fn workload(pool: &str, role: &str, nodes: &[&str]) -> Workload {
        let spec: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "roles": [{"role": role}, {"role": "other"}],
            "dnsPools": [{"name": pool, "role": role, "network": "admin"}, {"name": "x.lab.test", "role": role, "network": "elsewhere"}],
        }))
        .unwrap();
        let mut w = Workload::new("w", spec);
        let placed: Vec<String> = nodes.iter().map(|n| n.to_string()).chain(["n4".to_string()]).collect();
        w.status = Some(
            serde_json::from_value(serde_json::json!({
                "roles": [
                    {"role": role, "nodes": placed, "activeNodes": nodes},
                    {"role": "other", "nodes": ["n3"], "activeNodes": ["n3"]},
                ],
            }))
            .unwrap(),
        );
        w
    }

    #[test]
    fn nodes_get_forward_and_reverse_records_and_pools_their_members() {
        let net = network(&[("n1", Some("10.20.30.11"), Some("fd00:20::11")), ("n2", Some("10.20.30.12"), None)]);
        let w = workload("etcd.lab.test.", "etcd", &["n1", "n2", "gone"]);
        let d = desired(&net, &registration(None), &[&w]);
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        let fwd = &d.records.zones["lab.test"];
        assert_eq!(fwd["n1.lab.test"].a, BTreeSet::from(["10.20.30.11".parse().unwrap()]));
        assert_eq!(fwd["n1.lab.test"].aaaa, BTreeSet::from(["fd00:20::11".parse().unwrap()]));
        assert_eq!(fwd["etcd.lab.test"].a.len(), 2);
        assert_eq!(fwd["etcd.lab.test"].aaaa.len(), 1);
        assert!(!fwd.contains_key("x.lab.test"), "a pool on another network");
        assert_eq!(
            d.records.zones["30.20.10.in-addr.arpa"]["11.30.20.10.in-addr.arpa"].ptr,
            BTreeSet::from(["n1.lab.test".into()])
        );
        let v6_zone = "0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(d.records.zones[v6_zone].len(), 1);
    }

    #[test]
    fn a_given_reverse_zone_is_used_and_addresses_outside_it_are_skipped() {
        let net = network(&[("n1", Some("10.20.30.11"), None)]);
        let d = desired(&net, &registration(Some("99.10.in-addr.arpa")), &[]);
        assert!(!d.records.zones.contains_key("99.10.in-addr.arpa"));
        assert_eq!(d.skipped.len(), 1);
        let d = desired(&net, &registration(Some("20.10.in-addr.arpa.")), &[]);
        assert!(d.records.zones["20.10.in-addr.arpa"].contains_key("11.30.20.10.in-addr.arpa"));
    }

    #[test]
    fn plan_sends_only_differences_and_deletes_what_left() {
        let before = desired(
            &network(&[("n1", Some("10.20.30.11"), None), ("n2", Some("10.20.30.12"), None)]),
            &registration(None),
            &[],
        )
        .records;
        let after = desired(&network(&[("n1", Some("10.20.30.11"), None)]), &registration(None), &[]).records;
        assert!(plan(&after, &after, false).is_empty(), "in sync: nothing to send");
        let messages = plan(&after, &before, false);
        assert_eq!(
            messages,
            vec![
                Message {
                    zone: "lab.test".into(),
                    changes: vec![Change::Delete { name: "n2.lab.test".into(), rtype: RecordType::A }]
                },
                Message {
                    zone: "30.20.10.in-addr.arpa".into(),
                    changes: vec![Change::Delete { name: "12.30.20.10.in-addr.arpa".into(), rtype: RecordType::Ptr }]
                },
            ]
        );
        let full = plan(&after, &after, true);
        assert_eq!(full.iter().map(|m| m.changes.len()).sum::<usize>(), 2, "A of n1 and its PTR");
        // A changed address replaces the RRset and drops the old PTR.
        let moved = desired(&network(&[("n1", Some("10.20.30.13"), None)]), &registration(None), &[]).records;
        let changes: Vec<Change> = plan(&moved, &after, false).into_iter().flat_map(|m| m.changes).collect();
        assert!(changes.contains(&Change::Delete { name: "11.30.20.10.in-addr.arpa".into(), rtype: RecordType::Ptr }));
        assert!(changes.contains(&Change::Replace {
            name: "n1.lab.test".into(),
            rtype: RecordType::A,
            data: vec![RData::A("10.20.30.13".parse().unwrap())]
        }));
    }

    #[test]
    fn union_keeps_every_name_and_prune_drops_empty_ones() {
        let a = desired(&network(&[("n1", Some("10.20.30.11"), None)]), &registration(None), &[]).records;
        let b = desired(&network(&[("n2", Some("10.20.30.12"), None)]), &registration(None), &[]).records;
        let u = a.union(&b);
        assert_eq!(u.names(), 4);
        let mut empty = Records::default();
        empty.entry("z", "n");
        assert_eq!(prune(empty), Records::default());
    }

    #[test]
    fn large_plans_are_split_into_messages() {
        let allocations: Vec<(String, String)> =
            (0..250).map(|i| (format!("n{i}"), format!("10.20.{}.{}", 30 + i / 200, 1 + i % 200))).collect();
        let refs: Vec<(&str, Option<&str>, Option<&str>)> =
            allocations.iter().map(|(n, a)| (n.as_str(), Some(a.as_str()), None)).collect();
        let mut net = network(&refs);
        net.spec.cidr = Some("10.20.0.0/16".into());
        let d = desired(&net, &registration(None), &[]).records;
        let messages = plan(&d, &Records::default(), false);
        assert!(messages.iter().all(|m| m.changes.len() <= CHANGES_PER_MESSAGE));
        assert_eq!(messages.iter().map(|m| m.changes.len()).sum::<usize>(), 500);
    }
}
