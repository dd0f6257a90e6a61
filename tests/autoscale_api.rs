//! The autoscaler's and the leader election's Kubernetes calls, checked as the API server would
//! receive them: the real `kube` client runs over kube's mock service (`tower_test::mock::pair`)
//! and every request's method, path, content type and body is compared with what the API
//! expects, then answered the way an API server answers. Covers the scale read and merge patch,
//! the seeded window after a restart, the pod deletion cost before a scale-in, and the Lease
//! created, renewed and taken over by two autoscalers sharing one API, of which only the holder
//! scales. Time is stepped by hand (a clock the test owns), never waited for.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;
use vidx::autoscale::leader::Clock;
use vidx::autoscale::{
    Autoscaler, Demand, DeploymentScale, LeaseLock, Reading, ScalePolicy, Scaling, SoleInstance,
};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

const NAMESPACE: &str = "media";
const SCALE: &str = "/apis/apps/v1/namespaces/media/deployments/workers/scale";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/media/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/media/leases/vidx-autoscaler";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

/// One request the API expects and how it answers.
struct Exchange {
    method: Method,
    /// Path and query, exactly.
    uri: String,
    /// Content type and body of a request that carries one.
    body: Option<(&'static str, Value)>,
    status: StatusCode,
    reply: Value,
}

fn exchange(
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

fn not_found(uri: &str) -> Exchange {
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
async fn serve(handle: &mut Handle, exchanges: Vec<Exchange>) {
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
async fn against<T: std::fmt::Debug>(
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
fn assert_quiet(handle: &mut Handle) {
    if let Some(Some((request, _))) = handle.next_request().now_or_never() {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

fn scale(replicas: u32) -> Value {
    json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": { "name": "workers", "namespace": NAMESPACE },
            "spec": { "replicas": replicas }, "status": { "replicas": replicas } })
}

fn get_scale(replicas: u32) -> Exchange {
    exchange(Method::GET, SCALE, None, scale(replicas))
}

fn patch_scale(replicas: u32) -> Exchange {
    exchange(
        Method::PATCH,
        &format!("{SCALE}?"),
        Some((MERGE_PATCH, json!({ "spec": { "replicas": replicas } }))),
        scale(replicas),
    )
}

/// A queue whose reading the test sets.
#[derive(Clone, Default)]
struct Queue {
    reading: Arc<Mutex<Reading>>,
    busy: Option<BTreeSet<String>>,
}

impl Queue {
    fn set(&self, outstanding: u64, leased: u64) {
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

fn policy(scale_down_delay: Duration) -> ScalePolicy {
    ScalePolicy {
        min_replicas: 0,
        max_replicas: 8,
        jobs_per_worker: 4,
        scale_down_delay,
    }
}

fn mock_client() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NAMESPACE), handle)
}

#[tokio::test]
async fn the_scale_is_read_and_merge_patched() {
    let (client, mut handle) = mock_client();
    let mut replicas = DeploymentScale::new(client, "workers", Some(NAMESPACE), None);
    let mut queue = Queue::default();
    queue.set(20, 0);
    let mut leadership = SoleInstance;
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy(Duration::from_secs(300))),
        demand: &mut queue,
        replicas: &mut replicas,
        leadership: &mut leadership,
    };
    let set = against(
        &mut handle,
        scaling.round(Instant::now()),
        vec![get_scale(0), patch_scale(5)],
    )
    .await;
    assert_eq!(set, Some(5));
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn a_restarted_autoscaler_does_not_scale_down_on_its_first_reading() {
    let (client, mut handle) = mock_client();
    let mut replicas = DeploymentScale::new(client, "workers", Some(NAMESPACE), None);
    // Six workers run and the queue is empty, as after a pass ended and the autoscaler restarted.
    let mut queue = Queue::default();
    let mut leadership = SoleInstance;
    let delay = Duration::from_secs(300);
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy(delay)),
        demand: &mut queue,
        replicas: &mut replicas,
        leadership: &mut leadership,
    };
    let start = Instant::now();
    let set = against(&mut handle, scaling.round(start), vec![get_scale(6)]).await;
    assert_eq!(set, None, "held: the window starts with the six running");
    assert_quiet(&mut handle);

    // Once the delay has passed with no demand, down to the minimum.
    let later = start + delay + Duration::from_secs(1);
    let set = against(
        &mut handle,
        scaling.round(later),
        vec![get_scale(6), patch_scale(0)],
    )
    .await;
    assert_eq!(set, Some(0));
    assert_quiet(&mut handle);
}

fn pod(name: &str, cost: Option<&str>) -> Value {
    let mut metadata = json!({ "name": name, "namespace": NAMESPACE });
    if let Some(cost) = cost {
        metadata["annotations"] = json!({ "controller.kubernetes.io/pod-deletion-cost": cost });
    }
    json!({ "metadata": metadata, "spec": { "containers": [{ "name": "worker", "image": "vidx" }] } })
}

fn mark(name: &str, cost: &str) -> Exchange {
    exchange(
        Method::PATCH,
        &format!("/api/v1/namespaces/media/pods/{name}?"),
        Some((
            MERGE_PATCH,
            json!({ "metadata": { "annotations": { "controller.kubernetes.io/pod-deletion-cost": cost } } }),
        )),
        pod(name, Some(cost)),
    )
}

#[tokio::test]
async fn a_scale_in_marks_idle_pods_to_go_first_and_keeps_busy_ones() {
    let (client, mut handle) = mock_client();
    let mut replicas = DeploymentScale::new(
        client,
        "workers",
        Some(NAMESPACE),
        Some("app.kubernetes.io/component=worker"),
    );
    // Three workers; worker-a holds the one leased job.
    let mut queue = Queue {
        busy: Some(BTreeSet::from(["worker-a".to_owned()])),
        ..Queue::default()
    };
    queue.set(1, 1);
    let mut leadership = SoleInstance;
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy(Duration::ZERO)),
        demand: &mut queue,
        replicas: &mut replicas,
        leadership: &mut leadership,
    };
    let pods = json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("worker-a", None),
        pod("worker-b", Some("100")),
        pod("worker-c", Some("0")),
    ] });
    // The first reading only seeds the window with the three running.
    let start = Instant::now();
    let set = against(&mut handle, scaling.round(start), vec![get_scale(3)]).await;
    assert_eq!(set, None);
    let set = against(&mut handle,
        scaling.round(start + Duration::from_secs(1)),
        vec![
                get_scale(3),
                exchange(
                    Method::GET,
                    "/api/v1/namespaces/media/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Dworker",
                    None,
                    pods,
                ),
                // Busy: kept. Idle but marked busy earlier: marked idle. worker-c: already idle.
                mark("worker-a", "100"),
                mark("worker-b", "0"),
                patch_scale(1),
            ]
    ).await;
    assert_eq!(set, Some(1));
    assert_quiet(&mut handle);
}

/// A clock the test steps: monotonic and wall time move together.
#[derive(Clone)]
struct ManualClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl ManualClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            offset: Arc::default(),
        }
    }

    fn advance_to(&self, seconds: u64) -> Instant {
        *self.offset.lock().unwrap() = Duration::from_secs(seconds);
        self.start + Duration::from_secs(seconds)
    }

    fn clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || {
            let offset = *this.offset.lock().unwrap();
            let seconds = i64::try_from(offset.as_secs()).unwrap();
            let wall = Timestamp::from_second(1_800_000_000 + seconds).unwrap();
            (this.start + offset, wall)
        })
    }
}

/// The wall time `seconds` after the clock's start, as the API writes a MicroTime.
fn micro(seconds: u64) -> String {
    let wall = Timestamp::from_second(1_800_000_000 + i64::try_from(seconds).unwrap()).unwrap();
    format!("{}.000000Z", wall.strftime("%Y-%m-%dT%H:%M:%S"))
}

fn lease(holder: &str, version: &str, acquired: u64, renewed: u64, transitions: i32) -> Value {
    json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": "vidx-autoscaler", "namespace": NAMESPACE, "resourceVersion": version },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 45,
                      "acquireTime": micro(acquired), "renewTime": micro(renewed),
                      "leaseTransitions": transitions } })
}

/// The body the lock sends: the lease without the server's namespace.
fn lease_request(
    holder: &str,
    version: Option<&str>,
    acquired: u64,
    renewed: u64,
    transitions: i32,
) -> Value {
    let mut metadata = json!({ "name": "vidx-autoscaler" });
    if let Some(version) = version {
        metadata["resourceVersion"] = json!(version);
    }
    json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 45,
                      "acquireTime": micro(acquired), "renewTime": micro(renewed),
                      "leaseTransitions": transitions } })
}

#[tokio::test]
async fn only_the_lease_holder_scales_and_another_takes_over_when_it_stops_renewing() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let clock = ManualClock::new();
    // Two autoscalers, as the chart's two replicas, each with its own client on the one API.
    let client_a = kube::Client::new(service.clone(), NAMESPACE);
    let client_b = kube::Client::new(service, NAMESPACE);
    let lease_duration = Duration::from_secs(45);
    let mut lock_a = LeaseLock::new(
        client_a.clone(),
        Some(NAMESPACE),
        "vidx-autoscaler",
        "autoscaler-a",
        lease_duration,
    )
    .with_clock(clock.clock());
    let mut lock_b = LeaseLock::new(
        client_b.clone(),
        Some(NAMESPACE),
        "vidx-autoscaler",
        "autoscaler-b",
        lease_duration,
    )
    .with_clock(clock.clock());
    let mut replicas_a = DeploymentScale::new(client_a, "workers", Some(NAMESPACE), None);
    let mut replicas_b = DeploymentScale::new(client_b, "workers", Some(NAMESPACE), None);
    let queue = Queue::default();
    queue.set(8, 0);
    let (mut queue_a, mut queue_b) = (queue.clone(), queue.clone());
    let delay = Duration::from_secs(300);
    let mut a = Scaling {
        scaler: Autoscaler::new(policy(delay)),
        demand: &mut queue_a,
        replicas: &mut replicas_a,
        leadership: &mut lock_a,
    };
    let mut b = Scaling {
        scaler: Autoscaler::new(policy(delay)),
        demand: &mut queue_b,
        replicas: &mut replicas_b,
        leadership: &mut lock_b,
    };

    // A finds no Lease, creates it and scales.
    let now = clock.advance_to(0);
    let set = against(
        &mut handle,
        a.round(now),
        vec![
            not_found(LEASE),
            Exchange {
                status: StatusCode::CREATED,
                ..exchange(
                    Method::POST,
                    &format!("{LEASES}?"),
                    Some((JSON, lease_request("autoscaler-a", None, 0, 0, 0))),
                    lease("autoscaler-a", "1", 0, 0, 0),
                )
            },
            get_scale(0),
            patch_scale(2),
        ],
    )
    .await;
    assert_eq!(set, Some(2));

    // B sees A's Lease and does nothing else: no scale read, no patch.
    let now = clock.advance_to(5);
    let set = against(
        &mut handle,
        b.round(now),
        vec![exchange(
            Method::GET,
            LEASE,
            None,
            lease("autoscaler-a", "1", 0, 0, 0),
        )],
    )
    .await;
    assert_eq!(set, None);
    assert_quiet(&mut handle);

    // A renews (a replace carrying the version it read) and goes on scaling.
    queue.set(16, 0);
    let now = clock.advance_to(15);
    let set = against(
        &mut handle,
        a.round(now),
        vec![
            exchange(
                Method::GET,
                LEASE,
                None,
                lease("autoscaler-a", "1", 0, 0, 0),
            ),
            exchange(
                Method::PUT,
                &format!("{LEASE}?"),
                Some((JSON, lease_request("autoscaler-a", Some("1"), 0, 15, 0))),
                lease("autoscaler-a", "2", 0, 15, 0),
            ),
            get_scale(2),
            patch_scale(4),
        ],
    )
    .await;
    assert_eq!(set, Some(4));

    // A stops (its pod is gone). B first sees the renewed record at 20 s; 45 s later by its own
    // clock the record has not changed, so B takes the Lease over and scales.
    let now = clock.advance_to(20);
    let set = against(
        &mut handle,
        b.round(now),
        vec![exchange(
            Method::GET,
            LEASE,
            None,
            lease("autoscaler-a", "2", 0, 15, 0),
        )],
    )
    .await;
    assert_eq!(set, None);
    let now = clock.advance_to(50);
    let set = against(
        &mut handle,
        b.round(now),
        vec![exchange(
            Method::GET,
            LEASE,
            None,
            lease("autoscaler-a", "2", 0, 15, 0),
        )],
    )
    .await;
    assert_eq!(set, None, "45 s have not passed since B saw this record");
    queue.set(24, 0);
    let now = clock.advance_to(65);
    let set = against(
        &mut handle,
        b.round(now),
        vec![
            exchange(
                Method::GET,
                LEASE,
                None,
                lease("autoscaler-a", "2", 0, 15, 0),
            ),
            exchange(
                Method::PUT,
                &format!("{LEASE}?"),
                Some((JSON, lease_request("autoscaler-b", Some("2"), 65, 65, 1))),
                lease("autoscaler-b", "3", 65, 65, 1),
            ),
            get_scale(4),
            patch_scale(6),
        ],
    )
    .await;
    assert_eq!(set, Some(6));

    // A comes back: the Lease is B's, so A only reads it.
    let now = clock.advance_to(70);
    let set = against(
        &mut handle,
        a.round(now),
        vec![exchange(
            Method::GET,
            LEASE,
            None,
            lease("autoscaler-b", "3", 65, 65, 1),
        )],
    )
    .await;
    assert_eq!(set, None);
    assert_quiet(&mut handle);
}

#[tokio::test]
async fn a_lost_race_for_the_lease_is_not_leading() {
    let (client, mut handle) = mock_client();
    let clock = ManualClock::new();
    let mut lock = LeaseLock::new(
        client.clone(),
        Some(NAMESPACE),
        "vidx-autoscaler",
        "autoscaler-a",
        Duration::from_secs(45),
    )
    .with_clock(clock.clock());
    let mut replicas = DeploymentScale::new(client, "workers", Some(NAMESPACE), None);
    let mut queue = Queue::default();
    queue.set(8, 0);
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy(Duration::from_secs(300))),
        demand: &mut queue,
        replicas: &mut replicas,
        leadership: &mut lock,
    };
    // Another replica created the Lease between this one's read and its create: 409.
    let conflict = Exchange {
        status: StatusCode::CONFLICT,
        ..exchange(
            Method::POST,
            &format!("{LEASES}?"),
            Some((JSON, lease_request("autoscaler-a", None, 0, 0, 0))),
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "AlreadyExists", "code": 409, "message": "already exists" }),
        )
    };
    let set = against(
        &mut handle,
        scaling.round(clock.advance_to(0)),
        vec![not_found(LEASE), conflict],
    )
    .await;
    assert_eq!(set, None);
    assert_quiet(&mut handle);
}
