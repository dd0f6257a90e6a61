//! Self-verification on the `tiny-realvocab` fixture (real Qwen2.5 tokenizer, random tiny
//! weights): `yes_probability` runs the vision tower once for all crops and the decoder exactly
//! once per crop (no generation), and each value equals one computed independently here: each
//! crop encoded alone, its full prompt prefilled with logits at every position, the last row
//! softmaxed over the yes/no tokens on the host in f64.

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, IndexOp};
use vidx_model::model::LogitsMode;
use vidx_model::prompt::{self, NO_WORDS, YES_WORDS};
use vidx_model::rope_index::mrope_position_ids;
use vidx_model::verify::object_question;
use vidx_model::{OpenO3Video, RgbImage};

fn realvocab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn pattern(width: usize, height: usize, seed: usize) -> Result<RgbImage> {
    let data = (0..width * height * 3)
        .map(|i| ((i * (7 + seed) + seed * 31) % 251) as u8)
        .collect();
    Ok(RgbImage::new(width, height, data)?)
}

/// P(yes) of one crop, through the model's lower-level API only.
fn reference(pipeline: &OpenO3Video, image: &RgbImage, question: &str) -> Result<f64> {
    let model = pipeline.model();
    let pixels = pipeline
        .processor()
        .preprocess_images(std::slice::from_ref(image), true)?;
    let vision = model.encode_vision(&pixels.to_tensor(model.device())?, &pixels.grids)?;
    let tokens = pixels.tokens_per_grid(pipeline.processor().config().merge_size);
    let ids = prompt::expand_placeholders(
        &pipeline
            .tokenizer()
            .encode(&prompt::image_question_prompt(question))?,
        model.config().image_token_id,
        &tokens,
    )?;
    let positions = mrope_position_ids(&ids, &pixels.grids, &[], &[], &model.rope_index_params())?;
    let embeds = model.embed(&ids, Some(&vision))?;
    let mut cache = model.new_cache();
    let all = model.forward_embeds(&embeds, &positions, &mut cache, LogitsMode::All)?;
    let last: Vec<f32> = all.i((0, ids.len() - 1))?.to_vec1()?;
    let logit_of = |words: &[&str]| -> Result<Vec<f64>> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for word in words {
            let encoded = pipeline.tokenizer().encode(word)?;
            if encoded.len() == 1 && !seen.contains(&encoded[0]) {
                seen.push(encoded[0]);
                out.push(f64::from(last[encoded[0] as usize]));
            }
        }
        Ok(out)
    };
    let (yes, no) = (logit_of(YES_WORDS)?, logit_of(NO_WORDS)?);
    let top = yes
        .iter()
        .chain(&no)
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let mass = |logits: &[f64]| logits.iter().map(|l| (l - top).exp()).sum::<f64>();
    Ok(mass(&yes) / (mass(&yes) + mass(&no)))
}

#[test]
fn yes_probability_is_one_prefill_per_crop_and_matches_the_full_prefill() -> Result<()> {
    let Some((kind, _)) = common::test_device(
        "yes_probability_is_one_prefill_per_crop_and_matches_the_full_prefill",
    )?
    else {
        return Ok(());
    };
    let pipeline = OpenO3Video::load(realvocab_dir(), &common::load_options(kind, DType::F32))?;
    let (yes, no) = pipeline.yes_no_token_ids()?;
    assert!(!yes.is_empty() && !no.is_empty());

    // Crops of different sizes and aspect ratios, as boxes give them.
    let crops = vec![
        pattern(64, 48, 1)?,
        pattern(30, 90, 2)?,
        pattern(120, 40, 3)?,
    ];
    let questions: Vec<String> = ["knife", "red car", "person"]
        .iter()
        .map(|object| object_question(object))
        .collect();
    let questions: Vec<&str> = questions.iter().map(String::as_str).collect();

    let (vision_before, decoder_before) = (
        pipeline.model().vision_calls(),
        pipeline.model().decoder_calls(),
    );
    let confidences = pipeline.yes_probability(&crops, &questions)?;
    assert_eq!(
        pipeline.model().decoder_calls() - decoder_before,
        crops.len(),
        "one decoder prefill per crop and no generation step"
    );
    assert_eq!(pipeline.model().vision_calls() - vision_before, 1);
    assert_eq!(confidences.len(), crops.len());

    for ((crop, question), confidence) in crops.iter().zip(&questions).zip(&confidences) {
        assert!((0.0..=1.0).contains(confidence), "{confidence}");
        let expected = reference(&pipeline, crop, question)?;
        assert!(
            (f64::from(*confidence) - expected).abs() < 1e-4,
            "{question}: {confidence} vs reference {expected}"
        );
    }
    // Random weights still see the crops: they do not all get one value.
    assert!(
        confidences
            .iter()
            .any(|c| (c - confidences[0]).abs() > 1e-6),
        "{confidences:?}"
    );

    assert!(pipeline.yes_probability(&[], &[])?.is_empty());
    let mismatch = pipeline
        .yes_probability(&crops, &questions[..1])
        .err()
        .context("a crop without a question is refused")?;
    assert!(mismatch.to_string().contains("3 images for 1 questions"));
    Ok(())
}
