//! CPU benchmark of the `medium` preset of `make_qwen_fixture.py` (Qwen2.5-0.5B-like decoder,
//! 8-block vision tower, 16 frames at 224x448, ~1,050 prompt tokens, random weights), followed
//! in the same run by the PyTorch reference (`make_qwen_fixture.py --preset medium
//! --bench-only`) when its virtual environment exists, and the ratios of the two.
//!
//! Both sides run f32 on the CPU with the machine's threads; PyTorch's OpenMP threads slow down
//! sharply when other processes compete for the cores, so compare runs on an idle machine.
//!
//! `cargo bench -p vidx-model --bench medium`. Environment: `VIDX_FIXTURE_PYTHON` (default
//! `<repo>/venv-fixture/bin/python`, made by `scripts/setup-bench-reference.sh`), `VIDX_FIXTURE_SCRIPT` (default
//! `<repo>/../shared/tools/make_qwen_fixture.py`), `VIDX_BENCH_REPEATS` (default 3),
//! `VIDX_BENCH_OPS_ONLY` (set: only the fused-op comparison that otherwise ends the run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidx_model::batch::{BatchDecoder, SequenceStart};
use vidx_model::generation::{GenerationParams, argmax, generate};
use vidx_model::model::LogitsMode;
use vidx_model::processor::Processor;
use vidx_model::rope_index::mrope_position_ids;
use vidx_model::{Model, PreprocessorConfig, RgbImage};

#[path = "support/random_weights.rs"]
mod random_weights;
use random_weights::RandomWeights;
#[path = "support/medium_config.rs"]
mod medium_config;
use medium_config::medium_config;

const SPECIAL_BASE: u32 = 151_643;
const FRAMES: usize = 16;
const HEIGHT: usize = 224;
const WIDTH: usize = 448;
const FPS: f64 = 2.0;
const GEN_TOKENS: usize = 16;
/// Batch sizes of the batched decode figures.
const BATCHES: [usize; 3] = [1, 4, 8];

fn frames() -> Result<Vec<RgbImage>> {
    (0..FRAMES)
        .map(|t| {
            let mut data = Vec::with_capacity(HEIGHT * WIDTH * 3);
            for y in 0..HEIGHT {
                for x in 0..WIDTH {
                    for c in 0..3 {
                        data.push(
                            ((37 * t + 3 * x + 5 * y + 80 * c + 4 * ((x * y + 7 * t) % 17)) % 256)
                                as u8,
                        );
                    }
                }
            }
            Ok(RgbImage::new(WIDTH, HEIGHT, data)?)
        })
        .collect()
}

/// The video prompt of the reference's medium case: chat template around one video.
fn prompt_ids(video_tokens: usize) -> Vec<u32> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut text = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % u64::from(SPECIAL_BASE)) as u32
            })
            .collect()
    };
    let (im_start, im_end) = (SPECIAL_BASE + 1, SPECIAL_BASE + 2);
    let mut ids = vec![im_start];
    ids.extend(text(8));
    ids.extend([im_end]);
    ids.extend(text(1));
    ids.push(im_start);
    ids.extend(text(2));
    ids.push(SPECIAL_BASE + 9);
    ids.extend(std::iter::repeat_n(SPECIAL_BASE + 13, video_tokens));
    ids.push(SPECIAL_BASE + 10);
    ids.extend(text(4));
    ids.push(im_end);
    ids.extend(text(1));
    ids.push(im_start);
    ids.extend(text(2));
    ids
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Figures {
    vision_s: f64,
    prefill_s: f64,
    decode_ms: f64,
    peak_mib: Option<f64>,
    /// `(batch, tokens/s)` of batched greedy decoding from the prefilled prompt.
    batched: Vec<(usize, f64)>,
}

/// Greedy decoding of `GEN_TOKENS` tokens, EOS ignored.
fn greedy_params() -> GenerationParams {
    GenerationParams {
        max_new_tokens: GEN_TOKENS + 1,
        ..GenerationParams::default()
    }
}

/// Tokens/s of `batch` sequences continuing `prefix` together in a [`BatchDecoder`]; the
/// first step (admission, which also decodes a token) is not timed.
fn batched_tokens_per_second(
    model: &Model,
    prefix: &vidx_model::KvCache,
    first_logits: &Tensor,
    next_position: i64,
    context: &[u32],
    batch: usize,
) -> Result<f64> {
    let mut decoder = BatchDecoder::new(model, batch);
    for id in 0..batch {
        decoder.submit(SequenceStart {
            id: id as u64,
            cache: prefix.fork(prefix.len(), prefix.len() + GEN_TOKENS + 1)?,
            first_logits: first_logits.clone(),
            next_position,
            context: context.to_vec(),
            params: greedy_params(),
        })?;
    }
    decoder.step()?;
    let t0 = Instant::now();
    let mut steps = 0;
    while !decoder.is_idle() {
        decoder.step()?;
        steps += 1;
    }
    Ok((steps * batch) as f64 / t0.elapsed().as_secs_f64())
}

fn run_candle(repeats: usize) -> Result<Figures> {
    let device = Device::Cpu;
    let config = medium_config()?;
    let start = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, device.clone());
    let model = Model::new(&config, vb)?;
    println!(
        "candle: model built in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let processor = Processor::new(PreprocessorConfig::default());
    let pixels = processor.preprocess_video(&frames()?, false)?;
    let pixel_tensor = pixels.to_tensor(&device)?;
    let video_tokens = pixels.tokens_per_grid(2)[0];
    let ids = prompt_ids(video_tokens);
    let spgt = [2.0 / FPS as f32];
    let positions =
        mrope_position_ids(&ids, &[], &pixels.grids, &spgt, &model.rope_index_params())?;
    println!(
        "candle: prompt_len {} video_tokens {video_tokens} patches {} grid {:?}",
        ids.len(),
        pixels.rows,
        pixels.grids
    );
    let (mut vision, mut prefill, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_prefill = None;
    for r in 0..repeats {
        let t0 = Instant::now();
        model.encode_vision(&pixel_tensor, &pixels.grids)?;
        vision.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let embeds = model.encode_vision(&pixel_tensor, &pixels.grids)?;
        let inputs = model.embed(&ids, Some(&embeds))?;
        let mut cache = model.new_cache_with_capacity(ids.len() + GEN_TOKENS + 1);
        let logits = model.forward_embeds(&inputs, &positions, &mut cache, LogitsMode::Last)?;
        let _first = argmax(&logits.flatten_all()?.to_vec1()?);
        prefill.push(t0.elapsed().as_secs_f64());
        let prefix = cache.fork(cache.len(), cache.len())?;
        let next_position = ids.len() as i64 + positions.rope_delta;
        let t0 = Instant::now();
        // GEN_TOKENS forward passes (the first token comes from the prefill's logits).
        let generated = generate(
            &model,
            &logits,
            &mut cache,
            next_position,
            &ids,
            &greedy_params(),
            &mut |_| true,
        )?;
        if generated.tokens.len() != GEN_TOKENS + 1 {
            bail!("decoded {} tokens", generated.tokens.len());
        }
        decode.push(t0.elapsed().as_secs_f64() * 1000.0 / GEN_TOKENS as f64);
        last_prefill = Some((prefix, logits, next_position));
        println!(
            "candle repeat {r}: vision {:.2}s prefill(total) {:.2}s decode {:.1} ms/token",
            vision[r], prefill[r], decode[r]
        );
    }
    let peak_mib = peak_rss_mib();
    let (prefix, logits, next_position) = last_prefill.context("no repeat ran")?;
    let mut batched = Vec::new();
    for batch in BATCHES {
        let rate = batched_tokens_per_second(&model, &prefix, &logits, next_position, &ids, batch)?;
        println!("candle batched decode: batch {batch} {rate:.1} tokens/s");
        batched.push((batch, rate));
    }
    Ok(Figures {
        vision_s: median(&vision),
        prefill_s: median(&prefill),
        decode_ms: median(&decode),
        // Before the batched runs: their caches are not part of the single-sequence figure.
        peak_mib,
        batched,
    })
}

fn print_batched(candle: &Figures) {
    let base = candle.batched.first().map(|b| b.1).unwrap_or(f64::NAN);
    for (batch, rate) in &candle.batched {
        println!(
            "batched decode, batch {batch:<2}    {rate:>10.1} tokens/s   {:>6.2}x batch 1",
            rate / base
        );
    }
}

fn run_pytorch(python: &Path, script: &Path, repeats: usize) -> Result<Figures> {
    let out = std::env::temp_dir().join(format!("vidx-bench-medium-{}", std::process::id()));
    let wrapper = "import resource, runpy, sys\n\
                   sys.argv = sys.argv[1:]\n\
                   try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n\
                   finally:\n    print('VIDX_PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n";
    let output = Command::new(python)
        .arg("-c")
        .arg(wrapper)
        .arg(script)
        .args([
            "--preset",
            "medium",
            "--bench-only",
            "--bench-repeats",
            &repeats.to_string(),
            "--out",
        ])
        .arg(&out)
        .output()
        .context("starting the pytorch reference")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!(
            "pytorch reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    let _ = std::fs::remove_dir_all(&out);
    let bench = &meta["bench"];
    let list = |k: &str| -> Result<Vec<f64>> {
        serde_json::from_value(bench[k].clone()).with_context(|| format!("bench field {k}"))
    };
    let peak_mib = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VIDX_PEAK_KIB "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0);
    Ok(Figures {
        vision_s: median(&list("vision_tower_s")?),
        prefill_s: median(&list("prefill_total_s(vision+text, logits_to_keep=1)")?),
        decode_ms: median(&list("decode_ms_per_token")?),
        peak_mib,
        batched: Vec::new(),
    })
}

/// Times `f` (median of `runs` after one warm-up), in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&times))
}

/// The fused ops of `vidx_model::ops` against the candle compositions they replace, at the
/// medium preset's vision and text shapes (ratio = fused / composition).
fn bench_fused_ops() -> Result<()> {
    use vidx_model::ops::{causal_softmax, rms_norm_residual};
    let device = Device::Cpu;
    println!(
        "
fused ops vs candle composition, f32, CPU (median of 20; ratio = fused / composition)"
    );
    for (rows, cols) in [(4096, 320), (1049, 896)] {
        let x = Tensor::randn(0f32, 1.0, (rows, cols), &device)?;
        let r = Tensor::randn(0f32, 1.0, (rows, cols), &device)?;
        let w = Tensor::randn(1f32, 0.1, cols, &device)?;
        let fused = time_ms(20, || {
            rms_norm_residual(&x, &r, &w, 1e-6)?;
            Ok(())
        })?;
        let plain = time_ms(20, || {
            let sum = (&x + &r)?;
            candle_nn::ops::rms_norm(&sum, &w, 1e-6)?;
            Ok(())
        })?;
        println!(
            "rms_norm_residual {rows}x{cols:<6}{fused:>10.3} ms{plain:>10.3} ms{:>8.2}",
            fused / plain
        );
    }
    // One causal prefill block of the text decoder: 14 heads folded onto 2 kv heads.
    let (query_len, keys) = (1049, 1049);
    let scores = Tensor::randn(0f32, 1.0, (1, 2, 7 * query_len, keys), &device)?;
    let fused = time_ms(20, || {
        causal_softmax(&scores, query_len, 0)?;
        Ok(())
    })?;
    let plain = time_ms(20, || {
        let mask: Vec<f32> = (0..query_len)
            .flat_map(|i| (0..keys).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (query_len, keys), &device)?;
        let masked = scores
            .reshape((1, 2, 7, query_len, keys))?
            .broadcast_add(&mask)?
            .reshape((1, 2, 7 * query_len, keys))?;
        candle_nn::ops::softmax_last_dim(&masked)?;
        Ok(())
    })?;
    println!(
        "causal_softmax 14x{query_len}x{keys}{fused:>10.3} ms{plain:>10.3} ms{:>8.2}",
        fused / plain
    );
    Ok(())
}

fn main() -> Result<()> {
    // As the `vidx` binary does: large CPU buffers are reused instead of remapped per op.
    vidx_model::allocator::keep_freed_buffers();
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let repeats: usize = std::env::var("VIDX_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    if std::env::var_os("VIDX_BENCH_OPS_ONLY").is_some() {
        return bench_fused_ops();
    }
    let candle = run_candle(repeats)?;
    let python = std::env::var_os("VIDX_FIXTURE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../venv-fixture/bin/python")
        });
    let script = std::env::var_os("VIDX_FIXTURE_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/make_qwen_fixture.py")
        });
    let fmt_mem = |m: Option<f64>| {
        m.map(|v| format!("{v:.0} MiB"))
            .unwrap_or_else(|| "n/a".into())
    };
    if !python.is_file() || !script.is_file() {
        println!("\nmedium preset, f32, CPU (medians of {repeats} repeats)");
        println!(
            "vision tower        {:.2}s\nvision+prefill      {:.2}s\ndecode              {:.1} ms/token\npeak memory         {}",
            candle.vision_s,
            candle.prefill_s,
            candle.decode_ms,
            fmt_mem(candle.peak_mib)
        );
        print_batched(&candle);
        println!(
            "pytorch reference skipped: {} or {} missing",
            python.display(),
            script.display()
        );
        return bench_fused_ops();
    }
    let torch = run_pytorch(&python, &script, repeats)?;
    let row = |name: &str, c: f64, t: f64, unit: &str| {
        println!(
            "{name:<28}{:>12.2}{unit:<2}{:>12.2}{unit:<2}{:>10.2}",
            c,
            t,
            c / t
        );
    };
    println!("\nmedium preset, f32, CPU (medians of {repeats} repeats; ratio = candle / pytorch)");
    println!("{:<28}{:>14}{:>14}{:>10}", "", "candle", "pytorch", "ratio");
    row("vision tower", candle.vision_s, torch.vision_s, "s");
    row("vision+prefill", candle.prefill_s, torch.prefill_s, "s");
    row("decode (ms/token)", candle.decode_ms, torch.decode_ms, "ms");
    match (candle.peak_mib, torch.peak_mib) {
        (Some(c), Some(t)) => row("peak RSS (MiB)", c, t, ""),
        (c, t) => println!("peak memory: candle {} pytorch {}", fmt_mem(c), fmt_mem(t)),
    }
    print_batched(&candle);
    bench_fused_ops()
}
