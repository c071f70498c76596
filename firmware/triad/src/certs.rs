//! The cluster CA and per-node certificates.
//!
//! Owns: creating the cluster CA (`ca.pem`, `ca.key`), issuing node
//! certificates (`node-<id>.pem`, `node-<id>.key`) signed by it, and reading
//! a node's identity back from a certificate. A node's identity *is* the one
//! SAN DNS name `node-<id>.triad` in a certificate the cluster CA signed;
//! the peer links trust nothing else.
//!
//! Must not: overwrite an existing file (a re-run must never replace a
//! cluster's CA or a node's key), leave a private key readable by others,
//! or decide trust on its own (chain verification is rustls' job, at the
//! link).
//!
//! Parsing: [`node_id_from_cert`] uses rustls' own certificate parser
//! (`ParsedCertificate` + `verify_server_name`, i.e. rustls-webpki, already
//! compiled in for the handshakes) by asking "is this cert valid for
//! `node-N.triad`?" for each possible id. That adds no dependency and no
//! second ASN.1 parser to the attack surface; x509-parser would add ~8
//! crates to read one field. Requiring exactly one match also rejects a
//! wildcard (`*.triad`) certificate, which would otherwise claim every id.
//!
//! Issuing from an existing CA: rcgen 0.13 can only rebuild an issuer from
//! PEM with its `x509-parser` feature. Instead the CA's parameters are a
//! fixed function of this module ([`ca_params`]), re-signed with the stored
//! key to get an issuer with the same name and key identifier; the issued
//! certificate is then verified against the CA *file* before anything is
//! written, so a CA made elsewhere is refused rather than misused.
//!
//! Validity: rcgen's default (1975 to 4096). The appliance may boot with no
//! RTC or a wrong clock before NTP; a node certificate that "expired" would
//! partition the cluster. Revocation is by re-keying the cluster.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use triad_core::NodeId;

use crate::config::NODE_IDS;

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY: &str = "ca.key";

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Refused: the file is already there.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Node id outside 1..=3.
    #[error("node id {id} is outside 1..=3")]
    BadNodeId {
        /// The id given.
        id: u8,
    },
    /// Reading or writing a file failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done ("read", "create", "write").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen could not generate or sign.
    #[error("cannot {op}")]
    Generate {
        /// What was being done.
        op: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path} holds no {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// The certificate just issued does not verify against the CA file.
    #[error("issued certificate does not verify against {ca}; was the CA made by another tool?")]
    Verify {
        /// The CA file.
        ca: PathBuf,
        /// rustls' verdict.
        #[source]
        source: rustls::Error,
    },
}

/// The DNS name that carries a node's identity.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.triad")
}

/// Creates `ca.pem` and `ca.key` (mode 0600) in `dir`, which must exist.
/// Refuses if either file exists. Returns the path of `ca.pem`.
pub fn create_ca(dir: &Path) -> Result<PathBuf, CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().map_err(|source| CertError::Generate { op: "generate CA key", source })?;
    let cert = ca_params()?.self_signed(&key).map_err(|source| CertError::Generate { op: "self-sign CA", source })?;
    // Key first: a crash between the two leaves a key without a cert, which
    // the refusal above then reports instead of silently re-keying.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Issues `node-<id>.pem` and `node-<id>.key` (0600) in `dir`, signed by the
/// CA in the same directory. Refuses if either file exists.
pub fn issue_node(dir: &Path, id: NodeId) -> Result<(PathBuf, PathBuf), CertError> {
    if !NODE_IDS.contains(&id) {
        return Err(CertError::BadNodeId { id });
    }
    let cert_path = dir.join(format!("node-{id}.pem"));
    let key_path = dir.join(format!("node-{id}.key"));
    refuse_existing(&[&cert_path, &key_path])?;

    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = read(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| CertError::Generate { op: "load CA key", source })?;
    let issuer =
        ca_params()?.self_signed(&ca_key).map_err(|source| CertError::Generate { op: "rebuild CA issuer", source })?;

    let key = KeyPair::generate().map_err(|source| CertError::Generate { op: "generate node key", source })?;
    let mut params = CertificateParams::new(vec![node_dns_name(id)])
        .map_err(|source| CertError::Generate { op: "build node certificate parameters", source })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Triad");
    dn.push(DnType::CommonName, node_dns_name(id));
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Each node is a TLS server (accepting) and a TLS client (connecting).
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(|source| CertError::Generate { op: "sign node certificate", source })?;

    verify_against_ca_file(&ca_cert_path, cert.der(), id)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// The node id a certificate (DER) claims through its SAN `node-<id>.triad`,
/// if it claims exactly one. Does not check who signed it.
pub fn node_id_from_cert(der: &[u8]) -> Option<NodeId> {
    let der = CertificateDer::from(der);
    let parsed = rustls::server::ParsedCertificate::try_from(&der).ok()?;
    let mut found = None;
    for id in NODE_IDS {
        let name = ServerName::try_from(node_dns_name(id)).ok()?;
        if rustls::client::verify_server_name(&parsed, &name).is_ok() {
            if found.is_some() {
                // A wildcard or multi-name cert: no single identity.
                return None;
            }
            found = Some(id);
        }
    }
    found
}

/// The fixed parameters of a Triad cluster CA. The issuer of a node cert is
/// rebuilt from these, so they must never change.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|source| CertError::Generate { op: "build CA parameters", source })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Triad");
    dn.push(DnType::CommonName, "Triad cluster CA");
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certificates only, never sub-CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Checks the new certificate chains to the CA file and names `id`, as the
/// peer links will check it.
fn verify_against_ca_file(ca_path: &Path, der: &CertificateDer<'_>, id: NodeId) -> Result<(), CertError> {
    let roots = crate::peer::tls::load_roots(ca_path)
        .map_err(|_| CertError::BadPem { path: ca_path.to_owned(), what: "CA certificate" })?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| CertError::Verify { ca: ca_path.to_owned(), source: rustls::Error::General(e.to_string()) })?;
    let name = ServerName::try_from(node_dns_name(id))
        .map_err(|e| CertError::Verify { ca: ca_path.to_owned(), source: rustls::Error::General(e.to_string()) })?;
    verifier
        .verify_server_cert(der, &[], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|source| CertError::Verify { ca: ca_path.to_owned(), source })
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    for p in paths {
        // symlink_metadata: a dangling symlink also counts as "there".
        if p.symlink_metadata().is_ok() {
            return Err(CertError::Exists { path: p.to_path_buf() });
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { op: "read", path: path.to_owned(), source })
}

/// Creates `path` exclusively with `mode` (never widened by a later chmod:
/// the key is never readable by others, even briefly) and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |op, source| CertError::Io { op, path: path.to_owned(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists { path: path.to_owned() }
        } else {
            io("create", e)
        }
    })?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "triad-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn der_of(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).unwrap();
        let mut rd = &pem[..];
        let der = rustls_pemfile::certs(&mut rd).next().unwrap().unwrap().to_vec();
        der
    }

    #[test]
    fn issue_two_nodes_and_read_ids_back() {
        let d = TempDir::new("certs");
        let ca = create_ca(&d.0).unwrap();
        let (c1, k1) = issue_node(&d.0, 1).unwrap();
        let (c2, _) = issue_node(&d.0, 2).unwrap();
        assert_eq!(node_id_from_cert(&der_of(&c1)), Some(1));
        assert_eq!(node_id_from_cert(&der_of(&c2)), Some(2));
        // The CA itself names no node.
        assert_eq!(node_id_from_cert(&der_of(&ca)), None);
        let mode = std::fs::metadata(&k1).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(d.0.join(CA_KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_to_overwrite_and_bad_ids() {
        let d = TempDir::new("certs-ow");
        create_ca(&d.0).unwrap();
        assert!(matches!(create_ca(&d.0), Err(CertError::Exists { .. })));
        issue_node(&d.0, 3).unwrap();
        assert!(matches!(issue_node(&d.0, 3), Err(CertError::Exists { .. })));
        assert!(matches!(issue_node(&d.0, 4), Err(CertError::BadNodeId { id: 4 })));
        assert!(matches!(issue_node(&d.0, 0), Err(CertError::BadNodeId { id: 0 })));
    }

    #[test]
    fn issuing_without_ca_fails_cleanly() {
        let d = TempDir::new("certs-noca");
        assert!(matches!(issue_node(&d.0, 1), Err(CertError::Io { op: "read", .. })));
        assert!(!d.0.join("node-1.key").exists());
    }

    #[test]
    fn garbage_and_wildcards_have_no_id() {
        assert_eq!(node_id_from_cert(&[]), None);
        assert_eq!(node_id_from_cert(&[0x30, 0x03, 1, 2, 3]), None);
        let key = KeyPair::generate().unwrap();
        let wild = CertificateParams::new(vec!["*.triad".to_string()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(node_id_from_cert(wild.der()), None);
    }
}
