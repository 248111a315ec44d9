//! `distill label`: plan the corpus into shards, skip what the cache holds, label the rest.
//!
//! With `--coordinator`, the job is submitted to a running coordinator and watched. Without it, the same
//! coordinator and a worker holding the already loaded teacher run in this process on loopback: one
//! code path (gRPC, leases, staged inputs, commits by the worker) for a laptop and for a cluster.

use crate::remote::{status, transient, RemoteArgs, Waiting};
use crate::report::{bytes, count};
use anyhow::Context;
use clap::Args;
use distill_cache::corpus::{CorpusSpec, Format};
use distill_cache::format::OutputRequest;
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::{Choice, Dtype, OutputKind, PromptSpec};
use distill_coordinator::{JobSpec, JobSummary};
use distill_proto::v1;
use distill_teacher::{DeviceSpec, LoadOptions, Resident, Teacher};
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
    /// How the teacher is loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            resident: match self.job_precision() {
                "bf16" => Resident::Bf16,
                _ => self.resident_weights,
            },
            memory_limit: None,
        }
    }

    /// The job's precision as the wire names it ("" is f32).
    pub fn job_precision(&self) -> &str {
        match self.precision.as_str() {
            "f32" => "",
            p => p,
        }
    }

    /// Finds, inspects and loads the teacher.
    pub async fn load(&self) -> anyhow::Result<Teacher> {
        self.load_dir(ModelDir::resolve(&self.teacher).await?).await
    }

    /// Loads an inspected teacher on the chosen device.
    pub async fn load_dir(&self, dir: ModelDir) -> anyhow::Result<Teacher> {
        let (device, options) = (self.device.clone(), self.load_options());
        let teacher =
            tokio::task::spawn_blocking(move || Teacher::load_with(&dir, &device, &options))
                .await??;
        Ok(teacher)
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
    /// A per-example output (embeddings or logits) with no token-topk or prompt settings.
    pub fn simple(output: OutputKind, dtype: Dtype) -> Self {
        Self {
            output: Some(output),
            dtype,
            top_k: None,
            samples: None,
            window: None,
            stride: None,
            prompt: None,
            choices: vec![],
            chat: false,
            system: None,
            answer_prefix: String::new(),
            length_normalize: false,
        }
    }

    /// The prompt of `--prompt`/`--choice` (the template read from @FILE), or `None`.
    pub fn prompt_spec(&self) -> anyhow::Result<Option<PromptSpec>> {
        let Some(t) = &self.prompt else {
            if !self.choices.is_empty()
                || self.chat
                || self.system.is_some()
                || !self.answer_prefix.is_empty()
                || self.length_normalize
            {
                anyhow::bail!(
                    "--choice, --chat, --system, --answer-prefix and --length-normalize need --prompt"
                );
            }
            return Ok(None);
        };
        if self.system.is_some() && !self.chat {
            anyhow::bail!("--system is the chat's system message: it needs --chat");
        }
        let template = match t.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--prompt @{path}: cannot read the file"))?,
            None => t.clone(),
        };
        let choices = self
            .choices
            .iter()
            .map(|c| {
                c.split_once('=')
                    .map(|(l, t)| Choice {
                        label: l.to_owned(),
                        continuation: t.to_owned(),
                    })
                    .ok_or_else(|| anyhow::anyhow!("--choice {c:?}: write LABEL=CONTINUATION"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(PromptSpec {
            template,
            choices,
            chat: self.chat,
            system: self.system.clone(),
            answer_prefix: self.answer_prefix.clone(),
            length_normalize: self.length_normalize,
        }))
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
    fn spec(&self) -> anyhow::Result<v1::JobSpec> {
        let request = self.output.request()?;
        Ok(JobSpec {
            corpus: self.corpus.spec(),
            teacher: self.teacher.teacher.clone(),
            store: self.store.clone().unwrap_or_default(),
            output: request.kind.name().into(),
            dtype: request.dtype.to_string(),
            top_k: self.output.top_k.unwrap_or(0),
            samples: self.output.samples.unwrap_or(0),
            window: self.output.window.unwrap_or(0),
            stride: self.output.stride.unwrap_or(0),
            prompt: request.prompt,
            shard_size: self.shard_size as u64,
            strict: self.strict,
            max_attempts: self.max_attempts,
            precision: self.teacher.job_precision().into(),
        }
        .to_wire())
    }
}

/// A progress bar over the corpus (bytes or rows), with rows/s and hits in its message.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }

    pub fn new(show: bool) -> Self {
        let target = if show {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(None, target);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
            )
            .expect("valid template"),
        );
        Self(bar)
    }

    fn update(&self, job: &v1::Job) {
        let l = job.ledger.unwrap_or_default();
        self.0.set_length(l.progress_total.max(1));
        self.0.set_position(l.progress);
        let rate = if l.wall_seconds > 0.0 {
            (l.shards_labeled + l.cache_hits) as f64 / l.wall_seconds
        } else {
            0.0
        };
        self.0.set_message(format!(
            "{}/{} shards ({} cache hits, {} leased, {} failed), {rate:.1} shards/s",
            count(job.shards_done),
            count(l.shards),
            count(l.cache_hits),
            count(job.shards_leased),
            count(l.shards_failed),
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

/// Runs a labeling job (on a coordinator, or in this process) and returns its ledger. A job that does
/// not succeed is an error naming why (its failed shards, or the bad input that stopped planning).
pub async fn label(args: &LabelArgs, show_progress: bool) -> anyhow::Result<JobSummary> {
    if args.shard_size == 0 {
        anyhow::bail!("--shard-size must be at least 1 (corpus entries per shard)");
    }
    if args.remote.coordinator.is_some() {
        let ch = args.remote.connect().await?;
        let url = args.remote.client_config()?.url;
        let wait = args.remote.wait()?;
        return submit_and_watch(ch, &url, args.spec()?, show_progress, wait).await;
    }
    let store_url = args
        .store
        .as_deref()
        .expect("clap requires --store without --coordinator");
    let store = distill_cache::store::open(store_url, true)?;
    distill_cache::store::probe(&store).await?;
    let request = args.output.request()?;
    let dir = ModelDir::resolve(&args.teacher.teacher).await?;
    // Refuse a bad output request before loading anything.
    request.resolve(&dir)?;
    if let Some(p) = &request.prompt {
        distill_teacher::prompt::check(&dir, p)?;
    }
    let teacher = args.teacher.load_dir(dir).await?;
    label_in_process(args, store, Arc::new(teacher), show_progress).await
}

/// Runs coordinator and worker in this process on loopback, for one job.
pub async fn label_in_process(
    args: &LabelArgs,
    store: distill_cache::store::Location,
    teacher: Arc<Teacher>,
    show_progress: bool,
) -> anyhow::Result<JobSummary> {
    use distill_coordinator::sched::Config;
    use std::time::Duration;
    let settings = distill_coordinator::Settings {
        sched: Config {
            lease_ttl: Duration::from_secs(120),
            heartbeat_interval: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
            speculate_after: None,
            ..Config::default()
        },
        resume: false,
        plan_ahead: 64,
        store_lease: None,
    };
    let coord = distill_coordinator::Coordinator::new(store.clone(), settings);
    coord.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = {
        let mut stopped = stopped.clone();
        let opts = distill_coordinator::server::ServeOptions {
            token: Some(token.clone()),
            tls: None,
        };
        tokio::spawn(distill_coordinator::server::serve(
            coord.clone(),
            listener,
            opts,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    };
    while !coord.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = distill_proto::ClientConfig {
        url,
        token: Some(token),
        tls_ca: None,
    };
    let worker = tokio::spawn(distill_worker::pull::run(
        distill_worker::pull::PullConfig {
            client: client.clone(),
            name: "in-process".into(),
            device: args.teacher.device.clone(),
            load: args.teacher.load_options(),
            max_batch_tokens: args.teacher.max_batch_tokens,
            drain_grace: Duration::from_secs(600),
            stores: vec![store],
            idle_poll_max: Duration::from_millis(100),
        },
        Arc::new(distill_worker::pull::TeacherSlot::with(teacher)),
        Default::default(),
        stopped,
    ));
    let ch = distill_proto::connect(&client).await?;
    let wait = args.remote.wait()?;
    let result = submit_and_watch(ch, &client.url, args.spec()?, show_progress, wait).await;
    let _ = stop.send(true);
    worker.await??;
    server.await??;
    result
}

/// Submits a job and follows it with a progress bar until it ends, riding out coordinator restarts
/// for up to `wait` each: a submission is retried (the coordinator attaches a repeated one to the
/// job already running it), and the watch re-attaches to the same job id.
pub async fn submit_and_watch(
    ch: distill_proto::Channel,
    url: &str,
    spec: v1::JobSpec,
    show_progress: bool,
    wait: std::time::Duration,
) -> anyhow::Result<JobSummary> {
    let mut jobs = distill_proto::job_client(ch);
    let bar = Bar::new(show_progress);
    let show = |m: String| bar.0.set_message(m);
    let mut waiting = Waiting::new(url, wait);
    let job = loop {
        let request = v1::SubmitJobRequest {
            spec: Some(spec.clone()),
        };
        match jobs.submit_job(request).await {
            Ok(r) => {
                break r
                    .into_inner()
                    .job
                    .context("the coordinator returned no job")?
            }
            Err(s) if transient(&s) => waiting.pause(s.message(), &show).await?,
            Err(s) => return Err(status(s)),
        }
    };
    waiting.reset();
    tracing::info!(job = %job.job_id, "job submitted");
    let last = follow(&mut jobs, job, &bar, &mut waiting).await?;
    bar.finish();
    let summary = JobSummary::from_wire(&last);
    match v1::JobState::try_from(last.state) {
        Ok(v1::JobState::Succeeded) => Ok(summary),
        _ => anyhow::bail!(
            "job {} {}: {}",
            last.job_id,
            summary.state,
            if last.error.is_empty() {
                "cancelled"
            } else {
                &last.error
            }
        ),
    }
}

/// Follows a job until it ends and returns its last state. A cut stream, a coordinator restart or
/// one not ready yet is waited out (see [`Waiting`]) and the watch re-attached by job id.
pub async fn follow(
    jobs: &mut distill_proto::JobClient,
    mut last: v1::Job,
    bar: &Bar,
    waiting: &mut Waiting,
) -> anyhow::Result<v1::Job> {
    let show = |m: String| bar.0.set_message(m);
    let id = last.job_id.clone();
    loop {
        let request = v1::WatchJobRequest { job_id: id.clone() };
        let mut stream = match jobs.watch_job(request).await {
            Ok(s) => s.into_inner(),
            Err(s) if transient(&s) => {
                waiting.pause(s.message(), &show).await?;
                continue;
            }
            Err(s) => return Err(status(s)),
        };
        let why = loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    if let Some(j) = update.job {
                        waiting.reset();
                        bar.update(&j);
                        last = j;
                    }
                }
                Ok(None) if last.state != v1::JobState::Running as i32 => return Ok(last),
                // A coordinator shutting down ends its streams cleanly, the job still running.
                Ok(None) => break "the coordinator closed the stream".to_owned(),
                Err(s) if transient(&s) => break s.message().to_owned(),
                Err(s) => return Err(status(s)),
            }
        };
        waiting.pause(&why, &show).await?;
    }
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
        "  teacher     {:.1} s spent, {:.1} s saved by cache hits",
        s.ledger.teacher_seconds, s.ledger.teacher_seconds_saved
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
