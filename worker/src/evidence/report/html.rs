//! The report's HTML, written from documents and failures held in memory (no I/O here).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use base64::Engine as _;

use super::page::{SCRIPT, STYLE};
use super::{
    EmbeddedImage, FILTER_INPUT_ID, FRAME_DISPLAY_WIDTH, FRAME_STRIP_WIDTH, FailedVideo,
    PassSummary, ReportInput, ReportVideo,
};
use crate::evidence::document::{ClaimRecord, FrameRecord, VideoDocument};
use crate::evidence::parse::BoundingBox;
use crate::evidence::task::Severity;

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// A claim's confidence in [0, 1], when the pass verified its claims. Read through the claim's
/// serialized form so documents written with or without the field render alike.
fn claim_confidence(claim: &ClaimRecord) -> Option<f64> {
    serde_json::to_value(claim)
        .ok()?
        .get("confidence")?
        .as_f64()
}

fn confidence_text(claim: &ClaimRecord) -> String {
    claim_confidence(claim).map_or_else(String::new, |confidence| {
        format!(" <span class=\"meta\">confidence {confidence:.2}</span>")
    })
}

fn boxes_text(boxes: &[BoundingBox]) -> String {
    boxes
        .iter()
        .map(|b| format!("[{:.0},{:.0},{:.0},{:.0}]", b.x1, b.y1, b.x2, b.y2))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every claim of a document with the question it answers and its segment, in document order.
fn claims(document: &VideoDocument) -> impl Iterator<Item = (u32, &str, &ClaimRecord)> {
    document.segments.iter().flat_map(|segment| {
        segment.answers.iter().flat_map(move |answer| {
            answer
                .claims
                .iter()
                .map(move |claim| (segment.index, answer.question_id.as_str(), claim))
        })
    })
}

/// The lowercase text the filter matches a video against.
fn search_text(document: &VideoDocument) -> String {
    let mut text = format!("{} {}", document.video.url, document.video_id);
    if document.is_flagged() {
        text.push_str(" flagged");
    }
    for summary in document.moderation.iter().filter(|summary| summary.flagged) {
        let _ = write!(text, " {}", summary.category);
    }
    for segment in &document.segments {
        for answer in &segment.answers {
            let _ = write!(
                text,
                " {} {}",
                answer.question_id,
                answer.answer.as_deref().unwrap_or("")
            );
            for claim in &answer.claims {
                let _ = write!(text, " {}", claim.object);
            }
        }
    }
    text.to_lowercase()
}

/// Renders the report page.
pub fn render_report(input: &ReportInput) -> String {
    let mut ordered: Vec<&ReportVideo> = input.videos.iter().collect();
    ordered.sort_by(|a, b| {
        let severity = |video: &ReportVideo| video.document.worst_flag();
        severity(b)
            .cmp(&severity(a))
            .then_with(|| a.document.video.url.cmp(&b.document.video.url))
    });
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<title>vidx evidence report</title><style>");
    html.push_str(STYLE);
    html.push_str("</style></head><body>\n");
    let flagged = ordered
        .iter()
        .filter(|video| video.document.is_flagged())
        .count();
    let _ = writeln!(
        html,
        "<h1>vidx evidence report: {} videos, {flagged} flagged, {} failed</h1>",
        ordered.len(),
        input.failed.len()
    );
    render_pass(&mut html, input.pass.as_ref());
    let _ = writeln!(
        html,
        "<div class=\"toolbar\"><input id=\"{FILTER_INPUT_ID}\" type=\"search\" \
         placeholder=\"filter: words in URL, objects, answers, categories\" autocomplete=\"off\">\
         <span id=\"filter-count\"></span></div>"
    );
    render_failed(&mut html, &input.failed);
    for video in ordered {
        render_video(&mut html, video, &input.images);
    }
    html.push_str("<script>");
    html.push_str(SCRIPT);
    html.push_str("</script>\n</body></html>\n");
    html
}

fn render_pass(html: &mut String, pass: Option<&PassSummary>) {
    let Some(pass) = pass else {
        html.push_str("<div class=\"pass\">no pass manifest in this index</div>\n");
        return;
    };
    let _ = writeln!(
        html,
        "<div class=\"pass\">latest pass {} · model {} · task {} · {} indexed, {} skipped (already indexed), {} failed</div>",
        escape(&pass.pass_id),
        escape(&pass.model),
        escape(&pass.task_name),
        pass.indexed,
        pass.skipped,
        pass.failed
    );
}

fn render_failed(html: &mut String, failed: &[FailedVideo]) {
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(
        html,
        "<section id=\"failed\"><h2>failed videos ({})</h2><table><tr><th>video</th><th>stage</th><th>reason</th></tr>",
        failed.len()
    );
    for video in failed {
        let search = format!("{} {} {}", video.url, video.stage, video.reason).to_lowercase();
        let _ = writeln!(
            html,
            "<tr class=\"failed-video\" data-search=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&search),
            escape(&video.url),
            escape(&video.stage),
            escape(&video.reason)
        );
    }
    html.push_str("</table></section>\n");
}

fn render_video(html: &mut String, video: &ReportVideo, images: &HashMap<String, EmbeddedImage>) {
    let document = &video.document;
    let flagged_class = if document.is_flagged() {
        " flagged"
    } else {
        ""
    };
    let _ = writeln!(
        html,
        "<section class=\"video{flagged_class}\" data-video-id=\"{}\" data-search=\"{}\">",
        escape(&document.video_id),
        escape(&search_text(document))
    );
    let _ = writeln!(html, "<h2>{}</h2>", escape(&document.video.url));
    let _ = writeln!(
        html,
        "<div class=\"meta\">{}x{} rotation {} · {:.1}s · {} segments · {} claims · model {} @ {} · task {} ({})</div>",
        document.probe.width,
        document.probe.height,
        document.probe.rotation,
        document.probe.duration_s,
        document.segments.len(),
        document.claim_count(),
        escape(&document.model.id),
        escape(&document.model.revision),
        escape(&document.task.task.name),
        escape(&document.task.hash.chars().take(12).collect::<String>()),
    );
    render_verdicts(html, document);
    render_timeline(html, document);
    render_strip(html, video, images);
    render_frames(html, video, images);
    render_answers(html, document);
    html.push_str("</section>\n");
}

fn render_verdicts(html: &mut String, document: &VideoDocument) {
    if document.moderation.is_empty() {
        return;
    }
    html.push_str(
        "<table class=\"verdicts\"><tr><th>category</th><th>severity</th><th>verdict</th><th>flagged segments</th></tr>",
    );
    for summary in &document.moderation {
        let segments: Vec<String> = summary
            .flagged_segments
            .iter()
            .map(u32::to_string)
            .collect();
        let (class, verdict) = if summary.flagged {
            (" class=\"flagged\"", "flagged")
        } else {
            ("", "not flagged")
        };
        let _ = write!(
            html,
            "<tr{class}><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td></tr>",
            escape(&summary.category),
            severity_label(summary.severity),
            if segments.is_empty() {
                "none".to_owned()
            } else {
                segments.join(", ")
            }
        );
    }
    html.push_str("</table>\n");
}

fn video_duration(document: &VideoDocument) -> f64 {
    document
        .segments
        .last()
        .map_or(document.probe.duration_s, |segment| {
            segment.end_s.max(document.probe.duration_s)
        })
}

fn render_timeline(html: &mut String, document: &VideoDocument) {
    let duration = video_duration(document);
    let percent = |time: f64| (time / duration * 100.0).clamp(0.0, 100.0);
    html.push_str("<div class=\"timeline\">");
    if duration > 0.0 {
        for segment in document.segments.iter().skip(1) {
            let _ = write!(
                html,
                "<span class=\"segment-edge\" style=\"left:{:.3}%\" title=\"segment {} from {:.1}s\"></span>",
                percent(segment.start_s),
                segment.index,
                segment.start_s
            );
        }
        for frame in document.segments.iter().flat_map(|segment| &segment.frames) {
            let _ = write!(
                html,
                "<span class=\"tick\" style=\"left:{:.3}%\" title=\"frame at {:.1}s\"></span>",
                percent(frame.time_s),
                frame.time_s
            );
        }
        for (_, _, claim) in claims(document) {
            let Some(time) = claim.time_s else { continue };
            let _ = write!(
                html,
                "<span class=\"mark\" style=\"left:{:.3}%\" title=\"{} at {time:.1}s\"></span>",
                percent(time),
                escape(&claim.object)
            );
        }
    }
    let _ = writeln!(
        html,
        "</div><div class=\"timeline-scale\"><span>0s</span><span>{duration:.1}s</span></div>"
    );
    // The same claims as text, in time order (claims without a time last).
    let mut timed: Vec<(u32, &str, &ClaimRecord)> = claims(document).collect();
    if timed.is_empty() {
        html.push_str("<div class=\"empty\">no claims</div>\n");
        return;
    }
    timed.sort_by(|a, b| {
        let time = |claim: &ClaimRecord| claim.time_s.unwrap_or(f64::INFINITY);
        time(a.2).total_cmp(&time(b.2))
    });
    html.push_str("<ol class=\"claims\">");
    for (segment_index, question_id, claim) in timed {
        let time = claim
            .time_s
            .map_or_else(|| "no time".to_owned(), |time| format!("{time:.1}s"));
        let _ = write!(
            html,
            "<li class=\"claim\">{time}: {} {} <span class=\"meta\">(segment {segment_index}, {})</span>{}</li>",
            escape(&claim.object),
            boxes_text(&claim.boxes),
            escape(question_id),
            confidence_text(claim)
        );
    }
    html.push_str("</ol>\n");
}

/// One frame as an `<svg>` `width` CSS pixels wide over the displayed source size, its
/// thumbnail (or grey) under the claims' boxes.
fn frame_svg(
    html: &mut String,
    document: &VideoDocument,
    width: u32,
    image: Option<&EmbeddedImage>,
    boxes: &[(&str, &BoundingBox)],
) {
    let (source_width, source_height) = document.geometry.displayed_size();
    let display_height = f64::from(width) * f64::from(source_height) / f64::from(source_width);
    let _ = write!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{display_height:.0}\" viewBox=\"0 0 {source_width} {source_height}\" preserveAspectRatio=\"none\">"
    );
    match image {
        Some(image) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
            let _ = write!(
                html,
                "<image x=\"0\" y=\"0\" width=\"{source_width}\" height=\"{source_height}\" preserveAspectRatio=\"none\" href=\"data:{};base64,{encoded}\"/>",
                escape(&image.content_type)
            );
        }
        None => {
            let _ = write!(
                html,
                "<rect x=\"0\" y=\"0\" width=\"{source_width}\" height=\"{source_height}\" fill=\"#808080\"/>"
            );
        }
    }
    for (object, bounding_box) in boxes {
        let _ = write!(
            html,
            "<rect class=\"box\" vector-effect=\"non-scaling-stroke\" x=\"{:.3}\" y=\"{:.3}\" width=\"{:.3}\" height=\"{:.3}\"><title>{}</title></rect>",
            bounding_box.x1,
            bounding_box.y1,
            bounding_box.x2 - bounding_box.x1,
            bounding_box.y2 - bounding_box.y1,
            escape(object)
        );
    }
    html.push_str("</svg>");
}

fn thumbnail<'a>(
    video: &ReportVideo,
    frame: &FrameRecord,
    images: &'a HashMap<String, EmbeddedImage>,
) -> Option<&'a EmbeddedImage> {
    let thumbnail = frame.thumbnail.as_ref()?;
    images.get(&super::thumbnail_full_key(
        &video.document_key,
        &thumbnail.key,
    ))
}

/// Claims with boxes grouped by the frame they are tied to: `(segment, frame index)`.
fn claims_by_frame(document: &VideoDocument) -> BTreeMap<(u32, usize), Vec<(&str, &ClaimRecord)>> {
    let mut by_frame: BTreeMap<(u32, usize), Vec<(&str, &ClaimRecord)>> = BTreeMap::new();
    for (segment_index, question_id, claim) in claims(document) {
        if let (Some(frame), false) = (claim.frame_index, claim.boxes.is_empty()) {
            by_frame
                .entry((segment_index, frame))
                .or_default()
                .push((question_id, claim));
        }
    }
    by_frame
}

fn boxes_of<'a>(claims: &[(&'a str, &'a ClaimRecord)]) -> Vec<(&'a str, &'a BoundingBox)> {
    claims
        .iter()
        .flat_map(|(_, claim)| {
            claim
                .boxes
                .iter()
                .map(|bounding_box| (claim.object.as_str(), bounding_box))
        })
        .collect()
}

fn render_strip(html: &mut String, video: &ReportVideo, images: &HashMap<String, EmbeddedImage>) {
    let document = &video.document;
    let by_frame = claims_by_frame(document);
    let frames = document.segments.iter().flat_map(|segment| {
        segment
            .frames
            .iter()
            .map(move |frame| (segment.index, frame))
    });
    html.push_str("<div class=\"strip\">");
    let mut any = false;
    for (segment_index, frame) in frames {
        any = true;
        let claims = by_frame
            .get(&(segment_index, frame.index))
            .map_or(&[][..], Vec::as_slice);
        let _ = write!(
            html,
            "<figure class=\"strip-frame\" data-segment=\"{segment_index}\" data-frame=\"{}\">",
            frame.index
        );
        frame_svg(
            html,
            document,
            FRAME_STRIP_WIDTH,
            thumbnail(video, frame, images),
            &boxes_of(claims),
        );
        let _ = write!(
            html,
            "<figcaption>{:.1}s</figcaption></figure>",
            frame.time_s
        );
    }
    if !any {
        html.push_str("<div class=\"empty\">no sampled frames recorded</div>");
    }
    html.push_str("</div>\n");
}

fn render_frames(html: &mut String, video: &ReportVideo, images: &HashMap<String, EmbeddedImage>) {
    let document = &video.document;
    html.push_str("<div class=\"frames\">\n");
    for ((segment_index, frame_index), claims) in claims_by_frame(document) {
        let frame = document
            .segments
            .iter()
            .find(|segment| segment.index == segment_index)
            .and_then(|segment| segment.frames.get(frame_index));
        let time = frame.map_or(0.0, |frame| frame.time_s);
        let image = frame.and_then(|frame| thumbnail(video, frame, images));
        let _ = write!(
            html,
            "<figure class=\"claim-frame\" data-segment=\"{segment_index}\" data-frame=\"{frame_index}\">"
        );
        frame_svg(
            html,
            document,
            FRAME_DISPLAY_WIDTH,
            image,
            &boxes_of(&claims),
        );
        html.push_str("\n<figcaption>");
        let _ = write!(
            html,
            "segment {segment_index}, frame {} at {time:.2}s<br>",
            frame_index + 1
        );
        for (question_id, claim) in &claims {
            let _ = write!(
                html,
                "<span class=\"claim\">{} {} at {:.1}s ({})</span>{}<br>",
                escape(&claim.object),
                boxes_text(&claim.boxes),
                claim.time_s.unwrap_or(0.0),
                escape(question_id),
                confidence_text(claim)
            );
        }
        html.push_str("</figcaption></figure>\n");
    }
    html.push_str("</div>\n");
}

fn render_answers(html: &mut String, document: &VideoDocument) {
    for segment in &document.segments {
        let _ = write!(
            html,
            "<div class=\"segment\"><b>segment {} ({:.1}s to {:.1}s)</b>",
            segment.index, segment.start_s, segment.end_s
        );
        for answer in &segment.answers {
            let verdict = match &answer.verdict {
                Some(verdict) if verdict.flagged => format!(
                    " <span class=\"flag\">flagged {}</span> <span class=\"meta\">({})</span>",
                    escape(&verdict.category),
                    escape(&verdict.reason)
                ),
                Some(verdict) => format!(
                    " <span class=\"meta\">not flagged {} ({})</span>",
                    escape(&verdict.category),
                    escape(&verdict.reason)
                ),
                None => String::new(),
            };
            let _ = write!(
                html,
                "<div><span class=\"meta\">{}</span>{verdict}: <span class=\"answer\">{}</span></div>",
                escape(&answer.question_id),
                escape(answer.answer.as_deref().unwrap_or("(no answer)"))
            );
        }
        html.push_str("</div>\n");
    }
}
