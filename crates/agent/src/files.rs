//! Credentials as files, for workloads that cannot speak the Workload API.
//!
//! Every file is replaced atomically: written to a temporary file in the same directory
//! with its final mode (0600 for keys), flushed to disk, then renamed over the old one, so
//! a reader sees either the old or the new credential, never half of one, and never a key
//! that was readable by others even for a moment. The names follow spire-agent's:
//! `svid.0.pem` (chain, leaf first), `svid.0.key` (PKCS#8), `bundle.0.pem`,
//! `federated_bundle.0.N.pem` (the foreign trust domains' CAs, in trust domain order),
//! `jwt.0.jwt`, `wit.0.jwt` and `wit.0.key`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use wimse_core::bundle::BundleSet;
use wimse_core::x509;
use wimse_proto::workload::{JwtSvid, WitSvid, X509Context};

/// File mode of private keys.
pub const SECRET: u32 = 0o600;
/// File mode of certificates, bundles and tokens' public parts.
pub const PUBLIC: u32 = 0o644;

/// Why credentials could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key could not be encoded.
    #[error("cannot encode the private key: {0}")]
    Key(String),
    /// There was nothing to write.
    #[error("no {0} to write")]
    Empty(&'static str),
}

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        wimse_core::token::random_jti()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, FilesError> {
    let path = dir.join(name);
    write_atomic(&path, bytes, mode).map_err(|source| FilesError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes the default X509-SVID, its key, the bundle and the federated bundles; returns
/// the files written.
pub fn write_x509(dir: &Path, context: &X509Context) -> Result<Vec<PathBuf>, FilesError> {
    let svid = context
        .default_svid()
        .ok_or(FilesError::Empty("X509-SVID"))?;
    let key = svid
        .key
        .to_pkcs8_pem()
        .map_err(|e| FilesError::Key(e.to_string()))?;
    // The key first: a reader that sees a new certificate must find its key already there.
    let mut written = vec![
        write(dir, "svid.0.key", key.as_bytes(), SECRET)?,
        write(
            dir,
            "svid.0.pem",
            x509::certs_to_pem(&svid.chain).as_bytes(),
            PUBLIC,
        )?,
        write(
            dir,
            "bundle.0.pem",
            x509::certs_to_pem(&svid.bundle).as_bytes(),
            PUBLIC,
        )?,
    ];
    // `federated` is ordered by trust domain, so a domain keeps its file name while the set
    // of domains stays the same.
    for (n, certs) in context.federated.values().enumerate() {
        let name = format!("federated_bundle.0.{n}.pem");
        written.push(write(
            dir,
            &name,
            x509::certs_to_pem(certs).as_bytes(),
            PUBLIC,
        )?);
    }
    Ok(written)
}

/// Writes the X.509 bundles (all trust domains) as `bundle.0.pem`.
pub fn write_bundle(dir: &Path, bundles: &BundleSet) -> Result<Vec<PathBuf>, FilesError> {
    let pem: String = bundles
        .iter()
        .map(wimse_core::bundle::TrustBundle::x509_pem)
        .collect();
    if pem.is_empty() {
        return Err(FilesError::Empty("bundle"));
    }
    Ok(vec![write(dir, "bundle.0.pem", pem.as_bytes(), PUBLIC)?])
}

/// Writes the first JWT-SVID as `jwt.0.jwt`. A JWT-SVID is a bearer credential: 0600.
pub fn write_jwt(dir: &Path, svids: &[JwtSvid]) -> Result<Vec<PathBuf>, FilesError> {
    let svid = svids.first().ok_or(FilesError::Empty("JWT-SVID"))?;
    Ok(vec![write(
        dir,
        "jwt.0.jwt",
        svid.token.as_bytes(),
        SECRET,
    )?])
}

/// Writes the first WIT and its key as `wit.0.jwt` and `wit.0.key`.
pub fn write_wit(dir: &Path, svids: &[WitSvid]) -> Result<Vec<PathBuf>, FilesError> {
    let svid = svids.first().ok_or(FilesError::Empty("WIT-SVID"))?;
    let key = svid
        .key
        .to_pkcs8_pem()
        .map_err(|e| FilesError::Key(e.to_string()))?;
    Ok(vec![
        write(dir, "wit.0.key", key.as_bytes(), SECRET)?,
        write(dir, "wit.0.jwt", svid.token.as_bytes(), PUBLIC)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svid.0.key");
        write_atomic(&path, b"old", SECRET).unwrap();
        write_atomic(&path, b"new", SECRET).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        write_atomic(&path, b"old", PUBLIC).unwrap();
        // Renaming a file over a directory fails.
        let blocked = dir.path().join("d");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", PUBLIC).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
