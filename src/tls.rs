//! TLS client configurations: rustls with the `ring` provider (the one kube
//! already uses), verified by default. BMC connections and the agent's
//! downloads both build theirs here.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
pub type ConfigError = String;

/// A client configuration for one BMC:
/// - `disable_verification`: any certificate is accepted (the handshake
///   signature is still checked against it);
/// - a CA bundle: only the CAs in it are trusted;
/// - otherwise: the platform's trust store.
pub fn client_config(ca_bundle: Option<&[u8]>, disable_verification: bool) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let config = if disable_verification {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified { provider, refusal: None }))
    } else if let Some(pem) = ca_bundle {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA bundle: certificate not usable as a trust anchor: {e}"))?;
        }
        if roots.is_empty() {
            return Err("CA bundle: no PEM certificate in it".into());
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(platform_verifier(provider)?)
    };
    Ok(config.with_no_client_auth())
}

/// A client configuration verified against the platform's trust store or,
/// where the system has none (a ramdisk built without a CA bundle), one that
/// refuses every certificate with an error saying so: plain HTTP still works
/// and HTTPS fails on first use, not at start-up.
pub fn platform_or_refusing() -> ClientConfig {
    match client_config(None, false) {
        Ok(config) => config,
        Err(why) => {
            tracing::warn!(%why, "no trusted CA certificates on this system: HTTPS connections will be refused");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider, refusal: Some(why) }))
                .with_no_client_auth()
        }
    }
}

/// The platform's verifier, built once: it holds the parsed system trust
/// store, which a thousand BMC clients would otherwise each load and keep.
fn platform_verifier(provider: Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>, ConfigError> {
    static SHARED: std::sync::Mutex<Option<Arc<dyn ServerCertVerifier>>> = std::sync::Mutex::new(None);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(verifier) = shared.as_ref() {
        return Ok(verifier.clone());
    }
    let verifier: Arc<dyn ServerCertVerifier> =
        Arc::new(rustls_platform_verifier::Verifier::new(provider).map_err(|e| format!("platform trust store: {e}"))?);
    *shared = Some(verifier.clone());
    Ok(verifier)
}

/// A verifier that does not look at the certificate chain: either the
/// explicit opt-out (`disableCertificateVerification`: whatever certificate
/// the server shows is trusted, but the server must still hold its key), or,
/// with a `refusal`, a system without a trust store, where every certificate
/// is refused with that reason.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
    refusal: Option<String>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.refusal {
            None => Ok(ServerCertVerified::assertion()),
            Some(why) => Err(rustls::Error::General(format!("cannot verify the server's certificate: {why}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_each_kind_of_config() {
        assert!(client_config(None, false).is_ok());
        assert!(client_config(None, true).is_ok());
        let err = client_config(Some(b"not a pem"), false).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        // Whatever the system's trust store holds, a configuration comes out.
        let _ = platform_or_refusing();
    }
}
