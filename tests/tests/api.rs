//! The API against its document: `tests/api/check_api.py` starts two empty VMMs
//! (`vmm --api-socket`), calls every endpoint of `docs/api.yaml` through a whole VM life
//! (create, boot, pause, resume, a migration between them with its progress, reboot, shutdown,
//! boot, delete, vmm.shutdown) and the error cases, and checks every status code and body
//! against the document, and the event monitors' records.

use std::process::Command;
use std::time::Duration;

use vmm_tests::{guest, require_kvm, vmm_bin, RuntimeDir};

#[test]
fn every_documented_endpoint_answers_as_documented() {
    if !require_kvm("every_documented_endpoint_answers_as_documented") {
        return;
    }
    let dir = RuntimeDir::new("api");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/api/check_api.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(vmm_bin())
        .arg(guest("heartbeat"))
        .arg(dir.0.join("work"))
        .spawn()
        .expect("python3 runs (Debian's python3-yaml and python3-jsonschema: make deps)");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            // SIGTERM lets the script stop the VMMs it started (by PID), then it is killed.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            panic!("check_api.py did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "check_api.py failed: {status}");
}
