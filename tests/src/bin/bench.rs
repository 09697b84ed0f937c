//! `make bench`: runs the benchmark scenarios and prints their results as JSON and as a table.
//! Scenarios report "BENCH: name value unit" lines on the console; nothing here is pass/fail.
//! Linux-guest scenarios run inside the nested rig on a PVM host, directly on hardware KVM.

use std::time::Duration;

struct Result {
    scenario: String,
    name: String,
    value: f64,
    unit: String,
}

/// Console lines of one scenario run, and where it ran.
fn run(scenario: &str) -> (Vec<String>, &'static str) {
    if vmm_tests::hardware_kvm() {
        let out = vmm_tests::rig::run_scenario_direct(scenario);
        (
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            "hardware KVM",
        )
    } else {
        assert!(
            vmm_tests::rig::require_rig("bench"),
            "the nested rig is needed on this host"
        );
        let r = vmm_tests::rig::run_scenario(scenario, Duration::from_secs(1200), &[]);
        if !r.passed {
            eprintln!(
                "bench: scenario {scenario} did not complete ({}); its results are partial",
                r.verdict
            );
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
            Some(Result {
                scenario: scenario.to_string(),
                name,
                value,
                unit,
            })
        })
        .collect()
}

/// Loopback TCP throughput on this machine, the ceiling a migration over loopback can reach.
fn loopback_mb_s() -> f64 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total: usize = 1 << 30;
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < total {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let buf = vec![1u8; 1 << 20];
    let t = std::time::Instant::now();
    for _ in 0..(total >> 20) {
        s.write_all(&buf).unwrap();
    }
    drop(s);
    reader.join().unwrap();
    (total as f64 / 1e6) / t.elapsed().as_secs_f64()
}

/// How a benchmark migration is secured.
#[derive(Clone, Copy, Debug)]
enum Security {
    Insecure,
    KeyFile,
    Tls,
}

impl Security {
    fn name(self) -> &'static str {
        match self {
            Security::Insecure => "insecure",
            Security::KeyFile => "key-file",
            Security::Tls => "tls",
        }
    }

    /// The options both ends take, with whatever files they need made in `dir`.
    fn args(self, dir: &std::path::Path) -> Vec<String> {
        match self {
            Security::Insecure => vec!["--insecure".into()],
            Security::KeyFile => vec![
                "--auth-key-file".into(),
                vmm_tests::test_key(dir).display().to_string(),
            ],
            Security::Tls => {
                let certs = dir.join("tls");
                vmm_tests::make_certs(&certs, &["127.0.0.1"]);
                vec!["--tls-dir".into(), certs.display().to_string()]
            }
        }
    }
}

/// Median, min and max of some runs.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Migrates a tiny guest between two VMM processes over loopback and returns the summary.
fn migrate_tiny(
    label: &str,
    guest: &str,
    memory: &str,
    vcpus: &str,
    ready: &str,
    security: Security,
) -> Option<serde_json::Value> {
    let (a, b) = (
        vmm_tests::RuntimeDir::new("bench-src"),
        vmm_tests::RuntimeDir::new("bench-dst"),
    );
    let sec = security.args(&a.0);
    let sec: Vec<&str> = sec.iter().map(String::as_str).collect();
    let g = vmm_tests::guest(guest);
    let mut src = vmm_tests::VmProcess::start(
        &a.0,
        &[
            "--name",
            label,
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            memory,
            "--vcpus",
            vcpus,
        ],
    );
    src.wait_for(ready, Duration::from_secs(300));
    let to = format!("tcp:127.0.0.1:{}", vmm_tests::free_port());
    let mut dst_args = vec!["--name", label, "--incoming", &to];
    dst_args.extend_from_slice(&sec);
    let _dst = vmm_tests::VmProcess::start(&b.0, &dst_args);
    let mut args = vec!["migrate", label, "--to", &to, "--json"];
    args.extend_from_slice(&sec);
    let (st, out, err) = vmm_tests::migrate_retrying(&a.0, &args, Duration::from_secs(600));
    if !st.success() {
        eprintln!("bench: migration {label} failed: {err}");
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// The same Linux guest migrated between two nested-rig L1 hosts by our vmm and by QEMU, at
/// several dirty rates (resources/rig/scenarios/migrate-bench), with the ratios vmm/QEMU.
fn rig_migration_vs_qemu(results: &mut Vec<Result>) {
    if !vmm_tests::rig::require_rig("bench") {
        return;
    }
    let tools = vmm_tests::rig::rig_dir().join("qemu-tools.ext4");
    assert!(
        tools.exists(),
        "{} missing: `make bench` builds it (resources/rig/build-qemu-image.sh)",
        tools.display()
    );
    let dir = vmm_tests::RuntimeDir::new("bench-lun");
    let lun = dir.0.join("lun.img");
    vmm_tests::rig::make_shared_lun(&lun, 16);
    let mut hosts = vmm_tests::rig::two_hosts("migrate-bench", &lun, "");
    for h in &mut hosts {
        h.env
            .push(("RIG_TOOLS".into(), tools.display().to_string()));
    }
    let run = vmm_tests::rig::run_hosts("migrate-bench", &hosts, Duration::from_secs(1800), &[]);
    if !run.passed {
        eprintln!(
            "bench: rig migration scenario did not complete ({}); its results are partial",
            run.verdict
        );
    }
    // "RIG: vmm-RATE total_ms=.. downtime_ms=.. bytes=.. rounds=.." and the same for qemu;
    // "RIG: guest-gap RATE vmm=.. qemu=..".
    let mut by: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for line in &run.lines {
        let Some(rest) = line.2.split_once("RIG: ").map(|(_, r)| r) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(head) = words.next() else { continue };
        let (who, rate) = match head.split_once('-') {
            Some((w @ ("vmm" | "qemu"), r)) => (w.to_string(), r.to_string()),
            _ if head == "guest-gap" => ("gap".to_string(), words.next().unwrap_or("").to_string()),
            _ => continue,
        };
        for kv in words {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            let key = if who == "gap" {
                format!("{k}:guest_gap_ms")
            } else {
                format!("{who}:{k}")
            };
            by.insert((rate.clone(), key), v);
        }
    }
    let rates: std::collections::BTreeSet<String> = by.keys().map(|(r, _)| r.clone()).collect();
    for rate in rates {
        let get = |k: &str| by.get(&(rate.clone(), k.to_string())).copied();
        let scenario = format!("rig-migrate:{rate}");
        for who in ["vmm", "qemu"] {
            for (k, unit, scale) in [
                ("total_ms", "ms", 1.0),
                ("downtime_ms", "ms", 1.0),
                ("guest_gap_ms", "ms", 1.0),
                ("bytes", "MB", 1e-6),
                ("rounds", "rounds", 1.0),
            ] {
                if let Some(v) = get(&format!("{who}:{k}")) {
                    let name = if k == "bytes" {
                        format!("{who}_sent_mb")
                    } else {
                        format!("{who}_{k}")
                    };
                    results.push(Result {
                        scenario: scenario.clone(),
                        name,
                        value: v * scale,
                        unit: unit.into(),
                    });
                }
            }
            if let (Some(b), Some(t)) = (
                get(&format!("{who}:bytes")),
                get(&format!("{who}:total_ms")).filter(|&t| t > 0.0),
            ) {
                results.push(Result {
                    scenario: scenario.clone(),
                    name: format!("{who}_throughput_mb_s"),
                    value: b / 1e6 / (t / 1000.0).max(1e-3),
                    unit: "MB/s".into(),
                });
            }
        }
        for k in ["total_ms", "downtime_ms", "guest_gap_ms"] {
            if let (Some(a), Some(b)) = (get(&format!("vmm:{k}")), get(&format!("qemu:{k}"))) {
                if b > 0.0 {
                    results.push(Result {
                        scenario: scenario.clone(),
                        name: format!("ratio_{k}_vmm_over_qemu"),
                        value: a / b,
                        unit: "ratio".into(),
                    });
                }
            }
        }
    }
}

fn main() {
    let mut results = Vec::new();
    let mut place = "";
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == name))
    };
    if wanted("rig-migrate") {
        rig_migration_vs_qemu(&mut results);
    }
    let (loopback, lo_min, lo_max) = spread((0..3).map(|_| loopback_mb_s()).collect());
    for (name, value) in [
        ("loopback_tcp_mb_s", loopback),
        ("loopback_tcp_mb_s_min", lo_min),
        ("loopback_tcp_mb_s_max", lo_max),
    ] {
        results.push(Result {
            scenario: "migration".into(),
            name: name.into(),
            value,
            unit: "MB/s".into(),
        });
    }
    // The price of the secured channel: one connection, 1 GiB of non-zero memory, three runs
    // per mode, as ratios of loopback TCP measured in the same run.
    for security in [Security::Insecure, Security::KeyFile, Security::Tls] {
        if !wanted("migrate-security") {
            break;
        }
        let runs: Vec<f64> = (0..3)
            .filter_map(|_| migrate_tiny("sec-1g", "filler", "1G", "1", "filled", security))
            .map(|s| s["throughput_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let (median, min, max) = spread(runs);
        for (name, value, unit) in [
            ("throughput_mb_s", median, "MB/s"),
            ("throughput_mb_s_min", min, "MB/s"),
            ("throughput_mb_s_max", max, "MB/s"),
            ("throughput_vs_loopback", median / loopback, "ratio"),
        ] {
            results.push(Result {
                scenario: format!("migrate-security:{}", security.name()),
                name: name.into(),
                value,
                unit: unit.into(),
            });
        }
    }
    // Tiny guests on this machine's /dev/kvm (PVM included): idle 1 GiB, 1 GiB of non-zero
    // memory, and a 2-vCPU guest rewriting 16 MiB continuously.
    for (label, guest, memory, vcpus, ready) in [
        ("idle-1g", "heartbeat", "1G", "1", "cpu0 tick 1"),
        ("filled-1g", "filler", "1G", "1", "filled"),
        ("dirtier-2vcpu", "dirtier", "256M", "2", "cpu1 pass 16 ok"),
    ] {
        if !wanted("migrate") {
            break;
        }
        let Some(s) = migrate_tiny(label, guest, memory, vcpus, ready, Security::KeyFile) else {
            continue;
        };
        let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
        let mb_s = f("throughput_bytes_per_sec") / 1e6;
        for (name, value, unit) in [
            ("total_s", f("total_seconds"), "s"),
            ("downtime_ms", f("downtime_ms"), "ms"),
            ("sent_mb", f("bytes_sent") / 1e6, "MB"),
            ("rounds", f("rounds"), "rounds"),
            ("throughput_mb_s", mb_s, "MB/s"),
            ("throughput_vs_loopback", mb_s / loopback, "ratio"),
        ] {
            results.push(Result {
                scenario: format!("migrate:{label}"),
                name: name.into(),
                value,
                unit: unit.into(),
            });
        }
    }
    for scenario in ["bench-io"].into_iter().filter(|s| wanted(s)) {
        let (lines, where_) = run(scenario);
        place = where_;
        let r = parse(scenario, &lines);
        if r.is_empty() {
            eprintln!(
                "bench: scenario {scenario} reported nothing; console tail:\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        results.extend(r);
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| serde_json::json!({"scenario": r.scenario, "name": r.name, "value": r.value, "unit": r.unit}))
        .collect();
    let environment = serde_json::json!({
        "migrate": "tiny guests on this host's /dev/kvm, two VMM processes over TCP loopback, key-file channel",
        "migrate-security": "1 GiB non-zero tiny guest, one connection, insecure / key file / TLS; median of 3 runs with min and max",
        "bench-io": place,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"environment": environment, "results": json})
        )
        .unwrap()
    );
    println!();
    println!("migrate:* = tiny guests on this host's /dev/kvm over loopback; bench-io = {place}");
    println!("{:<28} {:<26} {:>10}  unit", "scenario", "metric", "value");
    for r in &results {
        println!(
            "{:<28} {:<26} {:>10.3}  {}",
            r.scenario, r.name, r.value, r.unit
        );
    }
}
