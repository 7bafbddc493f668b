//! SHA-256, the one digest used for token hashes (`wth`, `ath`, `tth`, `oth`), RFC 7638
//! thumbprints, cache keys and audit fingerprints; SHA-512 only to check a peer's
//! `Content-Digest` (RFC 9530) that carries one.

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-512 of `data`.
pub fn sha512(data: &[u8]) -> [u8; 64] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, data);
    let mut out = [0u8; 64];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex of `bytes` (fingerprints, serials, hashes stored as text).
pub fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
    out
}

/// base64url(SHA-256(`data`)), the form of `wth`, `ath`, `tth` and `oth` values.
pub fn sha256_b64(data: &[u8]) -> String {
    crate::jose::b64::encode(sha256(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}
