//! A vidx cluster of real processes for the churn tests: a `vidx coordinator` on a real
//! `redis-server` with append-only persistence, a corpus of real videos (made with the ffmpeg CLI)
//! and broken files on the S3-compatible test server, and `vidx worker` processes on the tiny
//! fixture checkpoint. Each part can be killed and started again where it was (the coordinator on
//! its port, Redis on its port and data folder), which is what the tests do to it.
//!
//! Workers log JSON (`VIDX_LOG_FORMAT=json`), so a test can wait for a given worker to have leased
//! a job and read which one, rather than sleeping and hoping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vidx_testkit::redis::{RedisOptions, RedisServer};
use vidx_testkit::s3::S3Server;
use vidx_testkit::vidx::{CoordinatorOptions, VidxCoordinator, start_worker};
use vidx_testkit::{ChildGuard, Line};

use super::{VIDX, ffmpeg_clip};

/// The bearer token of every cluster.
pub const TOKEN: &str = "churn-token";
/// The bucket the corpus and the index live in.
pub const BUCKET: &str = "media";
/// Where the corpus is.
pub const SOURCE: &str = "s3://media/videos/";
/// Where the index is written.
pub const DESTINATION: &str = "s3://media/index/";
/// Segment length of the test passes: the long video is split, the short ones are not.
pub const SEGMENT_SECS: u32 = 2;

/// How long a worker may take to load the tiny checkpoint and lease a first job.
const LEASE_WITHIN: Duration = Duration::from_secs(120);
/// How long a pass of the test corpus may take, churn included.
pub const PASS_WITHIN: Duration = Duration::from_secs(420);
/// How often the pass is looked at while waiting for it.
const POLL: Duration = Duration::from_millis(500);

/// The tiny random Qwen2.5-VL checkpoint the workers load.
pub fn fixture_model() -> PathBuf {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    assert!(
        model.join("config.json").exists(),
        "missing fixture {}",
        model.display()
    );
    model
}

/// A test corpus: which videos are good (with the number of documents each must end with) and
/// which files are broken.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// Good videos by name, with their length in seconds.
    pub good: BTreeMap<String, u32>,
    /// Broken files by name.
    pub broken: Vec<String>,
}

impl Corpus {
    /// Short clips `short-0.mp4`.., one `long.mp4` of `long_secs` (split into segments), a
    /// zero-byte upload and a file of text named like a video.
    pub fn standard(shorts: usize, long_secs: u32) -> Self {
        let mut good: BTreeMap<String, u32> = (0..shorts)
            .map(|index| (format!("short-{index}.mp4"), 1))
            .collect();
        good.insert("long.mp4".into(), long_secs);
        Corpus {
            good,
            broken: vec!["empty.mp4".into(), "notes-not-video.mp4".into()],
        }
    }

    /// The `s3://` URL of a file of the corpus.
    pub fn url(name: &str) -> String {
        format!("{SOURCE}{name}")
    }
}

/// The cluster: object store, Redis, coordinator. Workers are started by [`Cluster::worker`].
pub struct Cluster {
    /// The S3-compatible server holding the corpus and the index.
    pub s3: S3Server,
    redis: Option<RedisServer>,
    redis_options: RedisOptions,
    _redis_dir: tempfile::TempDir,
    coordinator: Option<VidxCoordinator>,
    coordinator_options: CoordinatorOptions,
    grpc: SocketAddr,
}

impl Cluster {
    /// Starts the object store, Redis (append-only, on a folder that outlives a restart) and a
    /// coordinator with quick retries; `coordinator_env` is added to the coordinator's
    /// environment (`VIDX_MAX_CRASHES`, ...).
    pub fn start(coordinator_env: &[(&str, &str)]) -> Self {
        let s3 = S3Server::start().expect("s3s-fs starts (run scripts/setup.sh)");
        s3.create_bucket(BUCKET).unwrap();
        let redis_dir = tempfile::tempdir().unwrap();
        let mut redis_options = RedisOptions {
            append_only: true,
            dir: Some(redis_dir.path().to_owned()),
            port: None,
        };
        let redis =
            RedisServer::start_with(&redis_options).expect("redis-server starts (run setup.sh)");
        redis_options.port = Some(redis.port());
        let mut env = s3_env(&s3);
        // A retryable failure comes back quickly, so a pass with one ends in test time.
        env.push(("VIDX_RETRY_BASE_MS".into(), "200".into()));
        env.push(("VIDX_RETRY_MAX_MS".into(), "1000".into()));
        env.extend(
            coordinator_env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        );
        let mut coordinator_options = CoordinatorOptions {
            redis_url: Some(redis.url()),
            token: Some(TOKEN.into()),
            allow_prefixes: vec![format!("s3://{BUCKET}/")],
            env,
            ..CoordinatorOptions::default()
        };
        let coordinator = VidxCoordinator::start(Path::new(VIDX), &coordinator_options)
            .unwrap_or_else(|error| panic!("vidx coordinator starts: {error}"));
        let grpc = coordinator.grpc_address();
        // Later starts keep the address the workers were given.
        coordinator_options.listen = Some(grpc);
        Cluster {
            s3,
            redis: Some(redis),
            redis_options,
            _redis_dir: redis_dir,
            coordinator: Some(coordinator),
            coordinator_options,
            grpc,
        }
    }

    /// Writes `corpus` into the bucket: good videos encoded by ffmpeg, broken files as bytes.
    pub fn put_corpus(&self, corpus: &Corpus) {
        let dir = self.s3.root().join(BUCKET).join("videos");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, seconds) in &corpus.good {
            ffmpeg_clip(&dir.join(name), *seconds);
        }
        for name in &corpus.broken {
            let bytes: &[u8] = if name.starts_with("empty") {
                b""
            } else {
                b"these are notes, not a video"
            };
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    /// Writes one more good video.
    pub fn put_video(&self, name: &str, seconds: u32) {
        let dir = self.s3.root().join(BUCKET).join("videos");
        std::fs::create_dir_all(&dir).unwrap();
        ffmpeg_clip(&dir.join(name), seconds);
    }

    /// `http://127.0.0.1:PORT` of the coordinator, the same across restarts.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Kills the coordinator (by its pid): its port refuses until [`Cluster::start_coordinator`].
    pub fn stop_coordinator(&mut self) {
        let mut coordinator = self.coordinator.take().expect("the coordinator runs");
        coordinator.kill();
    }

    /// Starts a coordinator again on the same port and Redis.
    pub fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "the coordinator already runs");
        let coordinator = VidxCoordinator::start(Path::new(VIDX), &self.coordinator_options)
            .unwrap_or_else(|error| panic!("vidx coordinator starts again: {error}"));
        assert_eq!(coordinator.grpc_address(), self.grpc);
        self.coordinator = Some(coordinator);
    }

    /// Kills Redis (by its pid), as a crash would: what it acknowledged is in its append-only file.
    pub fn kill_redis(&mut self) {
        drop(self.redis.take().expect("redis runs"));
    }

    /// Starts Redis again on its port and folder; it loads its append-only file before it answers.
    pub fn start_redis(&mut self) {
        assert!(self.redis.is_none(), "redis already runs");
        let redis = RedisServer::start_with(&self.redis_options).expect("redis-server restarts");
        self.redis = Some(redis);
    }

    /// Runs a `vidx` client command against the coordinator.
    pub fn vidx(&self, args: &[&str]) -> Output {
        Command::new(VIDX)
            .args(args)
            .env("VIDX_COORDINATOR", self.url())
            .env("VIDX_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .output()
            .expect("vidx runs")
    }

    fn stdout_of(&self, args: &[&str]) -> String {
        let output = self.vidx(args);
        assert!(
            output.status.success(),
            "vidx {args:?} failed: {}\ncoordinator: {}",
            String::from_utf8_lossy(&output.stderr),
            self.coordinator_log()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Submits a pass over the corpus (one question, 1 fps, two frames a segment, segments of
    /// [`SEGMENT_SECS`]) with `max_attempts`, and returns its id.
    pub fn submit(&self, max_attempts: u32) -> String {
        let segment = SEGMENT_SECS.to_string();
        let attempts = max_attempts.to_string();
        let args = [
            "submit",
            SOURCE,
            "--out",
            DESTINATION,
            "--question",
            "What is shown?",
            "--fps",
            "1",
            "--max-frames",
            "2",
            "--segment-secs",
            segment.as_str(),
            "--max-attempts",
            attempts.as_str(),
        ];
        self.stdout_of(&args).trim().to_owned()
    }

    /// `vidx status PASS --json`.
    pub fn status(&self, pass_id: &str) -> Value {
        serde_json::from_str(&self.stdout_of(&["status", pass_id, "--json"])).unwrap()
    }

    /// `vidx jobs PASS --json`, one value a job.
    pub fn jobs(&self, pass_id: &str) -> Vec<Value> {
        self.stdout_of(&["jobs", pass_id, "--json", "--limit", "1000"])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The job with this id.
    pub fn job(&self, pass_id: &str, job_id: &str) -> Value {
        self.jobs(pass_id)
            .into_iter()
            .find(|job| job["job_id"] == job_id)
            .unwrap_or_else(|| panic!("no job {job_id} in pass {pass_id}"))
    }

    /// Waits (bounded) for the pass to end, calling `tick` between looks (to restart workers that
    /// exited, as Kubernetes would); returns its last status.
    pub fn wait_pass_over(&self, pass_id: &str, mut tick: impl FnMut()) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status(pass_id);
            let state = status["state"].as_str().unwrap_or_default().to_owned();
            if matches!(state.as_str(), "finished" | "cancelled" | "failed") {
                return status;
            }
            assert!(
                started.elapsed() < PASS_WITHIN,
                "the pass did not end: {status}\njobs: {:#?}\ncoordinator: {}",
                self.jobs(pass_id),
                self.coordinator_log()
            );
            tick();
            std::thread::sleep(POLL);
        }
    }

    /// Every evidence document in the index.
    pub fn documents(&self) -> Vec<Value> {
        let mut found = Vec::new();
        let mut stack = vec![self.s3.root().join(BUCKET).join("index")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // A split video's segments write parts (`parts/s0000.json`, same schema) that
                // one of its jobs assembles into the video's `evidence.json`.
                if path.file_name().is_none_or(|name| name != "evidence.json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.contains("vidx.evidence/v1") {
                    continue;
                }
                found.push(serde_json::from_str(&text).unwrap());
            }
        }
        found
    }

    /// Checks a finished pass: every good video of `corpus` indexed once (a done job per document,
    /// one document per video, split or not; no two jobs for one), every broken file dead with its reason.
    pub fn assert_indexed_once(&self, pass_id: &str, corpus: &Corpus) {
        let status = self.status(pass_id);
        assert_eq!(status["state"], "finished", "{status}");
        let jobs = self.jobs(pass_id);
        let mut result_urls: Vec<&str> = Vec::new();
        for job in &jobs {
            let url = job["spec"]["video_url"].as_str().unwrap();
            let name = url.rsplit('/').next().unwrap();
            if corpus.broken.iter().any(|broken| broken == name) {
                assert_eq!(job["state"], "dead", "{job}");
                assert!(
                    !job["last_error"].as_str().unwrap_or_default().is_empty(),
                    "a broken file says why: {job}"
                );
                continue;
            }
            assert_eq!(job["state"], "done", "{job}");
            if let Some(result) = job["result_url"].as_str() {
                result_urls.push(result);
            }
        }
        let mut distinct = result_urls.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), result_urls.len(), "{result_urls:#?}");

        let documents = self.documents();
        let mut per_video: BTreeMap<String, usize> = BTreeMap::new();
        for document in &documents {
            let url = document["video"]["url"].as_str().unwrap();
            assert!(
                !url.contains("#t="),
                "a document names the whole video: {url}"
            );
            *per_video.entry(url.to_owned()).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = corpus
            .good
            .keys()
            .map(|name| (Corpus::url(name), 1))
            .collect();
        assert_eq!(per_video, expected, "one document per good video");
        // Every document was reported by the job that wrote (or, for a split video, assembled)
        // it; a split video's other segment jobs report their parts.
        let documents_reported = result_urls
            .iter()
            .filter(|url| url.ends_with("/evidence.json"))
            .count();
        assert_eq!(
            documents_reported,
            documents.len(),
            "one done job reports each document: {result_urls:#?}"
        );
    }

    /// Starts `vidx worker` on the tiny fixture as `name` (its `--worker-id`), with `args` and
    /// `env` added; it logs JSON at info for its own crates.
    pub fn worker(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let model = fixture_model();
        let mut all_args: Vec<&str> = vec![
            "--model",
            model.to_str().unwrap(),
            "--worker-id",
            name,
            "--device",
            "cpu",
            "--min-pixels",
            "3136",
            "--max-pixels",
            "12544",
        ];
        all_args.extend_from_slice(args);
        let s3 = s3_env(&self.s3);
        let mut all_env: Vec<(&str, &str)> = s3
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        all_env.push(("VIDX_LOG_FORMAT", "json"));
        all_env.push(("RUST_LOG", "warn,vidx=info,vidx_worker=info"));
        all_env.extend_from_slice(env);
        let process = start_worker(Path::new(VIDX), &self.url(), TOKEN, &all_args, &all_env)
            .expect("vidx worker starts");
        Worker {
            name: name.to_owned(),
            process,
        }
    }

    /// The coordinator's last lines, for failure messages.
    pub fn coordinator_log(&self) -> String {
        self.coordinator
            .as_ref()
            .map_or_else(|| "(stopped)".into(), VidxCoordinator::log)
    }
}

/// The object store's settings as the `AWS_*` variables both processes read.
fn s3_env(s3: &S3Server) -> Vec<(String, String)> {
    s3.config()
        .into_iter()
        .map(|(key, value)| (key.to_uppercase(), value))
        .collect()
}

/// A running `vidx worker`; killed by its pid on drop.
pub struct Worker {
    /// Its `--worker-id`.
    pub name: String,
    process: ChildGuard,
}

/// A field of a JSON log line: the event's own, else its span's, else an enclosing span's.
pub fn log_field(line: &Value, key: &str) -> Option<String> {
    let text = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    if let Some(value) = line.get(key).and_then(text) {
        return Some(value);
    }
    if let Some(value) = line
        .get("span")
        .and_then(|span| span.get(key))
        .and_then(text)
    {
        return Some(value);
    }
    line.get("spans")?
        .as_array()?
        .iter()
        .rev()
        .find_map(|span| span.get(key).and_then(text))
}

fn json_of(line: &Line) -> Option<Value> {
    serde_json::from_str(&line.text).ok()
}

fn message_of(line: &Value) -> &str {
    line.get("message")
        .or_else(|| line.get("fields").and_then(|fields| fields.get("message")))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl Worker {
    /// Waits (bounded) for this worker to log that it leased a job whose video URL contains
    /// `video`, and returns that job's id.
    pub fn wait_leased(&mut self, video: &str) -> String {
        let name = self.name.clone();
        self.process
            .wait_for_line("lease a job", LEASE_WITHIN, |line| {
                let line = json_of(line)?;
                if message_of(&line) != "job leased" {
                    return None;
                }
                let url = log_field(&line, "video")?;
                if !url.contains(video) {
                    return None;
                }
                log_field(&line, "job_id")
            })
            .unwrap_or_else(|error| panic!("worker {name}: {error}"))
    }

    /// Waits (bounded) for this worker to log a warning whose message contains `text` (say
    /// "retry": a coordinator call that failed and will be made again), and returns the message.
    pub fn wait_warning(&mut self, text: &str, within: Duration) -> String {
        let name = self.name.clone();
        self.process
            .wait_for_line("log a warning", within, |line| {
                let line = json_of(line)?;
                if line.get("level")?.as_str()? != "WARN" {
                    return None;
                }
                let message = message_of(&line);
                message.contains(text).then(|| message.to_owned())
            })
            .unwrap_or_else(|error| panic!("worker {name}: {error}"))
    }

    /// Waits (bounded) for the worker to report the address of its HTTP endpoints
    /// (`--metrics-listen`).
    pub fn wait_metrics_address(&mut self) -> SocketAddr {
        let name = self.name.clone();
        self.process
            .wait_for_line("report its metrics address", LEASE_WITHIN, |line| {
                let rest = line.text.split("metrics listening on").nth(1)?;
                rest.split(|c: char| c.is_whitespace() || c == '"' || c == '=' || c == ',')
                    .find_map(|word| word.parse::<SocketAddr>().ok())
            })
            .unwrap_or_else(|error| panic!("worker {name}: {error}"))
    }

    /// Sends SIGTERM (by its pid), as Kubernetes does when it scales in.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.process.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.process.pid());
    }

    /// Kills it now with SIGKILL (by its pid), as an OOM kill or a lost node would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits (bounded) for it to exit; its status and what it wrote since the last wait.
    pub fn wait_exit(&mut self, within: Duration) -> (ExitStatus, String) {
        let name = self.name.clone();
        let finished = self
            .process
            .wait_finished(within)
            .unwrap_or_else(|error| panic!("worker {name}: {error}"));
        (finished.status, finished.stderr + &finished.stdout)
    }

    /// Its exit status when it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_status().unwrap()
    }

    /// Its last lines, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
