//! The certificate handshake: mutual TLS 1.3 (rustls with ring), with Cloud Hypervisor's file
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ChannelError, Transport};
use crate::record::RecordKeys;

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
    let mut config = config;
    // TLS steps aside after the handshake (the record keys are exported): nothing of it may
    // follow on the stream, so no session tickets.
    config.send_tls13_tickets = 0;
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

/// The label under which both ends export the record keys from the TLS session.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-vmm-migration-records-v1";
/// What the destination sends through TLS once it has checked the source's certificate.
const CONFIRM: u8 = 0x5a;

/// Splits 64 exported bytes into the two directions' keys (client to server first).
fn exported_keys(
    export: impl FnOnce([u8; 64]) -> Result<[u8; 64], rustls::Error>,
    client: bool,
) -> Result<RecordKeys, ChannelError> {
    let km = export([0u8; 64]).map_err(|e| ChannelError::Tls(std::io::Error::other(e)))?;
    let (c2s, s2c) = km.split_at(32);
    let (c2s, s2c): ([u8; 32], [u8; 32]) =
        (c2s.try_into().expect("32"), s2c.try_into().expect("32"));
    Ok(if client {
        RecordKeys {
            send: c2s,
            recv: s2c,
        }
    } else {
        RecordKeys {
            send: s2c,
            recv: c2s,
        }
    })
}

/// The source's TLS handshake. Returns the bare stream and the record keys exported from the
/// session, once the destination has confirmed, through TLS, that it accepts our certificate
/// (in TLS 1.3 its verdict on the client certificate comes after the client's handshake is
/// done; reading the confirmation is where a rejection shows).
pub(crate) async fn connect(
    s: Box<dyn Transport>,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<(Box<dyn Transport>, RecordKeys), ChannelError> {
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, s)
        .await
        .map_err(ChannelError::Tls)?;
    let mut confirm = [0u8; 1];
    tls.read_exact(&mut confirm)
        .await
        .map_err(|e| match super::certificate_rejection(&e) {
            Some(alert) => ChannelError::CertificateRejected(alert),
            None => ChannelError::Tls(e),
        })?;
    if confirm[0] != CONFIRM {
        return Err(ChannelError::NotMigrationPeer);
    }
    let (io, conn) = tls.into_inner();
    let keys = exported_keys(
        |b| conn.export_keying_material(b, EXPORTER_LABEL, None),
        true,
    )?;
    Ok((io, keys))
}

/// The destination's TLS handshake: checks the source's certificate, confirms through TLS,
/// and returns the bare stream with the exported record keys. No session tickets are sent
/// (see [`server_config`]), so nothing of TLS follows the confirmation on the stream.
pub(crate) async fn accept(
    s: Box<dyn Transport>,
    config: Arc<ServerConfig>,
) -> Result<(Box<dyn Transport>, RecordKeys), ChannelError> {
    let mut tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(s)
        .await
        .map_err(ChannelError::Tls)?;
    tls.write_all(&[CONFIRM]).await.map_err(ChannelError::Tls)?;
    tls.flush().await.map_err(ChannelError::Tls)?;
    let (io, conn) = tls.into_inner();
    let keys = exported_keys(
        |b| conn.export_keying_material(b, EXPORTER_LABEL, None),
        false,
    )?;
    Ok((io, keys))
}
