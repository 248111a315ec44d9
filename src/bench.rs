//! `distill bench teacher`: the figures of the README's performance section, measured side by side in
//! one run — this machine's f32 GEMM peak (candle's matmul), bare teacher forward throughput with
//! length-sorted token-budget batches and with fixed batches in corpus order, and end-to-end
//! `distill label` throughput on the same rows.

use crate::label::{CorpusArgs, OutputArgs, TeacherArgs};
use clap::{Args, Subcommand};
use distill_bench::teacher::{Pass, TeacherBenchSpec};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Teacher forward and end-to-end labeling throughput.
    Teacher(Box<TeacherBenchArgs>),
    /// Coordinator throughput: simulated workers leasing and completing shards of a huge job.
    Coordinator(crate::bench_coord::CoordBenchArgs),
    /// Planning speed: a generated JSONL corpus planned against a store, cold, warm and reused.
    Plan(PlanBenchArgs),
    /// The coordinator process of `bench coordinator` (started by it).
    #[command(hide = true)]
    CoordinatorServer(crate::bench_coord::CoordServerArgs),
}

#[derive(Debug, Args)]
pub struct TeacherBenchArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// What the timed passes compute (as `distill label --output`): embeddings times the model's body
    /// (for a decoder: prompt scoring), token-topk the body plus the output head at every position.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Rows of the corpus to use (from the start).
    #[arg(long, default_value_t = 2048)]
    pub limit: usize,
    /// Also time fixed batches of this many rows in corpus order (0: skip; per-example outputs only).
    #[arg(long, default_value_t = 32)]
    pub unsorted_batch: usize,
    /// Rounds of one bare forward pass followed by one end-to-end `distill label` run (medians
    /// taken; the end-to-end ratio round by round: a shared VM's speed moves a single round's ratio
    /// by ±3%, so five). 0: three bare passes and no label run.
    #[arg(long, default_value_t = 5)]
    pub label_runs: usize,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Teacher(args) => teacher(*args).await,
        BenchCommand::Coordinator(args) => crate::bench_coord::run(args).await,
        BenchCommand::CoordinatorServer(args) => crate::bench_coord::server(args).await,
        BenchCommand::Plan(args) => plan(args).await,
    }
}

#[derive(Debug, Args)]
pub struct PlanBenchArgs {
    /// Rows of the generated JSONL corpus.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// The store: a local folder or an object-store URL (each run writes under a fresh prefix).
    #[arg(long, env = "DISTILL_STORE")]
    pub store: String,
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u64,
    /// Runs of each case; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the corpus and the tiny teacher are written (a temporary folder, removed after, if not
    /// given).
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

async fn plan(args: PlanBenchArgs) -> anyhow::Result<()> {
    let spec = distill_bench::plan::PlanBenchSpec {
        rows: args.rows,
        store: args.store.clone(),
        shard_size: args.shard_size,
        runs: args.runs.max(1),
        work_dir: args.work_dir.clone(),
    };
    let figures = distill_bench::plan::run(&spec).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    println!(
        "planning {} rows ({} shards) against {}",
        args.rows, figures[0].shards, args.store
    );
    for f in &figures {
        println!(
            "  {:<20} {:>7.2} s  {:>10.0} rows/s  {:>7.1} MB/s  peak RSS {:>6.0} MiB",
            f.case, f.seconds, f.rows_per_second, f.mb_per_second, f.peak_rss_mib_after
        );
    }
    Ok(())
}

async fn teacher(args: TeacherBenchArgs) -> anyhow::Result<()> {
    let spec = TeacherBenchSpec {
        corpus: args.corpus.spec(),
        teacher: args.teacher.spec()?,
        output: args.output.request()?,
        limit: args.limit,
        unsorted_batch: args.unsorted_batch,
        label_runs: args.label_runs,
    };
    let figures = distill_bench::teacher::run(&spec).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        let f = &figures;
        println!(
            "teacher bench: {} rows, {} threads, {} parameters, output {}, linear layers on {}; f32 GEMM peak (2048³): candle {:.0} GFLOP/s, BLAS {}",
            f.rows,
            f.threads,
            f.parameters,
            f.output,
            f.matmul,
            f.gemm_gflops,
            f.blas_gflops
                .map(|g| format!("{g:.0} GFLOP/s"))
                .unwrap_or_else(|| "none".into())
        );
        println!(
            "{:<28} {:>9} {:>12} {:>14} {:>9} {:>9} {:>8}",
            "pass", "texts/s", "real tok/s", "tok/s/thread", "padding", "GFLOP/s", "of peak"
        );
        let line = |name: &str, p: &Pass| {
            println!(
                "{name:<28} {:>9.1} {:>12.0} {:>14.0} {:>9.3} {:>9.1} {:>7.1}%",
                p.texts_per_second,
                p.real_tokens_per_second,
                p.real_tokens_per_second_per_thread,
                p.padding_efficiency,
                p.gflops,
                100.0 * p.gemm_ratio
            )
        };
        line("sorted, token budget", &f.sorted);
        if let Some(u) = &f.unsorted {
            line("corpus order, fixed batch", u);
        }
        println!(
            "tokenize: {:.2} s; end to end `distill label`: {:.1} rows/s = {:.2} × bare forward; cache {:.1} B/token",
            f.tokenize_seconds, f.end_to_end_rows_per_second, f.end_to_end_over_forward, f.cache_bytes_per_token
        );
    }
    Ok(())
}
