//! The vidx side of `scripts/gpu-bench.sh`: a Qwen2.5-VL model with random weights (the real
//! 7B shapes from `benches/data/qwen2_5_vl_7b_config.json`, or a small preset for a CPU run)
//! timed on one device, after one warm-up, median of the repeats, with device
//! synchronisation: the vision tower, vision + prefill (last-position logits only), and
//! batched decoding (EOS ignored) at each batch size, from the same prefilled prompt.
//!
//! `--write-inputs FILE` writes what the transformers side needs to run the same case (config,
//! prompt ids in Open-o3's `Frame i at Xs:` layout, image grids) and exits; `--out FILE`
//! writes the figures as JSON. Built stripped with `--features cuda` it is the one binary to
//! carry to a GPU machine (see the README, "GPU benchmark").

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidx_model::batch::{BatchDecoder, SequenceStart};
use vidx_model::generation::GenerationParams;
use vidx_model::model::LogitsMode;
use vidx_model::prompt::{OPEN_O3_GROUNDED_SYSTEM_PROMPT, open_o3_prefix, open_o3_suffix};
use vidx_model::rope_index::mrope_position_ids;
use vidx_model::{Config, Model};

#[path = "../benches/support/random_weights.rs"]
mod random_weights;
use random_weights::RandomWeights;

const CONFIG_7B: &str = include_str!("../benches/data/qwen2_5_vl_7b_config.json");
const CONFIG_SMALL: &str = include_str!("../benches/data/qwen2_5_vl_small_config.json");
const QUESTION: &str = "Where does the person put the red cup, and when?";

/// One benchmark case.
#[derive(Debug, Clone)]
struct Preset {
    name: String,
    config_json: &'static str,
    frames: usize,
    height: usize,
    width: usize,
    decode_tokens: usize,
    batches: Vec<usize>,
}

impl Preset {
    fn named(name: &str) -> Result<Self> {
        Ok(match name {
            "7b" => Self {
                name: name.into(),
                config_json: CONFIG_7B,
                frames: 16,
                height: 448,
                width: 784,
                decode_tokens: 256,
                batches: vec![1, 8],
            },
            "small" => Self {
                name: name.into(),
                config_json: CONFIG_SMALL,
                frames: 4,
                height: 224,
                width: 448,
                decode_tokens: 16,
                batches: vec![1, 8],
            },
            other => bail!("unknown --preset {other} (7b or small)"),
        })
    }
}

/// Command line, validated.
#[derive(Debug)]
struct Args {
    preset: Preset,
    device: String,
    repeats: usize,
    write_inputs: Option<String>,
    out: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut preset = Preset::named("7b")?;
    let (mut device, mut repeats) = ("cuda:0".to_string(), 3usize);
    let (mut write_inputs, mut out) = (None, None);
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--preset" => preset = Preset::named(&value()?)?,
            "--device" => device = value()?,
            "--repeats" => repeats = value()?.parse().context("--repeats")?,
            "--write-inputs" => write_inputs = Some(value()?),
            "--out" => out = Some(value()?),
            "--frames" | "--height" | "--width" | "--decode-tokens" | "--batches" => {
                overrides.push((flag.clone(), value()?))
            }
            "--help" | "-h" => {
                println!(
                    "gpu_bench [--preset 7b|small] [--device cuda:N|cpu] [--repeats N] [--frames N] \
                     [--height H] [--width W] [--decode-tokens N] [--batches 1,8] \
                     [--write-inputs FILE] [--out FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    for (flag, value) in overrides {
        match flag.as_str() {
            "--frames" => preset.frames = value.parse().context("--frames")?,
            "--height" => preset.height = value.parse().context("--height")?,
            "--width" => preset.width = value.parse().context("--width")?,
            "--decode-tokens" => preset.decode_tokens = value.parse().context("--decode-tokens")?,
            _ => {
                preset.batches = value
                    .split(',')
                    .map(|b| b.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .context("--batches")?
            }
        }
    }
    if preset.frames == 0 || preset.height % 28 != 0 || preset.width % 28 != 0 {
        bail!("frames must be > 0 and height, width multiples of 28");
    }
    if preset.decode_tokens < 3 || preset.batches.contains(&0) || repeats == 0 {
        bail!("--decode-tokens must be at least 3, batches and --repeats at least 1");
    }
    Ok(Args {
        preset,
        device,
        repeats,
        write_inputs,
        out,
    })
}

/// The device `--device` names, through the model crate's own parser and check (the same
/// spellings and one-line errors as `vidx --device`).
fn device_of(name: &str) -> Result<Device> {
    let kind: vidx_model::loading::DeviceKind = name
        .parse()
        .map_err(|error| anyhow::anyhow!("--device {error}"))?;
    kind.device()
        .map_err(|error| anyhow::anyhow!("--device {name}: {error}"))
}

/// A stand-in tokenisation with the real special ids: every run of letters or digits (with
/// its leading space), every other character, one id. Close to BPE's counts for English.
fn pseudo_tokens(text: &str, specials: &[(&str, u32)]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut rest = text;
    let hash = |piece: &str| -> u32 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in piece.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        (h % 151_643) as u32
    };
    while !rest.is_empty() {
        if let Some((token, id)) = specials.iter().find(|(t, _)| rest.starts_with(t)) {
            ids.push(*id);
            rest = &rest[token.len()..];
            continue;
        }
        let mut chars = rest.char_indices();
        let (_, first) = chars.next().unwrap_or((0, ' '));
        let mut end = first.len_utf8();
        if first.is_alphanumeric() || first == ' ' {
            for (i, c) in chars {
                if !c.is_alphanumeric() {
                    break;
                }
                end = i + c.len_utf8();
            }
        }
        ids.push(hash(&rest[..end]));
        rest = &rest[end..];
    }
    ids
}

/// Prompt ids of the case in Open-o3's layout, the image placeholders expanded.
fn prompt_ids(config: &Config, preset: &Preset, tokens_per_frame: usize) -> Vec<u32> {
    let timestamps: Vec<f64> = (0..preset.frames).map(|i| i as f64 * 0.5).collect();
    let text = open_o3_prefix(
        OPEN_O3_GROUNDED_SYSTEM_PROMPT,
        &timestamps,
        preset.frames as f64 * 0.5,
    ) + &open_o3_suffix(QUESTION);
    let specials = [
        ("<|im_start|>", 151_644),
        ("<|im_end|>", 151_645),
        ("<|vision_start|>", config.vision_start_token_id),
        ("<|vision_end|>", 151_653),
        ("<|image_pad|>", config.image_token_id),
    ];
    let mut ids = Vec::new();
    for id in pseudo_tokens(&text, &specials) {
        if id == config.image_token_id {
            ids.extend(std::iter::repeat_n(id, tokens_per_frame));
        } else {
            ids.push(id);
        }
    }
    ids
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    // As the `vidx` binary does: large CPU buffers are reused instead of remapped per op.
    vidx_model::allocator::keep_freed_buffers();
    let args = parse_args()?;
    let preset = &args.preset;
    let config = Config::from_json(preset.config_json)?;
    let (gh, gw) = (preset.height / 14, preset.width / 14);
    let grids = vec![[1usize, gh, gw]; preset.frames];
    let tokens_per_frame = gh * gw / 4;
    let ids = prompt_ids(&config, preset, tokens_per_frame);
    if let Some(path) = &args.write_inputs {
        let inputs = serde_json::json!({
            "preset": preset.name,
            "config": serde_json::from_str::<serde_json::Value>(preset.config_json)?,
            "input_ids": ids,
            "image_grid_thw": grids,
            "decode_tokens": preset.decode_tokens,
            "batches": preset.batches,
            "repeats": args.repeats,
        });
        std::fs::write(path, serde_json::to_string(&inputs)?)
            .with_context(|| format!("writing {path}"))?;
        println!(
            "inputs: {} prompt tokens, {} frames of {}x{}",
            ids.len(),
            preset.frames,
            preset.width,
            preset.height
        );
        return Ok(());
    }
    let device = device_of(&args.device)?;
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let start = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone());
    let model = Model::new(&config, vb)?;
    device.synchronize()?;
    println!(
        "vidx: {} preset, {dtype:?} on {}, built in {:.1}s; {} prompt tokens, {} frames of {}x{}",
        preset.name,
        args.device,
        start.elapsed().as_secs_f64(),
        ids.len(),
        preset.frames,
        preset.width,
        preset.height
    );
    let patches = preset.frames * gh * gw;
    let pixels = Tensor::randn(0f32, 1f32, (patches, 1176), &device)?.to_dtype(dtype)?;
    let positions = mrope_position_ids(&ids, &grids, &[], &[], &model.rope_index_params())?;
    let next_position = ids.len() as i64 + positions.rope_delta;
    let params = GenerationParams {
        max_new_tokens: preset.decode_tokens,
        ..GenerationParams::default()
    };
    let (mut vision, mut prefill) = (Vec::new(), Vec::new());
    let mut decode: Vec<Vec<f64>> = vec![Vec::new(); preset.batches.len()];
    for repeat in 0..=args.repeats {
        let t0 = Instant::now();
        model.encode_vision(&pixels, &grids)?;
        device.synchronize()?;
        let vision_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let embeds = model.encode_vision(&pixels, &grids)?;
        let inputs = model.embed(&ids, Some(&embeds))?;
        let mut cache = model.new_cache_with_capacity(ids.len());
        let logits = model.forward_embeds(&inputs, &positions, &mut cache, LogitsMode::Last)?;
        device.synchronize()?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut rates = Vec::new();
        for &batch in &preset.batches {
            let mut decoder = BatchDecoder::new(&model, batch);
            for id in 0..batch {
                decoder.submit(SequenceStart {
                    id: id as u64,
                    cache: cache.fork(cache.len(), cache.len() + preset.decode_tokens)?,
                    first_logits: logits.clone(),
                    next_position,
                    context: ids.clone(),
                    params: params.clone(),
                })?;
            }
            // The first step admits (copies the caches into slots) and decodes one token.
            decoder.step()?;
            device.synchronize()?;
            let t0 = Instant::now();
            let mut steps = 0usize;
            while !decoder.is_idle() {
                decoder.step()?;
                steps += 1;
            }
            device.synchronize()?;
            rates.push((steps * batch) as f64 / t0.elapsed().as_secs_f64());
        }
        let label = if repeat == 0 {
            "warm-up".to_string()
        } else {
            format!("repeat {repeat}")
        };
        println!(
            "vidx {label}: vision {vision_s:.3}s vision+prefill {prefill_s:.3}s decode {}",
            preset
                .batches
                .iter()
                .zip(&rates)
                .map(|(b, r)| format!("b{b} {r:.1} tok/s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if repeat > 0 {
            vision.push(vision_s);
            prefill.push(prefill_s);
            for (all, rate) in decode.iter_mut().zip(rates) {
                all.push(rate);
            }
        }
    }
    let result = serde_json::json!({
        "side": "vidx",
        "device": args.device,
        "dtype": format!("{dtype:?}").to_lowercase(),
        "prompt_tokens": ids.len(),
        "vision_s": median(&vision),
        "vision_prefill_s": median(&prefill),
        "decode_tokens_per_s": preset.batches.iter().zip(&decode)
            .map(|(b, r)| (b.to_string(), serde_json::json!(median(r))))
            .collect::<serde_json::Map<_, _>>(),
        "peak_host_mib": peak_rss_mib(),
    });
    println!("{result}");
    if let Some(path) = &args.out {
        std::fs::write(path, result.to_string()).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
