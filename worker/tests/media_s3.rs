//! Reading videos from a real S3-compatible server (`s3s-fs`, started on a loopback port by the
//! test harness) gives exactly what reading the same file locally gives, fetching only part of
//! the object when few frames are sampled. Fails, never skips, when the server is not installed.

mod common;

use std::sync::Arc;

use common::{h264, url};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use vidx_testkit::s3::S3Server;
use vidx_worker::media::{
    MediaError, ProbeOptions, ReadOptions, SampleOptions, SamplingSpec, VideoSource, probe,
    probe_source, sample_frames, sample_source,
};

const BUCKET: &str = "videos";

/// Starts the server and uploads `bytes` as `key` through the S3 API.
async fn server_with(objects: &[(&str, Vec<u8>)]) -> anyhow::Result<S3Server> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET)?;
    let store = server.store(BUCKET)?;
    for (key, bytes) in objects {
        store.put(&Path::from(*key), bytes.clone().into()).await?;
    }
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_reads_match_local_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let local = h264(dir.path(), "clip.mp4", "320x240", 25, 8.0, 50)?;
    let server = server_with(&[("clips/clip.mp4", std::fs::read(&local)?)]).await?;
    let s3_url = format!("s3://{BUCKET}/clips/clip.mp4");
    let spec = SamplingSpec {
        fps: 0.5,
        ..SamplingSpec::default()
    };
    let config = server.config();
    let local_path = local.clone();
    let spec_for_s3 = spec.clone();
    // The worker calls the blocking media API from spawn_blocking; so does this test.
    let (from_s3, probed_s3) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let source = VideoSource::from_url_with_options(&s3_url, config)?;
        let sampled = sample_source(&source, &spec_for_s3, &SampleOptions::default())?;
        let probed = probe_source(&source, &ProbeOptions::default())?;
        Ok((sampled, probed))
    })
    .await??;
    let (from_disk, probed_disk) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            sample_frames(url(&local_path), &spec)?,
            probe(url(&local_path))?,
        ))
    })
    .await??;
    assert_eq!(from_s3.frames.len(), 4);
    assert_eq!(from_s3.frames, from_disk.frames);
    assert_eq!(probed_s3.codec, probed_disk.codec);
    assert_eq!(probed_s3.duration_s, probed_disk.duration_s);
    assert_eq!(
        (probed_s3.width, probed_s3.height),
        (probed_disk.width, probed_disk.height)
    );
    assert!(from_s3.stats.requests > 0);
    common::assert_matches_cli(&local, &from_s3.frames[2])?;
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_sampling_fetches_part_of_the_object() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let local = h264(dir.path(), "long.mp4", "320x240", 25, 60.0, 50)?;
    let size = std::fs::metadata(&local)?.len();
    let server = server_with(&[("long.mp4", std::fs::read(&local)?)]).await?;
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(server.store(BUCKET)?);
    let source = VideoSource::new(
        store,
        Path::from("long.mp4"),
        format!("s3://{BUCKET}/long.mp4"),
    );
    let options = SampleOptions {
        read: ReadOptions {
            block_size: 64 * 1024,
            readahead_blocks: 2,
            ..ReadOptions::default()
        },
        ..SampleOptions::default()
    };
    let spec = SamplingSpec {
        max_frames: 3,
        ..SamplingSpec::default()
    };
    let sampled =
        tokio::task::spawn_blocking(move || sample_source(&source, &spec, &options)).await??;
    assert_eq!(sampled.frames.len(), 3);
    assert!(
        sampled.stats.bytes_fetched * 2 < size,
        "fetched {} of {size} bytes",
        sampled.stats.bytes_fetched
    );
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_are_typed() -> anyhow::Result<()> {
    let server = server_with(&[
        ("empty.mp4", Vec::new()),
        ("text.mp4", b"hello world".repeat(50)),
    ])
    .await?;
    let config = server.config();
    let errors = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<MediaError>> {
        let mut errors = Vec::new();
        for key in ["missing.mp4", "empty.mp4", "text.mp4"] {
            let source = VideoSource::from_url_with_options(
                &format!("s3://{BUCKET}/{key}"),
                config.clone(),
            )?;
            match sample_source(&source, &SamplingSpec::default(), &SampleOptions::default()) {
                Ok(sampled) => anyhow::bail!(
                    "{key}: expected an error, got {} frames",
                    sampled.frames.len()
                ),
                Err(error) => errors.push(error),
            }
        }
        Ok(errors)
    })
    .await??;
    assert!(
        matches!(errors[0], MediaError::NotFound { .. }),
        "{}",
        errors[0]
    );
    assert!(
        matches!(errors[1], MediaError::Empty { .. }),
        "{}",
        errors[1]
    );
    assert!(
        matches!(errors[2], MediaError::UnrecognizedFormat { .. }),
        "{}",
        errors[2]
    );
    assert!(errors.iter().all(|error| !error.retryable()));

    // A server that went away is a retryable store error, not a hang.
    let endpoint_config = server.config();
    drop(server);
    let error = tokio::task::spawn_blocking(move || {
        let source = VideoSource::from_url_with_options(
            &format!("s3://{BUCKET}/text.mp4"),
            endpoint_config,
        )?;
        let options = ProbeOptions {
            read: ReadOptions {
                request_timeout: std::time::Duration::from_secs(3),
                ..ReadOptions::default()
            },
            ..ProbeOptions::default()
        };
        probe_source(&source, &options)
    })
    .await?;
    let error = match error {
        Ok(info) => anyhow::bail!("expected an error, got {info:?}"),
        Err(error) => error,
    };
    assert!(error.retryable(), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_answers_times_out() -> anyhow::Result<()> {
    // Accepts connections (the kernel completes the handshake) and never answers a request.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", silent.local_addr()?);
    let error = tokio::task::spawn_blocking(move || {
        let options = [
            ("aws_endpoint_url", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "key"),
            ("aws_secret_access_key", "secret"),
            ("aws_region", "us-east-1"),
        ];
        let source = VideoSource::from_url_with_options("s3://videos/clip.mp4", options)?;
        let read = ReadOptions {
            request_timeout: std::time::Duration::from_secs(1),
            ..ReadOptions::default()
        };
        probe_source(
            &source,
            &ProbeOptions {
                read,
                ..ProbeOptions::default()
            },
        )
    })
    .await?;
    drop(silent);
    match error {
        Err(error @ MediaError::ReadTimeout { .. }) => assert!(error.retryable()),
        other => anyhow::bail!("expected a read timeout, got {other:?}"),
    }
    Ok(())
}
