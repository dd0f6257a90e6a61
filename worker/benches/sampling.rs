//! Sampling benchmark against the ffmpeg CLI on the same inputs.
//!
//! Generates (once, cached under `target/bench-videos` or `$VIDX_BENCH_DIR`) a 60 s 1280x720
//! H.264 video with a 2 s keyframe interval, one with a 10 s interval, and a 10-minute 720p one;
//! times sampling 1 fps from the first two and 16 frames spread over the 10-minute one, and
//! `ffmpeg -i IN -vf fps=F -f rawvideo -pix_fmt rgb24 -y /dev/null` with the matching rate.
//! Prints the time ratios, frames decoded per frame kept, the peak resident memory (VmHWM) of
//! each sampling run, each measured in a fresh child process, and how many decoders ran side by
//! side (one per core by default; the CLI uses its frame-threaded decoder).
//!
//! Run: `cargo bench -p vidx-worker --bench sampling` (add `-- --quick` for shorter videos).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use vidx_worker::media::{SampleOptions, SamplingSpec, VideoSource, sample_source_with};

struct Case {
    name: &'static str,
    file: &'static str,
    seconds: u32,
    gop_seconds: u32,
    fps: f64,
    max_frames: usize,
    cli_fps: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "60s gop2s 1fps",
        file: "h264_60s_gop2.mp4",
        seconds: 60,
        gop_seconds: 2,
        fps: 1.0,
        max_frames: 1000,
        cli_fps: "1",
    },
    Case {
        name: "60s gop10s 1fps",
        file: "h264_60s_gop10.mp4",
        seconds: 60,
        gop_seconds: 10,
        fps: 1.0,
        max_frames: 1000,
        cli_fps: "1",
    },
    Case {
        name: "600s gop2s 16 frames",
        file: "h264_600s_gop2.mp4",
        seconds: 600,
        gop_seconds: 2,
        fps: 1.0,
        max_frames: 16,
        cli_fps: "16/600",
    },
];

const RATE: u32 = 25;
/// Runs of each contender per case; the fastest counts.
const REPEATS: usize = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: `sampling --case INDEX PATH` samples once and prints its figures.
    if let Some(at) = args.iter().position(|a| a == "--case") {
        let index: usize = args.get(at + 1).context("case index")?.parse()?;
        let path = args.get(at + 2).context("case path")?;
        return run_case(&CASES[index], path);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let dir = std::env::var_os("VIDX_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-videos"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    println!(
        "{:<24} {:>9} {:>9} {:>7} {:>11} {:>9}",
        "case", "vidx s", "ffmpeg s", "ratio", "dec/kept", "VmHWM MB"
    );
    for (index, case) in CASES.iter().enumerate() {
        let seconds = if quick {
            case.seconds / 6
        } else {
            case.seconds
        };
        let path = generate(&dir, case, seconds, quick)?;
        // Warm the page cache for both contenders.
        std::fs::read(&path)?;
        // The best of a few alternating runs of each contender, as other load comes and goes.
        let (mut ours_s, mut cli_s) = (f64::INFINITY, f64::INFINITY);
        let (mut decoded, mut kept, mut hwm_kb, mut decoders) = (0.0, 0.0, 0.0f64, 0.0);
        for _ in 0..REPEATS {
            let ours = Command::new(std::env::current_exe()?)
                .args([
                    "--case",
                    &index.to_string(),
                    path.to_str().context("utf-8 path")?,
                ])
                .output()?;
            if !ours.status.success() {
                bail!("{}: {}", case.name, String::from_utf8_lossy(&ours.stderr));
            }
            let report = String::from_utf8(ours.stdout)?;
            let fields: Vec<f64> = report
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let [run_s, run_decoded, run_kept, run_hwm_kb, run_decoders] = fields[..] else {
                bail!("bad child report {report}")
            };
            ours_s = ours_s.min(run_s);
            (decoded, kept, hwm_kb, decoders) =
                (run_decoded, run_kept, hwm_kb.max(run_hwm_kb), run_decoders);
            let cli_fps = if quick && case.cli_fps == "16/600" {
                "16/100"
            } else {
                case.cli_fps
            };
            let started = Instant::now();
            let status = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
                .arg(&path)
                .args([
                    "-vf",
                    &format!("fps={cli_fps}"),
                    "-f",
                    "rawvideo",
                    "-pix_fmt",
                    "rgb24",
                ])
                .args(["-y", "/dev/null"])
                .status()?;
            cli_s = cli_s.min(started.elapsed().as_secs_f64());
            if !status.success() {
                bail!("ffmpeg failed on {}", path.display());
            }
        }
        println!(
            "{:<24} {:>9.3} {:>9.3} {:>6.2}x {:>11.1} {:>9.1}   ({} frames kept, {} decoders)",
            case.name,
            ours_s,
            cli_s,
            ours_s / cli_s,
            decoded / kept.max(1.0),
            hwm_kb / 1024.0,
            kept,
            decoders
        );
    }
    Ok(())
}

fn run_case(case: &Case, path: &str) -> anyhow::Result<()> {
    let spec = SamplingSpec {
        fps: case.fps,
        max_frames: case.max_frames,
        ..SamplingSpec::default()
    };
    // Frames are handed over one at a time and dropped, as the worker resizes each one as it
    // comes: the peak memory measured is that of sampling, not of a caller keeping full frames.
    let source = VideoSource::from_url(path)?;
    let started = Instant::now();
    let mut kept = 0usize;
    let stats = sample_source_with(&source, &spec, &SampleOptions::default(), |frame| {
        kept += usize::from(!frame.rgb.is_empty());
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .context("no VmHWM")?
        .parse()?;
    println!(
        "{elapsed} {} {kept} {hwm_kb} {}",
        stats.frames_decoded, stats.decoders
    );
    Ok(())
}

/// Encodes the case's video unless it is already cached. `veryfast` keeps B-frames, as camera
/// and streaming encoders do.
fn generate(dir: &Path, case: &Case, seconds: u32, quick: bool) -> anyhow::Result<PathBuf> {
    let name = if quick {
        format!("quick_{}", case.file)
    } else {
        case.file.to_owned()
    };
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    let partial = path.with_extension("partial.mp4");
    let gop = (case.gop_seconds * RATE).to_string();
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size=1280x720:rate={RATE}"))
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            &gop,
        ])
        .args([
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&partial)
        .status()?;
    if !status.success() {
        bail!("generating {}", path.display());
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}
