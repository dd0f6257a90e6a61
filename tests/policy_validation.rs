//! A malformed moderation policy is refused at submission, with the same message naming the bad
//! field from the gRPC API (a real `vidx coordinator` process on a real Redis) as from `vidx
//! submit` (a real process), which refuses it before connecting to anything; and the `verify`
//! setting of a pass travels through the API.

mod common;

use std::process::Output;

use common::{start_coordinator, temp_prefix, vidx_client};
use tonic::Code;
use vidx_core::auth::{AttachToken, Token};
use vidx_proto::v1 as pb;
use vidx_testkit::port::ClosedPort;
use vidx_testkit::redis::RedisServer;

const TOKEN: &str = "policy-token";

const BAD_POLICY: &str = "categories:
  - name: weapons
    question: Is anyone holding a weapon?
    flagged_answer: 'yes'
    severity: high
  - name: knives
    question: Is anyone holding a knife?
    flagged_answer: 'yes'
    severity: high
    min_confidence: 1.5
";

const GOOD_POLICY: &str = "categories:
  - name: knives
    question: Is anyone holding a knife?
    flagged_answer: 'yes'
    severity: high
    min_confidence: 0.6
";

fn vidx(url: &str, args: &[&str]) -> Output {
    vidx_client(url, TOKEN, args)
}

/// The last line of stderr of a failed run.
fn error_of(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, got {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_gets_the_same_error_from_the_api_and_from_vidx_submit() {
    let redis = RedisServer::start().expect("redis-server starts (run scripts/setup.sh)");
    let (_coordinator, url) = start_coordinator(&redis.url(), TOKEN);
    let scratch = tempfile::tempdir().unwrap();
    let corpus = scratch.path().join("corpus");
    let out = scratch.path().join("index");
    std::fs::create_dir_all(&corpus).unwrap();
    let bad_file = scratch.path().join("bad.yaml");
    std::fs::write(&bad_file, BAD_POLICY).unwrap();
    let good_file = scratch.path().join("good.yaml");
    std::fs::write(&good_file, GOOD_POLICY).unwrap();
    let prefix = temp_prefix();
    let file_url = |path: &std::path::Path| {
        let relative = path.strip_prefix(std::env::temp_dir()).unwrap();
        format!("{prefix}{}/", relative.display())
    };
    let (corpus_url, out_url) = (file_url(&corpus), file_url(&out));

    // The API: INVALID_ARGUMENT naming the field.
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = Token::new(TOKEN).unwrap();
    let mut passes = pb::pass_service_client::PassServiceClient::with_interceptor(
        channel,
        AttachToken::new(Some(&token)),
    );
    let submission = |policy: &str, verify: Option<bool>| pb::SubmitPassRequest {
        source: corpus_url.clone(),
        destination: out_url.clone(),
        task: Some(pb::Task {
            kind: Some(pb::task::Kind::Moderation(pb::ModerationTask {
                policy_yaml: policy.to_owned(),
            })),
        }),
        verify,
        ..Default::default()
    };
    let status = passes
        .submit_pass(submission(BAD_POLICY, None))
        .await
        .expect_err("a bad policy is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message().to_owned();
    assert_eq!(
        message,
        "moderation policy: categories[1].min_confidence: must be in [0, 1], got 1.5"
    );

    // `vidx submit`: the same message, before anything is sent — against the real coordinator
    // and against a port where nothing listens alike.
    let closed = ClosedPort::reserve().unwrap();
    for coordinator in [url.clone(), closed.http_url()] {
        let output = vidx(
            &coordinator,
            &[
                "submit",
                corpus.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--policy",
                bad_file.to_str().unwrap(),
            ],
        );
        let error = error_of(&output);
        assert!(error.contains(&message), "{coordinator}: {error:?}");
        assert!(error.contains("invalid argument"), "{error:?}");
    }
    // Switching verification off under a policy that needs it is refused too, by both.
    let output = vidx(
        &closed.http_url(),
        &[
            "submit",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--policy",
            good_file.to_str().unwrap(),
            "--no-verify",
        ],
    );
    let error = error_of(&output);
    assert!(
        error.contains("categories[0].min_confidence (\"knives\") needs claim verification"),
        "{error:?}"
    );
    let status = passes
        .submit_pass(submission(GOOD_POLICY, Some(false)))
        .await
        .expect_err("min_confidence without verification is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(error.ends_with(status.message()), "{error:?} vs {status:?}");

    // Nothing was created by any of the refusals.
    let listed = passes
        .list_passes(pb::ListPassesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.passes.is_empty(), "{:?}", listed.passes);

    // A good policy is accepted; `--verify` on a questions pass is recorded and reported.
    let output = vidx(
        &url,
        &[
            "submit",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--policy",
            good_file.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = vidx(
        &url,
        &[
            "submit",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--question",
            "Is there a knife?",
            "--verify",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pass_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let status = passes
        .get_pass(pb::GetPassRequest { pass_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.verify, Some(true));
}
