//! A strict reader and writer of RFC 8941 Structured Field Values with RFC 9651's dates
//! and display strings, for HTTP Message Signatures (RFC 9421): its own fields
//! (dictionaries), and the fields a signature covers with the `sf` or `key` parameter,
//! which are re-serialized in canonical form (dictionaries, lists and items).
//!
//! Strict where RFC 8941 is lenient, because these fields carry security decisions:
//! a repeated dictionary key or parameter is refused (RFC 8941 lets the last one win,
//! which would let an intermediary-appended member override a signed one), and input is
//! capped at [`MAX_FIELD_LEN`].
//!
//! Hand-written rather than the `sfv` crate for that strictness: `sfv` applies RFC
//! 8941's last-one-wins rule to repeated keys, as the RFC asks of a general parser.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt::Write as _;

/// Base64 for byte sequences: RFC 8941 §4.2.7 says a parser SHOULD NOT fail when `=`
/// padding is missing; what is written is padded.
const LENIENT_PADDING: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The longest field value accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 8 * 1024;

/// Why a structured field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfError {
    /// The value is longer than [`MAX_FIELD_LEN`].
    #[error("structured field is {0} bytes, more than {MAX_FIELD_LEN}")]
    TooLong(usize),
    /// A character that the grammar does not allow here.
    #[error("structured field has an unexpected character at byte {0}")]
    Unexpected(usize),
    /// The value ended in the middle of a member.
    #[error("structured field ends early")]
    Truncated,
    /// A dictionary key appears twice.
    #[error("structured field repeats key `{0}`")]
    DuplicateKey(String),
    /// An integer has more than 15 digits.
    #[error("structured field integer out of range")]
    Integer,
    /// A byte sequence is not valid base64.
    #[error("structured field byte sequence is not valid base64")]
    Base64,
    /// A decimal has more than 12 integer or 3 fractional digits.
    #[error("structured field decimal out of range")]
    Decimal,
    /// A display string is not UTF-8 once its percent-escapes are decoded.
    #[error("structured field display string is not UTF-8")]
    DisplayString,
}

/// A bare item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareItem {
    /// `sf-integer`.
    Integer(i64),
    /// `sf-decimal`, in thousandths (`1.5` is 1500): RFC 8941 decimals have at most
    /// three fractional digits, so this is exact.
    Decimal(i64),
    /// `sf-string` (printable ASCII).
    String(String),
    /// `sf-token`.
    Token(String),
    /// `sf-binary`.
    Bytes(Vec<u8>),
    /// `sf-boolean`.
    Boolean(bool),
    /// `sf-date` (RFC 9651): Unix seconds.
    Date(i64),
    /// `sf-displaystring` (RFC 9651): Unicode text.
    DisplayString(String),
}

/// Ordered parameters, keys unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, BareItem)>);

impl Params {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&BareItem> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value.
    pub bare: BareItem,
    /// Its parameters.
    pub params: Params,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A single item.
    Item(Item),
    /// An inner list and its parameters.
    InnerList(Vec<Item>, Params),
}

/// A parsed dictionary, in field order.
pub type Dictionary = Vec<(String, Member)>;

/// A parsed list, in field order.
pub type List = Vec<Member>;

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn unexpected(&self) -> SfError {
        if self.pos >= self.input.len() {
            SfError::Truncated
        } else {
            SfError::Unexpected(self.pos)
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn key(&mut self) -> Result<String, SfError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => {}
            _ => return Err(self.unexpected()),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(self.input.get(start..self.pos).unwrap_or_default()).into())
    }

    fn bare_item(&mut self) -> Result<BareItem, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            Some(b'@') => {
                self.pos += 1;
                match self.number()? {
                    BareItem::Integer(seconds) => Ok(BareItem::Date(seconds)),
                    _ => Err(SfError::Unexpected(self.pos)),
                }
            }
            Some(b'%') => self.display_string(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => Ok(self.token()),
            _ => Err(self.unexpected()),
        }
    }

    /// The digits from here on, as a number, and how many there were.
    fn digits(&mut self) -> (i64, usize) {
        let start = self.pos;
        let mut value: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            self.pos += 1;
            // Saturates: callers refuse more digits than fit long before.
            value = value.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        }
        (value, self.pos - start)
    }

    /// An integer or a decimal (RFC 8941 §4.2.4).
    fn number(&mut self) -> Result<BareItem, SfError> {
        let sign = if self.peek() == Some(b'-') {
            self.pos += 1;
            -1
        } else {
            1
        };
        let (whole, count) = self.digits();
        if count == 0 {
            return Err(self.unexpected());
        }
        if self.peek() != Some(b'.') {
            if count > 15 {
                return Err(SfError::Integer);
            }
            return Ok(BareItem::Integer(sign * whole));
        }
        if count > 12 {
            return Err(SfError::Decimal);
        }
        self.pos += 1;
        let (fraction, places) = self.digits();
        if places == 0 && self.pos >= self.input.len() {
            return Err(SfError::Truncated);
        }
        if !(1..=3).contains(&places) {
            return Err(SfError::Decimal);
        }
        let scale = [100, 10, 1].get(places - 1).copied().unwrap_or(1);
        Ok(BareItem::Decimal(sign * (whole * 1000 + fraction * scale)))
    }

    /// A display string (RFC 9651 §4.2.10): `%"`, printable ASCII and lowercase `%xx`
    /// escapes, `"`.
    fn display_string(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1; // %
        if self.bump() != Some(b'"') {
            return Err(self.unexpected());
        }
        let mut bytes = Vec::new();
        loop {
            match self.bump() {
                None => return Err(SfError::Truncated),
                Some(b'"') => {
                    return String::from_utf8(bytes)
                        .map(BareItem::DisplayString)
                        .map_err(|_| SfError::DisplayString);
                }
                Some(b'%') => {
                    let hex = |c: Option<u8>| match c {
                        Some(c @ b'0'..=b'9') => Some(c - b'0'),
                        Some(c @ b'a'..=b'f') => Some(c - b'a' + 10),
                        _ => None,
                    };
                    let (Some(high), Some(low)) = (hex(self.bump()), hex(self.bump())) else {
                        return Err(SfError::Unexpected(self.pos.saturating_sub(1)));
                    };
                    bytes.push(high << 4 | low);
                }
                Some(c @ 0x20..=0x7e) => bytes.push(c),
                Some(_) => return Err(SfError::Unexpected(self.pos - 1)),
            }
        }
    }

    fn string(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(SfError::Truncated),
                Some(b'"') => return Ok(BareItem::String(out)),
                Some(b'\\') => match self.bump() {
                    Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                    None => return Err(SfError::Truncated),
                    Some(_) => return Err(SfError::Unexpected(self.pos - 1)),
                },
                Some(c @ 0x20..=0x7e) => out.push(char::from(c)),
                Some(_) => return Err(SfError::Unexpected(self.pos - 1)),
            }
        }
    }

    fn token(&mut self) -> BareItem {
        let start = self.pos;
        self.pos += 1;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
            if tchar {
                self.pos += 1;
            } else {
                break;
            }
        }
        BareItem::Token(
            String::from_utf8_lossy(self.input.get(start..self.pos).unwrap_or_default()).into(),
        )
    }

    fn bytes(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = self.input.get(start..self.pos).unwrap_or_default();
        if self.bump() != Some(b':') {
            return Err(self.unexpected());
        }
        LENIENT_PADDING
            .decode(text)
            .map(BareItem::Bytes)
            .map_err(|_| SfError::Base64)
    }

    fn boolean(&mut self) -> Result<BareItem, SfError> {
        self.pos += 1;
        match self.bump() {
            Some(b'1') => Ok(BareItem::Boolean(true)),
            Some(b'0') => Ok(BareItem::Boolean(false)),
            None => Err(SfError::Truncated),
            Some(_) => Err(SfError::Unexpected(self.pos - 1)),
        }
    }

    fn params(&mut self) -> Result<Params, SfError> {
        let mut params = Params::default();
        while self.peek() == Some(b';') {
            self.pos += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if params.get(&key).is_some() {
                return Err(SfError::DuplicateKey(key));
            }
            params.0.push((key, value));
        }
        Ok(params)
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare_item()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    fn inner_list(&mut self) -> Result<Member, SfError> {
        self.pos += 1; // (
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.peek() == Some(b')') {
                self.pos += 1;
                let params = self.params()?;
                return Ok(Member::InnerList(items, params));
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(self.unexpected()),
            }
        }
    }

    /// A list member: an item or an inner list.
    fn member(&mut self) -> Result<Member, SfError> {
        if self.peek() == Some(b'(') {
            self.inner_list()
        } else {
            Ok(Member::Item(self.item()?))
        }
    }

    /// After a list or dictionary member: the end (true), or a comma and another member.
    fn next_member(&mut self) -> Result<bool, SfError> {
        self.skip_ows();
        match self.bump() {
            None => Ok(true),
            Some(b',') => {
                self.skip_ows();
                if self.peek().is_none() {
                    return Err(SfError::Truncated);
                }
                Ok(false)
            }
            Some(_) => Err(SfError::Unexpected(self.pos - 1)),
        }
    }

    fn list(&mut self) -> Result<List, SfError> {
        let mut list = Vec::new();
        if self.peek().is_none() {
            return Ok(list);
        }
        loop {
            list.push(self.member()?);
            if self.next_member()? {
                return Ok(list);
            }
        }
    }

    fn dictionary(&mut self) -> Result<Dictionary, SfError> {
        let mut dict: Dictionary = Vec::new();
        if self.peek().is_none() {
            return Ok(dict);
        }
        loop {
            let key = self.key()?;
            let member = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.member()?
            } else {
                Member::Item(Item {
                    bare: BareItem::Boolean(true),
                    params: self.params()?,
                })
            };
            if dict.iter().any(|(k, _)| *k == key) {
                return Err(SfError::DuplicateKey(key));
            }
            dict.push((key, member));
            if self.next_member()? {
                return Ok(dict);
            }
        }
    }
}

/// Runs `parse` over a whole field value (RFC 8941 §4.2): leading spaces skipped, and
/// nothing may follow what it reads but spaces.
fn parse_field<'a, T>(
    input: &'a str,
    parse: impl FnOnce(&mut Parser<'a>) -> Result<T, SfError>,
) -> Result<T, SfError> {
    if input.len() > MAX_FIELD_LEN {
        return Err(SfError::TooLong(input.len()));
    }
    let mut parser = Parser {
        input: input.trim_end_matches(' ').as_bytes(),
        pos: 0,
    };
    parser.skip_sp();
    let value = parse(&mut parser)?;
    if parser.pos < parser.input.len() {
        return Err(SfError::Unexpected(parser.pos));
    }
    Ok(value)
}

/// Parses a dictionary field value (RFC 8941 §4.2.2; repeated keys refused).
pub fn parse_dictionary(input: &str) -> Result<Dictionary, SfError> {
    parse_field(input, Parser::dictionary)
}

/// Parses a list field value (RFC 8941 §4.2.1).
pub fn parse_list(input: &str) -> Result<List, SfError> {
    parse_field(input, Parser::list)
}

/// Parses an item field value (RFC 8941 §4.2.3).
pub fn parse_item(input: &str) -> Result<Item, SfError> {
    parse_field(input, Parser::item)
}

/// Serializes a bare item (RFC 8941 §4.1.3).
pub fn write_bare_item(out: &mut String, item: &BareItem) {
    match item {
        BareItem::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::Bytes(b) => {
            out.push(':');
            out.push_str(&STANDARD.encode(b));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
        BareItem::Decimal(thousandths) => {
            let sign = if *thousandths < 0 { "-" } else { "" };
            let (whole, fraction) = (
                thousandths.unsigned_abs() / 1000,
                thousandths.unsigned_abs() % 1000,
            );
            // At least one fractional digit, no trailing zeros (RFC 8941 §4.1.5).
            let fraction = format!("{fraction:03}");
            let fraction = fraction.trim_end_matches('0');
            let fraction = if fraction.is_empty() { "0" } else { fraction };
            let _ = write!(out, "{sign}{whole}.{fraction}");
        }
        BareItem::Date(seconds) => {
            let _ = write!(out, "@{seconds}");
        }
        BareItem::DisplayString(text) => {
            out.push_str("%\"");
            for byte in text.bytes() {
                if byte == b'%' || byte == b'"' || !(0x20..=0x7e).contains(&byte) {
                    let _ = write!(out, "%{byte:02x}");
                } else {
                    out.push(char::from(byte));
                }
            }
            out.push('"');
        }
    }
}

/// Serializes an item with its parameters.
pub fn write_item(out: &mut String, item: &Item) {
    write_bare_item(out, &item.bare);
    write_params(out, &item.params);
}

/// Serializes a list or dictionary member: an item or an inner list.
pub fn write_member(out: &mut String, member: &Member) {
    match member {
        Member::Item(item) => write_item(out, item),
        Member::InnerList(items, params) => write_inner_list(out, items, params),
    }
}

/// Serializes a list.
pub fn write_list(list: &List) -> String {
    let mut out = String::new();
    for (i, member) in list.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_member(&mut out, member);
    }
    out
}

/// Serializes parameters; a `true` Boolean is written as a bare key (RFC 8941 §4.1.1.2).
pub fn write_params(out: &mut String, params: &Params) {
    for (key, value) in &params.0 {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            write_bare_item(out, value);
        }
    }
}

/// Serializes an inner list with its parameters (RFC 8941 §4.1.1.1).
pub fn write_inner_list(out: &mut String, items: &[Item], params: &Params) {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_item(out, item);
    }
    out.push(')');
    write_params(out, params);
}

/// Serializes a dictionary.
pub fn write_dictionary(dict: &Dictionary) -> String {
    let mut out = String::new();
    for (i, (key, member)) in dict.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        match member {
            Member::Item(item) if item.bare == BareItem::Boolean(true) => {
                write_params(&mut out, &item.params);
            }
            member => {
                out.push('=');
                write_member(&mut out, member);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    const INPUT: &str = r#"wimse=("@method" "@request-target" "workload-identity-token");created=1785155797;expires=1785156097;nonce="abcd1111";tag="wimse-workload-to-workload";wimse-aud="https://svcb.example.com/gimme-ice-cream";wimse-sign-response"#;

    #[test]
    fn byte_sequences_read_with_or_without_padding_and_write_padded() {
        for text in ["a=:AAE=:", "a=:AAE:"] {
            let dict = parse_dictionary(text).unwrap();
            assert_eq!(
                dict[0].1,
                Member::Item(Item {
                    bare: BareItem::Bytes(vec![0, 1]),
                    params: Params::default(),
                }),
                "{text}"
            );
        }
        assert!(parse_dictionary("a=:A:").is_err());
        assert!(parse_dictionary("a=:AA=E:").is_err());
    }

    #[test]
    fn the_profile_example_round_trips_byte_for_byte() {
        let dict = parse_dictionary(INPUT).unwrap();
        assert_eq!(dict.len(), 1);
        let Member::InnerList(items, params) = &dict[0].1 else {
            panic!("not an inner list")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(
            params.get("created"),
            Some(&BareItem::Integer(1_785_155_797))
        );
        assert_eq!(
            params.get("wimse-sign-response"),
            Some(&BareItem::Boolean(true))
        );
        assert_eq!(write_dictionary(&dict), INPUT);
    }

    #[test]
    fn repeated_keys_are_refused() {
        assert_eq!(
            parse_dictionary("a=1, a=2"),
            Err(SfError::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_dictionary("a=(\"x\");n=1;n=2"),
            Err(SfError::DuplicateKey("n".into()))
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "A=1",
            "a=",
            "a=1,",
            "a=(\"x\"",
            "a=\"unterminated",
            "a=:not base64:",
            "a=1.5555",
            "a=1.",
            "a=1.a",
            "a=.5",
            "a=1234567890123.5",
            "a=@1.5",
            "a=@",
            "a=%\"%AB\"",
            "a=%\"%ff\"",
            "a=%\"%f\"",
            "a=%x",
            "a=%\"\u{e9}\"",
            "a=1234567890123456",
            "a=\"\\n\"",
            "a=?2",
            "a=(\"x\"\"y\")",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_dates_and_display_strings_read_and_write_canonically() {
        // RFC 8941 §4.1.5: no trailing zeros, at least one fractional digit.
        for (text, value, canonical) in [
            ("1.5", 1500, "1.5"),
            ("-0.250", -250, "-0.25"),
            ("3.0", 3000, "3.0"),
            ("123456789012.999", 123_456_789_012_999, "123456789012.999"),
        ] {
            let item = parse_item(text).unwrap();
            assert_eq!(item.bare, BareItem::Decimal(value), "{text}");
            let mut out = String::new();
            write_item(&mut out, &item);
            assert_eq!(out, canonical);
        }
        // RFC 9651 §3.3.7 and §3.3.8.
        let date = parse_item("@1659578233").unwrap();
        assert_eq!(date.bare, BareItem::Date(1_659_578_233));
        let text = parse_item("%\"f%c3%bc%c3%bc\"").unwrap();
        assert_eq!(text.bare, BareItem::DisplayString("f\u{fc}\u{fc}".into()));
        let mut out = String::new();
        write_item(&mut out, &text);
        assert_eq!(out, "%\"f%c3%bc%c3%bc\"");
        let mut out = String::new();
        write_bare_item(&mut out, &BareItem::DisplayString("50% \"off\"".into()));
        assert_eq!(out, "%\"50%25 %22off%22\"");
    }

    #[test]
    fn lists_and_items_are_whole_fields() {
        // RFC 9421 §2.1.1's dictionary, and RFC 8941 §3.1 and §3.3's examples: spacing
        // made canonical.
        let dict = parse_dictionary("a=1,    b=2;x=1;y=2,   c=(a   b   c)").unwrap();
        assert_eq!(write_dictionary(&dict), "a=1, b=2;x=1;y=2, c=(a b c)");
        let list = parse_list("sugar,   tea,  rum").unwrap();
        assert_eq!(write_list(&list), "sugar, tea, rum");
        let list = parse_list("(\"foo\"   \"bar\");lvl=5, (\"baz\");lvl=1, ()").unwrap();
        assert_eq!(
            write_list(&list),
            "(\"foo\" \"bar\");lvl=5, (\"baz\");lvl=1, ()"
        );
        assert_eq!(parse_list("").unwrap(), Vec::new());
        let item = parse_item("  5;foo=bar  ").unwrap();
        assert_eq!(item.bare, BareItem::Integer(5));
        for bad in ["1, 2", "1 2", "1,", "(a b)", "a b"] {
            assert!(parse_item(bad).is_err(), "{bad}");
        }
        for bad in ["a,", ",a", "a b", "(a b"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sequences_decode() {
        let dict = parse_dictionary("wimse=:AAEC:").unwrap();
        assert_eq!(
            dict[0].1,
            Member::Item(Item {
                bare: BareItem::Bytes(vec![0, 1, 2]),
                params: Params::default()
            })
        );
    }

    fn bare_item() -> impl Strategy<Value = BareItem> {
        prop_oneof![
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(BareItem::Integer),
            "[ -~]{0,20}".prop_map(BareItem::String),
            "[a-zA-Z*][a-zA-Z0-9:/*.-]{0,10}".prop_map(BareItem::Token),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(BareItem::Bytes),
            any::<bool>().prop_map(BareItem::Boolean),
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(BareItem::Decimal),
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(BareItem::Date),
            "\\PC{0,12}".prop_map(BareItem::DisplayString),
        ]
    }

    fn params() -> impl Strategy<Value = Params> {
        proptest::collection::btree_map("[a-z][a-z0-9-]{0,6}", bare_item(), 0..4)
            .prop_map(|m| Params(m.into_iter().collect()))
    }

    fn item() -> impl Strategy<Value = Item> {
        (bare_item(), params()).prop_map(|(bare, params)| Item { bare, params })
    }

    fn member() -> impl Strategy<Value = Member> {
        prop_oneof![
            item().prop_map(Member::Item),
            (proptest::collection::vec(item(), 0..4), params())
                .prop_map(|(items, p)| Member::InnerList(items, p)),
        ]
    }

    proptest! {
        #[test]
        fn serialized_dictionaries_parse_back_to_themselves(
            dict in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,6}", member(), 1..4)
        ) {
            let dict: Dictionary = dict.into_iter().collect();
            let text = write_dictionary(&dict);
            prop_assert_eq!(parse_dictionary(&text).unwrap(), dict);
        }

        #[test]
        fn serialized_lists_and_items_parse_back_to_themselves(
            list in proptest::collection::vec(member(), 0..4),
            item in item(),
        ) {
            prop_assert_eq!(parse_list(&write_list(&list)).unwrap(), list);
            let mut text = String::new();
            write_item(&mut text, &item);
            prop_assert_eq!(parse_item(&text).unwrap(), item);
        }

        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,200}") {
            let _ = parse_dictionary(&input);
            let _ = parse_list(&input);
            let _ = parse_item(&input);
        }
    }
}
