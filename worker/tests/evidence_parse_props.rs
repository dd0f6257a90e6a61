//! Property tests of the evidence parser: arbitrary strings, soups of tag fragments, and
//! near-valid outputs built from known claims then damaged.
//!
//! The number of cases follows proptest's `PROPTEST_CASES` (256 by default). For a long run:
//! `PROPTEST_CASES=2000000 cargo test -p vidx-worker --release --test evidence_parse_props`.

use proptest::prelude::*;
use vidx_worker::evidence::parse::{
    BoundingBox, MAX_RECORDED_DROPS, ParseContext, ParsedOutput, parse_output,
};

const WIDTH: u32 = 448;
const HEIGHT: u32 = 252;
const DURATION: f64 = 30.0;

fn context() -> ParseContext {
    ParseContext::new(WIDTH, HEIGHT, Some(DURATION))
}

/// Invariants every parse must keep, whatever the input.
fn check_invariants(
    raw: &str,
    context: &ParseContext,
    parsed: &ParsedOutput,
) -> Result<(), TestCaseError> {
    prop_assert!(parsed.claims.len() <= context.max_claims);
    prop_assert!(parsed.dropped.len() <= MAX_RECORDED_DROPS);
    for claim in &parsed.claims {
        prop_assert!(!claim.object.is_empty());
        prop_assert!(!claim.boxes.is_empty() || claim.time_s.is_some());
        prop_assert!(claim.offset < raw.len() && raw.is_char_boundary(claim.offset));
        for b in &claim.boxes {
            prop_assert!(b.x1 >= 0.0 && b.y1 >= 0.0, "{b:?}");
            prop_assert!(b.x1 < b.x2 && b.y1 < b.y2, "{b:?}");
            prop_assert!(
                b.x2 <= f64::from(context.frame_width) && b.y2 <= f64::from(context.frame_height),
                "{b:?}"
            );
        }
        if let Some(time) = claim.time_s {
            prop_assert!(time.is_finite() && time >= 0.0);
            prop_assert!(time <= DURATION + context.time_tolerance_s);
        }
    }
    for span in &parsed.time_spans {
        prop_assert!(span.start_s <= span.end_s);
    }
    for dropped in &parsed.dropped {
        prop_assert!(raw[dropped.offset..].starts_with(dropped.fragment.as_str()));
    }
    Ok(())
}

/// Pieces the model's grammar is made of, plus damage.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<think>".to_owned()),
        Just("</think>".to_owned()),
        Just("<answer>".to_owned()),
        Just("</answer>".to_owned()),
        Just("<obj>".to_owned()),
        Just("</obj>".to_owned()),
        Just("<box>".to_owned()),
        Just("</box>".to_owned()),
        Just("<t>".to_owned()),
        Just("</t>".to_owned()),
        Just("at".to_owned()),
        Just("s to ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("<".to_owned()),
        "[0-9.,\\- \\[\\]e]{0,12}",
        "[a-zA-Zé ]{0,8}",
        any::<String>().prop_map(|text| text.chars().take(6).collect()),
    ]
}

#[derive(Clone, Debug)]
struct Generated {
    object: String,
    boxes: Vec<[u32; 4]>,
    time_tenths: u32,
}

fn generated_claim() -> impl Strategy<Value = Generated> {
    let one_box = (0..WIDTH - 1, 0..HEIGHT - 1)
        .prop_flat_map(|(x1, y1)| (Just(x1), Just(y1), x1 + 1..=WIDTH, y1 + 1..=HEIGHT))
        .prop_map(|(x1, y1, x2, y2)| [x1, y1, x2, y2]);
    (
        "[a-z]{1,10}( [a-z]{1,6})?",
        prop::collection::vec(one_box, 1..3),
        0..=(DURATION as u32 * 10),
    )
        .prop_map(|(object, boxes, time_tenths)| Generated {
            object,
            boxes,
            time_tenths,
        })
}

fn render(claims: &[Generated], spaced: bool) -> String {
    let mut raw = String::from("<think>The video shows ");
    for (index, claim) in claims.iter().enumerate() {
        raw.push_str(&format!("<obj>{} {index}</obj>", claim.object));
        for [x1, y1, x2, y2] in &claim.boxes {
            if spaced {
                raw.push_str(&format!("<box>[ {x1}, {y1} , {x2},{y2} ]</box>"));
            } else {
                raw.push_str(&format!("<box>[{x1},{y1},{x2},{y2}]</box>"));
            }
        }
        raw.push_str(&format!(
            "at<t>{}.{}</t>s; ",
            claim.time_tenths / 10,
            claim.time_tenths % 10
        ));
    }
    raw.push_str("more.</think> <answer>Things happen.</answer>");
    raw
}

proptest! {
    #[test]
    fn arbitrary_strings_never_break_invariants(raw in any::<String>()) {
        let context = context();
        let parsed = parse_output(&raw, &context);
        check_invariants(&raw, &context, &parsed)?;
    }

    #[test]
    fn tag_soup_never_breaks_invariants(pieces in prop::collection::vec(fragment(), 0..80), max_claims in 0usize..8) {
        let raw: String = pieces.concat();
        let mut context = context();
        context.max_claims = max_claims;
        let parsed = parse_output(&raw, &context);
        check_invariants(&raw, &context, &parsed)?;
    }

    #[test]
    fn valid_outputs_round_trip(claims in prop::collection::vec(generated_claim(), 0..12), spaced in any::<bool>()) {
        let raw = render(&claims, spaced);
        let parsed = parse_output(&raw, &context());
        prop_assert!(parsed.dropped.is_empty(), "{:?}", parsed.dropped);
        prop_assert_eq!(parsed.answer.as_deref(), Some("Things happen."));
        prop_assert_eq!(parsed.claims.len(), claims.len());
        for (index, (parsed_claim, claim)) in parsed.claims.iter().zip(&claims).enumerate() {
            prop_assert_eq!(&parsed_claim.object, &format!("{} {index}", claim.object));
            let expected: Vec<BoundingBox> = claim
                .boxes
                .iter()
                .map(|[x1, y1, x2, y2]| BoundingBox { x1: f64::from(*x1), y1: f64::from(*y1), x2: f64::from(*x2), y2: f64::from(*y2) })
                .collect();
            prop_assert_eq!(&parsed_claim.boxes, &expected);
            prop_assert_eq!(parsed_claim.time_s, Some(f64::from(claim.time_tenths) / 10.0));
        }
    }

    #[test]
    fn damaged_outputs_keep_the_undamaged_claims(
        claims in prop::collection::vec(generated_claim(), 1..12),
        cut_at in any::<prop::sample::Index>(),
        insert in fragment(),
    ) {
        // Insert a damaging fragment at a character boundary: everything stays within bounds, and
        // every claim written wholly before the damage is still found.
        let raw = render(&claims, false);
        let boundaries: Vec<usize> = raw.char_indices().map(|(at, _)| at).collect();
        let at = boundaries[cut_at.index(boundaries.len())];
        let damaged = format!("{}{}{}", &raw[..at], insert, &raw[at..]);
        let context = context();
        let parsed = parse_output(&damaged, &context);
        check_invariants(&damaged, &context, &parsed)?;
        let intact = raw[..at].matches("</t>s; ").count();
        prop_assert!(parsed.claims.len() >= intact.min(claims.len()).saturating_sub(1),
            "intact {} found {}", intact, parsed.claims.len());
        let truncated = parse_output(&raw[..at], &context);
        check_invariants(&raw[..at], &context, &truncated)?;
    }
}
