//! JOSE: base64url, algorithms, JWKs, keys and the strict compact-JWS reader.

pub mod alg;
pub mod b64;
pub mod jwk;
pub mod jws;
pub mod key;

pub use alg::{Algorithm, AlgorithmError};
pub use jwk::{Jwk, JwkError, JwkSet, KeyParams};
pub use jws::{Header, Jws, JwsError};
pub use key::{KeyError, PublicKey, SigningKey};
