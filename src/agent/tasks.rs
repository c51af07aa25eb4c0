//! Role tasks: the agent follows its node's NodeRoles (field selector
//! `spec.node`) and does each run the operator asks (`status.run`), once.
//!
//! A run is the role's script, started in its own process group in a
//! working directory kept per binding (`<state>/roles/<binding>`, so a task
//! can keep what it made, such as a key that never leaves the machine). The
//! inputs come on stdin and in `$GIRDER_INPUTS`; outputs are the JSON object
//! the task writes to `$GIRDER_OUTPUTS`, or else the last line of its stdout
//! that is a JSON object. The timeout kills the whole process group
//! (SIGTERM, then SIGKILL 5 s later); a failed attempt is retried `retries`
//! times with a capped backoff. A daemon a task starts must leave the
//! process group (`setsid`) and close stdout and stderr, or the timeout ends
//! it too.
//!
//! The result is kept in the journal before it is reported, and the report
//! is retried; an agent that restarts re-sends a finished run's report, and
//! says a run it had started was interrupted instead of running it again
//! (the operator decides whether it runs again: never for a destructive
//! task).

use super::Agent;
use super::link::LinkError;
use super::runs::{Entry, Journal};
use crate::api::noderole::{
    NodeRole, OUTPUTS_NODE_ANNOTATION, RoleReport, RoleRun, RoleRunState, SecretOutputs, secret_outputs_name,
};
use crate::graph::BindingState;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most of a task's output kept for its status.
pub const LOG_TAIL_BYTES: usize = 4096;
/// The most of stdout read for outputs.
const STDOUT_BYTES: usize = 1 << 20;
/// How often a running task's log tail is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Follows this node's bindings and does their runs, one at a time, until
/// the session is over.
pub async fn follow(agent: Arc<Agent>) -> Result<(), LinkError> {
    let api: Api<NodeRole> = Api::namespaced(agent.client.clone(), &agent.credentials.namespace);
    let journal: Journal<RoleReport> = Journal::named(&agent.state_dir, "role-runs");
    let config = watcher::Config::default().fields(&format!("spec.node={}", agent.credentials.node));
    let (mut changes, follow) = super::mirror(api.clone(), config, agent.over.clone(), "this node's roles");
    let mut done: BTreeSet<String> = BTreeSet::new();
    let result = loop {
        let next = {
            let all = changes.borrow_and_update();
            all.iter().flat_map(|all| all.values()).find_map(|b| wanted(b, &done).map(|run| (b.clone(), run)))
        };
        let Some((binding, run)) = next else {
            tokio::select! {
                _ = agent.over.cancelled() => break Ok(()),
                changed = changes.changed() => if changed.is_err() { break Ok(()) },
            }
            continue;
        };
        match take_up(&agent, &api, &journal, &binding, &run).await {
            Ok(()) => {
                done.insert(run.id.clone());
            }
            Err(err) => break Err(err),
        }
    };
    agent.over.cancel();
    let _ = follow.await;
    result
}

/// The run of `binding` this agent still owes, if any.
fn wanted(binding: &NodeRole, done: &BTreeSet<String>) -> Option<RoleRun> {
    let status = binding.status.as_ref()?;
    let run = status.run.as_ref()?;
    if status.state != Some(BindingState::Running) || done.contains(&run.id) {
        return None;
    }
    // Finished and reported; a report of Running for this run was sent by
    // an earlier agent (see `take_up`).
    let reported = status.report.as_ref().filter(|r| r.id == run.id);
    if reported.is_some_and(|r| r.state != RoleRunState::Running) {
        return None;
    }
    Some(run.clone())
}

/// Does `run` unless it was done (its report is sent again) or started by
/// an earlier agent (then it was interrupted, and that is reported).
async fn take_up(
    agent: &Agent,
    api: &Api<NodeRole>,
    journal: &Journal<RoleReport>,
    binding: &NodeRole,
    run: &RoleRun,
) -> Result<(), LinkError> {
    let name = binding.name_any();
    let state_error = |source| LinkError::State { path: agent.state_dir.clone(), source };
    let earlier = binding.status.as_ref().and_then(|s| s.report.as_ref()).filter(|r| r.id == run.id);
    match journal.get(&run.id) {
        Some(Entry::Done { report }) => return send(agent, api, &name, &report).await,
        Some(Entry::Started) => return send(agent, api, &name, &interrupted(agent, run)).await,
        None if earlier.is_some() => {
            // Reported as started, and this machine has no memory of it:
            // the agent (or the machine) restarted in the middle.
            return send(agent, api, &name, &interrupted(agent, run)).await;
        }
        None => {}
    }
    journal.started(&run.id).map_err(state_error)?;
    tracing::info!(binding = %name, run = %run.id, role = %binding.spec.role, "task started");
    let started = MicroTime(jiff::Timestamp::now());
    let mut report = RoleReport {
        id: run.id.clone(),
        state: RoleRunState::Running,
        attempt: Some(1),
        exit_code: None,
        reason: None,
        message: Some("started".into()),
        log_tail: None,
        started: Some(started.clone()),
        milliseconds: None,
        outputs: None,
        secret_outputs: None,
        agent: Some(agent.since.clone()),
    };
    send(agent, api, &name, &report).await?;
    let dir = agent.state_dir.join("roles").join(&name);
    let clock = Instant::now();
    let attempts = run.task.retries.max(0) + 1;
    for attempt in 1..=attempts {
        report.attempt = Some(attempt);
        let outcome = tokio::select! {
            outcome = attempt_task(agent, api, &name, binding, run, &dir, attempt, &report) => outcome,
            _ = agent.over.cancelled() => {
                // The session ended mid-run: the journal says Started, so the
                // next agent reports it interrupted.
                return Ok(());
            }
        };
        report.exit_code = outcome.exit_code;
        report.log_tail = Some(outcome.log_tail);
        match outcome.result {
            Ok(outputs) => {
                report.state = RoleRunState::Succeeded;
                report.outputs = Some(outputs);
                report.reason = None;
                report.message = Some(format!("succeeded on attempt {attempt} of {attempts}"));
                break;
            }
            Err((reason, message)) => {
                report.state = RoleRunState::Failed;
                report.reason = Some(reason.to_string());
                report.message = Some(format!("attempt {attempt} of {attempts}: {message}"));
                if attempt < attempts {
                    let pause =
                        Duration::from_secs(1u64 << (attempt - 1).clamp(0, 5) as u32).min(Duration::from_secs(30));
                    tracing::warn!(binding = %name, attempt, %message, "task failed; trying again in {pause:?}");
                    report.state = RoleRunState::Running;
                    let _ = send(agent, api, &name, &report).await;
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = agent.over.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }
    if report.state == RoleRunState::Succeeded {
        // Before the result is journaled: the journal never holds them, and a
        // restart before this point reports the run interrupted.
        let mut outputs = report.outputs.take().unwrap_or_else(|| serde_json::json!({}));
        match keep_secret(agent, binding, run, &mut outputs).await {
            Ok(secret) => {
                report.outputs = Some(outputs);
                report.secret_outputs = secret;
            }
            Err((reason, message)) => {
                report.state = RoleRunState::Failed;
                report.reason = Some(reason.to_string());
                report.message = Some(message);
            }
        }
    }
    report.milliseconds = Some(i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX));
    tracing::info!(binding = %name, run = %run.id, state = ?report.state, reason = report.reason.as_deref().unwrap_or(""), milliseconds = report.milliseconds, "task finished");
    journal.finished(&run.id, &report).map_err(state_error)?;
    send(agent, api, &name, &report).await
}

fn interrupted(agent: &Agent, run: &RoleRun) -> RoleReport {
    RoleReport {
        id: run.id.clone(),
        state: RoleRunState::Failed,
        attempt: None,
        exit_code: None,
        reason: Some("AgentRestarted".into()),
        message: Some("the agent restarted while this run was under way".into()),
        log_tail: None,
        started: None,
        milliseconds: None,
        outputs: None,
        secret_outputs: None,
        agent: Some(agent.since.clone()),
    }
}

/// Sends `status.report` of binding `name`, retrying transient failures;
/// an error only when the session is over.
async fn send(agent: &Agent, api: &Api<NodeRole>, name: &str, report: &RoleReport) -> Result<(), LinkError> {
    let body = serde_json::json!({
        "apiVersion": "girder.dev/v1alpha1",
        "kind": "NodeRole",
        "status": { "report": report },
    });
    let params = PatchParams::apply(super::MANAGER).force();
    let write = || async { api.patch_status(name, &params, &Patch::Apply(&body)).await };
    let what = format!("report on binding {name}");
    agent
        .write_until_done(&what, write, |answer| match answer.code {
            404 => {
                tracing::info!(binding = %name, "the binding is gone; nothing to report to");
                Some(Ok(()))
            }
            403 | 422 => {
                // The admission policy refuses a report for a run the
                // operator no longer asks (it asked another, or gave up on
                // this one): nothing will take it, so it is dropped.
                tracing::warn!(binding = %name, run = %report.id, refused = %answer.message, "the report was refused; dropping it");
                Some(Ok(()))
            }
            _ => None,
        })
        .await
}

/// How long a Secret the operator just granted may take to be readable or
/// writable (the API server's authorizer follows Roles through a cache).
const GRANT_PATIENCE: Duration = Duration::from_secs(15);

/// `inputs` with each parent's sensitive outputs, read from the Secret its
/// `secretOutputs` names, added to that parent's `outputs` (as strings).
async fn with_secrets(agent: &Agent, inputs: &serde_json::Value) -> Result<serde_json::Value, String> {
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), &agent.credentials.namespace);
    let mut inputs = inputs.clone();
    let Some(parents) = inputs.get_mut("parents").and_then(serde_json::Value::as_object_mut) else {
        return Ok(inputs);
    };
    for parent in parents.values_mut() {
        let entries: Vec<&mut serde_json::Value> = match parent {
            serde_json::Value::Array(all) => all.iter_mut().collect(),
            one => vec![one],
        };
        for entry in entries {
            let Some(name) = entry.pointer("/secretOutputs/secret").and_then(|v| v.as_str()).map(str::to_string) else {
                continue;
            };
            let deadline = Instant::now() + GRANT_PATIENCE;
            let secret = loop {
                match secrets.get(&name).await {
                    Ok(secret) => break secret,
                    Err(kube::Error::Api(s)) if (s.code == 403 || s.code == 404) && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(err) => return Err(format!("cannot read Secret {name} (a parent's sensitive outputs): {err}")),
                }
            };
            if !entry.get("outputs").is_some_and(serde_json::Value::is_object) {
                entry["outputs"] = serde_json::json!({});
            }
            if let Some(outputs) = entry["outputs"].as_object_mut() {
                for (key, value) in secret.data.unwrap_or_default() {
                    outputs.insert(key, serde_json::Value::String(String::from_utf8_lossy(&value.0).into_owned()));
                }
            }
        }
    }
    Ok(inputs)
}

/// Takes the outputs the task declares sensitive out of `outputs` and puts
/// them, as strings, in the binding's Secret (which the operator made,
/// owned by the binding, when it granted it); says where they went.
async fn keep_secret(
    agent: &Agent,
    binding: &NodeRole,
    run: &RoleRun,
    outputs: &mut serde_json::Value,
) -> Result<Option<SecretOutputs>, (&'static str, String)> {
    let Some(map) = outputs.as_object_mut().filter(|_| !run.task.sensitive_outputs.is_empty()) else {
        return Ok(None);
    };
    let mut data = BTreeMap::new();
    for key in &run.task.sensitive_outputs {
        let Some(value) = map.remove(key) else { continue };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
            return Err((
                "OutputsInvalid",
                format!("sensitive output {key:?} cannot be a Secret key (letters, digits, '-', '_' and '.' only)"),
            ));
        }
        let text = match value {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        };
        data.insert(key.clone(), k8s_openapi::ByteString(text.into_bytes()));
    }
    let name = secret_outputs_name(&binding.name_any());
    let mut secret = Secret { type_: Some("Opaque".into()), data: Some(data), ..Default::default() };
    secret.metadata.name = Some(name.clone());
    secret.metadata.annotations =
        Some(BTreeMap::from([(OUTPUTS_NODE_ANNOTATION.to_string(), binding.spec.node.clone())]));
    secret.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "girder.dev/v1alpha1".into(),
        kind: "NodeRole".into(),
        name: binding.name_any(),
        uid: binding.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    }]);
    let keys: Vec<String> = secret.data.iter().flat_map(|d| d.keys().cloned()).collect();
    let body = serde_json::to_value(&secret).map_err(|e| ("OutputsInvalid", e.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), &agent.credentials.namespace);
    let params = PatchParams::apply(super::MANAGER).force();
    let deadline = Instant::now() + GRANT_PATIENCE;
    loop {
        match secrets.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(written) => {
                let version = written.resource_version().unwrap_or_default();
                tracing::info!(binding = %binding.name_any(), secret = %name, keys = keys.len(), "sensitive outputs kept in a Secret");
                return Ok(Some(SecretOutputs { secret: name, version, keys }));
            }
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(secret = %name, error = %err, "cannot write the sensitive outputs yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = agent.over.cancelled() => return Err(("OutputsUnwritable", "the agent session ended".into())),
                }
            }
            Err(err) => {
                return Err((
                    "OutputsUnwritable",
                    format!("cannot write the sensitive outputs to Secret {name}: {err}"),
                ));
            }
        }
    }
}

/// How one attempt ended.
struct Attempt {
    exit_code: Option<i32>,
    log_tail: String,
    /// The outputs, or a reason and message.
    result: Result<serde_json::Value, (&'static str, String)>,
}

#[allow(clippy::too_many_arguments)]
async fn attempt_task(
    agent: &Agent,
    api: &Api<NodeRole>,
    name: &str,
    binding: &NodeRole,
    run: &RoleRun,
    dir: &Path,
    attempt: i32,
    progress: &RoleReport,
) -> Attempt {
    let failed = |reason: &'static str, message: String| Attempt {
        exit_code: None,
        log_tail: String::new(),
        result: Err((reason, message)),
    };
    let inputs = match with_secrets(agent, &run.inputs).await {
        Ok(inputs) => inputs,
        Err(message) => return failed("SecretsUnreadable", message),
    };
    let files = match prepare(dir, run, &inputs) {
        Ok(files) => files,
        Err(err) => return failed("TaskSetupFailed", format!("cannot prepare {}: {err}", dir.display())),
    };
    let mut command = tokio::process::Command::new(&files.interpreter);
    command
        .args(&files.args)
        .current_dir(dir)
        .env("GIRDER_INPUTS", &files.inputs)
        .env("GIRDER_OUTPUTS", &files.outputs)
        .env("GIRDER_NODE", &binding.spec.node)
        .env("GIRDER_ROLE", &binding.spec.role)
        .env("GIRDER_WORKLOAD", &binding.spec.workload)
        .env("GIRDER_RUN", &run.id)
        .env("GIRDER_ATTEMPT", attempt.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return failed("TaskSetupFailed", format!("cannot start {}: {err}", files.interpreter.display())),
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    if let Some(mut stdin) = child.stdin.take() {
        let inputs = serde_json::to_vec_pretty(&inputs).unwrap_or_default();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A task that does not read its stdin closes it: not an error.
            let _ = stdin.write_all(&inputs).await;
        });
    }
    let tail = Arc::new(Mutex::new(Tail::default()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|out| tokio::spawn(read_into(out, tail.clone(), Some(stdout.clone())))),
        child.stderr.take().map(|err| tokio::spawn(read_into(err, tail.clone(), None))),
    ];
    let timeout = Duration::from_secs(u64::try_from(run.task.timeout_seconds.max(1)).unwrap_or(1));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.tick().await;
    let waited = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            _ = tokio::time::sleep_until(deadline) => break None,
            _ = every.tick() => {
                let mut running = progress.clone();
                running.log_tail = Some(tail.lock().map(|t| t.text()).unwrap_or_default());
                let _ = send(agent, api, name, &running).await;
            }
        }
    };
    let status = match waited {
        Some(status) => status,
        None => {
            kill_group(pgid, &mut child).await;
            // What is left of the output after the group is gone.
            settle(readers).await;
            let log_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
            return Attempt {
                exit_code: None,
                log_tail,
                result: Err(("TaskTimedOut", format!("killed after {} s (timeoutSeconds)", timeout.as_secs()))),
            };
        }
    };
    // The task is gone; a daemon it left holding the pipes must not hold the run.
    settle(readers).await;
    let log_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    let result = match status {
        Err(err) => Err(("TaskFailed", format!("cannot wait for the task: {err}"))),
        Ok(s) if !s.success() => {
            let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => format!("exited with {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "ended".to_string(),
            };
            let last = log_tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            let said = if last.is_empty() { String::new() } else { format!(": {last}") };
            Err(("TaskFailed", format!("{how}{said}")))
        }
        Ok(_) => {
            let out = stdout.lock().map(|o| o.clone()).unwrap_or_default();
            outputs(&files.outputs, &out)
        }
    };
    Attempt { exit_code, log_tail, result }
}

/// The files of one run in its binding's directory.
struct Files {
    interpreter: PathBuf,
    args: Vec<String>,
    inputs: PathBuf,
    outputs: PathBuf,
}

fn prepare(dir: &Path, run: &RoleRun, inputs: &serde_json::Value) -> std::io::Result<Files> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("inputs.json");
    super::link::write_private(&path, &serde_json::to_vec_pretty(inputs).map_err(std::io::Error::other)?)?;
    let inputs = path;
    let outputs = dir.join("outputs.json");
    match std::fs::remove_file(&outputs) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let script = dir.join("task");
    std::fs::write(&script, &run.task.script)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))?;
    // A script with a #! line runs as itself; anything else is sh.
    let (interpreter, args) = if run.task.script.starts_with("#!") {
        (script.clone(), Vec::new())
    } else {
        (PathBuf::from("/bin/sh"), vec![script.to_string_lossy().into_owned()])
    };
    Ok(Files { interpreter, args, inputs, outputs })
}

/// The outputs: `$GIRDER_OUTPUTS` if the task wrote it, else the last line
/// of stdout that is a JSON object, else none.
fn outputs(file: &Path, stdout: &[u8]) -> Result<serde_json::Value, (&'static str, String)> {
    if let Ok(bytes) = std::fs::read(file) {
        return match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(("OutputsInvalid", "$GIRDER_OUTPUTS holds JSON that is not an object".into())),
            Err(e) => Err(("OutputsInvalid", format!("$GIRDER_OUTPUTS is not JSON: {e}"))),
        };
    }
    let text = String::from_utf8_lossy(stdout);
    let found = text
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok().filter(|v| v.is_object()));
    Ok(found.unwrap_or_else(|| serde_json::json!({})))
}

/// SIGTERM to the task's process group, SIGKILL 5 s later if it is still there.
async fn kill_group(pgid: Option<i32>, child: &mut tokio::process::Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Some(pgid) = pgid else {
        let _ = child.kill().await;
        return;
    };
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever else is left in the group.
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Waits a moment for the output readers to drain, then leaves them.
async fn settle(readers: [Option<tokio::task::JoinHandle<()>>; 2]) {
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), reader).await.is_err() {
            abort.abort();
        }
    }
}

/// The last bytes of a task's output.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(LOG_TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // Cut at a line start when the tail was trimmed, so no half line leads.
        if bytes.len() >= LOG_TAIL_BYTES
            && let Some(at) = text.find('\n')
        {
            return text[at + 1..].to_string();
        }
        text
    }
}

async fn read_into(mut from: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>, whole: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buf[..n]);
                }
                if let Some(whole) = &whole
                    && let Ok(mut whole) = whole.lock()
                    && whole.len() < STDOUT_BYTES
                {
                    whole.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_from_the_file_else_the_last_json_line() {
        let dir = std::env::temp_dir().join(format!("girder-task-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("outputs.json");
        let stdout = b"starting\n{\"a\": 1}\nnoise {\n{\"b\": 2}\ndone\n";
        assert_eq!(outputs(&file, stdout).unwrap(), serde_json::json!({ "b": 2 }));
        assert_eq!(outputs(&file, b"no json\n").unwrap(), serde_json::json!({}));
        std::fs::write(&file, "{\"c\": 3}").unwrap();
        assert_eq!(outputs(&file, stdout).unwrap(), serde_json::json!({ "c": 3 }));
        std::fs::write(&file, "[1]").unwrap();
        assert_eq!(outputs(&file, stdout).unwrap_err().0, "OutputsInvalid");
        std::fs::write(&file, "{oops").unwrap();
        assert!(outputs(&file, stdout).unwrap_err().1.contains("not JSON"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_log_tail_is_bounded_and_starts_at_a_line() {
        let mut tail = Tail::default();
        for i in 0..2000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.len() <= LOG_TAIL_BYTES);
        assert!(text.starts_with("line "), "{}", &text[..20]);
        assert!(text.ends_with("line 1999\n"));
    }
}
