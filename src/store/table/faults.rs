//! What a failed call means: the SDK's errors classified (without quoting a URL that may
//! hold a token), which faults leave a write's outcome unknown, and how a conditional write's
//! refusal reads as a lost race.

use azure_core::error::ErrorKind;

use crate::domain::VmRecord;
use crate::store::{Etag, StoreError, Versioned, Written};

/// What went wrong with one call, before each operation decides what it means.
pub(crate) enum Fault {
    /// The service answered with an error status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The service's error code (`TableNotFound`, `UpdateConditionNotSatisfied`...).
        code: String,
    },
    /// Anything else, already classified.
    Store(StoreError),
}

/// A write whose answer never came.
#[derive(Clone, Copy)]
pub(crate) enum Sent<'a> {
    /// An insert of this row.
    Insert(&'a VmRecord),
    /// An update to this row, naming this version.
    Update(&'a VmRecord, &'a Etag),
    /// A delete naming this version.
    Delete(&'a Etag),
}

/// What a write whose answer never came did, judged from the row read back afterwards
/// (`now`); `None` when nothing changed, so the original fault stands:
/// - the row is at the version we named (or absent, for an insert): nothing changed;
/// - the row is exactly what we wrote (or gone, for a delete): our write landed, `Done`;
/// - anything else: someone else's write won, `LostRace`.
pub(crate) fn settled(sent: Sent<'_>, now: Option<Versioned>) -> Option<Written> {
    Some(match (sent, now) {
        (Sent::Insert(_), None) => return None,
        (Sent::Update(_, named) | Sent::Delete(named), Some(row)) if row.etag == *named => {
            return None;
        }
        (Sent::Insert(vm) | Sent::Update(vm, _), Some(row)) if row.vm == *vm => {
            Written::Done(row.etag)
        }
        (Sent::Delete(named), None) => Written::Done(named.clone()),
        _ => Written::LostRace,
    })
}

/// A fault after which a write may or may not have been applied: no answer, a broken
/// connection, a timeout or an internal error of the service.
pub(crate) fn is_ambiguous(f: &Fault) -> bool {
    match f {
        Fault::Store(StoreError::Unavailable(_)) => true,
        Fault::Store(StoreError::Rejected(_)) => false,
        Fault::Status { status, .. } => *status == 408 || *status >= 500,
    }
}

/// A 404 for a row (not for the whole table).
pub(crate) fn is_missing_row(f: &Fault) -> bool {
    matches!(f, Fault::Status { status: 404, code } if code != "TableNotFound")
}

/// What a failed conditional write means: a stale ETag (412), a missing row (404) or an
/// existing key (409) is a lost race; anything else stays a fault.
pub(crate) fn lost_race(f: Fault) -> Result<Written, Fault> {
    match f {
        Fault::Status {
            status: 409 | 412, ..
        } => Ok(Written::LostRace),
        f if is_missing_row(&f) => Ok(Written::LostRace),
        f => Err(f),
    }
}

/// Classifies an SDK error without quoting it whole: its text can hold the request URL, and
/// with a SAS connection string the URL holds the token.
pub(crate) fn classify(what: &'static str, e: &azure_core::Error) -> Fault {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => Fault::Status {
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
        },
        ErrorKind::Io => Fault::Store(StoreError::Unavailable(format!(
            "{what}: cannot reach table storage ({})",
            root_cause(e)
        ))),
        ErrorKind::Credential => Fault::Store(StoreError::Rejected(format!(
            "{what}: the storage credentials cannot sign the request or get a token ({})",
            root_cause(e)
        ))),
        ErrorKind::DataConversion => Fault::Store(StoreError::Unavailable(format!(
            "{what}: table storage sent an answer that cannot be read"
        ))),
        _ => Fault::Store(StoreError::Unavailable(format!(
            "{what}: the request to table storage failed ({})",
            root_cause(e)
        ))),
    }
}

/// The innermost cause of an error (an OS or protocol error, which holds no URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.contains("://") {
        "connection failed".to_owned()
    } else {
        text
    }
}
