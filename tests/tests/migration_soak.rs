//! Soak: a dirtying two-vCPU guest migrated back and forth between two VMM processes over the
//! key-secured channel, `SOAK_MIGRATIONS` times (50 in `make test`, 500 in `make soak`),
//! its memory self-check passing on each side after each move. Prints the failures and the
//! distribution of the downtime; passes only with no failure.

use std::time::{Duration, Instant};

use vmm_tests::{
    assert_source_intact, free_port, require_kvm, start_dirtier, test_key, vmm_cli, RuntimeDir,
    VmProcess,
};

const T: Duration = Duration::from_secs(120);

/// The highest pass a vCPU of the dirtier has reported on `vm`'s console so far.
fn last_pass(vm: &VmProcess, cpu: u8) -> u64 {
    let prefix = format!("cpu{cpu} pass ");
    vm.console
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits until every vCPU reported a self-checked pass beyond `after`.
fn wait_beyond(vm: &mut VmProcess, after: &[u64]) {
    let deadline = Instant::now() + T;
    for (cpu, &p) in after.iter().enumerate() {
        while last_pass(vm, cpu as u8) <= p {
            assert!(
                Instant::now() < deadline,
                "cpu{cpu} made no progress beyond pass {p}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_dirtying_guest_survives_many_migrations_back_and_forth() {
    if !require_kvm("a_dirtying_guest_survives_many_migrations_back_and_forth") {
        return;
    }
    let n: usize = std::env::var("SOAK_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let hosts = [RuntimeDir::new("soak1"), RuntimeDir::new("soak2")];
    let keys = [test_key(&hosts[0].0), test_key(&hosts[1].0)];
    let vcpus = 2u8;
    let mut vm = start_dirtier(&hosts[0].0, "soak", vcpus, &[]);
    let mut at = 0usize;
    let mut downtimes = Vec::new();
    // The longest pause and its migration's summary, to say where the time went.
    let mut worst: Option<(f64, serde_json::Value)> = None;
    let mut failures = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let to = 1 - at;
        let port = free_port();
        let addr = format!("tcp:127.0.0.1:{port}");
        let mut dst = VmProcess::start(
            &hosts[to].0,
            &[
                "--name",
                "soak",
                "--incoming",
                &addr,
                "--auth-key-file",
                keys[to].to_str().unwrap(),
            ],
        );
        dst.wait_for_stderr("waiting for VM", T);
        let before: Vec<u64> = (0..vcpus).map(|c| last_pass(&vm, c)).collect();
        let (st, out, err) = vmm_cli(
            &hosts[at].0,
            &[
                "migrate",
                "soak",
                "--to",
                &addr,
                "--auth-key-file",
                keys[at].to_str().unwrap(),
                "--json",
            ],
            T,
        );
        if !st.success() {
            // A failed migration leaves the guest on the source: note it and go on.
            failures.push(format!("migration {i}: {err}"));
            assert_source_intact(&hosts[at].0, &mut vm, "soak");
            drop(dst);
            continue;
        }
        let summary: serde_json::Value = serde_json::from_str(&out).expect("a JSON summary");
        let downtime = summary["downtime_ms"].as_f64().unwrap_or(f64::NAN);
        if worst.as_ref().is_none_or(|(d, _)| downtime > *d) {
            worst = Some((downtime, summary.clone()));
        }
        downtimes.push(downtime);
        let (status, src_err) = vm.wait_exit(T);
        assert_eq!(
            status.code(),
            Some(0),
            "migration {i}: the source exits: {src_err}"
        );
        // The destination picks up where the source was and keeps passing its self-check.
        wait_beyond(&mut dst, &before);
        let corrupt: Vec<String> = dst
            .console
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("CORRUPT"))
            .cloned()
            .collect();
        assert!(
            corrupt.is_empty(),
            "migration {i}: memory corrupted: {corrupt:?}"
        );
        vm = dst;
        at = to;
    }
    downtimes.sort_by(|a, b| a.total_cmp(b));
    println!(
        "soak: {n} migrations in {:.0} s, {} failed{}",
        started.elapsed().as_secs_f64(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(": {failures:?}")
        }
    );
    if !downtimes.is_empty() {
        println!(
            "soak: downtime ms: min {:.1}  median {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            downtimes[0],
            percentile(&downtimes, 0.5),
            percentile(&downtimes, 0.9),
            percentile(&downtimes, 0.99),
            downtimes[downtimes.len() - 1]
        );
    }
    if let Some((downtime, s)) = &worst {
        let last = s["rounds_detail"]
            .as_array()
            .and_then(|r| r.last())
            .map(|r| r["pages_sent"].clone());
        println!(
            "soak: longest pause {downtime:.1} ms ({}, {} rounds, expected {:.1} ms, final round {} pages): {}",
            s["switchover"],
            s["rounds"],
            s["expected_downtime_ms"].as_f64().unwrap_or(0.0),
            last.unwrap_or_default(),
            s["downtime_breakdown"]
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {n} migrations failed",
        failures.len()
    );
}
