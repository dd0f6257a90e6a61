//! Leader election among autoscalers on a `coordination.k8s.io/v1` Lease, checked against the
//! mock API (`kube_mock`): two autoscalers share one API; the first creates the Lease and scales,
//! the second only reads it; the holder renews with the version it read; when it stops, the
//! other takes the Lease over once the record has not changed for the Lease's duration by its
//! own clock, and scales; a lost create race is not leading. Every Lease body is compared whole.

mod kube_mock;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube_mock::*;
use serde_json::{Value, json};
use tower_test::mock;
use vidx::autoscale::leader::Clock;
use vidx::autoscale::{Autoscaler, DeploymentScale, LeaseLock, Scaling};

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
/// The API answering a read of the Lease with this record.
fn get_lease(
    holder: &str,
    version: &str,
    acquired: u64,
    renewed: u64,
    transitions: i32,
) -> Exchange {
    exchange(
        Method::GET,
        LEASE,
        None,
        lease(holder, version, acquired, renewed, transitions),
    )
}

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
        vec![get_lease("autoscaler-a", "1", 0, 0, 0)],
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
            get_lease("autoscaler-a", "1", 0, 0, 0),
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
        vec![get_lease("autoscaler-a", "2", 0, 15, 0)],
    )
    .await;
    assert_eq!(set, None);
    let now = clock.advance_to(50);
    let set = against(
        &mut handle,
        b.round(now),
        vec![get_lease("autoscaler-a", "2", 0, 15, 0)],
    )
    .await;
    assert_eq!(set, None, "45 s have not passed since B saw this record");
    queue.set(24, 0);
    let now = clock.advance_to(65);
    let set = against(
        &mut handle,
        b.round(now),
        vec![
            get_lease("autoscaler-a", "2", 0, 15, 0),
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
        vec![get_lease("autoscaler-b", "3", 65, 65, 1)],
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
