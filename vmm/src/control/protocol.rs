//! Messages of the control socket.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Info,
    Pause,
    Resume,
    Stop,
    /// Live-migrate the VM; the answer is a stream of progress lines, then a final one.
    Migrate(Box<MigrateRequest>),
    /// Cancel the running migration; answered once the guest is back on this host.
    MigrateCancel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// tcp:HOST:PORT or unix:PATH
    pub to: String,
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// MiB/s, 0 or absent for no limit.
    #[serde(default)]
    pub max_bandwidth_mib: Option<u64>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// "cancel" or "force".
    #[serde(default)]
    pub on_timeout: Option<String>,
    #[serde(default)]
    pub max_rounds: Option<u32>,
    #[serde(default)]
    pub auth_key_file: Option<String>,
    /// Directory of ca-cert.pem, client-cert.pem, client-key.pem (mutual TLS).
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// The name the destination's certificate must carry, when not the host in `to`.
    #[serde(default)]
    pub tls_hostname: Option<String>,
    /// Send over TCP without encryption or authentication.
    #[serde(default)]
    pub insecure: bool,
    /// Seconds a read or write on the migration connection may make no progress.
    #[serde(default)]
    pub io_timeout_secs: Option<u64>,
    /// Connections that carry the pages (1 to 128).
    #[serde(default)]
    pub connections: Option<u32>,
    /// "zstd" or "zstd:LEVEL" to compress page frames.
    #[serde(default)]
    pub compress: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// An empty VMM waiting for a VM to arrive by migration.
    Waiting,
    Created,
    Running,
    Paused,
    Migrating,
    Stopped,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            VmState::Waiting => "waiting for migration",
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Migrating => "migrating",
            VmState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub pid: u32,
    pub state: VmState,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub kernel: String,
    pub cmdline: String,
    pub uptime_secs: f64,
    /// Where a waiting destination listens, or where a migrating VM is going.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<VmInfo>,
    /// An intermediate line of a long request (migration); more lines follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<migration::progress::Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<migration::progress::Summary>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            info: None,
            progress: None,
            summary: None,
        }
    }
    pub fn info(info: VmInfo) -> Self {
        Response {
            info: Some(info),
            ..Self::ok()
        }
    }
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Self::ok()
        }
    }
    pub fn progress(p: migration::progress::Progress) -> Self {
        Response {
            progress: Some(p),
            ..Self::ok()
        }
    }
    pub fn summary(s: migration::progress::Summary) -> Self {
        Response {
            summary: Some(s),
            ..Self::ok()
        }
    }
    /// The last line of an answer.
    pub fn is_final(&self) -> bool {
        self.progress.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Pause).unwrap(),
            r#"{"command":"pause"}"#
        );
        let r: Request = serde_json::from_str(r#"{"command":"info"}"#).unwrap();
        assert_eq!(r, Request::Info);
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Response::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
