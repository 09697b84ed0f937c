//! The API driven by a client we did not write: `curl --unix-socket`. A tiny guest's life
//! (create, boot, info, pause, resume, shutdown), a live migration between two empty VMMs
//! (`vm.receive-migration` on the destination, `vm.send-migration` on the source, progress
//! polled until done, the achieved downtime read from it, memory verified by the guest), a
//! cancel mid-transfer that leaves the guest on the source, and the error answers (405 in the
//! wrong state, 404 without a VM, 400 on malformed JSON, each with a message).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_tests::curl::{create_body, curl, expect, state};
use vmm_tests::{free_port, guest, require_kvm, test_key, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(120);

fn wait_exit_ok(vm: VmProcess) {
    let (status, err) = vm.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn curl_drives_a_tiny_guest_through_create_boot_pause_resume_shutdown() {
    if !require_kvm("curl_drives_a_tiny_guest_through_create_boot_pause_resume_shutdown") {
        return;
    }
    let dir = RuntimeDir::new("curl-life");
    let sock = dir.0.join("life.sock");
    let mut vm = VmProcess::empty(&dir.0, &sock, &[]);

    let ping = expect(&sock, "GET", "vmm.ping", None, 200);
    assert!(ping["version"].is_string(), "{ping}");
    expect(&sock, "GET", "vm.info", None, 404);
    expect(&sock, "PUT", "vm.boot", None, 404);
    let bad = expect(&sock, "PUT", "vm.create", Some("{\"cpus\": {"), 400);
    assert!(bad[0].as_str().unwrap().contains("JSON"), "{bad}");

    let body = create_body(&guest("heartbeat"), 64, 1);
    expect(&sock, "PUT", "vm.create", Some(&body), 204);
    assert_eq!(state(&sock), "Created");
    expect(&sock, "PUT", "vm.create", Some(&body), 405);
    expect(&sock, "PUT", "vm.pause", None, 405);
    expect(&sock, "PUT", "vm.boot", None, 204);
    vm.wait_for("cpu0 tick 2", T);
    let info = expect(&sock, "GET", "vm.info", None, 200);
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["config"]["memory"]["size"], 64 << 20, "{info}");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1, "{info}");

    // Cloud Hypervisor refuses Running -> Running and Paused -> Paused: so do we.
    let (st, body) = curl(&sock, "PUT", "vm.resume", None);
    assert_eq!(st, 405, "{body:?}");
    expect(&sock, "PUT", "vm.pause", None, 204);
    assert_eq!(state(&sock), "Paused");
    let (st, body) = curl(&sock, "PUT", "vm.pause", None);
    assert_eq!(st, 405, "{body:?}");
    assert!(format!("{body:?}").contains("already paused"), "{body:?}");
    std::thread::sleep(Duration::from_millis(300));
    vm.drain();
    let during = vm.lines_during(Duration::from_millis(1500));
    assert!(during.is_empty(), "a paused guest printed {during:?}");
    expect(
        &sock,
        "PUT",
        "vm.send-migration",
        Some("{\"destination_url\":\"unix:/x\",\"connections\":0}"),
        400,
    );
    expect(&sock, "PUT", "vm.resume", None, 204);
    assert_eq!(state(&sock), "Running");
    vm.wait_for("tick", T);

    expect(&sock, "PUT", "vm.cancel-migration", None, 405);
    expect(&sock, "PUT", "vm.shutdown", None, 204);
    assert_eq!(state(&sock), "Shutdown");
    expect(&sock, "PUT", "vm.pause", None, 405);
    expect(&sock, "PUT", "vmm.shutdown", None, 204);
    wait_exit_ok(vm);
    assert!(!sock.exists(), "the API socket is removed at exit");
}

/// Two empty VMMs, the source running the dirtier guest, the destination receiving with the
/// key file over loopback TCP.
struct Pair {
    dir: RuntimeDir,
    src_sock: std::path::PathBuf,
    dst_sock: std::path::PathBuf,
    src: VmProcess,
    dst: VmProcess,
    to: String,
    key: String,
}

fn pair(tag: &str) -> Pair {
    let dir = RuntimeDir::new(tag);
    let src_sock = dir.0.join("src.sock");
    let dst_sock = dir.0.join("dst.sock");
    let mut src = VmProcess::empty(&dir.0, &src_sock, &[]);
    let body = create_body(&guest("dirtier"), 128, 2);
    expect(&src_sock, "PUT", "vm.create", Some(&body), 204);
    expect(&src_sock, "PUT", "vm.boot", None, 204);
    src.wait_for_each(&["cpu0 pass 16 ok", "cpu1 pass 16 ok"], T);
    let dst = VmProcess::empty(&dir.0, &dst_sock, &[]);
    let to = format!("tcp:127.0.0.1:{}", free_port());
    let key = test_key(&dir.0).display().to_string();
    let receive = serde_json::json!({
        "receiver_url": to, "auth_key_file": key, "memory_size": 128u64 << 20,
    });
    expect(
        &dst_sock,
        "PUT",
        "vm.receive-migration",
        Some(&receive.to_string()),
        204,
    );
    let info = expect(&dst_sock, "GET", "vm.info", None, 200);
    assert_eq!(info["migration"]["role"], "waiting", "{info}");
    assert_eq!(info["migration"]["address"], to.as_str(), "{info}");
    Pair {
        dir,
        src_sock,
        dst_sock,
        src,
        dst,
        to,
        key,
    }
}

/// Polls `vm.migration-progress` until the outcome is no longer "active".
fn poll_outcome(socket: &Path) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let p = expect(socket, "GET", "vm.migration-progress", None, 200);
        if p["outcome"] != "active" {
            return p;
        }
        assert!(Instant::now() < deadline, "the migration never ended: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_no_corruption(vm: &mut VmProcess) {
    vm.drain();
    vm.wait_for_each(&["cpu0 pass", "cpu1 pass"], T);
    vm.wait_for_each(&["cpu0 pass", "cpu1 pass"], T);
    let console = vm.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "memory corrupted: {:?}",
        &console[console.len().saturating_sub(10)..]
    );
}

#[test]
fn curl_migrates_a_guest_between_two_empty_vmms_and_reads_the_downtime() {
    if !require_kvm("curl_migrates_a_guest_between_two_empty_vmms_and_reads_the_downtime") {
        return;
    }
    let mut p = pair("curl-migrate");
    let send = serde_json::json!({
        "destination_url": p.to, "auth_key_file": p.key, "downtime_ms": 300,
        "timeout_s": 60, "timeout_strategy": "Cancel",
    });
    // Returns at once; the migration runs in the VMM.
    expect(
        &p.src_sock,
        "PUT",
        "vm.send-migration",
        Some(&send.to_string()),
        204,
    );
    expect(
        &p.src_sock,
        "PUT",
        "vm.send-migration",
        Some(&send.to_string()),
        405,
    );
    let done = poll_outcome(&p.src_sock);
    assert_eq!(done["outcome"], "completed", "{done}");
    let summary = &done["summary"];
    let downtime = summary["downtime_ms"]
        .as_f64()
        .expect("the achieved downtime");
    assert!(downtime > 0.0 && downtime < 5000.0, "{summary}");
    assert!(
        summary["downtime_breakdown"]["pause_ms"].is_number(),
        "{summary}"
    );
    eprintln!(
        "migrated through the API in {:.2} s, downtime {downtime:.1} ms",
        summary["total_seconds"].as_f64().unwrap()
    );
    // The same migration in the fields Cloud Hypervisor's progress reporting uses (the
    // struct libvirt's ch driver fork reads for `virsh domjobinfo`).
    assert_eq!(done["state"], serde_json::json!({"Finished": {}}), "{done}");
    assert_eq!(
        done["transportation_mode"],
        serde_json::json!({"Tcp": {"connections": 1, "tls": false}}),
        "{done}"
    );
    assert_eq!(done["downtime_configured_ms"], 300, "{done}");
    assert_eq!(
        done["downtime_estimated_ms"].as_u64(),
        Some(downtime.round() as u64),
        "at the end the estimate is the achieved downtime: {done}"
    );
    let mem = &done["memory_transmission_info"];
    assert_eq!(mem["memory_bytes_total"], 128u64 << 20, "{done}");
    assert!(
        mem["memory_pages_4k_transmitted"].as_u64() > Some(0),
        "{done}"
    );
    assert!(mem["memory_bytes_transmitted"].as_u64() > Some(0), "{done}");
    let (begin, snap, rel) = (
        done["timestamp_begin_ms"].as_u64().unwrap(),
        done["timestamp_snapshot_ms"].as_u64().unwrap(),
        done["timestamp_snapshot_relative_ms"].as_u64().unwrap(),
    );
    assert!(begin > 0 && snap >= begin && rel == snap - begin, "{done}");

    // The guest runs on the destination, its memory intact; the source holds no VM.
    let deadline = Instant::now() + T;
    while state(&p.dst_sock) != "Running" {
        assert!(
            Instant::now() < deadline,
            "the destination never ran the VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_corruption(&mut p.dst);
    expect(&p.src_sock, "GET", "vm.info", None, 404);
    expect(&p.src_sock, "PUT", "vmm.shutdown", None, 204);
    expect(&p.dst_sock, "PUT", "vmm.shutdown", None, 204);
    wait_exit_ok(p.src);
    wait_exit_ok(p.dst);
    drop(p.dir);
}

#[test]
fn curl_cancel_mid_transfer_leaves_the_guest_on_the_source() {
    if !require_kvm("curl_cancel_mid_transfer_leaves_the_guest_on_the_source") {
        return;
    }
    let mut p = pair("curl-cancel");
    // 1 MiB/s: the memory takes far longer than the test waits.
    let send = serde_json::json!({
        "destination_url": p.to, "auth_key_file": p.key, "max_bandwidth": 1,
    });
    expect(
        &p.src_sock,
        "PUT",
        "vm.send-migration",
        Some(&send.to_string()),
        204,
    );
    let deadline = Instant::now() + T;
    loop {
        let progress = expect(&p.src_sock, "GET", "vm.migration-progress", None, 200);
        assert_eq!(progress["outcome"], "active", "{progress}");
        let phase = &progress["state"]["Ongoing"]["phase"];
        assert!(
            phase == "Starting" || phase == "MemoryPrecopy",
            "an active migration is Ongoing in Cloud Hypervisor's terms: {progress}"
        );
        if progress["phase"] == "memory" || progress["progress"]["bytes_sent"].as_u64() > Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the memory never started moving: {progress}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = expect(&p.src_sock, "GET", "vm.info", None, 200);
    assert_eq!(info["migration"]["role"], "sending", "{info}");
    expect(&p.src_sock, "PUT", "vm.pause", None, 405);
    // Answered once the guest is back on the source.
    expect(&p.src_sock, "PUT", "vm.cancel-migration", None, 204);
    let after = expect(&p.src_sock, "GET", "vm.migration-progress", None, 200);
    assert_eq!(after["outcome"], "cancelled", "{after}");
    assert_eq!(
        after["state"],
        serde_json::json!({"Cancelled": {}}),
        "{after}"
    );
    assert!(
        after["error"].as_str().unwrap().contains("cancelled"),
        "{after}"
    );
    assert_eq!(state(&p.src_sock), "Running");
    assert_no_corruption(&mut p.src);
    // The destination discarded what it had and holds no VM.
    let deadline = Instant::now() + T;
    while curl(&p.dst_sock, "GET", "vm.info", None).0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the destination kept a half-received VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(&p.dst_sock, "PUT", "vmm.shutdown", None, 204);
    expect(&p.src_sock, "PUT", "vmm.shutdown", None, 204);
    wait_exit_ok(p.src);
    wait_exit_ok(p.dst);
    drop(p.dir);
}
