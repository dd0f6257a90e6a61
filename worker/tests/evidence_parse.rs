//! Parser tests over a corpus of realistic Open-o3 Video outputs, clean and messy.

use vidx_worker::evidence::parse::{
    BoundingBox, DropReason, MAX_RECORDED_DROPS, ParseContext, ParsedOutput, Repair, Section,
    parse_output,
};

/// Frames of 448x252 model pixels, segment of 30 s.
fn context() -> ParseContext {
    ParseContext::new(448, 252, Some(30.0))
}

fn parse(raw: &str) -> ParsedOutput {
    parse_output(raw, &context())
}

fn bbox(x1: f64, y1: f64, x2: f64, y2: f64) -> BoundingBox {
    BoundingBox { x1, y1, x2, y2 }
}

fn reasons(parsed: &ParsedOutput) -> Vec<DropReason> {
    parsed
        .dropped
        .iter()
        .map(|dropped| dropped.reason.clone())
        .collect()
}

#[test]
fn clean_output_with_several_claims_and_multi_box() {
    let raw = "<think>The video shows a man in a red shirt <obj>man</obj><box>[249,60,395,252]</box>at<t>9.0</t>s \
               walking towards a <obj>car</obj><box>[400,120,440,200]</box>at<t>10.5</t>s. Later two \
               <obj>dog</obj><box>[10,200,60,250]</box><box>[70,205,120,252]</box>at<t>12.0</t>s run past.</think> \
               <answer>A man walks to a car while two dogs run.</answer>";
    let parsed = parse(raw);
    assert_eq!(
        parsed.answer.as_deref(),
        Some("A man walks to a car while two dogs run.")
    );
    assert!(
        parsed
            .think
            .as_deref()
            .unwrap()
            .starts_with("The video shows a man")
    );
    assert_eq!(parsed.claims.len(), 3);
    assert_eq!(parsed.claims[0].object, "man");
    assert_eq!(
        parsed.claims[0].boxes,
        vec![bbox(249.0, 60.0, 395.0, 252.0)]
    );
    assert_eq!(parsed.claims[0].time_s, Some(9.0));
    assert_eq!(parsed.claims[0].section, Section::Think);
    assert_eq!(
        &raw[parsed.claims[0].offset..parsed.claims[0].offset + 5],
        "<obj>"
    );
    assert_eq!(
        parsed.claims[2].boxes,
        vec![
            bbox(10.0, 200.0, 60.0, 250.0),
            bbox(70.0, 205.0, 120.0, 252.0)
        ]
    );
    assert!(parsed.dropped.is_empty(), "{:?}", parsed.dropped);
    assert!(parsed.repairs.is_empty(), "{:?}", parsed.repairs);
    assert_eq!(parsed.grounded_claims().count(), 3);
}

#[test]
fn temporal_answer_spans() {
    let raw = "<think>The <obj>goal</obj><box>[100,50,200,150]</box>at<t>12.0</t>s is scored and the \
               celebration ends at <t>15.5</t>s.</think><answer><t>12.0</t>s to <t>15.5</t>s</answer>";
    let parsed = parse(raw);
    assert_eq!(parsed.answer.as_deref(), Some("12.0s to 15.5s"));
    assert_eq!(parsed.time_spans.len(), 1);
    assert_eq!(
        (parsed.time_spans[0].start_s, parsed.time_spans[0].end_s),
        (12.0, 15.5)
    );
    assert_eq!(parsed.time_spans[0].section, Section::Answer);
    assert_eq!(parsed.time_points.len(), 1);
    assert_eq!(parsed.time_points[0].time_s, 15.5);
    assert_eq!(parsed.time_points[0].section, Section::Think);

    let variants =
        parse("<answer>From <t>3</t> - <t>4.5</t>s, then <t>6</t>s until <t>8</t>s.</answer>");
    let spans: Vec<(f64, f64)> = variants
        .time_spans
        .iter()
        .map(|span| (span.start_s, span.end_s))
        .collect();
    assert_eq!(spans, vec![(3.0, 4.5), (6.0, 8.0)]);

    let inverted = parse("<answer><t>9.0</t>s to <t>4.0</t>s</answer>");
    assert!(inverted.time_spans.is_empty());
    assert_eq!(reasons(&inverted), vec![DropReason::SpanInverted]);
}

#[test]
fn missing_seconds_suffix_and_time_formats() {
    let parsed = parse(
        "<think><obj>cup</obj><box>[1,2,30,40]</box>at<t>3.0</t> on the table, <obj>clock</obj><box>[50,2,90,40]</box> at <t>1:05.5</t>s \
         and <obj>sign</obj><box>[100,2,130,40]</box>at<t>7s</t></think><answer>A cup.</answer>",
    );
    let times: Vec<Option<f64>> = parsed.claims.iter().map(|claim| claim.time_s).collect();
    assert_eq!(times, vec![Some(3.0), None, Some(7.0)]);
    // 1:05.5 is 65.5 s, past the 30 s segment.
    assert_eq!(reasons(&parsed), vec![DropReason::TimePastSegment]);
    assert_eq!(
        parsed.claims[1].boxes.len(),
        1,
        "the box survives a bad time"
    );
}

#[test]
fn unclosed_tags_are_closed_at_the_next_tag() {
    let parsed = parse(
        "<think>A <obj>man</obj><box>[1,1,20,20]</box>at<t>2</t>s holds a <obj>knife<box>[5,5,9,9]</box>at<t>2.5</t>s <answer>Yes",
    );
    assert_eq!(parsed.answer.as_deref(), Some("Yes"));
    assert_eq!(parsed.claims.len(), 2);
    assert_eq!(parsed.claims[1].object, "knife");
    assert_eq!(parsed.claims[1].boxes, vec![bbox(5.0, 5.0, 9.0, 9.0)]);
    let unclosed: Vec<&str> = parsed
        .repairs
        .iter()
        .filter_map(|repair| match repair {
            Repair::UnclosedTag { tag, .. } => Some(tag.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(unclosed, vec!["think", "answer", "obj"]);

    let unclosed_box = parse("<think><obj>man</obj><box>[10,10,40,40] at<t>3.0</t>s</think>");
    assert_eq!(unclosed_box.claims.len(), 1);
    assert_eq!(
        unclosed_box.claims[0].boxes,
        vec![bbox(10.0, 10.0, 40.0, 40.0)]
    );
}

#[test]
fn close_think_without_open() {
    let parsed = parse(
        "The <obj>man</obj><box>[1,1,20,20]</box>at<t>2</t>s waves.</think><answer>Waving.</answer>",
    );
    assert_eq!(parsed.answer.as_deref(), Some("Waving."));
    assert!(
        parsed
            .think
            .as_deref()
            .unwrap()
            .starts_with("The <obj>man</obj>")
    );
    assert_eq!(parsed.claims[0].section, Section::Think);
    assert!(matches!(parsed.repairs[0], Repair::MissingOpenTag { .. }));
}

#[test]
fn bad_boxes_are_dropped_with_reasons() {
    let raw = "<think>\
        <obj>a</obj><box>[1,2,3]</box>at<t>1</t>s \
        <obj>b</obj><box>[ 12.5 , 30.25, 100.0,  200 ]</box>at<t>1</t>s \
        <obj>c</obj><box>[300,60,200,252]</box>at<t>1</t>s \
        <obj>d</obj><box>[500,300,600,400]</box>at<t>1</t>s \
        <obj>e</obj><box>[400,200,500,300]</box>at<t>1</t>s \
        <obj>f</obj><box>[a,b,c,d]</box>at<t>1</t>s \
        <obj>g</obj><box>[[1,2,30,40],[50,60,70,80]]</box>at<t>1</t>s \
        <obj>h</obj><box>10 20 30 40</box>at<t>1</t>s \
        <obj>i</obj><box>[5,5,5,9]</box>at<t>1</t>s \
        <obj>j</obj><box>[1,2,3,4,5]</box>\
        </think>";
    let parsed = parse(raw);
    let objects: Vec<&str> = parsed
        .claims
        .iter()
        .map(|claim| claim.object.as_str())
        .collect();
    // a, c, d, f, i keep their time; j has neither box nor time and goes.
    assert_eq!(objects, vec!["a", "b", "c", "d", "e", "f", "g", "h", "i"]);
    assert_eq!(
        parsed.claims[1].boxes,
        vec![bbox(12.5, 30.25, 100.0, 200.0)]
    );
    assert_eq!(
        parsed.claims[4].boxes,
        vec![bbox(400.0, 200.0, 448.0, 252.0)],
        "clamped to the frame"
    );
    assert_eq!(
        parsed.claims[6].boxes,
        vec![bbox(1.0, 2.0, 30.0, 40.0), bbox(50.0, 60.0, 70.0, 80.0)]
    );
    assert_eq!(parsed.claims[7].boxes, vec![bbox(10.0, 20.0, 30.0, 40.0)]);
    assert!(parsed.claims[0].boxes.is_empty() && !parsed.claims[0].is_grounded());
    assert_eq!(
        reasons(&parsed),
        vec![
            DropReason::BoxWrongArity { count: 3 },
            DropReason::BoxInverted,
            DropReason::BoxOutsideFrame,
            DropReason::BoxNotNumeric,
            DropReason::BoxEmpty,
            DropReason::BoxWrongArity { count: 5 },
            DropReason::ObjectWithoutEvidence,
        ]
    );
    assert!(
        parsed
            .repairs
            .iter()
            .any(|repair| matches!(repair, Repair::BoxClamped { .. }))
    );
    assert!(
        parsed.dropped[0].fragment.starts_with("<box>[1,2,3]"),
        "{:?}",
        parsed.dropped[0]
    );
}

#[test]
fn times_out_of_range() {
    let parsed = parse(
        "<think><obj>a</obj><box>[1,1,9,9]</box>at<t>45.0</t>s <obj>b</obj><box>[1,1,9,9]</box>at<t>-2</t>s \
         <obj>c</obj><box>[1,1,9,9]</box>at<t>soon</t>s <obj>d</obj><box>[1,1,9,9]</box>at<t>30.4</t>s</think>",
    );
    assert_eq!(
        reasons(&parsed),
        vec![
            DropReason::TimePastSegment,
            DropReason::TimeNegative,
            DropReason::TimeNotNumeric
        ]
    );
    let times: Vec<Option<f64>> = parsed.claims.iter().map(|claim| claim.time_s).collect();
    assert_eq!(
        times,
        vec![None, None, None, Some(30.4)],
        "within the 0.5 s tolerance"
    );

    let unbounded = parse_output(
        "<think><obj>a</obj><box>[1,1,9,9]</box>at<t>45.0</t>s</think>",
        &ParseContext::new(448, 252, None),
    );
    assert_eq!(unbounded.claims[0].time_s, Some(45.0));
}

#[test]
fn repetition_loop_of_50_kilobytes() {
    let mut raw = String::from("<think>The man is walking. ");
    while raw.len() < 50_000 {
        raw.push_str("<obj>man</obj><box>[249,60,395,252]</box>at<t>9.0</t>s is walking, ");
    }
    let parsed = parse(&raw);
    assert_eq!(parsed.claims.len(), 1);
    assert_eq!(parsed.dropped.len(), MAX_RECORDED_DROPS);
    assert!(
        parsed
            .dropped
            .iter()
            .all(|dropped| dropped.reason == DropReason::DuplicateClaim)
    );
    assert!(parsed.dropped_count() > 600);
    assert!(parsed.answer.is_none());
    assert!(
        parsed
            .repairs
            .iter()
            .any(|repair| matches!(repair, Repair::UnclosedTag { tag, .. } if tag == "think"))
    );
}

#[test]
fn distinct_claims_past_the_limit() {
    let mut raw = String::from("<think>");
    for index in 0..600 {
        raw.push_str(&format!(
            "<obj>person {index}</obj><box>[1,1,9,9]</box>at<t>1</t>s "
        ));
    }
    let parsed = parse(&raw);
    assert_eq!(parsed.claims.len(), 512);
    assert_eq!(parsed.dropped_count(), 88);
    assert!(
        parsed
            .dropped
            .iter()
            .all(|dropped| dropped.reason == DropReason::TooManyClaims)
    );
}

#[test]
fn large_garbage_parses_in_one_pass() {
    // Five megabytes of open tags, lone brackets and multi-byte text: a quadratic parser would not
    // finish; this one walks the text once.
    let chunk = "<obj>é<box>[1,2,<t>3<think><answer></t>< <<t>>ü</box></obj>";
    let raw = chunk.repeat(5_000_000 / chunk.len());
    let parsed = parse(&raw);
    assert!(parsed.dropped_count() > 0);
    assert!(parsed.dropped.len() <= MAX_RECORDED_DROPS);
}

#[test]
fn no_tags_at_all() {
    let parsed = parse("The man is walking his dog in the park.");
    assert_eq!(parsed, ParsedOutput::default());
    assert_eq!(parse(""), ParsedOutput::default());
}

#[test]
fn truncated_mid_tag_and_odd_tags() {
    let parsed = parse("<think>A <obj>man</obj><box>[1,2,");
    assert!(parsed.claims.is_empty());
    assert_eq!(
        reasons(&parsed),
        vec![
            DropReason::BoxWrongArity { count: 2 },
            DropReason::ObjectWithoutEvidence
        ]
    );

    let parsed = parse(
        "<THINK><Obj>Café sign</OBJ><BOX>[1,2,30,40]</BOX>AT<T>2</T>s</THINK><answer>Closed <b>today</b></answer>",
    );
    assert_eq!(parsed.claims.len(), 1);
    assert_eq!(parsed.claims[0].object, "Café sign");
    assert_eq!(
        parsed.answer.as_deref(),
        Some("Closed <b>today</b>"),
        "unknown tags are text"
    );

    let parsed = parse(
        "<think>x</think><answer>y</answer><box>[1,2,3,4]</box> <obj></obj><box>[1,2,3,4]</box>",
    );
    assert_eq!(
        reasons(&parsed),
        vec![DropReason::BoxWithoutObject, DropReason::ObjectEmpty]
    );
    assert!(parsed.claims.is_empty());
}

#[test]
fn claims_outside_sections_and_in_answer() {
    let parsed = parse(
        "<obj>tree</obj><box>[1,1,50,50]</box>at<t>1</t>s <answer>A <obj>bird</obj><box>[2,2,9,9]</box>at<t>2</t>s sings</answer>",
    );
    assert_eq!(parsed.claims[0].section, Section::Outside);
    assert_eq!(parsed.claims[1].section, Section::Answer);
    assert_eq!(parsed.answer.as_deref(), Some("A bird[2,2,9,9]at2s sings"));
}

#[test]
fn several_think_blocks_are_joined() {
    let parsed = parse("<think>one</think><think>two</think><answer>a</answer><answer>b</answer>");
    assert_eq!(parsed.think.as_deref(), Some("one\ntwo"));
    assert_eq!(parsed.answer.as_deref(), Some("a\nb"));
}

/// Prints parse throughput; run with
/// `cargo test -p vidx-worker --release --test evidence_parse -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn parse_throughput() {
    let mut repetition = String::from("<think>The man is walking. ");
    while repetition.len() < 50_000 {
        repetition.push_str("<obj>man</obj><box>[249,60,395,252]</box>at<t>9.0</t>s is walking, ");
    }
    let mut distinct = String::from("<think>");
    let mut index = 0;
    while distinct.len() < 50_000 {
        distinct.push_str(&format!(
            "<obj>person {index}</obj><box>[1,{},90,99]</box>at<t>{}.5</t>s and ",
            index % 90,
            index % 30
        ));
        index += 1;
    }
    distinct.push_str("</think><answer>People.</answer>");
    for (name, raw) in [
        ("50 KB repetition loop", &repetition),
        ("50 KB distinct claims", &distinct),
    ] {
        let rounds: usize = 200;
        let started = std::time::Instant::now();
        let mut claims = 0;
        for _ in 0..rounds {
            claims += parse(raw).claims.len();
        }
        let seconds = started.elapsed().as_secs_f64();
        let megabytes = (raw.len() * rounds) as f64 / 1e6;
        eprintln!(
            "{name}: {:.2} ms per parse, {:.0} MB/s, {} claims",
            seconds * 1000.0 / rounds as f64,
            megabytes / seconds,
            claims / rounds
        );
    }
}
