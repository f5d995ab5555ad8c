//! `sluice-torture`: the randomized differential exerciser. Without `--worker` it
//! runs a whole exercise (see `sluice_tests::torture`); with the hidden `--worker K
//! --spec FILE` it is one of the worker processes the exercise starts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_tests::torture::{self, TortureArgs};

#[derive(Parser)]
#[command(
    about = "Random operations on a replicated master tree from several processes, then a full comparison with the standby",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    args: TortureArgs,
    /// Run as worker K of the run described by --spec (started by the exercise itself).
    #[arg(long, hide = true, requires = "spec")]
    worker: Option<usize>,
    #[arg(long, hide = true)]
    spec: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.worker, &cli.spec) {
        (Some(worker), Some(spec)) => torture::worker::run(spec, worker).map(|()| true),
        _ if cli.args.minimize => torture::minimize(&cli.args).map(|outcome| outcome.passed),
        _ => torture::run(&cli.args).map(|outcome| outcome.passed),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-torture: {e:#}");
            ExitCode::from(2)
        }
    }
}
