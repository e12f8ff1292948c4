//! What the head and each raylet serve over HTTP for operators and
//! Kubernetes: `/healthz` (the process answers), `/readyz` (it is ready for
//! work: the head serves, the raylet is registered) and `/metrics`
//! (Prometheus text, built fresh from the process's state on every scrape).
//!
//! Metrics are encoded with `prometheus-client`, so names, escaping and the
//! exposition format follow the OpenMetrics text format that Prometheus reads.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

mod access;
mod https;
pub use access::HttpAccess;
use https::TlsListener;

/// Labels of one sample, as `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// Builds labels from `(&str, impl ToString)` pairs.
pub fn labels<const N: usize>(pairs: [(&str, &dyn ToString); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_string(), escape(&value.to_string())))
        .collect()
}

/// Escapes a label value for the text format. `prometheus-client` 0.24 writes
/// `String` label values as they are, so a quote in one (a node's death
/// reason) would otherwise break the whole scrape.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One scrape's metrics: families are added with their samples, then encoded.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A gauge family: `samples` are `(labels, value)`. `help` ends without
    /// a full stop (the encoder adds one).
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> &mut Self {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
        self
    }

    /// A counter family; `name` without `_total`, which the encoder appends.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> &mut Self {
        let family = Family::<Labels, Counter<u64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
        self
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The OpenMetrics text content type that `prometheus-client` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process is ready for work (`/readyz`). Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/healthz`, `/readyz` and `/metrics` (`render` builds the metrics on each scrape).
pub fn router(
    readiness: Readiness,
    render: impl Fn() -> Metrics + Send + Sync + 'static,
) -> Router {
    let render = Arc::new(render);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = render().encode();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response() }
            }),
        )
}

/// Binds the HTTP listener at `address`, with an error that says what to do.
pub async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "port {} on {} is in use: choose another with {flag} (0 picks a free one)",
                address.port(),
                address.ip()
            )
        } else {
            format!("cannot listen on {address}: {err}")
        }
    })
}

/// Serves `router` on `listener` until `shutdown` completes: over TLS when
/// this process uses TLS ([`photon_proto::tls`]); beyond loopback, behind
/// `access` (see [`HttpAccess`]). `None` only for a listener that serves
/// nothing of a cluster's (the operator's metrics).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    access: Option<HttpAccess>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local = listener.local_addr();
    let router = match (access, &local) {
        (Some(access), Err(_)) => access.protect(router),
        (Some(access), Ok(at)) if HttpAccess::required_at(*at) => access.protect(router),
        _ => router,
    };
    let address = local.map_or_else(|_| "?".into(), |a| a.to_string());
    let served = match photon_proto::tls::current().map(|tls| tls.http_server()) {
        Some(None) => {
            tracing::error!(%address, "TLS is on but this process has no certificate: not serving HTTP");
            return;
        }
        Some(Some(config)) => {
            axum::serve(TlsListener::new(listener, config), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(err) = served {
        tracing::warn!(%address, %err, "HTTP endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_as_prometheus_text() {
        let mut metrics = Metrics::default();
        metrics
            .gauge(
                "photon_nodes",
                "Nodes by state",
                [
                    (labels([("state", &"alive")]), 2.0),
                    (labels([("state", &"dead")]), 1.0),
                ],
            )
            .counter(
                "photon_worker_exits",
                "Worker processes that ended",
                [
                    (labels([("reason", &"exited")]), 3),
                    (labels([("reason", &"said \"no\"")]), 1),
                ],
            );
        let text = metrics.encode();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
        let value = |name: &str, label: &str| {
            parsed
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.values().any(|v| v == label))
                .map(|s| s.value.clone())
        };
        assert!(
            matches!(
                value("photon_nodes", "alive"),
                Some(prometheus_parse::Value::Gauge(v)) if v == 2.0
            ),
            "{text}"
        );
        // The parser knows OpenMetrics' `_total` sample of a counter as untyped.
        assert!(
            matches!(
                value("photon_worker_exits_total", "exited"),
                Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)) if v == 3.0
            ),
            "{text}"
        );
        assert!(text.contains(r#"{reason="said \"no\""} 1"#), "{text}");
    }
}
