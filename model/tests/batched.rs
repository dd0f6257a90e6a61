//! Batched generation against one sequence at a time, on both shared fixtures (CPU f32, real
//! checkpoints): every sequence of a batch gives exactly the tokens `generate` gives it alone,
//! while sequences of different prompts (an image prompt, a longer one over the same frames, a
//! native video, plain text) and settings (greedy with and without a repetition penalty,
//! Open-o3's sampler) decode together, one retires early and another joins mid-way.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use vidx_model::batch::{BatchDecoder, BatchEvent, SequenceId, SequenceStart};
use vidx_model::generation::{FinishReason, Generated, GenerationParams, generate};
use vidx_model::model::LogitsMode;
use vidx_model::rope_index::{PositionIds, mrope_position_ids};
use vidx_model::{LoadOptions, Model, ModelFiles};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl")
        .join(name)
}

/// A prompt: ids, M-RoPE positions and vision embeddings for its placeholders.
struct Prompt {
    ids: Vec<u32>,
    positions: PositionIds,
    vision: Option<Tensor>,
}

fn ids_of(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<i64>()?
        .iter()
        .map(|&v| v as u32)
        .collect())
}

fn grids_of(t: &Tensor) -> Result<Vec<[usize; 3]>> {
    Ok(t.to_vec2::<i64>()?
        .iter()
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect())
}

/// The prompts of one fixture, of four different lengths.
fn prompts(model: &Model, fixture: &HashMap<String, Tensor>) -> Result<Vec<Prompt>> {
    let get = |k: &str| {
        fixture
            .get(k)
            .with_context(|| format!("fixture tensor {k}"))
    };
    let params = model.rope_index_params();
    let image_ids = ids_of(get("img.input_ids")?)?;
    let image_grids = grids_of(get("img.image_grid_thw")?)?;
    let image_vision = model.encode_vision(get("img.pixel_values")?, &image_grids)?;
    let image = |ids: Vec<u32>| -> Result<Prompt> {
        Ok(Prompt {
            positions: mrope_position_ids(&ids, &image_grids, &[], &[], &params)?,
            ids,
            vision: Some(image_vision.clone()),
        })
    };
    let mut longer = image_ids.clone();
    longer.extend([11, 12, 13, 14, 15, 16, 17]);
    let video_ids = ids_of(get("vid.input_ids")?)?;
    let video_grids = grids_of(get("vid.video_grid_thw")?)?;
    let seconds: Vec<f32> = get("vid.second_per_grid_ts")?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let video_vision = model.encode_vision(get("vid.pixel_values_videos")?, &video_grids)?;
    let text = |len: usize| -> Prompt {
        let ids: Vec<u32> = (0..len as u32).map(|i| (i * 37 + 5) % 900).collect();
        Prompt {
            positions: PositionIds::text(0, len),
            ids,
            vision: None,
        }
    };
    let prompts = vec![
        image(image_ids)?,
        image(longer)?,
        Prompt {
            positions: mrope_position_ids(&video_ids, &[], &video_grids, &seconds, &params)?,
            ids: video_ids,
            vision: Some(video_vision),
        },
        text(9),
        text(23),
    ];
    let lengths: std::collections::HashSet<usize> = prompts.iter().map(|p| p.ids.len()).collect();
    if lengths.len() != prompts.len() {
        bail!("the prompts should all differ in length");
    }
    Ok(prompts)
}

/// Prefills `prompt` in a fresh cache: the sequence as it would join a batch.
fn start(
    model: &Model,
    id: SequenceId,
    prompt: &Prompt,
    params: &GenerationParams,
) -> Result<SequenceStart> {
    let embeds = model.embed(&prompt.ids, prompt.vision.as_ref())?;
    let mut cache = model.new_cache();
    let first_logits =
        model.forward_embeds(&embeds, &prompt.positions, &mut cache, LogitsMode::Last)?;
    Ok(SequenceStart {
        id,
        cache,
        first_logits,
        next_position: prompt.ids.len() as i64 + prompt.positions.rope_delta,
        context: prompt.ids.clone(),
        params: params.clone(),
    })
}

/// What `generate` gives the sequence alone.
fn alone(model: &Model, start: SequenceStart) -> Result<Generated> {
    let mut cache = start.cache;
    Ok(generate(
        model,
        &start.first_logits,
        &mut cache,
        start.next_position,
        &start.context,
        &start.params,
        &mut |_| true,
    )?)
}

fn greedy(max_new_tokens: usize, repetition_penalty: f32) -> GenerationParams {
    GenerationParams {
        max_new_tokens,
        repetition_penalty,
        ..GenerationParams::default()
    }
}

fn batched_equals_alone(fixture_name: &str) -> Result<()> {
    let dir = fixture_dir(fixture_name);
    let model = ModelFiles::from_dir(&dir)?.model(&LoadOptions::default())?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let prompts = prompts(&model, &fixture)?;
    // (prompt, settings): sequence 1 retires first; sequence 3 joins after it.
    let open_o3 = GenerationParams {
        max_new_tokens: 9,
        seed: 42,
        ..GenerationParams::open_o3()
    };
    let plan: Vec<(usize, GenerationParams)> = vec![
        (0, greedy(14, 1.05)),
        (1, greedy(4, 1.05)),
        (2, greedy(11, 1.0)),
        (3, greedy(8, 1.3)),
        (4, open_o3),
    ];
    let mut expected = HashMap::new();
    for (id, (prompt, params)) in plan.iter().enumerate() {
        let generated = alone(
            &model,
            start(&model, id as SequenceId, &prompts[*prompt], params)?,
        )?;
        assert_eq!(
            generated.finish,
            FinishReason::Length,
            "{fixture_name}: sequence {id}"
        );
        expected.insert(id as SequenceId, generated);
    }

    let mut batch = BatchDecoder::new(&model, 4);
    for id in [0, 1, 2] {
        let (prompt, params) = &plan[id];
        batch.submit(start(&model, id as SequenceId, &prompts[*prompt], params)?)?;
    }
    let mut finished: HashMap<SequenceId, Generated> = HashMap::new();
    let mut streamed: HashMap<SequenceId, Vec<u32>> = HashMap::new();
    let mut joined_mid_way = false;
    let mut steps = 0;
    while !batch.is_idle() {
        for event in batch.step()? {
            match event {
                BatchEvent::Token { id, token } => streamed.entry(id).or_default().push(token),
                BatchEvent::Finished { id, generated } => {
                    assert!(
                        finished.insert(id, generated).is_none(),
                        "{id} finished twice"
                    );
                }
            }
        }
        steps += 1;
        if finished.contains_key(&1) && !joined_mid_way {
            // Sequence 1 retired while 0 and 2 continue; 3 and 4 take its slot and a free one.
            assert_eq!(batch.active_len(), 2, "{fixture_name}");
            for id in [3, 4] {
                let (prompt, params) = &plan[id];
                batch.submit(start(&model, id as SequenceId, &prompts[*prompt], params)?)?;
            }
            joined_mid_way = true;
        }
        assert!(steps < 100, "the batch never drained");
    }
    assert!(joined_mid_way, "{fixture_name}: sequence 1 never retired");
    assert_eq!(finished.len(), plan.len());
    for (id, want) in &expected {
        let got = &finished[id];
        assert_eq!(got, want, "{fixture_name}: sequence {id} batched vs alone");
        assert_eq!(
            &streamed[id], &got.tokens,
            "{fixture_name}: streamed tokens of {id}"
        );
    }
    Ok(())
}

#[test]
fn batched_greedy_equals_one_sequence_at_a_time_on_tiny_seed0() -> Result<()> {
    batched_equals_alone("tiny-seed0")
}

#[test]
fn batched_greedy_equals_one_sequence_at_a_time_on_tiny_realvocab() -> Result<()> {
    batched_equals_alone("tiny-realvocab")
}

#[test]
fn a_batch_refuses_bad_sequences_and_cancels_by_id() -> Result<()> {
    let dir = fixture_dir("tiny-seed0");
    let model = ModelFiles::from_dir(&dir)?.model(&LoadOptions::default())?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let prompts = prompts(&model, &fixture)?;
    let mut batch = BatchDecoder::new(&model, 2);
    batch.submit(start(&model, 7, &prompts[3], &greedy(50, 1.0))?)?;
    let duplicate = batch.submit(start(&model, 7, &prompts[4], &greedy(5, 1.0))?);
    assert!(
        matches!(duplicate, Err(vidx_model::Error::Input(_))),
        "{duplicate:?}"
    );
    let mut bad = start(&model, 8, &prompts[4], &greedy(5, 1.0))?;
    bad.first_logits = bad.first_logits.narrow(2, 0, 10)?;
    assert!(matches!(
        batch.submit(bad),
        Err(vidx_model::Error::Input(_))
    ));
    let invalid = start(
        &model,
        9,
        &prompts[4],
        &GenerationParams {
            top_p: 0.0,
            ..greedy(5, 1.0)
        },
    )?;
    assert!(batch.submit(invalid).is_err());
    batch.step()?;
    batch.step()?;
    let cancelled = batch.cancel(7)?.context("sequence 7 is in the batch")?;
    assert_eq!(
        (cancelled.finish, cancelled.tokens.len()),
        (FinishReason::Cancelled, 3)
    );
    assert!(batch.is_idle());
    assert_eq!(batch.cancel(7)?, None);
    Ok(())
}

/// The worker-facing path: questions answered in one batch give the answers (text, tokens,
/// prompt figures) each question gets alone, and a cancelled batch ends every question.
#[test]
fn questions_answered_together_equal_questions_answered_one_by_one() -> Result<()> {
    use candle_core::IndexOp;
    use vidx_model::prompt::OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT;
    use vidx_model::{OpenO3Video, RgbImage, TimedFrame};

    let dir = fixture_dir("tiny-realvocab");
    let pipeline = OpenO3Video::load(&dir, &LoadOptions::default())?;
    let fixture = candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu)?;
    let frames_u8 = fixture.get("img.frames_u8").context("img.frames_u8")?;
    let (n, h, w, _) = frames_u8.dims4()?;
    let frames: Vec<TimedFrame> = (0..n)
        .map(|i| {
            Ok(TimedFrame {
                image: RgbImage::new(w, h, frames_u8.i(i)?.flatten_all()?.to_vec1::<u8>()?)?,
                timestamp_seconds: i as f64 / 2.0,
            })
        })
        .collect::<Result<_>>()?;
    let encoded = pipeline.encode_frames(&frames)?;
    let prefix = pipeline.prefill(&encoded, OPEN_O3_THINK_ANSWER_SYSTEM_PROMPT, 2.0)?;
    let questions = [
        "What is there?",
        "Where is the red car at the end of the video, and who is driving it?",
        "Count the people.",
    ];
    let params = GenerationParams {
        max_new_tokens: 12,
        repetition_penalty: 1.05,
        ..GenerationParams::default()
    };
    let together = pipeline.ask_batched(&prefix, &questions, &params)?;
    for (question, batched) in questions.iter().zip(&together) {
        let alone = pipeline.ask(&prefix, question, &params, &mut |_| true)?;
        assert_eq!(batched, &alone, "{question}");
    }
    let mut steps = 0;
    let cancelled = pipeline.ask_batched_while(&prefix, &questions, &params, &mut || {
        steps += 1;
        steps <= 3
    })?;
    for answer in &cancelled {
        assert_eq!(answer.finish, FinishReason::Cancelled);
        assert_eq!(
            answer.tokens.len(),
            4,
            "two tokens on admission, one per later step"
        );
    }
    Ok(())
}
