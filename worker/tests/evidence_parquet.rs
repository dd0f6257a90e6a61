//! The corpus tables open in pyarrow and DuckDB with the columns `SCHEMA.md` documents, and
//! accumulate over passes: DuckDB over `table/claims/*.parquet` sees every pass's rows.
//!
//! Needs a Python with pyarrow and duckdb: `scripts/install-test-servers.sh` makes `venv/` at the
//! repository root with both; `VIDX_PYTHON` overrides the interpreter. The test fails, saying so, when none is there.

mod evidence_support;

use std::process::Command;

use evidence_support::{document, model, workspace_root};
use vidx_worker::evidence::store::{ANSWERS_PARTS, CLAIMS_PARTS, OutcomeStatus, table_part_name};
use vidx_worker::evidence::{EvidenceIndex, PassManifest, QuestionPlan};

fn python() -> String {
    if let Ok(path) = std::env::var("VIDX_PYTHON") {
        return path;
    }
    let venv = workspace_root().join("venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/install-test-servers.sh (makes venv/ with pyarrow and duckdb) \
         or set VIDX_PYTHON",
        venv.display()
    );
    venv.to_string_lossy().into_owned()
}

/// Column names listed in the first column of the table under `heading` in SCHEMA.md.
fn documented_columns(heading: &str) -> Vec<String> {
    let schema =
        std::fs::read_to_string(workspace_root().join("worker/src/evidence/SCHEMA.md")).unwrap();
    let section = schema.split(heading).nth(1).unwrap();
    let mut columns = Vec::new();
    for line in section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
    {
        let first_cell = line.split('|').nth(1).unwrap_or("");
        for name in first_cell.split('`').skip(1).step_by(2) {
            columns.push(name.to_owned());
        }
    }
    columns
}

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
import duckdb
claims, answers = sys.argv[1], sys.argv[2]
table = pq.read_table(claims)
answer_table = pq.read_table(answers)
rows = table.to_pylist()
con = duckdb.connect()
car = con.execute(
    "SELECT video_url, time_s, box_x1, box_y1, box_x2, box_y2, frame_index FROM read_parquet(?) WHERE object = 'red car'",
    [claims],
).fetchall()
flagged = con.execute("SELECT count(*) FROM read_parquet(?) WHERE flagged IS NULL", [answers]).fetchone()[0]
print(json.dumps({
    "claim_columns": table.column_names,
    "answer_columns": answer_table.column_names,
    "claim_rows": table.num_rows,
    "answer_rows": answer_table.num_rows,
    "types": {field.name: str(field.type) for field in table.schema},
    "first": rows[0],
    "car": car,
    "answers_without_verdict": flagged,
}))
"#;

#[tokio::test]
async fn parquet_opens_in_pyarrow_and_duckdb_with_documented_columns() -> anyhow::Result<()> {
    let python = python();
    let dir = tempfile::tempdir()?;
    let index = EvidenceIndex::from_url(dir.path().to_str().unwrap())?;
    let task = QuestionPlan::index();
    let raw = "<think>The <obj>red car</obj><box>[300,100,400,200]</box>at<t>12.0</t>s passes a \
               <obj>dog</obj><box>[10,10,50,50]</box>at<t>3</t>s and a <obj>sign</obj> at <t>5</t>s.</think>\
               <answer>A car passes a dog.</answer>";
    let mut manifest = PassManifest::new("p1", model(), &task);
    for url in ["s3://videos/a.mp4", "s3://videos/b.mp4"] {
        let document = document(
            url,
            task.clone(),
            &[(0, "index", raw), (1, "index", "<answer>Nothing.</answer>")],
        );
        let key = index.write_document(&document).await?;
        manifest.record(
            url,
            OutcomeStatus::Indexed {
                document_key: key.to_string(),
            },
        );
    }
    index.finish_pass(manifest).await?;
    let claims_path = dir.path().join(CLAIMS_PARTS).join(table_part_name("p1"));
    let answers_path = dir.path().join(ANSWERS_PARTS).join(table_part_name("p1"));

    let output = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&claims_path)
        .arg(&answers_path)
        .output()?;
    assert!(
        output.status.success(),
        "{python} failed (are pyarrow and duckdb installed? run scripts/install-test-servers.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;

    let claim_columns: Vec<String> = serde_json::from_value(result["claim_columns"].clone())?;
    assert_eq!(claim_columns, documented_columns("## Claims table"));
    let answer_columns: Vec<String> = serde_json::from_value(result["answer_columns"].clone())?;
    assert_eq!(answer_columns, documented_columns("## Answers table"));
    assert_eq!(result["claim_rows"], 6);
    assert_eq!(result["answer_rows"], 4);
    assert_eq!(result["types"]["time_s"], "double");
    assert_eq!(result["types"]["segment_index"], "int64");
    assert_eq!(result["types"]["object"], "string");
    assert_eq!(result["types"]["flagged"], "bool");

    let first = &result["first"];
    assert_eq!(first["video_url"], "s3://videos/a.mp4");
    assert_eq!(first["object"], "red car");
    assert_eq!(first["time_s"], 12.0);
    assert_eq!(
        first["frame_index"], 5,
        "12 s lies between frames at 11 and 13 s; ties go to the earlier"
    );
    assert_eq!(first["box_count"], 1);
    assert!(first["flagged"].is_null());

    // The sign has a time but no box: its box columns are null.
    let car = result["car"].as_array().unwrap();
    assert_eq!(car.len(), 2);
    let row = car[0].as_array().unwrap();
    assert_eq!(row[0], "s3://videos/a.mp4");
    let rounded: Vec<f64> = row[2..6]
        .iter()
        .map(|value| value.as_f64().unwrap().round())
        .collect();
    assert_eq!(rounded, vec![857.0, 286.0, 1143.0, 571.0]);
    assert_eq!(result["answers_without_verdict"], 4);
    Ok(())
}

const UNION_SCRIPT: &str = r#"
import json, sys
import duckdb
claims = sys.argv[1] + "/table/claims/*.parquet"
con = duckdb.connect()
rows = con.execute(
    "SELECT pass_id, question, count(*) FROM read_parquet(?) GROUP BY pass_id, question ORDER BY pass_id",
    [claims],
).fetchall()
print(json.dumps(rows))
"#;

/// Two passes with different questions over one corpus: each adds its own table parts, and both
/// DuckDB over `table/claims/*.parquet` and the index's own reader see the rows of both.
#[tokio::test]
async fn two_passes_accumulate_table_parts_that_duckdb_reads_together() -> anyhow::Result<()> {
    let python = python();
    let dir = tempfile::tempdir()?;
    let index = EvidenceIndex::from_url(dir.path().to_str().unwrap())?;
    let raw = "<think>A <obj>red car</obj><box>[300,100,400,200]</box>at<t>12.0</t>s.</think>\
               <answer>A car.</answer>";
    let questions = [
        ("pass-a", "Where is the car?"),
        ("pass-b", "What colour is the car?"),
    ];
    let mut written_at = 1_700_000_000_000;
    for (pass_id, question) in questions {
        let task = QuestionPlan::free_form(&[question])?;
        let question_id = task.questions[0].id.clone();
        let mut manifest = PassManifest::new(pass_id, model(), &task);
        for url in ["s3://videos/a.mp4", "s3://videos/b.mp4"] {
            let mut document = document(url, task.clone(), &[(0, &question_id, raw)]);
            document.pass_id = Some(pass_id.to_owned());
            written_at += 1;
            document.written_at_ms = Some(written_at);
            let key = index.write_document(&document).await?;
            manifest.record(
                url,
                OutcomeStatus::Indexed {
                    document_key: key.to_string(),
                },
            );
        }
        let finished = index.finish_pass(manifest).await?;
        assert_eq!(finished.claim_rows, 2, "one claim per video in {pass_id}");
    }
    let parts = std::fs::read_dir(dir.path().join(CLAIMS_PARTS))?.count();
    assert_eq!(parts, 2, "one claims part per pass");

    let output = Command::new(&python)
        .arg("-c")
        .arg(UNION_SCRIPT)
        .arg(dir.path())
        .output()?;
    assert!(
        output.status.success(),
        "{python} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(
        rows,
        serde_json::json!([
            ["pass-a", "Where is the car?", 2],
            ["pass-b", "What colour is the car?", 2]
        ])
    );

    // The index's reader sees both tasks (a video and task each keep their newest document).
    let claims = index.read_claims().await?;
    let mut seen: Vec<(String, String)> = claims
        .iter()
        .map(|row| {
            (
                row.pass_id.clone().unwrap_or_default(),
                row.video_url.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen[0],
        ("pass-a".to_owned(), "s3://videos/a.mp4".to_owned())
    );
    assert_eq!(
        seen[3],
        ("pass-b".to_owned(), "s3://videos/b.mp4".to_owned())
    );
    Ok(())
}
