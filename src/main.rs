//! The `vidx` binary: parses flags, starts telemetry, and runs one subcommand. Errors print as
//! one line on stderr with a non-zero exit.

use clap::Parser;
use vidx::cli::{BenchCommand, Cli, Command};
use vidx::commands::{ask, coordinator, evidence, fetch_model, finalize, media, passes, worker};

fn main() -> std::process::ExitCode {
    // Before any thread starts: the model's CPU buffers are reused instead of remapped.
    vidx_model::allocator::keep_freed_buffers();
    let cli = Cli::parse();
    vidx::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Coordinator(args) => {
            coordinator::run(args.into_config()?, shutdown_token().cancelled_owned()).await
        }
        Command::Index(args) => worker::index(args, shutdown_token()).await,
        Command::Worker(args) => worker::worker(args, shutdown_token()).await,
        Command::Submit(args) => passes::submit(args).await,
        Command::Finalize(args) => finalize::finalize(args).await,
        Command::Status(args) => passes::status(args).await,
        Command::Cancel(args) => passes::cancel(args).await,
        Command::Passes(args) => passes::passes(args).await,
        Command::Jobs(args) => passes::jobs(args).await,
        // Decoding blocks: it runs on a blocking thread, never on the runtime's workers.
        Command::Probe(args) => blocking(move || media::probe(&args)).await,
        Command::Frames(args) => blocking(move || media::frames(&args)).await,
        Command::Ask(args) => ask::ask(args).await,
        Command::Search(args) => print(evidence::search(&args).await?),
        Command::Report(args) => print(evidence::report(&args).await?),
        Command::Autoscale(args) => autoscale(args, shutdown_token()).await,
        Command::FetchModel(args) => fetch_model::fetch_model(args).await,
        Command::Bench(BenchCommand::Queue(args)) => vidx::bench::queue(args.into_config()?).await,
        Command::Bench(BenchCommand::Scale(args)) => {
            vidx::bench::scale::scale(args.into_config()?).await
        }
        Command::Bench(BenchCommand::Search(args)) => {
            let config = args.into_config()?;
            print(tokio::task::spawn_blocking(move || vidx::bench::search::run(&config)).await??)
        }
        Command::Bench(BenchCommand::Pipeline(args)) => {
            vidx::bench::pipeline::pipeline(args.into_config()?).await
        }
    }
}

/// `vidx autoscale`: until SIGTERM.
async fn autoscale(
    args: vidx::cli::AutoscaleArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use vidx::autoscale::{
        DeploymentScale, InMemoryReplicas, Leadership, LeaseLock, Replicas, SoleInstance,
    };
    let policy = args.policy()?;
    let mut client = args.client.connect().await?;
    let namespace = args.namespace.as_deref();
    let (mut replicas, mut leadership): (Box<dyn Replicas>, Box<dyn Leadership>) =
        match &args.deployment {
            Some(name) if !args.dry_run => {
                let kube = vidx::autoscale::kubernetes::client().await?;
                let scale = DeploymentScale::new(
                    kube.clone(),
                    name,
                    namespace,
                    args.worker_selector.as_deref(),
                );
                let leadership: Box<dyn Leadership> = match &args.lease_name {
                    Some(lease) => {
                        let identity = args.holder_id.clone().unwrap_or_else(|| {
                            let host =
                                std::env::var("HOSTNAME").unwrap_or_else(|_| "autoscaler".into());
                            format!("{host}-{}", std::process::id())
                        });
                        Box::new(LeaseLock::new(
                            kube,
                            namespace,
                            lease,
                            &identity,
                            std::time::Duration::from_secs(args.lease_duration_secs),
                        ))
                    }
                    None => Box::new(SoleInstance),
                };
                (Box::new(scale), leadership)
            }
            _ => (
                Box::new(InMemoryReplicas {
                    count: policy.min_replicas,
                }),
                Box::new(SoleInstance),
            ),
        };
    vidx::autoscale::run(
        policy,
        std::time::Duration::from_secs(args.interval_secs),
        &mut client,
        replicas.as_mut(),
        leadership.as_mut(),
        shutdown,
    )
    .await
}

async fn blocking(
    work: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(work).await?
}

fn print(text: String) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// The shutdown token of a long-running command: cancelled on Ctrl-C or SIGTERM, and handed to
/// every loop the command runs. Short commands never install the handlers, so Ctrl-C still ends
/// them at once.
fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    shutdown
}

/// Resolves on Ctrl-C or SIGTERM (how Kubernetes stops a pod).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
