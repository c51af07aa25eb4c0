//! Conduits: which NICs of a node carry a network.
//!
//! A conduit names NICs by speed class and index: `1g0` is the first
//! 1 Gbit/s NIC, `10g1` the second 10 Gbit/s NIC, `10g0,10g1` a bond of both.
//! Any `Ng` is a class, not only 1g, 10g, 25g, 40g and 100g.
//!
//! **Speed classes are exact**: a NIC is in class `Ng` when it reports exactly
//! N x 1000 Mbit/s. BMCs and the agent report the negotiated link speed, so a
//! 25G NIC linked at 10G is a 10g NIC, which is what it can carry; rounding to
//! the nearest class would hide a cabling or switch-port mistake instead of
//! reporting it. A NIC with no speed (no link, or none reported) is in no class.
//!
//! **Order within a class is by name**, numbers compared as numbers (`eth2`
//! before `eth10`; predictable names such as `enp59s0f0` before `enp134s0f0`
//! follow the PCI bus order), then NICs without a name by MAC. The result does
//! not depend on the order the inventory lists NICs in, so a re-inspection
//! that lists them differently changes nothing.
//!
//! **A missing NIC is an error** by default ([`Policy::Strict`]) that says what
//! is missing and what the node has. [`Policy::FallbackToFastest`] instead
//! substitutes the fastest NIC not already in the conduit (useful in a sandbox
//! whose virtual NICs report no speed) and marks each substitution, so the
//! controller can say so in a condition.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One NIC of a node's inventory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Nic {
    pub name: Option<String>,
    pub mac: String,
    /// Link speed; `None` (or 0) when unknown or down.
    pub speed_mbps: Option<u64>,
}

impl Nic {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.mac)
    }
}

/// One element of a conduit: the `index`-th NIC (from 0) of `gbps` Gbit/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub gbps: u32,
    pub index: u32,
}

impl Slot {
    pub fn speed_mbps(&self) -> u64 {
        u64::from(self.gbps) * 1000
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}g{}", self.gbps, self.index)
    }
}

/// A parsed conduit: one slot, or several for a bond, in declared order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conduit {
    slots: Vec<Slot>,
}

impl Conduit {
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

impl fmt::Display for Conduit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots: Vec<String> = self.slots.iter().map(Slot::to_string).collect();
        f.write_str(&slots.join(","))
    }
}

impl FromStr for Conduit {
    type Err = ConduitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ConduitError::Invalid { conduit: text.to_string(), reason };
        if text.is_empty() {
            return Err(invalid("it is empty".to_string()));
        }
        let mut slots: Vec<Slot> = Vec::new();
        for part in text.split(',') {
            let (speed, index) =
                part.split_once('g').ok_or_else(|| invalid(format!("{part:?} has no g between speed and index")))?;
            let gbps = number(speed)
                .filter(|&g| g > 0)
                .ok_or_else(|| invalid(format!("{part:?} does not start with a speed in Gbit/s above 0")))?;
            let index = number(index).ok_or_else(|| invalid(format!("{part:?} does not end with an index")))?;
            let slot = Slot { gbps, index };
            if slots.contains(&slot) {
                return Err(invalid(format!("{slot} is listed twice")));
            }
            slots.push(slot);
        }
        Ok(Self { slots })
    }
}

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What to do when the node lacks a NIC the conduit names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Fail with [`ConduitError::Missing`].
    #[default]
    Strict,
    /// Use the fastest NIC not already in the conduit instead (unknown speeds
    /// count as slowest, ties go by name order).
    FallbackToFastest,
}

/// A NIC that carries the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The conduit slot it fills; `None` when the node named the interface.
    pub slot: Option<Slot>,
    pub name: Option<String>,
    pub mac: String,
    pub speed_mbps: Option<u64>,
    /// Chosen by [`Policy::FallbackToFastest`] because the slot's NIC is missing.
    pub substitute: bool,
}

/// The NICs that carry a network, in conduit order; a bond when more than one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub members: Vec<Member>,
}

impl Selection {
    pub fn is_bond(&self) -> bool {
        self.members.len() > 1
    }

    /// MAC addresses of the members, for `status.addresses[].macs`.
    pub fn macs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.mac.clone()).collect()
    }

    /// Interface names of the members (the MAC for a NIC without a name).
    pub fn interfaces(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone().unwrap_or_else(|| m.mac.clone())).collect()
    }

    /// Whether a fallback replaced any NIC the conduit asked for.
    pub fn has_substitutes(&self) -> bool {
        self.members.iter().any(|m| m.substitute)
    }
}

/// Why a node's NICs cannot carry a network.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConduitError {
    /// The conduit string does not parse (admission should have refused it).
    #[error(
        "conduit {conduit:?} is not valid: {reason}; name NICs by speed and order, e.g. 1g0, 10g1 or a bond 10g0,10g1"
    )]
    Invalid { conduit: String, reason: String },
    /// The node lacks NICs the conduit names.
    #[error("node {node} cannot carry network {network}: conduit {conduit} needs {}; the node has {inventory}", needs(.missing))]
    Missing { network: String, node: String, conduit: String, missing: Vec<Slot>, inventory: String },
    /// The node's spec names an interface its inventory does not have.
    #[error(
        "node {node} cannot carry network {network}: interface {interface} is not in its inventory; the node has {inventory}"
    )]
    UnknownInterface { network: String, node: String, interface: String, inventory: String },
}

impl ConduitError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            ConduitError::Invalid { .. } => "InvalidConduit",
            ConduitError::Missing { .. } => "ConduitNicMissing",
            ConduitError::UnknownInterface { .. } => "UnknownInterface",
        }
    }
}

/// Picks the NICs that carry `network` on `node`.
pub fn select(
    network: &str,
    node: &str,
    conduit: &Conduit,
    nics: &[Nic],
    policy: Policy,
) -> Result<Selection, ConduitError> {
    let ordered = ordered(nics);
    let mut chosen: Vec<(Slot, Option<usize>, bool)> = conduit
        .slots
        .iter()
        .map(|&slot| {
            let found = ordered
                .iter()
                .enumerate()
                .filter(|(_, nic)| nic.speed_mbps == Some(slot.speed_mbps()))
                .nth(slot.index as usize)
                .map(|(i, _)| i);
            (slot, found, false)
        })
        .collect();

    if policy == Policy::FallbackToFastest {
        let mut spare: Vec<usize> =
            (0..ordered.len()).filter(|i| !chosen.iter().any(|(_, found, _)| *found == Some(*i))).collect();
        // Stable: equal speeds keep name order.
        spare.sort_by_key(|&i| std::cmp::Reverse(ordered[i].speed_mbps.unwrap_or(0)));
        let mut spare = spare.into_iter();
        for (_, found, substitute) in chosen.iter_mut().filter(|(_, found, _)| found.is_none()) {
            *found = spare.next();
            *substitute = found.is_some();
        }
    }

    let missing: Vec<Slot> = chosen.iter().filter(|(_, found, _)| found.is_none()).map(|(slot, _, _)| *slot).collect();
    if !missing.is_empty() {
        return Err(ConduitError::Missing {
            network: network.to_string(),
            node: node.to_string(),
            conduit: conduit.to_string(),
            missing,
            inventory: inventory(&ordered),
        });
    }
    let members = chosen
        .into_iter()
        .filter_map(|(slot, found, substitute)| {
            let nic = ordered.get(found?)?;
            Some(member(Some(slot), nic, substitute))
        })
        .collect();
    Ok(Selection { members })
}

/// The NIC named `interface`, for a node whose spec overrides the conduit.
pub fn select_interface(network: &str, node: &str, interface: &str, nics: &[Nic]) -> Result<Selection, ConduitError> {
    match nics.iter().find(|n| n.name.as_deref() == Some(interface)) {
        Some(nic) => Ok(Selection { members: vec![member(None, nic, false)] }),
        None => Err(ConduitError::UnknownInterface {
            network: network.to_string(),
            node: node.to_string(),
            interface: interface.to_string(),
            inventory: inventory(&ordered(nics)),
        }),
    }
}

fn member(slot: Option<Slot>, nic: &Nic, substitute: bool) -> Member {
    Member { slot, name: nic.name.clone(), mac: nic.mac.clone(), speed_mbps: nic.speed_mbps, substitute }
}

/// NICs in conduit order: named ones by natural name order, then nameless
/// ones by MAC.
fn ordered(nics: &[Nic]) -> Vec<&Nic> {
    let mut ordered: Vec<&Nic> = nics.iter().collect();
    ordered.sort_by(|a, b| {
        match (&a.name, &b.name) {
            (Some(x), Some(y)) => natural_cmp(x, y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
        .then_with(|| a.mac.to_ascii_lowercase().cmp(&b.mac.to_ascii_lowercase()))
        .then_with(|| a.mac.cmp(&b.mac))
        .then_with(|| a.speed_mbps.cmp(&b.speed_mbps))
    });
    ordered
}

/// Compares names with runs of digits compared as numbers; ties by plain
/// string order, so the order is total.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    chunks(a).cmp(&chunks(b)).then_with(|| a.cmp(b))
}

/// A run of digits sorts before text, and by value (length without leading
/// zeros, then digits), so numbers of any size compare correctly.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Chunk<'a> {
    Number(usize, &'a str),
    Text(&'a str),
}

fn chunks(text: &str) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(first) = rest.chars().next() {
        let digits = first.is_ascii_digit();
        let end = rest.find(|c: char| c.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        out.push(if digits {
            let value = run.trim_start_matches('0');
            Chunk::Number(value.len(), value)
        } else {
            Chunk::Text(run)
        });
        rest = tail;
    }
    out
}

/// "1g: eth0, eth1; 10g: eth2; unknown speed: eth3", slowest first.
fn inventory(ordered: &[&Nic]) -> String {
    if ordered.is_empty() {
        return "no NICs in its inventory (is it inspected?)".to_string();
    }
    let mut by_speed: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for nic in ordered {
        // Unknown speed sorts last.
        let key = nic.speed_mbps.filter(|&s| s > 0).unwrap_or(u64::MAX);
        by_speed.entry(key).or_default().push(nic.label());
    }
    let groups: Vec<String> =
        by_speed.into_iter().map(|(speed, names)| format!("{}: {}", speed_label(speed), names.join(", "))).collect();
    groups.join("; ")
}

fn speed_label(mbps: u64) -> String {
    match mbps {
        u64::MAX => "unknown speed".to_string(),
        s if s % 1000 == 0 => format!("{}g", s / 1000),
        s => format!("{s}M"),
    }
}

fn needs(missing: &[Slot]) -> String {
    const ORDINALS: [&str; 9] = ["second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"];
    let needs: Vec<String> = missing
        .iter()
        .map(|slot| {
            let ordinal = (slot.index as usize).checked_sub(1).and_then(|i| ORDINALS.get(i));
            match (slot.index, ordinal) {
                (0, _) => format!("a {} Gbit/s NIC ({slot})", slot.gbps),
                (_, Some(ordinal)) => format!("a {ordinal} {} Gbit/s NIC ({slot})", slot.gbps),
                (index, None) => format!("at least {} NICs of {} Gbit/s ({slot})", u64::from(index) + 1, slot.gbps),
            }
        })
        .collect();
    needs.join(" and ")
}
