// The lead wires `evidence_cli` into the clap subcommands; until then it is compiled but unused.
#[allow(dead_code)]
mod evidence_cli;

fn main() {}
