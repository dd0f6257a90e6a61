//! The `vidx` command line.

mod media_cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// vidx: distributed batch video indexing and moderation.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Describe a video as one JSON object: container, codec, displayed size, rotation, fps,
    /// duration, audio.
    Probe(media_cli::ProbeArgs),
    /// Sample frames from a video into a directory of PNGs plus frames.json.
    Frames(media_cli::FramesArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Probe(args) => media_cli::probe(args),
        Command::Frames(args) => media_cli::frames(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Media errors already name their cause: one line, no repeated chain.
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
