//! Strict JSON for untrusted token parts.
//!
//! `serde_json` accepts duplicate member names and keeps the last one, which lets an
//! attacker show one value to a lax parser and another to us (RFC 8725bis, "duplicate
//! member names"). [`from_slice`] first walks the document and refuses any object with a
//! repeated name, at any depth, then deserializes the typed value. The walk allocates
//! nothing but the borrowed names of the object being checked.

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Deserializes `bytes` as `T` after checking that no JSON object in it repeats a member name.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys.deserialize(&mut de)?;
    de.end()?;
    serde_json::from_slice(bytes)
}

/// Like [`from_slice`], and the document must be a JSON object: a JWT's claims set and
/// an unsigned subject token are objects (RFC 7519 §7.2), while a derived `Deserialize`
/// for a struct would also take an array of its fields in order.
pub fn object_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(serde::de::Error::custom("not a JSON object"));
    }
    from_slice(bytes)
}

/// A visitor that accepts any JSON value but fails on a repeated member name.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Names borrow from the input unless they contain escapes; either way a
        // repeated name is refused. Small objects (every token here) use a linear scan.
        let mut names: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut large: Option<HashSet<std::borrow::Cow<'de, str>>> = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let duplicate = if let Some(set) = &mut large {
                !set.insert(name.clone())
            } else {
                let dup = names.contains(&name);
                names.push(name.clone());
                if names.len() > 16 {
                    large = Some(names.drain(..).collect());
                }
                dup
            };
            if duplicate {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate member name `{}`",
                    name.escape_debug()
                )));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn duplicate_top_level_name_is_refused() {
        let err = from_slice::<Value>(br#"{"sub":"a","sub":"b"}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate member name `sub`"));
    }

    #[test]
    fn duplicate_nested_name_is_refused() {
        assert!(from_slice::<Value>(br#"{"cnf":{"jwk":{"x":"a","x":"b"}}}"#).is_err());
        assert!(from_slice::<Value>(br#"[{"a":1},{"a":1,"a":2}]"#).is_err());
    }

    #[test]
    fn only_an_object_is_an_object() {
        #[derive(serde::Deserialize, Debug)]
        struct Claims {
            sub: String,
        }
        assert_eq!(
            object_from_slice::<Claims>(br#" {"sub":"a"}"#).unwrap().sub,
            "a"
        );
        // A derived struct would take `["a"]` as `{"sub":"a"}`.
        assert_eq!(from_slice::<Claims>(br#"["a"]"#).unwrap().sub, "a");
        for doc in [&br#"["a"]"#[..], b"\"a\"", b"", b"  ", b"null"] {
            let err = object_from_slice::<Claims>(doc).unwrap_err();
            assert!(err.to_string().contains("not a JSON object"), "{err}");
        }
        assert!(object_from_slice::<Claims>(br#"{"sub":"a","sub":"b"}"#).is_err());
    }

    #[test]
    fn escaped_duplicate_is_refused() {
        assert!(from_slice::<Value>(br#"{"sub":"a","s\u0075b":"b"}"#).is_err());
    }

    #[test]
    fn many_distinct_names_are_accepted_and_duplicates_among_them_refused() {
        let mut doc = String::from("{");
        for i in 0..40 {
            use std::fmt::Write as _;
            write!(doc, "\"k{i}\":{i},").unwrap();
        }
        doc.push_str("\"k39\":0}");
        assert!(from_slice::<Value>(doc.as_bytes()).is_err());
        let ok = doc.replace("\"k39\":0}", "\"k40\":0}");
        assert!(from_slice::<Value>(ok.as_bytes()).is_ok());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(from_slice::<Value>(br#"{"a":1} x"#).is_err());
    }
}
