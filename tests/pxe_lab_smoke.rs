//! The PXE lab (tests/support/pxe_lab.rs) proven against a reference PXE
//! server: dnsmasq in the host namespace on the lab's veth, DHCP + TFTP, with
//! iPXE chainloaded for UEFI and an iPXE script that boots the lab's kernel
//! with a marker on its command line. A BIOS VM (iPXE option ROM) and a UEFI VM
//! (OVMF's own PXE client, no option ROM) must each print the marker.
//!
//! Needs root; QEMU runs with KVM when it works here, TCG otherwise.

mod support;

use std::process::Command;
use support::pxe_lab::*;

/// The reference PXE server: dnsmasq bound to the lab's host end. Clients that
/// are not iPXE get iPXE (undionly.kpxe, or ipxe.efi for x86-64 UEFI: client
/// architecture 7 or 9); iPXE (user class "iPXE") gets `boot.ipxe`, which loads
/// the kernel and initrd over TFTP.
fn reference_pxe(lab: &Lab, marker: &str) -> Daemon {
    let tftp = lab.dir.0.join("tftp");
    std::fs::create_dir_all(&tftp).expect("tftp root");
    for file in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        std::fs::copy(format!("{IPXE_DIR}/{file}"), tftp.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    let assets = pxe_assets();
    for file in ["vmlinuz", "initrd.img"] {
        std::fs::copy(assets.join(file), tftp.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    // `initrd=initrd.img` on the command line: how Debian 12's iPXE (2019) hands
    // the initrd to the kernel's EFI stub; ignored on BIOS.
    let server = lab.host_ip();
    let script = format!(
        "#!ipxe\n\
         kernel tftp://{server}/vmlinuz initrd=initrd.img console=ttyS0 girder.marker={marker} girder.mac=${{mac}}\n\
         initrd tftp://{server}/initrd.img\n\
         boot\n"
    );
    std::fs::write(tftp.join("boot.ipxe"), script).expect("write boot.ipxe");

    let mut cmd = Command::new("dnsmasq");
    cmd.args(["--no-daemon", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--pid-file=", "--no-ping"])
        .arg(format!("--interface={}", lab.host_if))
        .arg(format!("--dhcp-range={},{},255.255.255.0,1h", lab.addr(100), lab.addr(150)))
        .arg(format!("--dhcp-leasefile={}", lab.dir.0.join("pxe.leases").display()))
        // No router, no DNS: nothing leaves the lab.
        .args(["--dhcp-option=option:router", "--dhcp-option=option:dns-server"])
        .args(["--enable-tftp", &format!("--tftp-root={}", tftp.display())])
        .args(["--dhcp-userclass=set:ipxe,iPXE"])
        .args(["--dhcp-match=set:efi64,option:client-arch,7", "--dhcp-match=set:efi64,option:client-arch,9"])
        .args(["--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi", "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe"])
        .args(["--dhcp-boot=tag:ipxe,boot.ipxe", "--log-dhcp", "--log-facility=-"]);
    Daemon::start("reference dnsmasq", cmd, &lab.dir.0.join("pxe-dnsmasq.log"), "TFTP root is")
}

fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Boots one VM through the lab against the reference server and checks the marker.
fn boots(name: &str, subnet: u8, firmware: Firmware) {
    let lab = Lab::create(name, subnet).unwrap_or_else(|e| panic!("{e}"));
    let marker = format!("{:016x}", rand::random::<u64>());
    let pxe = reference_pxe(&lab, &marker);
    let _ra = lab.ipv6_router();
    let mac = random_mac();
    let vm = lab.vm(&mac, firmware);
    let needle = format!("GIRDER-PXE-BOOTED marker={marker} mac={mac}");
    let result = vm.wait_for_serial(&needle, BOOT_PATIENCE);
    let took = vm.started.elapsed();
    if let Err(e) = result {
        panic!("{firmware:?} VM did not boot: {e}\ndnsmasq:\n{}", pxe.logs());
    }
    eprintln!("{firmware:?} VM ({}) PXE-booted to the marker in {:.1} s", accel(), took.as_secs_f64());
    // The initrd powers the VM off; with -no-reboot QEMU then exits by itself.
    assert!(vm.wait_exit(BOOT_PATIENCE).is_some(), "QEMU did not exit after the guest powered off");
    let log = pxe.logs();
    let tftp: Vec<&str> = log.lines().filter(|l| l.contains("dnsmasq-tftp")).collect();
    eprintln!("{firmware:?}: {}", tftp.join("\n"));
    assert!(log.contains("vmlinuz"), "the kernel went over TFTP:\n{log}");
}

/// The site's DHCP (dnsmasq in the lab's namespace, no PXE options) leases an
/// address to a VM: what proxy-mode tests stand on.
#[test]
fn site_dhcp_leases_an_address_to_a_vm() {
    let lab = Lab::create("smoke-site", 243).unwrap_or_else(|e| panic!("{e}"));
    let site = lab.site_dnsmasq((&lab.addr(50), &lab.addr(60)));
    let mac = random_mac();
    let vm = lab.vm(&mac, Firmware::Bios);
    let deadline = std::time::Instant::now() + BOOT_PATIENCE;
    while !site.logs().lines().any(|l| l.contains("DHCPACK(br0)") && l.contains(&mac)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no lease for {mac} from the site DHCP in {BOOT_PATIENCE:?}:\n{}\nserial:\n{}",
            site.logs(),
            vm.serial_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("site DHCP leased an address to {mac} {:.1} s after the VM started", vm.started.elapsed().as_secs_f64());
}

#[test]
fn bios_vm_pxe_boots_through_the_ipxe_rom() {
    boots("smoke-bios", 241, Firmware::Bios);
}

#[test]
fn uefi_vm_pxe_boots_through_ovmf_then_ipxe() {
    boots("smoke-uefi", 242, Firmware::Uefi);
}
