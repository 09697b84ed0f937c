//! The API answers in the bytes Cloud Hypervisor's own client expects. Its `api_client` crate
//! (used by ch-remote and by orchestrators that embed it) sends
//! "METHOD /api/v1/CMD HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n" [+ "Content-Length: N\r\n"]
//! "\r\n" [+ body], then takes the status code as the text between "HTTP/1.1 " and the first
//! CR (trimmed, so "200 " parses and "200 OK" does not), finds the body by the exact header
//! "Content-Length: ", and treats every status but 100, 200 and 204 as an error. This test
//! sends those bytes and parses the answers by those rules through a VM's whole life.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmm_tests::{guest, require_kvm, RuntimeDir, VmProcess};

/// One request as api_client writes it; the status and body as it reads them.
fn call(socket: &Path, method: &str, command: &str, body: Option<&str>) -> (u16, Option<String>) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} /api/v1/{command} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut res = String::new();
    let (mut body_offset, mut content_length) = (None, None);
    loop {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        res.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        if let Some(o) = res.find("\r\n\r\n") {
            body_offset = Some(o + 4);
            content_length = res.find("Content-Length: ").map(|o| {
                let start = o + "Content-Length: ".len();
                let end = o + res[o..].find('\r').unwrap();
                res[start..end]
                    .trim()
                    .parse::<usize>()
                    .expect("Content-Length parses")
            });
            if content_length.is_none() {
                break;
            }
        }
        if let (Some(o), Some(l)) = (body_offset, content_length) {
            if res.len() >= o + l {
                break;
            }
        }
    }
    let o = res.find("HTTP/1.1").expect("a status line");
    let code = &res[o + "HTTP/1.1 ".len()..o + res[o..].find('\r').unwrap()];
    let status: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("api_client cannot parse the status {code:?} ({e}): {res:?}"));
    let body = content_length.and(body_offset.map(|o| res[o..].to_string()));
    (status, body)
}

#[test]
fn cloud_hypervisors_client_reads_every_answer() {
    if !require_kvm("cloud_hypervisors_client_reads_every_answer") {
        return;
    }
    let dir = RuntimeDir::new("ch-client");
    let sock = dir.0.join("ch.sock");
    let mut vm = VmProcess::empty(&dir.0, &sock, &[]);
    let (st, body) = call(&sock, "GET", "vmm.ping", None);
    assert_eq!(st, 200);
    let ping: serde_json::Value = serde_json::from_str(&body.expect("a ping body")).unwrap();
    assert!(ping["version"].is_string(), "{ping}");
    // An error answer: a status api_client reports as an error, with the body it shows.
    let (st, body) = call(&sock, "GET", "vm.info", None);
    assert_eq!(st, 404);
    // Cloud Hypervisor's error body: a JSON array of the error's messages.
    let body: serde_json::Value = serde_json::from_str(&body.expect("an error body")).unwrap();
    assert!(
        body.as_array()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|s| s.is_string())),
        "{body}"
    );

    let create = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": guest("heartbeat"), "cmdline": "console=ttyS0"},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    })
    .to_string();
    assert_eq!(call(&sock, "PUT", "vm.create", Some(&create)), (204, None));
    assert_eq!(call(&sock, "PUT", "vm.boot", None), (204, None));
    vm.wait_for("cpu0 tick 2", Duration::from_secs(60));
    let (st, body) = call(&sock, "GET", "vm.info", None);
    assert_eq!(st, 200);
    let info: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(call(&sock, "PUT", "vm.pause", None), (204, None));
    assert_eq!(call(&sock, "PUT", "vm.resume", None), (204, None));
    let (st, body) = call(&sock, "GET", "vm.migration-progress", None);
    assert_eq!(st, 200, "{body:?}");
    assert_eq!(call(&sock, "PUT", "vm.shutdown", None), (204, None));
    assert_eq!(call(&sock, "PUT", "vmm.shutdown", None), (204, None));
    let (st, err) = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{err}");
}
