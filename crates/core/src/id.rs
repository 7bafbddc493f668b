//! TEMPORARY placeholder with the agreed API; replaced by the real identifier module on merge.
#![allow(missing_docs, reason = "placeholder")]

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("bad id `{0}`")]
    Bad(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(s: &str) -> Result<Self, IdError> {
        let s = s.strip_prefix("spiffe://").unwrap_or(s);
        if s.is_empty() || s.contains('/') {
            return Err(IdError::Bad(s.into()));
        }
        Ok(TrustDomain(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn spiffe_id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    uri: String,
    td: TrustDomain,
    path_start: usize,
}

impl WorkloadId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| IdError::Bad(s.into()))?;
        let end = rest.find('/').unwrap_or(rest.len());
        let td = TrustDomain::new(rest.get(..end).unwrap_or_default())?;
        Ok(WorkloadId {
            uri: s.to_owned(),
            td,
            path_start: scheme.len() + 3 + end,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.uri
    }
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }
    pub fn path(&self) -> &str {
        self.uri.get(self.path_start..).unwrap_or_default()
    }
    pub fn is_spiffe(&self) -> bool {
        self.uri.starts_with("spiffe://")
    }
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl serde::Serialize for WorkloadId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for WorkloadId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        WorkloadId::parse(&s).map_err(serde::de::Error::custom)
    }
}
impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s).map_err(serde::de::Error::custom)
    }
}
