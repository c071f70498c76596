//! TLS configurations of the peer links.
//!
//! Owns: loading the cluster CA, this node's certificate and key, and
//! building the rustls configs. Both sides authenticate: the server demands
//! a client certificate signed by the cluster CA (`WebPkiClientVerifier`);
//! the client verifies the server against the same CA *and* the name
//! `node-<id>.triad` of the peer it meant to reach. TLS 1.3 only: both ends
//! are this code, so there is nothing older to talk to.
//!
//! Must not: rely on a process-wide crypto provider (ring is passed
//! explicitly, so nothing depends on who installed what first), or trust a
//! name that is not in a verified certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use triad_core::NodeId;

use crate::certs::{node_dns_name, node_id_from_cert};

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("{path} holds no {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// rustls refused a certificate, key or setting.
    #[error("cannot build TLS {what}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// The client verifier could not be built (e.g. no usable CA).
    #[error("cannot build the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// This node's credentials and the cluster CA, loaded from PEM files.
#[derive(Debug, Clone)]
pub struct Credentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl Credentials {
    /// Loads the CA, this node's certificate chain and its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
        let roots = load_roots(ca)?;
        let chain = load_certs(cert)?;
        let key_pem = read(key)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| TlsError::Read { path: key.to_owned(), source })?
            .ok_or_else(|| TlsError::Empty { path: key.to_owned(), what: "private key" })?;
        Ok(Credentials { roots: Arc::new(roots), chain, key: Arc::new(key) })
    }
}

/// The ring provider, passed explicitly to every config.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: accepts only clients with a certificate signed by the
/// cluster CA. Which node it is, and whether that node is a peer, is
/// decided after the handshake from the certificate ([`peer_node_id`]).
pub fn server_config(c: &Credentials) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(c.roots.clone(), provider()).build().map_err(TlsError::Verifier)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "server protocol versions", source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(c.chain.clone(), c.key.clone_key())
        .map_err(|source| TlsError::Rustls { what: "server config", source })?;
    Ok(Arc::new(cfg))
}

/// Client side: verifies the server against the cluster CA (the expected
/// name is given per connection, see [`server_name`]) and presents this
/// node's certificate.
pub fn client_config(c: &Credentials) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "client protocol versions", source })?
        .with_root_certificates(c.roots.clone())
        .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
        .map_err(|source| TlsError::Rustls { what: "client config", source })?;
    Ok(Arc::new(cfg))
}

/// The name a client must verify when connecting to node `id`.
pub fn server_name(id: NodeId) -> Option<ServerName<'static>> {
    ServerName::try_from(node_dns_name(id)).ok()
}

/// The node id in the peer's end-entity certificate, after a handshake
/// (rustls has verified the chain by then; this reads the identity).
pub fn peer_node_id(certs: Option<&[CertificateDer<'_>]>) -> Option<NodeId> {
    certs.and_then(|c| c.first()).and_then(|ee| node_id_from_cert(ee))
}

/// Loads a PEM file of CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls { what: "root store", source })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}
