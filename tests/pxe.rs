//! `girder pxe` end to end: QEMU VMs PXE-boot against it in a network
//! namespace the test creates (DHCP, TFTP of iPXE, DHCP again from iPXE, the
//! per-MAC HTTP script, kernel and initrd), with the operator allocating the
//! addresses from real Network objects on a real API server.
//!
//! Needs root (namespaces, taps, ports 67/69) and qemu; `make test` installs
//! the Debian packages and builds the test kernel and initrd.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::pxe::Pxe;
use support::pxe_lab::{BOOT_PATIENCE, Firmware, IPXE_DIR, Lab, pxe_assets};
use support::{Operator, OperatorOptions, TempDir, TestNamespace, apply_yaml, client, install_crds, wait_for};

fn network_yaml(name: &str, lab: &Lab, dhcp: &str) -> String {
    format!(
        r#"apiVersion: girder.dev/v1alpha1
kind: Network
metadata:
  name: {name}
spec:
  cidr: 10.{s}.0.0/24
  gateway: 10.{s}.0.1
  dnsServers: ["10.{s}.0.1"]
  domain: lab.example
  ranges:
    - {{name: nodes, type: static, start: 10.{s}.0.10, end: 10.{s}.0.49}}
    - {{name: unknown, type: discovery, start: 10.{s}.0.200, end: 10.{s}.0.220}}
  dhcp: {dhcp}
"#,
        s = lab.subnet
    )
}

fn node_yaml(name: &str, mac: &str, network: &str, marker: &str) -> String {
    format!(
        r#"apiVersion: girder.dev/v1alpha1
kind: BareMetalNode
metadata:
  name: {name}
spec:
  bootMACAddress: "{mac}"
  networks:
    - network: {network}
  bootProfile:
    kernel: vmlinuz
    initrd: initrd.img
    cmdline: console=ttyS0 girder.marker={marker}
"#
    )
}

/// The node's IPv4 allocation on `network`, once the operator made it.
async fn allocation(namespace: &str, network: &str, node: &str) -> String {
    wait_for(&format!("an address for {node} on {network}"), || {
        let out = support::kubectl()
            .args(["-n", namespace, "get", "network", network, "-o", "json"])
            .output()
            .expect("kubectl get network");
        let value: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let found = value["status"]["allocations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["node"] == node)
            .and_then(|a| a["ipv4"].as_str().map(str::to_string));
        async move { found }
    })
    .await
}

fn marker() -> String {
    format!("m{:08x}", rand::random::<u32>())
}

fn booted(marker: &str) -> String {
    format!("GIRDER-PXE-BOOTED marker={marker}")
}

fn operator(namespace: &str) -> Operator {
    Operator::start(OperatorOptions::new(namespace, "op"))
}

/// What every VM test starts from: a namespace, a lab with router adverts,
/// the Network `prov` in the given DHCP mode and a node `vm1` whose boot
/// profile prints `marker`, and a fresh state dir for girder pxe.
struct Setup {
    ns: TestNamespace,
    lab: Lab,
    _ra: support::pxe_lab::Daemon,
    state: TempDir,
    marker: String,
}

async fn setup(name: &str, subnet: u8, dhcp: &str, node_mac: Option<&str>) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, &format!("pxe-{name}")).await;
    let lab = Lab::create(name, subnet).unwrap_or_else(|e| panic!("{e}"));
    // Router adverts spare iPXE its wait for IPv6 autoconfiguration.
    let ra = lab.ipv6_router();
    let marker = marker();
    apply_yaml(&ns.name, &network_yaml("prov", &lab, dhcp));
    if let Some(mac) = node_mac {
        apply_yaml(&ns.name, &node_yaml("vm1", mac, "prov", &marker));
    }
    let state = TempDir::new(&format!("girder-pxe-state-{name}"));
    Setup { ns, lab, _ra: ra, state, marker }
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_mode_boots_a_bios_vm_into_its_boot_profile_at_its_allocated_address() {
    let mac = "52:54:00:c9:00:01";
    let Setup { ns, lab, state, marker, .. } = &setup("bios", 201, "{mode: Managed}", Some(mac)).await;
    let _operator = operator(&ns.name);
    let address = allocation(&ns.name, "prov", "vm1").await;
    let mut pxe = Pxe::start(&ns.name, Some(lab), &state.0, &[]);
    pxe.wait_ready().await;

    // Garbage first: truncated, oversized and random DHCP and TFTP datagrams
    // from the lab's segment must not stop either server.
    let sent = send_garbage(lab);
    wait_for("the malformed DHCP packets to be counted", || {
        let counted = pxe.metric("girder_pxe_dhcp_ignored_total{reason=\"malformed\"}");
        async move { (counted >= sent as f64).then_some(()) }
    })
    .await;

    let vm = lab.vm(mac, Firmware::Bios);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("VM did not boot:\n{log}"));

    let acks = pxe.log_lines("DHCP ACK", mac);
    assert!(!acks.is_empty(), "no DHCP ACK for {mac}:\n{}", pxe.logs());
    for ack in &acks {
        assert_eq!(ack["address"], address.as_str(), "the VM must get its allocation: {ack}");
        assert_eq!(ack["node"], format!("{}/vm1", ns.name), "{ack}");
    }
    // iPXE (the NIC ROM) asked for its script, then fetched kernel and initrd.
    let script = pxe.log_lines("served iPXE script", mac);
    assert_eq!(script.first().map(|l| l["action"].clone()), Some("boot-profile".into()), "{}", pxe.logs());
    assert!(pxe.metric("girder_pxe_http_requests_total{route=\"assets\",code=\"200\"}") >= 2.0);
    assert!(pxe.metric("girder_pxe_dhcp_messages_total{message=\"ACK\",direction=\"sent\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_mode_chains_a_uefi_vm_through_tftp_to_ipxe_and_its_script() {
    let mac = "52:54:00:ca:00:01";
    let Setup { ns, lab, state, marker, .. } = &setup("uefi", 202, "{mode: Managed}", Some(mac)).await;
    let _operator = operator(&ns.name);
    let address = allocation(&ns.name, "prov", "vm1").await;
    let mut pxe = Pxe::start(&ns.name, Some(lab), &state.0, &[]);
    pxe.wait_ready().await;

    let vm = lab.vm(mac, Firmware::Uefi);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("VM did not boot:\n{log}"));

    // Two ACKs at least: the firmware's PXE client got ipxe.efi, then iPXE
    // got its script URL; both at the node's allocation.
    let acks = pxe.log_lines("DHCP ACK", mac);
    let boots: Vec<&str> = acks.iter().filter_map(|a| a["boot"].as_str()).collect();
    assert!(boots.contains(&"ipxe.efi"), "the UEFI client must be sent ipxe.efi: {boots:?}\n{}", pxe.logs());
    assert!(boots.iter().any(|b| b.ends_with(&format!("/boot/{mac}.ipxe"))), "then iPXE its script: {boots:?}");
    assert!(acks.iter().all(|a| a["address"] == address.as_str()), "{acks:?}");
    assert!(pxe.metric("girder_pxe_tftp_transfers_total{result=\"complete\"}") >= 1.0);
    let ipxe_size = std::fs::metadata(Path::new(IPXE_DIR).join("ipxe.efi")).expect("ipxe.efi").len() as f64;
    assert!(pxe.metric("girder_pxe_tftp_sent_bytes_total") >= ipxe_size);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_boots_a_bios_vm_next_to_the_sites_own_dhcp_server() {
    proxy_boot("proxy", 203, "52:54:00:cb:00:01", Firmware::Bios).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_mode_boots_a_uefi_vm_next_to_the_sites_own_dhcp_server() {
    proxy_boot("proxy-uefi", 206, "52:54:00:cb:00:02", Firmware::Uefi).await;
}

/// The site's DHCP (dnsmasq with no PXE options) gives the address; girder,
/// in Proxy mode, only the boot file.
async fn proxy_boot(name: &str, subnet: u8, mac: &str, firmware: Firmware) {
    let Setup { ns, lab, state, marker, .. } = &setup(name, subnet, "{mode: Proxy}", Some(mac)).await;
    // The site's DHCP hands out .100-.150 and knows nothing of PXE.
    let site = lab.site_dnsmasq((&lab.addr(100), &lab.addr(150)));

    let mut pxe = Pxe::start(&ns.name, Some(lab), &state.0, &[]);
    pxe.wait_ready().await;

    let vm = lab.vm(mac, firmware);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("VM did not boot:\n{log}"));

    // The address came from the site's server, the boot file from girder.
    let site_log = site.logs();
    let leased = format!("DHCPACK(br0) 10.{}.0.1", lab.subnet);
    assert!(site_log.lines().any(|l| l.contains(&leased) && l.contains(mac)), "{site_log}");
    assert!(pxe.log_lines("DHCP ACK", mac).is_empty(), "girder must not lease in Proxy mode:\n{}", pxe.logs());
    let offers = pxe.log_lines("ProxyDHCP offer", mac);
    assert!(!offers.is_empty(), "no ProxyDHCP offer:\n{}", pxe.logs());
    assert!(pxe.metric("girder_pxe_http_requests_total{route=\"script\",code=\"200\"}") >= 1.0);
    if firmware == Firmware::Uefi {
        // OVMF's PXE client took ipxe.efi over TFTP on girder's word alone.
        assert!(pxe.metric("girder_pxe_tftp_transfers_total{result=\"complete\"}") >= 1.0, "{}", pxe.logs());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_machine_gets_discovery_and_its_lease_back_after_a_restart() {
    let mac = "52:54:00:cc:00:01";
    let Setup { ns, lab, state, marker, .. } = &setup("disc", 204, "{mode: Managed, allowDiscovery: true}", None).await;
    let cmdline = format!("console=ttyS0 girder.marker={marker}");
    let extra = ["--discovery-kernel", "vmlinuz", "--discovery-initrd", "initrd.img", "--discovery-cmdline", &cmdline];
    let mut pxe = Pxe::start(&ns.name, Some(lab), &state.0, &extra);
    pxe.wait_ready().await;

    let first = {
        let vm = lab.vm(mac, Firmware::Bios);
        let serial = vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("{log}"));
        assert!(serial.contains(&format!("mac={mac}")), "the discovery ramdisk is told its MAC: {serial}");
        discovery_address(&pxe, mac, lab)
    };
    pxe.restart().await;
    let vm = lab.vm(mac, Firmware::Bios);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("{log}"));
    let second = discovery_address(&pxe, mac, lab);
    assert_eq!(first, second, "the same MAC must get the same lease after a restart");

    // Another unknown machine never gets that address.
    let other = "52:54:00:cc:00:02";
    let vm = lab.vm(other, Firmware::Bios);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("{log}"));
    assert_ne!(discovery_address(&pxe, other, lab), first);
}

/// The address of the last ACK for `mac`, checked to be in the discovery range.
fn discovery_address(pxe: &Pxe, mac: &str, lab: &Lab) -> String {
    let acks = pxe.log_lines("DHCP ACK", mac);
    let last = acks.last().unwrap_or_else(|| panic!("no DHCP ACK for {mac}:\n{}", pxe.logs()));
    assert_eq!(last["node"], "unknown", "{last}");
    let address = last["address"].as_str().unwrap_or_default().to_string();
    let host: u8 = address.rsplit('.').next().and_then(|h| h.parse().ok()).unwrap_or(0);
    assert!(address.starts_with(&format!("10.{}.0.", lab.subnet)) && (200..=220).contains(&host), "{address}");
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn http_says_why_it_refuses_and_serves_ranges_and_head() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "pxe-http").await;
    let mac = "52:54:00:cd:00:01";
    apply_yaml(&ns.name, &node_yaml("vm1", mac, "prov", "x"));
    let state = TempDir::new("girder-pxe-state-http");
    let mut pxe = Pxe::start(&ns.name, None, &state.0, &[]);
    pxe.wait_ready().await;
    let base = format!("http://{}", pxe.http);

    let (code, body) = curl(&[&format!("{base}/boot/{mac}.ipxe")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("#!ipxe\n") && body.contains(&format!("{base}/assets/vmlinuz")), "{body}");

    let unknown = "52:54:00:cd:00:99";
    let (code, body) = curl(&[&format!("{base}/boot/{unknown}.ipxe")]);
    assert_eq!(code, 404);
    assert!(body.contains(&format!("no BareMetalNode has boot MAC {unknown}")), "{body}");
    let (code, body) = curl(&[&format!("{base}/boot/not-a-mac.ipxe")]);
    assert_eq!(code, 404);
    assert!(body.contains("named after the boot MAC"), "{body}");
    let (code, body) = curl(&["--path-as-is", &format!("{base}/assets/../../etc/passwd")]);
    assert!(code == 403 || code == 404, "{code} {body}");
    let (code, body) = curl(&[&format!("{base}/assets/%2e%2e/%2e%2e/etc/passwd")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("escapes the assets directory"), "{body}");
    let (code, body) = curl(&[&format!("{base}/assets/nothing-here")]);
    assert_eq!(code, 404);
    assert!(body.contains("no file \"nothing-here\""), "{body}");

    let kernel = std::fs::read(pxe_assets().join("vmlinuz")).expect("test kernel");
    let (code, headers) = curl(&["-I", &format!("{base}/assets/vmlinuz")]);
    assert_eq!(code, 200);
    assert!(headers.to_lowercase().contains(&format!("content-length: {}", kernel.len())), "{headers}");
    assert!(headers.to_lowercase().contains("accept-ranges: bytes"), "{headers}");
    let part =
        Command::new("curl").args(["-s", "-r", "100-199", &format!("{base}/assets/vmlinuz")]).output().expect("curl");
    assert_eq!(part.stdout, kernel[100..200]);
    let (code, _) = curl(&["-r", &format!("{}-", kernel.len() + 10), &format!("{base}/assets/vmlinuz")]);
    assert_eq!(code, 416);
    let (code, _) = curl(&["-I", &format!("{base}/ipxe/undionly.kpxe")]);
    assert_eq!(code, 200);
    assert!(pxe.metric("girder_pxe_http_requests_total{route=\"script\",code=\"404\"}") >= 2.0);
}

/// `curl -s` of a URL: (status code, body or headers).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed (apt-get install curl): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Sends malformed DHCP and TFTP datagrams from inside the lab to the PXE
/// server; returns how many went to the DHCP port.
fn send_garbage(lab: &Lab) -> usize {
    let source = lab.addr(250);
    lab.ns_ip(&["addr", "replace", &format!("{source}/24"), "dev", support::pxe_lab::BRIDGE])
        .unwrap_or_else(|e| panic!("{e}"));
    // A valid BOOTREQUEST header cut short, a bad magic cookie, an option
    // running past the end, empty and random datagrams.
    let script = format!(
        r#"
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("{source}", 0))
header = bytes([1, 1, 6, 0]) + bytes(232)
packets = [b"", b"\x01", header[:100], header + b"\x00\x00\x00\x00", header + bytes([99, 130, 83, 99, 53, 200, 1]), os.urandom(300), os.urandom(1400)]
for p in packets:
    s.sendto(p, ("255.255.255.255", 67))
tftp = [b"", b"\x00\x01", b"\x00\x01file", b"\x00\x01file\x00", b"\x00\x09junk", b"\x00\x01../../etc/passwd\x00octet\x00", os.urandom(700)]
for p in tftp:
    s.sendto(p, ("{server}", 69))
print(len(packets))
"#,
        server = lab.host_ip()
    );
    let out = lab.ns_command("python3").args(["-c", &script]).output().expect("python3 in the lab");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// A segment behind a router: the VM's DHCP goes through a relay agent
/// (dnsmasq's `--dhcp-relay`) that sets giaddr; girder picks the Network by
/// giaddr, answers the relay, and the VM boots over the routed path.
#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_segment_gets_addresses_from_the_network_its_relay_names() {
    let mac = "52:54:00:cf:00:01";
    let Setup { ns, lab, state, marker, .. } = &setup("relay", 205, "{mode: Managed}", None).await;
    let remote = format!("10.{}.1", lab.subnet);
    apply_yaml(
        &ns.name,
        &format!(
            r#"apiVersion: girder.dev/v1alpha1
kind: Network
metadata:
  name: remote
spec:
  cidr: {remote}.0/24
  gateway: {remote}.1
  ranges:
    - {{name: nodes, type: static, start: {remote}.10, end: {remote}.49}}
  dhcp: {{mode: Managed}}
"#
        ),
    );
    apply_yaml(&ns.name, &node_yaml("vm1", mac, "remote", marker));
    let _operator = operator(&ns.name);
    let address = allocation(&ns.name, "remote", "vm1").await;

    // The namespace routes between br0 (girder's segment, .0.254) and br1
    // (the remote segment, .1.1), and relays DHCP from br1 to girder.
    let router = lab.addr(254);
    for args in [
        vec!["addr", "add", &format!("{router}/24"), "dev", "br0"],
        vec!["link", "add", "br1", "type", "bridge", "forward_delay", "0"],
        vec!["addr", "add", &format!("{remote}.1/24"), "dev", "br1"],
        vec!["link", "set", "br1", "up"],
        vec!["-6", "addr", "add", &format!("fd00:{}:1::1/64", lab.subnet), "dev", "br1", "nodad"],
    ] {
        lab.ns_ip(&args).unwrap_or_else(|e| panic!("{e}"));
    }
    support::pxe_lab::run(lab.ns_command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))
        .unwrap_or_else(|e| panic!("{e}"));
    // This host reaches the remote segment through the lab's router; the
    // route goes with the lab's veth.
    support::pxe_lab::run(Command::new("ip").args(["route", "add", &format!("{remote}.0/24"), "via", &router]))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut relay = lab.ns_command("dnsmasq");
    relay
        .args(["--no-daemon", "--conf-file=/dev/null", "--port=0", "--pid-file=", "--log-facility=-"])
        .args(["--interface=br1", "--log-dhcp"])
        .arg(format!("--dhcp-relay={remote}.1,{}", lab.host_ip()))
        // Router adverts on the remote segment too, as on br0.
        .args(["--enable-ra", &format!("--dhcp-range=fd00:{}:1::,ra-only,64", lab.subnet)]);
    let _relay = support::pxe_lab::Daemon::start("relay", relay, &lab.dir.0.join("relay.log"), "relay");

    let mut pxe = Pxe::start(&ns.name, Some(lab), &state.0, &[]);
    pxe.wait_ready().await;
    let vm = lab.vm_on("br1", mac, Firmware::Bios);
    vm.wait_for_serial(&booted(marker), BOOT_PATIENCE).unwrap_or_else(|log| panic!("VM did not boot:\n{log}"));

    let acks = pxe.log_lines("DHCP ACK", mac);
    assert!(!acks.is_empty(), "no DHCP ACK for {mac}:\n{}", pxe.logs());
    for ack in &acks {
        assert_eq!(ack["address"], address.as_str(), "{ack}");
        assert_eq!(ack["network"], format!("{}/remote", ns.name), "picked by giaddr: {ack}");
    }
}
