//! Booting tiny 64-bit ELF guests on /dev/kvm: entry point and serial output, port I/O and MMIO
//! dispatch, a guest triple fault, SMP bring-up.

use std::time::Duration;

use vmm_tests::{guest, require_kvm, vmm_cli, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(60);

#[test]
fn guest_reaches_its_entry_point_and_prints_on_com1() {
    if !require_kvm("guest_reaches_its_entry_point_and_prints_on_com1") {
        return;
    }
    let dir = RuntimeDir::new("hello");
    let g = guest("hello");
    let (status, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "hello",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        T,
    );
    assert!(
        out.contains("Hello from a tiny guest"),
        "stdout: {out:?} stderr: {err:?}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "a guest reset ends vmm run with 0; stderr: {err}"
    );
    assert!(err.contains("rebooted"), "stderr: {err}");
    // The API socket and the name lock are gone with the VM.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

#[test]
fn port_io_and_mmio_reach_the_owning_device() {
    if !require_kvm("port_io_and_mmio_reach_the_owning_device") {
        return;
    }
    let dir = RuntimeDir::new("io");
    let g = guest("io_dispatch");
    let (status, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "io",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        T,
    );
    assert!(out.contains("IO-OK"), "stdout: {out:?} stderr: {err:?}");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn triple_fault_ends_vmm_with_an_error_that_says_so() {
    if !require_kvm("triple_fault_ends_vmm_with_an_error_that_says_so") {
        return;
    }
    let dir = RuntimeDir::new("tf");
    let g = guest("triple_fault");
    let (status, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "tf",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        T,
    );
    assert!(out.contains("about to triple fault"), "stdout: {out:?}");
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("triple-faulted"), "stderr: {err}");
    assert!(err.contains("rip 0x2"), "the message says where: {err}");
}

#[test]
fn two_vcpus_both_make_progress() {
    if !require_kvm("two_vcpus_both_make_progress") {
        return;
    }
    let dir = RuntimeDir::new("smp");
    let g = guest("heartbeat");
    let mut vm = VmProcess::start(
        &dir.0,
        &[
            "--name",
            "smp",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--vcpus",
            "2",
        ],
    );
    // The boot CPU starts the second one with INIT/SIPI through its local APIC (MP table and
    // real-mode trampoline included); both must then tick independently.
    vm.wait_for("cpu1 tick 3", T);
    vm.wait_for("cpu0 tick 3", T);
    let (_, out, _) = vmm_cli(&dir.0, &["info", "smp", "--json"], T);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["vcpus"], 2);
    vm.signal(libc::SIGTERM);
    let (status, err) = vm.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn a_virtio_disk_answers_on_its_mmio_window() {
    if !require_kvm("a_virtio_disk_answers_on_its_mmio_window") {
        return;
    }
    let dir = RuntimeDir::new("probe");
    let disk = dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let g = guest("virtio_probe");
    let disk_arg = format!("{},serial=probe", disk.display());
    let (status, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "probe",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--disk",
            &disk_arg,
        ],
        T,
    );
    // Magic "virt", MMIO version 2, device type 2 (block), capacity in 512-byte sectors.
    assert!(
        out.contains("VIRTIO magic=0000000074726976 version=2 device=2 capacity=2048"),
        "stdout: {out:?} stderr: {err:?}"
    );
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn a_disk_in_use_by_another_vmm_is_refused() {
    if !require_kvm("a_disk_in_use_by_another_vmm_is_refused") {
        return;
    }
    let dir = RuntimeDir::new("disklock");
    let disk = dir.0.join("shared.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let hb = guest("heartbeat");
    let mut first = VmProcess::start(
        &dir.0,
        &[
            "--name",
            "first",
            "--kernel",
            hb.to_str().unwrap(),
            "--memory",
            "64M",
            "--disk",
            disk.to_str().unwrap(),
        ],
    );
    first.wait_for("cpu0 tick 1", T);
    let g = guest("hello");
    let (st, out, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "second",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--disk",
            disk.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(!out.contains("Hello"));
    assert!(err.contains("is in use by another process"), "{err}");
    // Read-only users are refused too while a writer holds it.
    let ro = format!("{},readonly=on", disk.display());
    let (st, _, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "third",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--disk",
            &ro,
        ],
        T,
    );
    assert_eq!(st.code(), Some(1), "{err}");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(T).0.code(), Some(0));
    // Released with the first VMM.
    let (st, out, _) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "second",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--disk",
            disk.to_str().unwrap(),
        ],
        T,
    );
    assert!(st.success() && out.contains("Hello"));
}
