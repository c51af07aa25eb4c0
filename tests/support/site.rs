//! The site of the provisioning tests and benchmark: a PXE lab, girder pxe
//! on it serving girder's ramdisk and the test images, with the
//! pass-through to the API server, and the operator.

use super::machine::{ramdisk_and_image, serve_files, sha256_of};
use super::pxe::Pxe;
use super::pxe_lab::Lab;
use super::*;
use girder::api::BareMetalNode;
use girder::api::node::NodePhase;
use kube::{Api, Client};
use std::time::Duration;

/// A whole provisioning under TCG: several boots of a Debian kernel.
pub const LONG: Duration = Duration::from_secs(900);

/// The lab, girder pxe on it with the pass-through to the API server, and
/// the operator.
pub struct Site {
    pub client: Client,
    pub ns: TestNamespace,
    pub lab: Lab,
    pub pxe: Pxe,
    pub image: std::path::PathBuf,
    _operator: Operator,
    _router: super::pxe_lab::Daemon,
}

impl Site {
    pub async fn new(name: &str, subnet: u8, discovery: bool) -> Site {
        let (ramdisk, image) = ramdisk_and_image();
        let client = client().await;
        install_crds(&client).await;
        install_agent_policy();
        let ns = TestNamespace::new(&client, name).await;
        let lab = Lab::create(name, subnet).unwrap_or_else(|e| panic!("{e}"));
        let router = lab.ipv6_router();
        let assets = lab.dir.0.join("assets");
        serve_files(
            &assets,
            &[
                ("vmlinuz", ramdisk.join("vmlinuz")),
                ("initrd.img", ramdisk.join("initrd.img")),
                ("disk.img", image.join("disk.img")),
                ("disk.qcow2", image.join("disk.qcow2")),
            ],
        );
        let s = lab.subnet;
        apply_yaml(
            &ns.name,
            &format!(
                r#"apiVersion: girder.dev/v1alpha1
kind: Network
metadata: {{name: prov}}
spec:
  cidr: 10.{s}.0.0/24
  gateway: 10.{s}.0.1
  dnsServers: [10.{s}.0.1]
  ranges:
    - {{name: nodes, type: static, start: 10.{s}.0.10, end: 10.{s}.0.49}}
    - {{name: unknown, type: discovery, start: 10.{s}.0.200, end: 10.{s}.0.220}}
  dhcp: {{mode: Managed, allowDiscovery: {discovery}}}
"#
            ),
        );
        let state = lab.dir.0.join("pxe-state");
        std::fs::create_dir_all(&state).unwrap();
        let passthrough = format!("{}:{}", lab.host_ip(), free_port());
        let flags = [
            "--discovery-kernel",
            "vmlinuz",
            "--discovery-initrd",
            "initrd.img",
            "--discovery-cmdline",
            "console=ttyS0",
            "--api-passthrough-addr",
            &passthrough,
        ];
        let mut pxe = Pxe::start_in(&ns.name, Some(&lab), &state, &assets, &flags);
        pxe.wait_ready().await;
        let operator = Operator::start_with(
            OperatorOptions::new(&ns.name, name),
            &[
                "--power-poll-interval",
                "5",
                "--bmc-timeout",
                "10",
                "--agent-lease-duration",
                "30",
                "--agent-boot-timeout",
                "600",
                "--installed-agent-timeout",
                "600",
            ],
        );
        Site { client, ns, lab, pxe, image, _operator: operator, _router: router }
    }

    pub fn image_url(&self, file: &str) -> String {
        format!("http://{}/assets/{file}", self.pxe.http)
    }

    pub async fn node_where(&self, name: &str, what: &str, check: impl Fn(&BareMetalNode) -> bool) -> BareMetalNode {
        let nodes: Api<BareMetalNode> = Api::namespaced(self.client.clone(), &self.ns.name);
        let deadline = std::time::Instant::now() + LONG;
        loop {
            if let Some(node) = nodes.get_opt(name).await.ok().flatten().filter(|n| check(n)) {
                return node;
            }
            assert!(std::time::Instant::now() < deadline, "timed out after {LONG:?} waiting for {name}: {what}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A node to install `file` on (none: an Available node to install
    /// later with [`Site::image`]), with its BMC at `bmc`.
    pub fn node(&self, name: &str, mac: &str, bmc: &str, file: Option<&str>, marker: &str) {
        apply_yaml(
            &self.ns.name,
            &format!(
                r#"apiVersion: v1
kind: Secret
metadata: {{name: {name}-user-data}}
stringData:
  userData: |
    #cloud-config
    girder-test-marker: {marker}
---
apiVersion: girder.dev/v1alpha1
kind: BareMetalNode
metadata: {{name: {name}}}
spec:
  bmc: {{address: "{bmc}", credentialsSecretRef: {{name: bmc}}}}
  bootMACAddress: "{mac}"
  bootMode: Legacy
  online: false
  networks: [{{network: prov, interface: eth0}}]
  rootDeviceHints: {{serialNumber: DISK-B}}
  userData: {{name: {name}-user-data}}
{image}"#,
                image = file.map(|file| format!("  image: {}\n", self.image(file))).unwrap_or_default(),
            ),
        );
    }

    /// The `image` of a node that installs `file`, as inline YAML (JSON).
    pub fn image(&self, file: &str) -> String {
        serde_json::json!({
            "url": self.image_url(file),
            "checksum": sha256_of(&self.image, file),
            "format": if file.ends_with(".qcow2") { "qcow2" } else { "raw" },
        })
        .to_string()
    }
}

pub fn phase(node: &BareMetalNode) -> Option<NodePhase> {
    node.status.as_ref()?.phase
}
