//! The TLS client configuration for `amqps://` nodes (`[amqp.tls]`): which roots to trust, and
//! an optional client certificate, read from PEM files once at start-up.

use lapin::tcp::{RustlsConnector, RustlsConnectorConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io;

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
    /// The rustls connector every `amqps` stream is made with.
    pub(super) fn connector(&self) -> &RustlsConnector {
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
