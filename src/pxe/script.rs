//! The per-MAC iPXE script, decided from the node's state (pure).
//!
//! - unknown MAC: the discovery ramdisk when the client's Network allows
//!   discovery, with a discovery nonce;
//! - a node in maintenance: leave the network boot (`exit`), so the firmware
//!   boots the next device, normally the disk;
//! - a node with a boot profile: its kernel, initrd and command line;
//! - a node whose agent the operator waits for (inspection, install,
//!   cleaning): girder's ramdisk, with the session's nonce; while the session
//!   is not open yet, a script that waits and asks again;
//! - anything else: `exit`.

use super::enrol::NonceKey;
use super::model::{Mac, NodeBoot, Snapshot};
use crate::api::provisioning::RunAction;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Where the discovery (and deploy) ramdisk lives.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryImage {
    /// Asset path or URL of the kernel.
    pub kernel: Option<String>,
    /// Asset path or URL of the initrd.
    pub initrd: Option<String>,
    /// Extra kernel command line.
    pub cmdline: String,
}

/// Why no script is served: an HTTP status and a sentence for the person
/// reading the iPXE console or the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

/// What the script does, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Discovery,
    Profile,
    Deploy,
    Inspect,
    Clean,
    Wait,
    Exit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Discovery => "discovery",
            Action::Profile => "boot-profile",
            Action::Deploy => "deploy",
            Action::Inspect => "inspect",
            Action::Clean => "clean",
            Action::Wait => "wait",
            Action::Exit => "exit",
        }
    }
}

pub struct Rendered {
    pub action: Action,
    /// `namespace/name` of the node, when known.
    pub node: Option<String>,
    pub script: String,
}

/// Renders the script for `mac`, asked for from `client` (the address it
/// fetched the script from, which picks the Network whose discovery setting
/// applies) at `now` (Unix seconds). `base` is the HTTP origin the client used (e.g.
/// `http://10.0.0.1:8081`); relative asset paths are served under
/// `<base>/assets/`.
#[allow(clippy::too_many_arguments)]
pub fn render(
    mac: Mac,
    client: Option<Ipv4Addr>,
    snapshot: &Snapshot,
    discovery: &DiscoveryImage,
    key: &NonceKey,
    base: &str,
    now: i64,
) -> Result<Rendered, Refusal> {
    if let Some(claimants) = snapshot.duplicate(&mac) {
        return Err(Refusal {
            status: 409,
            reason: format!(
                "boot MAC {mac} is claimed by {}; give each BareMetalNode its own bootMACAddress",
                claimants.join(" and ")
            ),
        });
    }
    let Some(node) = snapshot.node(&mac) else {
        // The client's own network decides; a client outside every Network
        // (behind a router, say) is booted if any network allows discovery.
        let network = client.and_then(|ip| snapshot.network_containing(ip));
        let allowed = network.map_or_else(|| snapshot.discovery_allowed(), |n| n.allow_discovery);
        if !allowed {
            let which = match network {
                Some(network) => format!("Network {} does not allow discovery", network.key()),
                None => "no Network allows discovery".to_string(),
            };
            return Err(Refusal {
                status: 404,
                reason: format!("no BareMetalNode has boot MAC {mac}, and {which} (spec.dhcp.allowDiscovery)"),
            });
        }
        let nonce = key.discovery_nonce(mac, now);
        let script = ramdisk(mac, None, "discover", &nonce, discovery, base)?;
        return Ok(Rendered { action: Action::Discovery, node: None, script });
    };
    let key_name = format!("{}/{}", node.namespace, node.name);
    let (action, script) = decide(mac, node, &key_name, discovery, key, base)?;
    Ok(Rendered { action, node: Some(key_name), script })
}

fn decide(
    mac: Mac,
    node: &NodeBoot,
    key_name: &str,
    discovery: &DiscoveryImage,
    nonces: &NonceKey,
    base: &str,
) -> Result<(Action, String), Refusal> {
    if node.maintenance {
        return Ok((
            Action::Exit,
            exit(&format!("node {key_name} is in maintenance; not booting it from the network")),
        ));
    }
    if let Some(profile) = &node.boot_profile {
        let cmdline = with_identity(&profile.cmdline, mac, Some(key_name));
        let script = kernel_script(
            &format!("node {key_name}: boot profile"),
            &asset_url(base, &profile.kernel),
            &asset_url(base, &profile.initrd),
            &cmdline,
            mac,
            base,
        );
        return Ok((Action::Profile, script));
    }
    let Some(work) = node.ramdisk else {
        return Ok((
            Action::Exit,
            exit(&format!("node {key_name} has nothing to boot from the network; booting from its disk")),
        ));
    };
    let Some(session) = &node.session else {
        return Ok((Action::Wait, wait(key_name, mac, base)));
    };
    let (action, mode) = match work {
        RunAction::Inspect => (Action::Inspect, "inspect"),
        RunAction::Deploy => (Action::Deploy, "deploy"),
        RunAction::Clean => (Action::Clean, "clean"),
    };
    let nonce = nonces.session_nonce(&node.namespace, &node.name, session);
    Ok((action, ramdisk(mac, Some(key_name), mode, &nonce, discovery, base)?))
}

fn ramdisk(
    mac: Mac,
    node: Option<&str>,
    mode: &str,
    nonce: &str,
    discovery: &DiscoveryImage,
    base: &str,
) -> Result<String, Refusal> {
    let (Some(kernel), Some(initrd)) = (&discovery.kernel, &discovery.initrd) else {
        return Err(Refusal {
            status: 404,
            reason: format!(
                "MAC {mac} should boot the {mode} ramdisk, but none is configured (girder pxe --discovery-kernel and --discovery-initrd)"
            ),
        });
    };
    let cmdline = format!("{} girder.mode={mode} girder.pxe={base} girder.nonce={nonce}", discovery.cmdline.trim());
    let cmdline = with_identity(&cmdline, mac, node);
    let title = match node {
        Some(key) => format!("node {key}: {mode} ramdisk"),
        None => format!("unknown machine {mac}: {mode} ramdisk"),
    };
    Ok(kernel_script(&title, &asset_url(base, kernel), &asset_url(base, initrd), &cmdline, mac, base))
}

/// The command line plus who the machine is, so the ramdisk and the agent
/// need not guess: `BOOTIF` (the pxelinux convention), `girder.mac` and
/// `girder.node`.
fn with_identity(cmdline: &str, mac: Mac, node: Option<&str>) -> String {
    let mut out = cmdline.trim().to_string();
    let bootif = mac.to_string().replace(':', "-");
    let _ = write!(out, " BOOTIF=01-{bootif} girder.mac={mac}");
    if let Some(key) = node {
        let _ = write!(out, " girder.node={key}");
    }
    out.trim().to_string()
}

/// Relative paths are girder's own assets; anything with a scheme is used as is.
fn asset_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else {
        format!("{base}/assets/{}", location.trim_start_matches('/'))
    }
}

fn kernel_script(title: &str, kernel: &str, initrd: &str, cmdline: &str, mac: Mac, base: &str) -> String {
    // `initrd=initrd.img` names the initrd for EFI-stub kernels booted by an
    // iPXE that predates the LoadFile2 initrd protocol; BIOS kernels ignore it.
    // On failure the script waits and fetches itself again: a transient HTTP
    // error must not leave the machine stuck at the iPXE prompt, nor loop hot.
    format!(
        "#!ipxe\n\
         echo girder: {title}\n\
         kernel --name vmlinuz {kernel} initrd=initrd.img {cmdline} || goto failed\n\
         initrd --name initrd.img {initrd} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo girder: network boot failed; trying again in 10 seconds\n\
         sleep 10\n\
         chain --replace --autofree {base}/boot/{mac}.ipxe\n",
        title = sanitize(title),
        cmdline = sanitize(cmdline),
    )
}

/// The operator wants the ramdisk but has not opened the session yet.
fn wait(key_name: &str, mac: Mac, base: &str) -> String {
    format!(
        "#!ipxe\n\
         echo girder: node {key}: waiting for girder to open the agent session; asking again in 10 seconds\n\
         sleep 10\n\
         chain --replace --autofree {base}/boot/{mac}.ipxe\n",
        key = sanitize(key_name),
    )
}

fn exit(reason: &str) -> String {
    format!("#!ipxe\necho girder: {}\nexit\n", sanitize(reason))
}

/// Keeps one iPXE line one line: API text must not inject commands.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::{DhcpMode, Network, NetworkSpec};
    use crate::api::node::{BareMetalNode, BareMetalNodeSpec, BootProfile, NodePhase};
    use crate::api::provisioning::{AgentRun, ProvisioningState, ProvisioningStatus};

    const MAC: &str = "52:54:00:12:34:56";
    const BASE: &str = "http://10.0.0.1:8081";

    fn node(name: &str, mac: &str, edit: impl FnOnce(&mut BareMetalNode)) -> BareMetalNode {
        let mut node = BareMetalNode::new(
            name,
            BareMetalNodeSpec { boot_mac_address: Some(mac.into()), ..BareMetalNodeSpec::default() },
        );
        node.metadata.namespace = Some("lab".into());
        edit(&mut node);
        node
    }

    fn network(allow_discovery: bool) -> Network {
        let mut net = Network::new(
            "prov",
            NetworkSpec {
                cidr: Some("10.0.0.0/24".into()),
                dhcp: Some(crate::api::network::DhcpSpec {
                    mode: DhcpMode::Managed,
                    lease_seconds: None,
                    allow_discovery,
                }),
                ..NetworkSpec::default()
            },
        );
        net.metadata.namespace = Some("lab".into());
        net
    }

    fn discovery() -> DiscoveryImage {
        DiscoveryImage {
            kernel: Some("discovery/vmlinuz".into()),
            initrd: Some("http://images.example/initrd".into()),
            cmdline: "console=ttyS0".into(),
        }
    }

    fn mac() -> Mac {
        Mac::parse(MAC).unwrap_or(Mac([0; 6]))
    }

    fn draw(client: Option<Ipv4Addr>, snapshot: &Snapshot, discovery: &DiscoveryImage) -> Result<Rendered, Refusal> {
        render(mac(), client, snapshot, discovery, &NonceKey::from_bytes([1; 32]), BASE, 1_000)
    }

    fn profile() -> BootProfile {
        BootProfile { kernel: "/vmlinuz".into(), initrd: "initrd.img".into(), cmdline: "console=ttyS0 quiet".into() }
    }

    #[test]
    fn a_boot_profile_boots_its_kernel_initrd_and_cmdline_with_the_nodes_identity() {
        let nodes = [node("n1", MAC, |n| n.spec.boot_profile = Some(profile()))];
        let snapshot = Snapshot::build(&nodes, &[network(false)]);
        let rendered = draw(None, &snapshot, &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Profile);
        assert_eq!(rendered.node.as_deref(), Some("lab/n1"));
        let s = rendered.script;
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "kernel --name vmlinuz http://10.0.0.1:8081/assets/vmlinuz initrd=initrd.img console=ttyS0 quiet BOOTIF=01-52-54-00-12-34-56 girder.mac=52:54:00:12:34:56 girder.node=lab/n1 || goto failed\n"
        ), "{s}");
        assert!(s.contains("initrd --name initrd.img http://10.0.0.1:8081/assets/initrd.img || goto failed\n"), "{s}");
        assert!(s.contains("chain --replace --autofree http://10.0.0.1:8081/boot/52:54:00:12:34:56.ipxe\n"), "{s}");
    }

    #[test]
    fn maintenance_and_nodes_with_nothing_to_do_leave_the_network_boot() {
        let provisioned = [node("n1", MAC, |n| {
            n.status = Some(crate::api::node::BareMetalNodeStatus {
                phase: Some(NodePhase::Provisioned),
                ..Default::default()
            });
        })];
        let rendered = draw(None, &Snapshot::build(&provisioned, &[]), &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Exit);
        assert!(rendered.script.contains("nothing to boot from the network; booting from its disk\nexit\n"));

        // A boot profile is booted from the network every time, Provisioned or not.
        let profiled = [node("n1", MAC, |n| {
            n.spec.boot_profile = Some(profile());
            n.status = Some(crate::api::node::BareMetalNodeStatus {
                phase: Some(NodePhase::Provisioned),
                ..Default::default()
            });
        })];
        assert_eq!(draw(None, &Snapshot::build(&profiled, &[]), &discovery()).unwrap().action, Action::Profile);

        let maintenance = [node("n1", MAC, |n| {
            n.spec.boot_profile = Some(profile());
            n.spec.maintenance = true;
        })];
        let rendered = draw(None, &Snapshot::build(&maintenance, &[]), &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Exit);
        assert!(rendered.script.contains("maintenance"), "{}", rendered.script);
    }

    fn waiting_for(action: RunAction, session: Option<&str>, state: ProvisioningState) -> BareMetalNode {
        node("n1", MAC, |n| {
            n.status = Some(crate::api::node::BareMetalNodeStatus {
                phase: Some(NodePhase::Provisioning),
                provisioning: Some(ProvisioningStatus {
                    session: session.map(String::from),
                    state: Some(state),
                    run: Some(AgentRun {
                        id: "r1".into(),
                        action,
                        image: None,
                        root_device_hints: None,
                        user_data: None,
                        cleaning: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        })
    }

    #[test]
    fn the_ramdisk_boots_while_the_operator_waits_for_the_agent_with_the_sessions_nonce() {
        let nodes = [waiting_for(RunAction::Deploy, Some("s1"), ProvisioningState::BootingRamdisk)];
        let rendered = draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Deploy);
        let nonce = NonceKey::from_bytes([1; 32]).session_nonce("lab", "n1", "s1");
        assert!(
            rendered.script.contains(&format!(
                "http://10.0.0.1:8081/assets/discovery/vmlinuz initrd=initrd.img console=ttyS0 girder.mode=deploy girder.pxe=http://10.0.0.1:8081 girder.nonce={nonce} BOOTIF="
            )),
            "{}",
            rendered.script
        );
        assert!(rendered.script.contains("initrd --name initrd.img http://images.example/initrd "));

        for (action, want) in [(RunAction::Inspect, Action::Inspect), (RunAction::Clean, Action::Clean)] {
            let nodes = [waiting_for(action, Some("s1"), ProvisioningState::WaitingForAgent)];
            assert_eq!(draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap().action, want);
        }
        // Failed but retrying: still the ramdisk (the agent may be asked again).
        let nodes = [waiting_for(RunAction::Deploy, Some("s1"), ProvisioningState::Failed)];
        assert_eq!(draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap().action, Action::Deploy);
        // Written: the machine boots its disk.
        let nodes = [waiting_for(RunAction::Deploy, Some("s1"), ProvisioningState::BootingDisk)];
        assert_eq!(draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap().action, Action::Exit);
        // No session yet: wait and ask again, without a nonce.
        let nodes = [waiting_for(RunAction::Deploy, None, ProvisioningState::Failed)];
        let rendered = draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Wait);
        assert!(
            rendered
                .script
                .contains("sleep 10\nchain --replace --autofree http://10.0.0.1:8081/boot/52:54:00:12:34:56.ipxe")
        );
        assert!(!rendered.script.contains("nonce"));
    }

    #[test]
    fn unknown_macs_get_discovery_only_where_a_network_allows_it() {
        let refused = draw(None, &Snapshot::build(&[], &[network(false)]), &discovery()).err().unwrap();
        assert_eq!(refused.status, 404);
        assert!(refused.reason.contains("no BareMetalNode has boot MAC 52:54:00:12:34:56"), "{}", refused.reason);
        assert!(refused.reason.contains("allowDiscovery"), "{}", refused.reason);

        let rendered = draw(None, &Snapshot::build(&[], &[network(true)]), &discovery()).unwrap();
        assert_eq!(rendered.action, Action::Discovery);

        // The client's own network decides, and is named.
        let mut closed = network(false);
        closed.metadata.name = Some("closed".into());
        closed.spec.cidr = Some("10.9.0.0/24".into());
        let both = Snapshot::build(&[], &[network(true), closed]);
        let inside_closed = Some(Ipv4Addr::new(10, 9, 0, 7));
        let refused = draw(inside_closed, &both, &discovery()).err().unwrap();
        assert!(refused.reason.contains("Network lab/closed does not allow discovery"), "{}", refused.reason);
        let inside_open = Some(Ipv4Addr::new(10, 0, 0, 7));
        assert!(draw(inside_open, &both, &discovery()).is_ok());
        assert!(rendered.script.contains("girder.mode=discover"));
        let nonce = NonceKey::from_bytes([1; 32]).discovery_nonce(mac(), 1_000);
        assert!(rendered.script.contains(&format!("girder.nonce={nonce} ")), "{}", rendered.script);

        let refused = draw(None, &Snapshot::build(&[], &[network(true)]), &DiscoveryImage::default()).err().unwrap();
        assert_eq!(refused.status, 404);
        assert!(refused.reason.contains("--discovery-kernel"), "{}", refused.reason);
    }

    #[test]
    fn a_mac_claimed_twice_is_not_booted() {
        let nodes = [node("a", MAC, |_| {}), node("b", &MAC.to_uppercase(), |_| {})];
        let refused = draw(None, &Snapshot::build(&nodes, &[]), &discovery()).err().unwrap();
        assert_eq!(refused.status, 409);
        assert!(refused.reason.contains("lab/a and lab/b"), "{}", refused.reason);
    }

    #[test]
    fn api_text_cannot_add_lines_to_the_script() {
        let nodes = [node("n1", MAC, |n| {
            n.spec.boot_profile = Some(BootProfile { cmdline: "quiet\nshell".into(), ..profile() });
        })];
        let rendered = draw(None, &Snapshot::build(&nodes, &[]), &discovery()).unwrap();
        assert!(!rendered.script.lines().any(|l| l == "shell"), "{}", rendered.script);
    }
}
