//! A mock Kubernetes API server (kube's tower-test style) for the
//! operator's tests: every request is checked against a script of expected
//! calls, answered, and recorded.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;

/// One expected call: method, a piece of the path it must contain, and the answer.
pub struct Expect {
    method: Method,
    path: &'static str,
    status: StatusCode,
    body: Value,
}

pub fn expect(method: Method, path: &'static str, status: u16, body: Value) -> Expect {
    Expect {
        method,
        path,
        status: StatusCode::from_u16(status).unwrap(),
        body,
    }
}

/// A request the operator made: path with query, JSON body.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Value,
}

/// Runs `body` with a client of a mock API server that answers `script`;
/// returns what `body` returned and the calls it made.
pub async fn serve<T, F: std::future::Future<Output = T>>(
    script: Vec<Expect>,
    body: impl FnOnce(kube::Client) -> F,
) -> (T, Vec<Call>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let server = tokio::spawn(async move {
        for expected in script {
            let (request, respond) = handle.next_request().await.expect("a request");
            let method = request.method().clone();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            recorded.lock().unwrap().push(Call {
                path: path.clone(),
                body,
            });
            assert!(
                method == expected.method && path.contains(expected.path),
                "expected {} …{}…, got {method} {path}",
                expected.method,
                expected.path
            );
            let response = Response::builder()
                .status(expected.status)
                .body(Body::from(serde_json::to_vec(&expected.body).unwrap()))
                .unwrap();
            respond.send_response(response);
        }
    });
    let outcome = body(client).await;
    server
        .await
        .expect("every expected call was made, as scripted");
    let calls = calls.lock().unwrap().clone();
    (outcome, calls)
}

/// The token of the heads these tests start.
pub const TOKEN: &str = "job-test-token";

/// A head on loopback; stops when dropped.
pub struct Head {
    pub address: String,
    stop: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Head {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn head() -> Head {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(photon_head::run(
        photon_head::HeadConfig::new(dir.path(), TOKEN),
        listener,
        stop.clone().cancelled_owned(),
    ));
    Head {
        address,
        stop,
        _dir: dir,
    }
}
