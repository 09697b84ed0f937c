//! The JSON bodies of the API, with Cloud Hypervisor's field names (a subset of its `VmConfig`,
//! `VmInfo`, `VmmPingResponse`, `SendMigrationData`, `ReceiveMigrationData`) and our additions.
//! Unknown fields are ignored everywhere, as Cloud Hypervisor's clients send more than we use.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config_error::ConfigRequestError;
use crate::config::{self, DiskConfig, NetConfig, VmConfig};

/// Memory of a VM created without `memory.size`.
pub(crate) const DEFAULT_MEMORY: u64 = 256 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u8,
    /// Accepted for compatibility; must equal `boot_vcpus` (no CPU hotplug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u8>,
    /// Our addition: the CPU model (host, x86-64-v2, x86-64-v3; host when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Our addition: hardware virtualization shown to the guest (such a VM cannot migrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: None,
            model: None,
            nested: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// `{"path": ...}` of an older Cloud Hypervisor's `kernel` and `initramfs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LegacyPath {
    pub path: PathBuf,
}

/// `{"args": ...}` of an older Cloud Hypervisor's `cmdline`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LegacyCmdline {
    pub args: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiDisk {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiNet {
    /// The tap device (created if it does not exist); with `fds`, the name it must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// 52:54:00:12:34:56; derived from the VM name and the NIC's position when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Cloud Hypervisor's device id (accepted; `net_fds` of `vm.receive-migration` names a
    /// NIC by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tap descriptors passed with the request (SCM_RIGHTS on the API socket), as Cloud
    /// Hypervisor takes them: the numbers are the client's and mean nothing here, their count
    /// says how many of the passed descriptors this NIC takes (this VMM: exactly one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// The descriptors themselves, given to this NIC by the API server.
    #[serde(skip)]
    pub passed: Vec<crate::config::PassedFd>,
}

impl From<&DiskConfig> for ApiDisk {
    fn from(d: &DiskConfig) -> Self {
        ApiDisk {
            path: d.path.clone(),
            readonly: d.readonly,
            direct: d.direct,
            serial: d.serial.clone(),
        }
    }
}

impl From<&NetConfig> for ApiNet {
    fn from(n: &NetConfig) -> Self {
        ApiNet {
            tap: Some(n.tap.clone()),
            mac: Some(devices::virtio::net::format_mac(&n.mac)),
            passed: n.tap_fd.iter().cloned().collect(),
            ..ApiNet::default()
        }
    }
}

/// Where the serial port's output goes (Cloud Hypervisor's `ConsoleConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Null,
    Tty,
    File,
    Pty,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Mode Socket: the Unix socket the VMM serves the console on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl ConsoleConfig {
    fn of(mode: ConsoleMode) -> Self {
        ConsoleConfig {
            mode,
            file: None,
            socket: None,
        }
    }
}

/// The subset of Cloud Hypervisor's `VmConfig` this VMM understands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVmConfig {
    #[serde(default)]
    pub cpus: CpusConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub payload: PayloadConfig,
    /// Cloud Hypervisor before v28 (Debian's 9.0 among them, and the libvirt ch driver built
    /// for it) sends the kernel as `kernel.path`, `cmdline.args` and `initramfs.path` instead
    /// of `payload`; taken where `payload` does not say.
    #[serde(default, skip_serializing)]
    pub kernel: Option<LegacyPath>,
    #[serde(default, skip_serializing)]
    pub cmdline: Option<LegacyCmdline>,
    #[serde(default, skip_serializing)]
    pub initramfs: Option<LegacyPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<ApiDisk>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<ApiNet>>,
    /// The serial port (ttyS0): Tty (the VMM's standard output, the default), Null, Off or File.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    /// The virtio console: this VMM has none, so only Off and Null are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
}

/// Where the guest's serial output goes (and, for a terminal or PTY, where its input comes
/// from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSink {
    Stdout,
    Discard,
    File(PathBuf),
    Pty(std::sync::Arc<crate::console::pty::PtyConsole>),
    Socket(std::sync::Arc<crate::console::socket::SocketConsole>),
}

impl SerialSink {
    /// `vmm run --serial tty|pty|socket=PATH|file=PATH|null`.
    pub(crate) fn parse(arg: &str) -> Result<Self, ConfigRequestError> {
        let path_after = |prefix| {
            arg.strip_prefix(prefix)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        let config = match arg {
            "tty" => ConsoleConfig::of(ConsoleMode::Tty),
            "pty" => ConsoleConfig::of(ConsoleMode::Pty),
            "null" | "off" => ConsoleConfig::of(ConsoleMode::Null),
            _ => match (path_after("file="), path_after("socket=")) {
                (Some(file), _) => ConsoleConfig {
                    file: Some(file),
                    ..ConsoleConfig::of(ConsoleMode::File)
                },
                (_, Some(socket)) => ConsoleConfig {
                    socket: Some(socket),
                    ..ConsoleConfig::of(ConsoleMode::Socket)
                },
                _ => return Err(ConfigRequestError::SerialArg(arg.to_string())),
            },
        };
        serial_sink(Some(&config), None)
    }

    /// Opens the sink (a file is created or appended to).
    pub(crate) fn open(&self) -> std::io::Result<Box<dyn std::io::Write + Send>> {
        Ok(match self {
            SerialSink::Stdout => Box::new(std::io::stdout()),
            SerialSink::Discard => Box::new(std::io::sink()),
            SerialSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            SerialSink::Pty(pty) => Box::new(pty.writer()?),
            SerialSink::Socket(socket) => Box::new(socket.writer()),
        })
    }
}

impl ApiVmConfig {
    /// Checks the request against the limits `vmm run` applies and builds the VM's config.
    pub fn to_config(&self, name: &str) -> Result<(VmConfig, SerialSink), ConfigRequestError> {
        let vcpus = config::validate_vcpus(u64::from(self.cpus.boot_vcpus))
            .map_err(|e| ConfigRequestError::Invalid("cpus.boot_vcpus", e))?;
        if let Some(max) = self.cpus.max_vcpus {
            if max != self.cpus.boot_vcpus {
                return Err(ConfigRequestError::Hotplug);
            }
        }
        config::validate_memory(self.memory.size)
            .map_err(|e| ConfigRequestError::Invalid("memory.size", e))?;
        let kernel = self
            .payload
            .kernel
            .clone()
            .or_else(|| self.kernel.as_ref().map(|k| k.path.clone()))
            .ok_or(ConfigRequestError::NoKernel)?;
        let (disks, nets) = devices_from_api(self.disks.as_deref(), self.net.as_deref(), name)?;
        let serial = serial_sink(self.serial.as_ref(), self.console.as_ref())?;
        let vm = VmConfig {
            name: name.to_string(),
            kernel,
            initrd: self
                .payload
                .initramfs
                .clone()
                .or_else(|| self.initramfs.as_ref().map(|i| i.path.clone())),
            cmdline: self
                .payload
                .cmdline
                .clone()
                .or_else(|| self.cmdline.as_ref().map(|c| c.args.clone()))
                .unwrap_or_else(|| config::DEFAULT_CMDLINE.to_string()),
            memory_bytes: self.memory.size,
            vcpus,
            disks,
            nets,
            cpu_model: config::validate_cpu_model(self.cpus.model.as_deref().unwrap_or("host"))
                .map_err(|e| ConfigRequestError::Invalid("cpus.model", e))?,
            nested: self.cpus.nested.unwrap_or(false),
        };
        Ok((vm, serial))
    }

    /// The API's view of a VM's config.
    pub(crate) fn from_config(vm: &VmConfig, serial: &SerialSink) -> Self {
        ApiVmConfig {
            cpus: CpusConfig {
                boot_vcpus: vm.vcpus,
                max_vcpus: Some(vm.vcpus),
                model: Some(vm.cpu_model.clone()),
                nested: Some(vm.nested),
            },
            memory: MemoryConfig {
                size: vm.memory_bytes,
            },
            payload: PayloadConfig {
                kernel: Some(vm.kernel.clone()),
                initramfs: vm.initrd.clone(),
                cmdline: Some(vm.cmdline.clone()),
            },
            kernel: None,
            cmdline: None,
            initramfs: None,
            disks: Some(vm.disks.iter().map(ApiDisk::from).collect()),
            net: Some(vm.nets.iter().map(ApiNet::from).collect()),
            serial: Some(match serial {
                SerialSink::Stdout => ConsoleConfig::of(ConsoleMode::Tty),
                SerialSink::Discard => ConsoleConfig::of(ConsoleMode::Null),
                SerialSink::File(p) => ConsoleConfig {
                    file: Some(p.clone()),
                    ..ConsoleConfig::of(ConsoleMode::File)
                },
                SerialSink::Pty(pty) => ConsoleConfig {
                    file: Some(pty.path().to_path_buf()),
                    ..ConsoleConfig::of(ConsoleMode::Pty)
                },
                SerialSink::Socket(socket) => ConsoleConfig {
                    socket: Some(socket.path().to_path_buf()),
                    ..ConsoleConfig::of(ConsoleMode::Socket)
                },
            }),
            console: Some(match serial {
                SerialSink::Pty(pty) if pty.via_console => ConsoleConfig {
                    file: Some(pty.path().to_path_buf()),
                    ..ConsoleConfig::of(ConsoleMode::Pty)
                },
                _ => ConsoleConfig::of(ConsoleMode::Off),
            }),
        }
    }
}

/// Where the serial port goes, from `serial` and `console` as Cloud Hypervisor's clients send
/// them. This VMM has one console, the serial port (ttyS0): a `console` PTY (libvirt's
/// `<console type='pty'>`) is served by it when `serial` does not claim it otherwise, and
/// reported as both; any other `console` but Off and Null is refused.
fn serial_sink(
    serial: Option<&ConsoleConfig>,
    console: Option<&ConsoleConfig>,
) -> Result<SerialSink, ConfigRequestError> {
    let console_pty = match console.map(|c| c.mode) {
        None | Some(ConsoleMode::Off) | Some(ConsoleMode::Null) => false,
        Some(ConsoleMode::Pty) => true,
        Some(other) => return Err(ConfigRequestError::Console(format!("{other:?}"))),
    };
    let open_pty = |via_console| {
        crate::console::pty::PtyConsole::open(via_console)
            .map(SerialSink::Pty)
            .map_err(ConfigRequestError::Pty)
    };
    match (serial.map(|c| c.mode), console_pty) {
        (None | Some(ConsoleMode::Off) | Some(ConsoleMode::Null), true) => open_pty(true),
        (Some(_), true) => Err(ConfigRequestError::TwoConsoles),
        (None, false) | (Some(ConsoleMode::Tty), false) => Ok(SerialSink::Stdout),
        (Some(ConsoleMode::Off) | Some(ConsoleMode::Null), false) => Ok(SerialSink::Discard),
        (Some(ConsoleMode::File), false) => Ok(SerialSink::File(
            serial
                .and_then(|c| c.file.clone())
                .ok_or(ConfigRequestError::SerialFile)?,
        )),
        (Some(ConsoleMode::Pty), false) => open_pty(false),
        (Some(ConsoleMode::Socket), false) => {
            let path = serial
                .and_then(|c| c.socket.clone())
                .ok_or(ConfigRequestError::SerialSocket)?;
            crate::console::socket::SocketConsole::open(&path)
                .map(SerialSink::Socket)
                .map_err(|e| ConfigRequestError::Socket(path, e))
        }
    }
}

/// `vm.add-net` before `vm.boot`: the NIC joins the created VM's config (a MAC derived from
/// its position when none is given); a tap the VM uses already is refused.
pub(crate) fn add_net(vm: &mut VmConfig, net: &ApiNet) -> Result<AddedDevice, ConfigRequestError> {
    let index = vm.nets.len();
    let (_, mut nics) = devices_from_api(None, Some(std::slice::from_ref(net)), &vm.name)?;
    let mut nic = nics.pop().expect("one NIC asked for, one built");
    if net.mac.is_none() {
        nic.mac = devices::virtio::net::default_mac(&vm.name, index);
    }
    if vm.nets.iter().any(|n| n.tap == nic.tap) {
        return Err(ConfigRequestError::TapInUse(nic.tap));
    }
    vm.nets.push(nic);
    Ok(AddedDevice {
        id: net.id.clone().unwrap_or_else(|| format!("net{index}")),
    })
}

/// `vm.add-disk` before `vm.boot`: the disk joins the created VM's config; an image the VM
/// has already is refused.
pub(crate) fn add_disk(
    vm: &mut VmConfig,
    disk: &ApiDisk,
) -> Result<AddedDevice, ConfigRequestError> {
    let index = vm.disks.len();
    let (mut disks, _) = devices_from_api(Some(std::slice::from_ref(disk)), None, &vm.name)?;
    let d = disks.pop().expect("one disk asked for, one built");
    if vm.disks.iter().any(|x| x.path == d.path) {
        return Err(ConfigRequestError::DiskInUse(d.path));
    }
    vm.disks.push(d);
    Ok(AddedDevice {
        id: format!("disk{index}"),
    })
}

/// Checks the `disks` and `net` of a request (`vm.create`, or the grants of
/// `vm.receive-migration`) as `vmm run` checks `--disk` and `--net`; a NIC without a MAC gets
/// one derived from `vm_name` and its position.
pub(crate) fn devices_from_api(
    disks: Option<&[ApiDisk]>,
    nets: Option<&[ApiNet]>,
    vm_name: &str,
) -> Result<(Vec<DiskConfig>, Vec<NetConfig>), ConfigRequestError> {
    let disks = disks
        .unwrap_or_default()
        .iter()
        .map(|d| {
            if let Some(serial) = &d.serial {
                if serial.len() > 20 || !serial.is_ascii() {
                    return Err(ConfigRequestError::DiskSerial);
                }
            }
            Ok(DiskConfig {
                path: d.path.clone(),
                readonly: d.readonly,
                direct: d.direct,
                serial: d.serial.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nets = nets
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let passed = match (n.passed.as_slice(), &n.fds) {
                ([], Some(named)) if !named.is_empty() => {
                    return Err(ConfigRequestError::FdsMissing {
                        index: i,
                        named: named.len(),
                    })
                }
                ([], _) => None,
                ([one], _) => Some(one.clone()),
                (many, _) => {
                    return Err(ConfigRequestError::TooManyFds {
                        index: i,
                        count: many.len(),
                    })
                }
            };
            let tap = match &passed {
                Some(fd) => {
                    let name = devices::virtio::net::tap_name(&*fd.0)
                        .map_err(|e| ConfigRequestError::PassedFd(i, e))?;
                    if let Some(asked) = n.tap.as_deref().filter(|t| *t != name) {
                        return Err(ConfigRequestError::FdNotThatTap {
                            index: i,
                            passed: name,
                            asked: asked.to_string(),
                        });
                    }
                    name
                }
                None => n.tap.clone().ok_or(ConfigRequestError::NoTap)?,
            };
            let mut arg = format!("tap={tap}");
            if let Some(mac) = &n.mac {
                arg.push_str(&format!(",mac={mac}"));
            }
            let mut nic =
                NetConfig::parse(&arg, vm_name, i).map_err(|e| ConfigRequestError::Net(i, e))?;
            nic.tap_fd = passed;
            Ok(nic)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((disks, nets))
}

/// The VM's state as Cloud Hypervisor names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVmState {
    Created,
    Running,
    Paused,
    Shutdown,
}

/// What this VMM is doing about migration, shown in `vm.info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationRole {
    /// Listening for a source (`vm.receive-migration`), nothing received yet.
    Waiting,
    /// A source is sending the VM here.
    Receiving,
    /// This VM is being sent away.
    Sending,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    pub role: MigrationRole,
    /// Where a destination listens, or where a source sends.
    pub address: String,
    /// Once committed: `committed` while the other side confirms, `unknown` on a source whose
    /// destination never confirmed (its guest stays paused here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What the migration waits for, when it waits (a disk held by another process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET vm.info`: Cloud Hypervisor's fields, then ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiVmInfo {
    /// Absent while a destination waits for its VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ApiVmConfig>,
    pub state: ApiVmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_actual_size: Option<u64>,
    /// Ours: the VM's name, the VMM's pid, seconds since it started running here.
    pub name: String,
    pub pid: u32,
    #[serde(default)]
    pub uptime_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationInfo>,
}

/// `GET vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPing {
    pub build_version: String,
    pub version: String,
    pub pid: u32,
    pub features: Vec<String>,
}

/// `PUT vm.send-migration`: Cloud Hypervisor's fields, then ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMigration {
    /// tcp:HOST:PORT or unix:PATH.
    pub destination_url: String,
    /// Longest acceptable pause at the switchover, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Seconds to converge (see `timeout_strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// cancel (the guest keeps running here) or ignore (force the switchover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_strategy: Option<String>,
    /// Connections that carry the memory, 1 to 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// Directory of ca-cert.pem, client-cert.pem, client-key.pem (mutual TLS 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    /// Ours: the name the destination's certificate must carry, if not the host in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_hostname: Option<String>,
    /// Ours: a pre-shared key file (Noise NNpsk0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key_file: Option<String>,
    /// Ours: send without encryption or authentication (the destination must agree).
    #[serde(default)]
    pub insecure: bool,
    /// Ours: bandwidth cap, MiB/s (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Ours: stop-and-copy.
    #[serde(default)]
    pub offline: bool,
    /// Ours: zstd or zstd:LEVEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// Ours: give up converging after this many rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// Ours: seconds a read or write may make no progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_timeout_s: Option<u64>,
}

/// `PUT vm.receive-migration`: Cloud Hypervisor's fields, then ours (the grants).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveMigration {
    /// tcp:ADDR:PORT or unix:PATH to listen on.
    pub receiver_url: String,
    /// Directory of ca-cert.pem, server-cert.pem, server-key.pem (mutual TLS 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    /// Ours: a pre-shared key file (Noise NNpsk0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key_file: Option<String>,
    /// Ours: accept a source without encryption or authentication over TCP.
    #[serde(default)]
    pub insecure: bool,
    /// Ours: seconds a read or write may make no progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_timeout_s: Option<u64>,
    /// Ours, the grants: the disks the incoming VM may have (it must name the same ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<ApiDisk>>,
    /// Ours, the grants: the taps its NICs may use, in order (the MACs must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<ApiNet>>,
    /// Ours, the grants: the memory size it must have, mapped and faulted in while waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<u64>,
    /// Ours, the grants: what the received VM boots when it reboots (kernel, initramfs,
    /// cmdline on this host). Without it a received VM cannot reboot here: nothing the
    /// source names is ever opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadConfig>,
    /// The granted NICs' taps as descriptors passed with the request (SCM_RIGHTS), in the
    /// shape of Cloud Hypervisor's `net_fds` (its restore, and its fork's receive-migration):
    /// each entry gives the `net[]` grant with that `id` its next `num_fds` descriptors, in
    /// order. The grant then is the descriptor: nothing is opened by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_fds: Option<Vec<NetFds>>,
}

/// One entry of `net_fds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFds {
    pub id: String,
    pub num_fds: usize,
}

/// The answer to `vm.add-net` and `vm.add-disk` (Cloud Hypervisor's `PciDeviceInfo`, without
/// a PCI address: these are virtio-mmio devices).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedDevice {
    pub id: String,
}

/// The outcome of the last migration of this VMM, or where the current one stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationOutcome {
    /// No migration has been started.
    None,
    Active,
    Completed,
    Failed,
    Cancelled,
    /// Commit was sent and the destination did not confirm: the guest may run there; it stays
    /// paused here until the operator resumes it (`vm.resume` with `force`) or discards it.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    Connecting,
    Memory,
    /// Commit sent: waiting for the destination's confirmation.
    Committed,
    Done,
}

/// `GET vm.migration-progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    pub outcome: MigrationOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Seconds since the migration started.
    #[serde(default)]
    pub elapsed_secs: f64,
    /// The last round's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<migration::progress::Progress>,
    /// At the end of a completed migration: total time, achieved downtime and its breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<migration::progress::Summary>,
    /// Why a migration failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The same migration in the fields Cloud Hypervisor's progress reporting uses, beside
    /// ours at the top level (absent before the first migration).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub cloud_hypervisor: Option<ChMigrationProgress>,
}

impl MigrationProgress {
    pub(crate) fn none() -> Self {
        MigrationProgress {
            outcome: MigrationOutcome::None,
            phase: None,
            destination: None,
            elapsed_secs: 0.0,
            progress: None,
            summary: None,
            error: None,
            cloud_hypervisor: None,
        }
    }
}

/// A migration's progress as the Cloud Hypervisor fork with progress reporting
/// (cyberus-technology/cloud-hypervisor, `MigrationProgress`) serializes it, the struct the
/// matching fork of libvirt's ch driver reads for `virsh domjobinfo`: field names and serde's
/// externally tagged enums (`{"Ongoing": {"phase": "MemoryPrecopy", ...}}`, `{"Finished": {}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChMigrationProgress {
    /// UNIX time of the migration's start, milliseconds.
    pub timestamp_begin_ms: u64,
    /// UNIX time of this snapshot (of the end, once it ended), milliseconds.
    pub timestamp_snapshot_ms: u64,
    pub timestamp_snapshot_relative_ms: u64,
    pub downtime_configured_ms: u64,
    /// The pause expected if the switchover happened now (the configured one until a round
    /// has measured it; the achieved one at the end).
    pub downtime_estimated_ms: u64,
    pub transportation_mode: ChTransportationMode,
    pub state: ChMigrationState,
    pub memory_transmission_info: ChMemoryTransmissionInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChTransportationMode {
    /// A Unix socket on this host.
    Local,
    /// TCP; `tls` only for mutual TLS (a key-file channel is encrypted too, but not TLS).
    Tcp { connections: u32, tls: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChMigrationState {
    Cancelled {},
    Failed {
        error_msg: String,
        error_msg_debug: String,
    },
    Finished {},
    Ongoing {
        phase: ChOngoingPhase,
        vcpu_throttle_percent: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChOngoingPhase {
    Starting,
    Started,
    MemoryFds,
    MemoryPrecopy,
    Completing,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChMemoryTransmissionInfo {
    pub memory_iteration: u64,
    pub memory_transmission_bps: u64,
    pub memory_bytes_total: u64,
    pub memory_bytes_transmitted: u64,
    pub memory_bytes_remaining_iteration: u64,
    pub memory_pages_4k_transmitted: u64,
    pub memory_pages_4k_remaining_iteration: u64,
    /// Pages whose contents need not be sent (all zero, here).
    pub memory_pages_constant_count: u64,
    pub memory_dirty_rate_pps: u64,
}

/// The body of every error answer, as Cloud Hypervisor writes it: a JSON array of messages,
/// the error first and then what caused it, one entry per level of the error's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody(pub(crate) Vec<String>);

impl ErrorBody {
    /// The messages joined, as one line for a user.
    pub(crate) fn message(&self) -> String {
        self.0.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_cloud_hypervisors_kernel_fields_are_taken() {
        let old: ApiVmConfig = serde_json::from_str(
            r#"{"cpus": {"boot_vcpus": 1}, "memory": {"size": 67108864},
                "kernel": {"path": "/boot/vmlinux"}, "cmdline": {"args": "console=ttyS0 quiet"},
                "initramfs": {"path": "/boot/initrd"}}"#,
        )
        .unwrap();
        let (vm, _) = old.to_config("old").unwrap();
        assert_eq!(vm.kernel, PathBuf::from("/boot/vmlinux"));
        assert_eq!(vm.cmdline, "console=ttyS0 quiet");
        assert_eq!(vm.initrd, Some(PathBuf::from("/boot/initrd")));
        // `payload` wins where both are given; neither is an error.
        let both: ApiVmConfig = serde_json::from_str(
            r#"{"memory": {"size": 67108864}, "payload": {"kernel": "/new"},
                "kernel": {"path": "/old"}}"#,
        )
        .unwrap();
        assert_eq!(both.to_config("b").unwrap().0.kernel, PathBuf::from("/new"));
        let none: ApiVmConfig = serde_json::from_str(r#"{"memory": {"size": 67108864}}"#).unwrap();
        assert!(none
            .to_config("n")
            .unwrap_err()
            .to_string()
            .contains("payload.kernel"));
    }
}
