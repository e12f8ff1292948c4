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
/// returns what `body` returned and the calls it made (events aside).
pub async fn serve<T, F: std::future::Future<Output = T>>(
    script: Vec<Expect>,
    body: impl FnOnce(kube::Client) -> F,
) -> (T, Vec<Call>) {
    let (outcome, calls, _events) = serve_with_events(script, body).await;
    (outcome, calls)
}

/// [`serve`], also returning the Kubernetes Events published: those are
/// answered whenever they come (the recorder publishes after the calls it
/// reports), outside the script.
pub async fn serve_with_events<T, F: std::future::Future<Output = T>>(
    script: Vec<Expect>,
    body: impl FnOnce(kube::Client) -> F,
) -> (T, Vec<Call>, Vec<Call>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (recorded, recorded_events) = (calls.clone(), events.clone());
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let next = tokio::select! {
                next = handle.next_request() => next,
                _ = &mut finished => None,
            };
            let Some((request, respond)) = next else {
                break;
            };
            let method = request.method().clone();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                path: path.clone(),
                body: body.clone(),
            };
            if path.contains("/apis/events.k8s.io/") {
                recorded_events.lock().unwrap().push(call);
                // The event as created: its own body back.
                let response = Response::builder()
                    .status(StatusCode::CREATED)
                    .body(Body::from(bytes.to_vec()))
                    .unwrap();
                respond.send_response(response);
                continue;
            }
            recorded.lock().unwrap().push(call);
            let expected = script
                .next()
                .unwrap_or_else(|| panic!("unexpected {method} {path}: the script has ended"));
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
        let left: Vec<String> = script
            .map(|e| format!("{} …{}…", e.method, e.path))
            .collect();
        assert!(left.is_empty(), "expected calls never made: {left:?}");
    });
    let outcome = body(client).await;
    let _ = done.send(());
    server
        .await
        .expect("every expected call was made, as scripted");
    let calls = calls.lock().unwrap().clone();
    let events = events.lock().unwrap().clone();
    (outcome, calls, events)
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
