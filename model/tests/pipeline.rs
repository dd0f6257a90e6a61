//! End-to-end checks of the worker-facing API on the `tiny-realvocab` fixture (real Qwen2.5
//! tokenizer, random tiny weights): prompt ids, greedy answers, and that several questions over
//! the same frames run the vision tower once and reuse the prefilled prefix.
//!
//! The model runs in f32 on `VIDX_TEST_DEVICE` (default the CPU; `cuda:0` on a GPU machine in
//! a CUDA build; skipped with a printed reason where that is absent): the exact greedy tokens
//! asserted here are f32 claims (reference margins above 6), bf16 is covered stage by stage
//! in `qwen_reference.rs`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use vidx_model::generation::{FinishReason, GenerationParams};
use vidx_model::loading::{self, HubOptions};
use vidx_model::prompt::OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT;
use vidx_model::{Error, LoadOptions, OpenO3Video, RgbImage, TimedFrame};

/// f32 load options on the test device, or `None` (skip, reason printed).
fn options(test: &str) -> Result<Option<LoadOptions>> {
    Ok(common::test_device(test)?.map(|(kind, _)| common::load_options(kind, DType::F32)))
}

fn realvocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn fixture_frames(fixture: &std::collections::HashMap<String, Tensor>) -> Result<Vec<TimedFrame>> {
    let frames = fixture.get("img.frames_u8").context("img.frames_u8")?;
    let (n, h, w, _) = frames.dims4()?;
    (0..n)
        .map(|i| {
            let data = frames.i(i)?.flatten_all()?.to_vec1::<u8>()?;
            Ok(TimedFrame {
                image: RgbImage::new(w, h, data)?,
                timestamp_seconds: i as f64 / 2.0,
            })
        })
        .collect()
}

/// Frames resized one by one as they are decoded encode exactly as the model resizing them
/// itself, extreme aspect ratios included (where resizing twice would shrink them again).
#[test]
fn frames_resized_ahead_encode_like_frames_resized_by_the_model() -> Result<()> {
    let Some(options) = options("frames_resized_ahead_encode_like_frames_resized_by_the_model")?
    else {
        return Ok(());
    };
    let mut pipeline = OpenO3Video::load(realvocab_dir(), &options)?;
    pipeline.set_pixel_bounds(3136, 12544);
    let gradient = |width: usize, height: usize| -> Result<RgbImage> {
        let data = (0..width * height * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        Ok(RgbImage::new(width, height, data)?)
    };
    for (width, height) in [(160, 120), (4000, 57)] {
        let frames = vec![
            TimedFrame {
                image: gradient(width, height)?,
                timestamp_seconds: 0.0,
            },
            TimedFrame {
                image: gradient(width, height)?,
                timestamp_seconds: 1.0,
            },
        ];
        let resized: Vec<TimedFrame> = frames
            .iter()
            .map(|frame| {
                Ok(TimedFrame {
                    image: pipeline.processor().resize(&frame.image)?,
                    timestamp_seconds: frame.timestamp_seconds,
                })
            })
            .collect::<Result<_>>()?;
        let direct = pipeline.encode_frames(&frames)?;
        let ahead = pipeline.encode_resized_frames(&resized)?;
        assert_eq!(direct.grids(), ahead.grids(), "{width}x{height}");
        let difference = (direct.embeds() - ahead.embeds())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(difference, 0.0, "{width}x{height}");
    }
    Ok(())
}

#[test]
fn questions_share_one_vision_pass_and_the_prefix() -> Result<()> {
    let Some(options) = options("questions_share_one_vision_pass_and_the_prefix")? else {
        return Ok(());
    };
    let dir = realvocab_dir();
    let pipeline = OpenO3Video::load(&dir, &options)?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let frames = fixture_frames(&fixture)?;
    let question = "Question: What happens in the video?";

    let encoded = pipeline.encode_frames(&frames)?;
    assert_eq!(pipeline.model().vision_calls(), 1);
    let prompt =
        pipeline.prompt_ids(&encoded, OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT, 2.0, question)?;
    let want: Vec<i64> = fixture["img.input_ids"]
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(
        prompt.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
        want
    );

    let prefix = pipeline.prefill(&encoded, OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT, 2.0)?;
    let params = GenerationParams {
        max_new_tokens: 8,
        ..Default::default()
    };
    let mut streamed = String::new();
    let first = pipeline.ask(&prefix, question, &params, &mut |delta| {
        streamed.push_str(delta);
        true
    })?;
    let second = pipeline.ask(
        &prefix,
        "Question: Where is the red box?",
        &params,
        &mut |_| true,
    )?;
    let again = pipeline.ask(&prefix, question, &params, &mut |_| true)?;
    assert_eq!(
        pipeline.model().vision_calls(),
        1,
        "the vision tower ran again"
    );
    assert_eq!(first.reused_prefix_tokens, prefix.ids().len());
    assert_eq!(second.reused_prefix_tokens, prefix.ids().len());
    assert_eq!(first.prompt_tokens, prompt.len());
    assert_eq!(first, again);
    assert_eq!(streamed, first.text);

    // Greedy tokens of the reference (margins above 6, so robust to f32 noise).
    let want_tokens: Vec<i64> = fixture["img.gen.tokens"].to_vec1()?;
    assert_eq!(
        first
            .tokens
            .iter()
            .map(|&v| i64::from(v))
            .collect::<Vec<_>>(),
        want_tokens
    );
    assert_eq!(first.finish, FinishReason::Length);

    // A question whose first characters merge with the prefix's last token: the cache is cut
    // back to the common part and the answer still equals a fresh computation.
    let merged = "\nQuestion: What happens in the video?";
    let partial = pipeline.ask(&prefix, merged, &params, &mut |_| true)?;
    assert!(partial.reused_prefix_tokens < prefix.ids().len());
    let fresh_merged = pipeline.ask_all(
        &frames,
        OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT,
        2.0,
        &[merged],
        &params,
    )?;
    assert_eq!(fresh_merged[0].tokens, partial.tokens);
    assert_eq!(pipeline.model().vision_calls(), 2);

    // Answering through the shared prefix equals answering from a fresh pipeline call.
    let fresh = pipeline.ask_all(
        &frames,
        OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT,
        2.0,
        &[question],
        &params,
    )?;
    assert_eq!(fresh[0].tokens, first.tokens);
    assert_eq!(pipeline.model().vision_calls(), 3);
    Ok(())
}

#[test]
fn streaming_callback_can_stop_generation() -> Result<()> {
    let Some(options) = options("streaming_callback_can_stop_generation")? else {
        return Ok(());
    };
    let dir = realvocab_dir();
    let pipeline = OpenO3Video::load(&dir, &options)?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let encoded = pipeline.encode_frames(&fixture_frames(&fixture)?)?;
    let prefix = pipeline.prefill(&encoded, OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT, 2.0)?;
    let params = GenerationParams {
        max_new_tokens: 8,
        temperature: 0.7,
        top_p: 0.9,
        ..Default::default()
    };
    let mut calls = 0;
    let answer = pipeline.ask(&prefix, "Question: Anything?", &params, &mut |_| {
        calls += 1;
        calls < 2
    })?;
    assert_eq!(answer.finish, FinishReason::Cancelled);
    assert_eq!(calls, 2);
    // The random tiny model greedily emits "\n" (198): making it a stop id ends at once.
    let params = GenerationParams {
        max_new_tokens: 8,
        stop_token_ids: vec![198],
        ..Default::default()
    };
    let answer = pipeline.ask(&prefix, "Question: Anything?", &params, &mut |_| true)?;
    assert_eq!(answer.finish, FinishReason::Stop);
    assert!(answer.tokens.is_empty());
    Ok(())
}

#[test]
fn hub_download_without_network_fails_fast_with_a_typed_error() {
    let cache = std::env::temp_dir().join(format!("vidx-hub-cache-{}", std::process::id()));
    let options = |endpoint: Option<&str>| HubOptions {
        endpoint: endpoint.map(str::to_string),
        cache_dir: Some(cache.clone()),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    // The default endpoint: this sandbox has no network, so this must be an error (where a
    // network exists the repository is large and the test below covers the failure paths).
    if std::env::var_os("VIDX_TEST_HUB_ONLINE").is_none() {
        let err = loading::download("marinero4972/Open-o3-Video", &options(None)).unwrap_err();
        assert!(matches!(err, Error::Hub(_)), "{err}");
    }
    // A refused connection.
    let err = loading::download(
        "marinero4972/Open-o3-Video",
        &options(Some("http://127.0.0.1:9")),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Hub(_)), "{err}");
    // A black-holed address: the connect timeout ends the wait.
    let err = loading::download(
        "marinero4972/Open-o3-Video",
        &options(Some("http://10.255.255.1:81")),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Hub(_)), "{err}");
    // Not an http(s) endpoint.
    let err = loading::download("x/y", &options(Some("ftp://example.invalid"))).unwrap_err();
    assert!(matches!(err, Error::Hub(_)), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn native_video_path_matches_the_reference() -> Result<()> {
    let Some(options) = options("native_video_path_matches_the_reference")? else {
        return Ok(());
    };
    let dir = realvocab_dir();
    let pipeline = OpenO3Video::load(&dir, &options)?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let frames_u8 = fixture.get("vid.frames_u8").context("vid.frames_u8")?;
    let (n, h, w, _) = frames_u8.dims4()?;
    let frames = (0..n)
        .map(|i| {
            Ok(RgbImage::new(
                w,
                h,
                frames_u8.i(i)?.flatten_all()?.to_vec1::<u8>()?,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let video = pipeline.encode_video(&frames, 2.0)?;
    assert_eq!(video.second_per_grid_t(), 1.0);
    let params = GenerationParams {
        max_new_tokens: 8,
        ..Default::default()
    };
    let answer = pipeline.ask_video(
        &video,
        vidx_model::prompt::QWEN_DEFAULT_SYSTEM_PROMPT,
        "Describe this video.",
        &params,
        &mut |_| true,
    )?;
    let want_ids: Vec<i64> = fixture["vid.input_ids"].flatten_all()?.to_vec1()?;
    assert_eq!(answer.prompt_tokens, want_ids.len());
    let want_tokens: Vec<i64> = fixture["vid.gen.tokens"].to_vec1()?;
    assert_eq!(
        answer
            .tokens
            .iter()
            .map(|&v| i64::from(v))
            .collect::<Vec<_>>(),
        want_tokens
    );
    Ok(())
}

#[test]
fn continuing_a_cloned_and_truncated_cache_equals_a_full_prefill() -> Result<()> {
    let Some(options) = options("continuing_a_cloned_and_truncated_cache_equals_a_full_prefill")?
    else {
        return Ok(());
    };
    use vidx_model::model::LogitsMode;
    use vidx_model::rope_index::mrope_position_ids;

    let dir = realvocab_dir();
    let files = vidx_model::ModelFiles::from_dir(&dir)?;
    let model = files.model(&options)?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let ids: Vec<u32> = fixture["img.input_ids"]
        .flatten_all()?
        .to_vec1::<i64>()?
        .iter()
        .map(|&v| v as u32)
        .collect();
    let grids: Vec<[usize; 3]> = fixture["img.image_grid_thw"]
        .to_vec2::<i64>()?
        .iter()
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect();
    let vision = model.encode_vision(&fixture["img.pixel_values"], &grids)?;
    let positions = mrope_position_ids(&ids, &grids, &[], &[], &model.rope_index_params())?;
    let embeds = model.embed(&ids, Some(&vision))?;
    let len = ids.len();

    let mut full_cache = model.new_cache();
    let full = model.forward_embeds(&embeds, &positions, &mut full_cache, LogitsMode::Last)?;

    let (prefix, cut) = (len - 20, len - 30);
    let mut shared = model.new_cache();
    model.forward_embeds(
        &embeds.narrow(1, 0, prefix)?,
        &positions.slice(0, prefix),
        &mut shared,
        LogitsMode::Last,
    )?;
    let mut branch = shared.fork(cut, len)?;
    assert_eq!(branch.len(), cut);
    let continued = model.forward_embeds(
        &embeds.narrow(1, cut, len - cut)?,
        &positions.slice(cut, len),
        &mut branch,
        LogitsMode::Last,
    )?;
    assert_eq!(shared.len(), prefix, "the shared prefix cache was modified");
    let diff = (&full - continued)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-3, "continued logits differ by {diff}");

    // Attention computed in many small query blocks gives the same logits at every position.
    let mut all_cache = model.new_cache();
    let one_block = model.forward_embeds(&embeds, &positions, &mut all_cache, LogitsMode::All)?;
    let mut model = model;
    model.set_attention_block_elements(1000);
    let mut blocked_cache = model.new_cache();
    let blocked = model.forward_embeds(&embeds, &positions, &mut blocked_cache, LogitsMode::All)?;
    let diff = (one_block - blocked)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-3, "blocked attention differs by {diff}");
    Ok(())
}
