//! Tap devices passed to the VMM as descriptors over its API socket (SCM_RIGHTS), as Cloud
//! Hypervisor's clients pass them: `tests/api/fd_passing.py` (Python's socket.send_fds, an
//! independent client) hands a tap over with vm.add-net and checks that the guest's NIC
//! receives frames through it, that every wrong descriptor is refused and closed, and that a
//! destination granted its NIC through `net_fds` carries the guest's frames after a
//! migration. It runs inside a network namespace of this test's, where it creates the taps.

use std::process::Command;
use std::time::Duration;

use vmm_tests::{guest, require_kvm, require_root, run_bounded, vmm_bin, Netns, RuntimeDir};

#[test]
fn taps_passed_over_the_api_socket_carry_the_guests_frames() {
    let test = "taps_passed_over_the_api_socket_carry_the_guests_frames";
    if !require_kvm(test) || !require_root(test) {
        return;
    }
    let dir = RuntimeDir::new("fd-passing");
    let ns = Netns::new("fd");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/api/fd_passing.py");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, "python3", script])
        .arg(vmm_bin())
        .arg(guest("net_rx"))
        .arg(dir.0.join("work"));
    let status = run_bounded(cmd, "fd_passing.py", Duration::from_secs(180));
    assert!(status.success(), "fd_passing.py failed: {status}");
}
