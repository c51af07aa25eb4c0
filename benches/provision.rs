//! Benchmark: wall time from `image` set to `Provisioned`, for one machine
//! and for several at once, on the QEMU machines of the provisioning tests
//! (each behind its own ipmi_sim; KVM where it works, else TCG), with the
//! split the agent reports per step (download, write, verify, seed, boot)
//! and the agent's peak RSS (its "run finished" log line on the serial
//! console). The machines first enrol to Available through their BMCs
//! (their inventory comes from the agent once they boot the ramdisk: IPMI
//! gives none); the clock starts when the image is set on all of them at
//! once.
//!
//!     cargo bench --bench provision
//!
//! As root, with KUBECONFIG naming a control plane (`make controlplane`)
//! and what `make test` installs and builds (QEMU, ipmi_sim, the ramdisk,
//! the test image; GIRDER_RAMDISK_DIR as `make ramdisk` prints it).
//! GIRDER_BENCH_MACHINES lists the rounds (default `1,4`). `cargo test`
//! builds this target and runs it without `--bench`, which only prints how
//! to run it.

#[path = "../tests/support/mod.rs"]
mod support;

use girder::api::BareMetalNode;
use girder::api::node::NodePhase;
use std::time::{Duration, Instant};
use support::ipmi::{Sim, SimConfig};
use support::machine::Machine;
use support::site::{Site, phase};
use support::*;

const GIB: u64 = 1 << 30;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("provision benchmark skipped: run `cargo bench --bench provision` as root (see BENCHMARKS.md)");
        return;
    }
    let rounds: Vec<usize> = std::env::var("GIRDER_BENCH_MACHINES")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .map(|n| n.trim().parse().expect("GIRDER_BENCH_MACHINES: a comma-separated list of machine counts"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("accelerator: {}", support::pxe_lab::accel());
    for (round, machines) in rounds.into_iter().enumerate() {
        runtime.block_on(bench(machines, 160 + round as u8));
    }
}

/// One machine's figures.
struct Figures {
    total: Duration,
    steps: Vec<(String, i64)>,
    agent_rss_kib: u64,
}

async fn bench(count: usize, subnet: u8) {
    let site = Site::new(&format!("bench-prov-{count}"), subnet, false).await;
    run_ok(kubectl().args(["create", "secret", "generic", "bmc", "-n", &site.ns.name]).args([
        &format!("--from-literal=username={}", support::ipmi::USER),
        &format!("--from-literal=password={}", support::ipmi::PASSWORD),
    ]));
    let mut machines = Vec::new();
    let mut sims = Vec::new();
    for i in 0..count {
        let name = format!("m{i}");
        let mac = format!("52:54:00:{subnet:02x}:00:{:02x}", i + 1);
        let machine = Machine::new(&site.lab, &name, &mac, &[("DISK-A", 4 * GIB), ("DISK-B", 5 * GIB)]);
        machine.firmware_boots("DISK-B");
        let guid: &'static str = Box::leak(format!("{:032x}", 0xb0_0000 + i).into_boxed_str());
        let sim = Sim::start(SimConfig {
            guid: Some(guid),
            chassis_control: Some(machine.chassis_control()),
            ..Default::default()
        })
        .await;
        site.node(&name, &mac, &format!("ipmi://127.0.0.1:{}", sim.port), None, &name);
        machines.push((name, machine));
        sims.push(sim);
    }
    let enrolling = Instant::now();
    for (name, _) in &machines {
        site.node_where(name, "Available", |n| phase(n) == Some(NodePhase::Available)).await;
    }
    let enrolled = enrolling.elapsed();

    let started = Instant::now();
    for (name, _) in &machines {
        let patch = format!(r#"{{"spec":{{"image":{}}}}}"#, site.image("disk.img"));
        run_ok(kubectl().args(["patch", "bmn", name, "-n", &site.ns.name, "--type", "merge", "-p", &patch]));
    }
    let waits = machines.iter().map(|(name, machine)| {
        let site = &site;
        async move {
            let node = site.node_where(name, "Provisioned", |n| phase(n) == Some(NodePhase::Provisioned)).await;
            let total = started.elapsed();
            Figures { total, steps: steps(&node), agent_rss_kib: agent_rss_kib(&machine.serial_log()) }
        }
    });
    let figures = futures::future::join_all(waits).await;
    report(count, enrolled, &figures);
    // The machines power off as they drop; the nodes go with the namespace.
    drop(machines);
    drop(sims);
}

fn steps(node: &BareMetalNode) -> Vec<(String, i64)> {
    let steps = node.status.as_ref().and_then(|s| s.provisioning.as_ref()).map(|p| p.steps.clone()).unwrap_or_default();
    steps.into_iter().map(|s| (s.name, s.milliseconds.unwrap_or(-1))).collect()
}

/// The largest `peak_rss_kib` of the agent's "run finished" lines (text
/// logs, as the ramdisk runs it: `peak_rss_kib=N`; or JSON).
fn agent_rss_kib(serial: &str) -> u64 {
    serial
        .lines()
        .filter(|line| line.contains("run finished"))
        .filter_map(|line| {
            let at = line.find("peak_rss_kib")? + "peak_rss_kib".len();
            let rest = line[at..].trim_start_matches(['=', '"', ':']);
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn report(count: usize, enrolled: Duration, figures: &[Figures]) {
    println!("\n{count} machine(s): registered to Available through their BMCs in {:.1} s", enrolled.as_secs_f64());
    println!(
        "| machine | image set -> Provisioned | PXE, ramdisk, enrolment (the rest) | download | write | verify | seed | boot | agent peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, f) in figures.iter().enumerate() {
        let step = |name: &str| {
            f.steps
                .iter()
                .find(|(n, _)| n == name)
                .map_or("-".to_string(), |(_, ms)| format!("{:.1} s", *ms as f64 / 1e3))
        };
        let stepped: i64 = f.steps.iter().map(|(_, ms)| (*ms).max(0)).sum();
        println!(
            "| m{i} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {:.1} MiB |",
            f.total.as_secs_f64(),
            f.total.as_secs_f64() - stepped as f64 / 1e3,
            step("download"),
            step("write"),
            step("verify"),
            step("seed"),
            step("boot"),
            f.agent_rss_kib as f64 / 1024.0
        );
    }
    let slowest = figures.iter().map(|f| f.total).max().unwrap_or_default();
    println!("all {count} Provisioned {:.1} s after the image was set", slowest.as_secs_f64());
}
