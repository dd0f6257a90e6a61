//! Sampling over a corpus generated with the ffmpeg CLI: frame counts, timestamps within one
//! frame interval of their targets, pixels matching `ffmpeg -ss T -frames:v 1` (PSNR >= 30 dB)
//! across codecs, rotated video upright, odd sizes, variable frame rate, 8K, and decoding only
//! what the targets need.

mod common;

use common::{assert_matches_cli, assert_on_targets, h264, testsrc, url};
use vidx_worker::media::{
    DecodeLimits, MediaError, SampleOptions, SamplingSpec, VideoSource, probe, sample_frames,
    sample_source,
};

fn every_half_second() -> SamplingSpec {
    SamplingSpec {
        fps: 2.0,
        ..SamplingSpec::default()
    }
}

/// Samples 2 fps from a 3 s clip at 25 fps and checks count, timing and pixels.
fn check_codec(name: &str, output_args: &[&str], expected_codec: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = testsrc(dir.path(), name, "320x240", 25, 3.0, output_args)?;
    let info = probe(url(&path))?;
    assert_eq!(info.codec, expected_codec);
    assert_eq!((info.width, info.height), (320, 240));
    let sampled = sample_frames(url(&path), &every_half_second())?;
    let frames = &sampled.frames;
    assert_eq!(frames.len(), 6, "{name}: {frames:?}");
    let targets: Vec<f64> = frames.iter().map(|f| f.target_s).collect();
    assert_eq!(targets, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_on_targets(frames, 1.0 / 25.0)?;
    for frame in frames {
        assert_matches_cli(&path, frame)?;
    }
    Ok(())
}

#[test]
fn h264_frames_match_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "h264.mp4",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ],
        "h264",
    )
}

#[test]
fn h264_with_b_frames_matches_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "h264b.mp4",
        &[
            "-c:v", "libx264", "-preset", "fast", "-bf", "3", "-g", "50", "-pix_fmt", "yuv420p",
        ],
        "h264",
    )
}

#[test]
fn hevc_frames_match_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "hevc.mp4",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:keyint=25",
            "-pix_fmt",
            "yuv420p",
        ],
        "hevc",
    )
}

#[test]
fn vp9_frames_match_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "vp9.webm",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "25",
            "-b:v",
            "500k",
        ],
        "vp9",
    )
}

#[test]
fn av1_frames_match_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "av1.mkv",
        &["-c:v", "libsvtav1", "-preset", "12", "-g", "25"],
        "av1",
    )
}

#[test]
fn mpeg4_part2_frames_match_ffmpeg() -> anyhow::Result<()> {
    check_codec(
        "mpeg4.avi",
        &["-c:v", "mpeg4", "-q:v", "3", "-g", "25"],
        "mpeg4",
    )
}

#[test]
fn linspace_over_the_cap_and_segments() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = h264(dir.path(), "long.mp4", "160x120", 25, 40.0, 50)?;
    let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
    assert_eq!(sampled.frames.len(), 16);
    let step = (40.0 - 0.04) / 15.0;
    for (i, frame) in sampled.frames.iter().enumerate() {
        assert!((frame.target_s - i as f64 * step).abs() < 1e-9);
    }
    assert_on_targets(&sampled.frames, 0.04)?;
    for frame in [&sampled.frames[3], &sampled.frames[15]] {
        assert_matches_cli(&path, frame)?;
    }
    // A segment [10, 14) at 1 fps.
    let spec = SamplingSpec {
        start_s: 10.0,
        end_s: Some(14.0),
        ..SamplingSpec::default()
    };
    let segment = sample_frames(url(&path), &spec)?;
    let targets: Vec<f64> = segment.frames.iter().map(|f| f.target_s).collect();
    assert_eq!(targets, vec![10.0, 11.0, 12.0, 13.0]);
    assert_on_targets(&segment.frames, 0.04)?;
    assert_matches_cli(&path, &segment.frames[2])?;
    Ok(())
}

#[test]
fn sparse_targets_decode_only_around_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 60 s at 25 fps = 1500 frames, keyframe every 2 s.
    let path = h264(dir.path(), "gop2.mp4", "160x120", 25, 60.0, 50)?;
    let spec = SamplingSpec {
        fps: 1.0,
        max_frames: 6,
        ..SamplingSpec::default()
    };
    let sampled = sample_frames(url(&path), &spec)?;
    assert_eq!(sampled.frames.len(), 6);
    // Each target needs at most one GOP (50 frames) plus the decoder's pipeline delay.
    let budget = 6 * (50 + 16);
    assert!(
        sampled.stats.frames_decoded <= budget,
        "decoded {} frames for 6 targets",
        sampled.stats.frames_decoded
    );
    assert!(sampled.stats.seeks >= 5, "seeks: {}", sampled.stats.seeks);
    assert_on_targets(&sampled.frames, 0.04)?;
    assert_matches_cli(&path, &sampled.frames[4])?;
    Ok(())
}

#[test]
fn dense_targets_decode_forward_without_seeking() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Keyframes every 10 s: targets every second must not seek back to the same keyframe.
    let path = h264(dir.path(), "gop10.mp4", "160x120", 25, 20.0, 250)?;
    let spec = SamplingSpec {
        fps: 1.0,
        max_frames: 100,
        ..SamplingSpec::default()
    };
    let sampled = sample_frames(url(&path), &spec)?;
    assert_eq!(sampled.frames.len(), 20);
    assert!(sampled.stats.seeks <= 1, "seeks: {}", sampled.stats.seeks);
    assert!(sampled.stats.frames_decoded <= 500 + 16);
    assert_on_targets(&sampled.frames, 0.04)?;
    assert_matches_cli(&path, &sampled.frames[13])?;
    Ok(())
}

/// Encodes `seconds` of a portrait 240x320 blue picture with a red 60x80 block at its top-left,
/// stored through `store_filter` (the inverse of what its display transform will do).
fn marker_clip(path: &std::path::Path, store_filter: &str, seconds: u32) -> anyhow::Result<()> {
    let filter = format!(
        "color=c=blue:s=240x320:r=10,drawbox=x=0:y=0:w=60:h=80:color=red:t=fill,{store_filter}"
    );
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &filter,
        "-t",
        &seconds.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        url(path),
    ])
}

/// Checks that `frame` shows the [`marker_clip`] picture upright: 240x320, red block top-left,
/// blue in the other corners.
fn assert_marker_top_left(frame: &vidx_worker::media::Frame, label: &str) {
    assert_eq!((frame.width, frame.height), (240, 320), "{label}");
    let pixel = |x: u32, y: u32| {
        let at = ((y * frame.width + x) * 3) as usize;
        [frame.rgb[at], frame.rgb[at + 1], frame.rgb[at + 2]]
    };
    let red = |p: [u8; 3]| p[0] > 200 && p[1] < 60 && p[2] < 60;
    let blue = |p: [u8; 3]| p[2] > 200 && p[0] < 60 && p[1] < 60;
    assert!(
        red(pixel(10, 10)),
        "{label}: top-left is {:?}",
        pixel(10, 10)
    );
    assert!(
        red(pixel(55, 75)),
        "{label}: block corner is {:?}",
        pixel(55, 75)
    );
    assert!(
        blue(pixel(230, 10)) && blue(pixel(10, 310)) && blue(pixel(230, 310)),
        "{label}: other corners"
    );
}

/// Makes a clip whose upright picture is portrait 240x320 with a red block top-left, stored
/// turned the other way and tagged so that players turn it back by `rotation` clockwise.
fn rotated_clip(dir: &std::path::Path, rotation: u32) -> anyhow::Result<std::path::PathBuf> {
    // Undo the display rotation when storing: a clockwise display turn needs the picture stored
    // turned counter-clockwise.
    let (store_filter, tag) = match rotation {
        // FFmpeg 5.1's MOV muxer writes the legacy `rotate` tag as a counter-clockwise angle.
        90 => ("transpose=cclock", "270"),
        180 => ("hflip,vflip", "180"),
        270 => ("transpose=clock", "90"),
        _ => anyhow::bail!("unsupported rotation {rotation}"),
    };
    let stored = dir.join(format!("stored{rotation}.mp4"));
    let tagged = dir.join(format!("rot{rotation}.mp4"));
    marker_clip(&stored, store_filter, 2)?;
    let metadata = format!("rotate={tag}");
    common::ffmpeg(&[
        "-i",
        url(&stored),
        "-c",
        "copy",
        "-metadata:s:v:0",
        &metadata,
        url(&tagged),
    ])?;
    Ok(tagged)
}

#[test]
fn rotated_video_comes_out_upright() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for rotation in [90, 180, 270] {
        let path = rotated_clip(dir.path(), rotation)?;
        let info = probe(url(&path))?;
        assert_eq!(info.rotation, rotation);
        assert_eq!(
            (info.width, info.height),
            (240, 320),
            "displayed size for {rotation}"
        );
        let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
        assert_eq!(sampled.frames.len(), 2);
        let frame = &sampled.frames[1];
        assert_marker_top_left(frame, &format!("rotation {rotation}"));
        assert_matches_cli(&path, frame)?;
    }
    Ok(())
}

/// Writes a display matrix `[a b; c d]` (16.16 fixed point) into the `tkhd` box of an MP4, as
/// cameras and editors that flip video do; FFmpeg 5.1's CLI can only write rotations.
fn set_track_matrix(path: &std::path::Path, a: i32, b: i32, c: i32, d: i32) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes
        .windows(4)
        .position(|window| window == b"tkhd")
        .ok_or_else(|| anyhow::anyhow!("no tkhd box"))?;
    // After the box type: version and flags, times, track id, duration, then 16 more bytes.
    let matrix = at + 4 + if bytes[at + 4] == 1 { 52 } else { 40 };
    let values = [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30];
    for (index, value) in values.iter().enumerate() {
        bytes[matrix + index * 4..matrix + index * 4 + 4].copy_from_slice(&value.to_be_bytes());
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Flipped and transposed display matrices (front cameras, editors' flip tools) come out as a
/// viewer sees them: the upright picture is 240x320 with a red block at its top-left, stored
/// with the inverse transform applied.
#[test]
fn mirrored_display_matrices_come_out_as_displayed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // (name, filter storing the picture, matrix [a b; c d], rotation, mirrored)
    let cases = [
        ("hflip", "hflip", [-1, 0, 0, 1], 0, true),
        ("vflip", "vflip", [1, 0, 0, -1], 180, true),
        ("transpose", "transpose=cclock_flip", [0, 1, 1, 0], 90, true),
        (
            "antitranspose",
            "transpose=clock_flip",
            [0, -1, -1, 0],
            270,
            true,
        ),
    ];
    for (name, store_filter, [a, b, c, d], rotation, mirrored) in cases {
        let path = dir.path().join(format!("{name}.mp4"));
        marker_clip(&path, store_filter, 1)?;
        set_track_matrix(&path, a, b, c, d)?;
        let info = probe(url(&path))?;
        assert_eq!(
            (info.rotation, info.mirrored),
            (rotation, mirrored),
            "{name}"
        );
        assert_eq!((info.width, info.height), (240, 320), "{name}");
        let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
        assert_eq!(
            (sampled.stats.rotation, sampled.stats.mirrored),
            (rotation, mirrored)
        );
        assert_marker_top_left(&sampled.frames[0], name);
    }
    Ok(())
}

#[test]
fn odd_dimensions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // testsrc2 rounds its own size to even numbers: scale afterwards.
    let path = testsrc(
        dir.path(),
        "odd.webm",
        "336x188",
        25,
        2.0,
        &[
            "-vf",
            "scale=333:187",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-pix_fmt",
            "yuv420p",
        ],
    )?;
    let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
    assert_eq!(sampled.frames.len(), 2);
    assert_eq!(
        (sampled.frames[0].width, sampled.frames[0].height),
        (333, 187)
    );
    assert_matches_cli(&path, &sampled.frames[1])?;
    let path = testsrc(
        dir.path(),
        "odd444.mp4",
        "320x240",
        25,
        2.0,
        &[
            "-vf",
            "scale=321:241",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv444p",
        ],
    )?;
    let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
    assert_eq!(
        (sampled.frames[0].width, sampled.frames[0].height),
        (321, 241)
    );
    assert_matches_cli(&path, &sampled.frames[0])?;
    Ok(())
}

#[test]
fn variable_frame_rate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 30 fps for the first second, then every third frame (10 fps).
    let path = testsrc(
        dir.path(),
        "vfr.mp4",
        "320x240",
        30,
        4.0,
        &[
            "-vf",
            "select='lt(t\\,1)+not(mod(n\\,3))'",
            "-fps_mode",
            "vfr",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    )?;
    let spec = SamplingSpec {
        fps: 4.0,
        ..SamplingSpec::default()
    };
    let sampled = sample_frames(url(&path), &spec)?;
    assert!(
        sampled.frames.len() >= 14,
        "{} frames",
        sampled.frames.len()
    );
    // The widest gap between frames is 0.1 s.
    assert_on_targets(&sampled.frames, 0.1)?;
    for frame in sampled.frames.iter().step_by(3) {
        assert_matches_cli(&path, frame)?;
    }
    Ok(())
}

#[test]
fn single_frame_video() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("one.mp4");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-frames:v",
        "1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        url(&path),
    ])?;
    let sampled = sample_frames(url(&path), &SamplingSpec::default())?;
    assert_eq!(sampled.frames.len(), 1);
    assert_eq!(sampled.frames[0].t_s, 0.0);
    assert_matches_cli(&path, &sampled.frames[0])?;
    Ok(())
}

#[test]
fn eight_k_frames_and_the_pixel_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = testsrc(
        dir.path(),
        "8k.mp4",
        "7680x4320",
        5,
        0.4,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    )?;
    let info = probe(url(&path))?;
    assert_eq!((info.width, info.height), (7680, 4320));
    let source = VideoSource::from_url(url(&path))?;
    let spec = SamplingSpec {
        max_frames: 1,
        ..SamplingSpec::default()
    };
    let sampled = sample_source(&source, &spec, &SampleOptions::default())?;
    assert_eq!(sampled.frames.len(), 1);
    assert_matches_cli(&path, &sampled.frames[0])?;
    let small = SampleOptions {
        limits: DecodeLimits {
            max_pixels: 3840 * 2160,
            ..DecodeLimits::default()
        },
        ..SampleOptions::default()
    };
    let refused = sample_source(&source, &spec, &small);
    assert!(
        matches!(
            refused,
            Err(MediaError::TooLarge {
                width: 7680,
                height: 4320,
                ..
            })
        ),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn decoded_frame_budget_stops_decoding() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = h264(dir.path(), "gop.mp4", "160x120", 25, 8.0, 200)?;
    let source = VideoSource::from_url(url(&path))?;
    let options = SampleOptions {
        limits: DecodeLimits {
            max_decoded_frames: Some(20),
            ..DecodeLimits::default()
        },
        ..SampleOptions::default()
    };
    let result = sample_source(&source, &SamplingSpec::default(), &options);
    match result {
        Err(error @ MediaError::BudgetExceeded { .. }) => assert!(!error.retryable()),
        other => anyhow::bail!("expected a budget error, got {other:?}"),
    }
    Ok(())
}

/// Most HD video is BT.709 and many phones record full range: read as BT.601 limited range its
/// colours shift (PSNR near 28 dB against the CLI); read with the stream's tags they match.
#[test]
fn bt709_and_full_range_colours_match_ffmpeg() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &[&str]); 2] = [
        (
            "bt709.mp4",
            &[
                "-vf",
                "scale=out_color_matrix=bt709:out_range=tv",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
                "-pix_fmt",
                "yuv420p",
            ],
        ),
        (
            "bt709_full.mp4",
            &[
                "-vf",
                "scale=out_color_matrix=bt709:out_range=pc",
                "-c:v",
                "libx265",
                "-x265-params",
                "log-level=error",
                "-colorspace",
                "bt709",
                "-color_range",
                "pc",
                "-pix_fmt",
                "yuv420p",
            ],
        ),
    ];
    for (name, output_args) in cases {
        let path = testsrc(dir.path(), name, "320x240", 25, 1.0, output_args)?;
        let sampled = sample_frames(url(&path), &every_half_second())?;
        for frame in &sampled.frames {
            let psnr = assert_matches_cli(&path, frame)?;
            assert!(psnr >= 45.0, "{name} at {}: PSNR {psnr:.1} dB", frame.t_s);
        }
    }
    Ok(())
}
