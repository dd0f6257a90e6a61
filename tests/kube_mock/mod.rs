//! A mock Kubernetes API for the autoscaler's tests: the real `kube` client over kube's mock
//! service (`tower_test::mock::pair`), with every request's method, path, content type and body
//! checked against the one the test expects, then answered as an API server answers; and a queue
//! whose reading the test sets.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;
use vidx::autoscale::{Demand, Reading, ScalePolicy};

pub type Handle = mock::Handle<Request<Body>, Response<Body>>;

pub const NAMESPACE: &str = "media";
pub const SCALE: &str = "/apis/apps/v1/namespaces/media/deployments/workers/scale";
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/media/leases";
pub const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/media/leases/vidx-autoscaler";
pub const MERGE_PATCH: &str = "application/merge-patch+json";
pub const JSON: &str = "application/json";

/// One request the API expects and how it answers.
pub struct Exchange {
    pub method: Method,
    /// Path and query, exactly.
    pub uri: String,
    /// Content type and body of a request that carries one.
    pub body: Option<(&'static str, Value)>,
    pub status: StatusCode,
    pub reply: Value,
}

pub fn exchange(
    method: Method,
    uri: &str,
    body: Option<(&'static str, Value)>,
    reply: Value,
) -> Exchange {
    Exchange {
        method,
        uri: uri.to_owned(),
        body,
        status: StatusCode::OK,
        reply,
    }
}

pub fn not_found(uri: &str) -> Exchange {
    Exchange {
        status: StatusCode::NOT_FOUND,
        ..exchange(
            Method::GET,
            uri,
            None,
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found" }),
        )
    }
}

/// Answers exactly `exchanges`, in order, checking each request against its entry.
pub async fn serve(handle: &mut Handle, exchanges: Vec<Exchange>) {
    for expected in exchanges {
        let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "no request came; expected {} {}",
                expected.method, expected.uri
            )
        });
        let what = format!("{} {}", request.method(), request.uri());
        assert_eq!(request.method(), expected.method, "{what}");
        assert_eq!(request.uri().to_string(), expected.uri, "{what}");
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned());
        let body = request.into_body().collect_bytes().await.unwrap();
        match expected.body {
            Some((expected_type, expected_body)) => {
                assert_eq!(content_type.as_deref(), Some(expected_type), "{what}");
                let body: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body, expected_body, "{what}");
            }
            None => assert!(body.is_empty(), "{what} carries a body"),
        }
        let response = Response::builder()
            .status(expected.status)
            .header(http::header::CONTENT_TYPE, JSON)
            .body(Body::from(serde_json::to_vec(&expected.reply).unwrap()))
            .unwrap();
        respond.send_response(response);
    }
}

/// Runs `round` while the API answers `exchanges`; fails (instead of waiting forever) when the
/// round ends before every expected request came.
pub async fn against<T: std::fmt::Debug>(
    handle: &mut Handle,
    round: impl std::future::Future<Output = Result<T>>,
    exchanges: Vec<Exchange>,
) -> T {
    let expected: Vec<String> = exchanges
        .iter()
        .map(|exchange| format!("{} {}", exchange.method, exchange.uri))
        .collect();
    let serving = serve(handle, exchanges);
    tokio::pin!(round);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut round => {
            if serving.now_or_never().is_none() {
                panic!("the round ended with {result:?} before all of {expected:?} came");
            }
            result.unwrap()
        }
        () = &mut serving => round.await.unwrap(),
    }
}

/// No request is waiting: whatever ran since the last answer sent nothing more.
pub fn assert_quiet(handle: &mut Handle) {
    if let Some(Some((request, _))) = handle.next_request().now_or_never() {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

pub fn scale(replicas: u32) -> Value {
    json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": { "name": "workers", "namespace": NAMESPACE },
            "spec": { "replicas": replicas }, "status": { "replicas": replicas } })
}

pub fn get_scale(replicas: u32) -> Exchange {
    exchange(Method::GET, SCALE, None, scale(replicas))
}

pub fn patch_scale(replicas: u32) -> Exchange {
    exchange(
        Method::PATCH,
        &format!("{SCALE}?"),
        Some((MERGE_PATCH, json!({ "spec": { "replicas": replicas } }))),
        scale(replicas),
    )
}

/// A queue whose reading the test sets.
#[derive(Clone, Default)]
pub struct Queue {
    pub reading: Arc<Mutex<Reading>>,
    pub busy: Option<BTreeSet<String>>,
}

impl Queue {
    pub fn set(&self, outstanding: u64, leased: u64) {
        *self.reading.lock().unwrap() = Reading {
            outstanding,
            leased,
        };
    }
}

#[async_trait]
impl Demand for Queue {
    async fn read(&mut self) -> Result<Reading> {
        Ok(*self.reading.lock().unwrap())
    }

    async fn busy_workers(&mut self) -> Result<Option<BTreeSet<String>>> {
        Ok(self.busy.clone())
    }
}

pub fn policy(scale_down_delay: Duration) -> ScalePolicy {
    ScalePolicy {
        min_replicas: 0,
        max_replicas: 8,
        jobs_per_worker: 4,
        scale_down_delay,
    }
}

pub fn mock_client() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NAMESPACE), handle)
}
