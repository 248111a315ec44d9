//! Argument parsing and dispatch. Flags that configure a deployment have an environment-variable
//! fallback (`DISTILL_*`); per-invocation switches (`--json`, `--watch`, `--choice`…) do not.

use clap::{Parser, Subcommand};

/// distill: pay for the teacher once, reuse its soft labels for every task and student.
#[derive(Debug, Parser)]
#[command(name = "distill", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `distill_coordinator=debug`.
    #[arg(long, global = true, env = "DISTILL_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole product on Rotten Tomatoes: label once, fit two tasks from the cache, distill and
    /// evaluate students, write report.json / report.md.
    Quickstart(Box<crate::quickstart::QuickstartArgs>),
    /// Run a teacher over a corpus and cache its soft labels (shards already cached are skipped).
    Label(crate::label::LabelArgs),
    /// Run a coordinator: accepts labeling jobs, leases their shards to workers (gRPC), keeps its
    /// state in the store.
    Coordinator(crate::serve_cmd::CoordinatorArgs),
    /// Run a worker: leases shards from a coordinator, runs the teacher, commits soft labels.
    Worker(crate::serve_cmd::WorkerArgs),
    /// The jobs of a coordinator: ls, show, cancel.
    #[command(subcommand)]
    Jobs(crate::jobs_cmd::JobsCommand),
    /// Inspect a cache store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Define tasks over a cached corpus (few-shot head, zero-shot, classifier teacher): no teacher pass.
    #[command(subcommand)]
    Task(crate::task_cmd::TaskCommand),
    /// Distill a student (n-gram, transformer — from the task's BERT teacher or any BERT-family encoder with --init — or, from a token-topk entry, an LM) from cached soft labels.
    Train(crate::train_cmd::TrainArgs),
    /// Evaluate a model on labeled examples: accuracy, macro-F1, agreement, calibration, latency, size.
    Eval(crate::eval_cmd::EvalArgs),
    /// Label texts (JSONL or lines) with a trained model.
    Predict(crate::eval_cmd::PredictArgs),
    /// Measure teacher throughput (figures for the README's performance section).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List what a cache holds: teacher, corpora, output, shards, rows, bytes, device-seconds.
    Ls(crate::cache_cmd::LsArgs),
}

/// Parses the command line, runs the command, prints errors as one line. Exit code 1 on failure.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Quickstart(args) => crate::quickstart::run(*args).await,
            Command::Label(args) => crate::label::run(args).await,
            Command::Coordinator(args) => crate::serve_cmd::coordinator(args).await,
            Command::Worker(args) => crate::serve_cmd::worker(args).await,
            Command::Jobs(cmd) => crate::jobs_cmd::run(cmd).await,
            Command::Cache(CacheCommand::Ls(args)) => crate::cache_cmd::ls(args).await,
            Command::Task(cmd) => crate::task_cmd::run(cmd).await,
            Command::Train(args) => crate::train_cmd::run(args).await,
            Command::Eval(args) => crate::eval_cmd::run_eval(args).await,
            Command::Predict(args) => crate::eval_cmd::run_predict(args).await,
            Command::Bench(cmd) => crate::bench::run(cmd).await,
        }
    });
    // Tasks still running (an in-process coordinator finishing a failed job) are stopped before the
    // result is printed, so whatever they log comes before it and an error stays the last line.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
