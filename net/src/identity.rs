//! Node identities: a self-signed certificate and its key, stored as PEM, and
//! the fingerprint the peer pins.

use crate::NetError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    /// Generates a new ECDSA P-256 key and a self-signed certificate for it.
    pub fn generate() -> Result<Identity, NetError> {
        let certified = rcgen::generate_simple_self_signed(vec![crate::SERVER_NAME.to_string()])?;
        Ok(Identity { cert_pem: certified.cert.pem(), key_pem: certified.signing_key.serialize_pem() })
    }

    /// Writes `dir/cert.pem` and `dir/key.pem` (the key readable by its owner only).
    pub fn write_to(&self, dir: &Path, force: bool) -> Result<(), NetError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        if !force {
            for path in [&key_path, &cert_path] {
                if path.exists() {
                    return Err(NetError::KeyExists { path: path.clone() });
                }
            }
        }
        let mut key = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io(&key_path))?;
        key.write_all(self.key_pem.as_bytes()).map_err(io(&key_path))?;
        fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))?;
        Ok(())
    }

    /// Reads an identity written by [`Identity::write_to`].
    pub fn load(dir: &Path) -> Result<Identity, NetError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| NetError::Io { path, source })
        };
        let identity = Identity { cert_pem: read(CERT_FILE)?, key_pem: read(KEY_FILE)? };
        identity.cert_der()?;
        identity.key_der()?;
        Ok(identity)
    }

    /// sha256 of the certificate's DER, as 64 lowercase hex digits.
    pub fn fingerprint(&self) -> Result<String, NetError> {
        Ok(fingerprint_of(&self.cert_der()?))
    }

    pub(crate) fn cert_der(&self) -> Result<CertificateDer<'static>, NetError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| NetError::Pem { what: "certificate", detail: e.to_string() })
    }

    pub(crate) fn key_der(&self) -> Result<PrivateKeyDer<'static>, NetError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| NetError::Pem { what: "private key", detail: e.to_string() })
    }
}

/// sha256 of a DER certificate as lowercase hex.
pub fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks and normalises a fingerprint from a config file (case and `:` separators are accepted).
pub fn parse_fingerprint(value: &str) -> Result<String, NetError> {
    let normal: String = value.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if normal.len() == 64 && normal.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(normal)
    } else {
        Err(NetError::BadFingerprint { value: value.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_write_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::generate().unwrap();
        identity.write_to(dir.path(), false).unwrap();
        assert!(matches!(identity.write_to(dir.path(), false), Err(NetError::KeyExists { .. })));
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint().unwrap(), identity.fingerprint().unwrap());
        assert_eq!(identity.fingerprint().unwrap().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn fingerprints_are_validated() {
        let good = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&good).unwrap(), "ab".repeat(32));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
