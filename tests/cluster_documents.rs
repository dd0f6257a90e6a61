//! A cluster pass end to end, as processes: a real `redis-server`, a `vidx coordinator` and a
//! `vidx worker` on the tiny random checkpoint, over a corpus with a video long enough to be split
//! into 3 segments. The video comes back as one video document with its 3 segments in order, the
//! manifest counts videos, and nobody runs `vidx finalize`: the coordinator finalizes the pass
//! when it finishes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{VIDX, ffmpeg_clip, start_coordinator, stdout_of, vidx_client};
use vidx_testkit::ChildGuard;
use vidx_testkit::redis::RedisServer;

const TOKEN: &str = "cluster-documents-token";

fn vidx(url: &str, args: &[&str]) -> Output {
    vidx_client(url, TOKEN, args)
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn evidence_documents(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|name| name == "evidence.json") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_split_video_becomes_one_document_and_the_pass_finalizes_itself() {
    let model = fixture_model();
    assert!(model.join("config.json").exists(), "missing fixture");
    let redis = RedisServer::start().unwrap();
    let (_coordinator, url) = start_coordinator(&redis.url(), TOKEN);
    let corpus = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // 5 s in 2 s segments: [0,2) [2,4) [4,5).
    ffmpeg_clip(&corpus.path().join("long.mp4"), 5);
    let pass_id = stdout_of(&vidx(
        &url,
        &[
            "submit",
            corpus.path().to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--fps",
            "1",
            "--max-frames",
            "2",
            "--segment-secs",
            "2",
        ],
    ))
    .trim()
    .to_owned();

    let mut worker = ChildGuard::spawn(
        "vidx worker",
        Command::new(VIDX)
            .args(["worker", "--coordinator", &url, "--model"])
            .arg(&model)
            .args(["--max-new-tokens", "8", "--min-pixels", "3136"])
            .args(["--max-pixels", "12544", "--lease-secs", "30"])
            .env("VIDX_TOKEN", TOKEN)
            .env("RUST_LOG", "info"),
    )
    .unwrap();

    // The coordinator writes the manifest on its own once the pass is over (its finalizer
    // looks every 2 s); nobody runs `vidx finalize`. Bounded: 600 looks, 0.5 s apart.
    let manifest_path = out.path().join("manifest.json");
    let mut looks = 0;
    while !manifest_path.exists() {
        looks += 1;
        assert!(
            looks < 600,
            "no manifest was written; worker log:\n{}",
            worker.log()
        );
        assert!(
            worker.try_status().unwrap().is_none(),
            "the worker exited:\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    worker.kill();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["pass_id"], pass_id.as_str());
    assert_eq!(
        manifest["videos"].as_array().unwrap().len(),
        1,
        "the manifest counts videos, not segments: {manifest}"
    );
    assert_eq!(
        (
            &manifest["indexed"],
            &manifest["skipped"],
            &manifest["failed"]
        ),
        (&1.into(), &0.into(), &0.into()),
        "{manifest}"
    );
    assert_eq!(manifest["model"]["id"], "tiny-realvocab", "{manifest}");

    let documents = evidence_documents(out.path());
    assert_eq!(documents.len(), 1, "{documents:?}");
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&documents[0]).unwrap()).unwrap();
    assert!(
        document["video"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/long.mp4"),
        "{}",
        document["video"]
    );
    let segments: Vec<(u64, f64, f64)> = document["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|segment| {
            (
                segment["index"].as_u64().unwrap(),
                segment["start_s"].as_f64().unwrap(),
                segment["end_s"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(segments.len(), 3, "{segments:?}");
    assert_eq!(segments.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(
        (segments[0].1, segments[1].1, segments[2].1),
        (0.0, 2.0, 4.0)
    );
    for segment in document["segments"].as_array().unwrap() {
        assert!(segment["answers"][0]["raw_text"].is_string(), "{segment}");
    }

    // Search hits name the video, never a fragment of it.
    let search = stdout_of(
        &Command::new(VIDX)
            // An empty query lists every row: the answers of the video's three segments at least.
            .args(["search", out.path().to_str().unwrap(), "", "--json"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap(),
    );
    let hits: serde_json::Value = serde_json::from_str(&search).unwrap();
    let hits = hits.as_array().unwrap();
    assert!(hits.len() >= 3, "one answer per segment at least: {hits:?}");
    for hit in hits {
        let video = hit["video_url"].as_str().unwrap();
        assert!(
            video.ends_with("/long.mp4") && !video.contains("#t="),
            "{hit}"
        );
    }
}
