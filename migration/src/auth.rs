//! Mutual challenge-response authentication with a pre-shared key (HMAC-SHA256). Each side
//! proves it holds the key by MACing the other side's random nonce together with its role, so
//! a response cannot be replayed or reflected back.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// Keys shorter than this are refused: they would be guessable.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the key file {0}")]
    Read(String, #[source] std::io::Error),
    #[error("the key in {0} is shorter than {MIN_KEY_LEN} bytes")]
    Short(String),
    #[error("no randomness available")]
    Random,
}

#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn from_file(path: &std::path::Path) -> Result<Self, AuthError> {
        let name = path.display().to_string();
        let raw = std::fs::read(path).map_err(|e| AuthError::Read(name.clone(), e))?;
        // A trailing newline from `echo ... > keyfile` is not part of the key.
        let trimmed: Vec<u8> = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
        Self::new(trimmed).map_err(|_| AuthError::Short(name))
    }

    pub fn new(bytes: Vec<u8>) -> Result<Self, AuthError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(AuthError::Short("the key".into()));
        }
        Ok(Key(bytes))
    }

    /// The MAC proving `role` ("source" or "destination") knows the key, over the peer's nonce.
    pub fn prove(&self, role: &str, peer_nonce: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"vmm-migration-v1\0");
        mac.update(role.as_bytes());
        mac.update(b"\0");
        mac.update(peer_nonce);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a proof.
    pub fn verify(&self, role: &str, my_nonce: &[u8], proof: &[u8]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"vmm-migration-v1\0");
        mac.update(role.as_bytes());
        mac.update(b"\0");
        mac.update(my_nonce);
        mac.verify_slice(proof).is_ok()
    }
}

pub fn nonce() -> Result<[u8; NONCE_LEN], AuthError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(|_| AuthError::Random)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_role_and_nonce() {
        let k = Key::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        let other = Key::new(b"0123456789abcdef-SECRET".to_vec()).unwrap();
        let n = nonce().unwrap();
        let p = k.prove("source", &n);
        assert!(k.verify("source", &n, &p));
        assert!(!other.verify("source", &n, &p));
        assert!(
            !k.verify("destination", &n, &p),
            "a proof cannot be reflected"
        );
        assert!(
            !k.verify("source", &nonce().unwrap(), &p),
            "nor replayed against a new nonce"
        );
        assert!(!k.verify("source", &n, &p[..31]));
        assert!(Key::new(b"short".to_vec()).is_err());
    }
}
