//! The configuration of one VM, as given on the command line and carried in migration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Kernel command line used when the user gives none: serial console, reboot through the
/// i8042 (which ends `vmm run`), panic ends the VM, no PCI probing.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Why a received VM cannot boot again on this host.
pub const NO_KERNEL_GRANTED: &str = "this VM arrived by migration and this host granted no kernel to boot it with (the source's paths are never opened here): grant one with `payload` on vm.receive-migration or --kernel [--initrd --cmdline] on `vmm run --incoming`";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub name: String,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: u8,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The CPU model (`arch::cpu_model`): host, x86-64-v2, x86-64-v3.
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    /// Hardware virtualization (VMX/SVM) shown to the guest; such a VM cannot migrate (its
    /// nested guests' state does not travel).
    #[serde(default)]
    pub nested: bool,
}

fn default_cpu_model() -> String {
    arch::cpu_model::CpuModel::Host.name().to_string()
}

/// Checks a CPU model name (for the CLI and the API).
pub fn validate_cpu_model(name: &str) -> Result<String, ConfigError> {
    match arch::cpu_model::CpuModel::parse(name) {
        Some(m) => Ok(m.name().to_string()),
        None => Err(ConfigError::BadCpuModel(format!(
            "unknown CPU model '{name}' (one of: {})",
            arch::cpu_model::CpuModel::NAMES.join(", ")
        ))),
    }
}

impl VmConfig {
    /// The VM's CPU model (a config that named an unknown one was refused when parsed).
    pub fn cpu_model(&self) -> arch::cpu_model::CpuModel {
        arch::cpu_model::CpuModel::parse(&self.cpu_model).unwrap_or_default()
    }

    /// Whether there is a kernel to boot (a received VM has one only when this host granted it).
    pub fn has_kernel(&self) -> bool {
        !self.kernel.as_os_str().is_empty()
    }
}

/// Why `vm.add-net` and `vm.add-disk` are refused once the VM runs.
pub const NO_HOTPLUG: &str = "the VM is running: adding a device now is hotplug, which its virtio-mmio transport cannot offer; add devices between vm.create and vm.boot";

/// A `--net tap=NAME[,mac=MAC]` argument, or a NIC whose tap came by descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub tap: String,
    pub mac: [u8; 6],
    /// The tap, opened by the API's caller and passed over the socket (SCM_RIGHTS): used
    /// instead of opening `tap` by name, on every boot of this VM here. Never sent to a
    /// migration's destination (a descriptor means nothing there; it has its own grants).
    #[serde(skip)]
    pub tap_fd: Option<PassedFd>,
}

/// A descriptor a client passed over the API socket, shared by the configs that name it and
/// closed when the last goes. Two are equal only when they are the same descriptor.
#[derive(Clone, Debug)]
pub struct PassedFd(pub std::sync::Arc<std::os::fd::OwnedFd>);

impl PartialEq for PassedFd {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for PassedFd {}

impl NetConfig {
    /// Parses the argument; without mac=, the MAC is derived from the VM name and NIC index.
    pub fn parse(arg: &str, vm_name: &str, index: usize) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadDevice {
            arg: arg.to_string(),
            why: why.to_string(),
        };
        let mut tap = None;
        let mut mac = None;
        for opt in arg.split(',') {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| bad("options are key=value"))?;
            match key {
                "tap" if !value.is_empty() && value.len() < 16 => tap = Some(value.to_string()),
                "tap" => return Err(bad("the tap name is 1 to 15 characters")),
                "mac" => {
                    mac = Some(
                        devices::virtio::net::parse_mac(value)
                            .ok_or_else(|| bad("mac looks like 52:54:00:12:34:56"))?,
                    )
                }
                other => return Err(bad(&format!("unknown option '{other}' (tap, mac)"))),
            }
        }
        let tap = tap.ok_or_else(|| bad("tap=NAME is required"))?;
        Ok(NetConfig {
            tap,
            mac: mac.unwrap_or_else(|| devices::virtio::net::default_mac(vm_name, index)),
            tap_fd: None,
        })
    }
}

/// A `--disk PATH[,readonly=on][,direct=on][,serial=ID]` argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub direct: bool,
    #[serde(default)]
    pub serial: Option<String>,
}

impl DiskConfig {
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadDevice {
            arg: arg.to_string(),
            why: why.to_string(),
        };
        let mut parts = arg.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("the path comes first"))?;
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            readonly: false,
            direct: false,
            serial: None,
        };
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| bad("options are key=value"))?;
            match key {
                "readonly" => {
                    disk.readonly =
                        parse_switch(value).ok_or_else(|| bad("readonly takes on or off"))?
                }
                "direct" => {
                    disk.direct =
                        parse_switch(value).ok_or_else(|| bad("direct takes on or off"))?
                }
                "serial" if value.len() <= 20 && value.is_ascii() => {
                    disk.serial = Some(value.to_string())
                }
                "serial" => return Err(bad("serial is at most 20 ASCII characters")),
                other => {
                    return Err(bad(&format!(
                        "unknown option '{other}' (readonly, direct, serial)"
                    )))
                }
            }
        }
        Ok(disk)
    }
}

fn parse_switch(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{0}': use a number with an optional K, M or G suffix (M when none), e.g. 512M or 2G")]
    BadSize(String),
    #[error("memory size {0} is too small: at least 16 MiB is needed")]
    MemoryTooSmall(u64),
    #[error("memory size must be a multiple of 4 KiB")]
    MemoryUnaligned,
    #[error("memory size {0} is too large: at most {max} GiB", max = MAX_MEMORY >> 30)]
    MemoryTooLarge(u64),
    #[error("invalid VM name '{0}': use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    #[error("{0}")]
    BadCpuModel(String),
    #[error("invalid device '{arg}': {why}")]
    BadDevice { arg: String, why: String },
    #[error("--vcpus must be between 1 and {max}, not {given}")]
    BadVcpus { given: u64, max: u8 },
}

/// Parses "512M", "2G", "1024K", "256MiB", "4096" (MiB when no suffix) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("B"))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some(c) if c.is_ascii_digit() => (t, 20),
        _ => return Err(bad()),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName(name.to_string()))
    }
}

/// Largest guest memory accepted.
pub const MAX_MEMORY: u64 = 1 << 40;

pub fn validate_memory(bytes: u64) -> Result<(), ConfigError> {
    if bytes < 16 << 20 {
        return Err(ConfigError::MemoryTooSmall(bytes));
    }
    if bytes > MAX_MEMORY {
        return Err(ConfigError::MemoryTooLarge(bytes));
    }
    if !bytes.is_multiple_of(4096) {
        return Err(ConfigError::MemoryUnaligned);
    }
    Ok(())
}

pub fn validate_vcpus(n: u64) -> Result<u8, ConfigError> {
    let max = arch::mptable::MAX_VCPUS;
    if n == 0 || n > u64::from(max) {
        return Err(ConfigError::BadVcpus { given: n, max });
    }
    Ok(n as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        for bad in ["", "M", "12X", "-1M", "99999999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        for good in ["web1", "a", "vm_2.test-x"] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disks() {
        let d = DiskConfig::parse("/shared/web1.img,readonly=on,serial=abc").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/shared/web1.img".into(),
                readonly: true,
                direct: false,
                serial: Some("abc".into())
            }
        );
        assert!(DiskConfig::parse("/x,direct=on").unwrap().direct);
        for bad in [
            "",
            ",readonly=on",
            "/x,readonly",
            "/x,readonly=maybe",
            "/x,cache=none",
            &format!("/x,serial={}", "s".repeat(21)),
        ] {
            assert!(DiskConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets() {
        let n = NetConfig::parse("tap=tap0,mac=52:54:00:12:34:56", "web1", 0).unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap: "tap0".into(),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                tap_fd: None,
            }
        );
        let d = NetConfig::parse("tap=tap1", "web1", 1).unwrap();
        assert_eq!(d.mac, devices::virtio::net::default_mac("web1", 1));
        for bad in [
            "",
            "tap0",
            "mac=52:54:00:12:34:56",
            "tap=",
            "tap=averyveryverylongname",
            "tap=t,mac=xx",
            "tap=t,queues=2",
        ] {
            assert!(NetConfig::parse(bad, "v", 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert!(validate_memory(8 << 20).is_err());
        assert!(validate_memory((64 << 20) + 1).is_err());
        assert!(validate_memory(MAX_MEMORY + 4096).is_err());
        validate_memory(64 << 20).unwrap();
        assert!(validate_vcpus(0).is_err());
        assert!(validate_vcpus(33).is_err());
        assert_eq!(validate_vcpus(2).unwrap(), 2);
    }
}
