use crate::ipam::conduit::{Conduit, ConduitError, Nic, Policy, Slot, select, select_interface};

fn nic(name: &str, mac: &str, speed: Option<u64>) -> Nic {
    Nic { name: (!name.is_empty()).then(|| name.to_string()), mac: mac.to_string(), speed_mbps: speed }
}

/// Two onboard 1G ports and one 10G port, listed out of order.
fn small_node() -> Vec<Nic> {
    vec![
        nic("eth2", "aa:00:00:00:00:02", Some(10_000)),
        nic("eth1", "aa:00:00:00:00:01", Some(1000)),
        nic("eth0", "aa:00:00:00:00:00", Some(1000)),
    ]
}

fn conduit(text: &str) -> Conduit {
    text.parse().unwrap()
}

fn strict(text: &str, nics: &[Nic]) -> Result<Vec<String>, ConduitError> {
    select("storage", "r1n3", &conduit(text), nics, Policy::Strict).map(|s| s.interfaces())
}

#[test]
fn conduits_parse_into_slots() {
    let bond = conduit("10g0,10g1");
    assert_eq!(bond.slots(), [Slot { gbps: 10, index: 0 }, Slot { gbps: 10, index: 1 }]);
    assert_eq!(bond.to_string(), "10g0,10g1");
    assert_eq!(conduit("100g3").slots(), [Slot { gbps: 100, index: 3 }]);
}

#[test]
fn malformed_conduits_say_what_is_wrong() {
    let reason = |text: &str| match text.parse::<Conduit>() {
        Err(ConduitError::Invalid { reason, .. }) => reason,
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(reason(""), "it is empty");
    assert!(reason("10x0").contains("no g"));
    assert!(reason("g0").contains("speed"));
    assert!(reason("0g0").contains("above 0"));
    assert!(reason("+1g0").contains("speed"));
    assert!(reason("10g").contains("index"));
    assert!(reason("10g0,").contains("no g"));
    assert_eq!(reason("10g0,10g0"), "10g0 is listed twice");
    let error = "1g".parse::<Conduit>().unwrap_err();
    assert_eq!(error.reason(), "InvalidConduit");
    assert!(error.to_string().ends_with("e.g. 1g0, 10g1 or a bond 10g0,10g1"));
}

#[test]
fn a_slot_picks_the_nth_nic_of_its_speed_in_name_order() {
    let nics = small_node();
    assert_eq!(strict("1g0", &nics).unwrap(), ["eth0"]);
    assert_eq!(strict("1g1", &nics).unwrap(), ["eth1"]);
    assert_eq!(strict("10g0", &nics).unwrap(), ["eth2"]);
}

#[test]
fn names_compare_numbers_as_numbers() {
    let nics = vec![
        nic("eth10", "aa:00:00:00:00:10", Some(1000)),
        nic("eth2", "aa:00:00:00:00:02", Some(1000)),
        nic("enp134s0f0", "bb:00:00:00:00:02", Some(25_000)),
        nic("enp59s0f0", "bb:00:00:00:00:01", Some(25_000)),
    ];
    assert_eq!(strict("1g0", &nics).unwrap(), ["eth2"]);
    assert_eq!(strict("25g0,25g1", &nics).unwrap(), ["enp59s0f0", "enp134s0f0"]);
}

#[test]
fn a_bond_lists_its_members_with_their_macs() {
    let nics = vec![
        nic("ens1f1", "cc:00:00:00:00:02", Some(10_000)),
        nic("ens1f0", "cc:00:00:00:00:01", Some(10_000)),
        nic("eno1", "cc:00:00:00:00:00", Some(1000)),
    ];
    let selection = select("storage", "r1n3", &conduit("10g0,10g1"), &nics, Policy::Strict).unwrap();
    assert!(selection.is_bond());
    assert_eq!(selection.interfaces(), ["ens1f0", "ens1f1"]);
    assert_eq!(selection.macs(), ["cc:00:00:00:00:01", "cc:00:00:00:00:02"]);
    assert!(!selection.has_substitutes());
    assert_eq!(selection.members[1].slot, Some(Slot { gbps: 10, index: 1 }));
    assert_eq!(selection.members[1].speed_mbps, Some(10_000));
}

#[test]
fn a_missing_nic_is_named_with_what_the_node_has() {
    let error = strict("10g1", &small_node()).unwrap_err();
    assert_eq!(error.reason(), "ConduitNicMissing");
    assert_eq!(
        error.to_string(),
        "node r1n3 cannot carry network storage: conduit 10g1 needs a second 10 Gbit/s NIC (10g1); the node has 1g: eth0, eth1; 10g: eth2"
    );
}

#[test]
fn every_missing_member_of_a_bond_is_named() {
    let error = strict("25g0,25g1", &small_node()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "node r1n3 cannot carry network storage: conduit 25g0,25g1 needs a 25 Gbit/s NIC (25g0) and a second 25 Gbit/s NIC (25g1); the node has 1g: eth0, eth1; 10g: eth2"
    );
    let ConduitError::Missing { missing, .. } = error else { panic!() };
    assert_eq!(missing.len(), 2);
}

#[test]
fn a_node_without_inventory_says_so() {
    let error = strict("1g0", &[]).unwrap_err();
    assert!(error.to_string().ends_with("the node has no NICs in its inventory (is it inspected?)"), "{error}");
}

#[test]
fn speed_classes_are_exact() {
    // A 25G NIC linked at 10G carries 10G; a NIC with no link is in no class.
    let nics = vec![
        nic("ens1f0", "dd:00:00:00:00:01", Some(10_000)),
        nic("ens1f1", "dd:00:00:00:00:02", None),
        nic("eno1", "dd:00:00:00:00:00", Some(100)),
        nic("eno2", "dd:00:00:00:00:03", Some(0)),
    ];
    assert_eq!(strict("10g0", &nics).unwrap(), ["ens1f0"]);
    let error = strict("25g0", &nics).unwrap_err();
    assert!(
        error.to_string().ends_with("the node has 100M: eno1; 10g: ens1f0; unknown speed: eno2, ens1f1"),
        "{error}"
    );
}

#[test]
fn nics_without_a_name_come_last_by_mac_and_are_shown_by_mac() {
    let nics = vec![
        nic("", "ee:00:00:00:00:09", Some(1000)),
        nic("", "EE:00:00:00:00:01", Some(1000)),
        nic("eth0", "ee:00:00:00:00:05", Some(1000)),
    ];
    assert_eq!(strict("1g0,1g1,1g2", &nics).unwrap(), ["eth0", "EE:00:00:00:00:01", "ee:00:00:00:00:09"]);
}

#[test]
fn the_inventory_order_does_not_matter() {
    let mut nics = small_node();
    let forward = strict("1g0,10g0", &nics).unwrap();
    nics.reverse();
    assert_eq!(strict("1g0,10g0", &nics).unwrap(), forward);
}

#[test]
fn fallback_substitutes_the_fastest_spare_nic_and_says_so() {
    let nics = small_node();
    let selection = select("storage", "r1n3", &conduit("25g0"), &nics, Policy::FallbackToFastest).unwrap();
    assert_eq!(selection.interfaces(), ["eth2"]);
    assert!(selection.has_substitutes());

    // eth2 is the exact 10g0, so 25g0 gets the fastest of what is left.
    let bond = select("storage", "r1n3", &conduit("25g0,10g0"), &nics, Policy::FallbackToFastest).unwrap();
    assert_eq!(bond.interfaces(), ["eth0", "eth2"]);
    assert_eq!(bond.members.iter().map(|m| m.substitute).collect::<Vec<_>>(), [true, false]);
}

#[test]
fn fallback_treats_unknown_speeds_as_slowest_and_still_fails_when_nothing_is_left() {
    let virtual_nics = vec![nic("enp2s0", "52:54:00:00:00:02", None), nic("enp1s0", "52:54:00:00:00:01", None)];
    let fallback = |text: &str| select("admin", "vm-1", &conduit(text), &virtual_nics, Policy::FallbackToFastest);
    assert_eq!(fallback("1g0").unwrap().interfaces(), ["enp1s0"]);
    assert_eq!(fallback("10g0,10g1").unwrap().interfaces(), ["enp1s0", "enp2s0"]);
    let error = fallback("10g0,10g1,10g2").unwrap_err();
    assert!(error.to_string().contains("needs a third 10 Gbit/s NIC (10g2)"), "{error}");
}

#[test]
fn a_named_interface_overrides_the_conduit() {
    let nics = small_node();
    let selection = select_interface("storage", "r1n3", "eth1", &nics).unwrap();
    assert_eq!(selection.macs(), ["aa:00:00:00:00:01"]);
    assert_eq!(selection.members[0].slot, None);
    let error = select_interface("storage", "r1n3", "eth9", &nics).unwrap_err();
    assert_eq!(error.reason(), "UnknownInterface");
    assert_eq!(
        error.to_string(),
        "node r1n3 cannot carry network storage: interface eth9 is not in its inventory; the node has 1g: eth0, eth1; 10g: eth2"
    );
}

#[test]
fn missing_slots_read_as_english() {
    let needs = |index: u32| {
        let slot = format!("1g{index}");
        strict(&slot, &[]).unwrap_err().to_string()
    };
    assert!(needs(0).contains("needs a 1 Gbit/s NIC (1g0)"));
    assert!(needs(2).contains("needs a third 1 Gbit/s NIC (1g2)"));
    assert!(needs(9).contains("needs a tenth 1 Gbit/s NIC (1g9)"));
    assert!(needs(10).contains("needs at least 11 NICs of 1 Gbit/s (1g10)"));
    assert!(needs(u32::MAX).contains("needs at least 4294967296 NICs"));
}
