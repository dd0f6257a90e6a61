//! `vidx report` rendered in a real headless Chromium, driven over the DevTools protocol: boxes
//! must be drawn where the documents say, failed videos listed with their stage and reason, a
//! video without claims still shows its frames, and typing in the filter box hides what does not
//! match. Every check is made on a screenshot's pixels or on the rendered page (`innerText`
//! only holds what is rendered).
//!
//! The index is written through the real store: a flagged video whose frame 4 of segment 0 is a
//! teal thumbnail with two boxed claims on it, a clean video with no claims whose every frame is
//! orange, and a pass manifest (written by `finish_pass`) in which a third video failed at
//! `probe`. Chromium comes from `scripts/install-test-servers.sh` (Debian package `chromium`);
//! `VIDX_CHROMIUM` overrides the binary.

mod evidence_support;

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use evidence_support::{MODERATION_POLICY, clocks, header};
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::Value;
use vidx_testkit::chromium::{Chromium, DevTools};
use vidx_worker::evidence::document::VideoDocumentBuilder;
use vidx_worker::evidence::report::{FRAME_DISPLAY_WIDTH, FRAME_STRIP_WIDTH, write_report};
use vidx_worker::evidence::store::{EncodedImage, OutcomeStatus};
use vidx_worker::evidence::{
    EvidenceIndex, ModerationPolicy, PassManifest, QuestionPlan, Rotation,
};

const TEAL: [u8; 3] = [0, 128, 128];
const ORANGE: [u8; 3] = [255, 140, 0];
const MAGENTA: [u8; 3] = [255, 0, 255];
const VIEWPORT: (u32, u32) = (1000, 3200);
const BROKEN_URL: &str = "s3://videos/broken-upload.mp4";
const BROKEN_REASON: &str = "moov atom not found";

fn near(pixel: &Rgb<u8>, color: [u8; 3], tolerance: u8) -> bool {
    pixel
        .0
        .iter()
        .zip(color)
        .all(|(a, b)| a.abs_diff(b) <= tolerance)
}

fn solid_png(color: [u8; 3], width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_pixel(width, height, Rgb(color));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

fn png(bytes: Bytes) -> EncodedImage {
    EncodedImage {
        bytes,
        content_type: "image/png".into(),
        width: 320,
        height: 180,
    }
}

/// Writes the three-video index described in the file's header; returns the index directory.
async fn write_index(dir: &std::path::Path) -> anyhow::Result<EvidenceIndex> {
    let index = EvidenceIndex::from_url(dir.join("index").to_str().unwrap())?;
    let policy = ModerationPolicy::from_yaml(MODERATION_POLICY)?;
    let task = QuestionPlan::moderation(policy)?;
    let mut manifest = PassManifest::new("pass-report", evidence_support::model(), &task);

    // A flagged video: 1280x720, model input 448x252 (scale 20/7). Two claims on frame 4 of
    // segment 0 (frames at 1, 3, 5, 7, 9 s): a knife and a hand.
    let flagged_url = "s3://videos/flagged.mp4";
    let mut builder = VideoDocumentBuilder::new(header(flagged_url, task.clone(), Rotation::R0));
    for clock in clocks() {
        builder.add_segment(clock)?;
    }
    // Model boxes [70,35,210,182] and [259,14,420,140] are, in source pixels, [200,100,600,520]
    // and [740,40,1200,400].
    builder.record_answer(
        0,
        "weapons",
        "<think>A <obj>knife</obj><box>[70,35,210,182]</box>at<t>9.0</t>s and a <obj>hand</obj><box>[259,14,420,140]</box>at<t>9.2</t>s</think><answer>Yes</answer>",
    )?;
    builder.record_answer(0, "smoking", "<think>No.</think><answer>No</answer>")?;
    let key = index.document_key(
        &evidence_support::identity(flagged_url),
        &evidence_support::model(),
        &task.hash(),
    );
    let teal = Bytes::from(solid_png(TEAL, 320, 180));
    let thumbnail = index.put_thumbnail(&key, 0, 4, png(teal)).await?;
    builder.set_thumbnail(0, 4, thumbnail)?;
    let flagged = builder.finish();
    assert!(flagged.is_flagged());
    let flagged_key = index.write_document(&flagged).await?;
    manifest.record(
        flagged_url,
        OutcomeStatus::Indexed {
            document_key: flagged_key.to_string(),
        },
    );

    // A clean video without a single claim, whose URL sorts first: it comes after the flagged
    // one, and its orange frames still show.
    let clean_url = "s3://videos/aaa-clean.mp4";
    let mut builder = VideoDocumentBuilder::new(header(clean_url, task.clone(), Rotation::R0));
    builder.add_segment(clocks().remove(0))?;
    builder.record_answer(0, "weapons", "<think>Nothing.</think><answer>No</answer>")?;
    builder.record_answer(0, "smoking", "<think>Nothing.</think><answer>No</answer>")?;
    let key = index.document_key(
        &evidence_support::identity(clean_url),
        &evidence_support::model(),
        &task.hash(),
    );
    let orange = Bytes::from(solid_png(ORANGE, 320, 180));
    for frame in 0..15 {
        let thumbnail = index
            .put_thumbnail(&key, 0, frame, png(orange.clone()))
            .await?;
        builder.set_thumbnail(0, frame, thumbnail)?;
    }
    let clean = builder.finish();
    assert_eq!(clean.claim_count(), 0);
    let clean_key = index.write_document(&clean).await?;
    manifest.record(
        clean_url,
        OutcomeStatus::Indexed {
            document_key: clean_key.to_string(),
        },
    );

    manifest.record(
        BROKEN_URL,
        OutcomeStatus::Failed {
            stage: "probe".into(),
            reason: BROKEN_REASON.into(),
        },
    );
    index.finish_pass(manifest).await?;
    Ok(index)
}

/// A rectangle on the page, CSS pixels (= screenshot pixels at device scale 1).
#[derive(Debug, Clone, Copy)]
struct Rect {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

fn rect_of(page: &mut DevTools, selector: &str) -> anyhow::Result<Rect> {
    let value = page.evaluate(&format!(
        "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()",
        serde_json::to_string(selector)?
    ))?;
    let number = |i: usize| value[i].as_f64().unwrap();
    Ok(Rect {
        left: number(0),
        top: number(1),
        width: number(2),
        height: number(3),
    })
}

fn screenshot(page: &mut DevTools) -> anyhow::Result<RgbImage> {
    let bytes = page.screenshot_png()?;
    Ok(image::load_from_memory(&bytes)?.to_rgb8())
}

fn count(shot: &RgbImage, color: [u8; 3]) -> usize {
    shot.pixels().filter(|pixel| near(pixel, color, 2)).count()
}

fn text(page: &mut DevTools, expression: &str) -> anyhow::Result<String> {
    Ok(page
        .evaluate(expression)?
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Checks that `frame` is drawn as a solid `color` rectangle exactly at `rect`, and that each
/// source-pixel box is stroked magenta at `box * scale` from its corner, with frame inside.
fn assert_frame_and_boxes(shot: &RgbImage, rect: Rect, color: [u8; 3], boxes: &[[f64; 4]]) {
    let (left, top) = (rect.left.round() as i64, rect.top.round() as i64);
    let at = |x: f64, y: f64| {
        *shot.get_pixel(
            (left + x.round() as i64) as u32,
            (top + y.round() as i64) as u32,
        )
    };
    let (width, height) = (rect.width, rect.height);
    // The frame's corners are its colour; one pixel outside them is not.
    for (x, y) in [
        (1.0, 1.0),
        (width - 2.0, 1.0),
        (1.0, height - 2.0),
        (width - 2.0, height - 2.0),
    ] {
        assert!(
            near(&at(x, y), color, 2),
            "frame corner ({x}, {y}) is {:?}",
            at(x, y)
        );
    }
    for (x, y) in [
        (-1.0, height / 2.0),
        (width, height / 2.0),
        (width / 2.0, -1.0),
        (width / 2.0, height),
    ] {
        assert!(
            !near(&at(x, y), color, 2),
            "({x}, {y}) outside the frame is {:?}",
            at(x, y)
        );
    }
    let scale = width / 1280.0;
    for [x1, y1, x2, y2] in boxes.iter().map(|b| b.map(|v| v * scale)) {
        let (mid_x, mid_y) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
        for (x, y) in [(x1, mid_y), (x2, mid_y), (mid_x, y1), (mid_x, y2)] {
            assert!(
                near(&at(x, y), MAGENTA, 40),
                "box edge at ({x}, {y}) is {:?}",
                at(x, y)
            );
        }
        // Just inside and outside the edges, and the middle: frame, not box.
        let inset = 4.0;
        for (x, y) in [
            (x1 + inset, mid_y),
            (x1 - inset, mid_y),
            (mid_x, y1 + inset),
            (mid_x, y2 + inset),
            (mid_x, mid_y),
        ] {
            assert!(
                near(&at(x, y), color, 2),
                "({x}, {y}) should be frame but is {:?}",
                at(x, y)
            );
        }
    }
}

#[tokio::test]
async fn report_in_chromium_boxes_failures_and_filter() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index = write_index(dir.path()).await?;
    let html_path = dir.path().join("report.html");
    let counts = write_report(&index, &html_path).await?;
    assert_eq!((counts.videos, counts.failed), (2, 1));
    let html = std::fs::read_to_string(&html_path)?;
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );

    let mut page = Chromium::find()?.open(&html_path, VIEWPORT, Duration::from_secs(60))?;
    let order = page.evaluate(
        "Array.from(document.querySelectorAll('section.video h2')).map(h => h.innerText)",
    )?;
    assert_eq!(
        order,
        serde_json::json!(["s3://videos/flagged.mp4", "s3://videos/aaa-clean.mp4"]),
        "flagged video first"
    );
    let verdicts = text(
        &mut page,
        "document.querySelector('section.video .verdicts').innerText",
    )?;
    assert!(verdicts.contains("weapons\thigh\tflagged\t0"), "{verdicts}");
    assert!(
        verdicts.contains("smoking\tlow\tnot flagged\tnone"),
        "{verdicts}"
    );

    // The failed section names the broken upload, its stage and its reason.
    let failed = text(&mut page, "document.getElementById('failed').innerText")?;
    assert!(failed.contains("failed videos (1)"), "{failed}");
    assert!(
        failed.contains(&format!("{BROKEN_URL}\tprobe\t{BROKEN_REASON}")),
        "{failed}"
    );

    // Everything checked must be inside the viewport the screenshot covers.
    let last = rect_of(&mut page, "section.video:last-of-type")?;
    assert!(
        last.top + last.height < f64::from(VIEWPORT.1),
        "page taller than the viewport: {last:?}"
    );
    let shot = screenshot(&mut page)?;

    // The large frame: 480 CSS pixels wide, 270 high, boxes scaled by 480/1280.
    let large = rect_of(&mut page, "section.video figure.claim-frame svg")?;
    assert_eq!(
        (large.width, large.height),
        (f64::from(FRAME_DISPLAY_WIDTH), 270.0)
    );
    let boxes = [[200.0, 100.0, 600.0, 520.0], [740.0, 40.0, 1200.0, 400.0]];
    assert_frame_and_boxes(&shot, large, TEAL, &boxes);
    // The same frame in the strip, 160 wide: the same boxes at 160/1280.
    let strip = rect_of(
        &mut page,
        "section.video figure.strip-frame[data-segment='0'][data-frame='4'] svg",
    )?;
    assert_eq!(
        (strip.width, strip.height),
        (f64::from(FRAME_STRIP_WIDTH), 90.0)
    );
    assert_frame_and_boxes(&shot, strip, TEAL, &boxes);

    // The clean video has no claims, and all 15 of its frames are drawn (160x90 each, minus
    // nothing: no box covers them).
    let clean_frames = page.evaluate(
        "document.querySelectorAll('section.video:last-of-type figure.strip-frame').length",
    )?;
    assert_eq!(clean_frames, Value::from(15));
    let first_clean = rect_of(
        &mut page,
        "section.video:last-of-type figure.strip-frame svg",
    )?;
    assert_frame_and_boxes(&shot, first_clean, ORANGE, &[]);
    assert_eq!(
        count(&shot, ORANGE),
        15 * 160 * 90,
        "every orange frame, whole"
    );
    let teal_before = count(&shot, TEAL);

    // Typing "flagged" hides the clean video (and the failed list): no orange pixel is left,
    // the teal frames stay.
    page.type_into("#filter", "flagged")?;
    let shown = text(
        &mut page,
        "document.getElementById('filter-count').innerText",
    )?;
    assert_eq!(shown, "1 of 2 videos shown");
    let filtered = screenshot(&mut page)?;
    assert_eq!(count(&filtered, ORANGE), 0, "the clean video is hidden");
    assert_eq!(
        count(&filtered, TEAL),
        teal_before,
        "the flagged video still shows"
    );
    let failed_shown = page.evaluate("document.getElementById('failed').checkVisibility()")?;
    assert_eq!(failed_shown, Value::Bool(false), "no failed video matches");

    // Deleting the word brings everything back; "broken" then shows only the failed video.
    for _ in 0.."flagged".len() {
        page.press_key("Backspace", 8)?;
    }
    assert_eq!(
        text(
            &mut page,
            "document.getElementById('filter-count').innerText"
        )?,
        "2 of 2 videos shown"
    );
    assert_eq!(count(&screenshot(&mut page)?, ORANGE), 15 * 160 * 90);
    page.type_into("#filter", "broken")?;
    let only_failed = screenshot(&mut page)?;
    assert_eq!(count(&only_failed, ORANGE) + count(&only_failed, TEAL), 0);
    let failed_shown = page.evaluate("document.getElementById('failed').checkVisibility()")?;
    assert_eq!(failed_shown, Value::Bool(true), "the broken upload matches");
    Ok(())
}
