//! `girder bmc probe ADDRESS`: what girder's driver sees on a BMC, without
//! creating anything in the cluster and without changing the machine: it
//! connects as the operator would, reads identity, power and inventory,
//! describes the BMC ([`super::Bmc::describe`]: service, systems, boot options,
//! virtual media, BIOS, quirks worked around), closes its session, and says
//! how long each step took. The first thing to run against a new vendor.
//!
//! Credentials come from a Secret as a BareMetalNode names them (read
//! through the kubeconfig) or from the command line, the password on stdin
//! only, so that it shows in no process list or shell history.

use super::{BmcAddress, BmcError, BmcOptions, Credentials, Description, connect};
use crate::api::node::HardwareDetails;
use crate::controller::node::pool::read_credentials;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BmcArgs {
    #[command(subcommand)]
    command: BmcCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BmcCommand {
    /// Show what girder's driver sees on a BMC (service, systems, power,
    /// boot options, virtual media, BIOS, quirks, timings). Reads only.
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("credentials").required(true).args(["credentials_secret", "username"])))]
struct ProbeArgs {
    /// The BMC's address, as a BareMetalNode's spec.bmc.address takes it:
    /// redfish+https://HOST[/redfish/v1/Systems/ID], redfish+http://...,
    /// ipmi://HOST[:PORT].
    address: String,
    /// A Secret with keys username and password (a node's
    /// spec.bmc.credentialsSecretRef), read through the kubeconfig.
    #[arg(long)]
    credentials_secret: Option<String>,
    /// The Secret's namespace (default: the kubeconfig's).
    #[arg(short, long, requires = "credentials_secret")]
    namespace: Option<String>,
    /// The user name; the password is read from stdin (--password-stdin).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Accept any TLS certificate (spec.bmc.disableCertificateVerification).
    #[arg(long)]
    disable_certificate_verification: bool,
    /// PEM bundle of the CAs that sign the BMC's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Limit on each call to the BMC, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// `text` or `json`.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

/// What a probe found: each step with its time, and the driver's description.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub address: String,
    pub steps: Vec<Step>,
    pub description: Description,
}

/// One call to the BMC.
#[derive(Debug, serde::Serialize)]
pub struct Step {
    pub what: String,
    pub seconds: f64,
    pub ok: bool,
    /// What it returned, or why it failed.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Address(BmcError),
    #[error("cannot reach the API server for the credentials Secret: {0}")]
    Client(kube::Error),
    #[error("{0}")]
    Credentials(crate::controller::node::pool::CredentialsProblem),
    #[error("--password-stdin: {0}")]
    Password(String),
    #[error("--ca-file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("{failed} of {steps} steps failed (see above)")]
    Failed { failed: usize, steps: usize },
}

pub fn main(args: BmcArgs) -> Result<(), Box<dyn std::error::Error>> {
    let BmcCommand::Probe(args) = args.command;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProbeError::Runtime)?;
    // Read before the runtime starts: stdin is a blocking read.
    let password = if args.password_stdin { Some(read_password()?) } else { None };
    let report = runtime.block_on(probe_command(&args, password))?;
    match args.output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    let failed = report.steps.iter().filter(|s| !s.ok).count();
    if failed > 0 {
        return Err(ProbeError::Failed { failed, steps: report.steps.len() }.into());
    }
    Ok(())
}

/// The first line of stdin.
fn read_password() -> Result<String, ProbeError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| ProbeError::Password(e.to_string()))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ProbeError::Password("stdin gave no password".into()));
    }
    Ok(password.to_string())
}

async fn probe_command(args: &ProbeArgs, password: Option<String>) -> Result<Report, ProbeError> {
    let address = BmcAddress::parse(&args.address).map_err(ProbeError::Address)?;
    let credentials = match (&args.credentials_secret, &args.username) {
        (Some(secret), _) => {
            let client = kube::Client::try_default().await.map_err(ProbeError::Client)?;
            let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
            let secrets = kube::Api::namespaced(client, &namespace);
            read_credentials(&secrets, secret).await.map_err(ProbeError::Credentials)?.0
        }
        (None, Some(username)) => Credentials::new(username.clone(), password.unwrap_or_default()),
        (None, None) => unreachable!("clap requires --credentials-secret or --username"),
    };
    let ca_bundle = match &args.ca_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| ProbeError::CaFile { path: path.clone(), detail: e.to_string() })?)
        }
        None => None,
    };
    let options = BmcOptions {
        timeout: Duration::from_secs(args.timeout.max(1)),
        ca_bundle,
        disable_certificate_verification: args.disable_certificate_verification,
        ..BmcOptions::default()
    };
    Ok(probe(&address, credentials, options).await)
}

/// Runs every step against the BMC at `address`; a failed step is reported,
/// and only a failed connection stops the rest.
pub async fn probe(address: &BmcAddress, credentials: Credentials, options: BmcOptions) -> Report {
    let mut report = Report { address: address.to_string(), ..Default::default() };
    let connected =
        step(&mut report, "connect", connect(address, credentials, options), |_| "logged in; system found".into());
    let Some(bmc) = connected.await else { return report };
    step(&mut report, "identity", bmc.identity(), |id| {
        let uuid = id.uuid.as_deref().unwrap_or("(no UUID)");
        let serial = id.serial_number.as_deref().unwrap_or("(no serial)");
        let name = [id.vendor.as_deref(), id.model.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
        format!("{name}, serial {serial}, {uuid}").trim_start_matches(", ").to_string()
    })
    .await;
    step(&mut report, "power state", bmc.power_state(), |p| p.as_str().to_string()).await;
    step(&mut report, "inventory", bmc.inventory(), inventory_line).await;
    let described = step(&mut report, "describe", bmc.describe(), |d| {
        format!("{} facts, {} quirks", d.facts.len(), d.quirks.len())
    });
    report.description = described.await.unwrap_or_default();
    step(&mut report, "close", bmc.close(), |()| "done (its session, if any, deleted)".to_string()).await;
    report
}

/// Makes one call to the BMC and records it as a step of `report`, with its
/// time and what `shown` says of its answer (or why it failed); gives the
/// answer back.
async fn step<T>(
    report: &mut Report,
    what: &str,
    call: impl std::future::Future<Output = Result<T, BmcError>>,
    shown: impl FnOnce(&T) -> String,
) -> Option<T> {
    let start = Instant::now();
    let result = call.await;
    let seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let (ok, detail) = match &result {
        Ok(value) => (true, shown(value)),
        Err(e) => (false, e.to_string()),
    };
    report.steps.push(Step { what: what.to_string(), seconds, ok, detail });
    result.ok()
}

/// The inventory in one line: processors, memory, NICs, disks, firmware.
fn inventory_line(h: &HardwareDetails) -> String {
    let mut parts = Vec::new();
    if let Some(cpu) = &h.cpu {
        let threads = cpu.threads.map(|t| format!("{t} threads")).unwrap_or_else(|| "threads not given".into());
        parts.push(format!("{} ({threads})", cpu.model.as_deref().unwrap_or("CPU model not given")));
    }
    if let Some(mib) = h.memory_mebibytes {
        parts.push(format!("{} GiB memory", mib / 1024));
    }
    let macs: Vec<&str> = h.nics.iter().map(|n| n.mac.as_str()).collect();
    parts.push(format!(
        "{} NICs{}",
        macs.len(),
        if macs.is_empty() { String::new() } else { format!(" ({})", macs.join(", ")) }
    ));
    parts.push(format!("{} disks", h.storage.len()));
    if let Some(firmware) = &h.firmware {
        let versions =
            [firmware.bios.as_ref().map(|v| format!("BIOS {v}")), firmware.bmc.as_ref().map(|v| format!("BMC {v}"))];
        let versions: Vec<String> = versions.into_iter().flatten().collect();
        if !versions.is_empty() {
            parts.push(format!("firmware {}", versions.join(", ")));
        }
    }
    parts.join("; ")
}

impl Report {
    /// The report for a person: steps with timings, then what the driver
    /// sees, then the quirks.
    pub fn text(&self) -> String {
        let mut out = format!("BMC {}\n", self.address);
        for step in &self.steps {
            let status = if step.ok { "ok" } else { "FAILED" };
            let _ = writeln!(out, "  {:<12} {:>7.3} s  {status:<6} {}", step.what, step.seconds, step.detail);
        }
        if !self.description.facts.is_empty() {
            let _ = writeln!(out, "What girder sees:");
            for (what, value) in &self.description.facts {
                let _ = writeln!(out, "  {what:<15} {value}");
            }
            let _ = writeln!(out, "Quirks girder works around:");
            if self.description.quirks.is_empty() {
                let _ = writeln!(out, "  (none seen)");
            }
            for quirk in &self.description.quirks {
                let _ = writeln!(out, "  - {quirk}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_report_lists_steps_facts_and_quirks() {
        let report = Report {
            address: "ipmi://10.0.0.9:623".into(),
            steps: vec![
                Step { what: "connect".into(), seconds: 0.25, ok: true, detail: "logged in; system found".into() },
                Step { what: "inventory".into(), seconds: 30.0, ok: false, detail: "timed out".into() },
            ],
            description: Description {
                facts: vec![("power".into(), "On".into())],
                quirks: vec!["weak ETags: ...".into()],
            },
        };
        assert_eq!(
            report.text(),
            "BMC ipmi://10.0.0.9:623\n  connect        0.250 s  ok     logged in; system found\n  inventory     30.000 s  FAILED timed out\nWhat girder sees:\n  power           On\nQuirks girder works around:\n  - weak ETags: ...\n"
        );
        let empty = Report {
            address: "x".into(),
            description: Description { facts: vec![("a".into(), "b".into())], quirks: vec![] },
            ..Default::default()
        };
        assert!(empty.text().ends_with("Quirks girder works around:\n  (none seen)\n"));
    }

    #[test]
    fn an_unreachable_bmc_fails_the_connect_step_and_stops() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // A closed local port: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = BmcAddress::parse(&format!("redfish+http://127.0.0.1:{port}")).unwrap();
        let options = BmcOptions { timeout: Duration::from_secs(5), ..BmcOptions::default() };
        let report = runtime.block_on(probe(&address, Credentials::new("admin", "secret-word"), options));
        assert_eq!(report.steps.len(), 1, "{report:?}");
        assert!(!report.steps[0].ok && report.steps[0].what == "connect", "{report:?}");
        let text = report.text();
        assert!(!text.contains("secret-word"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
}
