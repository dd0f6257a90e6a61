//! The autoscaler's Kubernetes calls, checked as the API server would receive them (the real
//! `kube` client over kube's mock service, `kube_mock`): the scale read and merge patch, the
//! window seeded after a restart (no scale-down on the first reading), and the pod deletion cost
//! set before a scale-in. Time is stepped by hand, never waited for.

mod kube_mock;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::Method;
use kube_mock::*;
use serde_json::{Value, json};
use vidx::autoscale::{Autoscaler, Demand, DeploymentScale, Scaling, SoleInstance};

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

/// Three workers, of which `demand` says worker-a holds the one leased job: a scale-in marks
/// worker-a busy and the others idle, then asks for one worker.
async fn scale_in_keeps_the_busy_worker(demand: &mut dyn Demand) {
    let (client, mut handle) = mock_client();
    let mut replicas = DeploymentScale::new(
        client,
        "workers",
        Some(NAMESPACE),
        Some("app.kubernetes.io/component=worker"),
    );
    let mut leadership = SoleInstance;
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy(Duration::ZERO)),
        demand,
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

#[tokio::test]
async fn a_scale_in_marks_idle_pods_to_go_first_and_keeps_busy_ones() {
    let mut queue = Queue {
        busy: Some(BTreeSet::from(["worker-a".to_owned()])),
        ..Queue::default()
    };
    queue.set(1, 1);
    scale_in_keeps_the_busy_worker(&mut queue).await;
}

/// The same scale-in with a real coordinator as the source: it names the worker holding the lease
/// (`ListLeaseHolders`), so the busy pod is the one that leased the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_names_the_busy_workers() {
    use std::sync::Arc;
    use vidx_coordinator::metrics::Metrics;
    use vidx_coordinator::service::Coordinator;
    use vidx_coordinator::store::{MemoryStore, RetryPolicy};
    use vidx_core::client::{ClientConfig, CoordinatorClient};

    let coordinator = Coordinator::new(
        Arc::new(MemoryStore::new(RetryPolicy::default())),
        Metrics::new(),
    );
    let (url, stop, server) = vidx::bench::start_coordinator(coordinator, None)
        .await
        .unwrap();
    let mut client = CoordinatorClient::connect(&ClientConfig::new(url, None))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let manifest = vidx::bench::write_manifest(scratch.path(), 1).unwrap();
    let out = format!("file://{}/out/", scratch.path().display());
    vidx::bench::submit_and_plan(&mut client, &manifest, &out)
        .await
        .unwrap();
    assert_eq!(client.lease("worker-a", 1, 60_000).await.unwrap().len(), 1);
    assert_eq!(client.lease_holders().await.unwrap(), ["worker-a"]);
    scale_in_keeps_the_busy_worker(&mut client).await;
    let _ = stop.send(());
    server.await.unwrap();
}
