//! Parser throughput in an optimised build: `cd worker/fuzz && cargo run --release --bin parse_throughput`.
//! (The workspace's test profile leaves our own crates unoptimised, which understates it.)

use vidx_evidence_parser as parse;

use std::time::Instant;

use parse::{ParseContext, parse_output};

fn main() {
    let context = ParseContext::new(448, 252, Some(30.0));
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
    let chunk = "<obj>é<box>[1,2,<t>3<think><answer></t>< <<t>>ü</box></obj>";
    let garbage = chunk.repeat(5_000_000 / chunk.len());
    for (name, raw, rounds) in [
        ("50 KB repetition loop", &repetition, 2000usize),
        ("50 KB distinct claims", &distinct, 2000),
        ("5 MB tag garbage", &garbage, 10),
    ] {
        let started = Instant::now();
        let mut claims = 0;
        for _ in 0..rounds {
            claims += parse_output(raw, &context).claims.len();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name}: {:.3} ms per parse, {:.0} MB/s, {} claims",
            seconds * 1000.0 / rounds as f64,
            (raw.len() * rounds) as f64 / 1e6 / seconds,
            claims / rounds
        );
    }
}
