//! Sampling with decoders side by side (one per run of targets after its own keyframe) gives
//! exactly the frames one decoder gives, in order, whatever the reorder budget, and stops every
//! decoder when the caller fails or the upload is cut short.

mod common;

use common::{assert_matches_cli, assert_on_targets, testsrc, url};
use vidx_worker::media::{
    DecodeLimits, Frame, MediaError, SampleOptions, SamplingSpec, VideoSource, sample_source,
    sample_source_with,
};

/// 24 s of 320x240 H.264 with B-frames and a keyframe every 2 s, so 2 fps gives 12 runs.
fn b_frame_clip(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    testsrc(
        dir,
        "gop2_bframes.mp4",
        "320x240",
        25,
        24.0,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-bf",
            "3",
            "-g",
            "50",
            "-keyint_min",
            "50",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

fn options(threads: usize, reorder_bytes: u64) -> SampleOptions {
    SampleOptions {
        limits: DecodeLimits {
            threads,
            reorder_bytes,
            ..DecodeLimits::default()
        },
        ..SampleOptions::default()
    }
}

fn spec() -> SamplingSpec {
    SamplingSpec {
        fps: 2.0,
        max_frames: 100,
        ..SamplingSpec::default()
    }
}

fn summary(frames: &[Frame]) -> Vec<(usize, f64, f64)> {
    frames
        .iter()
        .map(|frame| (frame.index, frame.t_s, frame.target_s))
        .collect()
}

#[test]
fn side_by_side_decoders_give_the_frames_one_decoder_gives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = b_frame_clip(dir.path())?;
    let source = VideoSource::from_url(url(&path))?;
    let one = sample_source(&source, &spec(), &options(1, 256 << 20))?;
    assert_eq!(one.stats.decoders, 1);
    assert_eq!(one.frames.len(), 48);
    for threads in [2, 3, 5] {
        let many = sample_source(&source, &spec(), &options(threads, 256 << 20))?;
        assert_eq!(many.stats.decoders, threads, "threads {threads}");
        assert_eq!(summary(&many.frames), summary(&one.frames));
        for (a, b) in many.frames.iter().zip(&one.frames) {
            assert!(
                a.rgb == b.rgb,
                "frame {} differs with {threads} threads",
                a.index
            );
        }
        assert_eq!(many.stats.frames_kept, 48);
    }
    assert_on_targets(&one.frames, 0.04)?;
    assert_matches_cli(&path, &one.frames[31])?;
    Ok(())
}

#[test]
fn a_reorder_budget_of_one_frame_still_delivers_everything_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = b_frame_clip(dir.path())?;
    let source = VideoSource::from_url(url(&path))?;
    let sampled = sample_source(&source, &spec(), &options(4, 1))?;
    assert_eq!(sampled.stats.decoders, 4);
    assert_eq!(sampled.frames.len(), 48);
    let indexes: Vec<usize> = sampled.frames.iter().map(|frame| frame.index).collect();
    assert_eq!(indexes, (0..48).collect::<Vec<_>>());
    assert_on_targets(&sampled.frames, 0.04)?;
    Ok(())
}

#[test]
fn an_error_from_the_caller_stops_every_decoder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = b_frame_clip(dir.path())?;
    let source = VideoSource::from_url(url(&path))?;
    let mut seen = 0;
    let result = sample_source_with(&source, &spec(), &options(3, 256 << 20), |_frame| {
        seen += 1;
        if seen == 5 {
            return Err(MediaError::Stopped {
                uri: "test".into(),
                reason: "caller gave up".into(),
            });
        }
        Ok(())
    });
    let error = result.expect_err("the caller's error comes back");
    assert!(error.to_string().contains("caller gave up"), "{error}");
    assert_eq!(seen, 5);
    Ok(())
}

/// A bug in the caller's handler panics through sampling; the decoders are stopped rather than
/// left waiting for a consumer that is gone (which would hang the job).
#[test]
fn a_panicking_handler_stops_every_decoder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = b_frame_clip(dir.path())?;
    let source = VideoSource::from_url(url(&path))?;
    // A one-byte budget makes the decoders ahead wait on the consumer.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = sample_source_with(&source, &spec(), &options(3, 1), |frame| {
            assert!(frame.index < 2, "handler bug");
            Ok(())
        });
    }));
    assert!(outcome.is_err(), "the panic comes back to the caller");
    Ok(())
}

#[test]
fn a_cut_upload_is_truncated_with_decoders_side_by_side() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let whole = b_frame_clip(dir.path())?;
    let faststart = dir.path().join("faststart.mp4");
    common::faststart(&whole, &faststart)?;
    let cut = dir.path().join("cut.mp4");
    common::truncate(&faststart, &cut, 0.6)?;
    let source = VideoSource::from_url(url(&cut))?;
    let mut delivered = Vec::new();
    let error = sample_source_with(&source, &spec(), &options(3, 256 << 20), |frame| {
        delivered.push(frame.t_s);
        Ok(())
    })
    .expect_err("a cut upload is an error");
    assert!(matches!(error, MediaError::Truncated { .. }), "{error}");
    // What was handed over before the cut was in order and from its start.
    assert!(delivered.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(delivered.first().is_none_or(|t| *t < 0.1));
    Ok(())
}
