//! Maps evidence from what the model saw back to the source video.
//!
//! Boxes: the model saw each frame upright (in displayed orientation, rotation already applied) and
//! resized to `model_width` x `model_height` (Qwen2.5-VL resizes each axis independently to a multiple
//! of 28, no crop, no padding). Undoing the resize is a per-axis scale on a continuous pixel grid
//! (origin at the top-left corner of the top-left pixel), which gives boxes in *displayed* source
//! pixels: what a viewer of the video sees, and what the index stores. For tools that work on the
//! decoded (coded) pictures, [`FrameGeometry::displayed_to_coded`] also undoes the rotation.
//!
//! Rotation is the clockwise rotation, in degrees, that turns a coded picture upright for display
//! (the value of the legacy `rotate` tag; FFmpeg's display-matrix angle is counter-clockwise, so the
//! prober negates it). With coded size `W x H` and a point `(x, y)` in displayed pixels:
//!
//! | rotation | displayed size | coded point |
//! |---|---|---|
//! | 0   | `W x H` | `(x, y)` |
//! | 90  | `H x W` | `(y, H - x)` |
//! | 180 | `W x H` | `(W - x, H - y)` |
//! | 270 | `H x W` | `(W - y, x)` |
//!
//! A mirrored display matrix (flips, transposes) mirrors the displayed picture left to right after
//! the rotation; undoing it replaces `x` by `displayed width - x` before the table applies.
//!
//! Times: the prompt labels each sampled frame `Frame i at Xs` where `i` counts from 1 within the
//! segment and `X` is *segment-relative* (seconds since the segment start, one decimal), so the
//! numbers the model reads and writes stay small like those it was trained on. A time the model
//! writes is on that scale; its absolute video time is `segment start + X`. Each claim is tied to the
//! sampled frame whose absolute time is nearest its own.

use serde::{Deserialize, Serialize};

use super::parse::{BoundingBox, Claim, ParsedOutput, Section, TimeSpan};
use super::{Error, Result};

/// Clockwise rotation that turns a coded picture upright for display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rotation {
    /// Upright already.
    #[default]
    #[serde(rename = "0")]
    R0,
    /// Turn 90 degrees clockwise for display.
    #[serde(rename = "90")]
    R90,
    /// Turn 180 degrees.
    #[serde(rename = "180")]
    R180,
    /// Turn 270 degrees clockwise (90 counter-clockwise) for display.
    #[serde(rename = "270")]
    R270,
}

impl Rotation {
    /// Rotation from degrees clockwise; any multiple of 90, negative ones included.
    pub fn from_degrees_clockwise(degrees: i64) -> Result<Self> {
        match degrees.rem_euclid(360) {
            0 => Ok(Rotation::R0),
            90 => Ok(Rotation::R90),
            180 => Ok(Rotation::R180),
            270 => Ok(Rotation::R270),
            _ => Err(Error::InvalidGeometry(format!(
                "rotation {degrees} is not a multiple of 90 degrees"
            ))),
        }
    }

    /// Degrees clockwise, 0..360.
    pub fn degrees(self) -> u32 {
        match self {
            Rotation::R0 => 0,
            Rotation::R90 => 90,
            Rotation::R180 => 180,
            Rotation::R270 => 270,
        }
    }

    /// Whether width and height swap between coded and displayed pictures.
    pub fn swaps_axes(self) -> bool {
        matches!(self, Rotation::R90 | Rotation::R270)
    }
}

/// The geometry linking a source video's pictures to the frames the model saw.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameGeometry {
    /// Width of the decoded (coded) picture, pixels.
    pub coded_width: u32,
    /// Height of the decoded (coded) picture, pixels.
    pub coded_height: u32,
    /// Rotation applied for display.
    pub rotation: Rotation,
    /// Whether the displayed picture is also mirrored left to right, after the rotation (a
    /// flipped display matrix). Absent in documents written before it was recorded.
    #[serde(default)]
    pub mirrored: bool,
    /// Width of the upright, resized frame the model saw.
    pub model_width: u32,
    /// Height of the upright, resized frame the model saw.
    pub model_height: u32,
}

impl FrameGeometry {
    /// Checks that every size is non-zero.
    pub fn new(
        coded_width: u32,
        coded_height: u32,
        rotation: Rotation,
        model_width: u32,
        model_height: u32,
    ) -> Result<Self> {
        if coded_width == 0 || coded_height == 0 || model_width == 0 || model_height == 0 {
            return Err(Error::InvalidGeometry(format!(
                "zero size: coded {coded_width}x{coded_height}, model {model_width}x{model_height}"
            )));
        }
        Ok(Self {
            coded_width,
            coded_height,
            rotation,
            mirrored: false,
            model_width,
            model_height,
        })
    }

    /// The same geometry with the displayed picture mirrored left to right after the rotation.
    pub fn mirrored(self, mirrored: bool) -> Self {
        Self { mirrored, ..self }
    }

    /// Size of the upright picture a viewer sees, `(width, height)`.
    pub fn displayed_size(&self) -> (u32, u32) {
        if self.rotation.swaps_axes() {
            (self.coded_height, self.coded_width)
        } else {
            (self.coded_width, self.coded_height)
        }
    }

    /// A box in model-input pixels to displayed source pixels (undoes the resize).
    pub fn model_to_displayed(&self, bounding_box: BoundingBox) -> BoundingBox {
        let (displayed_width, displayed_height) = self.displayed_size();
        let scale_x = f64::from(displayed_width) / f64::from(self.model_width);
        let scale_y = f64::from(displayed_height) / f64::from(self.model_height);
        BoundingBox {
            x1: bounding_box.x1 * scale_x,
            y1: bounding_box.y1 * scale_y,
            x2: bounding_box.x2 * scale_x,
            y2: bounding_box.y2 * scale_y,
        }
    }

    /// A point in displayed source pixels to coded source pixels (undoes the mirror, then the
    /// rotation).
    pub fn displayed_point_to_coded(&self, x: f64, y: f64) -> (f64, f64) {
        let width = f64::from(self.coded_width);
        let height = f64::from(self.coded_height);
        let x = if self.mirrored {
            f64::from(self.displayed_size().0) - x
        } else {
            x
        };
        match self.rotation {
            Rotation::R0 => (x, y),
            Rotation::R90 => (y, height - x),
            Rotation::R180 => (width - x, height - y),
            Rotation::R270 => (width - y, x),
        }
    }

    /// A box in displayed source pixels to coded source pixels (undoes the mirror and rotation).
    pub fn displayed_to_coded(&self, bounding_box: BoundingBox) -> BoundingBox {
        let (ax, ay) = self.displayed_point_to_coded(bounding_box.x1, bounding_box.y1);
        let (bx, by) = self.displayed_point_to_coded(bounding_box.x2, bounding_box.y2);
        BoundingBox {
            x1: ax.min(bx),
            y1: ay.min(by),
            x2: ax.max(bx),
            y2: ay.max(by),
        }
    }

    /// A box in model-input pixels to coded source pixels.
    pub fn model_to_coded(&self, bounding_box: BoundingBox) -> BoundingBox {
        self.displayed_to_coded(self.model_to_displayed(bounding_box))
    }
}

/// Where a segment lies in the video and which frames were sampled from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentClock {
    /// Index of the segment in the video, from 0.
    pub index: u32,
    /// Absolute start, seconds.
    pub start_s: f64,
    /// Absolute end, seconds; after `start_s`.
    pub end_s: f64,
    /// Absolute times of the sampled frames, ascending, within `[start_s, end_s]`.
    pub frame_times_s: Vec<f64>,
}

impl SegmentClock {
    /// Checks the segment bounds and frame times.
    pub fn new(index: u32, start_s: f64, end_s: f64, frame_times_s: Vec<f64>) -> Result<Self> {
        if !start_s.is_finite() || !end_s.is_finite() || start_s < 0.0 || end_s <= start_s {
            return Err(Error::InvalidGeometry(format!(
                "segment {index} bounds {start_s}..{end_s} are invalid"
            )));
        }
        if frame_times_s.is_empty() {
            return Err(Error::InvalidGeometry(format!(
                "segment {index} has no sampled frames"
            )));
        }
        let ordered = frame_times_s.windows(2).all(|pair| pair[0] <= pair[1]);
        let inside = frame_times_s
            .iter()
            .all(|time| time.is_finite() && *time >= start_s && *time <= end_s);
        if !ordered || !inside {
            return Err(Error::InvalidGeometry(format!(
                "segment {index} frame times must ascend within {start_s}..{end_s}"
            )));
        }
        Ok(Self {
            index,
            start_s,
            end_s,
            frame_times_s,
        })
    }

    /// Segment length, seconds: the largest time the model should write.
    pub fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }

    /// A segment-relative time (label scale) to absolute video time.
    pub fn to_absolute(&self, relative_s: f64) -> f64 {
        self.start_s + relative_s
    }

    /// An absolute video time to the segment-relative label scale.
    pub fn to_relative(&self, absolute_s: f64) -> f64 {
        absolute_s - self.start_s
    }

    /// The prompt label of sampled frame `frame_index` (from 0): `Frame 1 at 0.0s`.
    pub fn frame_label(&self, frame_index: usize) -> Option<String> {
        let time = self.frame_times_s.get(frame_index)?;
        Some(format!(
            "Frame {} at {:.1}s",
            frame_index + 1,
            self.to_relative(*time)
        ))
    }

    /// Index of the sampled frame nearest an absolute time; ties go to the earlier frame.
    pub fn nearest_frame(&self, absolute_s: f64) -> usize {
        let after = self
            .frame_times_s
            .partition_point(|time| *time < absolute_s);
        if after == 0 {
            return 0;
        }
        if after == self.frame_times_s.len() {
            return after - 1;
        }
        let before_gap = absolute_s - self.frame_times_s[after - 1];
        let after_gap = self.frame_times_s[after] - absolute_s;
        if after_gap < before_gap {
            after
        } else {
            after - 1
        }
    }
}

/// A claim mapped to the source video.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MappedClaim {
    /// Object name as the model wrote it.
    pub object: String,
    /// Boxes in displayed source pixels.
    pub boxes: Vec<BoundingBox>,
    /// Boxes in the model-input pixels the model wrote.
    pub model_boxes: Vec<BoundingBox>,
    /// Boxes in coded (decoded picture, before rotation) source pixels.
    pub coded_boxes: Vec<BoundingBox>,
    /// Absolute video time, seconds, when the model gave one.
    pub time_s: Option<f64>,
    /// The time the model wrote (segment-relative).
    pub relative_time_s: Option<f64>,
    /// Index within the segment of the nearest sampled frame, when the claim has a time.
    pub frame_index: Option<usize>,
    /// Absolute time of that frame.
    pub frame_time_s: Option<f64>,
    /// Where the claim was written.
    pub section: Section,
    /// P("yes") when the model was asked whether the crop of the first box at the claim's frame
    /// shows the object (`vidx … --verify`), in `[0, 1]`; absent when not verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
}

impl MappedClaim {
    /// Whether the claim has a box and a time, as a moderation flag needs.
    pub fn is_grounded(&self) -> bool {
        !self.boxes.is_empty() && self.time_s.is_some()
    }
}

/// A time span mapped to absolute video time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbsoluteSpan {
    /// Absolute start, seconds.
    pub start_s: f64,
    /// Absolute end, seconds.
    pub end_s: f64,
    /// Where the span was written.
    pub section: Section,
}

/// Maps one claim to the source video.
pub fn map_claim(claim: &Claim, geometry: &FrameGeometry, clock: &SegmentClock) -> MappedClaim {
    let time_s = claim.time_s.map(|relative| clock.to_absolute(relative));
    let frame_index = time_s.map(|absolute| clock.nearest_frame(absolute));
    MappedClaim {
        object: claim.object.clone(),
        boxes: claim
            .boxes
            .iter()
            .map(|bounding_box| geometry.model_to_displayed(*bounding_box))
            .collect(),
        model_boxes: claim.boxes.clone(),
        coded_boxes: claim
            .boxes
            .iter()
            .map(|bounding_box| geometry.model_to_coded(*bounding_box))
            .collect(),
        time_s,
        relative_time_s: claim.time_s,
        frame_index,
        frame_time_s: frame_index.map(|index| clock.frame_times_s[index]),
        section: claim.section,
        confidence: None,
    }
}

/// Maps every claim of a parsed output to the source video.
pub fn map_claims(
    parsed: &ParsedOutput,
    geometry: &FrameGeometry,
    clock: &SegmentClock,
) -> Vec<MappedClaim> {
    parsed
        .claims
        .iter()
        .map(|claim| map_claim(claim, geometry, clock))
        .collect()
}

/// Maps a segment-relative span to absolute time.
pub fn map_span(span: &TimeSpan, clock: &SegmentClock) -> AbsoluteSpan {
    AbsoluteSpan {
        start_s: clock.to_absolute(span.start_s),
        end_s: clock.to_absolute(span.end_s),
        section: span.section,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(x1: f64, y1: f64, x2: f64, y2: f64) -> BoundingBox {
        BoundingBox { x1, y1, x2, y2 }
    }

    fn assert_near(actual: BoundingBox, expected: BoundingBox) {
        let close = actual
            .to_array()
            .iter()
            .zip(expected.to_array())
            .all(|(a, b)| (a - b).abs() < 1e-9);
        assert!(close, "{actual:?} != {expected:?}");
    }

    #[test]
    fn resize_only_scales_each_axis() {
        // 1920x1080 shown to the model as 448x252: x scale 1920/448, y scale 1080/252.
        let geometry = FrameGeometry::new(1920, 1080, Rotation::R0, 448, 252).unwrap();
        let mapped = geometry.model_to_displayed(bbox(224.0, 126.0, 448.0, 252.0));
        assert_eq!(mapped, bbox(960.0, 540.0, 1920.0, 1080.0));
        let mapped = geometry.model_to_displayed(bbox(28.0, 14.0, 56.0, 42.0));
        assert_eq!(mapped, bbox(120.0, 60.0, 240.0, 180.0));
        assert_eq!(
            geometry.model_to_coded(bbox(28.0, 14.0, 56.0, 42.0)),
            bbox(120.0, 60.0, 240.0, 180.0)
        );
    }

    #[test]
    fn portrait_phone_video_rotated_90() {
        // Coded 1920x1080 with rotate=90: displayed 1080x1920, model saw 252x448 (upright).
        let geometry = FrameGeometry::new(1920, 1080, Rotation::R90, 252, 448).unwrap();
        assert_eq!(geometry.displayed_size(), (1080, 1920));
        // Model box [21,28,42,112]: x scale 1080/252 = 30/7, y scale 1920/448 = 30/7.
        let displayed = geometry.model_to_displayed(bbox(21.0, 28.0, 42.0, 112.0));
        assert_near(displayed, bbox(90.0, 120.0, 180.0, 480.0));
        // Displayed (x, y) comes from coded (y, H - x) with H = 1080:
        // corner (90,120) -> (120, 990); corner (180,480) -> (480, 900).
        let coded = geometry.displayed_to_coded(displayed);
        assert_near(coded, bbox(120.0, 900.0, 480.0, 990.0));
    }

    #[test]
    fn rotation_180_and_270() {
        let geometry = FrameGeometry::new(640, 480, Rotation::R180, 640, 480).unwrap();
        assert_eq!(
            geometry.displayed_to_coded(bbox(10.0, 20.0, 110.0, 60.0)),
            bbox(530.0, 420.0, 630.0, 460.0)
        );
        let geometry = FrameGeometry::new(640, 480, Rotation::R270, 480, 640).unwrap();
        assert_eq!(geometry.displayed_size(), (480, 640));
        // Displayed (x, y) comes from coded (W - y, x) with W = 640:
        // (10,20) -> (620, 10); (110,60) -> (580, 110).
        assert_eq!(
            geometry.displayed_to_coded(bbox(10.0, 20.0, 110.0, 60.0)),
            bbox(580.0, 10.0, 620.0, 110.0)
        );
    }

    #[test]
    fn mirrored_geometry_undoes_the_mirror_before_the_rotation() {
        // A horizontal flip: displayed (x, y) comes from coded (W - x, y).
        let flip = FrameGeometry::new(640, 480, Rotation::R0, 640, 480)
            .unwrap()
            .mirrored(true);
        assert_eq!(
            flip.displayed_to_coded(bbox(10.0, 20.0, 110.0, 60.0)),
            bbox(530.0, 20.0, 630.0, 60.0)
        );
        // A transpose (quarter turn, then mirror): displayed (x, y) comes from coded (y, x).
        let transpose = FrameGeometry::new(640, 480, Rotation::R90, 480, 640)
            .unwrap()
            .mirrored(true);
        assert_eq!(
            transpose.displayed_to_coded(bbox(10.0, 20.0, 110.0, 60.0)),
            bbox(20.0, 10.0, 60.0, 110.0)
        );
        // Documents from before the field read as not mirrored.
        let mut value = serde_json::to_value(flip).unwrap();
        value.as_object_mut().unwrap().remove("mirrored");
        let old: FrameGeometry = serde_json::from_value(value).unwrap();
        assert!(!old.mirrored);
    }

    #[test]
    fn whole_frame_maps_to_whole_coded_frame_for_every_rotation() {
        for degrees in [0, 90, 180, 270] {
            let rotation = Rotation::from_degrees_clockwise(degrees).unwrap();
            let geometry = FrameGeometry::new(800, 600, rotation, 112, 84).unwrap();
            let whole = bbox(0.0, 0.0, 112.0, 84.0);
            let (width, height) = geometry.displayed_size();
            assert_eq!(
                geometry.model_to_displayed(whole),
                bbox(0.0, 0.0, f64::from(width), f64::from(height))
            );
            assert_eq!(
                geometry.model_to_coded(whole),
                bbox(0.0, 0.0, 800.0, 600.0),
                "rotation {degrees}"
            );
        }
    }

    #[test]
    fn rotation_degrees_normalise() {
        assert_eq!(
            Rotation::from_degrees_clockwise(-90).unwrap(),
            Rotation::R270
        );
        assert_eq!(
            Rotation::from_degrees_clockwise(450).unwrap(),
            Rotation::R90
        );
        assert!(Rotation::from_degrees_clockwise(45).is_err());
        assert!(FrameGeometry::new(0, 10, Rotation::R0, 10, 10).is_err());
    }

    #[test]
    fn times_are_segment_relative_and_tie_to_nearest_frame() {
        // Segment 2 covers 60..90 s, frames sampled every 2 s from 61 s.
        let frames: Vec<f64> = (0..15).map(|i| 61.0 + 2.0 * f64::from(i)).collect();
        let clock = SegmentClock::new(2, 60.0, 90.0, frames).unwrap();
        assert_eq!(clock.frame_label(0).unwrap(), "Frame 1 at 1.0s");
        assert_eq!(clock.frame_label(3).unwrap(), "Frame 4 at 7.0s");
        assert_eq!(clock.to_absolute(9.0), 69.0);
        // 69 s lies on frame 4 (61 + 8).
        assert_eq!(clock.nearest_frame(69.0), 4);
        // 69.9 s is nearer 69 than 71; 70.1 nearer 71; 70 is a tie, earlier wins.
        assert_eq!(clock.nearest_frame(69.9), 4);
        assert_eq!(clock.nearest_frame(70.1), 5);
        assert_eq!(clock.nearest_frame(70.0), 4);
        assert_eq!(clock.nearest_frame(0.0), 0);
        assert_eq!(clock.nearest_frame(1000.0), 14);

        let geometry = FrameGeometry::new(1280, 720, Rotation::R0, 640, 360).unwrap();
        let claim = Claim {
            object: "man".into(),
            boxes: vec![bbox(249.0, 60.0, 395.0, 252.0)],
            time_s: Some(9.0),
            section: Section::Think,
            offset: 0,
        };
        let mapped = map_claim(&claim, &geometry, &clock);
        assert_eq!(mapped.time_s, Some(69.0));
        assert_eq!(mapped.frame_index, Some(4));
        assert_eq!(mapped.frame_time_s, Some(69.0));
        assert_eq!(mapped.boxes, vec![bbox(498.0, 120.0, 790.0, 504.0)]);
        let span = map_span(
            &TimeSpan {
                start_s: 12.0,
                end_s: 15.5,
                section: Section::Answer,
            },
            &clock,
        );
        assert_eq!((span.start_s, span.end_s), (72.0, 75.5));
    }

    #[test]
    fn segment_validation() {
        assert!(SegmentClock::new(0, 10.0, 5.0, vec![7.0]).is_err());
        assert!(SegmentClock::new(0, 0.0, 5.0, vec![]).is_err());
        assert!(SegmentClock::new(0, 0.0, 5.0, vec![3.0, 1.0]).is_err());
        assert!(SegmentClock::new(0, 0.0, 5.0, vec![6.0]).is_err());
    }
}
