//! Who may read an HTTP listener. On loopback, anyone on the machine (as
//! with the gRPC side, the machine is the trust boundary). Bound beyond
//! loopback, everything but the probes (`/healthz`, `/readyz`) and, when
//! opened, `/metrics` needs the cluster token: an `Authorization: Bearer`
//! header (scripts, Prometheus) or the cookie the login page sets (browsers).
//! The cookie holds a value derived from the token, not the token: it opens
//! the HTTP pages only, never the gRPC side.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::post;
use photon_proto::auth::constant_time_eq;

/// The cookie the login page sets.
const COOKIE: &str = "photon_token";
/// Paths that answer without the token: Kubernetes probes them unauthenticated.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The access rule of one listener.
#[derive(Debug, Clone)]
pub struct HttpAccess {
    /// The cluster token.
    pub token: String,
    /// Serve `/metrics` without the token (for a Prometheus that has none).
    pub open_metrics: bool,
}

impl HttpAccess {
    /// Whether a listener at `address` needs the token: yes unless it is
    /// bound to a loopback address.
    pub fn required_at(address: SocketAddr) -> bool {
        !address.ip().is_loopback()
    }

    /// `router` behind the token check, with the login page's `/login`.
    pub fn protect(self, router: Router) -> Router {
        let access = Arc::new(self);
        let login = Router::new()
            .route("/login", post(login).get(login_page))
            .with_state(access.clone());
        router
            .merge(login)
            .layer(axum::middleware::from_fn_with_state(access, require_token))
    }

    fn is_open(&self, path: &str) -> bool {
        PROBES.contains(&path) || path == "/login" || (self.open_metrics && path == "/metrics")
    }

    /// The cookie's value: a hash of the token, so a stolen cookie does not
    /// give away the token.
    fn cookie_value(&self) -> String {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"photon http sign-in\0");
        hasher.update(self.token.as_bytes());
        hex::encode(hasher.finalize())
    }

    fn presented_by(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| constant_time_eq(token.as_bytes(), self.token.as_bytes()));
        let expected = self.cookie_value();
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|value| constant_time_eq(value.as_bytes(), expected.as_bytes()));
        bearer || cookie
    }
}

async fn require_token(
    State(access): State<Arc<HttpAccess>>,
    request: Request,
    next: Next,
) -> Response {
    if access.is_open(request.uri().path()) || access.presented_by(request.headers()) {
        return next.run(request).await;
    }
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        (StatusCode::UNAUTHORIZED, Html(LOGIN_PAGE)).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint needs the cluster token: send `Authorization: Bearer <token>` (the head's session dir `token` file)\n",
        )
            .into_response()
    }
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login_page() -> Html<&'static str> {
    Html(LOGIN_PAGE)
}

async fn login(State(access): State<Arc<HttpAccess>>, Form(login): Form<Login>) -> Response {
    let token = login.token.trim();
    if !constant_time_eq(token.as_bytes(), access.token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, Html(LOGIN_PAGE)).into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        access.cookie_value()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// A form that posts the token to `/login`; no external assets.
const LOGIN_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Photon: sign in</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>Photon</h1>
<p>This cluster needs its token (the head's session dir <code>token</code> file, or <code>PHOTON_TOKEN</code>).</p>
<form method="post" action="/login">
<input type="password" name="token" autofocus size="40" placeholder="cluster token">
<button type="submit">Sign in</button>
</form>
</body></html>
"#;
