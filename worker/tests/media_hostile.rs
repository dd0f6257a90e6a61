//! Hostile input is normal input: empty files, truncated uploads, files that are not video,
//! audio-only files, containers that lie about their length and bad requests each give correct
//! frames or a typed error saying what is wrong and whether retrying could help.

mod common;

use common::{assert_matches_cli, assert_on_targets, h264, testsrc, url};
use vidx_worker::media::{MediaError, SamplingSpec, probe, sample_frames};

fn expect_error(result: Result<impl std::fmt::Debug, MediaError>) -> MediaError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

#[test]
fn zero_byte_file_is_empty() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("empty.mp4");
    std::fs::write(&path, b"")?;
    let error = expect_error(probe(url(&path)));
    assert!(matches!(error, MediaError::Empty { .. }), "{error}");
    assert!(!error.retryable());
    let error = expect_error(sample_frames(url(&path), &SamplingSpec::default()));
    assert!(matches!(error, MediaError::Empty { .. }), "{error}");
    Ok(())
}

#[test]
fn missing_file_is_not_found() {
    let error = expect_error(probe("/nonexistent/dir/video.mp4"));
    assert!(matches!(error, MediaError::NotFound { .. }), "{error}");
    assert!(!error.retryable());
}

#[test]
fn text_and_garbage_are_not_video() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video, just some text\n".repeat(100))?;
    let error = expect_error(probe(url(&text)));
    assert!(
        matches!(error, MediaError::UnrecognizedFormat { .. }),
        "{error}"
    );
    assert!(!error.retryable());
    let garbage = dir.path().join("noise.bin");
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, noise)?;
    let error = expect_error(sample_frames(url(&garbage), &SamplingSpec::default()));
    assert!(!error.retryable(), "{error}");
    Ok(())
}

#[test]
fn audio_only_has_no_video_stream() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tone.m4a");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2",
        "-c:a",
        "aac",
        url(&path),
    ])?;
    let error = expect_error(probe(url(&path)));
    assert!(matches!(error, MediaError::NoVideoStream { .. }), "{error}");
    let error = expect_error(sample_frames(url(&path), &SamplingSpec::default()));
    assert!(matches!(error, MediaError::NoVideoStream { .. }), "{error}");
    assert!(!error.retryable());
    Ok(())
}

#[test]
fn probe_reports_audio_streams_and_keyframes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("av.mp4");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-keyint_min",
        "50",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        url(&path),
    ])?;
    let info = probe(url(&path))?;
    assert!(info.has_audio);
    assert_eq!(info.stream_count, 2);
    assert_eq!(info.codec, "h264");
    assert!(info.container.contains("mp4"), "{}", info.container);
    assert_eq!(info.fps, Some(25.0));
    assert_eq!(info.real_frame_rate, Some(25.0));
    assert!(
        (info.duration_s.unwrap_or(0.0) - 6.0).abs() < 0.1,
        "{:?}",
        info.duration_s
    );
    assert_eq!(info.keyframe_interval_s, Some(2.0));
    let webm = testsrc(
        dir.path(),
        "v.webm",
        "320x240",
        25,
        6.0,
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "50",
        ],
    )?;
    let info = probe(url(&webm))?;
    assert!(!info.has_audio);
    assert_eq!(info.keyframe_interval_s, Some(2.0));
    Ok(())
}

#[test]
fn truncated_uploads_are_typed_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Index at the end (the default): the cut removes it.
    let whole = h264(dir.path(), "whole.mp4", "320x240", 25, 6.0, 25)?;
    let cut = dir.path().join("cut.mp4");
    common::truncate(&whole, &cut, 0.5)?;
    let error = expect_error(sample_frames(url(&cut), &SamplingSpec::default()));
    assert!(matches!(error, MediaError::Truncated { .. }), "{error}");
    assert!(!error.retryable());
    // Index at the start: the index promises samples the file no longer has.
    let faststart = dir.path().join("faststart.mp4");
    common::faststart(&whole, &faststart)?;
    let cut = dir.path().join("cut-faststart.mp4");
    common::truncate(&faststart, &cut, 0.5)?;
    let error = expect_error(sample_frames(url(&cut), &SamplingSpec::default()));
    assert!(matches!(error, MediaError::Truncated { .. }), "{error}");
    Ok(())
}

#[test]
fn lying_duration_gives_the_frames_that_exist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = testsrc(
        dir.path(),
        "liar.mkv",
        "320x240",
        25,
        4.0,
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
    )?;
    common::scale_matroska_duration(&path, 10.0)?;
    let info = probe(url(&path))?;
    assert!(
        info.duration_s.unwrap_or(0.0) > 30.0,
        "{:?}",
        info.duration_s
    );
    let spec = SamplingSpec {
        fps: 1.0,
        max_frames: 100,
        ..SamplingSpec::default()
    };
    let sampled = sample_frames(url(&path), &spec)?;
    assert!(sampled.stats.ended_early);
    let targets: Vec<f64> = sampled.frames.iter().map(|f| f.target_s).collect();
    assert_eq!(targets, vec![0.0, 1.0, 2.0, 3.0]);
    assert_on_targets(&sampled.frames, 0.04)?;
    assert_matches_cli(&path, &sampled.frames[3])?;
    Ok(())
}

#[test]
fn bad_requests_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = h264(dir.path(), "short.mp4", "160x120", 25, 2.0, 25)?;
    let after_end = SamplingSpec {
        start_s: 5.0,
        ..SamplingSpec::default()
    };
    let error = expect_error(sample_frames(url(&path), &after_end));
    assert!(matches!(error, MediaError::InvalidSpec { .. }), "{error}");
    let no_rate = SamplingSpec {
        fps: 0.0,
        ..SamplingSpec::default()
    };
    let error = expect_error(sample_frames(url(&path), &no_rate));
    assert!(matches!(error, MediaError::InvalidSpec { .. }), "{error}");
    let error = expect_error(probe("ftp://example.invalid/video.mp4"));
    assert!(matches!(error, MediaError::InvalidUrl { .. }), "{error}");
    Ok(())
}

#[test]
fn time_budget_stops_work_with_a_retryable_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = h264(dir.path(), "clip.mp4", "160x120", 25, 2.0, 25)?;
    let source = vidx_worker::media::VideoSource::from_url(url(&path))?;
    let options = vidx_worker::media::SampleOptions {
        limits: vidx_worker::media::DecodeLimits {
            time_budget: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..Default::default()
    };
    let error = expect_error(vidx_worker::media::sample_source(
        &source,
        &SamplingSpec::default(),
        &options,
    ));
    assert!(
        matches!(
            error,
            MediaError::BudgetExceeded {
                budget: vidx_worker::media::Budget::Time,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.retryable());
    Ok(())
}
