//! libFuzzer target: the evidence parser must never panic and must keep its invariants on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

use vidx_evidence_parser as parse;

use parse::{MAX_RECORDED_DROPS, ParseContext, parse_output};

fuzz_target!(|data: &[u8]| {
    // The first four bytes choose the frame size and segment length; the rest is the model output.
    if data.len() < 4 {
        return;
    }
    let width = u32::from(data[0]) * 4 + 1;
    let height = u32::from(data[1]) * 4 + 1;
    let duration = (data[2] != 0).then(|| f64::from(data[2]) / 4.0);
    let mut context = ParseContext::new(width, height, duration);
    context.max_claims = usize::from(data[3]);
    let raw = String::from_utf8_lossy(&data[4..]);
    let parsed = parse_output(&raw, &context);

    assert!(parsed.claims.len() <= context.max_claims);
    assert!(parsed.dropped.len() <= MAX_RECORDED_DROPS);
    for claim in &parsed.claims {
        assert!(!claim.object.is_empty());
        assert!(!claim.boxes.is_empty() || claim.time_s.is_some());
        assert!(raw.is_char_boundary(claim.offset) && claim.offset < raw.len());
        for bounding_box in &claim.boxes {
            assert!(bounding_box.x1 >= 0.0 && bounding_box.y1 >= 0.0);
            assert!(bounding_box.x1 < bounding_box.x2 && bounding_box.y1 < bounding_box.y2);
            assert!(bounding_box.x2 <= f64::from(width) && bounding_box.y2 <= f64::from(height));
        }
        if let Some(time) = claim.time_s {
            assert!(time.is_finite() && time >= 0.0);
            if let Some(duration) = duration {
                assert!(time <= duration + context.time_tolerance_s);
            }
        }
    }
    for span in &parsed.time_spans {
        assert!(span.start_s <= span.end_s);
    }
    for dropped in &parsed.dropped {
        assert!(dropped.offset <= raw.len());
        assert!(raw[dropped.offset..].starts_with(dropped.fragment.as_str()));
    }
});
