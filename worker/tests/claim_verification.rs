//! Claim confidence by self-verification on the tiny random Qwen2.5-VL fixture (real
//! tokenizer): every grounded claim of a segment's answers gets a confidence in [0, 1] from
//! exactly one decoder prefill per crop (counted on the model) and one vision call, a claim
//! without a box or time gets none, the values survive into the claims table, and a category's
//! `min_confidence` changes the moderation verdict of the same answer.

mod evidence_support;

use std::path::Path;

use evidence_support::{clocks, header};
use vidx_model::{LoadOptions, OpenO3Video, RgbImage, TimedFrame};
use vidx_worker::claim_verification::claim_confidences;
use vidx_worker::evidence::table::rows_for_document;
use vidx_worker::evidence::{ModerationPolicy, QuestionPlan, Rotation, VideoDocumentBuilder};

fn model() -> OpenO3Video {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    let mut model = OpenO3Video::load(&dir, &LoadOptions::default()).expect("fixture model loads");
    model.set_pixel_bounds(3_136, 12_544);
    model
}

/// The 15 model-sized (448x252) frames of segment 0, each a different pattern.
fn frames() -> Vec<TimedFrame> {
    clocks()[0]
        .frame_times_s
        .iter()
        .enumerate()
        .map(|(index, time_s)| {
            let data = (0..448 * 252 * 3)
                .map(|i| ((i * (index + 3) / 5) % 256) as u8)
                .collect();
            TimedFrame {
                image: RgbImage::new(448, 252, data).unwrap(),
                timestamp_seconds: *time_s,
            }
        })
        .collect()
}

/// One policy, the same question and answer asked twice: `plain` counts every grounded claim,
/// `strict` only those verified at or above `min_confidence`.
fn policy(min_confidence: f32) -> ModerationPolicy {
    ModerationPolicy::from_yaml(&format!(
        "categories:\n  - {{name: plain, question: Is anyone holding a weapon?, flagged_answer: 'yes', severity: high, min_grounded_claims: 1}}\n  - {{name: strict, question: Is anyone holding a knife?, flagged_answer: 'yes', severity: high, min_grounded_claims: 1, min_confidence: {min_confidence}}}\n"
    ))
    .unwrap()
}

const ANSWER: &str = "<think>A man holds a <obj>knife</obj><box>[40,30,200,180]</box>at<t>3.0</t>s, then a <obj>bag</obj><box>[250,60,420,240]</box>at<t>9.0</t>s; a <obj>gun</obj>at<t>5.0</t>s is named without a box.</think><answer>Yes.</answer>";

/// Builds the document for `policy`, verifies its claims and returns it with the confidences.
fn verified(
    model: &OpenO3Video,
    frames: &[TimedFrame],
    policy: ModerationPolicy,
) -> (vidx_worker::evidence::VideoDocument, Vec<Vec<Option<f32>>>) {
    let task = QuestionPlan::moderation(policy)
        .unwrap()
        .with_verification(true);
    let mut builder =
        VideoDocumentBuilder::new(header("s3://corpus/knife.mp4", task.clone(), Rotation::R0));
    builder.add_segment(clocks()[0].clone()).unwrap();
    for question in &task.questions {
        builder.record_answer(0, &question.id, ANSWER).unwrap();
    }
    let confidences = claim_confidences(model, frames, builder.answers(0).unwrap()).unwrap();
    for (question, claims) in task.questions.iter().zip(&confidences) {
        builder.set_confidences(0, &question.id, claims).unwrap();
    }
    (builder.finish(), confidences)
}

#[test]
fn every_grounded_claim_gets_a_confidence_from_one_prefill_per_crop() {
    let model = model();
    let frames = frames();
    let (vision_before, decoder_before) =
        (model.model().vision_calls(), model.model().decoder_calls());
    let (document, confidences) = verified(&model, &frames, policy(0.5));

    // Two questions × (knife, bag grounded; gun without a box).
    assert_eq!(confidences.len(), 2);
    for claims in &confidences {
        assert_eq!(claims.len(), 3, "{claims:?}");
        assert!(claims[2].is_none(), "an ungrounded claim is not verified");
        for confidence in &claims[..2] {
            let confidence = confidence.expect("a grounded claim is verified");
            assert!((0.0..=1.0).contains(&confidence), "{confidence}");
        }
        // Both questions cite the same crops, so they get the same values.
        for (claim, first) in claims.iter().zip(&confidences[0]) {
            assert!((claim.unwrap_or(-1.0) - first.unwrap_or(-1.0)).abs() < 1e-5);
        }
    }
    assert_eq!(
        model.model().decoder_calls() - decoder_before,
        4,
        "one prefill per crop (2 grounded claims × 2 answers), no generation"
    );
    assert_eq!(model.model().vision_calls() - vision_before, 1);
    // The two crops differ, and so do their confidences.
    assert_ne!(confidences[0][0], confidences[0][1]);

    // The document and the claims table carry them.
    let answer = &document.segments[0].answers[0];
    let stored: Vec<Option<f32>> = answer.claims.iter().map(|claim| claim.confidence).collect();
    assert_eq!(stored, confidences[0]);
    let (rows, _) = rows_for_document(&document, "index/videos/v/t/evidence.json");
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .zip(confidences.iter().flatten())
            .all(|(row, confidence)| row.confidence == *confidence)
    );
    let json = serde_json::to_string(&document).unwrap();
    let read: vidx_worker::evidence::VideoDocument = serde_json::from_str(&json).unwrap();
    // Confidences and verdicts survive the stored JSON (other floats may lose a last bit).
    for (read, written) in read.segments[0]
        .answers
        .iter()
        .zip(&document.segments[0].answers)
    {
        let confidences = |answer: &vidx_worker::evidence::AnswerRecord| -> Vec<Option<f32>> {
            answer.claims.iter().map(|claim| claim.confidence).collect()
        };
        assert_eq!(confidences(read), confidences(written));
        assert_eq!(read.verdict, written.verdict);
    }
}

#[test]
fn min_confidence_changes_the_verdict() {
    let model = model();
    let frames = frames();
    // Measure the claims' confidences once, then set the threshold just above and at the best.
    let (_, confidences) = verified(&model, &frames, policy(0.0));
    let best = confidences[0].iter().flatten().copied().fold(0.0, f32::max);
    assert!(best < 1.0, "random weights are not certain: {best}");

    let verdict = |document: &vidx_worker::evidence::VideoDocument, category: &str| {
        document.segments[0]
            .answers
            .iter()
            .find(|answer| answer.question_id == category)
            .and_then(|answer| answer.verdict.clone())
            .unwrap()
    };
    let above = f32::min(1.0, best + 1e-3);
    let (document, _) = verified(&model, &frames, policy(above));
    assert!(
        verdict(&document, "plain").flagged,
        "the answer alone flags"
    );
    let strict = verdict(&document, "strict");
    assert!(!strict.flagged && strict.answer_matched, "{strict:?}");
    assert_eq!(strict.confident_claims, Some(0));
    assert!(
        strict.reason.contains("confidence at least"),
        "{}",
        strict.reason
    );
    let summary = document
        .moderation
        .iter()
        .find(|summary| summary.category == "strict")
        .unwrap();
    assert!(!summary.flagged);

    let (document, _) = verified(&model, &frames, policy((best - 1e-4).max(0.0)));
    let strict = verdict(&document, "strict");
    assert!(strict.flagged, "{strict:?}");
    assert!(strict.confident_claims >= Some(1), "{strict:?}");
}
