//! Every instruction runs exactly once across a migration: a guest that does nothing but port
//! I/O (it polls the UART's line status, an IN, before writing each byte of a count, an OUT)
//! is migrated host1 -> host2 -> host1 -> host2 while it counts. A pause lands right after an
//! I/O exit; unless the vCPU completes that instruction in KVM before its state is saved (the
//! KVM API's rule), the saved RIP still points at the OUT and the next host writes the byte
//! again. The consoles of all four runs, joined in order, must be the unbroken count: no byte
//! twice, none missing. A second guest adds an MMIO read and write before every byte.

use std::time::{Duration, Instant};

use vmm_tests::{
    destination, free_port, guest, migrate_to_port, require_kvm, Incoming, RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);
const HOPS: usize = 3;

/// Waits until the process's console holds at least `bytes` bytes.
fn wait_output(vm: &VmProcess, bytes: usize) {
    let deadline = Instant::now() + T;
    while vm.raw.lock().unwrap().len() < bytes {
        assert!(Instant::now() < deadline, "the guest printed too little");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks that `out` is "1\n2\n3\n..." (its last number may be cut short); returns the count.
fn check_count(out: &[u8]) -> u64 {
    let mut expected = Vec::with_capacity(out.len() + 32);
    let mut n = 0u64;
    while expected.len() < out.len() {
        n += 1;
        expected.extend_from_slice(format!("{n}\n").as_bytes());
    }
    if let Some(at) = out.iter().zip(&expected).position(|(a, b)| a != b) {
        let from = at.saturating_sub(40);
        panic!(
            "the count breaks at byte {at}: got {:?}, expected {:?}",
            String::from_utf8_lossy(&out[from..(at + 40).min(out.len())]),
            String::from_utf8_lossy(&expected[from..(at + 40).min(expected.len())])
        );
    }
    n
}

#[test]
fn a_guest_doing_port_io_migrated_three_times_prints_each_byte_exactly_once() {
    let test = "a_guest_doing_port_io_migrated_three_times_prints_each_byte_exactly_once";
    if !require_kvm(test) {
        return;
    }
    count_across_hops("counter", &[]);
}

/// The same with MMIO beside the port I/O: before each byte the guest reads the virtio-mmio
/// disk's magic register and writes its InterruptACK (guests/mmio_counter.S), so pauses also
/// land right after MMIO exits; a read whose value did not land prints '!' into the count.
#[test]
fn a_guest_doing_mmio_and_port_io_migrated_three_times_prints_each_byte_exactly_once() {
    let test = "a_guest_doing_mmio_and_port_io_migrated_three_times_prints_each_byte_exactly_once";
    if !require_kvm(test) {
        return;
    }
    let storage = RuntimeDir::new("once-disk");
    let disk = storage.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    count_across_hops("mmio_counter", &["--disk", disk.to_str().unwrap()]);
}

/// Runs `guest` (a counter) with `devices`, migrates it host1 -> host2 -> host1 -> host2 (each
/// destination granted the same devices, as on shared storage), stops it, and checks that the
/// consoles joined in order are the unbroken count.
fn count_across_hops(guest_name: &str, devices: &[&str]) {
    let hosts = [RuntimeDir::new("once-host1"), RuntimeDir::new("once-host2")];
    let g = guest(guest_name);
    let mut args = vec![
        "--name",
        "cnt",
        "--kernel",
        g.to_str().unwrap(),
        "--memory",
        "64M",
    ];
    args.extend_from_slice(devices);
    let mut vm = VmProcess::start_raw(&hosts[0].0, &args);
    let mut outputs = Vec::new();
    for hop in 0..HOPS {
        let (from, to) = (&hosts[hop % 2].0, &hosts[(hop + 1) % 2].0);
        wait_output(&vm, 20_000);
        let port = free_port();
        let dst = destination(
            to,
            "cnt",
            port,
            Incoming {
                extra: devices,
                raw: true,
                ..Incoming::default()
            },
        );
        let (st, out, err) = migrate_to_port(from, "cnt", port);
        assert!(st.success(), "hop {hop}: {out}{err}");
        let raw = vm.raw.clone();
        let (st, err) = vm.wait_exit(T);
        assert_eq!(st.code(), Some(0), "hop {hop}: {err}");
        outputs.push(std::mem::take(&mut *raw.lock().unwrap()));
        vm = dst;
    }
    wait_output(&vm, 20_000);
    let (st, _, err) = vmm_tests::vmm_cli(&hosts[HOPS % 2].0, &["stop", "cnt"], T);
    assert!(st.success(), "{err}");
    let raw = vm.raw.clone();
    let (st, err) = vm.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    outputs.push(std::mem::take(&mut *raw.lock().unwrap()));

    let sizes: Vec<usize> = outputs.iter().map(Vec::len).collect();
    let joined = outputs.concat();
    let count = check_count(&joined);
    eprintln!(
        "{guest_name}, {HOPS} hops: console bytes per host {sizes:?}, the count reached {count}, unbroken"
    );
}
