//! Claim confidence by self-verification (`--verify`; on by default for moderation passes).
//!
//! Open-o3 Video's answers cite evidence as an object, a box and a time. To put a number on each
//! citation, [`claim_confidences`] crops every grounded claim's first box (with a margin of
//! [`CROP_MARGIN`] of its size on each side, and at least [`MIN_CROP_SIDE`] pixels a side) from
//! the sampled frame nearest its time, and asks the model "Is this a {object}? Answer yes or
//! no." about the crop: one vision tower call for all crops of a segment and one decoder prefill
//! per crop, no generation ([`vidx_model::OpenO3Video::yes_probability`]). P(yes) is the
//! claim's `confidence`. Boxes are in the model-input pixels of the frames the model saw, so
//! the crops come from those same frames.

use vidx_model::verify::object_question;
use vidx_model::{OpenO3Video, RgbImage, TimedFrame};

use crate::evidence::{AnswerRecord, BoundingBox, ClaimRecord};

/// Margin added on each side of a box before cropping, as a fraction of its width / height:
/// the object's edges and a little context, as a person checking the box would see it.
pub const CROP_MARGIN: f64 = 0.1;

/// Smallest crop side in pixels (one merged vision patch, 28): a tiny box still gets a crop
/// the vision tower can see, without extreme aspect ratios.
pub const MIN_CROP_SIDE: usize = 28;

/// The crop of `bounding_box` (frame pixels) from `frame`, with [`CROP_MARGIN`] and at least
/// [`MIN_CROP_SIDE`] pixels a side (less only when the frame is smaller); `None` for a box that
/// is not finite or lies wholly outside the frame.
pub fn crop_box(frame: &RgbImage, bounding_box: &BoundingBox) -> Option<RgbImage> {
    let BoundingBox { x1, y1, x2, y2 } = *bounding_box;
    if ![x1, y1, x2, y2].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (left, right) = (x1.min(x2), x1.max(x2));
    let (top, bottom) = (y1.min(y2), y1.max(y2));
    let (width, height) = (frame.width as f64, frame.height as f64);
    if right <= 0.0 || bottom <= 0.0 || left >= width || top >= height {
        return None;
    }
    let span = |low: f64, high: f64, limit: usize| -> (usize, usize) {
        let margin = (high - low) * CROP_MARGIN;
        let mut start = (low - margin).floor().max(0.0) as usize;
        let mut end = ((high + margin).ceil() as usize).min(limit);
        let side = MIN_CROP_SIDE.min(limit);
        if end - start < side {
            let grow = side - (end - start);
            start = start.saturating_sub(grow / 2);
            end = (start + side).min(limit);
            start = end - side;
        }
        (start, end)
    };
    let (x_start, x_end) = span(left, right, frame.width);
    let (y_start, y_end) = span(top, bottom, frame.height);
    let row_bytes = (x_end - x_start) * 3;
    let mut data = Vec::with_capacity(row_bytes * (y_end - y_start));
    for y in y_start..y_end {
        let offset = (y * frame.width + x_start) * 3;
        data.extend_from_slice(&frame.data[offset..offset + row_bytes]);
    }
    RgbImage::new(x_end - x_start, y_end - y_start, data).ok()
}

/// The crop a claim is verified on, if it can be: a first box, a nearest frame, and a box that
/// meets that frame.
fn claim_crop(frames: &[TimedFrame], claim: &ClaimRecord) -> Option<RgbImage> {
    if !claim.is_grounded() {
        return None;
    }
    let frame = frames.get(claim.frame_index?)?;
    crop_box(&frame.image, claim.model_boxes.first()?)
}

/// Confidences of every claim of `answers` (one segment's answers; `frames` the model-sized
/// frames that segment was asked about, in order), per answer and in claim order. A claim
/// without a box and a time, or whose box misses its frame, gets `None`. All crops go to the
/// model together: one vision call and one prefill per crop.
pub fn claim_confidences(
    model: &OpenO3Video,
    frames: &[TimedFrame],
    answers: &[AnswerRecord],
) -> vidx_model::Result<Vec<Vec<Option<f32>>>> {
    let mut crops = Vec::new();
    let mut questions = Vec::new();
    // Per answer, per claim: the index of its crop, if it has one.
    let slots: Vec<Vec<Option<usize>>> = answers
        .iter()
        .map(|answer| {
            answer
                .claims
                .iter()
                .map(|claim| {
                    let crop = claim_crop(frames, claim)?;
                    crops.push(crop);
                    questions.push(object_question(&claim.object));
                    Some(crops.len() - 1)
                })
                .collect()
        })
        .collect();
    let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
    let probabilities = model.yes_probability(&crops, &questions)?;
    Ok(slots
        .into_iter()
        .map(|answer| {
            answer
                .into_iter()
                .map(|slot| slot.map(|index| probabilities[index]))
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(width: usize, height: usize) -> RgbImage {
        let data = (0..width * height)
            .flat_map(|pixel| [(pixel % width) as u8, (pixel / width) as u8, 7])
            .collect();
        RgbImage::new(width, height, data).unwrap()
    }

    #[test]
    fn crops_take_the_box_with_its_margin() {
        let frame = numbered(200, 100);
        let crop = crop_box(
            &frame,
            &BoundingBox {
                x1: 50.0,
                y1: 20.0,
                x2: 150.0,
                y2: 70.0,
            },
        )
        .unwrap();
        // 10% of 100 wide and 50 high on each side.
        assert_eq!((crop.width, crop.height), (120, 60));
        // The top-left pixel is frame pixel (40, 15).
        assert_eq!(&crop.data[..3], &[40, 15, 7]);
        let last = crop.data.len() - 3;
        assert_eq!(&crop.data[last..], &[159, 74, 7]);
    }

    #[test]
    fn small_and_edge_boxes_still_crop_inside_the_frame() {
        let frame = numbered(200, 100);
        let tiny = crop_box(
            &frame,
            &BoundingBox {
                x1: 195.0,
                y1: 0.0,
                x2: 199.0,
                y2: 2.0,
            },
        )
        .unwrap();
        assert_eq!((tiny.width, tiny.height), (MIN_CROP_SIDE, MIN_CROP_SIDE));
        assert_eq!(&tiny.data[..3], &[(200 - MIN_CROP_SIDE) as u8, 0, 7]);
        let outside = BoundingBox {
            x1: 300.0,
            y1: 10.0,
            x2: 320.0,
            y2: 20.0,
        };
        assert!(crop_box(&frame, &outside).is_none());
        let nan = BoundingBox {
            x1: f64::NAN,
            ..outside
        };
        assert!(crop_box(&frame, &nan).is_none());
        let small = numbered(10, 10);
        let whole = crop_box(
            &small,
            &BoundingBox {
                x1: -5.0,
                y1: -5.0,
                x2: 50.0,
                y2: 50.0,
            },
        )
        .unwrap();
        assert_eq!((whole.width, whole.height), (10, 10));
    }
}
