//! The IPMI commands girder sends, and what their answers mean. Pure: the
//! request bytes and the parsing of response data, with no I/O.

use super::packet::Reader;
use crate::api::node::BootMode;
use crate::bmc::{BootDevice, PowerAction, PowerState};

pub(super) const NETFN_CHASSIS: u8 = 0x00;
pub(super) const NETFN_APP: u8 = 0x06;
pub(super) const NETFN_STORAGE: u8 = 0x0a;

pub(super) const GET_CHASSIS_STATUS: u8 = 0x01;
pub(super) const CHASSIS_CONTROL: u8 = 0x02;
pub(super) const SET_SYSTEM_BOOT_OPTIONS: u8 = 0x08;
pub(super) const GET_SYSTEM_BOOT_OPTIONS: u8 = 0x09;
pub(super) const GET_DEVICE_ID: u8 = 0x01;
pub(super) const GET_SYSTEM_GUID: u8 = 0x37;
pub(super) const GET_CHANNEL_AUTH_CAPABILITIES: u8 = 0x38;
pub(super) const SET_SESSION_PRIVILEGE_LEVEL: u8 = 0x3b;
pub(super) const CLOSE_SESSION: u8 = 0x3c;
pub(super) const GET_FRU_INVENTORY_AREA_INFO: u8 = 0x10;
pub(super) const READ_FRU_DATA: u8 = 0x11;

/// Boot option parameters (§28.13).
pub(super) const BOOT_PARAM_SET_IN_PROGRESS: u8 = 0x00;
pub(super) const BOOT_PARAM_INFO_ACK: u8 = 0x04;
pub(super) const BOOT_PARAM_FLAGS: u8 = 0x05;

/// Session privilege levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Privilege {
    Operator = 0x03,
    Administrator = 0x04,
}

/// The power state in a Get Chassis Status answer (bit 0 of byte 1).
pub(super) fn chassis_power_state(data: &[u8]) -> Result<PowerState, String> {
    let mut r = Reader::new(data, "Get Chassis Status answer");
    let current = r.u8()?;
    Ok(if current & 0x01 != 0 { PowerState::On } else { PowerState::Off })
}

/// The Chassis Control command byte for an action (§28.3).
pub(super) fn chassis_control_code(action: PowerAction) -> u8 {
    match action {
        PowerAction::ForceOff => 0x00,
        PowerAction::On => 0x01,
        PowerAction::PowerCycle => 0x02,
        PowerAction::ForceRestart => 0x03,
        PowerAction::GracefulShutdown => 0x05,
    }
}

/// The boot device selector of the boot flags (§28.13, parameter 5, data 2).
pub(super) fn boot_selector(device: BootDevice) -> Option<u8> {
    match device {
        BootDevice::Pxe => Some(0x1),
        BootDevice::Disk => Some(0x2),
        BootDevice::Cd => Some(0x5),
        // IPMI has no selector for UEFI HTTP boot.
        BootDevice::Http => None,
    }
}

/// The five data bytes of the boot flags parameter: valid, once or
/// persistent, Legacy or EFI, and the device. `None` for a device IPMI cannot
/// name.
pub fn boot_flags(device: BootDevice, mode: BootMode, persistent: bool) -> Option<[u8; 5]> {
    let selector = boot_selector(device)?;
    let mut flags = 0x80; // boot flags valid
    if persistent {
        flags |= 0x40;
    }
    if mode == BootMode::UEFI {
        flags |= 0x20;
    }
    Some([flags, selector << 2, 0, 0, 0])
}

/// Boot flags as a BMC reports them (Get System Boot Options, parameter 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootFlags {
    /// The flags are set and will be used at the next boot.
    pub valid: bool,
    /// They apply to every boot, not just the next.
    pub persistent: bool,
    /// The boot is to be in UEFI mode (else Legacy/BIOS).
    pub uefi: bool,
    /// The device, when it is one girder knows.
    pub device: Option<BootDevice>,
    /// The raw boot device selector (0: no override).
    pub selector: u8,
}

pub(super) fn parse_boot_flags(data: &[u8]) -> Result<BootFlags, String> {
    let mut r = Reader::new(data, "Get System Boot Options answer");
    let _version = r.u8()?;
    let parameter = r.u8()? & 0x7f;
    if parameter != BOOT_PARAM_FLAGS {
        return Err(format!("answered parameter {parameter}, not the boot flags (5)"));
    }
    let flags = r.u8()?;
    let selector = (r.u8()? >> 2) & 0x0f;
    let device = match selector {
        0x1 => Some(BootDevice::Pxe),
        0x2 | 0x3 => Some(BootDevice::Disk),
        0x5 => Some(BootDevice::Cd),
        _ => None,
    };
    Ok(BootFlags { valid: flags & 0x80 != 0, persistent: flags & 0x40 != 0, uefi: flags & 0x20 != 0, device, selector })
}

/// What Get Device ID says about the BMC (§20.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceId {
    pub device_id: u8,
    pub device_revision: u8,
    /// Firmware revision as `ipmitool mc info` prints it, e.g. `1.23`.
    pub firmware: String,
    /// IPMI version, e.g. `2.0`.
    pub ipmi_version: String,
    /// IANA enterprise number of the manufacturer.
    pub manufacturer_id: u32,
    pub product_id: u16,
}

pub(super) fn parse_device_id(data: &[u8]) -> Result<DeviceId, String> {
    let mut r = Reader::new(data, "Get Device ID answer");
    let device_id = r.u8()?;
    let device_revision = r.u8()? & 0x0f;
    let major = r.u8()? & 0x7f;
    let minor = r.u8()?;
    let version = r.u8()?;
    let _support = r.u8()?;
    let m = r.take(3)?;
    let manufacturer_id = u32::from_le_bytes([m[0], m[1], m[2] & 0x0f, 0]);
    let product_id = r.u16_le()?;
    Ok(DeviceId {
        device_id,
        device_revision,
        firmware: format!("{major}.{minor:02x}"),
        ipmi_version: format!("{}.{}", version & 0x0f, version >> 4),
        manufacturer_id,
        product_id,
    })
}

/// A few IANA enterprise numbers of server makers, for a vendor name when the
/// BMC has no FRU data.
pub(super) fn manufacturer_name(id: u32) -> Option<&'static str> {
    Some(match id {
        2 => "IBM",
        11 => "Hewlett Packard Enterprise",
        343 => "Intel Corporation",
        674 => "Dell Inc.",
        5771 => "Cisco Systems",
        7244 => "Quanta",
        10876 => "Supermicro",
        19046 => "Lenovo",
        _ => return None,
    })
}

/// The system GUID as a UUID string, decoded as `ipmitool mc guid` does by
/// default: BMCs disagree on the byte order (the IPMI specification reverses
/// all 16 bytes, SMBIOS only the first three fields, some send RFC 4122
/// order), so the encoding whose version field is valid wins, a version 1
/// UUID with a plausible timestamp first, then SMBIOS, IPMI, RFC 4122. `None`
/// when no encoding gives a valid UUID (or the BMC sent zeros).
pub(super) fn decode_guid(data: &[u8]) -> Result<Option<String>, String> {
    let mut r = Reader::new(data, "Get System GUID answer");
    let raw = r.array::<16>()?;
    if raw.iter().all(|b| *b == 0) || raw.iter().all(|b| *b == 0xff) {
        return Ok(None);
    }
    let smbios = {
        let mut u = raw;
        u[0..4].reverse();
        u[4..6].reverse();
        u[6..8].reverse();
        u
    };
    let ipmi = {
        let mut u = raw;
        u.reverse();
        u
    };
    let candidates = [smbios, ipmi, raw];
    let version = |u: &[u8; 16]| u[6] >> 4;
    let valid_version = |u: &[u8; 16]| (1..=5).contains(&version(u));
    let plausible_time = |u: &[u8; 16]| {
        // 100 ns ticks since 1582-10-15; 12219292800 s from there to 1970.
        let ticks = (u64::from(u[6] & 0x0f) << 56)
            | (u64::from(u[7]) << 48)
            | (u64::from(u[4]) << 40)
            | (u64::from(u[5]) << 32)
            | u64::from(u32::from_be_bytes([u[0], u[1], u[2], u[3]]));
        let unix = (ticks / 10_000_000) as i64 - 12_219_292_800;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        unix >= 0 && unix <= now + 366 * 86_400
    };
    let chosen = candidates
        .iter()
        .find(|u| version(u) == 1 && plausible_time(u))
        .or_else(|| candidates.iter().find(|u| valid_version(u)));
    Ok(chosen.map(format_uuid))
}

fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

// ---------------------------------------------------------------------------
// FRU inventory (Platform Management FRU Information Storage Definition 1.0)

/// What the FRU says about the system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FruInfo {
    pub chassis_serial: Option<String>,
    pub board_manufacturer: Option<String>,
    pub board_product: Option<String>,
    pub board_serial: Option<String>,
    pub product_manufacturer: Option<String>,
    pub product_name: Option<String>,
    pub product_part_number: Option<String>,
    pub product_serial: Option<String>,
}

/// Where the areas are, from the 8-byte common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FruHeader {
    pub chassis: Option<usize>,
    pub board: Option<usize>,
    pub product: Option<usize>,
}

pub(super) fn parse_fru_header(data: &[u8]) -> Result<FruHeader, String> {
    let header = Reader::new(data, "FRU common header").take(8)?;
    if header[0] & 0x0f != 0x01 {
        return Err(format!("FRU format version {} (want 1)", header[0] & 0x0f));
    }
    if header.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err("FRU common header checksum mismatch".into());
    }
    let offset = |i: usize| (header[i] != 0).then(|| usize::from(header[i]) * 8);
    Ok(FruHeader { chassis: offset(2), board: offset(3), product: offset(4) })
}

/// The length in bytes of the area at `offset`, from its second byte.
pub(super) fn fru_area_len(data: &[u8], offset: usize) -> Option<usize> {
    data.get(offset + 1).map(|len| usize::from(*len) * 8)
}

/// Reads the fields of the chassis, board and product areas. Areas that are
/// missing, truncated or fail their checksum are skipped: the FRU is a
/// best-effort source of names.
pub(super) fn parse_fru(data: &[u8]) -> Result<FruInfo, String> {
    let header = parse_fru_header(data)?;
    let mut info = FruInfo::default();
    if let Some(fields) = header.chassis.and_then(|o| area_fields(data, o, 3)) {
        // Part number, serial number.
        info.chassis_serial = fields.into_iter().nth(1).flatten();
    }
    if let Some(fields) = header.board.and_then(|o| area_fields(data, o, 6)) {
        // Manufacturer, product name, serial number, part number.
        let mut f = fields.into_iter();
        info.board_manufacturer = f.next().flatten();
        info.board_product = f.next().flatten();
        info.board_serial = f.next().flatten();
    }
    if let Some(fields) = header.product.and_then(|o| area_fields(data, o, 3)) {
        // Manufacturer, name, part/model number, version, serial number.
        let mut f = fields.into_iter();
        info.product_manufacturer = f.next().flatten();
        info.product_name = f.next().flatten();
        info.product_part_number = f.next().flatten();
        let _version = f.next();
        info.product_serial = f.next().flatten();
    }
    Ok(info)
}

/// The type/length fields of the area at `offset`, whose fixed part before
/// the first field is `fixed` bytes long; `None` if the area is unusable.
fn area_fields(data: &[u8], offset: usize, fixed: usize) -> Option<Vec<Option<String>>> {
    let len = fru_area_len(data, offset)?;
    let area = data.get(offset..offset.checked_add(len)?)?;
    if len < fixed || area.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return None;
    }
    let mut r = Reader::new(&area[fixed..], "FRU area");
    let mut fields = Vec::new();
    while let Ok(type_length) = r.u8() {
        if type_length == 0xc1 || fields.len() >= 16 {
            break;
        }
        let Ok(bytes) = r.take(usize::from(type_length & 0x3f)) else { break };
        fields.push(decode_fru_field(type_length >> 6, bytes));
    }
    Some(fields)
}

/// A FRU field's text: BCD plus, 6-bit packed ASCII or 8-bit ASCII/Latin-1.
/// Binary fields and empty ones are `None`.
pub(super) fn decode_fru_field(kind: u8, bytes: &[u8]) -> Option<String> {
    let text: String = match kind {
        0b01 => bytes
            .iter()
            .flat_map(|b| [b >> 4, b & 0x0f])
            .filter_map(|n| match n {
                0..=9 => Some(char::from(b'0' + n)),
                0xa => Some(' '),
                0xb => Some('-'),
                0xc => Some('.'),
                _ => None,
            })
            .collect(),
        0b10 => bytes
            .chunks(3)
            .flat_map(|c| {
                let b = [c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0)];
                let chars =
                    [b[0] & 0x3f, (b[0] >> 6) | ((b[1] & 0x0f) << 2), (b[1] >> 4) | ((b[2] & 0x03) << 4), b[2] >> 2];
                // Three bytes hold four characters; a short tail holds fewer.
                let n = match c.len() {
                    1 => 1,
                    2 => 2,
                    _ => 4,
                };
                chars.into_iter().take(n).map(|v| char::from(0x20 + v))
            })
            .collect(),
        0b11 => bytes.iter().map(|b| char::from(*b)).collect(),
        _ => return None,
    };
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_flags_match_what_ipmitool_sends() {
        // `ipmitool chassis bootdev pxe options=efiboot,persistent` sends
        // 05 e0 04 00 00 00 (seen with -vvvv).
        assert_eq!(boot_flags(BootDevice::Pxe, BootMode::UEFI, true), Some([0xe0, 0x04, 0, 0, 0]));
        assert_eq!(boot_flags(BootDevice::Pxe, BootMode::Legacy, false), Some([0x80, 0x04, 0, 0, 0]));
        assert_eq!(boot_flags(BootDevice::Disk, BootMode::UEFI, false), Some([0xa0, 0x08, 0, 0, 0]));
        assert_eq!(boot_flags(BootDevice::Disk, BootMode::Legacy, true), Some([0xc0, 0x08, 0, 0, 0]));
        assert_eq!(boot_flags(BootDevice::Cd, BootMode::Legacy, false), Some([0x80, 0x14, 0, 0, 0]));
        assert_eq!(boot_flags(BootDevice::Http, BootMode::UEFI, false), None);
    }

    #[test]
    fn boot_flags_parse_back() {
        let flags = parse_boot_flags(&[0x01, 0x05, 0xe0, 0x04, 0, 0, 0]).unwrap();
        assert_eq!(
            flags,
            BootFlags { valid: true, persistent: true, uefi: true, device: Some(BootDevice::Pxe), selector: 1 }
        );
        let flags = parse_boot_flags(&[0x01, 0x05, 0x00, 0x08, 0, 0, 0]).unwrap();
        assert_eq!(flags.device, Some(BootDevice::Disk));
        assert!(!flags.valid);
        for len in 0..4 {
            assert!(parse_boot_flags(&[0x01, 0x05, 0xe0, 0x04][..len]).is_err());
        }
        assert!(parse_boot_flags(&[0x01, 0x04, 0x00, 0x00]).is_err());
    }

    #[test]
    fn chassis_status_and_control() {
        assert_eq!(chassis_power_state(&[0x01, 0x00, 0x40]).unwrap(), PowerState::On);
        assert_eq!(chassis_power_state(&[0x60, 0x10, 0x40, 0x00]).unwrap(), PowerState::Off);
        assert!(chassis_power_state(&[]).is_err());
        assert_eq!(chassis_control_code(PowerAction::GracefulShutdown), 0x05);
        assert_eq!(chassis_control_code(PowerAction::ForceRestart), 0x03);
    }

    #[test]
    fn device_id() {
        // What ipmi_sim answers for `mc_add 0x20 0 no-device-sdrs 0x01 1 0x23 0x9f 0x00b980 0x1234`.
        let data = [0x00, 0x01, 0x01, 0x23, 0x02, 0x9f, 0x80, 0xb9, 0x00, 0x34, 0x12];
        let id = parse_device_id(&data).unwrap();
        assert_eq!(id.firmware, "1.23");
        assert_eq!(id.ipmi_version, "2.0");
        assert_eq!(id.manufacturer_id, 0xb980);
        assert_eq!(id.product_id, 0x1234);
        for len in 0..data.len() {
            assert!(parse_device_id(&data[..len]).is_err(), "len {len}");
        }
        assert_eq!(manufacturer_name(674), Some("Dell Inc."));
        assert_eq!(manufacturer_name(0xb980), None);
    }

    #[test]
    fn guids_decode_as_ipmitool_does() {
        // ipmi_sim with `guid a123456789abcdefa123456789abcdef`: ipmitool
        // `mc guid` says efcdab89-6745-23a1-efcd-ab89674523a1 (IPMI encoding).
        let raw = [0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(decode_guid(&raw).unwrap().as_deref(), Some("efcdab89-6745-23a1-efcd-ab89674523a1"));
        // A Dell-style GUID sent in SMBIOS order: 4c4c4544-0032-5210-8030-b4c04f4e4e32.
        let smbios = [0x44, 0x45, 0x4c, 0x4c, 0x32, 0x00, 0x10, 0x52, 0x80, 0x30, 0xb4, 0xc0, 0x4f, 0x4e, 0x4e, 0x32];
        assert_eq!(decode_guid(&smbios).unwrap().as_deref(), Some("4c4c4544-0032-5210-8030-b4c04f4e4e32"));
        assert_eq!(decode_guid(&[0; 16]).unwrap(), None);
        assert!(decode_guid(&raw[..15]).is_err());
    }

    /// A FRU image with chassis, board and product areas, as the
    /// specification lays it out.
    pub(crate) fn sample_fru() -> Vec<u8> {
        fn area(fixed: &[u8], fields: &[&[u8]]) -> Vec<u8> {
            let mut a = fixed.to_vec();
            for f in fields {
                a.push(0xc0 | f.len() as u8);
                a.extend_from_slice(f);
            }
            a.push(0xc1);
            while !(a.len() + 1).is_multiple_of(8) {
                a.push(0);
            }
            a[1] = ((a.len() + 1) / 8) as u8;
            let sum = a.iter().fold(0u8, |s, b| s.wrapping_add(*b));
            a.push(sum.wrapping_neg());
            a
        }
        let chassis = area(&[0x01, 0, 0x17], &[b"CH-PART", b"CH-SERIAL"]);
        let board = area(&[0x01, 0, 0x19, 0, 0, 0], &[b"Board Maker", b"Board X", b"BRD-SN", b"BRD-PN", b""]);
        let product = area(&[0x01, 0, 0x19], &[b"Girder Labs", b"Sim Server 1", b"GS-1", b"1.0", b"SIM-0001", b""]);
        let chassis_at = 1;
        let board_at = chassis_at + chassis.len() / 8;
        let product_at = board_at + board.len() / 8;
        let mut header = vec![0x01, 0x00, chassis_at as u8, board_at as u8, product_at as u8, 0x00, 0x00];
        let sum = header.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        header.push(sum.wrapping_neg());
        [header, chassis, board, product].concat()
    }

    #[test]
    fn fru_areas_are_read() {
        let fru = sample_fru();
        let info = parse_fru(&fru).unwrap();
        assert_eq!(info.product_manufacturer.as_deref(), Some("Girder Labs"));
        assert_eq!(info.product_name.as_deref(), Some("Sim Server 1"));
        assert_eq!(info.product_part_number.as_deref(), Some("GS-1"));
        assert_eq!(info.product_serial.as_deref(), Some("SIM-0001"));
        assert_eq!(info.board_manufacturer.as_deref(), Some("Board Maker"));
        assert_eq!(info.board_serial.as_deref(), Some("BRD-SN"));
        assert_eq!(info.chassis_serial.as_deref(), Some("CH-SERIAL"));
        // Truncated FRU data: the header fails, or areas are skipped; no panic.
        for len in 0..fru.len() {
            let _ = parse_fru(&fru[..len]);
        }
        assert!(parse_fru(&fru[..7]).is_err());
        let mut bad = fru.clone();
        bad[7] ^= 1;
        assert!(parse_fru(&bad).is_err(), "header checksum");
    }

    #[test]
    fn fru_field_encodings() {
        // 6-bit packed ASCII "IPMI": I=0x29 P=0x30 M=0x2d I=0x29.
        assert_eq!(decode_fru_field(0b10, &[0x29, 0xdc, 0xa6]).as_deref(), Some("IPMI"));
        assert_eq!(decode_fru_field(0b01, &[0x12, 0xb3, 0xc4]).as_deref(), Some("12-3.4"));
        assert_eq!(decode_fru_field(0b11, b"  Acme \0").as_deref(), Some("Acme"));
        assert_eq!(decode_fru_field(0b00, &[1, 2]), None);
        assert_eq!(decode_fru_field(0b11, b""), None);
    }
}
