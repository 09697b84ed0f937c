//! `make bench`: runs the benchmark scenarios and prints their results as JSON and as a table.
//! Scenarios report "BENCH: name value unit" lines on the console; nothing here is pass/fail.
//! Linux-guest scenarios run inside the nested rig on a PVM host, directly on hardware KVM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Result {
    scenario: String,
    name: String,
    value: f64,
    unit: String,
}

fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}

/// Console lines of one scenario run, and where it ran.
fn run(scenario: &str) -> (Vec<String>, &'static str) {
    if hardware_kvm() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let work = vmm_tests::RuntimeDir::new(scenario);
        let bin_dir = vmm_tests::vmm_bin().parent().unwrap().to_path_buf();
        let out = Command::new("unshare")
            .args(["--net", "sh"])
            .arg(root.join("resources/rig/scenarios").join(scenario))
            .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
            .env("RIG_GUEST", root.join("build/guest"))
            .env("RIG_WORK", &work.0)
            .env("VMM_RUNTIME_DIR", &work.0)
            .output()
            .expect("run scenario");
        (String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect(), "hardware KVM")
    } else {
        assert!(vmm_tests::rig::require_rig("bench"), "the nested rig is needed on this host");
        let r = vmm_tests::rig::run_scenario(scenario, Duration::from_secs(1200), &[]);
        if !r.passed {
            eprintln!("bench: scenario {scenario} did not complete ({}); its results are partial", r.verdict);
        }
        (r.console, "nested rig (L1 under QEMU TCG)")
    }
}

fn parse(scenario: &str, lines: &[String]) -> Vec<Result> {
    lines
        .iter()
        .filter_map(|l| l.split_once("BENCH: ").map(|(_, rest)| rest.to_string()))
        .filter_map(|rest| {
            let mut it = rest.split_whitespace();
            let name = it.next()?.to_string();
            let value = it.next()?.parse().ok()?;
            let unit = it.next().unwrap_or("").to_string();
            Some(Result { scenario: scenario.to_string(), name, value, unit })
        })
        .collect()
}

fn main() {
    let mut results = Vec::new();
    let mut place = "";
    for scenario in ["bench-io"] {
        let (lines, where_) = run(scenario);
        place = where_;
        let r = parse(scenario, &lines);
        if r.is_empty() {
            eprintln!("bench: scenario {scenario} reported nothing; console tail:\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        results.extend(r);
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| serde_json::json!({"scenario": r.scenario, "name": r.name, "value": r.value, "unit": r.unit}))
        .collect();
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({"environment": place, "results": json})).unwrap());
    println!();
    println!("{:<12} {:<28} {:>10}  unit      ({place})", "scenario", "metric", "value");
    for r in &results {
        println!("{:<12} {:<28} {:>10.1}  {}", r.scenario, r.name, r.value, r.unit);
    }
}
