//! `vidx report`: one static, self-contained HTML page over an evidence index.
//!
//! Videos flagged by moderation come first (most severe first), then the rest by URL. Each video
//! shows its moderation verdicts, a timeline with a marker per claim, then every sampled frame that
//! claims point at, with their boxes drawn, and the answers per segment. Thumbnails are embedded as
//! `data:` URIs so the page opens anywhere.
//!
//! The layout is fixed so a screenshot can be checked: each frame is an `<svg>` exactly
//! [`FRAME_DISPLAY_WIDTH`] CSS pixels wide, whose `viewBox` is the displayed source size, so a box
//! stored in source pixels `(x, y)` appears at `(x, y) * FRAME_DISPLAY_WIDTH / source width` from the
//! frame's top-left corner; boxes are stroked [`BOX_COLOR`], [`BOX_STROKE_PX`] pixels wide, centred on
//! the box edge.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use base64::Engine as _;
use object_store::path::Path;

use super::Result;
use super::document::{ClaimRecord, VideoDocument};
use super::store::EvidenceIndex;
use super::task::Severity;

/// Width in CSS pixels of every frame drawn.
pub const FRAME_DISPLAY_WIDTH: u32 = 480;
/// Stroke colour of boxes.
pub const BOX_COLOR: &str = "#ff00ff";
/// Stroke width of boxes, CSS pixels.
pub const BOX_STROKE_PX: u32 = 3;

/// A thumbnail loaded for embedding.
#[derive(Clone, Debug)]
pub struct EmbeddedImage {
    /// MIME type.
    pub content_type: String,
    /// Encoded bytes.
    pub bytes: Vec<u8>,
}

/// A document and where it is stored.
#[derive(Clone, Debug)]
pub struct ReportVideo {
    /// The document's key.
    pub document_key: String,
    /// The document.
    pub document: VideoDocument,
}

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

const STYLE: &str = "
body { margin: 0; padding: 16px; font: 14px/1.4 sans-serif; background: #ffffff; color: #222222; }
h1 { font-size: 20px; margin: 0 0 12px 0; }
.video { border-top: 2px solid #cccccc; padding: 12px 0; }
.video h2 { font-size: 16px; margin: 0 0 6px 0; word-break: break-all; }
.flags { background: #fde8e8; border: 1px solid #c00000; padding: 6px 10px; margin: 6px 0; }
.flag { color: #a00000; font-weight: bold; }
.timeline { position: relative; height: 18px; background: #eeeeee; margin: 8px 0; width: 100%; }
.timeline .mark { position: absolute; top: 0; width: 2px; height: 18px; background: #333333; }
.frames { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; width: 480px; }
figure svg { display: block; }
figcaption { font-size: 12px; }
.box { fill: none; stroke: #ff00ff; stroke-width: 3; }
.segment { margin: 8px 0; }
.answer { white-space: pre-wrap; }
.meta { color: #555555; font-size: 12px; }
";

/// Renders the report. `images` maps full thumbnail keys to their bytes; frames without a loaded
/// thumbnail are drawn as a grey rectangle so the boxes still show.
pub fn render_report(videos: &[ReportVideo], images: &HashMap<String, EmbeddedImage>) -> String {
    let mut ordered: Vec<&ReportVideo> = videos.iter().collect();
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
        "<h1>vidx evidence report: {} videos, {flagged} flagged</h1>",
        ordered.len()
    );
    for video in ordered {
        render_video(&mut html, video, images);
    }
    html.push_str("</body></html>\n");
    html
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
        "<section class=\"video{flagged_class}\" data-video-id=\"{}\">",
        escape(&document.video_id)
    );
    let _ = writeln!(html, "<h2>{}</h2>", escape(&document.video.url));
    let _ = writeln!(
        html,
        "<div class=\"meta\">{}x{} rotation {} · {:.1}s · model {} @ {} · task {} ({})</div>",
        document.probe.width,
        document.probe.height,
        document.probe.rotation,
        document.probe.duration_s,
        escape(&document.model.id),
        escape(&document.model.revision),
        escape(&document.task.task.name),
        escape(&document.task.hash.chars().take(12).collect::<String>()),
    );
    if document.is_flagged() {
        html.push_str("<div class=\"flags\">");
        for summary in document.moderation.iter().filter(|summary| summary.flagged) {
            let segments: Vec<String> = summary
                .flagged_segments
                .iter()
                .map(u32::to_string)
                .collect();
            let _ = write!(
                html,
                "<div class=\"flag\">flagged: {} (severity {}) in segments {}</div>",
                escape(&summary.category),
                severity_label(summary.severity),
                segments.join(", ")
            );
        }
        html.push_str("</div>\n");
    }
    render_timeline(html, document);
    render_frames(html, video, images);
    render_answers(html, document);
    html.push_str("</section>\n");
}

fn render_timeline(html: &mut String, document: &VideoDocument) {
    let duration = document
        .segments
        .last()
        .map_or(document.probe.duration_s, |segment| {
            segment.end_s.max(document.probe.duration_s)
        });
    html.push_str("<div class=\"timeline\">");
    if duration > 0.0 {
        for segment in &document.segments {
            for answer in &segment.answers {
                for claim in &answer.claims {
                    let Some(time) = claim.time_s else { continue };
                    let left = (time / duration * 100.0).clamp(0.0, 100.0);
                    let _ = write!(
                        html,
                        "<span class=\"mark\" style=\"left:{left:.3}%\" title=\"{} at {time:.1}s\"></span>",
                        escape(&claim.object)
                    );
                }
            }
        }
    }
    html.push_str("</div>\n");
}

fn render_frames(html: &mut String, video: &ReportVideo, images: &HashMap<String, EmbeddedImage>) {
    let document = &video.document;
    // Claims grouped by the frame they are tied to, in time order.
    let mut by_frame: BTreeMap<(u32, usize), Vec<(&str, &ClaimRecord)>> = BTreeMap::new();
    for segment in &document.segments {
        for answer in &segment.answers {
            for claim in &answer.claims {
                if let (Some(frame), false) = (claim.frame_index, claim.boxes.is_empty()) {
                    by_frame
                        .entry((segment.index, frame))
                        .or_default()
                        .push((&answer.question_id, claim));
                }
            }
        }
    }
    let (source_width, source_height) = document.geometry.displayed_size();
    let display_height =
        f64::from(FRAME_DISPLAY_WIDTH) * f64::from(source_height) / f64::from(source_width);
    let dir = video
        .document_key
        .rsplit_once('/')
        .map_or("", |(dir, _)| dir);
    html.push_str("<div class=\"frames\">\n");
    for ((segment_index, frame_index), claims) in by_frame {
        let frame = document
            .segments
            .iter()
            .find(|segment| segment.index == segment_index)
            .and_then(|segment| segment.frames.get(frame_index));
        let time = frame.map_or(0.0, |frame| frame.time_s);
        let image = frame
            .and_then(|frame| frame.thumbnail.as_ref())
            .and_then(|thumbnail| {
                let key = if dir.is_empty() {
                    thumbnail.key.clone()
                } else {
                    format!("{dir}/{}", thumbnail.key)
                };
                images.get(&key)
            });
        let _ = writeln!(
            html,
            "<figure data-segment=\"{segment_index}\" data-frame=\"{frame_index}\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{FRAME_DISPLAY_WIDTH}\" height=\"{display_height:.0}\" viewBox=\"0 0 {source_width} {source_height}\" preserveAspectRatio=\"none\">"
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
        for (_, claim) in &claims {
            for bounding_box in &claim.boxes {
                let _ = write!(
                    html,
                    "<rect class=\"box\" vector-effect=\"non-scaling-stroke\" x=\"{:.3}\" y=\"{:.3}\" width=\"{:.3}\" height=\"{:.3}\"><title>{}</title></rect>",
                    bounding_box.x1,
                    bounding_box.y1,
                    bounding_box.x2 - bounding_box.x1,
                    bounding_box.y2 - bounding_box.y1,
                    escape(&claim.object)
                );
            }
        }
        html.push_str("</svg>\n<figcaption>");
        let _ = write!(
            html,
            "segment {segment_index}, frame {} at {time:.2}s<br>",
            frame_index + 1
        );
        for (question_id, claim) in &claims {
            let boxes: Vec<String> = claim
                .boxes
                .iter()
                .map(|b| format!("[{:.0},{:.0},{:.0},{:.0}]", b.x1, b.y1, b.x2, b.y2))
                .collect();
            let _ = write!(
                html,
                "<span class=\"claim\">{} {} at {:.1}s ({})</span><br>",
                escape(&claim.object),
                boxes.join(" "),
                claim.time_s.unwrap_or(0.0),
                escape(question_id)
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
                    " <span class=\"flag\">flagged {}</span>",
                    escape(&verdict.category)
                ),
                _ => String::new(),
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

/// Loads every document of an index and the thumbnails its claims point at, and renders the report.
pub async fn build_report(index: &EvidenceIndex) -> Result<String> {
    let mut videos = Vec::new();
    let mut images = HashMap::new();
    for key in index.list_documents().await? {
        let document = index.read_document(&key).await?;
        let mut wanted = Vec::new();
        for segment in &document.segments {
            let used: Vec<usize> = segment
                .answers
                .iter()
                .flat_map(|answer| &answer.claims)
                .filter_map(|claim| claim.frame_index)
                .collect();
            for frame in segment
                .frames
                .iter()
                .filter(|frame| used.contains(&frame.index))
            {
                if let Some(thumbnail) = &frame.thumbnail {
                    wanted.push((
                        EvidenceIndex::thumbnail_key(&key, &thumbnail.key),
                        thumbnail.content_type.clone(),
                    ));
                }
            }
        }
        for (thumbnail_key, content_type) in wanted {
            match index.get_bytes(&thumbnail_key).await {
                Ok(bytes) => {
                    images.insert(
                        thumbnail_key.to_string(),
                        EmbeddedImage {
                            content_type,
                            bytes: bytes.to_vec(),
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(key = %thumbnail_key, %error, "thumbnail missing from report")
                }
            }
        }
        videos.push(ReportVideo {
            document_key: key.to_string(),
            document,
        });
    }
    Ok(tokio::task::spawn_blocking(move || render_report(&videos, &images)).await?)
}

/// Builds the report and writes it to a local file; returns the number of videos.
pub async fn write_report(index: &EvidenceIndex, out: &std::path::Path) -> Result<usize> {
    let html = build_report(index).await?;
    let videos = html.matches("<section class=\"video").count();
    tokio::fs::write(out, html).await?;
    Ok(videos)
}

/// Full key of a thumbnail given its document key and relative name (re-exported for callers
/// that build `images` themselves).
pub fn thumbnail_full_key(document_key: &str, relative: &str) -> String {
    EvidenceIndex::thumbnail_key(&Path::from(document_key), relative).to_string()
}
