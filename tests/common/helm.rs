//! Rendering the chart with a real `helm` and reading what it renders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

/// The chart.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/vidx");

/// The values every render needs: where the images are.
pub const IMAGE: &str = "image:\n  repository: registry.example.com/media/vidx\n";

/// `$VIDX_HELM`, else the `helm` that `scripts/install-test-servers.sh` puts in `.tools/bin`.
pub fn helm() -> PathBuf {
    std::env::var_os("VIDX_HELM").map_or_else(|| super::tool("helm"), PathBuf::from)
}

/// Runs `helm ARGS CHART --values FILE` with `values` in a file.
pub fn run_helm(args: &[&str], values: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values).unwrap();
    run_helm_with_file(args, &values_file)
}

/// Runs `helm ARGS CHART --values FILE`.
pub fn run_helm_with_file(args: &[&str], values_file: &Path) -> Output {
    Command::new(helm())
        .args(args)
        .arg(CHART)
        .arg("--values")
        .arg(values_file)
        .output()
        .expect("helm runs (scripts/install-test-servers.sh installs it)")
}

/// Parses `helm template` output into its documents.
pub fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|part| serde_yaml_ng::from_str::<Value>(part).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// Renders the chart; the documents, or helm's error.
pub fn render(values: &str) -> Result<Vec<Value>, String> {
    let output = run_helm(&["template", "t"], values);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(documents(&String::from_utf8(output.stdout).unwrap()))
}

/// The documents of one kind.
pub fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some(kind))
        .collect()
}

/// The document of `kind` named `name`.
pub fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|document| document["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The value of environment variable `name` in a container spec.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|entry| entry["name"].as_str() == Some(name))?["value"]
        .as_str()
}

/// Every pod spec in the documents (Deployments, StatefulSets, CronJobs, Jobs, Pods), named
/// `Kind/name`.
pub fn pod_specs(documents: &[Value]) -> Vec<(String, &Value)> {
    documents
        .iter()
        .filter_map(|document| {
            let kind = document["kind"].as_str()?;
            let spec = match kind {
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    &document["spec"]["template"]["spec"]
                }
                "CronJob" => &document["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                "Pod" => &document["spec"],
                _ => return None,
            };
            let name = document["metadata"]["name"].as_str().unwrap_or("?");
            Some((format!("{kind}/{name}"), spec))
        })
        .collect()
}

/// Every container of a pod spec, init containers included.
pub fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| pod[*key].as_sequence())
        .flatten()
        .collect()
}
