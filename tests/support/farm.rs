//! Several machines made of files, each provisioned for real (sushy-tools'
//! Redfish emulator for power, girder pxe for the agent's token and the
//! image, the operator driving each node) and then running its installed
//! system's `girder agent` on this host: the nodes the annealer's tests
//! bind roles to. The agents run every task here, so a task's daemons are
//! processes of this host; `Farm` kills whatever still runs below its lab
//! directory when dropped.

pub use super::agent::OPERATOR_FLAGS;
use super::agent::{Agent, FakeMachine, GIB, boot_agent, disk_image, fat_file, pxe, secret, state};
use super::pxe::Pxe;
use super::sushy::{FakeSystem, Sushy, SushyConfig};
use super::*;
use girder::api::BareMetalNode;
use girder::api::node::NodePhase;
use girder::api::provisioning::ProvisioningState;
use kube::Client;
use serde_json::json;

pub struct Farm {
    pub client: Client,
    pub ns: TestNamespace,
    pub lab: TempDir,
    pub names: Vec<String>,
    pub machines: Vec<FakeMachine>,
    /// The installed system's agent of each node.
    pub agents: Vec<Option<Agent>>,
    pub operator: Option<Operator>,
    _sushy: Sushy,
    _pxe: Pxe,
}

impl Farm {
    /// `count` nodes `<prefix>-0`..., each with an address on the Network
    /// `admin` (`cidr`, e.g. a loopback /24 so tasks can bind to it), brought
    /// to Provisioned with their installed agents connected.
    pub async fn new(prefix: &str, count: usize, cidr_prefix: &str) -> Farm {
        Self::with(prefix, count, cidr_prefix, "", "").await
    }

    /// [`Farm::new`], applying `before` (YAML: a Secret the Network needs,
    /// say) first and with `network_spec` (indented YAML lines) added to the
    /// Network's spec.
    pub async fn with(prefix: &str, count: usize, cidr_prefix: &str, before: &str, network_spec: &str) -> Farm {
        let client = client().await;
        install_crds(&client).await;
        install_agent_policy();
        let ns = TestNamespace::new(&client, prefix).await;
        let lab = TempDir::new(&format!("girder-{prefix}"));
        let (image, digest) = disk_image(&lab.0);
        let tag = rand::random::<u16>();
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        let machines: Vec<FakeMachine> = (0..count)
            .map(|i| {
                FakeMachine::new(
                    &format!("52:54:01:{:02x}:{:02x}:{i:02x}", tag >> 8, tag & 0xff),
                    &[("vda", "DISK-A", 5 * GIB)],
                )
            })
            .collect();
        let systems = names
            .iter()
            .zip(&machines)
            .enumerate()
            .map(|(i, (name, m))| {
                FakeSystem::new(&format!("0000{tag:04x}-0000-4000-8000-{i:012x}"), name, "Off", &[m.mac.as_str()])
            })
            .collect();
        let sushy = Sushy::start(SushyConfig { systems, ..Default::default() }).await;
        let mut pxe = pxe(&ns.name, &lab, &[("os.img", &image)]);
        pxe.wait_ready().await;
        secret(&client, &ns.name, "bmc", json!({ "username": "admin", "password": "unused" })).await;
        if !before.is_empty() {
            apply_yaml(&ns.name, before);
        }
        let mut yaml = format!(
            "apiVersion: girder.dev/v1alpha1\nkind: Network\nmetadata: {{name: admin}}\nspec:\n  cidr: {cidr_prefix}.0/24\n  ranges: [{{name: nodes, type: static, start: {cidr_prefix}.10, end: {cidr_prefix}.200}}]\n{network_spec}"
        );
        for (name, machine) in names.iter().zip(&machines) {
            yaml.push_str(&format!(
                "---\napiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata: {{name: {name}, labels: {{farm: \"yes\"}}}}\nspec:\n  bmc: {{address: \"{bmc}\", credentialsSecretRef: {{name: bmc}}}}\n  bootMACAddress: \"{mac}\"\n  online: true\n  networks: [{{network: admin, interface: eth0}}]\n  image: {{url: \"http://{pxe}/assets/os.img\", checksum: {digest}}}\n",
                bmc = sushy.address(Some(name)),
                mac = machine.mac,
                pxe = pxe.http,
            ));
        }
        apply_yaml(&ns.name, &yaml);
        let operator = Operator::start_with(OperatorOptions::new(&ns.name, prefix), &OPERATOR_FLAGS);
        let mut farm = Farm {
            client,
            ns,
            lab,
            names,
            machines,
            agents: Vec::new(),
            operator: Some(operator),
            _sushy: sushy,
            _pxe: pxe,
        };
        let installs = (0..count).map(|i| farm.install(i));
        let agents = futures::future::join_all(installs).await;
        farm.agents = agents.into_iter().map(Some).collect();
        for name in &farm.names {
            node_where(&farm.client, &farm.ns.name, name, "Provisioned with its agent connected", |n| {
                n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Provisioned)
                    && condition(n, "AgentConnected").is_some_and(|c| c.0 == ConditionStatus::True)
            })
            .await;
        }
        farm
    }

    /// Provisions node `i`: its ramdisk's agent writes the image, then the
    /// installed system's agent starts with the credentials of its seed.
    async fn install(&self, i: usize) -> Agent {
        let (name, machine) = (&self.names[i], &self.machines[i]);
        let mut ramdisk =
            boot_agent(&self.client, &self.ns.name, name, &self._pxe, machine, &self.ramdisk_dir(i)).await;
        node_where(&self.client, &self.ns.name, name, "the image written; booting the disk", |n: &BareMetalNode| {
            state(n) == Some(ProvisioningState::BootingDisk)
        })
        .await;
        ramdisk.kill();
        let credentials = fat_file(machine, "vda", "girder-agent.json");
        std::fs::write(self.credentials(i), credentials).unwrap();
        self.start_agent(i)
    }

    fn ramdisk_dir(&self, i: usize) -> std::path::PathBuf {
        self.lab.0.join(format!("{}-ramdisk", self.names[i]))
    }

    fn credentials(&self, i: usize) -> std::path::PathBuf {
        self.lab.0.join(format!("{}-agent.json", self.names[i]))
    }

    /// The state directory of node `i`'s installed agent (its role tasks
    /// work below `roles/`).
    pub fn state_dir(&self, i: usize) -> std::path::PathBuf {
        self.lab.0.join(format!("{}-installed", self.names[i]))
    }

    /// Starts node `i`'s installed agent (again).
    pub fn start_agent(&self, i: usize) -> Agent {
        let credentials = self.credentials(i);
        Agent::start(
            &self.machines[i],
            "root=/dev/vda1 console=ttyS0",
            &self.state_dir(i),
            &["--credentials", credentials.to_str().unwrap()],
        )
    }

    pub fn restart_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            agent.kill();
        }
        self.agents[i] = Some(self.start_agent(i));
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            agent.kill();
        }
    }

    /// Serves `file` as `assets/<name>` from the farm's girder pxe; returns its URL.
    pub fn serve(&self, name: &str, file: &std::path::Path) -> String {
        std::fs::copy(file, self.lab.0.join("assets").join(name)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        format!("http://{}/assets/{name}", self._pxe.http)
    }

    /// Every agent's log, for a failure message.
    pub fn agent_logs(&self) -> String {
        self.agents.iter().flatten().map(|a| a.logs()).collect::<Vec<_>>().join("\n---\n")
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        // Daemons the tasks started run on this host, below the lab directory.
        let _ = std::process::Command::new("pkill").arg("-KILL").arg("-f").arg(self.lab.0.to_str().unwrap()).status();
    }
}
