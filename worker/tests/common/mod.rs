//! Shared helpers of the media integration tests: the test corpus is made at test time with the
//! `ffmpeg` CLI (no checked-in binaries), and reference frames come from `ffmpeg -ss T -i IN
//! -frames:v 1`, the behaviour our sampler has to match.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use vidx_worker::media::Frame;

/// Runs `ffmpeg -hide_banner -loglevel error -nostdin -y ARGS`.
pub fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .context("running ffmpeg (installed by scripts/setup.sh)")?;
    if !output.status.success() {
        bail!(
            "ffmpeg {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Encodes `seconds` of the `testsrc2` pattern at `size` and `rate` into `dir/name` with the
/// given output arguments (codec, GOP, ...).
pub fn testsrc(
    dir: &Path,
    name: &str,
    size: &str,
    rate: u32,
    seconds: f64,
    output_args: &[&str],
) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let source = format!("testsrc2=size={size}:rate={rate}");
    let duration = format!("{seconds}");
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        source.as_str(),
        "-t",
        duration.as_str(),
    ];
    args.extend_from_slice(output_args);
    args.push(path.to_str().context("utf-8 path")?);
    ffmpeg(&args)?;
    Ok(path)
}

/// H.264 in MP4 with a keyframe every `gop` frames.
pub fn h264(
    dir: &Path,
    name: &str,
    size: &str,
    rate: u32,
    seconds: f64,
    gop: u32,
) -> anyhow::Result<PathBuf> {
    let gop = gop.to_string();
    testsrc(
        dir,
        name,
        size,
        rate,
        seconds,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            &gop,
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

/// An upright RGB picture as FFmpeg CLI shows it.
#[derive(Debug, Clone)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Picture {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let at = ((y * self.width + x) * 3) as usize;
        [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]]
    }
}

/// The frame `ffmpeg -ss T -i IN -frames:v 1` shows (rotation applied, as the CLI does).
pub fn reference_frame(path: &Path, t_s: f64) -> anyhow::Result<Picture> {
    let position = format!("{:.6}", t_s.max(0.0));
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-ss",
            &position,
            "-i",
        ])
        .arg(path)
        .args(["-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-"])
        .output()
        .context("running ffmpeg")?;
    if !output.status.success() {
        bail!(
            "ffmpeg reference frame failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_ppm(&output.stdout)
}

/// Parses a binary PPM (P6, maxval 255).
fn parse_ppm(bytes: &[u8]) -> anyhow::Result<Picture> {
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if start == at {
            bail!("short ppm header");
        }
        fields.push(std::str::from_utf8(&bytes[start..at])?.to_owned());
    }
    at += 1;
    if fields[0] != "P6" || fields[3] != "255" {
        bail!("unexpected ppm header {fields:?}");
    }
    let width: u32 = fields[1].parse()?;
    let height: u32 = fields[2].parse()?;
    let rgb = bytes
        .get(at..at + (width * height * 3) as usize)
        .context("short ppm data")?
        .to_vec();
    Ok(Picture { width, height, rgb })
}

/// Peak signal-to-noise ratio of two equally sized RGB24 buffers, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "pictures differ in size");
    let squared: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let mse = squared / a.len() as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Checks `frame` against the CLI's frame at the same presentation time: same size and a PSNR of
/// at least 30 dB. Asks for the frame a millisecond before `t_s`, since the CLI returns the first
/// frame at or after the position.
pub fn assert_matches_cli(path: &Path, frame: &Frame) -> anyhow::Result<f64> {
    let reference = reference_frame(path, frame.t_s - 0.001)?;
    if (reference.width, reference.height) != (frame.width, frame.height) {
        bail!(
            "frame {} at {:.3}s is {}x{}, ffmpeg shows {}x{}",
            frame.index,
            frame.t_s,
            frame.width,
            frame.height,
            reference.width,
            reference.height
        );
    }
    let value = psnr(&frame.rgb, &reference.rgb);
    if value < 30.0 {
        bail!(
            "frame {} at {:.3}s differs from ffmpeg: psnr {value:.1} dB",
            frame.index,
            frame.t_s
        );
    }
    Ok(value)
}

/// Checks that each frame lies at or after its target by less than `tolerance_s`, and that
/// times increase.
pub fn assert_on_targets(frames: &[Frame], tolerance_s: f64) -> anyhow::Result<()> {
    for frame in frames {
        let late = frame.t_s - frame.target_s;
        if !(-1e-6..=tolerance_s + 1e-6).contains(&late) {
            bail!(
                "frame {} at {:.4}s for target {:.4}s",
                frame.index,
                frame.t_s,
                frame.target_s
            );
        }
        if frame.rgb.len() != (frame.width * frame.height * 3) as usize {
            bail!(
                "frame {} has {} bytes for {}x{}",
                frame.index,
                frame.rgb.len(),
                frame.width,
                frame.height
            );
        }
    }
    for pair in frames.windows(2) {
        if pair[1].t_s <= pair[0].t_s {
            bail!(
                "frame times do not increase: {:.4} then {:.4}",
                pair[0].t_s,
                pair[1].t_s
            );
        }
    }
    Ok(())
}

/// Replaces the Matroska `Duration` element (ID 0x4489, 8-byte float) with `factor` times its
/// value: a container that lies about its length.
pub fn scale_matroska_duration(path: &Path, factor: f64) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes
        .windows(3)
        .position(|w| w == [0x44, 0x89, 0x88])
        .context("no 8-byte matroska duration element")?;
    let value_at = at + 3;
    let current = f64::from_be_bytes(bytes[value_at..value_at + 8].try_into()?);
    bytes[value_at..value_at + 8].copy_from_slice(&(current * factor).to_be_bytes());
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Keeps the first `fraction` of the file's bytes: an interrupted upload.
pub fn truncate(from: &Path, to: &Path, fraction: f64) -> anyhow::Result<()> {
    let bytes = std::fs::read(from)?;
    let keep = (bytes.len() as f64 * fraction) as usize;
    std::fs::write(to, &bytes[..keep])?;
    Ok(())
}

/// Rewrites an MP4 with its index (`moov`) before the media data, as streaming uploads are.
pub fn faststart(from: &Path, to: &Path) -> anyhow::Result<()> {
    ffmpeg(&[
        "-i",
        url(from),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        url(to),
    ])
}

/// The path as a `&str` for the APIs that take URLs.
pub fn url(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
