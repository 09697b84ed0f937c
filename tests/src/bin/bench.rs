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

/// The positive count the environment variable `name` gives, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

/// Median, min and max of some runs.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// A tiny-guest migration between two VMM processes over loopback.
struct Tiny<'a> {
    label: &'a str,
    guest: &'a str,
    memory: &'a str,
    vcpus: &'a str,
    /// The console line that says the guest is ready to be moved.
    ready: &'a str,
    security: Security,
    /// More `vmm migrate` options (connections, compression).
    migrate: &'a [&'a str],
    /// Start the destination with `--memory` (its memory mapped and faulted in while it
    /// waits), and wait until it says so.
    prepare: bool,
}

/// Runs `count` copies of a tiny-guest migration at the same time; returns each summary and
/// the wall time from the first start to the last end of the migrations.
fn migrate_tiny(t: &Tiny, count: usize) -> Option<(Vec<serde_json::Value>, f64)> {
    let (a, b) = (
        vmm_tests::RuntimeDir::new("bench-src"),
        vmm_tests::RuntimeDir::new("bench-dst"),
    );
    let sec = t.security.args(&a.0);
    let sec: Vec<&str> = sec.iter().map(String::as_str).collect();
    let g = vmm_tests::guest(t.guest);
    let names: Vec<String> = (0..count).map(|i| format!("{}-{i}", t.label)).collect();
    let mut sources: Vec<_> = names
        .iter()
        .map(|n| {
            vmm_tests::VmProcess::start(
                &a.0,
                &[
                    "--name",
                    n,
                    "--kernel",
                    g.to_str().unwrap(),
                    "--memory",
                    t.memory,
                    "--vcpus",
                    t.vcpus,
                ],
            )
        })
        .collect();
    for s in &mut sources {
        s.wait_for(t.ready, Duration::from_secs(300));
    }
    let mut dests = Vec::new();
    let mut targets = Vec::new();
    for n in &names {
        let to = format!("tcp:127.0.0.1:{}", vmm_tests::free_port());
        let mut args = vec!["--name", n.as_str(), "--incoming", &to];
        args.extend_from_slice(&sec);
        if t.prepare {
            args.extend_from_slice(&["--memory", t.memory]);
        }
        let mut d = vmm_tests::VmProcess::start(&b.0, &args);
        d.wait_for_stderr("waiting for VM", Duration::from_secs(60));
        if t.prepare {
            d.wait_for_stderr("prepared", Duration::from_secs(120));
        }
        dests.push(d);
        targets.push(to);
    }
    let started = std::time::Instant::now();
    let runs: Vec<_> = names
        .iter()
        .zip(&targets)
        .map(|(n, to)| {
            let mut args: Vec<String> = ["migrate", n, "--to", to, "--json"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(sec.iter().chain(t.migrate).map(|s| s.to_string()));
            let dir = a.0.clone();
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                vmm_tests::vmm_cli(&dir, &args, Duration::from_secs(600))
            })
        })
        .collect();
    let mut summaries = Vec::new();
    for r in runs {
        let (st, out, err) = r.join().ok()?;
        if !st.success() {
            eprintln!("bench: migration {} failed: {err}", t.label);
            return None;
        }
        summaries.push(serde_json::from_str(&out).ok()?);
    }
    Some((summaries, started.elapsed().as_secs_f64()))
}

/// The median, min and max memory-phase throughput (MB/s) and the median downtime (ms) of
/// migration summaries; None when there are none.
fn throughput_and_downtime(summaries: &[serde_json::Value]) -> Option<((f64, f64, f64), f64)> {
    if summaries.is_empty() {
        return None;
    }
    let mb_s = summaries
        .iter()
        .map(|s| s["throughput_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e6)
        .collect();
    let downtime = spread(
        summaries
            .iter()
            .map(|s| s["downtime_ms"].as_f64().unwrap_or(0.0))
            .collect(),
    )
    .0;
    Some((spread(mb_s), downtime))
}

type RunStats = Option<((f64, f64, f64), f64)>;

/// Runs a migration `runs` times with this build; with a `baseline` binary too, alternating
/// (baseline, this, baseline, this, ...) so both see the same machine. The throughput and
/// downtime of this build's runs, and of the baseline's.
fn migrate_runs(t: &Tiny, runs: usize, baseline: Option<&std::path::Path>) -> (RunStats, RunStats) {
    let (mut current, mut old) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        if let Some(bin) = baseline {
            vmm_tests::use_vmm_bin(Some(bin.to_path_buf()));
            let run = migrate_tiny(t, 1);
            vmm_tests::use_vmm_bin(None);
            old.extend(run.map(|(mut s, _)| s.remove(0)));
        }
        current.extend(migrate_tiny(t, 1).map(|(mut s, _)| s.remove(0)));
    }
    (
        throughput_and_downtime(&current),
        throughput_and_downtime(&old),
    )
}

/// The QEMU image for the L1 hosts, when the rig is built (None: the bench skips, saying why).
fn rig_with_qemu() -> Option<std::path::PathBuf> {
    if !vmm_tests::rig::require_rig("bench") {
        return None;
    }
    let tools = vmm_tests::rig::rig_dir().join("qemu-tools.ext4");
    assert!(
        tools.exists(),
        "{} missing: `make bench` builds it (resources/rig/build-qemu-image.sh)",
        tools.display()
    );
    Some(tools)
}

/// Two-vCPU Linux guests under network load in one L1 host, our vmm against QEMU
/// (resources/rig/scenarios/smp-compare): how many runs of each finish, and how the others
/// ended. RIG_RUNS (default 3) rounds.
fn rig_smp_compare(results: &mut Vec<Result>) {
    let Some(tools) = rig_with_qemu() else {
        return;
    };
    let runs: u32 = std::env::var("RIG_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let host = vmm_tests::rig::L1Host {
        scenario: "smp-compare".into(),
        env: vec![
            ("RIG_TOOLS".into(), tools.display().to_string()),
            ("RIG_APPEND".into(), format!("rig.runs={runs}")),
        ],
    };
    let timeout = Duration::from_secs(300 + 1300 * u64::from(runs));
    let run = vmm_tests::rig::run_hosts("smp-compare", &[host], timeout, &[]);
    if !run.passed {
        eprintln!(
            "bench: smp-compare did not complete ({}); its counts are partial",
            run.verdict
        );
    }
    let mut counts: std::collections::BTreeMap<String, f64> = Default::default();
    for line in &run.lines {
        let Some((_, rest)) = line.2.split_once("RIG: smp ") else {
            continue;
        };
        eprintln!("bench: smp {rest}");
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("?")
                .to_string()
        };
        *counts
            .entry(format!("{}_{}", field("who="), field("outcome=")))
            .or_default() += 1.0;
    }
    for (name, value) in counts {
        results.push(Result {
            scenario: "rig-smp".into(),
            name: name.replace('-', "_"),
            value,
            unit: "runs".into(),
        });
    }
}

/// The same Linux guest migrated between two nested-rig L1 hosts by our vmm (key file, then
/// --insecure like QEMU's plaintext stream: "vmmplain") and by QEMU, at several dirty rates
/// (resources/rig/scenarios/migrate-bench), with the ratios to QEMU.
fn rig_migration_vs_qemu(results: &mut Vec<Result>) {
    let Some(tools) = rig_with_qemu() else {
        return;
    };
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
    // Our per-round figures, for the reader (not parsed).
    for line in &run.lines {
        if line.2.contains("RIG: vmm-rounds-") {
            eprintln!("bench: {}", line.2);
        }
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
            Some((_, r)) if r.starts_with("rounds-") => continue,
            Some((w @ ("vmm" | "vmmplain" | "qemu"), r)) => (w.to_string(), r.to_string()),
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
        for who in ["vmm", "vmmplain", "qemu"] {
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
        for k in ["total_ms", "downtime_ms", "guest_gap_ms", "bytes"] {
            for who in ["vmm", "vmmplain"] {
                if let (Some(a), Some(b)) = (get(&format!("{who}:{k}")), get(&format!("qemu:{k}")))
                {
                    if b > 0.0 {
                        results.push(Result {
                            scenario: scenario.clone(),
                            name: format!("ratio_{k}_{who}_over_qemu"),
                            value: a / b,
                            unit: "ratio".into(),
                        });
                    }
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
    // Long (minutes per run, runs that hang cost ten): only when asked for by name.
    if only
        .as_deref()
        .is_some_and(|o| o.split(',').any(|w| w == "rig-smp"))
    {
        rig_smp_compare(&mut results);
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
    // The data path: 1 GiB of non-zero memory into a destination that prepared its memory
    // (so the kernel's first touch of fresh pages is not what is measured), three runs each:
    // the price of each security mode on one connection, then several connections and zstd.
    let filled = |label, security, migrate| Tiny {
        label,
        guest: "filler",
        memory: "1G",
        vcpus: "1",
        ready: "filled",
        security,
        migrate,
        prepare: true,
    };
    let dataplane: [(&str, Tiny); 7] = [
        ("insecure", filled("dp", Security::Insecure, &[])),
        ("key-file", filled("dp", Security::KeyFile, &[])),
        ("tls", filled("dp", Security::Tls, &[])),
        (
            "key-file-2-connections",
            filled("dp", Security::KeyFile, &["--connections", "2"]),
        ),
        (
            "key-file-4-connections",
            filled("dp", Security::KeyFile, &["--connections", "4"]),
        ),
        (
            "key-file-zstd-1",
            filled("dp", Security::KeyFile, &["--compress", "zstd:1"]),
        ),
        (
            "key-file-unprepared",
            Tiny {
                prepare: false,
                ..filled("dp", Security::KeyFile, &[])
            },
        ),
    ];
    // BENCH_BASELINE_VMM=path: an older build of the VMM, run alternately with this one in
    // each data-path scenario (before/after figures of one run on one machine).
    let baseline = std::env::var_os("BENCH_BASELINE_VMM").map(std::path::PathBuf::from);
    // BENCH_RUNS=N: runs per data-path scenario (and per build), default 3.
    let dataplane_runs = env_count("BENCH_RUNS", 3);
    let mut one_alone = 0.0;
    for (name, t) in &dataplane {
        if !wanted("migrate-dataplane") {
            break;
        }
        let (current, old) = migrate_runs(t, dataplane_runs, baseline.as_deref());
        let Some(((median, min, max), downtime)) = current else {
            continue;
        };
        if *name == "key-file" {
            one_alone = median;
        }
        let mut rows = vec![
            ("throughput_mb_s", median, "MB/s"),
            ("throughput_mb_s_min", min, "MB/s"),
            ("throughput_mb_s_max", max, "MB/s"),
            ("throughput_vs_loopback", median / loopback, "ratio"),
            ("downtime_ms_median", downtime, "ms"),
        ];
        if let Some(((b_median, b_min, b_max), b_downtime)) = old {
            rows.extend([
                ("baseline_throughput_mb_s", b_median, "MB/s"),
                ("baseline_throughput_mb_s_min", b_min, "MB/s"),
                ("baseline_throughput_mb_s_max", b_max, "MB/s"),
                ("baseline_downtime_ms_median", b_downtime, "ms"),
                ("throughput_vs_baseline", median / b_median, "ratio"),
            ]);
        }
        for (metric, value, unit) in rows {
            results.push(Result {
                scenario: format!("migrate-dataplane:{name}"),
                name: metric.into(),
                value,
                unit: unit.into(),
            });
        }
    }
    // Four migrations at once (four 1 GiB guests, key file, one connection each): their
    // aggregate rate against one alone.
    if wanted("migrate-concurrent") {
        let t = filled("cc", Security::KeyFile, &[]);
        let aggregate: Vec<f64> = (0..3)
            .filter_map(|_| migrate_tiny(&t, 4))
            .map(|(s, wall)| {
                s.iter()
                    .map(|x| x["page_bytes_sent"].as_f64().unwrap_or(0.0))
                    .sum::<f64>()
                    / wall
                    / 1e6
            })
            .collect();
        if !aggregate.is_empty() {
            let (median, min, max) = spread(aggregate);
            let mut rows = vec![
                ("aggregate_mb_s", median, "MB/s"),
                ("aggregate_mb_s_min", min, "MB/s"),
                ("aggregate_mb_s_max", max, "MB/s"),
            ];
            if one_alone > 0.0 {
                rows.push(("aggregate_vs_one_alone", median / one_alone, "ratio"));
            }
            for (metric, value, unit) in rows {
                results.push(Result {
                    scenario: "migrate-concurrent:4-vms".into(),
                    name: metric.into(),
                    value,
                    unit: unit.into(),
                });
            }
        }
    }
    // The downtime budget kept: BENCH_BUDGET_RUNS (default 20) migrations of the 2-vCPU guest
    // rewriting 16 MiB over a link capped near its dirty rate, each with a 100 ms budget: the
    // share within 1.1x of the budget, and achieved against budget and against the estimate.
    if wanted("migrate-budget") {
        let runs = env_count("BENCH_BUDGET_RUNS", 20);
        let (budget_ms, link_mib_s) = (100.0, 32.0);
        let (budget, link) = (format!("{budget_ms}"), format!("{link_mib_s}"));
        let migrate = [
            "--downtime-ms",
            budget.as_str(),
            "--max-bandwidth",
            link.as_str(),
        ];
        let t = Tiny {
            label: "budget",
            guest: "dirtier",
            memory: "256M",
            vcpus: "2",
            ready: "cpu1 pass 16 ok",
            security: Security::KeyFile,
            migrate: &migrate,
            prepare: false,
        };
        let summaries: Vec<serde_json::Value> = (0..runs)
            .filter_map(|_| migrate_tiny(&t, 1).map(|(mut s, _)| s.remove(0)))
            .collect();
        let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap_or(0.0);
        let achieved: Vec<f64> = summaries
            .iter()
            .map(|s| f(s, "downtime_ms") / budget_ms)
            .collect();
        if !achieved.is_empty() {
            let within = achieved.iter().filter(|&&r| r <= 1.1).count() as f64;
            let share = within / achieved.len() as f64;
            let vs_estimate = spread(
                summaries
                    .iter()
                    .map(|s| f(s, "downtime_ms") / f(s, "expected_downtime_ms").max(0.001))
                    .collect(),
            );
            // The guest's dirty rate in the rounds before the switchover, against the cap.
            let mut dirty_vs_link: Vec<f64> = summaries
                .iter()
                .filter_map(|s| {
                    let rounds = s["rounds_detail"].as_array()?;
                    let r = rounds.get(rounds.len().checked_sub(2)?)?;
                    let secs = r["seconds"].as_f64()?;
                    let pages = r["dirty_pages_after"].as_f64()?;
                    Some(pages * 4096.0 / secs / (link_mib_s * 1048576.0))
                })
                .collect();
            if dirty_vs_link.is_empty() {
                dirty_vs_link.push(0.0);
            }
            let dirty_vs_link = spread(dirty_vs_link);
            let (median, min, max) = spread(achieved.clone());
            for (metric, value, unit) in [
                ("migrations", achieved.len() as f64, "count"),
                ("within_1_1x_budget_share", share, "ratio"),
                ("downtime_vs_budget_median", median, "ratio"),
                ("downtime_vs_budget_min", min, "ratio"),
                ("downtime_vs_budget_max", max, "ratio"),
                ("downtime_vs_expected_median", vs_estimate.0, "ratio"),
                ("downtime_vs_expected_max", vs_estimate.2, "ratio"),
                ("dirty_rate_vs_link_median", dirty_vs_link.0, "ratio"),
            ] {
                results.push(Result {
                    scenario: "migrate-budget:dirtier-100ms".into(),
                    name: metric.into(),
                    value,
                    unit: unit.into(),
                });
            }
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
        let t = Tiny {
            label,
            guest,
            memory,
            vcpus,
            ready,
            security: Security::KeyFile,
            migrate: &[],
            prepare: false,
        };
        let Some((mut s, _)) = migrate_tiny(&t, 1) else {
            continue;
        };
        let s = s.remove(0);
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
        "migrate-dataplane": "1 GiB non-zero tiny guest into a destination that prepared its memory (--memory), 3 runs each: median, min, max of the memory-phase throughput; security modes, connections, zstd",
        "migrate-concurrent": "four 1 GiB guests migrated at once (key file): aggregate page throughput over the wall time, 3 runs",
        "migrate-budget": "20 migrations of a 2-vCPU guest rewriting 16 MiB over a link capped at 32 MiB/s, 100 ms budget: share within 1.1x, achieved against budget and estimate",
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
