//! `distill label`: plan the corpus into shards, skip what the cache holds, label the rest.

use crate::report::{bytes, count};
use anyhow::Context;
use clap::Args;
use distill_cache::corpus::{CorpusSpec, Format, Shard};
use distill_cache::format::{Dtype, OutputKind, OutputSpec};
use distill_cache::model_dir::{ModelDir, TeacherInfo};
use distill_coordinator::{Executor, JobSpec, Labeled, Progress};
use distill_worker::{DeviceSpec, Teacher};
use std::sync::Arc;

/// Where the corpus is and how to read it.
#[derive(Debug, Clone, Args)]
pub struct CorpusArgs {
    /// Corpus: a local path or URL (file://, s3://, gs://, az://, https://) of JSONL, text lines or Parquet,
    /// optionally gzip- or zstd-compressed.
    #[arg(long, env = "DISTILL_CORPUS")]
    pub corpus: String,
    /// Corpus format; by default from the file name (.jsonl, .txt, .parquet).
    #[arg(long, env = "DISTILL_FORMAT")]
    pub format: Option<Format>,
    /// JSONL field / Parquet column holding the text.
    #[arg(long, env = "DISTILL_TEXT_FIELD", default_value = "text")]
    pub text_field: String,
    /// JSONL field / Parquet column holding the id (rows without one get `line-N` / `row-N`).
    #[arg(long, env = "DISTILL_ID_FIELD", default_value = "id")]
    pub id_field: String,
}

impl CorpusArgs {
    pub fn spec(&self) -> CorpusSpec {
        CorpusSpec {
            url: self.corpus.clone(),
            format: self.format,
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
        }
    }
}

/// Which teacher, on which device.
#[derive(Debug, Clone, Args)]
pub struct TeacherArgs {
    /// Teacher: an HF-layout model directory, local or at an object-store URL.
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: String,
    /// Device to run the teacher on: cpu or cuda:N.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Token budget of one forward batch (rows × padded length).
    #[arg(long, env = "DISTILL_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
}

impl TeacherArgs {
    /// Finds, inspects and loads the teacher.
    pub async fn load(&self) -> anyhow::Result<Teacher> {
        let dir = ModelDir::resolve(&self.teacher).await?;
        let device = self.device.clone();
        let teacher = tokio::task::spawn_blocking(move || Teacher::load(&dir, &device)).await??;
        Ok(teacher)
    }
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Cache store: a local directory or URL (file://, s3://bucket/prefix, gs://, az://, memory://).
    /// S3 endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ….
    #[arg(long, env = "DISTILL_STORE")]
    pub store: String,
    /// What to cache per example: embeddings (sentence encoders) or logits (classifiers).
    #[arg(long, env = "DISTILL_OUTPUT", default_value = "embeddings")]
    pub output: OutputKind,
    /// Storage type of the cached values.
    #[arg(long, env = "DISTILL_DTYPE", default_value = "f32")]
    pub dtype: Dtype,
    /// Corpus entries per shard (the unit of caching, retry and parallelism).
    #[arg(long, env = "DISTILL_SHARD_SIZE", default_value_t = 1000)]
    pub shard_size: usize,
    /// Fail on the first bad entry instead of recording it in the shard's rejects file.
    #[arg(long, env = "DISTILL_STRICT")]
    pub strict: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the teacher for the in-process coordinator.
pub struct TeacherExecutor {
    pub teacher: Teacher,
    pub max_batch_tokens: usize,
}

impl Executor for TeacherExecutor {
    fn teacher(&self) -> &TeacherInfo {
        self.teacher.info()
    }

    fn label(&self, shard: &Shard, spec: OutputSpec, corpus: &str) -> Result<Labeled, String> {
        distill_worker::pass::label_shard(&self.teacher, shard, spec, corpus, self.max_batch_tokens)
            .map(|l| Labeled {
                meta: l.meta,
                data: l.data,
                padded_tokens: l.padded_tokens,
            })
            .map_err(|e| e.to_string())
    }
}

/// A progress bar over the corpus (bytes or rows), with rows/s and hits in its message.
struct Bar {
    bar: indicatif::ProgressBar,
    rows: std::sync::atomic::AtomicU64,
    hits: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Bar {
    fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
            )
            .expect("valid template"),
        );
        Self {
            bar,
            rows: Default::default(),
            hits: Default::default(),
            started: std::time::Instant::now(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total.max(1));
    }

    fn shard_done(&self, position: u64, rows: u64, hit: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.rows.fetch_add(rows, Relaxed) + rows;
        let hits = self.hits.fetch_add(hit as u64, Relaxed) + hit as u64;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        // A cache hit can be reported while the previous shard's commit is still in flight.
        if position > self.bar.position() {
            self.bar.set_position(position);
        }
        self.bar.set_message(format!(
            "{} rows, {rate:.0} rows/s, {hits} cache hits",
            count(done)
        ));
    }
}

pub async fn run(args: LabelArgs) -> anyhow::Result<()> {
    let summary = label(&args, true).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Runs a labeling job and returns its ledger.
pub async fn label(
    args: &LabelArgs,
    show_progress: bool,
) -> anyhow::Result<distill_coordinator::JobSummary> {
    let store = distill_cache::store::open(&args.store, true)?;
    let output = OutputSpec {
        kind: args.output,
        dtype: args.dtype,
    };
    let teacher = args.teacher.load().await?;
    distill_worker::pass::check_output(&teacher, args.output)?;
    let exec = Arc::new(TeacherExecutor {
        teacher,
        max_batch_tokens: args.teacher.max_batch_tokens,
    });
    let job = JobSpec {
        corpus: args.corpus.spec(),
        store,
        output,
        shard_size: args.shard_size,
        strict: args.strict,
    };
    let bar = Bar::new();
    if !show_progress {
        bar.bar
            .set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let summary = distill_coordinator::local::run(job, exec, &bar)
        .await
        .context("labeling failed")?;
    bar.bar.finish_and_clear();
    Ok(summary)
}

fn print_summary(s: &distill_coordinator::JobSummary) {
    println!("labeled {} with {}", s.corpus, s.teacher);
    println!(
        "  teacher     {}  output {}",
        &s.teacher_fingerprint[..12],
        &s.output_fingerprint[..12]
    );
    println!(
        "  shards      {} ({} labeled, {} cache hits)",
        count(s.shards),
        count(s.shards_labeled),
        count(s.cache_hits)
    );
    println!(
        "  rows        {} ({} rejected, {} truncated)",
        count(s.rows),
        count(s.rejected_rows),
        count(s.truncated_rows)
    );
    println!(
        "  tokens      {} (padding efficiency {:.3})",
        count(s.tokens),
        s.padding_efficiency()
    );
    println!(
        "  teacher     {:.1} s spent, {:.1} s saved by cache hits",
        s.teacher_seconds, s.teacher_seconds_saved
    );
    println!("  written     {} to {}", bytes(s.bytes_written), s.store);
    println!(
        "  wall time   {:.1} s ({:.0} rows/s)",
        s.wall_seconds,
        s.rows_per_second()
    );
    println!("  manifest    {}", s.manifest);
    if !s.reject_files.is_empty() {
        println!(
            "  rejects     {} file(s), first: {}",
            s.reject_files.len(),
            s.reject_files[0]
        );
    }
}
