//! Redfish resources -> `HardwareDetails`. Pure: the client fetches the parts
//! ([`Parts`]), this maps them, and its tests need no BMC.

use super::model::{ComputerSystem, Drive, EthernetInterface, Manager, MemoryModule, Processor, SimpleStorage, Status};
use crate::api::node::{CpuDetails, DiskDetails, FirmwareDetails, HardwareDetails, NicDetails};

/// What a system's inventory is made of; anything the BMC did not offer is
/// left empty.
#[derive(Debug, Default)]
pub(super) struct Parts {
    pub system: ComputerSystem,
    pub processors: Vec<Processor>,
    pub memory: Vec<MemoryModule>,
    pub nics: Vec<EthernetInterface>,
    pub drives: Vec<Drive>,
    pub simple_storage: Vec<SimpleStorage>,
    pub manager: Option<Manager>,
}

pub(super) fn hardware(parts: &Parts) -> HardwareDetails {
    let system = &parts.system;
    HardwareDetails {
        vendor: system.manufacturer.clone(),
        model: system.model.clone(),
        serial_number: system.serial_number.clone(),
        uuid: system.uuid.clone(),
        cpu: cpu(parts),
        memory_mebibytes: memory_mebibytes(parts),
        nics: parts.nics.iter().filter_map(nic).collect(),
        storage: disks(parts),
        firmware: firmware(parts),
        board_serial_number: None,
    }
}

fn cpu(parts: &Parts) -> Option<CpuDetails> {
    let cpus: Vec<&Processor> = parts
        .processors
        .iter()
        .filter(|p| {
            p.processor_type.as_deref().is_none_or(|t| t.eq_ignore_ascii_case("CPU")) && !Status::is_absent(&p.status)
        })
        .collect();
    let summary = parts.system.processor_summary.as_ref();
    let sum = |f: fn(&Processor) -> Option<i64>| -> Option<i64> {
        let values: Vec<i64> = cpus.iter().filter_map(|p| f(p)).collect();
        (!values.is_empty()).then(|| saturating_sum(&values))
    };
    let details = CpuDetails {
        model: cpus.iter().find_map(|p| p.model.clone()).or_else(|| summary.and_then(|s| s.model.clone())),
        sockets: if cpus.is_empty() { summary.and_then(|s| s.count) } else { Some(cpus.len() as i64) }.and_then(to_i32),
        cores: sum(|p| p.total_cores).or_else(|| summary.and_then(|s| s.core_count)).and_then(to_i32),
        threads: sum(|p| p.total_threads).or_else(|| summary.and_then(|s| s.logical_processor_count)).and_then(to_i32),
        architecture: cpus.iter().find_map(|p| architecture(p)),
    };
    (details != CpuDetails::default()).then_some(details)
}

/// A BMC's numbers are not trusted to add up: their sum saturates.
fn saturating_sum(values: &[i64]) -> i64 {
    values.iter().fold(0, |sum, v| sum.saturating_add(*v))
}

fn to_i32(n: i64) -> Option<i32> {
    i32::try_from(n).ok().filter(|n| *n >= 0)
}

/// Linux's names for what Redfish calls the instruction set.
fn architecture(p: &Processor) -> Option<String> {
    if let Some(set) = p.instruction_set.as_deref() {
        let arch = match set {
            "x86-64" => "x86_64",
            "x86" => "i686",
            "ARM-A64" => "aarch64",
            "ARM-A32" => "arm",
            "IA-64" => "ia64",
            "MIPS64" => "mips64",
            "MIPS32" => "mips",
            "PowerISA" => "ppc64le",
            "RV64" => "riscv64",
            "RV32" => "riscv32",
            other => return Some(other.to_string()),
        };
        return Some(arch.to_string());
    }
    p.processor_architecture.clone()
}

fn memory_mebibytes(parts: &Parts) -> Option<i64> {
    let from_summary = parts
        .system
        .memory_summary
        .as_ref()
        .and_then(|m| m.total_system_memory_gib)
        .filter(|gib| *gib > 0.0)
        .map(|gib| (gib * 1024.0).round() as i64);
    from_summary.or_else(|| {
        let modules: Vec<i64> = parts
            .memory
            .iter()
            .filter(|m| !Status::is_absent(&m.status))
            .filter_map(|m| m.capacity_mib)
            .filter(|mib| *mib > 0)
            .collect();
        (!modules.is_empty()).then(|| saturating_sum(&modules))
    })
}

fn nic(interface: &EthernetInterface) -> Option<NicDetails> {
    let mac = interface
        .mac_address
        .as_deref()
        .and_then(normalize_mac)
        .or_else(|| interface.permanent_mac_address.as_deref().and_then(normalize_mac))?;
    Some(NicDetails {
        name: interface.id.clone().or_else(|| interface.name.clone()),
        mac,
        speed_mbps: interface.speed_mbps.filter(|s| *s > 0),
        pxe: None,
        ..NicDetails::default()
    })
}

/// `AA-BB-CC-DD-EE-FF` or `aa:bb:...` -> `aa:bb:cc:dd:ee:ff`; anything else,
/// and the all-zero placeholder some BMCs report, is no MAC.
pub(super) fn normalize_mac(mac: &str) -> Option<String> {
    let octets: Vec<&str> = mac.trim().split([':', '-']).collect();
    if octets.len() != 6 || !octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit())) {
        return None;
    }
    let mac = octets.join(":").to_ascii_lowercase();
    (mac != "00:00:00:00:00:00").then_some(mac)
}

fn disks(parts: &Parts) -> Vec<DiskDetails> {
    let drives: Vec<DiskDetails> = parts
        .drives
        .iter()
        .filter(|d| !Status::is_absent(&d.status))
        .map(|d| DiskDetails {
            name: d.name.clone().or_else(|| d.id.clone()),
            size_bytes: d.capacity_bytes.filter(|b| *b > 0),
            model: d.model.clone(),
            serial_number: d.serial_number.clone(),
            rotational: match d.media_type.as_deref() {
                Some(t) if t.eq_ignore_ascii_case("HDD") => Some(true),
                Some(t) if t.eq_ignore_ascii_case("SSD") => Some(false),
                _ => None,
            },
            ..DiskDetails::default()
        })
        .collect();
    if !drives.is_empty() {
        return drives;
    }
    // Older BMCs only have SimpleStorage.
    parts
        .simple_storage
        .iter()
        .flat_map(|s| s.devices.iter())
        .filter(|d| !Status::is_absent(&d.status))
        .map(|d| DiskDetails {
            name: d.name.clone(),
            size_bytes: d.capacity_bytes.filter(|b| *b > 0),
            model: d.model.clone(),
            ..DiskDetails::default()
        })
        .collect()
}

fn firmware(parts: &Parts) -> Option<FirmwareDetails> {
    let details = FirmwareDetails {
        bios: parts.system.bios_version.clone(),
        bmc: parts.manager.as_ref().and_then(|m| m.firmware_version.clone()),
    };
    (details != FirmwareDetails::default()).then_some(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn maps_a_full_server() {
        let parts = Parts {
            system: parse(json!({
                "Manufacturer": "Dell Inc.", "Model": "PowerEdge R650", "SerialNumber": "ABC1234",
                "UUID": "4c4c4544-0042-3010-8052-b2c04f4e3333", "BiosVersion": "1.8.2",
                "ProcessorSummary": {"Count": 2, "LogicalProcessorCount": 64, "Model": "summary model"},
                "MemorySummary": {"TotalSystemMemoryGiB": 256}
            })),
            processors: vec![
                parse(
                    json!({"ProcessorType": "CPU", "Model": "Intel(R) Xeon(R) Gold 6338", "TotalCores": 16, "TotalThreads": 32, "InstructionSet": "x86-64", "ProcessorArchitecture": "x86"}),
                ),
                parse(
                    json!({"ProcessorType": "CPU", "Model": "Intel(R) Xeon(R) Gold 6338", "TotalCores": 16, "TotalThreads": 32, "InstructionSet": "x86-64"}),
                ),
                parse(json!({"ProcessorType": "GPU", "Model": "A100", "TotalCores": 6912})),
                parse(json!({"ProcessorType": "CPU", "Status": {"State": "Absent"}})),
            ],
            nics: vec![
                parse(json!({"Id": "NIC.Integrated.1-1-1", "MACAddress": "B0-7B-25-DE-AD-01", "SpeedMbps": 25000})),
                parse(
                    json!({"Id": "NIC.Integrated.1-2-1", "MACAddress": "", "PermanentMACAddress": "b0:7b:25:de:ad:02", "SpeedMbps": 0}),
                ),
                parse(json!({"Id": "unplugged", "MACAddress": "00:00:00:00:00:00"})),
            ],
            drives: vec![
                parse(
                    json!({"Name": "Disk 0", "CapacityBytes": 960197124096_i64, "Model": "MZ7LH960", "SerialNumber": "S1", "MediaType": "SSD"}),
                ),
                parse(json!({"Id": "Disk.Bay.1", "CapacityBytes": "4000787030016", "MediaType": "HDD"})),
                parse(json!({"Name": "empty bay", "Status": {"State": "Absent"}})),
            ],
            manager: Some(parse(json!({"FirmwareVersion": "6.10.30.00"}))),
            ..Default::default()
        };
        let hw = hardware(&parts);
        assert_eq!(hw.vendor.as_deref(), Some("Dell Inc."));
        assert_eq!(hw.model.as_deref(), Some("PowerEdge R650"));
        assert_eq!(hw.serial_number.as_deref(), Some("ABC1234"));
        assert_eq!(hw.uuid.as_deref(), Some("4c4c4544-0042-3010-8052-b2c04f4e3333"));
        assert_eq!(
            hw.cpu,
            Some(CpuDetails {
                model: Some("Intel(R) Xeon(R) Gold 6338".into()),
                sockets: Some(2),
                cores: Some(32),
                threads: Some(64),
                architecture: Some("x86_64".into()),
            })
        );
        assert_eq!(hw.memory_mebibytes, Some(256 * 1024));
        assert_eq!(
            hw.nics,
            vec![
                NicDetails {
                    name: Some("NIC.Integrated.1-1-1".into()),
                    mac: "b0:7b:25:de:ad:01".into(),
                    speed_mbps: Some(25000),
                    ..Default::default()
                },
                NicDetails {
                    name: Some("NIC.Integrated.1-2-1".into()),
                    mac: "b0:7b:25:de:ad:02".into(),
                    speed_mbps: None,
                    ..Default::default()
                },
            ]
        );
        assert_eq!(hw.storage.len(), 2);
        assert_eq!(hw.storage[0].rotational, Some(false));
        assert_eq!(hw.storage[1].name.as_deref(), Some("Disk.Bay.1"));
        assert_eq!(hw.storage[1].size_bytes, Some(4000787030016));
        assert_eq!(hw.storage[1].rotational, Some(true));
        assert_eq!(hw.firmware, Some(FirmwareDetails { bios: Some("1.8.2".into()), bmc: Some("6.10.30.00".into()) }));
    }

    #[test]
    fn falls_back_to_summaries_and_simple_storage() {
        let parts = Parts {
            system: parse(json!({
                "ProcessorSummary": {"Count": 1, "CoreCount": 8, "Model": "EPYC"},
                "MemorySummary": {"TotalSystemMemoryGiB": null}
            })),
            memory: vec![
                parse(json!({"CapacityMiB": 16384})),
                parse(json!({"CapacityMiB": 16384})),
                parse(json!({"Status": {"State": "Absent"}})),
            ],
            simple_storage: vec![parse(json!({"Devices": [
                {"Name": "sda", "Model": "QEMU HARDDISK", "CapacityBytes": 10737418240_i64},
                {"Name": "slot 2", "Status": {"State": "Absent"}}
            ]}))],
            ..Default::default()
        };
        let hw = hardware(&parts);
        let cpu = hw.cpu.unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads, cpu.model.as_deref()), (Some(1), Some(8), None, Some("EPYC")));
        assert_eq!(hw.memory_mebibytes, Some(32768));
        assert_eq!(hw.storage.len(), 1);
        assert_eq!(hw.storage[0].size_bytes, Some(10737418240));
        assert_eq!(hw.firmware, None);
    }

    #[test]
    fn an_empty_system_maps_to_empty_details() {
        assert_eq!(hardware(&Parts::default()), HardwareDetails::default());
    }

    #[test]
    fn macs() {
        assert_eq!(normalize_mac("52:54:00:AB:cd:EF").as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(normalize_mac("52-54-00-ab-cd-ef").as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(normalize_mac("5254.00ab.cdef"), None);
        assert_eq!(normalize_mac("00:00:00:00:00:00"), None);
        assert_eq!(normalize_mac(""), None);
    }
}
