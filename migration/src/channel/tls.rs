//! The certificate channel: mutual TLS 1.3 (rustls with ring), with Cloud Hypervisor's file
//! names in one directory, so a certificate set made for it works unchanged:
//! the destination (server) reads `ca-cert.pem`, `server-cert.pem`, `server-key.pem`; the
//! source (client) reads `ca-cert.pem`, `client-cert.pem`, `client-key.pem`. Each end accepts
//! only a peer whose certificate chains to its `ca-cert.pem`; the source also checks the
//! destination's certificate against the host name it connects to.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls::pki_types::ServerName;

/// PEM files larger than this are refused before they are read.
const MAX_PEM_LEN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is larger than {MAX_PEM_LEN} bytes: not a certificate or key file")]
    TooLarge(PathBuf),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no usable PEM private key")]
    NoKey(PathBuf),
    #[error("the CA certificate in {0} is not usable")]
    BadCa(PathBuf, #[source] rustls::Error),
    #[error("the certificate and key in {0} do not make a TLS configuration")]
    Config(PathBuf, #[source] rustls::Error),
    #[error("cannot build the client certificate check from {0}")]
    Verifier(PathBuf, #[source] rustls::server::VerifierBuilderError),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    if bytes.len() as u64 > MAX_PEM_LEN {
        return Err(TlsError::TooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey(path.to_path_buf()))
}

fn roots(dir: &Path) -> Result<RootCertStore, TlsError> {
    let path = dir.join("ca-cert.pem");
    let mut store = RootCertStore::empty();
    for cert in certificates(&path)? {
        store
            .add(cert)
            .map_err(|e| TlsError::BadCa(path.clone(), e))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The destination's configuration from `dir`: its certificate, and a client-certificate
/// check against `ca-cert.pem` that every source must pass.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(dir)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(dir.to_path_buf(), e))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(dir.to_path_buf(), e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&dir.join("server-cert.pem"))?,
            private_key(&dir.join("server-key.pem"))?,
        )
        .map_err(|e| TlsError::Config(dir.to_path_buf(), e))?;
    Ok(Arc::new(config))
}

/// The source's configuration from `dir`: the CA that the destination's certificate must
/// chain to, and the source's own certificate.
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(dir.to_path_buf(), e))?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(
            certificates(&dir.join("client-cert.pem"))?,
            private_key(&dir.join("client-key.pem"))?,
        )
        .map_err(|e| TlsError::Config(dir.to_path_buf(), e))?;
    Ok(Arc::new(config))
}
