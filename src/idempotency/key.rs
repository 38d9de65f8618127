//! The `Idempotency-Key` a caller sends with CreateVM.

use std::fmt;

/// A caller's key: 1-128 ASCII letters, digits, `-`, `_`, `.` and `:`. That is enough for a
/// UUID, a ULID or a matchmaker's `ticket:1234`, and it is always a valid table key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a header value is not a valid [`IdempotencyKey`]; the text tells the caller what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidKey(String);

impl IdempotencyKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 128;

    /// Checks `raw` against the rules above.
    pub fn parse(raw: &str) -> Result<Self, InvalidKey> {
        if raw.is_empty() {
            return Err(InvalidKey("Idempotency-Key must not be empty".into()));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidKey(format!(
                "Idempotency-Key is {} characters long; at most {} are allowed",
                raw.len(),
                Self::MAX_LEN
            )));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(InvalidKey(format!(
                "Idempotency-Key contains {bad:?}; only ASCII letters, digits, '-', '_', '.' and ':' are allowed"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The header that carries it.
    pub const HEADER: &str = "idempotency-key";

    /// The key in `headers`, if the caller sent one.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Option<Self>, InvalidKey> {
        let Some(value) = headers.get(Self::HEADER) else {
            return Ok(None);
        };
        let raw = value.to_str().map_err(|_| {
            InvalidKey(
                "Idempotency-Key must be plain ASCII letters, digits, '-', '_', '.' and ':'".into(),
            )
        })?;
        Self::parse(raw).map(Some)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_and_plain() {
        for ok in [
            "a",
            "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            "ticket:42_retry.1",
            &"k".repeat(128),
        ] {
            assert_eq!(
                IdempotencyKey::parse(ok).map(|k| k.to_string()),
                Ok(ok.to_owned())
            );
        }
        for bad in [
            "",
            " ",
            "a b",
            "a/b",
            "a#b",
            "o'k",
            "é",
            "a\nb",
            &"k".repeat(129),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_either_a_valid_key_or_refused(raw in "\\PC{0,140}") {
            let valid = (1..=128).contains(&raw.len())
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
            proptest::prop_assert_eq!(IdempotencyKey::parse(&raw).is_ok(), valid);
        }
    }
}
