//! The API through a client we did not write: `curl --unix-socket`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One request with curl; returns the status and the body (JSON or null).
pub fn curl(socket: &Path, method: &str, endpoint: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("http://localhost/api/v1/{endpoint}"));
    let out = cmd.output().expect("curl runs (Debian's curl: make deps)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    let status: u16 = code.trim().parse().expect("a status code");
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{endpoint}: not JSON ({e}): {body}"))
    };
    (status, value)
}

/// Expects `status`; an error answer must carry a message.
pub fn expect(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
    status: u16,
) -> Value {
    let (got, value) = curl(socket, method, endpoint, body);
    assert_eq!(got, status, "{method} {endpoint}: {value}");
    if status >= 400 {
        assert!(
            value[0].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {endpoint}: an error without a message: {value}"
        );
    }
    value
}

pub fn state(socket: &Path) -> String {
    expect(socket, "GET", "vm.info", None, 200)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn create_body(kernel: &Path, memory_mib: u64, vcpus: u8) -> String {
    serde_json::json!({
        "cpus": {"boot_vcpus": vcpus, "max_vcpus": vcpus},
        "memory": {"size": memory_mib << 20},
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    })
    .to_string()
}
