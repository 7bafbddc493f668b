//! Documents this trust domain fetches over HTTPS from outside: the JWK Sets of the
//! authorization servers whose access tokens it accepts ([`issuers`]), and the one `GET`
//! both that and SPIFFE federation's bundle endpoints use ([`fetch`]).
//!
//! It does not decide what a fetched document means: a JWK Set becomes keys in
//! `wimse_core::token::access::TrustedIssuer`, a bundle is checked by the server's
//! federation. Start reading at [`issuers::IssuerKeys`].

#![forbid(unsafe_code)]

pub mod fetch;
pub mod issuers;
