//! `--device` and `--dtype` (`VIDX_DEVICE`, `VIDX_DTYPE`) on every command that loads the model,
//! through the real `vidx` binary: a GPU that this build or this machine lacks is one line on
//! stderr naming the flag, before anything is loaded or connected; `auto` and `cpu` run the
//! tiny fixture checkpoint, and the evidence document records the device and dtype that made it.
//! In a CUDA build on a machine with a GPU the same runs happen on the GPU (bf16 by default);
//! elsewhere those checks say why they were skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn vidx(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vidx"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("VIDX_DEVICE")
        .env_remove("VIDX_DTYPE")
        .env_remove("VIDX_MODEL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("vidx runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a failure whose stderr is exactly one `error: --device ...` line containing `words`.
fn assert_one_line_device_error(output: &Output, words: &str) {
    let text = stderr(output);
    assert!(!output.status.success(), "expected a failure: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");
    assert!(
        text.starts_with("error: --device "),
        "names the flag: {text}"
    );
    assert!(text.contains(words), "{words:?} in {text}");
}

/// The arguments of each model-loading command up to (not including) `--device`, with nothing
/// behind them that could be reached: no coordinator listens on port 9, the corpus is empty.
fn model_commands(corpus: &Path) -> Vec<Vec<String>> {
    let model = fixture_model().display().to_string();
    let corpus = corpus.display().to_string();
    let out = format!("{corpus}/out/");
    let words = |words: &[&str]| words.iter().map(|word| word.to_string()).collect();
    vec![
        words(&[
            "worker",
            "--model",
            &model,
            "--coordinator",
            "http://127.0.0.1:9",
        ]),
        words(&["index", &corpus, "--out", &out, "--model", &model]),
        words(&["ask", "/nonexistent/clip.mp4", "what?", "--model", &model]),
    ]
}

fn ffmpeg_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=10:duration=2",
        ])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .expect("ffmpeg runs (run scripts/setup.sh)");
    assert!(status.success(), "ffmpeg made the clip");
    clip
}

/// Runs `vidx index` over one clip with `extra` flags and returns the evidence document's
/// `model` object.
fn index_model_record(extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let corpus = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ffmpeg_clip(corpus.path());
    let model = fixture_model();
    let mut args = vec![
        "index",
        corpus.path().to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-new-tokens",
        "4",
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
    ];
    args.extend_from_slice(extra);
    let output = vidx(&args, env);
    assert!(
        output.status.success(),
        "vidx index {extra:?} failed: {}",
        stderr(&output)
    );
    let document = find_document(out.path()).expect("an evidence document was written");
    let text = std::fs::read_to_string(document).unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    document["model"].clone()
}

fn find_document(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_document(&path) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|name| name == "evidence.json") {
            return Some(path);
        }
    }
    None
}

#[test]
fn unknown_settings_are_refused_by_the_parser() {
    let corpus = tempfile::tempdir().unwrap();
    for command in model_commands(corpus.path()) {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.extend(["--device", "gpu0"]);
        let output = vidx(&args, &[]);
        assert!(!output.status.success());
        let text = stderr(&output);
        assert!(
            text.contains("--device") && text.contains("auto, cpu, cuda or cuda:N"),
            "{text}"
        );

        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let output = vidx(&args, &[("VIDX_DTYPE", "f64")]);
        assert!(!output.status.success());
        let text = stderr(&output);
        assert!(
            text.contains("--dtype") && text.contains("auto, bf16, f16 or f32"),
            "{text}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_a_gpu_in_one_line_naming_the_flag() {
    let corpus = tempfile::tempdir().unwrap();
    for command in model_commands(corpus.path()) {
        for device in ["cuda:0", "cuda"] {
            let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
            args.extend(["--device", device]);
            let output = vidx(&args, &[]);
            assert_one_line_device_error(&output, "cuda:0: this vidx was built without CUDA");
        }
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let output = vidx(&args, &[("VIDX_DEVICE", "cuda:3"), ("VIDX_DTYPE", "bf16")]);
        assert_one_line_device_error(&output, "cuda:3: this vidx was built without CUDA");
    }
}

#[test]
fn auto_and_explicit_settings_run_and_are_recorded_in_the_evidence() {
    let (device, dtype) = if vidx_model::device::visible_gpus() > 0 {
        ("cuda:0", "bf16")
    } else {
        ("cpu", "f32")
    };
    let auto = index_model_record(&[], &[]);
    assert_eq!(auto["device"], device, "{auto}");
    assert_eq!(auto["dtype"], dtype, "{auto}");
    assert_eq!(auto["id"], "tiny-realvocab");

    let cpu = index_model_record(&[], &[("VIDX_DEVICE", "cpu"), ("VIDX_DTYPE", "f32")]);
    assert_eq!(
        (&cpu["device"], &cpu["dtype"]),
        (&"cpu".into(), &"f32".into())
    );
}

#[test]
fn ask_runs_on_the_cpu_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let clip = ffmpeg_clip(dir.path());
    let model = fixture_model();
    let output = vidx(
        &[
            "ask",
            clip.to_str().unwrap(),
            "what is shown?",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--max-new-tokens",
            "4",
            "--max-frames",
            "2",
            "--min-pixels",
            "3136",
            "--max-pixels",
            "12544",
        ],
        &[],
    );
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("2 frames"), "{text}");
}

/// The GPU paths: `auto` picks the GPU, a missing ordinal and hidden GPUs are one-line errors,
/// and with every GPU hidden `auto` runs on the CPU.
#[cfg(feature = "cuda")]
#[test]
fn a_cuda_build_uses_the_gpu_and_refuses_a_missing_one() {
    let visible = vidx_model::device::visible_gpus();
    if visible == 0 {
        eprintln!("skipped: no GPU visible to this CUDA build (the CPU paths ran above)");
        return;
    }
    let on_gpu = index_model_record(&["--device", "auto"], &[]);
    assert_eq!(
        (&on_gpu["device"], &on_gpu["dtype"]),
        (&"cuda:0".into(), &"bf16".into())
    );
    let f32_gpu = index_model_record(&["--device", "cuda:0", "--dtype", "f32"], &[]);
    assert_eq!(
        (&f32_gpu["device"], &f32_gpu["dtype"]),
        (&"cuda:0".into(), &"f32".into())
    );

    let corpus = tempfile::tempdir().unwrap();
    let missing = format!("cuda:{visible}");
    for command in model_commands(corpus.path()) {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.extend(["--device", &missing]);
        let output = vidx(&args, &[]);
        assert_one_line_device_error(
            &output,
            &format!("{missing}: no such GPU; {visible} visible"),
        );

        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.extend(["--device", "cuda:0"]);
        let output = vidx(&args, &[("CUDA_VISIBLE_DEVICES", "")]);
        assert_one_line_device_error(&output, "cuda:0: no such GPU; 0 visible");
    }
    let hidden = index_model_record(&["--device", "auto"], &[("CUDA_VISIBLE_DEVICES", "")]);
    assert_eq!(
        (&hidden["device"], &hidden["dtype"]),
        (&"cpu".into(), &"f32".into())
    );
}
