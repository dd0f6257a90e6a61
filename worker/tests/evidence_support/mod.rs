//! Fixture builders shared by the evidence integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use vidx_worker::evidence::document::DocumentHeader;
use vidx_worker::evidence::{
    FrameGeometry, ModelInfo, ProbeFacts, QuestionPlan, Rotation, SegmentClock, VideoDocument,
    VideoDocumentBuilder, VideoIdentity,
};

pub const MODERATION_POLICY: &str = "
categories:
  - name: weapons
    question: Is anyone holding a weapon? Answer yes or no.
    flagged_answer: 'yes'
    severity: high
    min_grounded_claims: 1
  - name: smoking
    question: Is anyone smoking? Answer yes or no.
    flagged_answer: 'yes'
    severity: low
";

pub fn identity(url: &str) -> VideoIdentity {
    VideoIdentity {
        url: url.to_owned(),
        size_bytes: 1_234_567,
        etag: Some("\"abc123\"".to_owned()),
        checksum: None,
    }
}

pub fn model() -> ModelInfo {
    ModelInfo {
        id: "marinero4972/Open-o3-Video".to_owned(),
        revision: "r1".to_owned(),
        device: Some("cuda:0".to_owned()),
        dtype: Some("bf16".to_owned()),
    }
}

/// A 1280x720 video, rotation as given, shown to the model at 448x252 (or 252x448 when rotated).
pub fn header(url: &str, task: QuestionPlan, rotation: Rotation) -> DocumentHeader {
    let (model_width, model_height) = if rotation.swaps_axes() {
        (252, 448)
    } else {
        (448, 252)
    };
    DocumentHeader {
        video: identity(url),
        probe: ProbeFacts {
            uri: url.to_owned(),
            container: "mov,mp4,m4a,3gp,3g2,mj2".to_owned(),
            codec: "h264".to_owned(),
            width: 1280,
            height: 720,
            rotation: rotation.degrees() as i32,
            fps: 30.0,
            duration_s: 60.0,
            has_audio: true,
        },
        model: model(),
        task,
        geometry: FrameGeometry::new(1280, 720, rotation, model_width, model_height).unwrap(),
    }
}

/// Two 30 s segments with frames every 2 s starting 1 s in.
pub fn clocks() -> Vec<SegmentClock> {
    (0..2)
        .map(|index| {
            let start = 30.0 * f64::from(index);
            let frames = (0..15)
                .map(|frame| start + 1.0 + 2.0 * f64::from(frame))
                .collect();
            SegmentClock::new(index, start, start + 30.0, frames).unwrap()
        })
        .collect()
}

/// A document with the given answers per (segment, question id).
pub fn document(url: &str, task: QuestionPlan, answers: &[(u32, &str, &str)]) -> VideoDocument {
    let mut builder = VideoDocumentBuilder::new(header(url, task, Rotation::R0));
    for clock in clocks() {
        builder.add_segment(clock).unwrap();
    }
    for (segment, question, raw) in answers {
        builder.record_answer(*segment, question, raw).unwrap();
    }
    builder.finish()
}

/// The workspace root (for the venv and scripts).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
