//! Typed values of command-line arguments that clap parses before any command runs.

use std::fmt;
use std::str::FromStr;

/// A registration entry selector as given on the command line: `TYPE:VALUE`, split at the first
/// colon, so `unix:uid:1000` is type `unix` with value `uid:1000` (as in SPIRE).
///
/// Only the shape is checked here; which types and values exist is the server's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorArg {
    /// The selector type, such as `unix` or `k8s`.
    pub kind: String,
    /// The value within that type, such as `uid:1000`.
    pub value: String,
}

/// Why a `--selector` value is not `TYPE:VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorArgError {
    /// There is no colon between type and value.
    #[error("expected `TYPE:VALUE`, as in `unix:uid:1000`")]
    MissingColon,
    /// The part before the first colon is empty.
    #[error("the selector type before the first `:` is empty")]
    EmptyType,
    /// The part after the first colon is empty.
    #[error("the selector value after the first `:` is empty")]
    EmptyValue,
}

impl FromStr for SelectorArg {
    type Err = SelectorArgError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, value) = text.split_once(':').ok_or(SelectorArgError::MissingColon)?;
        if kind.is_empty() {
            return Err(SelectorArgError::EmptyType);
        }
        if value.is_empty() {
            return Err(SelectorArgError::EmptyValue);
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for SelectorArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// A credential passed on the command line (a join token, a JWT-SVID): its `Debug` form is
/// redacted so that logging parsed arguments never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(String);

impl SecretArg {
    /// The secret itself, for the one place that needs it.
    #[allow(
        dead_code,
        reason = "called by the agent bodies, which are not written yet"
    )]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Why a secret argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretArgError {
    /// The value is empty.
    #[error("must not be empty")]
    Empty,
}

impl FromStr for SecretArg {
    type Err = SecretArgError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(SecretArgError::Empty);
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretArg(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_splits_at_the_first_colon() {
        let selector: SelectorArg = "unix:uid:1000".parse().unwrap();
        assert_eq!(selector.kind, "unix");
        assert_eq!(selector.value, "uid:1000");
        assert_eq!(selector.to_string(), "unix:uid:1000");
    }

    #[test]
    fn selector_without_colon_is_refused() {
        assert_eq!(
            "unix".parse::<SelectorArg>(),
            Err(SelectorArgError::MissingColon)
        );
    }

    #[test]
    fn selector_with_empty_type_or_value_is_refused() {
        assert_eq!(
            ":uid:1000".parse::<SelectorArg>(),
            Err(SelectorArgError::EmptyType)
        );
        assert_eq!(
            "unix:".parse::<SelectorArg>(),
            Err(SelectorArgError::EmptyValue)
        );
    }

    #[test]
    fn secret_debug_form_does_not_show_the_secret() {
        let secret: SecretArg = "s3cr3t-join-token".parse().unwrap();
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert_eq!(secret.expose(), "s3cr3t-join-token");
    }

    #[test]
    fn empty_secret_is_refused() {
        assert_eq!("".parse::<SecretArg>(), Err(SecretArgError::Empty));
    }
}
