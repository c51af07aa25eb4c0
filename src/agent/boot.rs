//! What girder's iPXE script told the machine on its kernel command line
//! (pure parsing): which MAC it booted from, where girder pxe is, the nonce
//! of its agent session, and whether it runs girder's ramdisk at all.

use crate::api::provisioning::BootSource;

/// The `girder.*` words of a kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `girder.mode=`: discover, inspect, deploy or clean; absent on an
    /// installed system, which girder's script did not boot.
    pub mode: Option<String>,
    /// `girder.mac=`, else the MAC of `BOOTIF=01-aa-bb-...`.
    pub mac: Option<String>,
    /// `girder.pxe=`: girder pxe's HTTP origin.
    pub pxe: Option<String>,
    /// `girder.nonce=`.
    pub nonce: Option<String>,
    /// `girder.node=`: namespace/name, for logs.
    pub node: Option<String>,
}

impl BootParams {
    pub fn parse(cmdline: &str) -> Self {
        let mut params = BootParams::default();
        let mut bootif = None;
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else { continue };
            let value = value.to_string();
            match key {
                "girder.mode" => params.mode = Some(value),
                "girder.mac" => params.mac = Some(value),
                "girder.pxe" => params.pxe = Some(value.trim_end_matches('/').to_string()),
                "girder.nonce" => params.nonce = Some(value),
                "girder.node" => params.node = Some(value),
                "BOOTIF" => bootif = Some(value),
                _ => {}
            }
        }
        if params.mac.is_none() {
            // pxelinux's convention: hardware type 01, then the MAC with dashes.
            params.mac = bootif.and_then(|b| b.strip_prefix("01-").map(|m| m.replace('-', ":")));
        }
        params
    }

    /// girder's script booted this system from the network (its ramdisk);
    /// otherwise the machine booted its installed system from the disk.
    pub fn boot_source(&self) -> BootSource {
        if self.mode.is_some() { BootSource::Network } else { BootSource::Disk }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_words_are_read_and_the_rest_ignored() {
        let params = BootParams::parse(
            "initrd=initrd.img console=ttyS0 girder.mode=deploy girder.pxe=http://10.0.0.1:8081/ girder.nonce=abc_-1 BOOTIF=01-52-54-00-12-34-56 girder.mac=52:54:00:12:34:56 girder.node=lab/n1 quiet",
        );
        assert_eq!(params.mode.as_deref(), Some("deploy"));
        assert_eq!(params.pxe.as_deref(), Some("http://10.0.0.1:8081"));
        assert_eq!(params.nonce.as_deref(), Some("abc_-1"));
        assert_eq!(params.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(params.node.as_deref(), Some("lab/n1"));
        assert_eq!(params.boot_source(), BootSource::Network);
    }

    #[test]
    fn bootif_gives_the_mac_and_no_mode_means_the_disk() {
        let params = BootParams::parse("root=/dev/vda1 BOOTIF=01-aa-bb-cc-dd-ee-ff");
        assert_eq!(params.mac.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(params.boot_source(), BootSource::Disk);
        assert_eq!(BootParams::parse(""), BootParams::default());
    }
}
