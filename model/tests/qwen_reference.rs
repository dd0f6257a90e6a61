//! Stage-by-stage comparison of the candle Qwen2.5-VL against reference fixtures produced by
//! `make_qwen_fixture.py` (HF transformers, f32, CPU).
//!
//! Fixture directories come from `VIDX_QWEN_FIXTURES` (colon-separated), or default to every
//! directory under `<repo>/../shared/fixtures/qwen2_5_vl/`. A listed directory that is missing
//! or holds no case fails the test.
//!
//! The model runs on `VIDX_TEST_DEVICE` (default the CPU; `cuda:0` in a CUDA build on a GPU
//! machine, skipped with a printed reason where that is absent), once in f32 and once in bf16,
//! against the same f32 references.
//!
//! Tolerances: integer stages (grids, rotary ids, window index, cu_seqlens, position ids,
//! prompt ids) must be exact; pixel values within 1e-6 (same f32 arithmetic as the reference);
//! resized u8 pixels within 1 level (torchvision uses fixed-point weights); float activations
//! and logits within `tol * max(1, max|reference|)` with `tol` 1e-4 in f32 and 6e-2 in bf16
//! (why: `common::F32_REL_TOL`, `common::BF16_REL_TOL`). The argmax of each logits row must
//! agree wherever the reference's top-1/top-2 margin exceeds ten times that tolerance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use vidx_model::model::LogitsMode;
use vidx_model::processor::{PixelValues, Processor};
use vidx_model::prompt::{self, QwenTokenizer};
use vidx_model::rope_index::{PositionIds, mrope_position_ids};
use vidx_model::text::TextTrace;
use vidx_model::vision::{VisionLayout, VisionTrace};
use vidx_model::{
    Config, KvCache, Model, PreprocessorConfig, RgbImage, resize_rgb_bicubic, smart_resize,
};

mod common;

use common::{Report, tolerance};

fn fixture_dirs() -> Result<Vec<PathBuf>> {
    if let Ok(list) = std::env::var("VIDX_QWEN_FIXTURES") {
        let dirs: Vec<PathBuf> = list
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        if dirs.is_empty() {
            bail!("VIDX_QWEN_FIXTURES is set but lists no directory");
        }
        return Ok(dirs);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/qwen2_5_vl");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("default fixture root {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no fixture directory under {}", root.display());
    }
    Ok(dirs)
}

fn ints(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?)
}

fn frames_from(t: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, h, w, c) = t.dims4()?;
    if c != 3 {
        bail!("frames with {c} channels");
    }
    (0..n)
        .map(|i| {
            Ok(RgbImage::new(
                w,
                h,
                t.i(i)?.flatten_all()?.to_vec1::<u8>()?,
            )?)
        })
        .collect()
}

fn grids_from(t: &Tensor) -> Result<Vec<[usize; 3]>> {
    let rows: Vec<Vec<i64>> = t.to_dtype(DType::I64)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|r| [r[0] as usize, r[1] as usize, r[2] as usize])
        .collect())
}

struct Fixture {
    dir: PathBuf,
    config: Config,
    model: Model,
    tensors: HashMap<String, Tensor>,
    meta: serde_json::Value,
    cases: serde_json::Value,
    processor: Processor,
}

impl Fixture {
    fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if !dir.is_dir() {
            bail!("fixture directory {} does not exist", dir.display());
        }
        let fixture_path = dir.join("fixture.safetensors");
        if !fixture_path.is_file() {
            bail!("{} holds no fixture.safetensors", dir.display());
        }
        let config = Config::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, device)?
        };
        let model = Model::new(&config, vb)?;
        let tensors = candle_core::safetensors::load(&fixture_path, &Device::Cpu)?;
        if !tensors
            .keys()
            .any(|k| k.starts_with("vid.") || k.starts_with("img."))
        {
            bail!(
                "{} holds no case (no vid.* or img.* tensors)",
                dir.display()
            );
        }
        let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
        let cases = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
        let processor = Processor::new(PreprocessorConfig::from_json(&std::fs::read_to_string(
            dir.join("preprocessor_config.json"),
        )?)?);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            model,
            tensors,
            meta,
            cases,
            processor,
        })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor {name}", self.dir.display()))
    }
}

fn check_case(fx: &Fixture, prefix: &str, report: &mut Report) -> Result<()> {
    let video = prefix == "vid";
    let t = |name: &str| fx.get(&format!("{prefix}.{name}"));
    let model = &fx.model;

    // Preprocessing: normalise + patchify the raw frames.
    let frames = frames_from(t("frames_u8")?)?;
    let pixels: PixelValues = if video {
        fx.processor.preprocess_video(&frames, false)?
    } else {
        fx.processor.preprocess_images(&frames, false)?
    };
    let want_pixels = t(if video {
        "pixel_values_videos"
    } else {
        "pixel_values"
    })?;
    let grids = grids_from(t(if video {
        "video_grid_thw"
    } else {
        "image_grid_thw"
    })?)?;
    let grid_i64 = |g: &[[usize; 3]]| g.iter().flatten().map(|&v| v as i64).collect::<Vec<_>>();
    report.exact("grid_thw", &grid_i64(&pixels.grids), &grid_i64(&grids));
    let pixel_tensor = pixels.to_tensor(&Device::Cpu)?;
    let pixel_diff = (pixel_tensor.clone() - want_pixels)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    report.lines.push(format!(
        "{:<32} max|diff| {pixel_diff:.3e}  tol 1.0e-6",
        "pixel_values"
    ));
    if pixel_diff > 1e-6 {
        report.fail(format!("pixel_values: max abs diff {pixel_diff:e}"));
    }

    // Vision layout.
    let layout = VisionLayout::new(&grids, &fx.config.vision_config)?;
    let rot: Vec<i64> = layout
        .rot_pos_ids
        .iter()
        .flatten()
        .map(|&v| v as i64)
        .collect();
    report.exact("vision.rot_pos_ids", &rot, &ints(t("vision.rot_pos_ids")?)?);
    let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    report.exact(
        "vision.window_index",
        &as_i64(&layout.window_index),
        &ints(t("vision.window_index")?)?,
    );
    report.exact(
        "vision.cu_window_seqlens",
        &as_i64(&layout.cu_window_seqlens),
        &ints(t("vision.cu_window_seqlens")?)?,
    );
    report.exact(
        "vision.cu_seqlens",
        &as_i64(&layout.cu_seqlens),
        &ints(t("vision.cu_seqlens")?)?,
    );

    // Vision tower, fed the reference pixels so each stage is isolated from the previous.
    let mut vtrace = VisionTrace::default();
    let vision_embeds = model.encode_vision_traced(want_pixels, &grids, Some(&mut vtrace))?;
    report.close(
        "vision.patch_embed",
        vtrace.patch_embed.as_ref().context("patch_embed")?,
        t("vision.patch_embed")?,
    )?;
    for (i, out) in vtrace.block_out.iter().enumerate() {
        report.close(
            &format!("vision.block_out.{i}"),
            out,
            t(&format!("vision.block_out.{i}"))?,
        )?;
    }
    report.close(
        "vision.merger_out_window",
        vtrace.merger_out_window.as_ref().context("merger")?,
        t("vision.merger_out_window")?,
    )?;
    report.close("vision.embeds", &vision_embeds, t("vision.embeds")?)?;

    // M-RoPE positions from the ids and grids.
    let ids: Vec<u32> = ints(t("input_ids")?)?.iter().map(|&v| v as u32).collect();
    let spgt: Vec<f32> = if video {
        t("second_per_grid_ts")?.to_vec1()?
    } else {
        Vec::new()
    };
    let (image_grids, video_grids) = if video {
        (vec![], grids.clone())
    } else {
        (grids.clone(), vec![])
    };
    let positions = mrope_position_ids(
        &ids,
        &image_grids,
        &video_grids,
        &spgt,
        &model.rope_index_params(),
    )?;
    let pos_flat: Vec<i64> = positions.rows.iter().flatten().copied().collect();
    report.exact("position_ids", &pos_flat, &ints(t("position_ids")?)?);
    report.exact(
        "rope_deltas",
        &[positions.rope_delta],
        &ints(t("rope_deltas")?)?,
    );

    // Decoder over the prompt with our own vision embeddings.
    let embeds = model.embed(&ids, Some(&vision_embeds))?;
    report.close("text.inputs_embeds", &embeds, t("text.inputs_embeds")?)?;
    let mut cache = model.new_cache();
    let mut ttrace = TextTrace::default();
    let logits = model.forward_embeds_traced(
        &embeds,
        &positions,
        &mut cache,
        LogitsMode::All,
        &mut ttrace,
    )?;
    for (i, out) in ttrace.layer_out.iter().enumerate() {
        report.close(
            &format!("text.layer_out.{i}"),
            out,
            t(&format!("text.layer_out.{i}"))?,
        )?;
    }
    report.close(
        "text.final_norm",
        ttrace.final_norm.as_ref().context("final norm")?,
        t("text.final_norm")?,
    )?;
    let len = ids.len();
    if let Ok(want) = t("logits") {
        let tol = report.close("logits", &logits, want)?;
        report.argmax(
            "logits (argmax)",
            &logits.squeeze(0)?,
            &want.squeeze(0)?,
            tol,
        )?;
    }
    let last = logits.i((.., len - 1, ..))?;
    report.close("logits_last", &last, t("logits_last")?)?;

    // Teacher-forced decoding: feed the reference tokens, compare every step's logits.
    let tokens = ints(t("gen.tokens")?)?;
    let want_positions = ints(t("gen.positions")?)?;
    let mut step_logits = vec![last.squeeze(0)?];
    let mut fed_positions = vec![-1i64];
    let mut decode_cache: KvCache = cache.fork(len, len + tokens.len())?;
    for k in 1..tokens.len() {
        let position = len as i64 + (k as i64 - 1) + positions.rope_delta;
        fed_positions.push(position);
        let e = model.embed(&[tokens[k - 1] as u32], None)?;
        let l = model.forward_embeds(
            &e,
            &PositionIds::text(position, 1),
            &mut decode_cache,
            LogitsMode::Last,
        )?;
        step_logits.push(l.squeeze(0)?.squeeze(0)?);
    }
    report.exact("gen.positions", &fed_positions, &want_positions);
    let step_logits = Tensor::stack(&step_logits, 0)?;
    if let Ok(want) = t("gen.logits") {
        let tol = report.close("gen.logits (teacher-forced)", &step_logits, want)?;
        report.argmax("gen.logits (argmax)", &step_logits, want, tol)?;
    } else {
        let values = t("gen.top10_values")?;
        let indices = t("gen.top10_indices")?.to_dtype(DType::U32)?;
        let gathered = step_logits
            .contiguous()?
            .gather(&indices.to_device(step_logits.device())?.contiguous()?, 1)?;
        let tol = report.close("gen.top10 logits (teacher-forced)", &gathered, values)?;
        let want_top: Vec<i64> = ints(&indices.i((.., 0))?)?;
        let got_top: Vec<i64> = step_logits
            .to_vec2::<f32>()?
            .iter()
            .map(|r| i64::from(vidx_model::generation::argmax(r)))
            .collect();
        let margins: Vec<f32> = (values.i((.., 0))? - values.i((.., 1))?)?.to_vec1()?;
        for (i, m) in margins.iter().enumerate() {
            if *m > 10.0 * tol && got_top[i] != want_top[i] {
                report.fail(format!(
                    "gen step {i}: argmax {} vs reference {}",
                    got_top[i], want_top[i]
                ));
            }
        }
    }
    Ok(())
}

/// The resize + odd-frame video case (`pre_resize.*`).
fn check_pre_resize(fx: &Fixture, report: &mut Report) -> Result<()> {
    let Ok(raw) = fx.get("pre_resize.frames_u8") else {
        return Ok(());
    };
    let frames = frames_from(raw)?;
    let want = fx.get("pre_resize.resized_u8")?; // [T, 3, H, W]
    let (_, _, h, w) = want.dims4()?;
    let (th, tw) = fx
        .processor
        .target_size(frames[0].height, frames[0].width)?;
    report.exact(
        "pre_resize.smart_resize",
        &[th as i64, tw as i64],
        &[h as i64, w as i64],
    );
    let mut worst = 0i32;
    let (mut off, mut total) = (0usize, 0usize);
    let mut resized_reference = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let got = resize_rgb_bicubic(&frame.data, frame.width, frame.height, w, h)?;
        let reference: Vec<u8> = want.i(i)?.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
        for (a, b) in got.iter().zip(&reference) {
            let d = (i32::from(*a) - i32::from(*b)).abs();
            worst = worst.max(d);
            off += usize::from(d != 0);
        }
        total += got.len();
        resized_reference.push(RgbImage::new(w, h, reference)?);
    }
    report.lines.push(format!(
        "{:<32} max|diff| {worst} level(s)  tol 1  ({off}/{total} values differ)",
        "pre_resize.resized_u8"
    ));
    if worst > 1 {
        report.fail(format!("pre_resize.resized_u8: off by {worst} levels"));
    }
    let pixels = fx.processor.preprocess_video(&resized_reference, false)?;
    let grid_i64: Vec<i64> = pixels.grids.iter().flatten().map(|&v| v as i64).collect();
    report.exact(
        "pre_resize.video_grid_thw",
        &grid_i64,
        &ints(fx.get("pre_resize.video_grid_thw")?)?,
    );
    let diff = (pixels.to_tensor(&Device::Cpu)? - fx.get("pre_resize.pixel_values_videos")?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    report.lines.push(format!(
        "{:<32} max|diff| {diff:.3e}  tol 1.0e-6",
        "pre_resize.pixel_values"
    ));
    if diff > 1e-6 {
        report.fail(format!("pre_resize.pixel_values: max abs diff {diff:e}"));
    }
    Ok(())
}

/// Pure-function cases: smart_resize and classic get_rope_index.
fn check_cases(fx: &Fixture, report: &mut Report) -> Result<()> {
    let mut resize_checked = 0;
    for case in fx.cases["smart_resize"]
        .as_array()
        .context("smart_resize cases")?
    {
        let n = |k: &str| {
            case[k]
                .as_u64()
                .map(|v| v as usize)
                .context("smart_resize field")
        };
        let got = smart_resize(
            n("h")?,
            n("w")?,
            n("factor")?,
            n("min_pixels")?,
            n("max_pixels")?,
        );
        match (got, case.get("out")) {
            (Ok((h, w)), Some(out))
                if out[0].as_u64() == Some(h as u64) && out[1].as_u64() == Some(w as u64) => {}
            (Err(_), None) => {}
            (got, out) => report.fail(format!(
                "smart_resize {case}: got {got:?}, reference {out:?}"
            )),
        }
        resize_checked += 1;
    }
    report.lines.push(format!(
        "{:<32} {resize_checked} cases",
        "cases.smart_resize"
    ));
    let params = fx.model.rope_index_params();
    let mut rope_checked = 0;
    for case in fx.cases["rope_index"]
        .as_array()
        .context("rope_index cases")?
    {
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone())?;
        let grids = |k: &str| -> Result<Vec<[usize; 3]>> {
            Ok(
                serde_json::from_value::<Option<Vec<[usize; 3]>>>(case[k].clone())?
                    .unwrap_or_default(),
            )
        };
        let spgt: Vec<f32> =
            serde_json::from_value::<Option<Vec<f64>>>(case["second_per_grid_ts"].clone())?
                .unwrap_or_default()
                .iter()
                .map(|&v| v as f32)
                .collect();
        let got = mrope_position_ids(
            &ids,
            &grids("image_grid_thw")?,
            &grids("video_grid_thw")?,
            &spgt,
            &params,
        )?;
        let want: Vec<Vec<i64>> = serde_json::from_value(case["position_ids_classic"].clone())?;
        let delta = case["rope_delta_classic"].as_i64().context("rope delta")?;
        if got.rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>() != want
            || got.rope_delta != delta
        {
            report.fail(format!(
                "rope_index case {}: positions differ",
                case["name"]
            ));
        }
        rope_checked += 1;
    }
    report.lines.push(format!(
        "{:<32} {rope_checked} cases",
        "cases.rope_index (classic)"
    ));
    Ok(())
}

/// With a real tokenizer: rebuild both prompts from text and compare the ids exactly.
fn check_prompts(fx: &Fixture, report: &mut Report) -> Result<()> {
    let path = fx.dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(());
    }
    let tokenizer = QwenTokenizer::from_json_bytes(&std::fs::read(&path)?)?;
    let merge = fx.config.vision_config.spatial_merge_size;
    if let Some(want_text) = fx.meta["case_img"]["token_layout"]["prompt"].as_str() {
        let n = fx.meta["case_img"]["frames_shape"][0]
            .as_u64()
            .context("frames")? as usize;
        let fps = fx.meta["case_img"]["fps"].as_f64().context("fps")?;
        let timestamps: Vec<f64> = (0..n).map(|i| i as f64 / fps).collect();
        let text = prompt::open_o3_prefix(
            prompt::OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT,
            &timestamps,
            n as f64 / fps,
        ) + &prompt::open_o3_suffix("Question: What happens in the video?");
        if text != want_text {
            report.fail(format!(
                "img prompt text differs:\n{text:?}\nvs\n{want_text:?}"
            ));
        }
        let grids = grids_from(fx.get("img.image_grid_thw")?)?;
        let counts: Vec<usize> = grids
            .iter()
            .map(|g| g[0] * g[1] * g[2] / (merge * merge))
            .collect();
        let ids = prompt::expand_placeholders(
            &tokenizer.encode(&text)?,
            fx.config.image_token_id,
            &counts,
        )?;
        let got: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
        report.exact(
            "img.input_ids from text",
            &got,
            &ints(fx.get("img.input_ids")?)?,
        );
    }
    if let Some(want_text) = fx.meta["case_vid"]["token_layout"]["prompt"].as_str() {
        let text = prompt::video_prompt(prompt::QWEN_DEFAULT_SYSTEM_PROMPT, "Describe this video.");
        if text != want_text {
            report.fail(format!(
                "vid prompt text differs:\n{text:?}\nvs\n{want_text:?}"
            ));
        }
        let grids = grids_from(fx.get("vid.video_grid_thw")?)?;
        let counts: Vec<usize> = grids
            .iter()
            .map(|g| g[0] * g[1] * g[2] / (merge * merge))
            .collect();
        let ids = prompt::expand_placeholders(
            &tokenizer.encode(&text)?,
            fx.config.video_token_id,
            &counts,
        )?;
        let got: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
        report.exact(
            "vid.input_ids from text",
            &got,
            &ints(fx.get("vid.input_ids")?)?,
        );
    }
    Ok(())
}

/// Checks every stage of every fixture directory; fails on a missing directory, a directory
/// without a case, or any stage beyond tolerance.
fn run_fixtures(dirs: &[PathBuf], device: &Device, dtype: DType) -> Result<()> {
    let mut failures = Vec::new();
    let tol = tolerance(dtype);
    for dir in dirs {
        let fx = Fixture::load(dir, device, dtype)?;
        let mut cases = 0;
        for prefix in ["vid", "img"] {
            if !fx.tensors.contains_key(&format!("{prefix}.input_ids")) {
                continue;
            }
            cases += 1;
            let mut report = Report::new(
                &format!("{} [{prefix}, {device:?}, {dtype:?}]", dir.display()),
                tol,
            );
            check_case(&fx, prefix, &mut report)?;
            println!("== {}\n{}", report.label, report.lines.join("\n"));
            failures.extend(report.failures);
        }
        if cases == 0 {
            bail!("{} holds no case", dir.display());
        }
        let mut report = Report::new(
            &format!("{} [preprocessing, cases, prompts]", dir.display()),
            tol,
        );
        check_pre_resize(&fx, &mut report)?;
        check_cases(&fx, &mut report)?;
        check_prompts(&fx, &mut report)?;
        println!("== {}\n{}", report.label, report.lines.join("\n"));
        failures.extend(report.failures);
    }
    if !failures.is_empty() {
        bail!(
            "{} stage(s) beyond tolerance:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn qwen_reference() -> Result<()> {
    let Some((_, device)) = common::test_device("qwen_reference")? else {
        return Ok(());
    };
    run_fixtures(&fixture_dirs()?, &device, DType::F32)
}

/// The same stages with the model in bf16 (the GPU default), at the bf16 tolerance; on the
/// CPU this runs the emulated bf16 path (`vidx_model::nn`), so CI covers it without a GPU.
#[test]
fn qwen_reference_bf16() -> Result<()> {
    let Some((_, device)) = common::test_device("qwen_reference_bf16")? else {
        return Ok(());
    };
    run_fixtures(&fixture_dirs()?, &device, DType::BF16)
}

#[test]
fn missing_or_empty_fixture_directories_fail() -> Result<()> {
    let missing = std::env::temp_dir().join(format!("vidx-no-fixture-{}", std::process::id()));
    let cpu = Device::Cpu;
    assert!(run_fixtures(std::slice::from_ref(&missing), &cpu, DType::F32).is_err());
    std::fs::create_dir_all(&missing)?;
    let empty = run_fixtures(std::slice::from_ref(&missing), &cpu, DType::F32);
    std::fs::remove_dir_all(&missing)?;
    assert!(empty.is_err());
    Ok(())
}
