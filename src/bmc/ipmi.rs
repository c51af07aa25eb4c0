//! The IPMI driver: IPMI 2.0 RMCP+ ("lanplus") over UDP.
//!
//! - Sessions: Get Channel Authentication Capabilities, Open Session, RAKP
//!   1-4 with cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128), or
//!   17 (the SHA-256 variants) where a BMC refuses 3; then Set Session
//!   Privilege Level (Administrator, else Operator). One session per BMC,
//!   reused, replaced when the BMC dropped it or after a long idle, closed by
//!   [`IpmiClient::close`] (and, without waiting, on drop).
//! - Every request: a timeout ([`BmcOptions::timeout`]), retransmission at
//!   growing intervals, one request at a time per BMC. A hard reset and a
//!   power cycle are the exception: sent once, never again (a BMC without
//!   duplicate detection would run every copy).
//! - Power: Get Chassis Status and Chassis Control (power up, power down,
//!   power cycle, hard reset, soft shutdown). Boot device: Set System Boot
//!   Options, boot flags (PXE, disk or CD; UEFI or Legacy; next boot or
//!   persistent). Identity: Get Device ID, Get System GUID and the FRU.
//! - Inventory: IPMI has none to speak of out of band; [`Bmc::inventory`]
//!   gives the identity and the BMC firmware version. The controller reports
//!   `Inspected=False` (`InBandInspectionRequired`) for IPMI-only nodes.
//!
//! ## Why not the `ipmi-rs` crate
//! `ipmi-rs` 0.6 does RMCP+ with cipher suite 3, but it fits a controller
//! badly: its socket is a blocking `std::net::UdpSocket` (every call would
//! hold a blocking thread, and a timeout is its only cancellation); it sends
//! each request once, with no retransmission and no re-establishment of a
//! dropped session; it has no SHA-256 suites; it has no chassis commands
//! (status, control, boot options) nor FRU reading, which is most of what
//! girder needs; and it brings a second, older generation of the RustCrypto
//! crates (hmac 0.12, sha1 0.10, rand 0.8, getrandom 0.4) plus nix and md5
//! next to those girder already builds. What it would give (the packet
//! formats and RAKP) is the small part, so the driver is written here, on
//! `hmac`, `sha1`, `sha2` and `aes`.
//!
//! ## Limits
//! - Cipher suite 17 is checked against the RFC 4231 HMAC-SHA256 vectors and
//!   follows ipmitool's key derivation, but `ipmi_sim` (the test peer) has no
//!   SHA-256 suite, so it is not proven against a BMC: it is offered only
//!   after suite 3, to BMCs that refuse 3.
//! - No BMC key (K_G): the key generation key is the user's password, as on
//!   BMCs that were not given a separate one.
//! - `BmcOptions::max_concurrent_requests` does not apply: one request at a
//!   time, always.
//! - `BootDevice::Http` has no IPMI boot device selector: refused as unsupported.
//! - User names are at most 16 bytes, passwords at most 20 (IPMI 2.0).

mod commands;
mod crypto;
mod packet;
mod session;

pub use commands::{BootFlags, DeviceId, FruInfo, boot_flags};
pub use crypto::CipherSuite;

use super::{Bmc, BmcAddress, BmcError, BmcOptions, BootDevice, BootOverride, Credentials, PowerAction, PowerState};
use super::{Description, Scheme, SystemIdentity};
use crate::api::node::{BootMode, FirmwareDetails, HardwareDetails};
use async_trait::async_trait;
use commands::{NETFN_APP, NETFN_CHASSIS, NETFN_STORAGE};
use packet::IpmiResponse;
use session::Transport;
use std::fmt;

/// The RMCP port.
pub const DEFAULT_PORT: u16 = 623;
/// FRU data read, at most: identity fields sit in the first few hundred bytes.
const MAX_FRU_BYTES: usize = 4096;

/// IPMI-specific settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpmiOptions {
    /// Cipher suites to offer, in order of preference.
    pub cipher_suites: Vec<CipherSuite>,
}

impl Default for IpmiOptions {
    /// Suite 3 first, the one every BMC (and ipmi_sim, girder's test peer)
    /// offers; 17 for BMCs that turned 3 off.
    fn default() -> Self {
        Self { cipher_suites: vec![CipherSuite::Suite3, CipherSuite::Suite17] }
    }
}

/// An IPMI BMC.
pub struct IpmiClient {
    address: BmcAddress,
    transport: Transport,
}

impl fmt::Debug for IpmiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiClient").field("bmc", &self.transport.bmc).finish_non_exhaustive()
    }
}

/// Runs every decoder girder has for what a BMC sends over IPMI on
/// `datagram` (the packet, its session wrappers, RAKP messages, command
/// answers, FRU data), also as a packet of an established session with fixed
/// keys: for the fuzz target, since whatever arrives must give an answer or
/// an error, never a panic. Not an API.
#[doc(hidden)]
pub fn decode_untrusted(datagram: &[u8]) {
    let _ = packet::parse_packet(datagram, None);
    for suite in [CipherSuite::Suite3, CipherSuite::Suite17] {
        let keys = crypto::SessionKeys::derive(suite, &[0x5a; 20]);
        let _ = packet::parse_packet(datagram, Some(&keys));
        let _ = keys.decrypt(datagram);
        let _ = packet::parse_rakp2(datagram, suite);
        let _ = packet::parse_rakp4(datagram, suite);
    }
    let _ = packet::parse_open_session_response(datagram);
    if let Ok(response) = packet::parse_ipmi_response(datagram) {
        let _ = packet::completion_code_text(response.completion_code);
    }
    let _ = packet::rmcp_status_text(datagram.first().copied().unwrap_or_default());
    let _ = commands::chassis_power_state(datagram);
    let _ = commands::parse_boot_flags(datagram);
    let _ = commands::parse_device_id(datagram);
    let _ = commands::decode_guid(datagram);
    if let Ok(header) = commands::parse_fru_header(datagram) {
        for offset in [header.chassis, header.board, header.product].into_iter().flatten() {
            let _ = commands::fru_area_len(datagram, offset);
        }
    }
    let _ = commands::parse_fru(datagram);
    for kind in 0..4 {
        let _ = commands::decode_fru_field(kind, datagram);
    }
}

impl IpmiClient {
    /// Connects with the default [`IpmiOptions`].
    pub async fn connect(address: BmcAddress, credentials: Credentials, options: BmcOptions) -> Result<Self, BmcError> {
        Self::connect_with(address, credentials, options, IpmiOptions::default()).await
    }

    /// Opens a session at once, so that a wrong password or an unreachable
    /// BMC shows here.
    pub async fn connect_with(
        address: BmcAddress,
        credentials: Credentials,
        options: BmcOptions,
        ipmi: IpmiOptions,
    ) -> Result<Self, BmcError> {
        let bmc = address.to_string();
        if address.scheme != Scheme::Ipmi {
            return Err(BmcError::InvalidAddress { address: bmc, reason: "not an ipmi:// address".into() });
        }
        // `host:port` resolves as is, IPv6 addresses keeping their brackets.
        let port = address.port.unwrap_or(DEFAULT_PORT);
        let transport =
            Transport::new(bmc, address.host.clone(), port, credentials, options.timeout, ipmi.cipher_suites)?;
        transport.login().await?;
        Ok(Self { address, transport })
    }

    /// The cipher suite of the open session (`None` after [`Bmc::close`]).
    pub async fn cipher_suite(&self) -> Option<CipherSuite> {
        self.transport.cipher_suite().await
    }

    /// Sends a request and fails on a non-zero completion code.
    async fn call(&self, what: &str, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
        let response = self.transport.request(what, netfn, cmd, data).await?;
        self.check(what, response)
    }

    fn check(&self, what: &str, response: IpmiResponse) -> Result<Vec<u8>, BmcError> {
        match response.completion_code {
            0 => Ok(response.data),
            code => Err(self.command_error(what, code)),
        }
    }

    fn command_error(&self, what: &str, code: u8) -> BmcError {
        let bmc = self.transport.bmc.clone();
        let meaning = packet::completion_code_text(code);
        match code {
            0xd4 => BmcError::IpmiAuth {
                bmc,
                what: what.to_string(),
                detail: format!("completion code 0x{code:02x}: {meaning} (the user needs Operator or Administrator)"),
            },
            _ => BmcError::IpmiCommand { bmc, what: what.to_string(), code, meaning: meaning.to_string() },
        }
    }

    /// Sets the boot device: `persistent` for every boot, else the next one only.
    pub async fn set_boot_device(&self, device: BootDevice, mode: BootMode, persistent: bool) -> Result<(), BmcError> {
        let flags = boot_flags(device, mode, persistent).ok_or_else(|| BmcError::Unsupported {
            bmc: self.transport.bmc.clone(),
            what: format!("boot device {device:?} over IPMI (it has no boot device selector for it)"),
        })?;
        let what = "Set System Boot Options";
        let set = |data: Vec<u8>| async move {
            self.transport.request(what, NETFN_CHASSIS, commands::SET_SYSTEM_BOOT_OPTIONS, &data).await
        };
        // As ipmitool does: "set in progress" and the boot info acknowledge
        // are optional (their refusal is ignored); commit once the flags are
        // written if "set in progress" was accepted.
        let in_progress = set(vec![commands::BOOT_PARAM_SET_IN_PROGRESS, 0x01]).await?.completion_code == 0;
        let ack = set(vec![commands::BOOT_PARAM_INFO_ACK, 0x01, 0x01]).await?;
        if ack.completion_code != 0 {
            tracing::debug!(bmc = %self.transport.bmc, code = ack.completion_code, "boot info acknowledge refused");
        }
        let mut data = vec![commands::BOOT_PARAM_FLAGS];
        data.extend_from_slice(&flags);
        let written = set(data).await?;
        let written = self.check(&format!("{what} (boot flags {device:?}, {mode:?})"), written);
        if in_progress {
            set(vec![commands::BOOT_PARAM_SET_IN_PROGRESS, 0x02]).await?;
        }
        written?;
        tracing::info!(bmc = %self.transport.bmc, ?device, ?mode, persistent, "boot device set");
        Ok(())
    }

    /// The boot flags as the BMC reports them.
    pub async fn boot_flags(&self) -> Result<BootFlags, BmcError> {
        let what = "Get System Boot Options (boot flags)";
        let data = self
            .call(what, NETFN_CHASSIS, commands::GET_SYSTEM_BOOT_OPTIONS, &[commands::BOOT_PARAM_FLAGS, 0, 0])
            .await?;
        commands::parse_boot_flags(&data).map_err(|detail| self.transport.invalid(what, detail))
    }

    /// Get Device ID.
    pub async fn device_id(&self) -> Result<DeviceId, BmcError> {
        let what = "Get Device ID";
        let data = self.call(what, NETFN_APP, commands::GET_DEVICE_ID, &[]).await?;
        commands::parse_device_id(&data).map_err(|detail| self.transport.invalid(what, detail))
    }

    /// The system GUID as a UUID; `None` if the BMC has none.
    pub async fn system_guid(&self) -> Result<Option<String>, BmcError> {
        let what = "Get System GUID";
        let response = self.transport.request(what, NETFN_APP, commands::GET_SYSTEM_GUID, &[]).await?;
        if response.completion_code != 0 {
            tracing::debug!(bmc = %self.transport.bmc, code = response.completion_code, "no system GUID");
            return Ok(None);
        }
        commands::decode_guid(&response.data).map_err(|detail| self.transport.invalid(what, detail))
    }

    /// The FRU of the BMC's own device (ID 0); `None` if it has none or it
    /// cannot be read.
    pub async fn fru(&self) -> Result<Option<FruInfo>, BmcError> {
        let what = "Get FRU Inventory Area Info";
        let response = self.transport.request(what, NETFN_STORAGE, commands::GET_FRU_INVENTORY_AREA_INFO, &[0]).await?;
        if response.completion_code != 0 || response.data.len() < 3 {
            tracing::debug!(bmc = %self.transport.bmc, code = response.completion_code, "no FRU");
            return Ok(None);
        }
        if response.data[2] & 0x01 != 0 {
            tracing::debug!(bmc = %self.transport.bmc, "FRU accessed by words: not read");
            return Ok(None);
        }
        let size = usize::from(u16::from_le_bytes([response.data[0], response.data[1]])).min(MAX_FRU_BYTES);
        let header = self.read_fru(0, 8.min(size)).await?;
        let Ok(layout) = commands::parse_fru_header(&header) else {
            return Ok(None);
        };
        // Read up to the end of the last area; each area says its length in
        // its second byte.
        let mut end = 8;
        for offset in [layout.chassis, layout.board, layout.product].into_iter().flatten() {
            if offset + 2 > size {
                continue;
            }
            let head = self.read_fru(offset, 2).await?;
            if let Some(len) = commands::fru_area_len(&head, 0) {
                end = end.max((offset + len).min(size));
            }
        }
        let data = self.read_fru(0, end).await?;
        match commands::parse_fru(&data) {
            Ok(info) => Ok(Some(info)),
            Err(detail) => {
                tracing::debug!(bmc = %self.transport.bmc, %detail, "unreadable FRU");
                Ok(None)
            }
        }
    }

    /// `len` bytes of FRU 0 from `offset`, in chunks the BMC accepts.
    async fn read_fru(&self, offset: usize, len: usize) -> Result<Vec<u8>, BmcError> {
        let what = "Read FRU Data";
        let mut data = Vec::with_capacity(len);
        let mut chunk = 32usize;
        while data.len() < len {
            let at = offset + data.len();
            let count = chunk.min(len - data.len());
            let Ok(at16) = u16::try_from(at) else { break };
            let [lo, hi] = at16.to_le_bytes();
            let response =
                self.transport.request(what, NETFN_STORAGE, commands::READ_FRU_DATA, &[0, lo, hi, count as u8]).await?;
            match response.completion_code {
                0 => {}
                // Too much at once for this BMC: smaller chunks.
                0xc7 | 0xc8 | 0xca if chunk > 8 => {
                    chunk /= 2;
                    continue;
                }
                code => return Err(self.command_error(what, code)),
            }
            let returned = response.data.first().copied().map(usize::from).unwrap_or(0);
            let bytes = response.data.get(1..1 + returned).unwrap_or(&[]);
            if bytes.is_empty() {
                break;
            }
            data.extend_from_slice(&bytes[..bytes.len().min(len - data.len())]);
        }
        Ok(data)
    }
}

#[async_trait]
impl Bmc for IpmiClient {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let what = "Get Chassis Status";
        let data = self.call(what, NETFN_CHASSIS, commands::GET_CHASSIS_STATUS, &[]).await?;
        commands::chassis_power_state(&data).map_err(|detail| self.transport.invalid(what, detail))
    }

    /// A power cycle or a hard reset of a system that is off turns it on
    /// (many BMCs refuse both when off); a soft shutdown of a system that is
    /// off does nothing.
    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let needs_state =
            matches!(action, PowerAction::PowerCycle | PowerAction::ForceRestart | PowerAction::GracefulShutdown);
        let state = if needs_state { Some(self.power_state().await?) } else { None };
        let sent = match (action, state) {
            (PowerAction::GracefulShutdown, Some(PowerState::Off)) => {
                tracing::debug!(bmc = %self.transport.bmc, "already off");
                return Ok(());
            }
            (PowerAction::PowerCycle | PowerAction::ForceRestart, Some(PowerState::Off)) => PowerAction::On,
            _ => action,
        };
        let code = commands::chassis_control_code(sent);
        let what = format!("Chassis Control ({sent})");
        // A reset or a power cycle repeated is a second one: sent at most
        // once, on the session the power state was just read through.
        let response = match sent {
            PowerAction::PowerCycle | PowerAction::ForceRestart => {
                self.transport.request_once(&what, NETFN_CHASSIS, commands::CHASSIS_CONTROL, &[code]).await?
            }
            _ => self.transport.request(&what, NETFN_CHASSIS, commands::CHASSIS_CONTROL, &[code]).await?,
        };
        if response.completion_code == 0 {
            tracing::info!(bmc = %self.transport.bmc, %action, "power action accepted");
            return Ok(());
        }
        // Some BMCs refuse to power on what is on, or off what is off.
        if matches!(action, PowerAction::On | PowerAction::ForceOff)
            && self.power_state().await? == action.target_state()
        {
            return Ok(());
        }
        if matches!(response.completion_code, 0xc1 | 0xcc) {
            return Err(BmcError::Unsupported {
                bmc: self.transport.bmc.clone(),
                what: format!(
                    "power action {action} (completion code 0x{:02x}: {})",
                    response.completion_code,
                    packet::completion_code_text(response.completion_code)
                ),
            });
        }
        Err(self.command_error(&what, response.completion_code))
    }

    async fn set_boot_override(&self, boot: BootOverride) -> Result<(), BmcError> {
        self.set_boot_device(boot.device, boot.mode, false).await
    }

    async fn identity(&self) -> Result<SystemIdentity, BmcError> {
        let device = self.device_id().await?;
        let uuid = self.system_guid().await?;
        let fru = self.fru().await?.unwrap_or_default();
        Ok(SystemIdentity {
            vendor: fru
                .product_manufacturer
                .or(fru.board_manufacturer)
                .or_else(|| commands::manufacturer_name(device.manufacturer_id).map(str::to_string)),
            model: fru.product_name.or(fru.board_product),
            serial_number: fru.product_serial.or(fru.chassis_serial).or(fru.board_serial),
            uuid,
        })
    }

    async fn inventory(&self) -> Result<HardwareDetails, BmcError> {
        let identity = self.identity().await?;
        let device = self.device_id().await?;
        Ok(HardwareDetails {
            vendor: identity.vendor,
            model: identity.model,
            serial_number: identity.serial_number,
            uuid: identity.uuid,
            firmware: Some(FirmwareDetails { bios: None, bmc: Some(device.firmware) }),
            ..Default::default()
        })
    }

    async fn close(&self) -> Result<(), BmcError> {
        self.transport.close().await
    }

    async fn describe(&self) -> Result<Description, BmcError> {
        let mut out = Description::default();
        let device = self.device_id().await?;
        let maker = commands::manufacturer_name(device.manufacturer_id).unwrap_or("an unknown manufacturer");
        out.fact(
            "BMC",
            format!(
                "IPMI {}, firmware {}, {maker} (IANA {}), product {:#06x}, device {} revision {}",
                device.ipmi_version,
                device.firmware,
                device.manufacturer_id,
                device.product_id,
                device.device_id,
                device.device_revision
            ),
        );
        let suite = match self.cipher_suite().await {
            Some(CipherSuite::Suite17) => "RMCP+ cipher suite 17 (HMAC-SHA256, AES-CBC-128)",
            Some(CipherSuite::Suite3) => "RMCP+ cipher suite 3 (HMAC-SHA1, AES-CBC-128)",
            None => "(no session open)",
        };
        out.fact("session", suite);
        match self.system_guid().await? {
            Some(guid) => out.fact("system GUID", guid),
            None => out.fact("system GUID", "(none)"),
        }
        out.fact("power", self.power_state().await?.as_str());
        let flags = self.boot_flags().await?;
        let device = match (flags.device, flags.selector) {
            (_, 0) => "no override".to_string(),
            (Some(device), _) => format!("{device:?}"),
            (None, selector) => format!("device selector {selector:#x}"),
        };
        let lasts = if flags.persistent { "every boot" } else { "the next boot" };
        let mode = if flags.uefi { "UEFI" } else { "Legacy" };
        let valid = if flags.valid { "" } else { " (flags not valid: nothing pending)" };
        out.fact("boot override", format!("{device} for {lasts} in {mode} mode{valid}"));
        out.fact("virtual media", "(not part of IPMI)");
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
