//! `[amqp.tls]`: the PEM files as configured ([`TlsFiles`]) and the TLS client configuration for
//! `amqps://` nodes they become ([`TlsConfig`]): which roots to trust, and an optional client
//! certificate, read once at start-up, so that a missing file or bad PEM stops start-up naming
//! its key rather than failing at connect. It lives in `config` because it is what the section
//! parses into; the broker connects with it and imports it from here (never the other way).

use super::ConfigError;
use lapin::tcp::{RustlsConnector, RustlsConnectorConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::fmt;
use std::io;

/// The PEM files of a `[….tls]` section; empty strings for unset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

/// The names of a TLS section's keys, for messages.
pub(super) struct TlsKeys {
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

impl TlsFiles {
    /// Whether any file is named: someone who configured certificates meant TLS.
    pub(super) fn any(&self) -> bool {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .iter()
            .any(|f| !f.trim().is_empty())
    }

    /// Reads and parses the files now; an error names the key of the file at fault.
    pub(super) fn load(&self, keys: &TlsKeys) -> Result<TlsConfig, ConfigError> {
        let invalid = |key: &'static str, e: TlsError| ConfigError::invalid(key, e.to_string());
        let ca = read(keys.ca_file, &self.ca_file)?
            .map(|pem| parse_certificates(&pem).map_err(|e| invalid(keys.ca_file, e)))
            .transpose()?;
        let client = match (
            read(keys.cert_file, &self.cert_file)?,
            read(keys.key_file, &self.key_file)?,
        ) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    keys.key_file,
                    "is empty but cert_file is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    keys.cert_file,
                    "is empty but key_file is set",
                ))
            }
            (Some(cert), Some(key)) => Some((
                parse_certificates(&cert).map_err(|e| invalid(keys.cert_file, e))?,
                parse_private_key(&key).map_err(|e| invalid(keys.key_file, e))?,
            )),
        };
        TlsConfig::new(ca, client).map_err(|e| match e {
            TlsError::BadIdentity(_) => invalid(keys.cert_file, e),
            _ => invalid(keys.ca_file, e),
        })
    }
}

/// The file's bytes; `None` for a blank path.
fn read(key: &'static str, path: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    match path.trim() {
        "" => Ok(None),
        path => std::fs::read(path)
            .map(Some)
            .map_err(|e| ConfigError::invalid(key, format!("cannot read {path:?}: {e}"))),
    }
}

/// The TLS client configuration for `amqps://` nodes, built once (the system's roots take
/// milliseconds to load) and shared by every connection.
#[derive(Clone)]
pub struct TlsConfig(RustlsConnector);

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate in it (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate,
    #[error("not a readable PEM certificate: {0}")]
    BadCertificate(String),
    #[error("no readable PEM private key in it (PKCS#8, PKCS#1 or SEC1): {0}")]
    BadKey(String),
    #[error("the CA certificate cannot be used as a trust root: {0}")]
    BadRoot(io::Error),
    #[error("the client certificate and key cannot be used together: {0}")]
    BadIdentity(io::Error),
    #[error("cannot load the system's trust roots: {0}")]
    SystemRoots(io::Error),
}

/// Certificates from PEM text (a CA file, or a client certificate and its chain).
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// A private key from PEM text.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadKey(e.to_string()))
}

impl TlsConfig {
    /// Trusts `ca` alone when given (a private CA should not widen to every public one), the
    /// system's roots otherwise; presents `client` (certificate chain, key) when given.
    pub fn new(
        ca: Option<Vec<CertificateDer<'static>>>,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<TlsConfig, TlsError> {
        let (config, root_error): (_, fn(io::Error) -> TlsError) = match ca {
            Some(ca) => (
                RustlsConnectorConfig::default().with_parsable_certificates(ca),
                TlsError::BadRoot,
            ),
            None => (
                RustlsConnectorConfig::new_with_native_certs().map_err(TlsError::SystemRoots)?,
                TlsError::SystemRoots,
            ),
        };
        let connector = match client {
            Some((certs, key)) => {
                config
                    .connector_with_single_cert(certs, key)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::InvalidData => TlsError::BadIdentity(e),
                        _ => root_error(e),
                    })?
            }
            None => config.connector_with_no_client_auth().map_err(root_error)?,
        };
        Ok(TlsConfig(connector))
    }
}

impl TlsConfig {
    /// The rustls connector every `amqps` stream is made with (by `broker::connect`).
    pub(crate) fn connector(&self) -> &RustlsConnector {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_what_is_wrong() {
        assert!(matches!(
            parse_certificates(b"hello"),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            parse_certificates(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(TlsError::BadCertificate(_))
        ));
        assert!(matches!(
            parse_private_key(b"no key here"),
            Err(TlsError::BadKey(_))
        ));
    }
}
