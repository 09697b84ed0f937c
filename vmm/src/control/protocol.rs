//! Messages of the control socket.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Info,
    Pause,
    Resume,
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Created,
    Running,
    Paused,
    Migrating,
    Stopped,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<VmInfo>,
}

impl Response {
    pub fn ok() -> Self {
        Response { ok: true, error: None, info: None }
    }
    pub fn info(info: VmInfo) -> Self {
        Response { ok: true, error: None, info: Some(info) }
    }
    pub fn error(msg: impl Into<String>) -> Self {
        Response { ok: false, error: Some(msg.into()), info: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(serde_json::to_string(&Request::Pause).unwrap(), r#"{"command":"pause"}"#);
        let r: Request = serde_json::from_str(r#"{"command":"info"}"#).unwrap();
        assert_eq!(r, Request::Info);
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
        assert_eq!(serde_json::to_string(&Response::error("no")).unwrap(), r#"{"ok":false,"error":"no"}"#);
    }
}
