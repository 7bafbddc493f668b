//! The few DER encodings wimse writes by hand: lengths, unsigned INTEGERs and SEQUENCEs, enough
//! for a PKCS#1 RSA public key ([`crate::jose`]), an ECDSA signature and a CSR's outer structure
//! ([`crate::x509`]). Pulling in a DER crate for them would add a dependency for thirty lines.

/// Appends a DER length: the short form below 128, else the long form with the fewest octets
/// (X.690 §8.1.3, §10.1).
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if let Ok(short) = u8::try_from(len)
        && short < 0x80
    {
        out.push(short);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = bytes.get(skip..).unwrap_or_default();
    out.push(0x80 | u8::try_from(significant.len()).unwrap_or(0));
    out.extend_from_slice(significant);
}

/// Appends an INTEGER holding the unsigned big-endian `magnitude`, in its one DER form.
pub(crate) fn push_unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len());
    let trimmed = magnitude.get(start..).unwrap_or_default();
    // A zero is one 0x00 byte; a high first bit needs a 0x00 so the INTEGER stays positive.
    let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    push_length(out, trimmed.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

/// A SEQUENCE whose contents are `body`, already encoded.
pub(crate) fn sequence(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(0x30);
    push_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// `SEQUENCE { INTEGER, INTEGER }` of two unsigned big-endian magnitudes: the shape of both
/// PKCS#1 `RSAPublicKey` and `ECDSA-Sig-Value`.
pub(crate) fn unsigned_integer_pair(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(first.len() + second.len() + 12);
    push_unsigned_integer(&mut body, first);
    push_unsigned_integer(&mut body, second);
    sequence(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_length(&mut out, len);
        out
    }

    #[test]
    fn length_uses_the_short_form_below_128_and_the_shortest_long_form_above() {
        assert_eq!(length(0), [0x00]);
        assert_eq!(length(0x7f), [0x7f]);
        assert_eq!(length(0x80), [0x81, 0x80]);
        assert_eq!(length(0xff), [0x81, 0xff]);
        assert_eq!(length(0x100), [0x82, 0x01, 0x00]);
    }

    #[test]
    fn unsigned_integer_drops_leading_zeros_and_pads_a_high_bit() {
        let encode = |magnitude: &[u8]| {
            let mut out = Vec::new();
            push_unsigned_integer(&mut out, magnitude);
            out
        };
        assert_eq!(encode(&[0x00, 0x00, 0x01]), [0x02, 0x01, 0x01]);
        assert_eq!(encode(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(encode(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(encode(&[0x00, 0x00]), [0x02, 0x01, 0x00]);
    }
}
