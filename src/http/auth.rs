//! The standalone API key. When `VMPOOL_API_KEY` is set, every route but `GET /` (the host's
//! probe) and `GET /api/openapi.json` (the API's description, anonymous under the host too)
//! wants it in the `x-functions-key` header or the `code` query parameter, as the
//! Functions host asks for function keys; otherwise the answer is 401 in the JSON envelope.
//! Under the Functions host the host checks function keys and no key is configured here.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::secret::Secret;

/// The key callers must present, kept as its SHA-256 digest: comparing two digests of fixed
/// length in constant time reveals neither the key's bytes nor its length.
#[derive(Clone, Debug)]
pub struct ApiKey(Option<[u8; 32]>);

impl ApiKey {
    /// Guards with `key`, or lets everything through when `None`.
    pub fn new(key: Option<&Secret>) -> Self {
        ApiKey(key.map(|k| digest(k.expose().as_bytes())))
    }

    /// Whether `given` is the key (always true when no key is set).
    pub fn admits(&self, given: Option<&[u8]>) -> bool {
        match (&self.0, given) {
            (None, _) => true,
            (Some(want), Some(given)) => bool::from(want.ct_eq(&digest(given))),
            (Some(_), None) => false,
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key the request presents: the header, else `?code=`.
fn presented(req: &Request) -> Option<Vec<u8>> {
    if let Some(header) = req.headers().get("x-functions-key") {
        return Some(header.as_bytes().to_vec());
    }
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "code")
        .map(|(_, value)| value.into_owned().into_bytes())
}

/// The paths anyone may `GET` (or `HEAD`): the host's probe and the OpenAPI document.
pub const ANONYMOUS: &[&str] = &["/", "/api/openapi.json"];

/// Middleware: every request but a `GET` of an [`ANONYMOUS`] path must present the key.
pub async fn require_key(State(key): State<ApiKey>, req: Request, next: Next) -> Response {
    let anonymous = ANONYMOUS.contains(&req.uri().path())
        && matches!(*req.method(), Method::GET | Method::HEAD);
    if anonymous || key.admits(presented(&req).as_deref()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_is_admitted() {
        let key = ApiKey::new(Some(&Secret::new("s3cret")));
        assert!(key.admits(Some(b"s3cret")));
        for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3CRET", b"s3cret\0", b"x"] {
            assert!(!key.admits(Some(wrong)), "{wrong:?}");
        }
        assert!(!key.admits(None));
        let open = ApiKey::new(None);
        assert!(open.admits(None) && open.admits(Some(b"anything")));
    }

    #[test]
    fn the_key_itself_is_not_kept() {
        let printed = format!("{:?}", ApiKey::new(Some(&Secret::new("s3cret"))));
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
