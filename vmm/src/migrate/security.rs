//! Which secured channel a migration endpoint uses, from its options (docs/design.md section 7):
//! a pre-shared key (`--auth-key-file`), mutual TLS (`--tls-dir`), or nothing, which TCP gets
//! only with `--insecure` (loopback included: every local user can reach 127.0.0.1) and a
//! Unix socket gets by default (the kernel tells who the peer is; only this user or root).

use std::path::PathBuf;

use migration::channel::{tls, DestinationSecurity, SourceSecurity};
use migration::key::{Key, KeyError};

use super::transport::Endpoint;

/// The security options of one end, as given on its command line or API call.
#[derive(Clone, Debug, Default)]
pub(crate) struct SecurityOptions {
    pub(crate) auth_key_file: Option<PathBuf>,
    pub(crate) tls_dir: Option<PathBuf>,
    /// The name the destination's certificate must carry, when not the host of the endpoint.
    pub(crate) tls_hostname: Option<String>,
    pub(crate) insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    #[error("choose one of --auth-key-file, --tls-dir and --insecure")]
    Conflicting,
    #[error("refusing to {what} {endpoint} unauthenticated and unencrypted: pass --auth-key-file FILE or --tls-dir DIR (the same kind on both hosts), or --insecure on both ends if every host that can reach it is trusted")]
    Unsecured {
        what: &'static str,
        endpoint: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("--tls-dir")]
    Tls(#[from] tls::TlsError),
    #[error("'{0}' is not a valid host name or address for the destination's certificate (use --tls-hostname NAME)")]
    Hostname(String),
    #[error("--tls-dir over a Unix socket needs --tls-hostname NAME (the name in the destination's certificate)")]
    NoHostname,
}

/// The mode chosen: Some(true) for a key, Some(false) for TLS, None for nothing.
fn chosen(
    opts: &SecurityOptions,
    ep: &Endpoint,
    what: &'static str,
) -> Result<Option<bool>, SecurityError> {
    match (&opts.auth_key_file, &opts.tls_dir, opts.insecure) {
        (Some(_), None, false) => Ok(Some(true)),
        (None, Some(_), false) => Ok(Some(false)),
        (None, None, true) => Ok(None),
        (None, None, false) if !ep.is_tcp() => Ok(None),
        (None, None, false) => Err(SecurityError::Unsecured {
            what,
            endpoint: ep.to_string(),
        }),
        _ => Err(SecurityError::Conflicting),
    }
}

/// The source's channel to `ep`.
pub(crate) fn for_source(
    opts: &SecurityOptions,
    ep: &Endpoint,
) -> Result<SourceSecurity, SecurityError> {
    Ok(match chosen(opts, ep, "send guest memory to")? {
        None => SourceSecurity::Insecure,
        Some(true) => SourceSecurity::Psk(Key::from_file(
            opts.auth_key_file.as_ref().expect("chosen"),
        )?),
        Some(false) => {
            let name = match (&opts.tls_hostname, ep.host()) {
                (Some(n), _) => n.clone(),
                (None, Some(h)) => h.to_string(),
                (None, None) => return Err(SecurityError::NoHostname),
            };
            let server_name = tls::ServerName::try_from(name.clone())
                .map_err(|_| SecurityError::Hostname(name))?;
            SourceSecurity::Tls {
                config: tls::client_config(opts.tls_dir.as_ref().expect("chosen"))?,
                server_name,
            }
        }
    })
}

/// The destination's channel on `ep`.
pub(crate) fn for_destination(
    opts: &SecurityOptions,
    ep: &Endpoint,
) -> Result<DestinationSecurity, SecurityError> {
    Ok(match chosen(opts, ep, "accept guest memory on")? {
        None => DestinationSecurity::Insecure,
        Some(true) => DestinationSecurity::Psk(Key::from_file(
            opts.auth_key_file.as_ref().expect("chosen"),
        )?),
        Some(false) => {
            DestinationSecurity::Tls(tls::server_config(opts.tls_dir.as_ref().expect("chosen"))?)
        }
    })
}

/// The warning both ends print when they run with `--insecure` over TCP.
pub(crate) fn insecure_warning(ep: &Endpoint) -> Option<String> {
    ep.is_tcp().then(|| {
        format!("warning: --insecure: the migration over {ep} is neither encrypted nor authenticated; anyone on the path can read and alter the guest's memory")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_needs_a_key_tls_or_insecure_and_only_one() {
        let tcp = Endpoint::parse("tcp:127.0.0.1:4444").unwrap();
        let unix = Endpoint::parse("unix:/tmp/x.sock").unwrap();
        let none = SecurityOptions::default();
        assert!(matches!(
            for_destination(&none, &tcp),
            Err(SecurityError::Unsecured { .. })
        ));
        assert!(matches!(
            for_source(&none, &tcp),
            Err(SecurityError::Unsecured { .. })
        ));
        assert!(matches!(
            for_destination(&none, &unix),
            Ok(DestinationSecurity::Insecure)
        ));
        let insecure = SecurityOptions {
            insecure: true,
            ..Default::default()
        };
        assert!(matches!(
            for_source(&insecure, &tcp),
            Ok(SourceSecurity::Insecure)
        ));
        let both = SecurityOptions {
            auth_key_file: Some("/k".into()),
            insecure: true,
            ..Default::default()
        };
        assert!(matches!(
            for_source(&both, &tcp),
            Err(SecurityError::Conflicting)
        ));
        assert!(insecure_warning(&tcp).is_some() && insecure_warning(&unix).is_none());
    }
}
