use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// girder: physical datacenter operations on Kubernetes.
#[derive(Parser)]
#[command(name = "girder", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (with leader election, health and metrics endpoints).
    Operator(girder::operator::OperatorArgs),
    /// Run the PXE sidecar: DHCP, TFTP and HTTP boot from what the API says.
    Pxe(girder::pxe::PxeArgs),
    /// Run the node agent on a machine: inventory, image install, cleaning.
    Agent(girder::agent::AgentArgs),
    /// Write a disk image to a disk or file as the agent does (download,
    /// checksum, qcow2), to try an image and its checksum by hand.
    WriteImage(girder::agent::image::command::WriteImageArgs),
    /// Show a Workload's plan (which node holds which role, in which order,
    /// in which state) and rehearse a change of it (-f) without applying it.
    Plan(girder::plan::PlanArgs),
    /// Talk to a BMC as girder's drivers do, without creating anything.
    Bmc(girder::bmc::probe::BmcArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crdgen(girder::crdgen::CrdgenArgs),
}

/// Installed as `kubectl-girder` on PATH (a copy or a link), girder is a
/// kubectl plugin: `kubectl girder plan ...` runs `kubectl-girder plan ...`.
fn invoked_as_kubectl_plugin() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    std::path::Path::new(&argv0).file_name().is_some_and(|name| name == "kubectl-girder")
}

fn main() -> ExitCode {
    let mut command = Cli::command();
    if invoked_as_kubectl_plugin() {
        command = command.bin_name("kubectl girder");
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Operator(args) => girder::operator::main(args),
        Command::Pxe(args) => girder::pxe::main(args),
        Command::Agent(args) => girder::agent::main(args),
        Command::WriteImage(args) => girder::agent::image::command::main(args),
        Command::Plan(args) => girder::plan::main(args),
        Command::Bmc(args) => girder::bmc::probe::main(args),
        Command::Crdgen(args) => girder::crdgen::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("girder: {err}");
            ExitCode::FAILURE
        }
    }
}
