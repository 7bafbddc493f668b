//! Fuzzes the X.509 readers that take what peers send: a certificate signing request from
//! an agent (`parse_csr`, with its proof-of-possession signature), a DER certificate and
//! a PEM chain (what a peer presents in mutual TLS or a bundle endpoint serves), and the
//! X509-SVID chain check behind them. No input may panic; whatever is read must read back
//! the same from its own encoding; and no input may verify as an SVID under a root whose
//! private key the fuzzer never sees.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::x509::{
    CaParams, Certificate, certs_from_pem, certs_to_pem, parse_csr, self_signed_ca,
    verify_svid_chain,
};
use wimse_core::TrustDomain;

const NOW: i64 = 1_800_000_000;

fn root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let params = CaParams {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            not_before: NOW - 3600,
            not_after: NOW + 3600,
            subject_cn: "wimse CA fuzz".into(),
            path_len: None,
        };
        self_signed_ca(&key, &params).unwrap()
    })
}

/// Every accessor of a certificate that was read, and its PEM round trip.
fn exercise(cert: &Certificate) {
    let _ = (cert.uri_sans(), cert.dns_sans(), cert.spki_der());
    let _ = (cert.public_key(), cert.is_ca(), cert.serial_hex());
    let _ = (cert.wimse_authority(), cert.not_before(), cert.not_after());
    let again = Certificate::from_pem(&cert.to_pem()).expect("a certificate we wrote must read");
    assert!(&again == cert, "PEM round trip changed the certificate");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = parse_csr(data) {
        assert!(!csr.spki_der.is_empty(), "an accepted CSR has a key");
    }
    if let Ok(cert) = Certificate::from_der(data.to_vec()) {
        exercise(&cert);
        let chain = [cert];
        assert!(
            verify_svid_chain(&chain, std::slice::from_ref(root()), NOW).is_err(),
            "a certificate the root never signed verified"
        );
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(chain) = certs_from_pem(text)
    {
        chain.iter().for_each(exercise);
        let again = certs_from_pem(&certs_to_pem(&chain)).expect("a chain we wrote must read");
        assert!(again == chain, "PEM round trip changed the chain");
        assert!(verify_svid_chain(&chain, std::slice::from_ref(root()), NOW).is_err());
    }
});
