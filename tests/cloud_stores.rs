//! A whole pass from each cloud's object store, on real emulators of each on loopback ports:
//! `vidx index` plans the corpus by listing the bucket, workers read the videos with ranged
//! requests, and the evidence index is written back (S3 on s3s-fs, Azure on Azurite); `vidx
//! search` and `vidx report` read the index from the store. Credentials and endpoints come from
//! each cloud's environment variables only, as in production. GCS (fake-gcs-server) is read from
//! and planned; `object_store` sends GCS uploads with a bearer token even when told to skip
//! signing, so writing to the GCS emulator is not exercised.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{VIDX, ffmpeg_clip};
use vidx_testkit::azurite::Azurite;
use vidx_testkit::gcs::FakeGcs;
use vidx_testkit::s3::S3Server;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

/// Runs `vidx` with only the given store environment (no credentials leak in from the host).
fn vidx(env: &[(String, String)], args: &[&str]) -> Output {
    let mut command = Command::new(VIDX);
    command.args(args).env("RUST_LOG", "warn");
    for key in ["AWS_", "GOOGLE_", "AZURE_", "AZURITE_"] {
        for (name, _) in std::env::vars() {
            if name.starts_with(key) {
                command.env_remove(name);
            }
        }
    }
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command.output().expect("vidx runs")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "vidx failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn index_args<'a>(source: &'a str, destination: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "index",
        source,
        "--out",
        destination,
        "--model",
        model,
        "--max-new-tokens",
        "8",
        "--fps",
        "1",
        "--max-frames",
        "2",
        "--max-attempts",
        "1",
        "--min-pixels",
        "3136",
        "--max-pixels",
        "12544",
    ]
}

/// Indexes `source` into `destination` and reads the index back through the store.
fn index_search_report(env: &[(String, String)], source: &str, destination: &str) {
    let model = fixture_model();
    let indexed = stdout_of(&vidx(
        env,
        &index_args(source, destination, model.to_str().unwrap()),
    ));
    assert!(
        indexed.contains("1 indexed, 0 skipped, 1 failed"),
        "{indexed}"
    );
    let found = stdout_of(&vidx(env, &["search", destination, "frame", "--json"]));
    for line in found.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    let report_dir = tempfile::tempdir().unwrap();
    let report = report_dir.path().join("report.html");
    stdout_of(&vidx(
        env,
        &["report", destination, "--out", report.to_str().unwrap()],
    ));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("clip.mp4"),
        "the report lists the indexed video"
    );
}

/// A corpus directory: one real clip, one zero-byte upload, one file that is not a video.
fn corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    ffmpeg_clip(&dir.join("clip.mp4"), 2);
    std::fs::write(dir.join("empty.mp4"), b"").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a video").unwrap();
}

#[test]
fn a_pass_from_s3_writes_its_index_to_s3() {
    let s3 = S3Server::start().expect("s3s-fs starts (run scripts/install-test-servers.sh)");
    s3.create_bucket("media").unwrap();
    corpus(&s3.root().join("media/corpus"));
    let env: Vec<(String, String)> = s3
        .config()
        .into_iter()
        .map(|(key, value)| (key.to_uppercase(), value))
        .collect();
    index_search_report(&env, "s3://media/corpus/", "s3://media/index/run1/");
    assert!(
        s3.root().join("media/index/run1/manifest.json").exists(),
        "the manifest is in the bucket"
    );
}

#[test]
fn a_pass_from_azure_writes_its_index_to_azure() {
    let azurite = Azurite::start().expect("azurite starts (run scripts/install-test-servers.sh)");
    // Containers and the corpus are put in place with Microsoft's own SDK.
    let local = tempfile::tempdir().unwrap();
    corpus(local.path());
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("venv/bin/python");
    let seeded = Command::new(&python)
        .args(["-c", SEED_AZURE])
        .arg(azurite.connection_string())
        .arg(local.path())
        .status()
        .expect("the repository venv has Python (run scripts/install-test-servers.sh)");
    assert!(seeded.success());
    let env = azurite.env();
    index_search_report(&env, "az://videos/corpus/", "az://index/run1/");
    // A missing container is a clear planning error, not a hang or a panic.
    let model = fixture_model();
    let missing = vidx(
        &env,
        &index_args(
            "az://no-such-container/corpus/",
            "az://index/run2/",
            model.to_str().unwrap(),
        ),
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no-such-container"), "{stderr}");
}

/// Creates the `videos` and `index` containers and uploads every file of a directory under
/// `corpus/`: `python -c SEED_AZURE CONNECTION_STRING DIRECTORY`.
const SEED_AZURE: &str = r#"
import os, sys
from azure.storage.blob import BlobServiceClient
service = BlobServiceClient.from_connection_string(sys.argv[1])
videos = service.create_container("videos")
service.create_container("index")
for name in sorted(os.listdir(sys.argv[2])):
    with open(os.path.join(sys.argv[2], name), "rb") as data:
        videos.upload_blob("corpus/" + name, data)
"#;

#[test]
fn a_pass_reads_and_plans_from_gcs() {
    let data = tempfile::tempdir().unwrap();
    // fake-gcs-server serves each directory of its data directory as a bucket.
    corpus(&data.path().join("videos/corpus"));
    let gcs = FakeGcs::start(data.path())
        .expect("fake-gcs-server starts (run scripts/install-test-servers.sh)");
    let env = gcs.env();

    // Probing and frames read through GCS match reading the same file locally.
    let local_clip = data.path().join("videos/corpus/clip.mp4");
    let probe_gcs: serde_json::Value = serde_json::from_str(&stdout_of(&vidx(
        &env,
        &["probe", "gs://videos/corpus/clip.mp4"],
    )))
    .unwrap();
    let probe_local: serde_json::Value = serde_json::from_str(&stdout_of(&vidx(
        &env,
        &["probe", local_clip.to_str().unwrap()],
    )))
    .unwrap();
    for field in ["container", "codec", "width", "height", "fps", "duration_s"] {
        assert_eq!(probe_gcs[field], probe_local[field], "{field}");
    }
    let frames_gcs = tempfile::tempdir().unwrap();
    let frames_local = tempfile::tempdir().unwrap();
    for (url, out) in [
        ("gs://videos/corpus/clip.mp4", frames_gcs.path()),
        (local_clip.to_str().unwrap(), frames_local.path()),
    ] {
        stdout_of(&vidx(
            &env,
            &["frames", url, "--out", out.to_str().unwrap(), "--fps", "2"],
        ));
    }
    for name in ["frames.json", "frame_0000.png", "frame_0003.png"] {
        assert_eq!(
            std::fs::read(frames_gcs.path().join(name)).unwrap(),
            std::fs::read(frames_local.path().join(name)).unwrap(),
            "{name}"
        );
    }

    // A pass plans the bucket prefix and reads every video from GCS.
    let out = tempfile::tempdir().unwrap();
    let model = fixture_model();
    let indexed = stdout_of(&vidx(
        &env,
        &index_args(
            "gs://videos/corpus/",
            out.path().to_str().unwrap(),
            model.to_str().unwrap(),
        ),
    ));
    assert!(
        indexed.contains("1 indexed, 0 skipped, 1 failed"),
        "{indexed}"
    );
    let missing = vidx(&env, &["probe", "gs://videos/corpus/absent.mp4"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("not found"), "{stderr}");
}
