//! The worker Deployment as the autoscaler sees it through the Kubernetes API (`kube`): its
//! `scale` subresource (read, merge-patched) and its pods' deletion cost, which tells the
//! ReplicaSet controller which pods to remove first on scale-in.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use super::Replicas;

/// The annotation the ReplicaSet controller ranks pods by on scale-in: lower goes first.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Deletion cost of a worker holding a lease.
pub const BUSY_COST: &str = "100";
/// Deletion cost of an idle worker (the same as an unmarked pod).
pub const IDLE_COST: &str = "0";

/// A kube client for the pod's service account or the local kubeconfig.
pub async fn client() -> Result<kube::Client> {
    // Both of rustls's crypto back ends are linked (object_store's HTTP client brings ring,
    // tonic's TLS aws-lc-rs), so rustls cannot pick a default by itself and the Kubernetes
    // client, which asks for one, would panic. aws-lc-rs, as tonic uses; a provider already
    // installed is kept.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")
}

/// A Deployment's `scale` subresource and its pods.
pub struct DeploymentScale {
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    name: String,
    /// Label selector of the Deployment's pods (`app=worker,tier=gpu`).
    pod_selector: Option<String>,
}

impl DeploymentScale {
    /// The Deployment `name` in `namespace` (else the client's default namespace); its pods,
    /// found by `pod_selector`, are marked before a scale-in (none are without one).
    pub fn new(
        client: kube::Client,
        name: &str,
        namespace: Option<&str>,
        pod_selector: Option<&str>,
    ) -> Self {
        let (deployments, pods) = match namespace {
            Some(namespace) => (
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client, namespace),
            ),
            None => (
                Api::default_namespaced(client.clone()),
                Api::default_namespaced(client),
            ),
        };
        Self {
            deployments,
            pods,
            name: name.to_owned(),
            pod_selector: pod_selector.map(str::to_owned),
        }
    }
}

#[async_trait]
impl Replicas for DeploymentScale {
    async fn current(&mut self) -> Result<u32> {
        let scale = self
            .deployments
            .get_scale(&self.name)
            .await
            .with_context(|| format!("reading the scale of deployment {}", self.name))?;
        let replicas = scale.spec.and_then(|spec| spec.replicas).unwrap_or(0);
        Ok(u32::try_from(replicas).unwrap_or(0))
    }

    async fn set(&mut self, count: u32) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "replicas": count } });
        self.deployments
            .patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("scaling deployment {} to {count}", self.name))?;
        Ok(())
    }

    /// Sets each pod's deletion cost: [`BUSY_COST`] for pods named in `busy` (worker ids are
    /// pod names), [`IDLE_COST`] for the rest; pods that already carry the right cost are left
    /// alone.
    async fn prefer_removing_idle(&mut self, busy: &BTreeSet<String>) -> Result<()> {
        let Some(selector) = &self.pod_selector else {
            return Ok(());
        };
        let pods = self
            .pods
            .list(&ListParams::default().labels(selector))
            .await
            .with_context(|| format!("listing worker pods ({selector})"))?;
        for pod in pods {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let cost = if busy.contains(name) {
                BUSY_COST
            } else {
                IDLE_COST
            };
            let marked = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(POD_DELETION_COST));
            if marked.map(String::as_str) == Some(cost) {
                continue;
            }
            let patch =
                serde_json::json!({ "metadata": { "annotations": { POD_DELETION_COST: cost } } });
            self.pods
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("marking pod {name} with deletion cost {cost}"))?;
        }
        Ok(())
    }
}
