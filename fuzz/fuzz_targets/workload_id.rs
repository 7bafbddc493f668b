//! Fuzzes the workload identifier and trust domain parsers: no input may panic, and whatever is
//! accepted must come back unchanged through its text form and its parts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wimse_core::{IdPolicy, TrustDomain, WorkloadId};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(id) = WorkloadId::parse(s) {
        // Accepted identifiers are kept byte for byte (no normalisation) ...
        assert_eq!(id.as_str(), s);
        // ... read back as themselves ...
        assert_eq!(WorkloadId::parse(&id.to_string()).as_ref(), Ok(&id));
        // ... and are rebuilt from their parts.
        assert_eq!(
            WorkloadId::from_parts(id.scheme(), id.trust_domain(), id.path()).as_ref(),
            Ok(&id)
        );
        assert_eq!(
            TrustDomain::new(id.trust_domain().as_str()).as_ref(),
            Ok(id.trust_domain())
        );
    }

    // The legacy policy only ever accepts more.
    let legacy = IdPolicy {
        allow_ip_trust_domain: true,
        ..IdPolicy::default()
    };
    if let Ok(id) = WorkloadId::parse_with(s, &legacy) {
        assert_eq!(
            WorkloadId::parse_with(&id.to_string(), &legacy).as_ref(),
            Ok(&id)
        );
    }

    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(TrustDomain::new(&td.to_string()).as_ref(), Ok(&td));
        assert_eq!(TrustDomain::new(&td.spiffe_id_string()).as_ref(), Ok(&td));
    }
});
