//! The pre-shared key of `--auth-key-file`: read from a file with a size limit, never shorter
//! than [`MIN_KEY_LEN`] bytes, and turned into the 32-byte Noise PSK with HKDF-SHA256, so a key
//! of any length (32 random bytes in base64 or hex) gives a uniformly random PSK.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use sha2::Sha256;

/// Keys shorter than this are refused, at least 32 bytes: the first handshake message lets anyone who records it test guesses of
/// the key offline, so a short passphrase would be found; 32 random bytes (44 in base64) are not.
pub(crate) const MIN_KEY_LEN: usize = 32;
/// Key files larger than this are refused before they are read (a key file of `/dev/zero`
/// must be an error, not an out-of-memory abort).
pub(crate) const MAX_KEY_FILE_LEN: u64 = 4096;
/// Length of the Noise pre-shared key.
pub(crate) const PSK_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the key file {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("the key file {0} is larger than {MAX_KEY_FILE_LEN} bytes: not a key file")]
    TooLarge(PathBuf),
    #[error("the key in {0} is shorter than {MIN_KEY_LEN} bytes")]
    Short(String),
}

/// A pre-shared key; its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Reads a key file: a regular file (symbolic links are followed, as key stores use them)
    /// of at most [`MAX_KEY_FILE_LEN`] bytes; one trailing newline is not part of the key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let read_err = |e| KeyError::Read(path.to_path_buf(), e);
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile(path.to_path_buf()));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge(path.to_path_buf()));
        }
        if meta.mode() & 0o077 != 0 {
            log::warn!(
                "the key file {} can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            );
        }
        let mut raw = Vec::new();
        // The size may change between the check and the read: bound the read itself too.
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        if raw.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge(path.to_path_buf()));
        }
        // A trailing newline from `echo ... > keyfile` is not part of the key.
        let trimmed = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
        Self::new(trimmed).map_err(|_| KeyError::Short(path.display().to_string()))
    }

    pub fn new(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::Short("the key".into()));
        }
        Ok(Key(bytes))
    }

    /// The Noise pre-shared key derived from this key.
    pub(crate) fn noise_psk(&self) -> [u8; PSK_LEN] {
        let hk = Hkdf::<Sha256>::new(Some(b"vmm-migration-psk-v2"), &self.0);
        let mut psk = [0u8; PSK_LEN];
        hk.expand(b"Noise_NNpsk0 psk", &mut psk)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        psk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-key-{}-{name}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        p
    }

    #[test]
    fn key_files_are_bounded_and_checked() {
        let good = temp("good", b"correct horse battery staple, stapled\n");
        let k = Key::from_file(&good).unwrap();
        assert_eq!(k.0, b"correct horse battery staple, stapled");
        assert!(matches!(
            Key::from_file(Path::new("/dev/zero")),
            Err(KeyError::NotAFile(_))
        ));
        let big = temp("big", &vec![b'k'; MAX_KEY_FILE_LEN as usize + 1]);
        assert!(matches!(Key::from_file(&big), Err(KeyError::TooLarge(_))));
        // A passphrase of fewer than 32 bytes is guessable offline from a recorded handshake.
        let short = temp("short", b"correct horse battery staple\n");
        assert!(matches!(Key::from_file(&short), Err(KeyError::Short(_))));
        assert!(matches!(
            Key::from_file(Path::new("/nonexistent/key")),
            Err(KeyError::Read(..))
        ));
        assert!(format!("{k:?}").find("horse").is_none(), "no key in Debug");
        for p in [good, big, short] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn different_keys_give_different_psks() {
        let a = Key::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let b = Key::new(b"0123456789abcdef0123456789abcdeF".to_vec()).unwrap();
        assert_ne!(a.noise_psk(), b.noise_psk());
        assert_eq!(a.noise_psk(), a.clone().noise_psk());
    }
}
