//! Requests and answers of the API, and the parser that turns a method, a path and a body into
//! a request (pure, so it is fuzzed: `tests/fuzz/fuzz_targets/api_request.rs`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{ApiDisk, ApiNet, ApiVmConfig, ErrorBody, ReceiveMigration, SendMigration};

/// Every path is under this prefix, as in Cloud Hypervisor.
pub(crate) const API_PREFIX: &str = "/api/v1/";

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    VmmPing,
    VmmShutdown,
    VmCreate(Box<ApiVmConfig>),
    VmBoot,
    VmInfo,
    VmPause,
    /// `force`: resume a guest whose migration committed without a confirmation (ours; an
    /// optional body `{"force": true}`, which Cloud Hypervisor's clients never send).
    VmResume {
        force: bool,
    },
    VmShutdown,
    VmReboot,
    VmDelete,
    /// A NIC added to the created VM's config (before `vm.boot`), its tap by name or passed.
    VmAddNet(Box<ApiNet>),
    /// A disk added to the created VM's config (before `vm.boot`).
    VmAddDisk(Box<ApiDisk>),
    SendMigration(Box<SendMigration>),
    MigrationProgress,
    CancelMigration,
    ReceiveMigration(Box<ReceiveMigration>),
}

/// An HTTP method this API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

/// The endpoints: name, method, whether a JSON body is required.
pub(crate) const ENDPOINTS: &[(&str, Method, bool)] = &[
    ("vmm.ping", Method::Get, false),
    ("vmm.shutdown", Method::Put, false),
    ("vm.create", Method::Put, true),
    ("vm.boot", Method::Put, false),
    ("vm.info", Method::Get, false),
    ("vm.pause", Method::Put, false),
    ("vm.resume", Method::Put, false),
    ("vm.shutdown", Method::Put, false),
    ("vm.reboot", Method::Put, false),
    ("vm.delete", Method::Put, false),
    ("vm.add-net", Method::Put, true),
    ("vm.add-disk", Method::Put, true),
    ("vm.send-migration", Method::Put, true),
    ("vm.migration-progress", Method::Get, false),
    ("vm.cancel-migration", Method::Put, false),
    ("vm.receive-migration", Method::Put, true),
];

/// Where the answer to an API request goes.
pub type Responder = tokio::sync::oneshot::Sender<ApiResponse>;

/// Sends an answer; a client that went away does not matter.
pub(crate) fn respond(reply: Responder, answer: ApiResponse) {
    let _ = reply.send(answer);
}

/// An answer: a status code and, unless it is 204, a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl ApiResponse {
    pub(crate) fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    pub(crate) fn json(value: &impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => ApiResponse {
                status: 200,
                body: Some(v),
            },
            Err(e) => Self::error(500, format!("cannot encode the answer: {e}")),
        }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse {
            status,
            body: serde_json::to_value(ErrorBody(vec![message.into()])).ok(),
        }
    }

    /// An error answer carrying `error` and each of its sources, one message per level.
    pub(crate) fn from_error(status: u16, error: &dyn std::error::Error) -> Self {
        ApiResponse {
            status,
            body: serde_json::to_value(ErrorBody(migration::error_messages(error))).ok(),
        }
    }

    /// 400: the request itself is wrong.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::error(400, message)
    }

    /// 404: there is no VM to act on.
    pub(crate) fn no_vm() -> Self {
        Self::error(404, "no VM has been created in this VMM")
    }

    /// 405: the VM's state forbids this now.
    pub(crate) fn not_now(message: impl Into<String>) -> Self {
        Self::error(405, message)
    }
}

/// Parses one request. Errors are complete answers (404 unknown path, 405 wrong method, 400
/// bad body).
pub fn parse(method: Method, path: &str, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let path = path.split('?').next().unwrap_or(path);
    let Some(endpoint) = path.strip_prefix(API_PREFIX) else {
        return Err(ApiResponse::error(
            404,
            format!("no such endpoint: {path} (the API is under {API_PREFIX})"),
        ));
    };
    let Some(&(name, expected, needs_body)) = ENDPOINTS.iter().find(|(n, _, _)| *n == endpoint)
    else {
        return Err(ApiResponse::error(
            404,
            format!("no such endpoint: {endpoint}"),
        ));
    };
    if method != expected {
        return Err(ApiResponse::error(
            405,
            format!(
                "{name} takes {}",
                if expected == Method::Get {
                    "GET"
                } else {
                    "PUT"
                }
            ),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(ApiResponse::error(
            413,
            format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    if needs_body && body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiResponse::bad_request(format!(
            "{name} needs a JSON body"
        )));
    }
    Ok(match name {
        "vmm.ping" => ApiRequest::VmmPing,
        "vmm.shutdown" => ApiRequest::VmmShutdown,
        "vm.create" => ApiRequest::VmCreate(Box::new(decode(name, body)?)),
        "vm.boot" => ApiRequest::VmBoot,
        "vm.info" => ApiRequest::VmInfo,
        "vm.pause" => ApiRequest::VmPause,
        "vm.resume" if body.iter().all(u8::is_ascii_whitespace) => {
            ApiRequest::VmResume { force: false }
        }
        "vm.resume" => ApiRequest::VmResume {
            force: decode::<ResumeBody>(name, body)?.force,
        },
        "vm.shutdown" => ApiRequest::VmShutdown,
        "vm.reboot" => ApiRequest::VmReboot,
        "vm.delete" => ApiRequest::VmDelete,
        "vm.add-net" => ApiRequest::VmAddNet(Box::new(decode(name, body)?)),
        "vm.add-disk" => ApiRequest::VmAddDisk(Box::new(decode(name, body)?)),
        "vm.send-migration" => ApiRequest::SendMigration(Box::new(decode(name, body)?)),
        "vm.migration-progress" => ApiRequest::MigrationProgress,
        "vm.cancel-migration" => ApiRequest::CancelMigration,
        "vm.receive-migration" => ApiRequest::ReceiveMigration(Box::new(decode(name, body)?)),
        _ => unreachable!("every endpoint in ENDPOINTS is matched"),
    })
}

/// Gives a request the descriptors that came with it (SCM_RIGHTS on the API socket), as
/// Cloud Hypervisor does: `vm.add-net` takes them all for its NIC; `vm.create` and
/// `vm.receive-migration` hand them out in order to the NICs whose `fds` (or `net_fds`
/// entry) asks for them. A request that leaves any unclaimed, or any other request that
/// carries some, is refused (400), and every descriptor it carried is closed.
pub(crate) fn give_fds(
    request: &mut ApiRequest,
    fds: Vec<std::os::fd::OwnedFd>,
    overflowed: usize,
) -> Result<(), ApiResponse> {
    use crate::config::PassedFd;
    use std::sync::Arc;
    if overflowed > 0 {
        return Err(ApiResponse::bad_request(format!(
            "more than {} file descriptors came with the request; none was kept",
            super::fd_stream::MAX_HELD
        )));
    }
    if fds.is_empty() {
        return Ok(());
    }
    let count = fds.len();
    let mut fds = fds.into_iter().map(|fd| PassedFd(Arc::new(fd)));
    let mut take = |net: &mut ApiNet, n: usize, what: &str| -> Result<(), ApiResponse> {
        for _ in 0..n {
            let fd = fds.next().ok_or_else(|| {
                ApiResponse::bad_request(format!(
                    "{what} asks for more file descriptors than the {count} that came with the request"
                ))
            })?;
            net.passed.push(fd);
        }
        Ok(())
    };
    match request {
        ApiRequest::VmAddNet(net) => take(net, count, "vm.add-net")?,
        ApiRequest::VmCreate(cfg) => {
            for (i, net) in cfg.net.iter_mut().flatten().enumerate() {
                let n = net.fds.as_ref().map_or(0, Vec::len);
                take(net, n, &format!("net[{i}].fds"))?;
            }
        }
        ApiRequest::ReceiveMigration(req) => {
            let mut grants = req.net.take().unwrap_or_default();
            for (i, net) in grants.iter_mut().enumerate() {
                let n = net.fds.as_ref().map_or(0, Vec::len);
                take(net, n, &format!("net[{i}].fds"))?;
            }
            for entry in req.net_fds.iter().flatten() {
                let net = grants
                    .iter_mut()
                    .find(|n| n.id.as_deref() == Some(entry.id.as_str()))
                    .ok_or_else(|| {
                        ApiResponse::bad_request(format!(
                            "net_fds: no net[] grant has the id '{}'",
                            entry.id
                        ))
                    })?;
                take(net, entry.num_fds, &format!("net_fds '{}'", entry.id))?;
            }
            req.net = Some(grants);
        }
        _ => {
            return Err(ApiResponse::bad_request(
                "this request takes no file descriptors; the ones passed were closed",
            ))
        }
    }
    let left = fds.count();
    if left > 0 {
        return Err(ApiResponse::bad_request(format!(
            "{left} of the {count} file descriptors passed are claimed by no NIC (net[].fds, net_fds); all were closed"
        )));
    }
    Ok(())
}

/// The optional body of `vm.resume`.
#[derive(serde::Deserialize)]
struct ResumeBody {
    #[serde(default)]
    force: bool,
}

fn decode<T: DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, ApiResponse> {
    serde_json::from_slice(body)
        .map_err(|e| ApiResponse::bad_request(format!("{name}: bad JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_methods_and_bodies() {
        assert_eq!(
            parse(Method::Get, "/api/v1/vmm.ping", b""),
            Ok(ApiRequest::VmmPing)
        );
        assert_eq!(
            parse(Method::Put, "/api/v1/vmm.ping", b"")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            parse(Method::Get, "/api/v1/vm.explode", b"")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(parse(Method::Get, "/vm.info", b"").unwrap_err().status, 404);
        assert_eq!(
            parse(Method::Put, "/api/v1/vm.create", b"")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(Method::Put, "/api/v1/vm.create", b"{\"cpus\":")
                .unwrap_err()
                .status,
            400
        );
        // Unknown fields are ignored, as Cloud Hypervisor's clients send more than we use.
        let r = parse(
            Method::Put,
            "/api/v1/vm.create",
            br#"{"cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":67108864,"shared":false},
                "payload":{"kernel":"/k"},"rng":{"src":"/dev/urandom"}}"#,
        )
        .unwrap();
        let ApiRequest::VmCreate(cfg) = r else {
            panic!("{r:?}")
        };
        assert_eq!(cfg.cpus.boot_vcpus, 2);
        assert_eq!(cfg.memory.size, 64 << 20);
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            parse(Method::Put, "/api/v1/vm.create", &big)
                .unwrap_err()
                .status,
            413
        );
    }

    /// docs/api.yaml documents exactly the endpoints served, with their methods.
    #[test]
    fn the_openapi_document_lists_exactly_what_is_served() {
        let doc = include_str!("../../../docs/api.yaml");
        let mut documented = Vec::new();
        let mut path: Option<&str> = None;
        for line in doc.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(p);
            } else if let (Some(p), Some(m)) = (path, line.strip_prefix("    ")) {
                match m.trim_end_matches(':') {
                    "get" => documented.push((p, Method::Get)),
                    "put" => documented.push((p, Method::Put)),
                    _ => {}
                }
            } else if !line.starts_with("    ") {
                path = None;
            }
        }
        let served: Vec<(&str, Method)> = ENDPOINTS.iter().map(|(n, m, _)| (*n, *m)).collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn create_validates_like_vmm_run() {
        let cfg = |json: &str| serde_json::from_str::<ApiVmConfig>(json).unwrap();
        let ok = cfg(r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t0"}]}"#);
        let (vm, _) = ok.to_config("web").unwrap();
        assert_eq!(vm.vcpus, 1);
        assert_eq!(vm.memory_bytes, 256 << 20);
        assert_eq!(vm.nets.len(), 1);
        // A PTY, asked for as the serial port or (libvirt's way) as the console: vm.info
        // reports its path where Cloud Hypervisor's clients read it.
        for (json, console_reported) in [
            (
                r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Pty"}}"#,
                false,
            ),
            (
                r#"{"payload":{"kernel":"/k"},"console":{"mode":"Pty"}}"#,
                true,
            ),
        ] {
            let (vm, sink) = cfg(json).to_config("web").unwrap();
            let shown = ApiVmConfig::from_config(&vm, &sink);
            let file = shown.serial.unwrap().file.unwrap();
            assert!(file.starts_with("/dev/pts"), "{file:?}");
            let console = shown.console.unwrap();
            assert_eq!(console.file.is_some(), console_reported, "{json}");
        }
        for (json, why) in [
            (
                r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0}}"#,
                "boot_vcpus",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":200}}"#,
                "boot_vcpus",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"memory":{"size":4096}}"#,
                "memory.size",
            ),
            (r#"{}"#, "payload.kernel"),
            (
                r#"{"payload":{"kernel":"/k"},"net":[{"mac":"52:54:00:00:00:01"}]}"#,
                "tap",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Socket"}}"#,
                "serial.socket",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Tty"},"console":{"mode":"Pty"}}"#,
                "one console",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"console":{"mode":"Tty"}}"#,
                "virtio console",
            ),
        ] {
            let err = cfg(json).to_config("web").unwrap_err();
            assert!(crate::error_chain(&err).contains(why), "{json}: {err}");
        }
    }
}
