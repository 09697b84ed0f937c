//! A guest that ends during a migration (here it resets itself) cancels the migration at
//! once, before any commit, with that reason in `vm.migration-progress` and in the events; the
//! empty VMM it ran in then boots it again, as it does for any guest reset. The destination is
//! held at a protocol step, so without the cancel the source would wait out its 30 s I/O
//! timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use vmm_tests::curl::expect;
use vmm_tests::pair::hold;
use vmm_tests::{
    destination, free_port, guest, require_kvm, test_key, Incoming, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);

fn progress(socket: &Path) -> serde_json::Value {
    expect(socket, "GET", "vm.migration-progress", None, 200)
}

#[test]
fn a_guest_reset_during_a_migration_cancels_it_at_once_with_that_reason() {
    if !require_kvm("a_guest_reset_during_a_migration_cancels_it_at_once_with_that_reason") {
        return;
    }
    let (a, b) = (RuntimeDir::new("ends-src"), RuntimeDir::new("ends-dst"));
    let sock = a.0.join("src.sock");
    let events = a.0.join("events.json");
    let mut src = VmProcess::empty(
        &a.0,
        &sock,
        &[
            "--vm-name",
            "ge",
            "--event-monitor",
            &format!("path={}", events.display()),
        ],
    );
    let body = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": guest("reset_later"), "cmdline": "console=ttyS0"},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    })
    .to_string();
    expect(&sock, "PUT", "vm.create", Some(&body), 204);
    expect(&sock, "PUT", "vm.boot", None, 204);
    src.wait_for("tick 1", T);

    // A destination that stops answering once it has the config (held 60 s there).
    let port = free_port();
    let fp = hold("destination.config_received", 60_000);
    let mut dst = destination(
        &b.0,
        "ge",
        port,
        Incoming {
            env: &[("FAILPOINTS", fp.as_str())],
            ..Incoming::default()
        },
    );
    let send = serde_json::json!({
        "destination_url": format!("tcp:127.0.0.1:{port}"),
        "auth_key_file": test_key(&a.0),
    });
    expect(
        &sock,
        "PUT",
        "vm.send-migration",
        Some(&send.to_string()),
        204,
    );
    dst.wait_for_stderr("fault point destination.config_received reached", T);
    assert_eq!(progress(&sock)["outcome"], "active");

    // The guest resets by itself a few seconds in.
    src.wait_for("resetting now", T);
    let reset_at = Instant::now();
    let done = loop {
        let p = progress(&sock);
        if p["outcome"] != "active" {
            break p;
        }
        assert!(reset_at.elapsed() < T, "the migration never ended: {p}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = reset_at.elapsed();
    eprintln!(
        "the migration ended {} ms after the guest reset",
        took.as_millis()
    );
    assert_eq!(done["outcome"], "cancelled", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("reset") || error.contains("reboot"),
        "{done}"
    );
    // Far sooner than the 30 s the source would otherwise wait for the destination.
    assert!(took < Duration::from_secs(3), "took {took:?}: {done}");

    // The event says so too, and the guest boots again here (an empty VMM reboots a reset guest).
    let log = std::fs::read_to_string(&events).unwrap();
    let cancelled = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["source"] == "migration" && e["event"] == "cancelled")
        .unwrap_or_else(|| panic!("no migration cancelled event in {log}"));
    let why = cancelled["properties"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("reset") || why.contains("reboot"),
        "{cancelled}"
    );
    src.wait_for("tick 1", T);
    expect(&sock, "PUT", "vmm.shutdown", None, 204);
    let (st, err) = src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
}
