//! The configuration of one VM, as given on the command line and carried in migration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Kernel command line used when the user gives none: serial console, reboot through the
/// i8042 (which ends `vmm run`), panic ends the VM, no PCI probing.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub name: String,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{0}': use a number with an optional K, M or G suffix (M when none), e.g. 512M or 2G")]
    BadSize(String),
    #[error("memory size {0} is too small: at least 16 MiB is needed")]
    MemoryTooSmall(u64),
    #[error("memory size must be a multiple of 4 KiB")]
    MemoryUnaligned,
    #[error("invalid VM name '{0}': use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    #[error("--vcpus must be between 1 and {max}, not {given}")]
    BadVcpus { given: u64, max: u8 },
}

/// Parses "512M", "2G", "1024K", "256MiB", "4096" (MiB when no suffix) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("B")).unwrap_or(t);
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
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName(name.to_string()))
    }
}

pub fn validate_memory(bytes: u64) -> Result<(), ConfigError> {
    if bytes < 16 << 20 {
        return Err(ConfigError::MemoryTooSmall(bytes));
    }
    if bytes % 4096 != 0 {
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
    fn limits() {
        assert!(validate_memory(8 << 20).is_err());
        assert!(validate_memory((64 << 20) + 1).is_err());
        validate_memory(64 << 20).unwrap();
        assert!(validate_vcpus(0).is_err());
        assert!(validate_vcpus(33).is_err());
        assert_eq!(validate_vcpus(2).unwrap(), 2);
    }
}
