//! `girder pxe`: the PXE sidecar. DHCPv4 (Managed and Proxy), TFTP for the
//! iPXE binaries, and HTTP for per-MAC iPXE scripts and boot assets, all
//! decided from what the API says about nodes and networks. It reads the
//! API and writes nothing to it.

pub mod dhcp;
pub mod enrol;
pub mod http;
pub mod metrics;
pub mod model;
pub mod passthrough;
pub mod script;
pub mod tftp;

use crate::api::{BareMetalNode, Network};
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use metrics::PxeMetrics;
use model::Snapshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct PxeArgs {
    /// Read nodes and networks of this namespace only (all namespaces when unset).
    #[arg(long, env = "GIRDER_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Interface to answer DHCP and TFTP on (repeat, or comma-separated); its
    /// first IPv4 address is the server address. None: HTTP only.
    #[arg(long = "interface", env = "GIRDER_PXE_INTERFACES", value_delimiter = ',')]
    interfaces: Vec<String>,
    /// Address serving iPXE scripts, assets, /healthz, /readyz and /metrics.
    #[arg(long, env = "GIRDER_PXE_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Origin put into DHCP answers and scripts (e.g. `http://10.0.0.1:8081`);
    /// by default the interface address and the HTTP port.
    #[arg(long, env = "GIRDER_PXE_HTTP_URL")]
    http_url: Option<String>,
    /// UDP port of the DHCP server.
    #[arg(long, default_value_t = 67)]
    dhcp_port: u16,
    /// UDP port of the ProxyDHCP boot service (PXE clients ask it for the boot file).
    #[arg(long, default_value_t = 4011)]
    proxy_dhcp_port: u16,
    /// UDP port of the TFTP server (0 turns TFTP off).
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// Directory of the iPXE binaries, served over TFTP and under /ipxe/ (Debian's `ipxe` package).
    #[arg(long, env = "GIRDER_PXE_IPXE_DIR", default_value = "/usr/lib/ipxe")]
    ipxe_dir: PathBuf,
    /// iPXE binary for BIOS clients, relative to --ipxe-dir.
    #[arg(long, default_value = "undionly.kpxe")]
    bios_ipxe: String,
    /// iPXE binary for x86-64 UEFI clients: `ipxe.efi` (own drivers) or `snponly.efi` (the firmware's).
    #[arg(long, default_value = "ipxe.efi")]
    uefi_ipxe: String,
    /// iPXE binary for ARM64 UEFI clients, relative to --ipxe-dir.
    #[arg(long, default_value = "arm64-efi/ipxe.efi")]
    arm64_ipxe: String,
    /// Directory of kernels, initrds and images, served under /assets/.
    #[arg(long, env = "GIRDER_PXE_ASSETS_DIR", default_value = "/var/lib/girder/assets")]
    assets_dir: PathBuf,
    /// Directory for the DHCP lease journal (it must survive restarts).
    #[arg(long, env = "GIRDER_PXE_STATE_DIR", default_value = "/var/lib/girder/pxe")]
    state_dir: PathBuf,
    /// Kernel of the discovery/deploy ramdisk: an asset path or a URL.
    #[arg(long, env = "GIRDER_PXE_DISCOVERY_KERNEL")]
    discovery_kernel: Option<String>,
    /// Initrd of the discovery/deploy ramdisk: an asset path or a URL.
    #[arg(long, env = "GIRDER_PXE_DISCOVERY_INITRD")]
    discovery_initrd: Option<String>,
    /// Extra kernel command line of the discovery/deploy ramdisk.
    #[arg(long, env = "GIRDER_PXE_DISCOVERY_CMDLINE", default_value = "")]
    discovery_cmdline: String,
    /// Where to pass agents' TCP connections through to the API server, for
    /// provisioning networks that cannot reach it (e.g. `10.0.0.1:6443`).
    /// Agents are then told to use it, at the address they reached girder
    /// pxe on. Bytes only: TLS stays between the agent and the API server.
    #[arg(long, env = "GIRDER_PXE_API_PASSTHROUGH_ADDR")]
    api_passthrough_addr: Option<SocketAddr>,
    /// The API server URL agents use, when they reach it directly under
    /// another name than girder pxe's own (e.g. `https://k8s.example:6443`).
    #[arg(long, env = "GIRDER_PXE_AGENT_API_SERVER")]
    agent_api_server: Option<String>,
    /// Log format.
    #[arg(long, env = "GIRDER_LOG_FORMAT", value_enum, default_value_t = crate::operator::LogFormat::Json)]
    log_format: crate::operator::LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the Kubernetes API (set KUBECONFIG or run in a cluster): {0}")]
    Client(kube::Error),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tftp(#[from] tftp::BindError),
    #[error("DHCP: {0}")]
    Dhcp(dhcp::DhcpError),
    #[error("cannot read the Kubernetes configuration (set KUBECONFIG or run in a cluster): {0}")]
    Config(kube::config::InferConfigError),
    #[error("cannot use --state-dir {dir} for agent enrolment: {source}")]
    StateDir { dir: PathBuf, source: std::io::Error },
    #[error("the API server URL {0} has no host and port to pass connections through to")]
    Upstream(String),
}

pub fn main(args: PxeArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::operator::init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(PxeError::Runtime)?;
    runtime.block_on(run(args)).map_err(|err| {
        tracing::error!(error = %err, "pxe stopped");
        err.into()
    })
}

async fn run(args: PxeArgs) -> Result<(), PxeError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::operator::stop_on_signal(shutdown.clone()));
    let config = kube::Config::infer().await.map_err(PxeError::Config)?;
    let client = Client::try_from(config.clone()).map_err(PxeError::Client)?;
    let metrics = Arc::new(PxeMetrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (snapshots, snapshot) = watch::channel(Arc::new(Snapshot::default()));

    // The interfaces, the HTTP port and the TFTP ports are checked before
    // anything is served, so a wrong interface or a taken port stops the
    // process at once with its name; the DHCP server binds as it starts and
    // stops the process the same way.
    let mut addresses = Vec::new();
    for interface in &args.interfaces {
        let addr = dhcp::server::interface_ipv4(interface).map_err(PxeError::Dhcp)?;
        tracing::info!(%interface, %addr, "answering PXE on this interface");
        addresses.push(addr);
    }
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| PxeError::Listen { addr: args.http_addr, source })?;
    let http_port = listener.local_addr().map(|a| a.port()).unwrap_or(args.http_addr.port());
    let mut tftp_sockets = Vec::new();
    if args.tftp_port != 0 {
        for addr in &addresses {
            let addr = SocketAddr::from((*addr, args.tftp_port));
            let socket = tftp::bind(addr).await?;
            tftp_sockets.push(socket);
        }
    }
    let boot = dhcp::BootConfig {
        files: dhcp::BootFiles {
            bios: args.bios_ipxe.clone(),
            uefi_x64: args.uefi_ipxe.clone(),
            uefi_arm64: args.arm64_ipxe.clone(),
        },
        http_port,
        http_base: args.http_url.clone(),
    };
    let mut dhcp_config = dhcp::DhcpConfig::new(args.interfaces.clone(), args.state_dir.clone(), boot);
    dhcp_config.port = args.dhcp_port;
    dhcp_config.proxy_port = args.proxy_dhcp_port;

    let ipxe_links = linked_boot_files(&args.ipxe_dir, &[&args.bios_ipxe, &args.uefi_ipxe, &args.arm64_ipxe]);
    let state_dir_error = |source| PxeError::StateDir { dir: args.state_dir.clone(), source };
    let api_host = config.tls_server_name.clone().or_else(|| config.cluster_url.host().map(str::to_string));
    let upstream = match (config.cluster_url.host(), config.cluster_url.port_u16()) {
        (Some(host), port) => format!("{host}:{}", port.unwrap_or(443)),
        _ => return Err(PxeError::Upstream(config.cluster_url.to_string())),
    };
    let enrolment = Arc::new(enrol::Enrolment {
        key: enrol::NonceKey::load_or_create(&args.state_dir).map_err(state_dir_error)?,
        issued: tokio::sync::Mutex::new(
            enrol::Issued::open(&args.state_dir, jiff::Timestamp::now().as_second()).map_err(state_dir_error)?,
        ),
        client: client.clone(),
        ca_pem: pem(config.root_cert.as_deref().unwrap_or_default()),
        api_host: api_host.unwrap_or_default(),
        api_url: config.cluster_url.to_string().trim_end_matches('/').to_string(),
        passthrough_port: args.api_passthrough_addr.map(|a| a.port()),
        server_override: args.agent_api_server.clone(),
    });
    let passthrough = match args.api_passthrough_addr {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| PxeError::Listen { addr, source })?)
        }
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let state = http::HttpState {
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        assets_dir: args.assets_dir.clone(),
        ipxe_dir: args.ipxe_dir.clone(),
        ipxe_links: ipxe_links.clone(),
        discovery: script::DiscoveryImage {
            kernel: args.discovery_kernel.clone(),
            initrd: args.discovery_initrd.clone(),
            cmdline: args.discovery_cmdline.clone(),
        },
        base_url: args.http_url.clone(),
        enrolment,
    };
    tracing::info!(addr = %args.http_addr, "serving iPXE scripts, assets and metrics over HTTP");
    tasks.spawn(log_exit("http", http::serve(listener, state, shutdown.clone())));
    if let Some(listener) = passthrough {
        tracing::info!(addr = ?listener.local_addr().ok(), %upstream, "passing agents' connections through to the API server");
        tasks.spawn(log_exit(
            "api-passthrough",
            passthrough::serve(listener, upstream, metrics.clone(), shutdown.clone()),
        ));
    }
    for socket in tftp_sockets {
        let mut config = tftp::TftpConfig::new(args.ipxe_dir.clone());
        config.symlink_targets = ipxe_links.clone();
        tasks.spawn(log_exit("tftp", tftp::serve(socket, config, metrics.clone(), shutdown.clone())));
    }
    // A DHCP server that cannot bind its sockets or open its lease journal
    // stops the whole process, with the reason, rather than serving half.
    let dhcp = (!args.interfaces.is_empty()).then(|| {
        let (snapshot, shutdown, metrics) = (snapshot.clone(), shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            let served = dhcp::serve(dhcp_config, snapshot, metrics, shutdown.clone()).await;
            shutdown.cancel();
            served
        })
    });

    follow_api(client, args.namespace.as_deref(), snapshots, ready, shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    if let Some(task) = dhcp
        && let Ok(Err(err)) = task.await
    {
        return Err(PxeError::Dhcp(err));
    }
    tracing::info!("pxe stopped cleanly");
    Ok(())
}

/// DER certificates as a PEM bundle.
fn pem(certificates: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certificates {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

async fn log_exit<E: std::fmt::Display>(what: &'static str, server: impl Future<Output = Result<(), E>>) {
    if let Err(err) = server.await {
        tracing::error!(server = what, error = %err, "server stopped with an error");
    }
}

/// The configured iPXE binaries that are links out of `dir` (Debian's `ipxe`
/// links `ipxe.efi` to /boot): exactly those files may be served through
/// their links, never the rest of where they point. Missing ones are named
/// now rather than at the first client's request.
fn linked_boot_files(dir: &std::path::Path, files: &[&str]) -> Vec<PathBuf> {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut links = Vec::new();
    for file in files {
        match std::fs::canonicalize(dir.join(file)) {
            Ok(target) if !target.starts_with(&root) => {
                tracing::info!(file, target = %target.display(), "iPXE binary is a link out of --ipxe-dir; serving it");
                links.push(target);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(file, dir = %dir.display(), error = %err, "iPXE binary missing; clients needing it will be refused")
            }
        }
    }
    links
}

/// Watches nodes and networks until `shutdown`, publishing a fresh snapshot
/// after each burst of changes.
async fn follow_api(
    client: Client,
    namespace: Option<&str>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    if !crate::k8s::wait_for_crds(client.clone(), Duration::from_secs(10), shutdown.clone()).await {
        return;
    }
    let changed = Arc::new(Notify::new());
    let (nodes, node_writer) = reflector::store::<BareMetalNode>();
    let (networks, network_writer) = reflector::store::<Network>();
    let node_api: Api<BareMetalNode> = scoped(&client, namespace);
    let network_api: Api<Network> = scoped(&client, namespace);
    let watch_nodes = reflect("BareMetalNode", node_api, node_writer, changed.clone(), shutdown.clone());
    let watch_networks = reflect("Network", network_api, network_writer, changed.clone(), shutdown.clone());
    let publish = publish(nodes, networks, changed, snapshots, ready, shutdown.clone());
    tokio::join!(watch_nodes, watch_networks, publish);
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
        .take_until(async move { shutdown.cancelled().await });
    stream
        .for_each(|event| {
            match event {
                Ok(_) => changed.notify_one(),
                Err(err) => tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff"),
            }
            futures::future::ready(())
        })
        .await;
}

async fn publish(
    nodes: Store<BareMetalNode>,
    networks: Store<Network>,
    changed: Arc<Notify>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = async { tokio::join!(nodes.wait_until_ready(), networks.wait_until_ready()) } => {}
    }
    loop {
        let (node_list, network_list) = (nodes.state(), networks.state());
        let snapshot = Snapshot::build(node_list.iter().map(|n| n.as_ref()), network_list.iter().map(|n| n.as_ref()));
        for (mac, claimants) in &snapshot.duplicate_macs {
            tracing::warn!(mac = %mac, nodes = %claimants.join(", "), "boot MAC claimed by several nodes; not booting it");
        }
        let _ = snapshots.send(Arc::new(snapshot));
        if !ready.swap(true, Ordering::Relaxed) {
            tracing::info!(nodes = node_list.len(), networks = network_list.len(), "caches filled; answering");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
        }
        // A burst of events (a list, an apply of many objects) becomes one
        // rebuild rather than one per object.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
