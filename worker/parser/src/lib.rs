//! Parser from the raw text Open-o3 Video generates to typed evidence.
//!
//! The model answers like
//! `<think>... <obj>man</obj><box>[249,60,395,252]</box>at<t>9.0</t>s ...</think> <answer>...</answer>`.
//! Real output is messy: tags are left open, the `s` after a time is missing, boxes have three
//! numbers, floats or spaces, corners come in the wrong order or lie outside the frame, times run past
//! the segment, and a decoding loop can repeat one phrase for 50 KB. The parser keeps what is valid,
//! records every fragment it dropped with a typed reason, never panics, and runs in time linear in the
//! input: one pass finds the tags, one pass over the tags builds the evidence.
//!
//! The crate depends on `std` and `serde` only (its manifest lists nothing else), so the
//! `cargo fuzz` target in `worker/fuzz/` builds it without the worker's heavy dependencies. The
//! worker uses it as `vidx_worker::evidence::parse`.

#![warn(missing_docs)]

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// How many dropped fragments are recorded one by one; the rest are only counted.
pub const MAX_RECORDED_DROPS: usize = 256;
/// How many bytes of a dropped fragment are kept in its record.
pub const MAX_FRAGMENT_BYTES: usize = 160;
/// Longest object name kept, in bytes; longer names are cut at a character boundary.
pub const MAX_OBJECT_NAME_BYTES: usize = 120;

/// What the parser needs to know about the frames the model saw.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseContext {
    /// Width in pixels of the resized frame the model saw.
    pub frame_width: u32,
    /// Height in pixels of the resized frame the model saw.
    pub frame_height: u32,
    /// Length of the segment on the scale of the `Frame i at Xs` labels; times past it (plus
    /// `time_tolerance_s`) are dropped. `None` accepts any non-negative time.
    pub segment_duration_s: Option<f64>,
    /// Slack allowed past the segment end, seconds (labels are rounded, models overshoot a little).
    pub time_tolerance_s: f64,
    /// Most claims kept per answer; later ones are dropped as [`DropReason::TooManyClaims`].
    pub max_claims: usize,
}

impl ParseContext {
    /// A context for frames of `frame_width` x `frame_height` model pixels and a segment of
    /// `segment_duration_s` seconds, with a 0.5 s tolerance and at most 512 claims.
    pub fn new(frame_width: u32, frame_height: u32, segment_duration_s: Option<f64>) -> Self {
        Self {
            frame_width,
            frame_height,
            segment_duration_s,
            time_tolerance_s: 0.5,
            max_claims: 512,
        }
    }
}

/// A box in pixels, `[x1, y1, x2, y2]` with `x1 < x2` and `y1 < y2`, on a continuous pixel grid
/// whose origin is the top-left corner of the top-left pixel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    /// Left edge.
    pub x1: f64,
    /// Top edge.
    pub y1: f64,
    /// Right edge.
    pub x2: f64,
    /// Bottom edge.
    pub y2: f64,
}

impl BoundingBox {
    /// The box as `[x1, y1, x2, y2]`.
    pub fn to_array(self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// Which part of the output a piece of evidence came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Inside `<think> </think>`.
    Think,
    /// Inside `<answer> </answer>`.
    Answer,
    /// Outside both (the model skipped the tags).
    Outside,
}

/// One grounded mention: an object, the boxes it occupies and the time it was seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The object name between `<obj>` and `</obj>`, trimmed.
    pub object: String,
    /// Valid boxes in model-input pixels, clamped to the frame; may be empty when a time was given.
    pub boxes: Vec<BoundingBox>,
    /// Time on the scale of the frame labels, seconds; `None` when missing or invalid.
    pub time_s: Option<f64>,
    /// Where the claim was written.
    pub section: Section,
    /// Byte offset of the `<obj>` tag in the raw text.
    pub offset: usize,
}

impl Claim {
    /// A claim is grounded when it has at least one box and a time.
    pub fn is_grounded(&self) -> bool {
        !self.boxes.is_empty() && self.time_s.is_some()
    }
}

/// A time interval written as `<t>12.0</t>s to <t>15.5</t>s`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeSpan {
    /// Start, seconds on the label scale.
    pub start_s: f64,
    /// End, seconds on the label scale; never before `start_s`.
    pub end_s: f64,
    /// Where the span was written.
    pub section: Section,
}

/// A time written on its own (`<t>9.0</t>s`) outside any claim or span.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimePoint {
    /// Seconds on the label scale.
    pub time_s: f64,
    /// Where the time was written.
    pub section: Section,
}

/// Why a fragment of the output was dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DropReason {
    /// A box did not hold exactly four numbers.
    BoxWrongArity {
        /// How many numbers it held.
        count: usize,
    },
    /// A box held something that is not a number.
    BoxNotNumeric,
    /// A box had `x2 < x1` or `y2 < y1`.
    BoxInverted,
    /// A box had zero width or height.
    BoxEmpty,
    /// A box lay wholly outside the frame.
    BoxOutsideFrame,
    /// A `<box>` that does not follow an `<obj>`.
    BoxWithoutObject,
    /// A time that is not a number.
    TimeNotNumeric,
    /// A negative time.
    TimeNegative,
    /// A time past the end of the segment (plus tolerance).
    TimePastSegment,
    /// A time span whose end comes before its start.
    SpanInverted,
    /// An `<obj>` with an empty name.
    ObjectEmpty,
    /// An `<obj>` followed by neither a valid box nor a valid time.
    ObjectWithoutEvidence,
    /// The same claim (object, boxes, time) written again, as in a repetition loop.
    DuplicateClaim,
    /// A claim past [`ParseContext::max_claims`].
    TooManyClaims,
}

/// A fragment of the raw output that was dropped, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DroppedFragment {
    /// Why it was dropped.
    pub reason: DropReason,
    /// Byte offset of the fragment in the raw text.
    pub offset: usize,
    /// The fragment, cut to at most [`MAX_FRAGMENT_BYTES`] bytes.
    pub fragment: String,
}

/// Something the parser fixed instead of dropping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repair {
    /// A tag was never closed; it was closed at the next tag or the end of the text.
    UnclosedTag {
        /// The tag name, e.g. `think`.
        tag: String,
        /// Byte offset of the opening tag.
        offset: usize,
    },
    /// `</think>` without `<think>`: the text before it was taken as the reasoning.
    MissingOpenTag {
        /// The tag name.
        tag: String,
        /// Byte offset of the closing tag.
        offset: usize,
    },
    /// A box reaching past the frame was clamped to it.
    BoxClamped {
        /// Byte offset of the `<box>` tag.
        offset: usize,
    },
}

/// Everything the parser found in one output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedOutput {
    /// The reasoning, raw (tags kept), trimmed; several `<think>` blocks are joined by newlines.
    pub think: Option<String>,
    /// The answer as plain text: tags removed, their contents kept (`<t>12.0</t>s` reads `12.0s`).
    pub answer: Option<String>,
    /// Valid claims in the order written.
    pub claims: Vec<Claim>,
    /// Time spans written outside claims.
    pub time_spans: Vec<TimeSpan>,
    /// Single times written outside claims and spans.
    pub time_points: Vec<TimePoint>,
    /// Fragments dropped, at most [`MAX_RECORDED_DROPS`] of them.
    pub dropped: Vec<DroppedFragment>,
    /// Dropped fragments beyond [`MAX_RECORDED_DROPS`], counted only.
    pub dropped_unrecorded: usize,
    /// Things fixed rather than dropped.
    pub repairs: Vec<Repair>,
}

impl ParsedOutput {
    /// Claims that carry both a box and a time.
    pub fn grounded_claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.iter().filter(|claim| claim.is_grounded())
    }

    /// Total number of fragments dropped, recorded or not.
    pub fn dropped_count(&self) -> usize {
        self.dropped.len() + self.dropped_unrecorded
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Think,
    Answer,
    Obj,
    Box,
    Time,
}

impl Tag {
    fn name(self) -> &'static str {
        match self {
            Tag::Think => "think",
            Tag::Answer => "answer",
            Tag::Obj => "obj",
            Tag::Box => "box",
            Tag::Time => "t",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum TokenKind {
    Text,
    Open(Tag),
    Close(Tag),
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: TokenKind,
    start: usize,
    end: usize,
}

/// Splits the text into tags we know and the text between them, in one pass.
fn tokenize(raw: &str) -> Vec<Token> {
    const TAGS: [(&str, Tag); 5] = [
        ("think", Tag::Think),
        ("answer", Tag::Answer),
        ("obj", Tag::Obj),
        ("box", Tag::Box),
        ("t", Tag::Time),
    ];
    let bytes = raw.as_bytes();
    let mut tokens = Vec::new();
    let mut text_start = 0;
    let mut position = 0;
    while let Some(found) = raw[position..].find('<') {
        let at = position + found;
        position = at + 1;
        let closing = bytes.get(at + 1) == Some(&b'/');
        let name_start = at + 1 + usize::from(closing);
        let Some(name_len) = bytes[name_start..]
            .iter()
            .take(8)
            .position(|&byte| byte == b'>')
        else {
            continue;
        };
        let name = &bytes[name_start..name_start + name_len];
        let Some(&(_, tag)) = TAGS
            .iter()
            .find(|(tag_name, _)| name.eq_ignore_ascii_case(tag_name.as_bytes()))
        else {
            continue;
        };
        if text_start < at {
            tokens.push(Token {
                kind: TokenKind::Text,
                start: text_start,
                end: at,
            });
        }
        let end = name_start + name_len + 1;
        let kind = if closing {
            TokenKind::Close(tag)
        } else {
            TokenKind::Open(tag)
        };
        tokens.push(Token {
            kind,
            start: at,
            end,
        });
        text_start = end;
        position = end;
    }
    if text_start < raw.len() {
        tokens.push(Token {
            kind: TokenKind::Text,
            start: text_start,
            end: raw.len(),
        });
    }
    tokens
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Parser<'a> {
    raw: &'a str,
    tokens: Vec<Token>,
    sections: Vec<Section>,
    context: &'a ParseContext,
    output: ParsedOutput,
    seen_claims: HashSet<ClaimKey>,
}

/// Parses one raw model output. Never fails: whatever is invalid is dropped and recorded.
pub fn parse_output(raw: &str, context: &ParseContext) -> ParsedOutput {
    let tokens = tokenize(raw);
    let mut parser = Parser {
        raw,
        sections: Vec::with_capacity(tokens.len()),
        tokens,
        context,
        output: ParsedOutput::default(),
        seen_claims: HashSet::new(),
    };
    parser.split_sections();
    parser.collect_evidence();
    parser.output
}

impl<'a> Parser<'a> {
    fn drop_fragment(&mut self, reason: DropReason, start: usize, end: usize) {
        if self.output.dropped.len() >= MAX_RECORDED_DROPS {
            self.output.dropped_unrecorded += 1;
            return;
        }
        let mut end = end
            .clamp(start, self.raw.len())
            .min(start.saturating_add(MAX_FRAGMENT_BYTES));
        while !self.raw.is_char_boundary(end) {
            end -= 1;
        }
        let fragment = self.raw.get(start..end).unwrap_or_default().to_owned();
        self.output.dropped.push(DroppedFragment {
            reason,
            offset: start,
            fragment,
        });
    }

    fn repair(&mut self, repair: Repair) {
        // Repetition loops can produce thousands of identical repairs; the first few tell the story.
        if self.output.repairs.len() < MAX_RECORDED_DROPS {
            self.output.repairs.push(repair);
        }
    }

    /// Assigns a section to every token and extracts the think and answer texts.
    fn split_sections(&mut self) {
        let mut section = Section::Outside;
        let mut opened_at = 0;
        let mut think_parts: Vec<(usize, usize)> = Vec::new();
        let mut answer_parts: Vec<(usize, usize)> = Vec::new();
        let mut part_start = 0;
        let mut saw_think = false;
        // Where the text outside both sections began, as a byte offset and a token index.
        let mut outside_since = (0, 0);
        for index in 0..self.tokens.len() {
            let token = self.tokens[index];
            match token.kind {
                TokenKind::Open(tag @ (Tag::Think | Tag::Answer)) => {
                    if section != Section::Outside {
                        self.close_part(
                            section,
                            part_start,
                            token.start,
                            &mut think_parts,
                            &mut answer_parts,
                        );
                        let open_tag = if section == Section::Think {
                            "think"
                        } else {
                            "answer"
                        };
                        self.repair(Repair::UnclosedTag {
                            tag: open_tag.to_owned(),
                            offset: opened_at,
                        });
                    }
                    section = if tag == Tag::Think {
                        Section::Think
                    } else {
                        Section::Answer
                    };
                    saw_think |= tag == Tag::Think;
                    opened_at = token.start;
                    part_start = token.end;
                    self.sections.push(Section::Outside);
                }
                TokenKind::Close(Tag::Think) if section == Section::Think => {
                    self.close_part(
                        section,
                        part_start,
                        token.start,
                        &mut think_parts,
                        &mut answer_parts,
                    );
                    section = Section::Outside;
                    self.sections.push(Section::Outside);
                    outside_since = (token.end, index + 1);
                }
                TokenKind::Close(Tag::Think) if section == Section::Outside && !saw_think => {
                    // `</think>` with no `<think>`: everything before it was reasoning.
                    think_parts.push((outside_since.0, token.start));
                    saw_think = true;
                    for earlier in &mut self.sections[outside_since.1..] {
                        *earlier = Section::Think;
                    }
                    self.repair(Repair::MissingOpenTag {
                        tag: "think".to_owned(),
                        offset: token.start,
                    });
                    self.sections.push(Section::Outside);
                }
                TokenKind::Close(Tag::Answer) if section == Section::Answer => {
                    self.close_part(
                        section,
                        part_start,
                        token.start,
                        &mut think_parts,
                        &mut answer_parts,
                    );
                    section = Section::Outside;
                    self.sections.push(Section::Outside);
                    outside_since = (token.end, index + 1);
                }
                _ => self.sections.push(section),
            }
        }
        if section != Section::Outside {
            self.close_part(
                section,
                part_start,
                self.raw.len(),
                &mut think_parts,
                &mut answer_parts,
            );
            let open_tag = if section == Section::Think {
                "think"
            } else {
                "answer"
            };
            self.repair(Repair::UnclosedTag {
                tag: open_tag.to_owned(),
                offset: opened_at,
            });
        }
        self.output.think = join_parts(self.raw, &think_parts, false);
        self.output.answer = join_parts(self.raw, &answer_parts, true);
    }

    fn close_part(
        &self,
        section: Section,
        start: usize,
        end: usize,
        think_parts: &mut Vec<(usize, usize)>,
        answer_parts: &mut Vec<(usize, usize)>,
    ) {
        match section {
            Section::Think => think_parts.push((start, end)),
            Section::Answer => answer_parts.push((start, end)),
            Section::Outside => {}
        }
    }

    /// Text of the token at `index` if it is a text token.
    fn text_at(&self, index: usize) -> Option<&'a str> {
        let token = self.tokens.get(index)?;
        match token.kind {
            TokenKind::Text => Some(&self.raw[token.start..token.end]),
            _ => None,
        }
    }

    fn is_open(&self, index: usize, tag: Tag) -> bool {
        matches!(self.tokens.get(index), Some(Token { kind: TokenKind::Open(found), .. }) if *found == tag)
    }

    /// Reads the content of the tag opened at `index`: the text up to its closing tag, or up to the
    /// next tag when it is left open. Returns the content, its byte range and the index after it.
    fn tag_content(&mut self, index: usize, tag: Tag) -> (&'a str, usize, usize) {
        let open = self.tokens[index];
        let mut next = index + 1;
        let mut content = "";
        let mut content_end = open.end;
        if let Some(text) = self.text_at(next) {
            content = text;
            content_end = self.tokens[next].end;
            next += 1;
        }
        match self.tokens.get(next) {
            Some(Token {
                kind: TokenKind::Close(found),
                ..
            }) if *found == tag => next += 1,
            _ => self.repair(Repair::UnclosedTag {
                tag: tag.name().to_owned(),
                offset: open.start,
            }),
        }
        (content, content_end, next)
    }

    /// Skips a connector text token (whitespace, `at`, a comma) between the parts of a claim.
    fn skip_connector(&self, index: usize, next_tag: Tag) -> usize {
        match self.text_at(index) {
            Some(text) if is_connector(text) && self.is_open(index + 1, next_tag) => index + 1,
            _ => index,
        }
    }

    fn collect_evidence(&mut self) {
        let mut index = 0;
        while index < self.tokens.len() {
            let token = self.tokens[index];
            index = match token.kind {
                TokenKind::Open(Tag::Obj) => self.read_claim(index),
                TokenKind::Open(Tag::Box) => {
                    let (_, content_end, next) = self.tag_content(index, Tag::Box);
                    self.drop_fragment(DropReason::BoxWithoutObject, token.start, content_end + 6);
                    next
                }
                TokenKind::Open(Tag::Time) => self.read_free_time(index),
                _ => index + 1,
            };
        }
    }

    /// Reads `<obj>name</obj><box>..</box>..at<t>..</t>s` starting at the `<obj>` token.
    fn read_claim(&mut self, start_index: usize) -> usize {
        let start = self.tokens[start_index].start;
        let section = self
            .sections
            .get(start_index)
            .copied()
            .unwrap_or(Section::Outside);
        let (name, _, mut index) = self.tag_content(start_index, Tag::Obj);
        let mut boxes = Vec::new();
        loop {
            let candidate = self.skip_connector(index, Tag::Box);
            if !self.is_open(candidate, Tag::Box) {
                break;
            }
            let box_start = self.tokens[candidate].start;
            let (content, content_end, next) = self.tag_content(candidate, Tag::Box);
            for parsed in parse_box_content(content) {
                match parsed.and_then(|bounding_box| self.validate_box(bounding_box, box_start)) {
                    Ok(bounding_box) => boxes.push(bounding_box),
                    Err(reason) => self.drop_fragment(reason, box_start, content_end + 6),
                }
            }
            index = next;
        }
        let mut time_s = None;
        let mut end = self
            .tokens
            .get(index.saturating_sub(1))
            .map_or(self.raw.len(), |token| token.end);
        let candidate = self.skip_connector(index, Tag::Time);
        if self.is_open(candidate, Tag::Time) {
            let time_start = self.tokens[candidate].start;
            let (content, content_end, next) = self.tag_content(candidate, Tag::Time);
            match self.validate_time(content) {
                Ok(time) => time_s = Some(time),
                Err(reason) => self.drop_fragment(reason, time_start, content_end + 4),
            }
            end = self
                .tokens
                .get(next - 1)
                .map_or(self.raw.len(), |token| token.end);
            index = next;
        }
        let object = cut(name.trim(), MAX_OBJECT_NAME_BYTES).to_owned();
        if object.is_empty() {
            self.drop_fragment(DropReason::ObjectEmpty, start, end);
            return index;
        }
        if boxes.is_empty() && time_s.is_none() {
            self.drop_fragment(DropReason::ObjectWithoutEvidence, start, end);
            return index;
        }
        let key = claim_key(&object, &boxes, time_s);
        if self.seen_claims.contains(&key) {
            self.drop_fragment(DropReason::DuplicateClaim, start, end);
            return index;
        }
        if self.output.claims.len() >= self.context.max_claims {
            self.drop_fragment(DropReason::TooManyClaims, start, end);
            return index;
        }
        self.seen_claims.insert(key);
        self.output.claims.push(Claim {
            object,
            boxes,
            time_s,
            section,
            offset: start,
        });
        index
    }

    /// Reads a `<t>` outside a claim: a single time or the start of `<t>a</t>s to <t>b</t>s`.
    fn read_free_time(&mut self, start_index: usize) -> usize {
        let start = self.tokens[start_index].start;
        let section = self
            .sections
            .get(start_index)
            .copied()
            .unwrap_or(Section::Outside);
        let (content, content_end, next) = self.tag_content(start_index, Tag::Time);
        let first = match self.validate_time(content) {
            Ok(time) => time,
            Err(reason) => {
                self.drop_fragment(reason, start, content_end + 4);
                return next;
            }
        };
        let is_span =
            self.text_at(next).is_some_and(is_span_connector) && self.is_open(next + 1, Tag::Time);
        if !is_span {
            self.output.time_points.push(TimePoint {
                time_s: first,
                section,
            });
            return next;
        }
        let second_start = self.tokens[next + 1].start;
        let (content, content_end, after) = self.tag_content(next + 1, Tag::Time);
        match self.validate_time(content) {
            Ok(second) if second >= first => {
                self.output.time_spans.push(TimeSpan {
                    start_s: first,
                    end_s: second,
                    section,
                });
            }
            Ok(_) => self.drop_fragment(DropReason::SpanInverted, start, content_end + 4),
            Err(reason) => {
                self.drop_fragment(reason, second_start, content_end + 4);
                self.output.time_points.push(TimePoint {
                    time_s: first,
                    section,
                });
            }
        }
        after
    }

    fn validate_box(
        &mut self,
        bounding_box: BoundingBox,
        offset: usize,
    ) -> Result<BoundingBox, DropReason> {
        let BoundingBox { x1, y1, x2, y2 } = bounding_box;
        if x2 < x1 || y2 < y1 {
            return Err(DropReason::BoxInverted);
        }
        if x2 == x1 || y2 == y1 {
            return Err(DropReason::BoxEmpty);
        }
        let width = f64::from(self.context.frame_width);
        let height = f64::from(self.context.frame_height);
        if x2 <= 0.0 || y2 <= 0.0 || x1 >= width || y1 >= height {
            return Err(DropReason::BoxOutsideFrame);
        }
        let clamped = BoundingBox {
            x1: x1.max(0.0),
            y1: y1.max(0.0),
            x2: x2.min(width),
            y2: y2.min(height),
        };
        if clamped != bounding_box {
            self.repair(Repair::BoxClamped { offset });
        }
        Ok(clamped)
    }

    fn validate_time(&self, content: &str) -> Result<f64, DropReason> {
        let time = parse_time(content)?;
        if time < 0.0 {
            return Err(DropReason::TimeNegative);
        }
        if let Some(duration) = self.context.segment_duration_s
            && time > duration + self.context.time_tolerance_s
        {
            return Err(DropReason::TimePastSegment);
        }
        Ok(time)
    }
}

/// Joins section parts; `plain` removes tags but keeps their contents.
fn join_parts(raw: &str, parts: &[(usize, usize)], plain: bool) -> Option<String> {
    let mut joined = String::new();
    for &(start, end) in parts {
        let text = raw[start..end].trim();
        if text.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push('\n');
        }
        if plain {
            joined.push_str(&strip_tags(text));
        } else {
            joined.push_str(text);
        }
    }
    (!joined.is_empty()).then_some(joined)
}

/// Removes the tags the model uses, keeping the text between them.
pub fn strip_tags(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    for token in tokenize(text) {
        if let TokenKind::Text = token.kind {
            plain.push_str(&text[token.start..token.end]);
        }
    }
    plain.trim().to_owned()
}

fn is_connector(text: &str) -> bool {
    let trimmed = text.trim();
    trimmed.is_empty() || trimmed.eq_ignore_ascii_case("at") || trimmed == "," || trimmed == ":"
}

/// Text between the two times of a span: an optional `s`, then `to`, `-`, `–`, `until` or `and`.
fn is_span_connector(text: &str) -> bool {
    let trimmed = text.trim();
    let trimmed = trimmed.strip_prefix('s').unwrap_or(trimmed).trim();
    ["to", "-", "–", "until", "and", "through"]
        .iter()
        .any(|word| trimmed.eq_ignore_ascii_case(word))
}

/// Identity of a claim for spotting repeats: lowercased object, box coordinates and time as bits.
type ClaimKey = (String, Vec<u64>, Option<u64>);

fn claim_key(object: &str, boxes: &[BoundingBox], time_s: Option<f64>) -> ClaimKey {
    let coordinates = boxes
        .iter()
        .flat_map(|bounding_box| bounding_box.to_array())
        .map(f64::to_bits)
        .collect();
    (object.to_lowercase(), coordinates, time_s.map(f64::to_bits))
}

/// Parses the inside of `<box>`: `[x1,y1,x2,y2]`, with spaces or floats, without brackets, or
/// several boxes `[[..],[..]]`. Each box is parsed on its own.
fn parse_box_content(content: &str) -> Vec<Result<BoundingBox, DropReason>> {
    let nested = content.bytes().filter(|&byte| byte == b'[').count() >= 2;
    if !nested {
        return vec![parse_box_numbers(content)];
    }
    content
        .split(']')
        .map(|group| {
            group.trim_matches(|c: char| c == '[' || c == ',' || c == ';' || c.is_whitespace())
        })
        .filter(|group| !group.is_empty())
        .map(parse_box_numbers)
        .collect()
}

fn parse_box_numbers(group: &str) -> Result<BoundingBox, DropReason> {
    // With a bracket, the box is what lies between it and the next `]` (text after an unclosed box
    // is not part of it); without one, the whole group.
    let inner = match group.split_once('[') {
        Some((_, after)) => after.split_once(']').map_or(after, |(inside, _)| inside),
        None => group.trim().trim_matches(|c: char| c == '(' || c == ')'),
    };
    let mut numbers = [0.0; 4];
    let mut count = 0;
    for part in inner
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|part| !part.is_empty())
    {
        let value: f64 = part.parse().map_err(|_| DropReason::BoxNotNumeric)?;
        if !value.is_finite() {
            return Err(DropReason::BoxNotNumeric);
        }
        if count < 4 {
            numbers[count] = value;
        }
        count += 1;
    }
    if count != 4 {
        return Err(DropReason::BoxWrongArity { count });
    }
    Ok(BoundingBox {
        x1: numbers[0],
        y1: numbers[1],
        x2: numbers[2],
        y2: numbers[3],
    })
}

/// Parses the inside of `<t>`: `9`, `9.0`, `9.0s`, or `m:ss(.f)`.
fn parse_time(content: &str) -> Result<f64, DropReason> {
    let trimmed = content.trim();
    let trimmed = trimmed.strip_suffix('s').unwrap_or(trimmed).trim();
    let value = match trimmed.split_once(':') {
        Some((minutes, seconds)) => {
            let minutes: f64 = minutes
                .trim()
                .parse()
                .map_err(|_| DropReason::TimeNotNumeric)?;
            let seconds: f64 = seconds
                .trim()
                .parse()
                .map_err(|_| DropReason::TimeNotNumeric)?;
            if !(0.0..60.0).contains(&seconds) || minutes < 0.0 {
                return Err(DropReason::TimeNotNumeric);
            }
            minutes * 60.0 + seconds
        }
        None => trimmed.parse().map_err(|_| DropReason::TimeNotNumeric)?,
    };
    if !value.is_finite() {
        return Err(DropReason::TimeNotNumeric);
    }
    Ok(value)
}
