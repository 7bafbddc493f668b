//! SHA-256, the one digest used for token hashes (`wth`, `ath`, `tth`, `oth`), RFC 7638
//! thumbprints, cache keys and audit fingerprints.

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// base64url(SHA-256(`data`)), the form of `wth`, `ath`, `tth` and `oth` values.
pub fn sha256_b64(data: &[u8]) -> String {
    crate::jose::b64::encode(sha256(data))
}
