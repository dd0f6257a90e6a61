//! `vidx report` rendered in a real headless Chromium: the boxes must be drawn where the index says.
//!
//! A synthetic teal frame is stored as the thumbnail of the frame two claims point at. The test
//! renders the report, screenshots it, finds the teal frame on the screenshot, and checks that the
//! magenta box outlines sit at the pixels the index's source-pixel boxes map to. Chromium comes from
//! `scripts/setup.sh` (Debian package `chromium`); `VIDX_CHROMIUM` overrides the binary.

mod evidence_support;

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use evidence_support::{MODERATION_POLICY, clocks, header};
use image::{ImageFormat, Rgb, RgbImage};
use vidx_testkit::chromium::Chromium;
use vidx_worker::evidence::document::VideoDocumentBuilder;
use vidx_worker::evidence::report::{FRAME_DISPLAY_WIDTH, write_report};
use vidx_worker::evidence::store::EncodedImage;
use vidx_worker::evidence::{EvidenceIndex, ModerationPolicy, QuestionPlan, Rotation};

const TEAL: [u8; 3] = [0, 128, 128];
const MAGENTA: [u8; 3] = [255, 0, 255];

fn near(pixel: &Rgb<u8>, color: [u8; 3], tolerance: u8) -> bool {
    pixel
        .0
        .iter()
        .zip(color)
        .all(|(a, b)| a.abs_diff(b) <= tolerance)
}

fn teal_png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_pixel(width, height, Rgb(TEAL));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[tokio::test]
async fn boxes_are_drawn_where_the_index_says() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index_dir = dir.path().join("index");
    let index = EvidenceIndex::from_url(index_dir.to_str().unwrap())?;

    // A flagged video: 1280x720, model input 448x252 (scale 20/7). Two claims on frame 4 of segment 0
    // (frames at 1, 3, 5, 7, 9 s): a knife and a hand.
    let policy = ModerationPolicy::from_yaml(MODERATION_POLICY)?;
    let task = QuestionPlan::moderation(policy)?;
    let mut builder = VideoDocumentBuilder::new(header(
        "s3://videos/flagged.mp4",
        task.clone(),
        Rotation::R0,
    ));
    for clock in clocks() {
        builder.add_segment(clock)?;
    }
    // Model boxes [70,35,210,182] and [259,14,420,140] are, in source pixels, [200,100,600,520] and
    // [740,40,1200,400].
    builder.record_answer(
        0,
        "weapons",
        "<think>A <obj>knife</obj><box>[70,35,210,182]</box>at<t>9.0</t>s and a <obj>hand</obj><box>[259,14,420,140]</box>at<t>9.2</t>s</think><answer>Yes</answer>",
    )?;
    builder.record_answer(0, "smoking", "<think>No.</think><answer>No</answer>")?;
    let key = index.document_key(
        &evidence_support::identity("s3://videos/flagged.mp4"),
        &evidence_support::model(),
        &task.hash(),
    );
    let thumbnail = index
        .put_thumbnail(
            &key,
            0,
            4,
            EncodedImage {
                bytes: Bytes::from(teal_png(320, 180)),
                content_type: "image/png".into(),
                width: 320,
                height: 180,
            },
        )
        .await?;
    builder.set_thumbnail(0, 4, thumbnail)?;
    let flagged = builder.finish();
    assert!(flagged.is_flagged());
    index.write_document(&flagged).await?;

    // An unflagged video whose URL sorts first: the report must still put the flagged one first.
    let mut builder = VideoDocumentBuilder::new(header(
        "s3://videos/aaa-clean.mp4",
        task.clone(),
        Rotation::R0,
    ));
    builder.add_segment(clocks().remove(0))?;
    builder.record_answer(
        0,
        "weapons",
        "<think>A <obj>cup</obj><box>[10,10,40,40]</box>at<t>2</t>s</think><answer>No</answer>",
    )?;
    index.write_document(&builder.finish()).await?;

    let html_path = dir.path().join("report.html");
    assert_eq!(write_report(&index, &html_path).await?, 2);
    let html = std::fs::read_to_string(&html_path)?;
    let flagged_at = html.find("s3://videos/flagged.mp4").unwrap();
    let clean_at = html.find("s3://videos/aaa-clean.mp4").unwrap();
    assert!(flagged_at < clean_at, "flagged video first");
    assert!(html.contains("flagged: weapons (severity high) in segments 0"));
    assert!(!html.contains("src=\"http"), "self-contained");

    let screenshot = dir.path().join("shot.png");
    let output = Chromium::find()?.screenshot(
        &html_path,
        &screenshot,
        (1000, 1400),
        Duration::from_secs(120),
    )?;
    assert!(
        screenshot.exists(),
        "chromium wrote no screenshot: {}\n{}",
        output.status,
        output.stderr
    );
    let shot = image::open(&screenshot)?.to_rgb8();

    // Find the teal frame: the bounding box of teal pixels.
    let (mut left, mut top, mut right, mut bottom) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, pixel) in shot.enumerate_pixels() {
        if near(pixel, TEAL, 2) {
            left = left.min(x);
            top = top.min(y);
            right = right.max(x);
            bottom = bottom.max(y);
        }
    }
    assert!(left < right, "no teal frame on the screenshot");
    // 1280x720 drawn 480 CSS pixels wide: 480x270.
    assert_eq!(right - left + 1, FRAME_DISPLAY_WIDTH, "frame width");
    assert_eq!(bottom - top + 1, 270, "frame height");

    // Source pixels scale by 480/1280 = 0.375: knife [200,100,600,520] -> [75,37.5,225,195];
    // hand [740,40,1200,400] -> [277.5,15,450,150].
    let at = |x: f64, y: f64| shot.get_pixel(left + x.round() as u32, top + y.round() as u32);
    let magenta = |x: f64, y: f64| near(at(x, y), MAGENTA, 40);
    let teal = |x: f64, y: f64| near(at(x, y), TEAL, 2);
    for [x1, y1, x2, y2] in [[75.0, 37.5, 225.0, 195.0], [277.5, 15.0, 450.0, 150.0]] {
        let (mid_x, mid_y) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
        for (x, y) in [(x1, mid_y), (x2, mid_y), (mid_x, y1), (mid_x, y2)] {
            assert!(magenta(x, y), "box edge at ({x}, {y}) is {:?}", at(x, y));
        }
        // Just inside and outside the edges, and the middle: frame, not box.
        for (x, y) in [
            (x1 + 5.0, mid_y),
            (x1 - 5.0, mid_y),
            (mid_x, y1 + 5.0),
            (mid_x, y2 + 5.0),
            (mid_x, mid_y),
        ] {
            assert!(
                teal(x, y),
                "({x}, {y}) should be frame but is {:?}",
                at(x, y)
            );
        }
    }
    Ok(())
}
