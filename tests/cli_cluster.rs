//! The client subcommands against a real `vidx coordinator` process on a real Redis: submit,
//! passes, jobs, status, cancel and finalize, each with the output people and scripts read, and a
//! one-line error with a non-zero exit for what is wrong (bad token, unknown pass, bad filter).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ffmpeg_clip, start_coordinator, stdout_of, vidx_client};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::FinalizeClaim;
use vidx_testkit::ChildGuard;
use vidx_testkit::redis::RedisServer;

const TOKEN: &str = "cli-token";

/// The last line of stderr of a failed run; failing runs say what is wrong on one line.
fn error_of(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// While another holder (a coordinator replica, as the test plays it here over gRPC) finalizes
/// the pass, `vidx finalize` writes nothing and says it waits; once that holder finishes, it
/// takes the claim and writes the manifest again.
fn finalize_waits_for_the_claim(url: &str, pass_id: &str, manifest: &std::path::Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ClientConfig::new(url.to_owned(), Some(Token::new(TOKEN).unwrap()));
    let client = runtime
        .block_on(CoordinatorClient::connect(&config))
        .unwrap();
    let claim = runtime.block_on(client.claim_finalization(pass_id, "test-replica", true, 60_000));
    assert_eq!(claim.unwrap(), FinalizeClaim::Claimed);
    // Bad claims are refused with the field named.
    let error = runtime
        .block_on(client.claim_finalization(pass_id, "test-replica", false, 10))
        .unwrap_err();
    assert!(
        error.to_string().contains("finalization claim of 10 ms"),
        "{error}"
    );
    let error = runtime
        .block_on(client.claim_finalization(pass_id, " ", false, 60_000))
        .unwrap_err();
    assert!(error.to_string().contains("holder is empty"), "{error}");

    std::fs::remove_file(manifest).unwrap();
    let mut finalize = ChildGuard::spawn(
        "vidx finalize",
        Command::new(common::VIDX)
            .args(["finalize", pass_id])
            .env("VIDX_COORDINATOR", url)
            .env("VIDX_TOKEN", TOKEN)
            .env("RUST_LOG", "warn"),
    )
    .unwrap();
    finalize
        .wait_for_line("say it waits", Duration::from_secs(60), |line| {
            line.text.contains("is being finalized now").then_some(())
        })
        .unwrap();
    assert!(
        !manifest.exists(),
        "finalize wrote while another held the claim"
    );
    assert!(
        finalize.try_status().unwrap().is_none(),
        "{}",
        finalize.log()
    );

    runtime
        .block_on(client.finish_finalization(pass_id))
        .unwrap();
    let finished = finalize.wait_finished(Duration::from_secs(120)).unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished
            .stdout
            .contains("2 videos: 0 indexed, 0 skipped, 2 failed"),
        "{}",
        finished.stdout
    );
    assert!(
        manifest.exists(),
        "finalize wrote the manifest once it held the claim"
    );
}

#[test]
fn client_commands_against_a_real_coordinator() {
    let redis = RedisServer::start().unwrap();
    let (_coordinator, url) = start_coordinator(&redis.url(), TOKEN);
    let corpus = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    ffmpeg_clip(&corpus.path().join("a.mp4"), 1);
    ffmpeg_clip(&corpus.path().join("b.mp4"), 1);
    let corpus_dir = corpus.path().to_str().unwrap();
    let out_dir = out.path().to_str().unwrap();

    let submitted = vidx_client(
        &url,
        TOKEN,
        &[
            "submit",
            corpus_dir,
            "--out",
            out_dir,
            "--question",
            "What is shown?",
        ],
    );
    let pass_id = stdout_of(&submitted).trim().to_owned();
    assert!(!pass_id.is_empty() && !pass_id.contains(char::is_whitespace));

    // Planning runs in the coordinator; no worker runs, so the jobs wait.
    let started = Instant::now();
    let status = loop {
        let output = vidx_client(&url, TOKEN, &["status", &pass_id, "--json"]);
        let status: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
        if status["state"] == "running" && status["counts"]["pending"] == 2 {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "planning did not finish: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["pass_id"], pass_id.as_str());

    let passes = stdout_of(&vidx_client(&url, TOKEN, &["passes"]));
    assert!(passes.contains(&pass_id), "{passes}");
    let jobs = stdout_of(&vidx_client(&url, TOKEN, &["jobs", &pass_id, "--json"]));
    let urls: Vec<String> = jobs
        .lines()
        .map(|line| {
            let job: serde_json::Value = serde_json::from_str(line).unwrap();
            job["spec"]["video_url"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(urls.len(), 2, "{jobs}");
    assert!(urls.iter().any(|url| url.ends_with("/a.mp4")), "{urls:?}");
    let pending = stdout_of(&vidx_client(
        &url,
        TOKEN,
        &["jobs", &pass_id, "--state", "pending"],
    ));
    assert_eq!(pending.lines().count(), 2, "{pending}");

    // A finished pass is what finalize takes; a running one is refused.
    let early = error_of(&vidx_client(&url, TOKEN, &["finalize", &pass_id]));
    assert!(
        early.contains("finalize it once it has finished"),
        "{early}"
    );

    let cancelled = stdout_of(&vidx_client(&url, TOKEN, &["cancel", &pass_id]));
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let finalized = stdout_of(&vidx_client(&url, TOKEN, &["finalize", &pass_id]));
    assert!(
        finalized.contains("2 videos: 0 indexed, 0 skipped, 2 failed"),
        "{finalized}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["pass_id"], pass_id.as_str());
    finalize_waits_for_the_claim(&url, &pass_id, &out.path().join("manifest.json"));

    // What is wrong is said on one line, with a non-zero exit.
    let bad_token = error_of(&vidx_client(&url, "wrong-token", &["passes"]));
    assert!(bad_token.contains("invalid token"), "{bad_token}");
    let unknown = error_of(&vidx_client(&url, TOKEN, &["status", "no-such-pass"]));
    assert!(unknown.contains("no-such-pass"), "{unknown}");
    // A bad flag value is refused by the argument parser before anything is sent, on a line
    // that names the flag and the values it takes.
    let bad_state = vidx_client(&url, TOKEN, &["jobs", &pass_id, "--state", "napping"]);
    assert!(!bad_state.status.success());
    let bad_state = String::from_utf8_lossy(&bad_state.stderr);
    let first = bad_state.lines().next().unwrap_or_default();
    assert!(
        first.contains("--state")
            && first.contains("unknown job state")
            && first.contains("pending"),
        "{bad_state}"
    );
    let missing_source = error_of(&vidx_client(&url, TOKEN, &["submit", "", "--out", out_dir]));
    assert!(!missing_source.is_empty());
}
