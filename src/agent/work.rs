//! What a run does on the machine: report the inventory (Inspect), write an
//! image and its cloud-init seed to the root disk (Deploy), wipe the disks
//! (Clean). Each step is timed into the run's report, so a slow install
//! says where its time went.

use super::{Agent, disks, image, link, partition, seed, wipe};
use crate::api::BareMetalNode;
use crate::api::node::CleaningMode;
use crate::api::provisioning::{AgentRun, RunAction, RunReport, RunState, StepTiming};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A failed step: its reason (CamelCase) and what happened.
struct Failure {
    reason: String,
    message: String,
}

impl Failure {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_string(), message: message.into() }
    }
}

/// Timings of the steps of one run.
#[derive(Default)]
struct Steps(Vec<StepTiming>);

impl Steps {
    fn push(
        &mut self,
        name: &str,
        started: jiff::Timestamp,
        took: Duration,
        bytes: Option<u64>,
        message: Option<String>,
    ) {
        self.0.push(StepTiming {
            name: name.to_string(),
            started: Some(Time(started)),
            milliseconds: Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
            bytes: bytes.and_then(|b| i64::try_from(b).ok()),
            message,
        });
    }
}

/// Does `run` on this machine and says how it went.
pub async fn execute(agent: &Agent, run: &AgentRun, node: &BareMetalNode) -> RunReport {
    let mut steps = Steps::default();
    let mut report = RunReport {
        id: run.id.clone(),
        state: RunState::Succeeded,
        step: None,
        reason: None,
        message: None,
        root_device: None,
        steps: Vec::new(),
    };
    let outcome = match run.action {
        // The inventory went with the agent's first report.
        RunAction::Inspect => Ok(()),
        RunAction::Deploy => deploy(agent, run, node, &mut steps, &mut report).await,
        RunAction::Clean => clean(agent, run.cleaning.unwrap_or_default(), &mut steps).await,
    };
    if let Err(failure) = outcome {
        report.state = RunState::Failed;
        report.step = steps.0.last().map(|s| s.name.clone());
        report.reason = Some(failure.reason);
        report.message = Some(failure.message);
    }
    report.steps = steps.0;
    report
}

/// Tells the operator which step the run is at (best effort: the report at
/// the end is the one that counts).
async fn at_step(agent: &Agent, run: &AgentRun, step: String) {
    let running = RunReport {
        id: run.id.clone(),
        state: RunState::Running,
        step: Some(step),
        reason: None,
        message: None,
        root_device: None,
        steps: Vec::new(),
    };
    if let Err(err) = agent.report_run(running).await {
        tracing::warn!(error = %err, "cannot report progress");
    }
}

async fn deploy(
    agent: &Agent,
    run: &AgentRun,
    node: &BareMetalNode,
    steps: &mut Steps,
    report: &mut RunReport,
) -> Result<(), Failure> {
    let Some(spec) = run.image.as_ref() else {
        return Err(Failure::new("NoImage", "the run names no image"));
    };
    // Which disk.
    let all = disks::list(&agent.root);
    let disk = disks::select(&all, run.root_device_hints.as_ref())
        .map_err(|err| Failure::new(err.reason(), err.to_string()))?
        .clone();
    let device_name = disk.device_name();
    report.root_device = Some(device_name.clone());
    tracing::info!(disk = %device_name, size = disk.size_bytes, serial = disk.serial.as_deref().unwrap_or(""), "root disk chosen");
    let user_data = user_data(agent, run).await?;

    // Download, write and verify, streamed together.
    at_step(agent, run, format!("download to {device_name}")).await;
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let progress = Arc::new(std::sync::Mutex::new(image::Progress { downloaded_bytes: 0, total_bytes: None }));
    let shown = progress.clone();
    let on_progress = move |p: image::Progress| {
        if let Ok(mut latest) = shown.lock() {
            *latest = p;
        }
    };
    let written = {
        let write = image::write_image(spec, &disk.path, &image::WriteOptions::default(), &on_progress);
        tokio::pin!(write);
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        loop {
            tokio::select! {
                done = &mut write => break done,
                _ = every.tick() => {
                    let p = progress.lock().map(|p| *p).unwrap_or(image::Progress { downloaded_bytes: 0, total_bytes: None });
                    let of = p.total_bytes.map(|t| format!(" of {} MiB", t >> 20)).unwrap_or_default();
                    at_step(agent, run, format!("download to {device_name}: {} MiB{of}", p.downloaded_bytes >> 20)).await;
                }
            }
        }
    };
    let written = match written {
        Ok(written) => written,
        Err(err) => {
            steps.push("download", started, clock.elapsed(), None, None);
            let failure = Failure::new(err.reason(), err.to_string());
            if matches!(err, image::ImageError::ChecksumMismatch { .. }) {
                // Nothing written past a failed verify may ever boot.
                let wiped = wipe_disk(&disk.path, CleaningMode::Metadata).map(|r| r.bytes_zeroed);
                let note = match wiped {
                    Ok(_) => format!("; {device_name} was wiped"),
                    Err(failure) => format!("; wiping {device_name} failed too: {}", failure.message),
                };
                return Err(Failure { message: failure.message + &note, ..failure });
            }
            return Err(failure);
        }
    };
    let resumed = (written.resumes > 0).then(|| format!("resumed {} times", written.resumes));
    steps.push("download", started, written.download_time, Some(written.downloaded_bytes), resumed);
    steps.push(
        "write",
        started,
        written.write_busy_time,
        Some(written.written_bytes),
        Some("busy time of the writes, alongside the download".into()),
    );
    steps.push(
        "verify",
        started,
        written.finish_time,
        None,
        Some(format!("{:?} {}", spec.checksum_type, written.digest)),
    );

    // The cloud-init seed, with what the installed system's agent needs.
    at_step(agent, run, format!("seed on {device_name}")).await;
    let seed_started = jiff::Timestamp::now();
    let seed_clock = Instant::now();
    let notes = write_seed(agent, node, &disk.path, &user_data).await?;
    steps.push("seed", seed_started, seed_clock.elapsed(), None, (!notes.is_empty()).then(|| notes.join("; ")));
    nix::unistd::sync();
    Ok(())
}

/// The run's user-data: the `userData` key of its Secret (none: empty).
async fn user_data(agent: &Agent, run: &AgentRun) -> Result<Vec<u8>, Failure> {
    let Some(reference) = &run.user_data else { return Ok(Vec::new()) };
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), &agent.credentials.namespace);
    let missing = |why: String| Failure::new("UserDataMissing", why);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|e| missing(format!("cannot read the user-data Secret {}: {e}", reference.name)))?
        .ok_or_else(|| missing(format!("the user-data Secret {} does not exist", reference.name)))?;
    let data = secret.data.unwrap_or_default();
    data.get("userData")
        .or_else(|| data.get("value"))
        .map(|v| v.0.clone())
        .ok_or_else(|| missing(format!("the Secret {} has no userData key", reference.name)))
}

async fn write_seed(
    agent: &Agent,
    node: &BareMetalNode,
    disk: &std::path::Path,
    user_data: &[u8],
) -> Result<Vec<String>, Failure> {
    let mut addresses = node.status.as_ref().map(|s| s.addresses.clone()).unwrap_or_default();
    // An interface named before the agent's inventory reached the node has
    // no MACs yet: this machine knows them.
    let nics = super::inventory::collect(&agent.root).nics;
    for address in addresses.iter_mut().filter(|a| a.macs.is_empty()) {
        if let Some(nic) = nics.iter().find(|n| n.name.is_some() && n.name == address.interface) {
            address.macs = vec![nic.mac.clone()];
        }
    }
    let instance = format!("girder-{}", agent.credentials.session);
    let rendered = seed::render(&instance, &agent.credentials.node, &addresses, user_data)
        .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
    // A fresh token, so the installed system has the most of its hour.
    link::renew(&agent.client, &agent.credentials, &agent.state_dir)
        .await
        .map_err(|e| Failure::new("SeedFailed", format!("cannot mint a token for the installed system: {e}")))?;
    let token = std::fs::read_to_string(link::token_path(&agent.state_dir)).unwrap_or_default();
    let credentials = protocol_credentials(agent, token.trim());
    let credentials = serde_json::to_vec_pretty(&credentials).map_err(|e| Failure::new("SeedFailed", e.to_string()))?;
    let disk = disk.to_path_buf();
    let files = rendered.files().into_iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect::<Vec<_>>();
    let notes = rendered.notes.clone();
    tokio::task::spawn_blocking(move || {
        let mut device = partition::Device::open(&disk).map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        let added = partition::append_partition(&mut device, seed::SEED_PARTITION_BYTES, "cidata")
            .map_err(|e| Failure::new(e.reason(), format!("cannot add the cloud-init seed partition: {e}")))?;
        let mut all: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        all.push(("girder-agent.json", &credentials));
        seed::write(&mut device, &added, &all).map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        Ok(notes)
    })
    .await
    .map_err(|e| Failure::new("SeedFailed", e.to_string()))?
}

fn protocol_credentials(agent: &Agent, token: &str) -> super::protocol::Credentials {
    super::protocol::Credentials { token: token.to_string(), ..agent.credentials.clone() }
}

fn wipe_disk(path: &std::path::Path, mode: CleaningMode) -> Result<wipe::WipeReport, Failure> {
    let mut device = partition::Device::open(path).map_err(|e| Failure::new(e.reason(), e.to_string()))?;
    let wiped = match mode {
        CleaningMode::Full => wipe::wipe_full(&mut device),
        _ => wipe::wipe_metadata(&mut device),
    };
    wiped.map_err(|e| Failure::new(e.reason(), e.to_string()))
}

/// Wipes every disk the machine has (not removable or read-only ones).
async fn clean(agent: &Agent, mode: CleaningMode, steps: &mut Steps) -> Result<(), Failure> {
    if mode == CleaningMode::Disabled {
        return Ok(());
    }
    for disk in disks::list(&agent.root).into_iter().filter(|d| !d.removable && !d.read_only) {
        let started = jiff::Timestamp::now();
        let path = disk.path.clone();
        let wiped = tokio::task::spawn_blocking(move || wipe_disk(&path, mode))
            .await
            .map_err(|e| Failure::new("DiskWipeFailed", e.to_string()))?;
        let name = format!("wipe {}", disk.device_name());
        match wiped {
            Ok(wiped) => {
                let note = (!wiped.notes.is_empty()).then(|| wiped.notes.join("; "));
                steps.push(&name, started, wiped.elapsed, Some(wiped.bytes_zeroed), note);
            }
            Err(failure) => {
                steps.push(&name, started, Duration::ZERO, None, None);
                return Err(failure);
            }
        }
    }
    Ok(())
}
