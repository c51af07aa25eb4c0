//! Which file a booting client gets, from what it says it is. Pure.

use super::packet::{Message, code};
use crate::pxe::model::Mac;
use std::net::Ipv4Addr;

/// iPXE binaries served over TFTP (and over HTTP for UEFI HTTP boot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFiles {
    pub bios: String,
    /// `ipxe.efi` or `snponly.efi`.
    pub uefi_x64: String,
    pub uefi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles { bios: "undionly.kpxe".into(), uefi_x64: "ipxe.efi".into(), uefi_arm64: "arm64-efi/ipxe.efi".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub files: BootFiles,
    /// Port of the sidecar's HTTP server.
    pub http_port: u16,
    /// Replaces `http://<server address>:<http_port>` (e.g. behind a load
    /// balancer). No trailing slash needed.
    pub http_base: Option<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig { files: BootFiles::default(), http_port: 8080, http_base: None }
    }
}

impl BootConfig {
    fn http_base(&self, server: Ipv4Addr) -> String {
        match &self.http_base {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => format!("http://{server}:{}", self.http_port),
        }
    }
}

/// RFC 4578 client system architecture types girder boots.
pub mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_BC: u16 = 7;
    pub const EFI_X64: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const EFI_X64_HTTP: u16 = 16;
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// What a client gets to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// A TFTP file name or an HTTP URL.
    pub file: String,
    /// The file is fetched over TFTP from `siaddr`.
    pub tftp: bool,
    /// UEFI HTTP boot: the reply must carry option 60 "HTTPClient".
    pub http_client: bool,
}

/// The client asked to boot, but girder has nothing for its architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedArch(pub u16);

/// Whether the request comes from a network boot client (PXE ROM, UEFI
/// HTTP boot or iPXE) rather than an operating system.
pub fn is_boot_client(request: &Message) -> bool {
    request.client_arch().is_some()
        || request.client_machine_id().is_some()
        || is_ipxe(request)
        || request.vendor_class().is_some_and(|v| v.starts_with(b"PXEClient") || v.starts_with(b"HTTPClient"))
}

/// iPXE says so with user class "iPXE" or its own option 175.
pub fn is_ipxe(request: &Message) -> bool {
    request.has_ipxe_encap() || request.user_class_is_ipxe()
}

/// The architecture from option 93, else from option 60
/// "PXEClient:Arch:NNNNN:..." or "HTTPClient:Arch:NNNNN:...".
pub fn client_arch(request: &Message) -> Option<u16> {
    request.client_arch().or_else(|| {
        let class = request.vendor_class()?;
        let rest = class.strip_prefix(b"PXEClient:Arch:").or_else(|| class.strip_prefix(b"HTTPClient:Arch:"))?;
        let digits = rest.get(..5)?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    })
}

/// The boot file for `request`; `Ok(None)` for a client that is not
/// network booting. `server` is the address the client reaches us on.
pub fn boot_file(
    request: &Message,
    mac: Mac,
    server: Ipv4Addr,
    config: &BootConfig,
) -> Result<Option<Boot>, UnsupportedArch> {
    if is_ipxe(request) {
        let file = format!("{}/boot/{mac}.ipxe", config.http_base(server));
        return Ok(Some(Boot { file, tftp: false, http_client: false }));
    }
    if !is_boot_client(request) {
        return Ok(None);
    }
    let arch = client_arch(request);
    let http_boot = request.vendor_class().is_some_and(|v| v.starts_with(b"HTTPClient"))
        || matches!(arch, Some(arch::EFI_X64_HTTP | arch::EFI_ARM64_HTTP));
    let files = &config.files;
    if http_boot {
        let name = match arch {
            Some(arch::EFI_X64_HTTP) => &files.uefi_x64,
            Some(arch::EFI_ARM64_HTTP) => &files.uefi_arm64,
            other => return Err(UnsupportedArch(other.unwrap_or(arch::BIOS))),
        };
        let file = format!("{}/ipxe/{name}", config.http_base(server));
        return Ok(Some(Boot { file, tftp: false, http_client: true }));
    }
    let name = match arch.unwrap_or(arch::BIOS) {
        arch::BIOS => &files.bios,
        arch::EFI_BC | arch::EFI_X64 => &files.uefi_x64,
        arch::EFI_ARM64 => &files.uefi_arm64,
        other => return Err(UnsupportedArch(other)),
    };
    Ok(Some(Boot { file: name.clone(), tftp: true, http_client: false }))
}

/// Writes `boot` into `reply`: the `file` field, `siaddr`, and options
/// 66/67 when the client listed them in option 55 (option 67 always when
/// the name does not fit the `file` field), 60 "HTTPClient" for HTTP boot.
pub fn apply(boot: &Boot, request: &Message, server: Ipv4Addr, reply: &mut Message) {
    reply.siaddr = server;
    let fits = reply.set_file_name(&boot.file);
    if boot.tftp && request.requested(code::TFTP_SERVER) {
        let mut text = [0u8; 15];
        let len = write_addr(server, &mut text);
        reply.options.push(code::TFTP_SERVER, &text[..len]);
    }
    if !fits || request.requested(code::BOOTFILE) {
        reply.options.push(code::BOOTFILE, boot.file.as_bytes());
    }
    if boot.http_client {
        reply.options.push(code::VENDOR_CLASS, b"HTTPClient");
    }
}

/// Dotted quad without allocating; returns the length written.
fn write_addr(addr: Ipv4Addr, out: &mut [u8; 15]) -> usize {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    // 15 bytes always hold a dotted quad.
    let _ = write!(cursor, "{addr}");
    cursor.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxe::dhcp::packet::MessageType;
    use crate::pxe::dhcp::packet::tests::request;

    const MAC: [u8; 6] = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

    fn decide(extra: &[(u8, &[u8])]) -> Result<Option<Boot>, UnsupportedArch> {
        let message = request(MessageType::Discover, MAC, extra);
        boot_file(&message, Mac(MAC), SERVER, &BootConfig::default())
    }

    fn tftp(file: &str) -> Result<Option<Boot>, UnsupportedArch> {
        Ok(Some(Boot { file: file.into(), tftp: true, http_client: false }))
    }

    #[test]
    fn ipxe_gets_its_per_mac_script_either_way_it_says_so() {
        let expected = Ok(Some(Boot {
            file: "http://10.1.0.2:8080/boot/aa:bb:cc:dd:ee:01.ipxe".into(),
            tftp: false,
            http_client: false,
        }));
        assert_eq!(decide(&[(code::USER_CLASS, b"iPXE"), (code::CLIENT_ARCH, &[0, 7])]), expected);
        assert_eq!(decide(&[(code::USER_CLASS, b"\x04iPXE")]), expected);
        assert_eq!(decide(&[(code::IPXE_ENCAP, &[1, 1, 1])]), expected);
    }

    #[test]
    fn http_base_override_is_used() {
        let message = request(MessageType::Discover, MAC, &[(code::USER_CLASS, b"iPXE")]);
        let config = BootConfig { http_base: Some("https://boot.example/".into()), ..BootConfig::default() };
        let boot = boot_file(&message, Mac(MAC), SERVER, &config).unwrap().unwrap();
        assert_eq!(boot.file, "https://boot.example/boot/aa:bb:cc:dd:ee:01.ipxe");
    }

    #[test]
    fn uefi_http_boot_gets_an_url_and_the_httpclient_echo() {
        let x64 = decide(&[(code::VENDOR_CLASS, b"HTTPClient:Arch:00016:UNDI:003001"), (code::CLIENT_ARCH, &[0, 16])]);
        assert_eq!(
            x64,
            Ok(Some(Boot { file: "http://10.1.0.2:8080/ipxe/ipxe.efi".into(), tftp: false, http_client: true }))
        );
        let arm = decide(&[(code::VENDOR_CLASS, b"HTTPClient:Arch:00019:UNDI:003001")]);
        assert_eq!(arm.unwrap().unwrap().file, "http://10.1.0.2:8080/ipxe/arm64-efi/ipxe.efi");
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"HTTPClient:Arch:00015:UNDI:003001")]), Err(UnsupportedArch(15)));
    }

    #[test]
    fn pxe_roms_get_the_binary_for_their_architecture() {
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 0])]), tftp("undionly.kpxe"));
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 7])]), tftp("ipxe.efi"));
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 9, 0, 0])]), tftp("ipxe.efi"));
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 11])]), tftp("arm64-efi/ipxe.efi"));
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 10])]), Err(UnsupportedArch(10)));
        assert_eq!(decide(&[(code::CLIENT_ARCH, &[0, 6])]), Err(UnsupportedArch(6)));
    }

    #[test]
    fn without_option_93_the_arch_comes_from_option_60_else_bios() {
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016")]), tftp("ipxe.efi"));
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"PXEClient:Arch:00011:UNDI:003016")]), tftp("arm64-efi/ipxe.efi"));
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"PXEClient")]), tftp("undionly.kpxe"));
        assert_eq!(decide(&[(code::CLIENT_MACHINE_ID, &[0; 17])]), tftp("undionly.kpxe"));
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"PXEClient:Arch:0000x")]), tftp("undionly.kpxe"));
    }

    #[test]
    fn snponly_is_configurable() {
        let message = request(MessageType::Discover, MAC, &[(code::CLIENT_ARCH, &[0, 7])]);
        let mut config = BootConfig::default();
        config.files.uefi_x64 = "snponly.efi".into();
        assert_eq!(boot_file(&message, Mac(MAC), SERVER, &config), tftp("snponly.efi"));
    }

    #[test]
    fn operating_systems_are_not_booted() {
        assert_eq!(decide(&[]), Ok(None));
        assert_eq!(decide(&[(code::VENDOR_CLASS, b"MSFT 5.0")]), Ok(None));
    }

    #[test]
    fn tftp_options_only_when_asked() {
        let boot = Boot { file: "undionly.kpxe".into(), tftp: true, http_client: false };
        let plain = request(MessageType::Discover, MAC, &[]);
        let mut reply = Message::default();
        apply(&boot, &plain, SERVER, &mut reply);
        assert_eq!(reply.siaddr, SERVER);
        assert_eq!(reply.file_name(), b"undionly.kpxe");
        assert!(reply.options.is_empty());

        let asking = request(MessageType::Discover, MAC, &[(code::PARAMETER_LIST, &[1, 3, 66, 67])]);
        let mut reply = Message::default();
        apply(&boot, &asking, SERVER, &mut reply);
        assert_eq!(reply.options.get(code::TFTP_SERVER), Some(&b"10.1.0.2"[..]));
        assert_eq!(reply.options.get(code::BOOTFILE), Some(&b"undionly.kpxe"[..]));
    }

    #[test]
    fn long_urls_go_in_option_67() {
        let boot = Boot { file: format!("http://x/{}", "a".repeat(200)), tftp: false, http_client: true };
        let mut reply = Message::default();
        apply(&boot, &request(MessageType::Discover, MAC, &[]), SERVER, &mut reply);
        assert_eq!(reply.file_name(), b"");
        assert_eq!(reply.options.get(code::BOOTFILE), Some(boot.file.as_bytes()));
        assert_eq!(reply.options.get(code::VENDOR_CLASS), Some(&b"HTTPClient"[..]));
    }
}
