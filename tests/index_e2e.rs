//! The embedded default end to end: `vidx index` over a directory of real encoded videos (one
//! long enough to be split into segments, one zero-byte upload), with the tiny random Qwen2.5-VL
//! checkpoint from `../shared/fixtures`, then `vidx search` and `vidx report` over the index.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg runs (run scripts/setup.sh)");
    assert!(status.success(), "ffmpeg {args:?}");
}

fn vidx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vidx"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vidx runs")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn index_a_directory_then_search_and_report() {
    let model = fixture_model();
    assert!(
        model.join("config.json").exists(),
        "missing fixture {}",
        model.display()
    );
    let corpus = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let clip = corpus.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=10:duration=3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    std::fs::write(corpus.path().join("broken.mp4"), b"").unwrap();
    std::fs::write(corpus.path().join("notes.txt"), b"not a video").unwrap();

    let corpus_dir = corpus.path().to_str().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let model_dir = model.to_str().unwrap();
    let index_args = [
        "index",
        corpus_dir,
        "--out",
        out_dir,
        "--model",
        model_dir,
        "--max-new-tokens",
        "12",
        "--fps",
        "1",
        "--max-frames",
        "2",
        "--segment-secs",
        "2",
        "--max-attempts",
        "1",
        "--min-pixels",
        "3136",
        "--max-pixels",
        "12544",
    ];
    let output = vidx(&index_args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vidx index failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("2 videos") && stdout.contains("1 indexed, 0 skipped, 1 failed"),
        "one video indexed (split in two segments), one failed: {stdout}"
    );

    let files = files_under(out.path());
    let names: Vec<String> = files
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    let documents: Vec<&PathBuf> = files
        .iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "evidence.json"))
        .collect();
    assert_eq!(
        documents.len(),
        1,
        "one document for clip.mp4, assembled from its segments: {names:#?}"
    );
    let text = std::fs::read_to_string(documents[0]).unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["probe"]["width"], 160);
    let segments = document["segments"].as_array().unwrap();
    let starts: Vec<f64> = segments
        .iter()
        .map(|segment| segment["start_s"].as_f64().unwrap())
        .collect();
    assert_eq!(starts, [0.0, 2.0], "segments in order");
    let mut frames = 0;
    for segment in segments {
        frames += segment["frames"].as_array().unwrap().len();
        assert!(segment["answers"][0]["raw_text"].is_string());
    }
    assert_eq!(frames, 3, "1 fps over [0, 2) and [2, 3)");
    assert!(
        names.iter().any(|name| name.ends_with(".png")),
        "thumbnails stored: {names:#?}"
    );
    assert!(
        names.iter().any(|name| name.ends_with(".parquet")),
        "{names:#?}"
    );
    let manifest_path = files
        .iter()
        .find(|path| path.ends_with("manifest.json"))
        .expect("manifest written");
    let manifest = std::fs::read_to_string(manifest_path).unwrap();
    assert!(
        manifest.contains("broken.mp4"),
        "the zero-byte upload is listed with its reason: {manifest}"
    );

    let search = vidx(&["search", out.path().to_str().unwrap(), "anything", "--json"]);
    assert!(
        search.status.success(),
        "{}",
        String::from_utf8_lossy(&search.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&search.stdout).expect("search prints json");

    let report_path = out.path().join("report.html");
    let report = vidx(&[
        "report",
        out.path().to_str().unwrap(),
        "--out",
        report_path.to_str().unwrap(),
    ]);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let html = std::fs::read_to_string(&report_path).unwrap();
    assert!(html.contains("clip.mp4"), "the report shows the video");

    // The same command again: every video already indexed is skipped.
    let again = vidx(&index_args);
    let again_stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{again_stdout}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        again_stdout.contains("0 indexed, 1 skipped, 1 failed"),
        "{again_stdout}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["skipped"], 1, "{manifest}");
}

#[test]
fn probe_and_bad_input_errors_are_one_line() {
    let corpus = tempfile::tempdir().unwrap();
    let empty = corpus.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let output = vidx(&["probe", empty.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");

    let missing_model = vidx(&[
        "index",
        corpus.path().to_str().unwrap(),
        "--out",
        "/tmp/x/",
        "--model",
        "/nonexistent/model",
    ]);
    assert!(!missing_model.status.success());
    assert!(String::from_utf8_lossy(&missing_model.stderr).contains("/nonexistent/model"));
}

#[test]
fn frames_resized_for_the_model_have_sides_in_multiples_of_28() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=10:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    let out = dir.path().join("frames");
    let output = vidx(&[
        "frames",
        clip.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resize",
        "model",
        "--max-frames",
        "2",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("frames.json")).unwrap()).unwrap();
    let frames = listed.as_array().unwrap();
    assert_eq!(frames.len(), 2);
    for frame in frames {
        let (width, height) = (
            frame["width"].as_u64().unwrap(),
            frame["height"].as_u64().unwrap(),
        );
        assert_eq!((width % 28, height % 28), (0, 0), "{frame}");
        // 320x180 is below Open-o3 Video's minimum of 128*28*28 pixels, so it is scaled up.
        assert!(width * height >= 128 * 28 * 28, "{frame}");
        assert!(
            (width as f64 / height as f64 - 16.0 / 9.0).abs() < 0.2,
            "aspect kept: {frame}"
        );
    }
    assert!(out.join("frame_0000.png").exists());
}
