//! Strict base64url (RFC 4648 §5) without padding, as JWS compact serialization requires.
//!
//! Only the canonical encoding is accepted: no padding, no `+`/`/`, no whitespace and no
//! non-zero trailing bits, so one byte string has exactly one accepted text form. A token
//! whose signature was made over a different spelling can therefore never verify.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical unpadded base64url, refusing any other spelling.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    // The engine already refuses padding and non-zero trailing bits (canonical form).
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for len in 0u8..40 {
            let bytes: Vec<u8> = (0..len).map(|i: u8| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn padding_is_refused() {
        assert!(decode("YQ==").is_err());
        assert!(decode("YQ").is_ok());
    }

    #[test]
    fn standard_alphabet_is_refused() {
        assert!(decode("+/+/").is_err());
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // "YR" decodes to the same byte as "YQ" in lax decoders.
        assert!(decode("YR").is_err());
    }

    #[test]
    fn whitespace_is_refused() {
        assert!(decode("YQ ").is_err());
        assert!(decode("Y\nQ").is_err());
    }
}
