//! JOSE: base64url, algorithms, JWKs, keys and the strict compact-JWS reader.

pub mod alg;
pub mod b64;
pub mod jwk;
pub mod key;

pub use alg::{Algorithm, AlgorithmError};
pub use jwk::{Jwk, JwkError, JwkSet, KeyParams};
pub use key::{KeyError, PublicKey, SigningKey};
