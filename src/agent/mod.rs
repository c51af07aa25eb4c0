//! `girder agent`: runs on the machine (girder's network-booted ramdisk, then
//! the installed system), reports its inventory, writes images, wipes disks
//! and reports results to its own BareMetalNode; it runs the role tasks the
//! annealer asks of its node ([`tasks`]).
//!
//! It speaks the Kubernetes API itself, as its own node and nothing else:
//! credentials come from girder pxe once per session ([`link`]), the work
//! from `status.provisioning.run` of its node (watched by name), the reports
//! go to `status.agent` (server-side apply, field manager `girder-agent`),
//! the heartbeat to its Lease. When the session ends (the operator deletes
//! the session's Secret, or opens another), the ramdisk's agent syncs and
//! powers the machine off; the installed system's agent goes idle.

pub mod boot;
pub mod disks;
pub mod image;
pub mod inventory;
pub mod link;
pub mod partition;
pub mod protocol;
pub mod runs;
pub mod seed;
pub mod tasks;
pub mod wipe;
pub mod work;

use crate::api::BareMetalNode;
use crate::api::provisioning::{AgentRun, AgentStatus, BootSource, RunReport, RunState};
use boot::BootParams;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use link::LinkError;
use protocol::{Credentials, EnrolRequest};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Field manager of everything the agent writes.
pub const MANAGER: &str = "girder-agent";

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The kernel command line to read girder's boot parameters from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Credentials given to the installed system (the `girder-agent.json` of
    /// its cloud-init seed); without it the agent enrols at girder pxe.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Where the agent keeps its credentials and its runs (tmpfs in the ramdisk).
    #[arg(long, default_value = "/run/girder-agent")]
    state_dir: PathBuf,
    /// Root of the system to inventory and write to (`/sys`, `/proc` and
    /// `/dev` below it); another directory only for tests.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Power the machine off when the session ends (girder's ramdisk does).
    #[arg(long)]
    poweroff_when_done: bool,
    /// Log format.
    #[arg(long, env = "GIRDER_LOG_FORMAT", value_enum, default_value_t = crate::operator::LogFormat::Json)]
    log_format: crate::operator::LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read the kernel command line {path}: {source}")]
    Cmdline { path: PathBuf, source: std::io::Error },
    #[error(
        "no credentials: the kernel command line has no girder.pxe, girder.mac and girder.nonce (girder's iPXE script sets them) and no --credentials file was given"
    )]
    NoCredentials,
    #[error(transparent)]
    Link(#[from] LinkError),
}

pub fn main(args: AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::operator::init_logging(args.log_format);
    // The process-wide rustls provider, for any client that asks for it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(AgentError::Runtime)?;
    let poweroff = args.poweroff_when_done;
    let result = runtime.block_on(run(args));
    // The session is over, or girder pxe will never enrol this boot: the
    // ramdisk has nothing left to do (the operator boots the machine again
    // when it wants it). Anything else ends the process, and the ramdisk's
    // init starts the agent again.
    let finished = match &result {
        Ok(()) => {
            tracing::info!("the agent session is over");
            true
        }
        Err(err) => {
            tracing::error!(error = %err, "agent stopped");
            matches!(err, AgentError::Link(LinkError::Refused { .. } | LinkError::Revoked(_)))
        }
    };
    if poweroff && finished {
        power_off();
    }
    result.map_err(Into::into)
}

/// Syncs the disks and powers the machine off (girder's ramdisk only).
fn power_off() {
    tracing::info!("powering the machine off");
    nix::unistd::sync();
    // Returns only on failure.
    let Err(err) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(error = %err, "cannot power the machine off");
}

/// The agent's credentials: kept from earlier in this boot, else the file
/// the installed system was given, else enrolment at girder pxe.
async fn credentials(args: &AgentArgs, params: &BootParams) -> Result<Credentials, AgentError> {
    if let Some(kept) = link::kept(&args.state_dir) {
        tracing::info!(node = %format!("{}/{}", kept.namespace, kept.node), session = %kept.session, "using the credentials kept in this boot");
        return Ok(kept);
    }
    if let Some(given) = args.credentials.as_deref().and_then(link::load) {
        link::store(&args.state_dir, &given)?;
        return Ok(given);
    }
    let (Some(pxe), Some(mac), Some(nonce)) = (&params.pxe, &params.mac, &params.nonce) else {
        return Err(AgentError::NoCredentials);
    };
    let http = http_client()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| LinkError::Unreachable { url: pxe.clone(), detail: e.to_string() })?;
    let request = EnrolRequest { mac: mac.clone(), nonce: nonce.clone() };
    tracing::info!(%pxe, %mac, node = params.node.as_deref().unwrap_or("unknown"), "enrolling at girder pxe");
    let pause = |attempt: u32| Duration::from_secs(u64::from(attempt.min(6)).pow(2).clamp(1, 30));
    let credentials = link::enrol(&http, pxe, &request, pause).await?;
    link::store(&args.state_dir, &credentials)?;
    tracing::info!(node = %format!("{}/{}", credentials.namespace, credentials.node), session = %credentials.session, server = %credentials.server, "enrolled");
    Ok(credentials)
}

/// The one way the agent builds an HTTP client (enrolment, image downloads):
/// TLS through rustls and the system's trust store, if it has one.
pub(crate) fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(crate::tls::platform_or_refusing())
}

/// What every part of a running agent shares.
pub struct Agent {
    pub client: Client,
    pub credentials: Credentials,
    pub boot_source: BootSource,
    pub root: inventory::SystemRoot,
    pub state_dir: PathBuf,
    nodes: Api<BareMetalNode>,
    /// What the agent last reported, so each report carries all of it.
    reported: tokio::sync::Mutex<AgentStatus>,
    /// Fired when the session is over (revoked, or another opened).
    pub over: CancellationToken,
    /// When this agent started, as its node's `status.agent.connected`
    /// says: each role report carries it.
    pub since: String,
}

impl Agent {
    /// Sends `status.agent` as it stands after `edit`, retrying transient
    /// failures; an error only when the session is over.
    pub async fn report(&self, edit: impl FnOnce(&mut AgentStatus)) -> Result<(), LinkError> {
        let mut reported = self.reported.lock().await;
        edit(&mut reported);
        let body = serde_json::json!({
            "apiVersion": "girder.dev/v1alpha1",
            "kind": "BareMetalNode",
            "status": { "agent": &*reported },
        });
        let params = PatchParams::apply(MANAGER).force();
        let write = || async { self.nodes.patch_status(&self.credentials.node, &params, &Patch::Apply(&body)).await };
        self.write_until_done("report", write, |refused| {
            // The admission policy refused: this session is not the node's any more.
            (refused.code == 403 || refused.code == 422).then(|| Err(LinkError::Revoked(refused.message.clone())))
        })
        .await
    }

    /// Does `write` (a status patch) until it succeeds, retrying transient
    /// failures with a capped backoff. `settle` ends it on an answer of the
    /// API server (`None`: retry). An error only when the session is over.
    pub(crate) async fn write_until_done<T, F, Fut>(
        &self,
        what: &str,
        mut write: F,
        settle: impl Fn(&kube::core::Status) -> Option<Result<(), LinkError>>,
    ) -> Result<(), LinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut wait = Duration::from_secs(1);
        loop {
            let err = match write().await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(answer)) if let Some(outcome) = settle(&answer) => return outcome,
                Err(err) => err,
            };
            match LinkError::from_api(err) {
                LinkError::Revoked(why) => return Err(LinkError::Revoked(why)),
                err => {
                    tracing::warn!(error = %err, "cannot {what}; trying again");
                    tokio::select! {
                        _ = self.over.cancelled() => return Err(err),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Reports the state of `report`'s run, keeping the rest.
    pub async fn report_run(&self, report: RunReport) -> Result<(), LinkError> {
        self.report(|status| status.run = Some(report)).await
    }
}

async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let cmdline = std::fs::read_to_string(&args.cmdline)
        .map_err(|source| AgentError::Cmdline { path: args.cmdline.clone(), source })?;
    let params = BootParams::parse(&cmdline);
    let credentials = credentials(&args, &params).await?;
    let client = link::client(&credentials, &args.state_dir)?;
    let root = inventory::SystemRoot::new(args.root.clone());
    let nodes: Api<BareMetalNode> = Api::namespaced(client.clone(), &credentials.namespace);
    // Whole seconds: what the API server keeps of a Time, so the operator
    // reads back the same instant the role reports carry.
    let started = Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default());
    let since = started.0.to_string();
    let agent = Arc::new(Agent {
        reported: tokio::sync::Mutex::new(AgentStatus {
            session: credentials.session.clone(),
            boot_source: Some(params.boot_source()),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            connected: Some(started),
            inventory: Some(inventory::collect(&root)),
            run: None,
        }),
        client,
        credentials,
        boot_source: params.boot_source(),
        root,
        state_dir: args.state_dir.clone(),
        nodes,
        over: CancellationToken::new(),
        since,
    });
    tracing::info!(boot_source = ?agent.boot_source, "connected; reporting the inventory");
    // The first heartbeat and report tell at once whether the session is alive.
    let lease = link::heartbeat(&agent.client, &agent.credentials).await?;
    agent.report(|_| {}).await?;
    let heartbeats = tokio::spawn(keep_alive(agent.clone(), lease));
    let renewals = tokio::spawn(renew_token(agent.clone()));
    let roles = tokio::spawn(tasks::follow(agent.clone()));
    let result = work_loop(agent.clone()).await;
    agent.over.cancel();
    if let Ok(Err(err)) = roles.await {
        tracing::info!(error = %err, "role tasks stopped");
    }
    let _ = heartbeats.await;
    let _ = renewals.await;
    match result {
        Ok(()) | Err(LinkError::Revoked(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Renews the heartbeat Lease three times per Lease duration.
async fn keep_alive(agent: Arc<Agent>, lease: Duration) {
    let mut every = lease / 3;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = agent.over.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match link::heartbeat(&agent.client, &agent.credentials).await {
            Ok(duration) => {
                every = duration / 3;
                failures = 0;
            }
            Err(LinkError::Revoked(why)) => {
                tracing::info!(%why, "the session is revoked");
                agent.over.cancel();
                return;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %err, failures, "heartbeat failed");
            }
        }
    }
}

/// Renews the token at two thirds of its life.
async fn renew_token(agent: Arc<Agent>) {
    let life = Duration::from_secs(u64::try_from(crate::pxe::enrol::TOKEN_SECONDS).unwrap_or(3600));
    let mut every = life * 2 / 3;
    loop {
        tokio::select! {
            _ = agent.over.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match link::renew(&agent.client, &agent.credentials, &agent.state_dir).await {
            Ok(()) => every = life * 2 / 3,
            Err(LinkError::Revoked(why)) => {
                tracing::info!(%why, "the session is revoked");
                agent.over.cancel();
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew the token; trying again in a minute");
                every = Duration::from_secs(60);
            }
        }
    }
}

/// What an agent sees of the objects a watch selects: `None` until they
/// are first listed, then every one by name (relists included).
pub(crate) type Seen<K> = Option<std::collections::BTreeMap<String, Arc<K>>>;

/// Mirrors the objects `config` selects from `api` into a watch channel
/// until `over` is cancelled; a failed watch is retried every 2 s.
pub(crate) fn mirror<K>(
    api: Api<K>,
    config: watcher::Config,
    over: CancellationToken,
    what: &'static str,
) -> (watch::Receiver<Seen<K>>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (latest, changes) = watch::channel::<Seen<K>>(None);
    let mut stream = watcher::watcher(api, config).boxed();
    let task = tokio::spawn(async move {
        let mut pending = std::collections::BTreeMap::new();
        loop {
            let event = tokio::select! {
                _ = over.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(watcher::Event::Apply(object))) => latest.send_modify(|seen| {
                    seen.get_or_insert_default().insert(kube::ResourceExt::name_any(&object), Arc::new(object));
                }),
                Some(Ok(watcher::Event::Delete(object))) => latest.send_modify(|seen| {
                    seen.get_or_insert_default().remove(&kube::ResourceExt::name_any(&object));
                }),
                Some(Ok(watcher::Event::Init)) => pending.clear(),
                Some(Ok(watcher::Event::InitApply(object))) => {
                    pending.insert(kube::ResourceExt::name_any(&object), Arc::new(object));
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let _ = latest.send(Some(std::mem::take(&mut pending)));
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "watching {what} failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                None => return,
            }
        }
    });
    (changes, task)
}

/// Follows the node and does each run asked of this session, once.
async fn work_loop(agent: Arc<Agent>) -> Result<(), LinkError> {
    let journal = runs::Journal::new(&agent.state_dir);
    let name = agent.credentials.node.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (mut changes, follow) = mirror(agent.nodes.clone(), config, agent.over.clone(), "the node");
    let mut done: Option<String> = None;
    let result = loop {
        tokio::select! {
            _ = agent.over.cancelled() => break Ok(()),
            changed = changes.changed() => if changed.is_err() { break Ok(()) },
        }
        let node = match changes.borrow_and_update().as_ref() {
            None => continue,
            Some(seen) => seen.get(&name).cloned(),
        };
        let Some(node) = node else {
            tracing::info!("the node was deleted");
            break Ok(());
        };
        let provisioning = node.status.as_ref().and_then(|s| s.provisioning.as_ref());
        if provisioning.and_then(|p| p.session.as_deref()) != Some(agent.credentials.session.as_str()) {
            tracing::info!("the operator closed this agent session");
            break Ok(());
        }
        let Some(run) = provisioning.and_then(|p| p.run.clone()) else { continue };
        if done.as_deref() == Some(run.id.as_str()) {
            continue;
        }
        if let Err(err) = take_up(&agent, &journal, &run, &node).await {
            break Err(err);
        }
        done = Some(run.id);
    };
    agent.over.cancel();
    let _ = follow.await;
    result
}

/// Does `run` unless the journal says it was done (then its report is sent
/// again) or interrupted (then that is reported).
async fn take_up(
    agent: &Agent,
    journal: &runs::Journal,
    run: &AgentRun,
    node: &BareMetalNode,
) -> Result<(), LinkError> {
    match journal.get(&run.id) {
        Some(runs::Entry::Done { report }) => return agent.report_run(report).await,
        Some(runs::Entry::Started) => return agent.report_run(runs::interrupted(&run.id)).await,
        None => {}
    }
    if agent.boot_source == BootSource::Disk && run.action != crate::api::provisioning::RunAction::Inspect {
        // Disks are written and wiped only from girder's ramdisk.
        tracing::info!(run = %run.id, action = ?run.action, "not from the installed system; waiting for the ramdisk");
        return Ok(());
    }
    journal.started(&run.id).map_err(|source| LinkError::State { path: agent.state_dir.clone(), source })?;
    tracing::info!(run = %run.id, action = ?run.action, "run started");
    let started = RunReport {
        id: run.id.clone(),
        state: RunState::Running,
        step: Some("starting".into()),
        reason: None,
        message: None,
        root_device: None,
        steps: Vec::new(),
    };
    agent.report_run(started).await?;
    let report = work::execute(agent, run, node).await;
    tracing::info!(
        run = %run.id,
        state = ?report.state,
        reason = report.reason.as_deref().unwrap_or(""),
        peak_rss_kib = peak_rss_kib().unwrap_or(0),
        "run finished"
    );
    journal.done(&report).map_err(|source| LinkError::State { path: agent.state_dir.clone(), source })?;
    agent.report_run(report).await
}

/// The process's peak resident memory (VmHWM), in KiB, where /proc says it.
pub fn peak_rss_kib() -> Option<u64> {
    peak_rss_kib_of("self")
}

/// The peak resident set size of `process` (a pid, or `self`), in KiB.
pub fn peak_rss_kib_of(process: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}
