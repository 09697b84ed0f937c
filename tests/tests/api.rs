//! The API against its document: `tests/api/check_api.py` starts two empty VMMs
//! (`vmm --api-socket`), calls every endpoint of `docs/api.yaml` through a whole VM life
//! (create, boot, pause, resume, a migration between them with its progress, reboot, shutdown,
//! boot, delete, vmm.shutdown) and the error cases, and checks every status code and body
//! against the document, and the event monitors' records.

use std::process::Command;
use std::time::Duration;

use vmm_tests::{guest, require_kvm, run_bounded, vmm_bin, RuntimeDir};

#[test]
fn every_documented_endpoint_answers_as_documented() {
    if !require_kvm("every_documented_endpoint_answers_as_documented") {
        return;
    }
    let dir = RuntimeDir::new("api");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/api/check_api.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(vmm_bin())
        .arg(guest("heartbeat"))
        .arg(dir.0.join("work"));
    // python3 with Debian's python3-yaml and python3-jsonschema (make deps).
    let status = run_bounded(cmd, "check_api.py", Duration::from_secs(180));
    assert!(status.success(), "check_api.py failed: {status}");
}
