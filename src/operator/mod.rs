//! `girder operator`: the controllers, behind leader election, with health
//! and metrics endpoints and a graceful shutdown.

pub mod http;
pub mod lease;
pub mod metrics;

use crate::controller::role::GuardedRole;
use crate::controller::{self, Backoff, Context};
use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use lease::{Elector, LeaseConfig};
use metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "GIRDER_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "GIRDER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "girder-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (the pod's own, in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (the pod name, in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease stays valid without renewal, in seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    lease_duration: u64,
    /// How long the leader keeps trying to renew before it gives up, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    renew_deadline: u64,
    /// How often the Lease is renewed or polled, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    retry_period: u64,
    /// Log format.
    #[arg(long, env = "GIRDER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// How often each node's power state is read from its BMC, in seconds.
    #[arg(long, env = "GIRDER_POWER_POLL_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    power_poll_interval: u64,
    /// Limit on one BMC call (connect, send, answer), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    bmc_timeout: u64,
    /// Nodes reconciled at once: each is a conversation with its BMC.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_node_reconciles: u16,
    /// How long a machine may take from the boot request until its agent
    /// reports (firmware, PXE, kernel, agent), in seconds; then it is booted again.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u64).range(30..))]
    agent_boot_timeout: u64,
    /// How long the installed system may take to start girder agent after
    /// the image was written, in seconds, before the node is called
    /// Provisioned without it.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u64).range(10..))]
    installed_agent_timeout: u64,
    /// How long an agent's heartbeat counts, in seconds (the duration of its
    /// Lease; agents renew it three times as often). A run whose agent
    /// stays silent longer is lost and done again.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=3600))]
    agent_lease_duration: u64,
    /// How long an installed system may take to shut down when asked
    /// (spec.powerOffMode Soft), in seconds, before power is forced off.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
    soft_power_off_timeout: u64,
    /// How long a BMC may take to carry out a power request, in seconds,
    /// before it is asked again (the power is read meanwhile).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    power_change_timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("lease timings are inconsistent: need retry-period < renew-deadline < lease-duration")]
    LeaseTimings,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the Kubernetes API (set KUBECONFIG or run in a cluster): {0}")]
    Client(kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("lost leadership: {0}; exiting so a fresh start can stand by")]
    LeaseLost(#[from] lease::LeaseLost),
    #[error("the Role cache cannot be shared")]
    SharedCache,
}

pub fn main(args: OperatorArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logging(args.log_format);
    if !(args.retry_period < args.renew_deadline && args.renew_deadline < args.lease_duration) {
        return Err(OperatorError::LeaseTimings.into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(OperatorError::Runtime)?;
    runtime.block_on(run(args)).map_err(|err| {
        tracing::error!(error = %err, "operator stopped");
        err.into()
    })
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only for a person at a terminal, never in files or pipes, nor with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| OperatorError::Listen { addr: args.http_addr, source })?;
    let bound = listener.local_addr().unwrap_or(args.http_addr);
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    let health = http::Health { metrics: metrics.clone(), ready: ready.clone() };
    let http = tokio::spawn(http::serve(listener, health, shutdown.clone()));

    let result = lead(&args, client, metrics, ready, &shutdown).await;
    shutdown.cancel();
    if let Ok(Err(err)) = http.await {
        tracing::warn!(error = %err, "health server stopped with an error");
    }
    result
}

/// Waits for the CRDs and the Lease, then runs the controllers until shutdown
/// or until the Lease is lost.
async fn lead(
    args: &OperatorArgs,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: &CancellationToken,
) -> Result<(), OperatorError> {
    if !crate::k8s::wait_for_crds(client.clone(), Duration::from_secs(10), shutdown.clone()).await {
        return Ok(());
    }
    ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut elector = Elector::new(
        client.clone(),
        LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        },
    );
    tracing::info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
    if !elector.acquire(shutdown).await {
        return Ok(());
    }
    metrics.set_leader(true);
    tracing::info!(%identity, "leading: starting controllers");

    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "girder-operator".into(), instance: Some(identity) },
        ),
        client,
        metrics: metrics.clone(),
        namespace: args.namespace.clone(),
        backoff: Backoff::default(),
    });
    let settings = controller::node::NodeSettings {
        lifecycle: controller::node::lifecycle::Settings {
            power_poll_interval: Duration::from_secs(args.power_poll_interval),
            agent_boot_timeout: Duration::from_secs(args.agent_boot_timeout),
            installed_agent_timeout: Duration::from_secs(args.installed_agent_timeout),
            agent_poll_interval: Duration::from_secs(args.agent_lease_duration.clamp(2, 20) / 2),
            soft_power_off_timeout: Duration::from_secs(args.soft_power_off_timeout),
            power_change_timeout: Duration::from_secs(args.power_change_timeout),
        },
        bmc_timeout: Duration::from_secs(args.bmc_timeout),
        max_concurrent_reconciles: args.max_concurrent_node_reconciles,
        agent_lease_seconds: i32::try_from(args.agent_lease_duration).unwrap_or(i32::MAX),
    };
    let controllers = run_controllers(ctx, settings, shutdown.clone());
    tokio::pin!(controllers);
    let result = tokio::select! {
        done = &mut controllers => done,
        lost = elector.hold() => Err(OperatorError::LeaseLost(lost)),
    };
    metrics.set_leader(false);
    if result.is_ok() {
        elector.release().await;
        tracing::info!("controllers stopped; shut down cleanly");
    }
    result
}

async fn run_controllers(
    ctx: Arc<Context>,
    node_settings: controller::node::NodeSettings,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let nodes = controller::node::run(ctx.clone(), node_settings, shutdown.clone());
    // DNS registration reads allocations and never blocks them.
    let dns = controller::dns::run(ctx.clone(), shutdown.clone());
    let (addresses, node_store, workload_nodes) = address_controllers(ctx.clone(), shutdown.clone())?;
    let roles_api: Api<GuardedRole> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // One Role cache feeds both controllers; its subscribers hear of a change
    // only after the cache holds it.
    let (roles, writer) = reflector::store_shared(16 * 1024);
    let subscribe = || writer.subscribe().ok_or(OperatorError::SharedCache);
    let (role_own, role_siblings, workload_roles) = (subscribe()?, subscribe()?, subscribe()?);
    let stop = shutdown.clone();
    let role_reflector = async move {
        let stream = watcher(roles_api, watcher::Config::default())
            .default_backoff()
            .reflect_shared(writer)
            .take_until(async move { stop.cancelled().await });
        stream
            .for_each(|event| {
                if let Err(err) = event {
                    tracing::warn!(error = %err, "Role watch failed; retrying with backoff");
                }
                futures::future::ready(())
            })
            .await;
    };
    let workload_ctx = ctx.clone();
    let workload_watches = controller::workload::Watches {
        roles: roles.clone(),
        role_changes: workload_roles,
        nodes: node_store.clone(),
        node_changes: workload_nodes,
    };
    let workload_shutdown = shutdown.clone();
    let workloads = async move {
        // Planning against half-filled caches would report roles as missing
        // and nodes as gone.
        tokio::select! {
            _ = workload_shutdown.cancelled() => return,
            _ = async { tokio::join!(workload_watches.roles.wait_until_ready(), workload_watches.nodes.wait_until_ready()) } => {}
        }
        controller::workload::run(workload_ctx, workload_watches, workload_shutdown).await
    };
    tokio::join!(
        role_reflector,
        controller::role::run(ctx, roles, role_own, role_siblings, shutdown),
        workloads,
        nodes,
        addresses,
        dns
    );
    Ok(())
}

/// The Network and node-network controllers, on one BareMetalNode cache and
/// one Network cache; they start once both caches are filled, since an empty
/// node cache would release every address. The node cache (and a
/// subscription to it) is returned for the Workload controller.
#[allow(clippy::type_complexity)]
fn address_controllers(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<
    (
        impl Future<Output = ()>,
        reflector::Store<kube::core::DeserializeGuard<crate::api::BareMetalNode>>,
        reflector::ReflectHandle<kube::core::DeserializeGuard<crate::api::BareMetalNode>>,
    ),
    OperatorError,
> {
    use controller::cache::{OnDelete, reflect};
    use controller::{network, node_network};
    let (nodes, node_writer) = reflector::store_shared(16 * 1024);
    let (networks, network_writer) = reflector::store_shared(1024);
    let (mut deleted_nodes, mut deleted_networks) = (OnDelete::default(), OnDelete::default());
    let node_changes = || node_writer.subscribe().ok_or(OperatorError::SharedCache);
    let network_changes = || network_writer.subscribe().ok_or(OperatorError::SharedCache);
    let network_watches = network::Watches {
        networks: networks.clone(),
        network_changes: network_changes()?,
        group_changes: network_changes()?,
        nodes: nodes.clone(),
        node_changes: node_changes()?,
        deleted_nodes: deleted_nodes.subscribe(),
        deleted_networks: deleted_networks.subscribe(),
    };
    let node_network_watches = node_network::Watches {
        nodes: nodes.clone(),
        node_changes: node_changes()?,
        networks: networks.clone(),
        network_changes: network_changes()?,
        deleted_networks: deleted_networks.subscribe(),
    };
    let (node_api, network_api) = match &ctx.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let for_workloads = (nodes.clone(), node_changes()?);
    let node_reflector = reflect("BareMetalNode", node_api, node_writer, deleted_nodes, shutdown.clone());
    let network_reflector = reflect("Network", network_api, network_writer, deleted_networks, shutdown.clone());
    let controllers = async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async { tokio::join!(nodes.wait_until_ready(), networks.wait_until_ready()) } => {}
        }
        tokio::join!(
            network::run(ctx.clone(), network_watches, shutdown.clone()),
            node_network::run(ctx, node_network_watches, shutdown)
        );
    };
    Ok((
        async move {
            tokio::join!(node_reflector, network_reflector, controllers);
        },
        for_workloads.0,
        for_workloads.1,
    ))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "girder".into());
    format!("{host}-{}", std::process::id())
}

pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
