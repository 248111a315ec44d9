//! `distill label`: the flags of a labeling job mapped onto a [`distill_label::LabelSpec`], the job
//! run by the library (on `--coordinator`, or in this process), its ledger printed.

use crate::remote::RemoteArgs;
use crate::report::{bytes, count};
use clap::Args;
use distill_cache::corpus::{CorpusSpec, Format};
use distill_cache::format::OutputRequest;
use distill_cache::spec::{Dtype, OutputKind, PromptSpec};
use distill_coordinator::JobSummary;
use distill_label::{LabelSpec, TeacherSpec};
use distill_teacher::{DeviceSpec, Resident};

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
    /// Longest JSONL or text line read, in bytes: a longer one is a reject (with its reason), read
    /// past without being held in memory [default: 8 MiB].
    #[arg(long, env = "DISTILL_MAX_ROW_BYTES")]
    pub max_row_bytes: Option<u64>,
}

impl CorpusArgs {
    pub fn spec(&self) -> CorpusSpec {
        CorpusSpec {
            url: self.corpus.clone(),
            format: self.format,
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            max_row_bytes: self.max_row_bytes.unwrap_or(0),
        }
    }
}

/// Which teacher, on which device.
#[derive(Debug, Clone, Args)]
pub struct TeacherArgs {
    /// Teacher: an HF-layout model directory or a GGUF file (llama-family decoders), local or at an
    /// object-store URL.
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: String,
    /// Device to run the teacher on: cpu or cuda:N.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Token budget of one forward batch (rows × padded length).
    #[arg(long, env = "DISTILL_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// How a decoder's weights stay in memory on the CPU: compact (in the file's encoding,
    /// dequantized one matrix at a time) or f32 (dequantized once at load; the reference path).
    #[arg(long, env = "DISTILL_RESIDENT_WEIGHTS", default_value = "compact")]
    pub resident_weights: Resident,
    /// Precision of a decoder teacher's products: f32, or bf16 (weights and product inputs in bf16,
    /// accumulated in f32: what GPUs run fast; labels under another teacher fingerprint).
    #[arg(long, env = "DISTILL_PRECISION", default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
}

impl TeacherArgs {
    /// The library's teacher spec of these flags.
    pub fn spec(&self) -> anyhow::Result<TeacherSpec> {
        Ok(TeacherSpec {
            model: self.teacher.clone(),
            device: self.device.clone(),
            max_batch_tokens: self.max_batch_tokens,
            resident: self.resident_weights,
            precision: self.precision.parse().map_err(anyhow::Error::msg)?,
        })
    }
}

/// What to cache.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// What to cache: embeddings (sentence encoders; decoders: mean of the last states), logits
    /// (classifiers) or token-topk (decoders: each position's next-token top-k, tail and log-partition)
    /// [default: embeddings; with --prompt: logits].
    #[arg(long, env = "DISTILL_OUTPUT")]
    pub output: Option<OutputKind>,
    /// Storage type of the cached values (token-topk: of the top-k log-probabilities).
    #[arg(long, env = "DISTILL_DTYPE", default_value = "f32")]
    pub dtype: Dtype,
    /// token-topk: entries kept per position [default: 20].
    #[arg(long, env = "DISTILL_TOP_K")]
    pub top_k: Option<u32>,
    /// token-topk: tokens sampled per position from the full distribution (seeded by the shard), kept
    /// as distinct ids and counts.
    #[arg(long, env = "DISTILL_SAMPLES")]
    pub samples: Option<u32>,
    /// token-topk: longest run of tokens scored at once; longer rows are windowed [default: the
    /// teacher's context].
    #[arg(long, env = "DISTILL_WINDOW")]
    pub window: Option<u32>,
    /// token-topk: step between the windows of a longer row [default: half the window].
    #[arg(long, env = "DISTILL_STRIDE")]
    pub stride: Option<u32>,
    /// Prompted labeling with a decoder teacher: the prompt, with {text} where the row goes (or
    /// @FILE). The class logits of a row are the log-probabilities of each --choice's continuation.
    #[arg(long, env = "DISTILL_PROMPT")]
    pub prompt: Option<String>,
    /// A class of the prompt: LABEL=CONTINUATION (e.g. `positive= positive`), once per class, in
    /// logits order.
    #[arg(long = "choice", value_name = "LABEL=CONTINUATION")]
    pub choices: Vec<String>,
    /// Wrap the prompt in the model's chat format (a user turn, then the assistant's turn).
    #[arg(long, env = "DISTILL_CHAT")]
    pub chat: bool,
    /// With --chat: the system message (default: the model's own default, if it has one).
    #[arg(long, env = "DISTILL_SYSTEM")]
    pub system: Option<String>,
    /// Text the continuations follow, after the prompt (after the assistant's turn opens with --chat).
    #[arg(long, env = "DISTILL_ANSWER_PREFIX", default_value = "")]
    pub answer_prefix: String,
    /// Divide each continuation's log-probability by its number of tokens (default: summed).
    #[arg(long, env = "DISTILL_LENGTH_NORMALIZE")]
    pub length_normalize: bool,
}

impl OutputArgs {
    /// The prompt of `--prompt`/`--choice` (the template read from @FILE), or `None`.
    pub fn prompt_spec(&self) -> anyhow::Result<Option<PromptSpec>> {
        let flags = distill_cache::spec::PromptFlags {
            prompt: self.prompt.as_deref(),
            choices: &self.choices,
            chat: self.chat,
            system: self.system.as_deref(),
            answer_prefix: &self.answer_prefix,
            length_normalize: self.length_normalize,
        };
        flags.spec().map_err(anyhow::Error::msg)
    }

    /// The request, with 0 for what the teacher decides.
    pub fn request(&self) -> anyhow::Result<OutputRequest> {
        for (flag, v) in [
            ("--top-k", self.top_k),
            ("--window", self.window),
            ("--stride", self.stride),
        ] {
            if v == Some(0) {
                anyhow::bail!("{flag} 0 is out of range: leave it out for the default");
            }
        }
        let prompt = self.prompt_spec()?;
        let kind = match (&prompt, self.output) {
            // A prompt labels a task: class logits.
            (Some(_), None | Some(OutputKind::Logits)) => OutputKind::Logits,
            (Some(_), Some(other)) => anyhow::bail!(
                "--prompt caches class logits, not {}: leave --output out",
                other.name()
            ),
            (None, kind) => kind.unwrap_or(OutputKind::Embeddings),
        };
        Ok(OutputRequest {
            kind,
            prompt,
            dtype: self.dtype,
            top_k: self.top_k.unwrap_or(0),
            samples: self.samples.unwrap_or(0),
            window: self.window.unwrap_or(0),
            stride: self.stride.unwrap_or(0),
        })
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
    /// With --coordinator: optional, and must be the coordinator's store.
    #[arg(long, env = "DISTILL_STORE", required_unless_present = "coordinator")]
    pub store: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Corpus entries per shard (the unit of caching, retry and parallelism).
    #[arg(long, env = "DISTILL_SHARD_SIZE", default_value_t = 1000)]
    pub shard_size: usize,
    /// Fail on the first bad entry instead of recording it in the shard's rejects file.
    #[arg(long, env = "DISTILL_STRICT")]
    pub strict: bool,
    /// Attempts per shard before it is marked failed (0: the coordinator's default).
    #[arg(long, env = "DISTILL_MAX_ATTEMPTS", default_value_t = 0)]
    pub max_attempts: u32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl LabelArgs {
    /// The library's spec of these flags.
    pub fn spec(&self) -> anyhow::Result<LabelSpec> {
        if self.corpus.max_row_bytes == Some(0) {
            anyhow::bail!("--max-row-bytes must be at least 1 (leave it out for 8 MiB)");
        }
        Ok(LabelSpec {
            corpus: self.corpus.spec(),
            teacher: self.teacher.spec()?,
            store: self.store.clone(),
            output: self.output.request()?,
            shard_size: self.shard_size as u64,
            strict: self.strict,
            max_attempts: self.max_attempts,
            remote: self.remote.spec()?,
        })
    }
}

pub async fn run(args: LabelArgs) -> anyhow::Result<()> {
    let summary = distill_label::label(&args.spec()?, true).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

pub(crate) fn print_summary(s: &JobSummary) {
    println!(
        "job {} {}: {} with {}",
        s.job_id, s.state, s.corpus, s.teacher
    );
    println!(
        "  teacher     {}  output {}",
        &s.teacher_fingerprint[..s.teacher_fingerprint.len().min(12)],
        &s.output_fingerprint[..s.output_fingerprint.len().min(12)]
    );
    println!(
        "  shards      {} ({} labeled, {} cache hits, {} failed; {} retries, {} lease expiries, {} speculative)",
        count(s.ledger.shards),
        count(s.ledger.shards_labeled),
        count(s.ledger.cache_hits),
        count(s.ledger.shards_failed),
        count(s.ledger.retries),
        count(s.ledger.lease_expiries),
        count(s.ledger.speculative_leases)
    );
    println!(
        "  rows        {} ({} rejected, {} truncated)",
        count(s.ledger.rows),
        count(s.ledger.rejected_rows),
        count(s.ledger.truncated_rows)
    );
    println!(
        "  tokens      {} (padding efficiency {:.3})",
        count(s.ledger.tokens),
        s.padding_efficiency()
    );
    println!(
        "  teacher     {:.1} s spent, {:.1} s saved by the cache ({} rows of new shards copied from it)",
        s.ledger.teacher_seconds,
        s.ledger.teacher_seconds_saved,
        count(s.ledger.rows_reused)
    );
    println!(
        "  written     {} to {}",
        bytes(s.ledger.bytes_written),
        s.store
    );
    println!(
        "  wall time   {:.1} s ({:.0} rows/s)",
        s.ledger.wall_seconds,
        s.rows_per_second()
    );
    if !s.manifest.is_empty() {
        println!("  manifest    {}", s.manifest);
    }
    for f in &s.failed_shards {
        println!(
            "  failed      shard {} ({}) after {} attempts: {}",
            f.index, f.fingerprint, f.attempts, f.last_error
        );
    }
    if !s.error.is_empty() {
        println!("  error       {}", s.error);
    }
    for r in &s.first_rejects {
        println!("  rejected    {r}");
    }
    if !s.reject_files.is_empty() {
        println!(
            "  rejects     {} in {} file(s), first: {}",
            count(s.ledger.rejected_rows),
            s.reject_files.len(),
            s.reject_files[0]
        );
    }
}
