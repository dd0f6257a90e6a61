//! The values files kept in `charts/vidx/ci/`, rendered by a real `helm` and every manifest
//! validated by `kubernetes-validate --strict` against Kubernetes 1.33's schemas (both installed
//! by `scripts/install-test-servers.sh`); bad values stopped by `values.schema.json` with the
//! value's path; the restricted Pod Security Standard checked by walking every pod and container
//! of the rendered YAML; KEDA, the model cache and external secrets rendered as documented.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::helm::{
    CHART, IMAGE, containers, documents, env, named, of_kind, pod_specs, render, run_helm_with_file,
};
use serde_yaml_ng::Value;

/// The values files, each with what it shows.
const VALUES_FILES: [&str; 5] = [
    "minimal-values.yaml",
    "gpu-builtin-autoscaling-values.yaml",
    "keda-values.yaml",
    "external-redis-s3-values.yaml",
    "restricted-pss-values.yaml",
];

/// Custom resources kubernetes-validate has no schema for: their fields are checked here.
const CUSTOM_KINDS: [&str; 2] = ["ScaledObject", "ServiceMonitor"];

fn values_file(name: &str) -> PathBuf {
    Path::new(CHART).join("ci").join(name)
}

/// `helm template` of a values file: the text.
fn template(name: &str) -> String {
    let output = run_helm_with_file(&["template", "t"], &values_file(name));
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `kubernetes-validate --strict` for Kubernetes 1.33 on `manifests`; its output.
fn validate_strict(manifests: &str) -> std::process::Output {
    let mut child = Command::new(common::tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.33.0", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubernetes-validate runs (scripts/install-test-servers.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_values_file_lints_renders_and_validates_strictly_against_kubernetes_1_33() {
    for name in VALUES_FILES {
        let lint = run_helm_with_file(&["lint", "--strict"], &values_file(name));
        assert!(
            lint.status.success(),
            "helm lint {name}: {}",
            String::from_utf8_lossy(&lint.stdout)
        );
        let manifests = template(name);
        let output = validate_strict(&manifests);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{name}:\n{report}");
        // The only warnings allowed are for the custom resources, which have no schema there.
        for line in report.lines().filter(|line| line.starts_with("WARN")) {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|kind| line.contains(&format!("kind {kind} "))),
                "{name}: {line}"
            );
        }
        assert!(!report.contains("ERROR"), "{name}:\n{report}");
    }
}

#[test]
fn strict_validation_catches_a_misplaced_field() {
    // The check can fail: a field Kubernetes does not know is an error, not a warning.
    let manifests = template("minimal-values.yaml").replacen(
        "terminationGracePeriodSeconds: 75",
        "terminationGracePeriodSeconds: 75\n      gracePeriod: 300",
        1,
    );
    assert!(manifests.contains("gracePeriod: 300"));
    let output = validate_strict(&manifests);
    assert!(!output.status.success());
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(report.contains("gracePeriod"), "{report}");
}

#[test]
fn bad_values_fail_with_the_value_named() {
    let base = format!("{IMAGE}auth:\n  token: t\n");
    for (values, named_value) in [
        (
            format!("{base}worker:\n  replicas: -1\n"),
            "at '/worker/replicas'",
        ),
        (
            format!("{base}coordinator:\n  replicas: -3\n"),
            "at '/coordinator/replicas'",
        ),
        (
            format!("{base}autoscaling:\n  mode: sometimes\n"),
            "at '/autoscaling/mode'",
        ),
        (format!("{IMAGE}auth:\n  token: \"\"\n"), "at '/auth/token'"),
        (
            format!("{base}autoscaling:\n  mode: keda\n"),
            "at '/autoscaling/keda/prometheusServerAddress'",
        ),
        (format!("{base}worker:\n  gpus: 2\n"), "'gpus' not allowed"),
        (
            format!("{base}worker:\n  graceSeconds: 0\n"),
            "at '/worker/graceSeconds'",
        ),
        (
            format!("{base}worker:\n  metricsPort: 70000\n"),
            "at '/worker/metricsPort'",
        ),
        (
            format!("{base}coordinator:\n  allowedPrefixes: [\"http://media/\"]\n"),
            "at '/coordinator/allowedPrefixes/0'",
        ),
        (
            "image:\n  repository: r\n  pullPolicy: Sometimes\nauth:\n  token: t\n".to_owned(),
            "at '/image/pullPolicy'",
        ),
    ] {
        let error = render(&values).expect_err(&values);
        assert!(error.contains(named_value), "{values}\n{error}");
        assert!(error.contains("schema"), "{error}");
    }
}

#[test]
fn the_worker_grace_period_follows_its_grace_never_its_lease() {
    let values = format!(
        "{IMAGE}auth:\n  token: t\nworker:\n  leaseSeconds: 900\n  graceSeconds: 120\n  \
         shutdownMarginSeconds: 20\n  metricsPort: 9400\n"
    );
    let documents = render(&values).unwrap();
    let pod = &named(&documents, "Deployment", "t-vidx-worker")["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 140);
    let container = &pod["containers"][0];
    assert_eq!(env(container, "VIDX_GRACE_SECS"), Some("120"));
    assert_eq!(env(container, "VIDX_LEASE_SECS"), Some("900"));
    assert_eq!(env(container, "VIDX_METRICS_LISTEN"), Some("0.0.0.0:9400"));
    assert_eq!(container["ports"][0]["containerPort"], 9400);
    let service = named(&documents, "Service", "t-vidx-worker-metrics");
    assert_eq!(service["spec"]["ports"][0]["port"], 9400);
    assert!(
        of_kind(&documents, "ServiceMonitor").is_empty(),
        "ServiceMonitors are off by default"
    );
}

/// A pod-level or container-level setting: the container's own, else the pod's.
fn effective<'a>(pod: &'a Value, container: &'a Value, key: &str) -> &'a Value {
    let own = &container["securityContext"][key];
    if own.is_null() {
        &pod["securityContext"][key]
    } else {
        own
    }
}

#[test]
fn the_restricted_pss_set_has_a_security_context_on_every_pod_and_container() {
    let documents = documents(&template("restricted-pss-values.yaml"));
    let pods = pod_specs(&documents);
    let names: Vec<&str> = pods.iter().map(|(name, _)| name.as_str()).collect();
    // Every kind of pod the chart makes is in this set.
    assert_eq!(
        names,
        [
            "Deployment/t-vidx-autoscaler",
            "Deployment/t-vidx-coordinator",
            "Deployment/t-vidx-worker",
            "StatefulSet/t-vidx-redis",
            "CronJob/t-vidx-moderation-hourly"
        ]
    );
    let mut checked_containers = Vec::new();
    for (name, pod) in &pods {
        let context = &pod["securityContext"];
        assert!(context.is_mapping(), "{name}: no pod securityContext");
        assert_eq!(context["runAsNonRoot"], true, "{name}");
        assert_eq!(
            context["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].is_null() || pod[host] == false, "{name}: {host}");
        }
        // Restricted allows only these volume types.
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            let kinds: Vec<&str> = volume
                .as_mapping()
                .unwrap()
                .keys()
                .filter_map(Value::as_str)
                .filter(|key| *key != "name")
                .collect();
            assert!(
                kinds.iter().all(|kind| [
                    "configMap",
                    "csi",
                    "downwardAPI",
                    "emptyDir",
                    "ephemeral",
                    "persistentVolumeClaim",
                    "projected",
                    "secret"
                ]
                .contains(kind)),
                "{name}: volume {kinds:?}"
            );
        }
        for container in containers(pod) {
            let label = format!("{name} container {}", container["name"].as_str().unwrap());
            let context = &container["securityContext"];
            assert!(context.is_mapping(), "{label}: no securityContext");
            assert_eq!(context["allowPrivilegeEscalation"], false, "{label}");
            assert_eq!(context["readOnlyRootFilesystem"], true, "{label}");
            assert!(
                context["privileged"].is_null() || context["privileged"] == false,
                "{label}"
            );
            let dropped: Vec<&str> = context["capabilities"]["drop"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{label}: drops no capabilities"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(dropped.contains(&"ALL"), "{label}: {dropped:?}");
            assert!(
                context["capabilities"]["add"].is_null(),
                "{label} adds capabilities"
            );
            assert_eq!(*effective(pod, container, "runAsNonRoot"), true, "{label}");
            assert_eq!(
                effective(pod, container, "seccompProfile")["type"],
                "RuntimeDefault",
                "{label}"
            );
            // A read-only root needs somewhere to write: every container has /tmp on an emptyDir.
            let scratch = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|mount| mount["mountPath"] == "/tmp" && mount["name"] == "scratch");
            assert!(scratch, "{label}: no scratch mount at /tmp");
            for bound in ["requests", "limits"] {
                assert!(
                    container["resources"][bound]["memory"].is_string(),
                    "{label}: no memory {bound}"
                );
            }
            checked_containers.push(label);
        }
    }
    assert_eq!(checked_containers.len(), 6, "{checked_containers:?}");
}

#[test]
fn keda_scales_workers_on_outstanding_jobs_the_same_on_every_replica() {
    let documents = documents(&template("keda-values.yaml"));
    assert!(
        of_kind(&documents, "Role").is_empty(),
        "no builtin autoscaler"
    );
    let worker = named(&documents, "Deployment", "t-vidx-worker");
    assert!(worker["spec"]["replicas"].is_null(), "KEDA owns the count");
    let scaled = named(&documents, "ScaledObject", "t-vidx-worker");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    let spec = &scaled["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "t-vidx-worker");
    assert_eq!(spec["minReplicaCount"], 0);
    assert_eq!(spec["maxReplicaCount"], 32);
    assert_eq!(spec["cooldownPeriod"], 600);
    assert_eq!(
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        600
    );
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(
        trigger["metadata"]["serverAddress"],
        "http://prometheus-operated.monitoring.svc:9090"
    );
    assert_eq!(
        trigger["metadata"]["query"],
        "max(vidx_outstanding_jobs{namespace=\"default\", service=\"t-vidx-coordinator\"})"
    );
    assert_eq!(trigger["metadata"]["threshold"], "2");
    let monitor = named(&documents, "ServiceMonitor", "t-vidx-coordinator");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // The ServiceMonitor selects the coordinator's Service, which names the metrics port.
    let service = named(&documents, "Service", "t-vidx-coordinator");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key], value, "{key:?}");
    }
    // The workers' ServiceMonitor selects their headless metrics Service, and only it.
    let monitor = named(&documents, "ServiceMonitor", "t-vidx-worker");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let selected: Vec<&str> = of_kind(&documents, "Service")
        .into_iter()
        .filter(|service| {
            monitor["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .unwrap()
                .iter()
                .all(|(key, value)| &service["metadata"]["labels"][key] == value)
        })
        .map(|service| service["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(selected, ["t-vidx-worker-metrics"]);
}

#[test]
fn gpu_workers_with_builtin_autoscaling_and_a_model_cache_filled_from_the_hub() {
    let documents = documents(&template("gpu-builtin-autoscaling-values.yaml"));
    let claim = named(&documents, "PersistentVolumeClaim", "t-vidx-worker-models");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");
    let pod = &named(&documents, "Deployment", "t-vidx-worker")["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "gpu-batch");
    let fetch = &pod["initContainers"][0];
    assert_eq!(fetch["name"], "fetch-model");
    let args: Vec<&str> = fetch["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "fetch-model",
            "marinero4972/Open-o3-Video",
            "--revision",
            "main",
            "--cache-dir",
            "/models/.hub",
            "--link",
            "/models/Open-o3-Video"
        ]
    );
    assert_eq!(
        fetch["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "hf-token"
    );
    let worker = &pod["containers"][0];
    assert_eq!(
        worker["image"],
        "registry.example.com/media/vidx:0.1.0-cuda"
    );
    assert_eq!(worker["resources"]["limits"]["nvidia.com/gpu"], 1);
    // The init container writes the cache, the worker only reads it.
    assert_eq!(fetch["volumeMounts"][0]["mountPath"], "/models");
    assert!(fetch["volumeMounts"][0]["readOnly"].is_null());
    assert_eq!(worker["volumeMounts"][0]["readOnly"], true);
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "t-vidx-worker-models"
    );
    named(&documents, "Deployment", "t-vidx-autoscaler");
    named(&documents, "PodDisruptionBudget", "t-vidx-worker");
    let coordinator_pod =
        &named(&documents, "Deployment", "t-vidx-coordinator")["spec"]["template"]["spec"];
    let spread = coordinator_pod["topologySpreadConstraints"]
        .as_sequence()
        .unwrap();
    assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        named(&documents, "PodDisruptionBudget", "t-vidx-coordinator")["spec"]["minAvailable"],
        1
    );
}

#[test]
fn external_redis_existing_secrets_and_s3_credentials_reach_every_storage_component() {
    let documents = documents(&template("external-redis-s3-values.yaml"));
    assert!(of_kind(&documents, "StatefulSet").is_empty());
    assert!(
        of_kind(&documents, "Secret").is_empty(),
        "every secret exists already"
    );
    let account = named(&documents, "ServiceAccount", "t-vidx");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/vidx"
    );
    let pods = pod_specs(&documents);
    assert_eq!(pods.len(), 3, "coordinator, worker, moderation CronJob");
    for (name, pod) in &pods {
        assert_eq!(pod["serviceAccountName"], "t-vidx", "{name}");
        assert_eq!(
            pod["imagePullSecrets"][0]["name"], "registry-credentials",
            "{name}"
        );
        assert!(
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|volume| volume["configMap"]["name"] == "s3-ca-bundle"),
            "{name}"
        );
        let container = &pod["containers"][0];
        assert_eq!(
            container["envFrom"][0]["secretRef"]["name"], "vidx-s3",
            "{name}"
        );
        assert_eq!(env(container, "AWS_REGION"), Some("eu-west-1"), "{name}");
        assert!(
            container["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|mount| mount["mountPath"] == "/etc/vidx/ca"),
            "{name}"
        );
        assert_eq!(container["imagePullPolicy"], "Always", "{name}");
    }
    let coordinator = &named(&documents, "Deployment", "t-vidx-coordinator")["spec"]["template"]["spec"]
        ["containers"][0];
    let redis = coordinator["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == "VIDX_REDIS")
        .unwrap();
    assert_eq!(redis["valueFrom"]["secretKeyRef"]["name"], "vidx-redis-url");
    assert_eq!(redis["valueFrom"]["secretKeyRef"]["key"], "url");
    assert_eq!(
        env(coordinator, "VIDX_ALLOW_PREFIX"),
        Some("s3://media/videos/,s3://media/index/")
    );
    let worker = &named(&documents, "Deployment", "t-vidx-worker")["spec"]["template"]["spec"]["containers"]
        [0];
    // CPU workers: the CPU image, no GPU.
    assert_eq!(worker["image"], "registry.example.com/media/vidx:0.1.0");
    assert!(worker["resources"]["limits"]["nvidia.com/gpu"].is_null());
}

#[test]
fn notes_say_how_to_submit_a_pass_and_watch_it() {
    let output = run_helm_with_file(
        &["install", "t", "--dry-run=client", "--namespace", "media"],
        &values_file("minimal-values.yaml"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let notes = stdout
        .split("NOTES:")
        .nth(1)
        .expect("helm prints the notes");
    assert!(
        notes.contains("port-forward svc/t-vidx-coordinator 50051:50051"),
        "{notes}"
    );
    assert!(notes.contains("vidx submit"), "{notes}");
    assert!(
        notes.contains("vidx status \"$pass_id\" --watch"),
        "{notes}"
    );
    assert!(notes.contains("no local path"), "{notes}");
}

#[test]
fn helm_is_current() {
    let output = Command::new(common::helm::helm())
        .args(["version", "--short"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&output.stdout);
    let (major, minor) = version
        .trim()
        .trim_start_matches('v')
        .split('+')
        .next()
        .and_then(|version| {
            let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or_else(|| panic!("cannot read helm's version from {version:?}"));
    assert!(
        major > 3 || (major == 3 && minor >= 16),
        "helm {version} is older than 3.16"
    );
}

#[test]
fn the_chart_runs_redis_with_listpacks_big_enough_for_long_video_paths() {
    let documents = documents(&template("minimal-values.yaml"));
    let redis = named(&documents, "StatefulSet", "t-vidx-redis");
    let args: Vec<&str> = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("redis has args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|arg| *arg == "--hash-max-listpack-value")
        .expect("hash-max-listpack-value is set");
    assert_eq!(args.get(at + 1), Some(&"256"), "{args:?}");
    assert!(
        args.windows(2).any(|pair| pair == ["--appendonly", "yes"]),
        "{args:?}"
    );
}
