//! Paged listings: how many rows a page holds, and the opaque token that resumes a listing
//! where the last page stopped.

use std::collections::BTreeMap;
use std::future::Future;

use futures::StreamExt;

use crate::domain::VmState;

/// Rows per page when the caller names no limit.
pub const DEFAULT_PAGE: usize = 1000;
/// The most rows one page holds (Table Storage's own page size).
pub const MAX_PAGE: usize = 1000;

/// Where a listing resumes: the next partition and row key as the table service names them
/// (opaque: Azure encodes them). Callers see it only as a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    /// The next partition key.
    pub partition_key: String,
    /// The next row key, if the service gave one.
    pub row_key: Option<String>,
}

impl Continuation {
    /// The token handed to callers: the keys in lowercase hex, separated by `.`.
    pub fn token(&self) -> String {
        let mut token = hex(&self.partition_key);
        if let Some(row) = self.row_key.as_ref().filter(|r| !r.is_empty()) {
            token.push('.');
            token.push_str(&hex(row));
        }
        token
    }

    /// Reads a token made by [`Continuation::token`]; the error says what is wrong with it.
    pub fn parse(token: &str) -> Result<Self, String> {
        let bad = || "continuation is not a token this service gave out".to_owned();
        if token.is_empty() || token.len() > 2048 {
            return Err(bad());
        }
        let mut parts = token.split('.');
        let partition_key = parts.next().and_then(unhex).ok_or_else(bad)?;
        let row_key = match parts.next() {
            None => None,
            Some(part) => Some(unhex(part).filter(|r| !r.is_empty()).ok_or_else(bad)?),
        };
        if parts.next().is_some() || partition_key.is_empty() {
            return Err(bad());
        }
        Ok(Continuation {
            partition_key,
            row_key,
        })
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many rows (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Where to resume, or `None` for the first page.
    pub after: Option<Continuation>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: DEFAULT_PAGE,
            after: None,
        }
    }
}

impl PageRequest {
    /// From the `limit` and `continuation` a caller gave (either may be absent); the error
    /// says what to fix.
    pub fn parse(limit: Option<&str>, continuation: Option<&str>) -> Result<Self, String> {
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    format!("limit must be a whole number from 1 to {MAX_PAGE}; got {raw:?}")
                })?,
        };
        let after = continuation.map(Continuation::parse).transpose()?;
        Ok(PageRequest { limit, after })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The rows, in key (vmId) order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page. A page may hold fewer rows than
    /// asked for and still not be the last.
    pub next: Option<Continuation>,
}

/// How many VMs are in each state (every state is present, with 0 when none).
pub type StateCounts = BTreeMap<VmState, usize>;

/// Counts with every state at zero.
pub fn zero_counts() -> StateCounts {
    VmState::ALL.into_iter().map(|s| (s, 0)).collect()
}

/// How many storage writes run at once when many are due together (a reconcile pass, an
/// index repair): enough to hide the round trip, few enough to stay well inside a storage
/// account's request budget and a connection pool.
pub const WRITE_CONCURRENCY: usize = 32;

/// Runs `tasks` with at most `limit` in flight at once and returns their outputs in the
/// order they finish. Tasks are started lazily, so at most `limit` futures exist at a time
/// beyond the iterator itself.
pub async fn run_bounded<T, F>(tasks: impl IntoIterator<Item = F>, limit: usize) -> Vec<T>
where
    F: Future<Output = T>,
{
    futures::stream::iter(tasks)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_anything_else() {
        for c in [
            Continuation {
                partition_key: "1!12!dm1wb29sLWE-".into(),
                row_key: Some("1!12!dm1wb29sLWE-".into()),
            },
            Continuation {
                partition_key: "vmpool-abc".into(),
                row_key: None,
            },
        ] {
            assert_eq!(Continuation::parse(&c.token()).unwrap(), c);
        }
        for bad in ["", "zz", "6", "61.", "61.62.63", "0a", &"61".repeat(2000)] {
            assert!(Continuation::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(
            PageRequest::parse(None, None).unwrap(),
            PageRequest::default()
        );
        assert_eq!(PageRequest::parse(Some("5"), None).unwrap().limit, 5);
        for bad in ["0", "1001", "-1", "x", ""] {
            let err = PageRequest::parse(Some(bad), None).unwrap_err();
            assert!(err.contains("limit"), "{err}");
        }
        assert!(PageRequest::parse(None, Some("nope")).is_err());
    }

    #[tokio::test]
    async fn bounded_runs_never_exceed_their_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = run_bounded(
            (0..100).map(|i| {
                let (now, peak) = (&now, &peak);
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i
                }
            }),
            8,
        )
        .await;
        assert_eq!(out.len(), 100);
        assert!(peak.load(Ordering::SeqCst) <= 8);
        assert!(peak.load(Ordering::SeqCst) > 1, "tasks ran at once");
    }
}
