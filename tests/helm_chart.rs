//! The Helm chart, rendered by a real `helm` (installed by `scripts/install-test-servers.sh`): it lints, renders
//! every part with the values platform teams set, refuses missing values with a clear message,
//! runs the autoscaler with least privilege, and the moderation CronJob's own script, run as the pod would run it against real
//! `vidx coordinator` and `vidx worker` processes on a real Redis, submits a pass, waits for it
//! and writes its manifest.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::helm::{IMAGE, env, named, of_kind, render, run_helm};
use common::{VIDX, ffmpeg_clip, start_coordinator};
use vidx_testkit::ChildGuard;
use vidx_testkit::port::ClosedPort;
use vidx_testkit::redis::RedisServer;
use vidx_testkit::vidx::start_worker;
use vidx_worker::evidence::ModerationPolicy;

const POLICY: &str = "categories:
  - name: weapons
    question: Is anyone holding a weapon?
    flagged_answer: \"yes\"
    severity: high
";

fn values_with_schedule(extra: &str) -> String {
    let policy = POLICY.replace('\n', "\n        ");
    format!(
        "{IMAGE}auth:
  token: test-token
moderation:
  schedules:
    - name: nightly
      schedule: \"0 2 * * *\"
      source: s3://media/uploads/
      destination: s3://media/moderation/
      activeDeadlineSeconds: 86400
      policy: |
        {policy}
{extra}"
    )
}

#[test]
fn chart_lints_and_renders_every_part() {
    let values = values_with_schedule("");
    let lint = run_helm(&["lint", "--strict"], &values);
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let documents = render(&values).unwrap();
    let mut kinds: Vec<&str> = documents
        .iter()
        .map(|document| document["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "CronJob",
            "Deployment",
            "Deployment",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
    );

    let coordinator = &named(&documents, "Deployment", "t-vidx-coordinator")["spec"];
    assert_eq!(coordinator["replicas"], 2);
    let container = &coordinator["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/media/vidx:0.1.0");
    // The bundled Redis wants its password; the URL is built from the Secret's value.
    assert_eq!(
        env(container, "VIDX_REDIS"),
        Some("redis://:$(REDIS_PASSWORD)@t-vidx-redis:6379/")
    );
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "t-vidx-redis"
    );
    let redis = &named(&documents, "StatefulSet", "t-vidx-redis")["spec"];
    assert_eq!(redis["serviceName"], "t-vidx-redis-headless");
    assert_eq!(
        named(&documents, "Service", "t-vidx-redis-headless")["spec"]["clusterIP"],
        "None"
    );
    let redis_container = &redis["template"]["spec"]["containers"][0];
    let args: Vec<&str> = redis_container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|pair| pair == ["--requirepass", "$(REDIS_PASSWORD)"]),
        "{args:?}"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(redis_container[probe]["exec"].is_mapping(), "redis {probe}");
    }

    let worker = &named(&documents, "Deployment", "t-vidx-worker")["spec"]["template"]["spec"];
    let container = &worker["containers"][0];
    assert_eq!(
        container["resources"]["limits"]["nvidia.com/gpu"].as_u64(),
        Some(1)
    );
    // GPU workers run the CUDA image.
    assert_eq!(
        container["image"],
        "registry.example.com/media/vidx:0.1.0-cuda"
    );
    // The worker's own HTTP port answers the probes: up for startup and liveness, model loaded
    // and coordinator reachable for readiness.
    let probe_path = |probe: &str| {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
        container[probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(probe_path("startupProbe"), "/healthz");
    assert_eq!(probe_path("livenessProbe"), "/healthz");
    assert_eq!(probe_path("readinessProbe"), "/readyz");
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 9091);
    assert_eq!(env(container, "VIDX_METRICS_LISTEN"), Some("0.0.0.0:9091"));
    assert_eq!(env(container, "VIDX_GRACE_SECS"), Some("60"));
    let pod_annotations = &named(&documents, "Deployment", "t-vidx-worker")["spec"]["template"]["metadata"]
        ["annotations"];
    assert_eq!(pod_annotations["prometheus.io/port"], "9091");
    let metrics = &named(&documents, "Service", "t-vidx-worker-metrics");
    assert_eq!(metrics["spec"]["clusterIP"], "None");
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        metrics["metadata"]["labels"]["app.kubernetes.io/component"],
        "worker"
    );
    assert_eq!(
        env(container, "VIDX_MODEL_ID"),
        Some("marinero4972/Open-o3-Video")
    );
    assert_eq!(
        env(container, "VIDX_COORDINATOR"),
        Some("http://t-vidx-coordinator:50051")
    );
    // A worker finishes what it can within its grace (60 s) and hands the rest back; the pod
    // waits that plus a margin, not the 300 s lease.
    assert_eq!(env(container, "VIDX_LEASE_SECS"), Some("300"));
    assert_eq!(worker["terminationGracePeriodSeconds"], 75);

    let cronjob = named(&documents, "CronJob", "t-vidx-moderation-nightly");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(
        cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"],
        86400
    );
    // The policy the CronJob mounts is the one given, and valid.
    let policy = named(&documents, "ConfigMap", "t-vidx-policy-nightly")["data"]["policy.yaml"]
        .as_str()
        .unwrap();
    assert_eq!(policy.trim_end(), POLICY.trim_end());
    ModerationPolicy::from_yaml(policy).unwrap();
}

#[test]
fn an_external_redis_replaces_the_bundled_one() {
    let documents = render(&values_with_schedule(
        "redis:\n  deploy: false\n  url: redis://cache:6379/2\n",
    ))
    .unwrap();
    assert!(of_kind(&documents, "StatefulSet").is_empty());
    let coordinator = named(&documents, "Deployment", "t-vidx-coordinator");
    let container = &coordinator["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(container, "VIDX_REDIS"), Some("redis://cache:6379/2"));
    // No bundled Redis, no Redis password Secret: only the token's.
    assert_eq!(of_kind(&documents, "Secret").len(), 1);
}

#[test]
fn missing_values_are_refused_with_what_to_set() {
    let error = render(&format!("{IMAGE}moderation:\n  schedules: []\n")).unwrap_err();
    assert!(error.contains("at '/auth/token'"), "{error}");
    let error = render(&format!(
        "{IMAGE}auth:\n  token: t\nredis:\n  deploy: false\n"
    ))
    .unwrap_err();
    assert!(error.contains("at '/redis/url'"), "{error}");
    assert!(error.contains("at '/redis/existingSecret'"), "{error}");
    let error = render("auth:\n  token: t\n").unwrap_err();
    assert!(error.contains("at '/image/repository'"), "{error}");
    // An existing Secret is used as it is: the chart makes none for the token.
    let documents = render(&format!(
        "{IMAGE}auth:\n  existingSecret: vidx-token\nredis:\n  auth:\n    existingSecret: vidx-redis\n"
    ))
    .unwrap();
    assert!(of_kind(&documents, "Secret").is_empty());
}

#[test]
fn autoscaling_runs_vidx_autoscale_with_least_privilege() {
    let values =
        format!("{IMAGE}auth:\n  token: t\nautoscaling:\n  mode: builtin\n  maxReplicas: 16\n");
    let values = values.as_str();
    let lint = run_helm(&["lint", "--strict"], values);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let documents = render(values).unwrap();
    // The autoscaler owns the worker count: the chart leaves it out so upgrades keep it.
    let worker = named(&documents, "Deployment", "t-vidx-worker");
    assert!(worker["spec"]["replicas"].is_null());

    let role = named(&documents, "Role", "t-vidx-autoscaler");
    let rules = role["rules"].as_sequence().unwrap();
    let granted: Vec<(&str, Option<&str>, Vec<&str>)> = rules
        .iter()
        .map(|rule| {
            (
                rule["resources"][0].as_str().unwrap(),
                rule["resourceNames"][0].as_str(),
                rule["verbs"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|verb| verb.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        granted,
        [
            (
                "deployments/scale",
                Some("t-vidx-worker"),
                vec!["get", "patch"]
            ),
            ("pods", None, vec!["list", "patch"]),
            ("leases", Some("t-vidx-autoscaler"), vec!["get", "update"]),
            ("leases", None, vec!["create"]),
        ]
    );
    // A Role, not a ClusterRole: nothing outside the release's namespace.
    assert!(of_kind(&documents, "ClusterRole").is_empty());
    let binding = named(&documents, "RoleBinding", "t-vidx-autoscaler");
    assert_eq!(binding["subjects"][0]["name"], "t-vidx-autoscaler");
    named(&documents, "ServiceAccount", "t-vidx-autoscaler");

    let deployment = &named(&documents, "Deployment", "t-vidx-autoscaler")["spec"];
    // Two replicas, one leader: only the holder of the Lease scales.
    assert_eq!(deployment["replicas"], 2);
    let pod = &deployment["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "t-vidx-autoscaler");
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "autoscale");
    assert_eq!(
        env(container, "VIDX_WORKER_DEPLOYMENT"),
        Some("t-vidx-worker")
    );
    assert_eq!(env(container, "VIDX_MAX_WORKERS"), Some("16"));
    assert_eq!(env(container, "VIDX_LEASE_NAME"), Some("t-vidx-autoscaler"));
    assert_eq!(
        env(container, "VIDX_WORKER_SELECTOR"),
        Some("app.kubernetes.io/instance=t,app.kubernetes.io/component=worker")
    );

    // The binary takes every setting the chart gives it: with them it gets as far as
    // connecting to the (here absent) coordinator.
    let mut command = Command::new(VIDX);
    command.args(["autoscale", "--dry-run"]);
    for entry in container["env"].as_sequence().unwrap() {
        if let (Some(name), Some(value)) = (entry["name"].as_str(), entry["value"].as_str()) {
            command.env(name, value);
        }
    }
    let absent = ClosedPort::reserve().unwrap();
    let output = command
        .env("VIDX_COORDINATOR", absent.http_url())
        .env("VIDX_TOKEN", "t")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to coordinator"), "{stderr}");

    let error = render(&format!(
        "{IMAGE}auth:\n  token: t\nautoscaling:\n  mode: builtin\n  minReplicas: 9\n  maxReplicas: 2\n"
    ))
    .unwrap_err();
    assert!(
        error.contains("minReplicas must not be above maxReplicas"),
        "{error}"
    );
    // A Lease shorter than two rounds would pass to the other replica between renewals.
    let error = render(&format!(
        "{IMAGE}auth:\n  token: t\nautoscaling:\n  mode: builtin\n  intervalSeconds: 30\n  builtin:\n    leaseDurationSeconds: 45\n"
    ))
    .unwrap_err();
    assert!(
        error.contains("autoscaling.builtin.leaseDurationSeconds must be at least twice"),
        "{error}"
    );
}

/// Runs the CronJob container's script with the pod's environment; the policy is mounted at a
/// temporary path instead of `/policy`.
fn run_cronjob_script(script: &str, policy: &Path, coordinator: &str, job_name: &str) -> String {
    let script = script.replace("/policy/policy.yaml", policy.to_str().unwrap());
    let bin_dir = Path::new(VIDX).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = ChildGuard::spawn(
        "the CronJob script",
        Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", path)
            .env("RUN_KEY", job_name)
            .env("VIDX_COORDINATOR", coordinator)
            .env("VIDX_TOKEN", "chart-token")
            .env("RUST_LOG", "warn"),
    )
    .and_then(|mut script| script.wait_finished(Duration::from_secs(180)))
    .unwrap_or_else(|error| panic!("{error}"));
    let stdout = output.stdout;
    assert!(
        output.status.success(),
        "CronJob script failed:\n{stdout}\n{}",
        output.stderr
    );
    stdout
}

#[test]
fn moderation_cronjob_runs_a_pass_and_writes_its_manifest() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    assert!(model.join("config.json").exists(), "missing {model:?}");
    let corpus = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ffmpeg_clip(&corpus.path().join("clip.mp4"), 2);
    std::fs::write(corpus.path().join("empty.mp4"), b"").unwrap();

    let values = format!(
        "{IMAGE}auth:\n  token: t\nmoderation:\n  schedules:\n    - name: hourly\n      schedule: \"0 * * * *\"\n      source: {}\n      destination: {}\n      policy: |\n        {}\n",
        corpus.path().display(),
        out.path().display(),
        POLICY.replace('\n', "\n        ")
    );
    let documents = render(&values).unwrap();
    let container = &named(&documents, "CronJob", "t-vidx-moderation-hourly")["spec"]["jobTemplate"]
        ["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "/bin/sh");
    let script = container["args"][0].as_str().unwrap();
    let policy_file = corpus.path().join("policy.yaml.mounted");
    std::fs::write(
        &policy_file,
        named(&documents, "ConfigMap", "t-vidx-policy-hourly")["data"]["policy.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();

    let redis = RedisServer::start().unwrap();
    let (_coordinator, coordinator_url) = start_coordinator(&redis.url(), "chart-token");
    let _worker = start_worker(
        Path::new(VIDX),
        &coordinator_url,
        "chart-token",
        &[
            "--model",
            model.to_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--min-pixels",
            "3136",
            "--max-pixels",
            "12544",
        ],
        &[("VIDX_MODEL_ID", env(container, "VIDX_MODEL_ID").unwrap())],
    )
    .expect("vidx worker starts");

    let first = run_cronjob_script(script, &policy_file, &coordinator_url, "hourly-29000000");
    let pass_id = first
        .lines()
        .find_map(|line| line.strip_prefix("pass "))
        .expect("the script names its pass")
        .to_owned();
    assert!(first.contains("1 indexed, 0 skipped, 1 failed"), "{first}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["pass_id"], pass_id.as_str());
    assert_eq!(manifest["model"]["id"], "marinero4972/Open-o3-Video");
    assert_eq!(manifest["videos"].as_array().unwrap().len(), 2);

    // A retried pod of the same run (same Job name) returns the same pass and finalizes again.
    let retried = run_cronjob_script(script, &policy_file, &coordinator_url, "hourly-29000000");
    assert!(retried.contains(&format!("pass {pass_id}")), "{retried}");
    // The next run is a new pass.
    let next = run_cronjob_script(script, &policy_file, &coordinator_url, "hourly-29000060");
    assert!(!next.contains(&format!("pass {pass_id}")), "{next}");
}
