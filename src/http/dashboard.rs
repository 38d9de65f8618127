//! The pool dashboard: one HTML page compiled into the binary. It needs no build step and
//! loads nothing from elsewhere; it polls GetPoolStatus every few seconds and forwards the
//! `?code=` it was opened with.

use axum::response::Html;

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// The dashboard page.
#[utoipa::path(get, path = "/api/Dashboard", tag = "operations", operation_id = "Dashboard",
    responses(
        (status = 200, description = "The dashboard (HTML)", body = String, content_type = "text/html"),
        (status = 401, description = "No valid function key", body = super::ErrorEnvelope),
    ),
    security(("functionKey" = []), ("functionKeyQuery" = [])))]
pub async fn serve() -> Html<&'static str> {
    Html(PAGE)
}
