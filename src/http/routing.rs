//! Case-insensitive routes, as the Functions host has them: the host matches a function's route
//! ignoring case and forwards the path as the caller typed it, so `POST /api/createvm` reaches
//! vmpool. This layer rewrites a path that matches a known route ignoring case to the route's
//! own spelling before the router sees it; any other path is left alone (and gets the JSON 404).

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;
use tower::ServiceExt;

/// Every path the router serves, in its own spelling.
pub const PATHS: &[&str] = &[
    "/",
    "/ReconcilePool",
    "/api/CreateVM",
    "/api/ReportGameRoomsNumber",
    "/api/MarkVMForDeallocation",
    "/api/GetVM",
    "/api/GetAvailableVMs",
    "/api/GetPoolStatus",
    "/api/openapi.json",
    "/api/Metrics",
    "/api/Dashboard",
];

/// `router`, reached through paths in any case.
pub fn case_insensitive(router: Router) -> Router {
    Router::new().fallback_service(router.map_request(canonical))
}

/// The known route `path` spells in another case, if any.
pub fn canonical_path(path: &str) -> Option<&'static str> {
    PATHS.iter().copied().find(|p| p.eq_ignore_ascii_case(path))
}

fn canonical(mut req: Request) -> Request {
    let path = req.uri().path();
    let Some(known) = canonical_path(path).filter(|known| *known != path) else {
        return req;
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{known}?{query}"),
        None => known.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_match_in_any_case_and_others_do_not() {
        assert_eq!(canonical_path("/api/createvm"), Some("/api/CreateVM"));
        assert_eq!(
            canonical_path("/API/GETPOOLSTATUS"),
            Some("/api/GetPoolStatus")
        );
        assert_eq!(canonical_path("/reconcilepool"), Some("/ReconcilePool"));
        assert_eq!(canonical_path("/api/CreateVM"), Some("/api/CreateVM"));
        for other in [
            "/api/createvm/",
            "/api/create",
            "/apicreatevm",
            "/api/CreateVMs",
        ] {
            assert_eq!(canonical_path(other), None, "{other}");
        }
    }

    #[test]
    fn the_query_is_kept() {
        let req = Request::builder()
            .uri("/api/reportgameroomsnumber?vmId=a&rooms=2")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            canonical(req).uri(),
            "/api/ReportGameRoomsNumber?vmId=a&rooms=2"
        );
    }
}
