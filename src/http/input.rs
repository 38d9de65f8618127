//! Reading a VM operation's input from a JSON body or the query string, with errors that tell
//! the caller what to fix. Caller input leaves here only as a valid [`VmId`] and a bounded
//! room count.

use serde_json::{Map, Value};

use super::error::ApiError;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{ReportOrder, VmId};

/// The most rooms a VM can report.
pub const MAX_ROOMS: u32 = 100_000;

/// The largest report sequence number: 2^53, the largest whole number a JSON number keeps
/// exactly in every client.
pub const MAX_SEQUENCE: u64 = 1 << 53;

/// Parses a body that must be empty or a JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidInput(
            "the body must be a JSON object, such as {\"vmId\": \"vmpool-abc\"}".into(),
        )),
        Err(e) => Err(ApiError::InvalidInput(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// One field from the body or the query string; if both give it, they must agree.
fn field(
    body: &Map<String, Value>,
    query: &[(String, String)],
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let from_query: Vec<&String> = query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    if from_query.len() > 1 {
        return Err(ApiError::InvalidInput(format!(
            "{name} is given more than once in the query string"
        )));
    }
    let q = from_query.first().map(|v| Value::String((*v).clone()));
    match (body.get(name), q) {
        (Some(b), Some(q)) if !same(b, &q) => Err(ApiError::InvalidInput(format!(
            "{name} differs between the body and the query string; give it once"
        ))),
        (Some(b), _) => Ok(Some(b.clone())),
        (None, q) => Ok(q),
    }
}

fn same(body: &Value, query: &Value) -> bool {
    match (body, query) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(n), Value::String(s)) => n.to_string() == *s,
        _ => false,
    }
}

/// The query string's pairs.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

/// `vmId`, required and valid.
pub fn vm_id(body: &Map<String, Value>, query: &[(String, String)]) -> Result<VmId, ApiError> {
    match field(body, query, "vmId")? {
        None => Err(ApiError::InvalidInput(
            "vmId is required, in the JSON body ({\"vmId\": \"...\"}) or as ?vmId=...".into(),
        )),
        Some(Value::String(s)) => {
            VmId::parse(&s).map_err(|e| ApiError::InvalidInput(e.to_string()))
        }
        Some(other) => Err(ApiError::InvalidInput(format!(
            "vmId must be a string, not {}",
            kind(&other)
        ))),
    }
}

/// `vmId` from the query string only, required and valid (once).
pub fn query_vm_id(query: &[(String, String)]) -> Result<VmId, ApiError> {
    match field(&Map::new(), query, "vmId")? {
        Some(Value::String(s)) => {
            VmId::parse(&s).map_err(|e| ApiError::InvalidInput(e.to_string()))
        }
        _ => Err(ApiError::InvalidInput(
            "vmId is required in the query string: ?vmId=...".into(),
        )),
    }
}

/// `rooms`, required: a whole number from 0 to [`MAX_ROOMS`].
pub fn rooms(body: &Map<String, Value>, query: &[(String, String)]) -> Result<u32, ApiError> {
    let bad = |what: String| {
        ApiError::InvalidInput(format!(
            "rooms must be a whole number from 0 to {MAX_ROOMS}; {what}"
        ))
    };
    let n: u64 = match field(body, query, "rooms")? {
        None => return Err(bad("it is missing".into())),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u,
            (None, Some(i), _) => return Err(bad(format!("got {i}"))),
            (None, None, Some(f))
                if f.fract() == 0.0 && (0.0..=f64::from(MAX_ROOMS)).contains(&f) =>
            {
                // A whole number written as 3.0; the range check makes the cast exact.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "checked above"
                )]
                let whole = f as u64;
                whole
            }
            _ => return Err(bad(format!("got {n}"))),
        },
        // From the query string: digits only.
        Some(Value::String(s)) if body.get("rooms").is_none() => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("got {s:?}")));
            }
            s.parse().map_err(|_| bad(format!("got {s:?}")))?
        }
        Some(other) => return Err(bad(format!("got {}", kind(&other)))),
    };
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_ROOMS)
        .ok_or_else(|| bad(format!("got {n}")))
}

/// An optional text field (`pool`, `build`) from the body or the query string, checked by
/// `rule` (which says what is expected).
pub fn optional_text(
    body: &Map<String, Value>,
    query: &[(String, String)],
    name: &str,
    rule: fn(&str) -> Result<String, String>,
) -> Result<Option<String>, ApiError> {
    match field(body, query, name)? {
        None => Ok(None),
        Some(Value::String(s)) => rule(&s)
            .map(Some)
            .map_err(|why| ApiError::InvalidInput(format!("{name}: {why}"))),
        Some(other) => Err(ApiError::InvalidInput(format!(
            "{name} must be a string, not {}",
            kind(&other)
        ))),
    }
}

/// The report's optional ordering field: `reportedAt` (the game server's report time, RFC
/// 3339) or `sequence` (a whole number from 0 to 2^53, the largest JSON number every
/// client keeps exactly), not both.
pub fn report_order(
    body: &Map<String, Value>,
    query: &[(String, String)],
) -> Result<Option<ReportOrder>, ApiError> {
    let at = field(body, query, "reportedAt")?;
    let seq = field(body, query, "sequence")?;
    match (at, seq) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::InvalidInput(
            "give reportedAt or sequence, not both".into(),
        )),
        (Some(Value::String(s)), None) => {
            OffsetDateTime::parse(&s, &Rfc3339)
                .map(|t| Some(ReportOrder::At(t)))
                .map_err(|_| {
                    ApiError::InvalidInput(format!(
                        "reportedAt must be a time in RFC 3339, such as 2026-01-01T12:00:00.5Z; got {s:?}"
                    ))
                })
        }
        (Some(other), None) => Err(ApiError::InvalidInput(format!(
            "reportedAt must be a string in RFC 3339, not {}",
            kind(&other)
        ))),
        (None, Some(v)) => {
            let bad = |what: String| {
                ApiError::InvalidInput(format!(
                    "sequence must be a whole number from 0 to {MAX_SEQUENCE}; {what}"
                ))
            };
            let n = match &v {
                Value::Number(n) => n.as_u64().ok_or_else(|| bad(format!("got {n}")))?,
                Value::String(s) if body.get("sequence").is_none() => {
                    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad(format!("got {s:?}")));
                    }
                    s.parse().map_err(|_| bad(format!("got {s:?}")))?
                }
                other => return Err(bad(format!("got {}", kind(other)))),
            };
            if n > MAX_SEQUENCE {
                return Err(bad(format!("got {n}")));
            }
            Ok(Some(ReportOrder::Seq(n)))
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, query: Option<&str>) -> Result<(VmId, u32), ApiError> {
        let b = object(body.as_bytes())?;
        let q = query_pairs(query);
        Ok((vm_id(&b, &q)?, rooms(&b, &q)?))
    }

    proptest::proptest! {
        #[test]
        fn no_body_or_query_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), query in "\\PC{0,60}") {
            if let Ok(b) = object(&body) {
                let q = query_pairs(Some(&query));
                let _ = vm_id(&b, &q);
                let _ = rooms(&b, &q);
            }
        }

        #[test]
        fn rooms_accepts_exactly_the_whole_numbers_in_range(n in -5i64..200_000) {
            let b = object(format!("{{\"rooms\": {n}}}").as_bytes()).unwrap();
            proptest::prop_assert_eq!(rooms(&b, &[]).is_ok(), (0..=i64::from(MAX_ROOMS)).contains(&n));
        }
    }

    #[test]
    fn accepts_body_query_and_both_when_they_agree() {
        assert_eq!(parse(r#"{"vmId":"a","rooms":3}"#, None).unwrap().1, 3);
        assert_eq!(parse("", Some("vmId=a&rooms=0")).unwrap().1, 0);
        assert_eq!(
            parse(r#"{"vmId":"a"}"#, Some("rooms=100000")).unwrap().1,
            100_000
        );
        assert_eq!(
            parse(r#"{"vmId":"a","rooms":2}"#, Some("vmId=a&rooms=2"))
                .unwrap()
                .1,
            2
        );
        assert_eq!(parse(r#"{"vmId":"a","rooms":2.0}"#, None).unwrap().1, 2);
    }

    #[test]
    fn refuses_everything_else_with_a_message_that_says_what_to_fix() {
        let cases = [
            (r#"{"vmId":"a","rooms":-1}"#, None, "rooms"),
            (r#"{"vmId":"a","rooms":1.5}"#, None, "rooms"),
            (r#"{"vmId":"a","rooms":"3"}"#, None, "rooms"),
            (r#"{"vmId":"a","rooms":100001}"#, None, "rooms"),
            (r#"{"vmId":"a","rooms":1e300}"#, None, "rooms"),
            (r#"{"vmId":"a","rooms":null}"#, None, "rooms"),
            (r#"{"vmId":"a"}"#, None, "rooms"),
            ("", Some("vmId=a&rooms=-1"), "rooms"),
            ("", Some("vmId=a&rooms=1.5"), "rooms"),
            ("", Some("vmId=a&rooms=99999999999999999999"), "rooms"),
            (r#"{"rooms":1}"#, None, "vmId"),
            (r#"{"vmId":"","rooms":1}"#, None, "vmId"),
            (r#"{"vmId":"a/b","rooms":1}"#, None, "vmId"),
            (r#"{"vmId":"o'x","rooms":1}"#, None, "vmId"),
            (r#"{"vmId":7,"rooms":1}"#, None, "vmId"),
            ("", Some("vmId=a&vmId=b&rooms=1"), "vmId"),
            (r#"{"vmId":"a","rooms":1}"#, Some("vmId=b"), "vmId"),
            (r#"{"vmId":"a""#, None, "JSON"),
            ("[1]", None, "JSON object"),
        ];
        for (body, query, mentions) in cases {
            let err = parse(body, query).unwrap_err();
            assert!(matches!(err, ApiError::InvalidInput(_)), "{body} {query:?}");
            assert!(
                err.to_string().contains(mentions),
                "{body} {query:?}: {err}"
            );
        }
        let long = format!(r#"{{"vmId":"{}","rooms":1}}"#, "x".repeat(65));
        assert!(parse(&long, None).is_err());
    }

    #[test]
    fn pool_and_build_come_from_the_body_or_the_query_and_are_checked() {
        use crate::config::pools::{build, pool_name};
        let b = object(br#"{"pool":"eu","build":"1.5.0"}"#).unwrap();
        assert_eq!(
            optional_text(&b, &[], "pool", pool_name)
                .unwrap()
                .as_deref(),
            Some("eu")
        );
        let q = query_pairs(Some("build=1.4.0"));
        assert_eq!(
            optional_text(&Map::new(), &q, "build", build)
                .unwrap()
                .as_deref(),
            Some("1.4.0")
        );
        assert_eq!(
            optional_text(&Map::new(), &[], "pool", pool_name).unwrap(),
            None
        );
        for (body, query, name) in [
            (r#"{"pool":"e u"}"#, None, "pool"),
            (r#"{"pool":5}"#, None, "pool"),
            (r#"{"pool":"eu"}"#, Some("pool=us"), "pool"),
            (r#"{"build":"1 5"}"#, None, "build"),
            ("", Some("build=a'b"), "build"),
        ] {
            let b = object(body.as_bytes()).unwrap();
            let rule = if name == "pool" { pool_name } else { build };
            let err = optional_text(&b, &query_pairs(query), name, rule).unwrap_err();
            assert!(err.to_string().contains(name), "{body}: {err}");
        }
    }
}
