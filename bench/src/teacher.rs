//! Teacher throughput: the GEMM peak of this machine, bare forward passes over a corpus's rows
//! (length-sorted token-budget batches, and corpus-order fixed batches), and end-to-end labeling
//! runs of the same rows in process, each right after a bare pass so their ratio is side by side.

use distill_cache::corpus::{CorpusReader, CorpusSpec};
use distill_cache::format::OutputRequest;
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::OutputSpec;
use distill_label::TeacherSpec;
use distill_teacher::tokenizer::Encoded;
use distill_teacher::Teacher;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherBenchSpec {
    pub corpus: CorpusSpec,
    pub teacher: TeacherSpec,
    /// What the timed passes compute: embeddings time the model's body (for a decoder: prompt
    /// scoring), token-topk the body plus the output head at every position.
    pub output: OutputRequest,
    /// Rows of the corpus to use (from the start).
    pub limit: usize,
    /// Also time fixed batches of this many rows in corpus order (0: skip; per-example outputs only).
    pub unsorted_batch: usize,
    /// Rounds of one bare forward pass followed by one end-to-end labeling run (medians taken).
    /// 0: three bare passes and no labeling run.
    pub label_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct TeacherFigures {
    pub rows: usize,
    pub threads: usize,
    pub output: String,
    pub parameters: u64,
    pub gemm_gflops: f64,
    /// The same 2048³ product through the BLAS loaded at run time (absent without one).
    pub blas_gflops: Option<f64>,
    /// Which BLAS the linear layers ran on ("candle" without one).
    pub matmul: String,
    pub tokenize_seconds: f64,
    pub sorted: Pass,
    pub unsorted: Option<Pass>,
    /// `distill label` rows per second of its job (corpus read to last commit), with the teacher the
    /// bench holds (loaded and warm, as a worker's across shards).
    pub end_to_end_rows_per_second: f64,
    /// The median over rounds of the end-to-end rows/s ÷ the rows/s of the bare forward passes over
    /// the same two shards, run just before (the host's cost: tokenizing, planning, encoding, commits).
    pub end_to_end_over_forward: f64,
    /// That ratio in each round.
    pub end_to_end_rounds: Vec<f64>,
    /// The same, counting also the teacher's load (a fixed cost per worker process).
    pub end_to_end_with_load_rows_per_second: f64,
    /// Bytes of the committed cache entry per real token.
    pub cache_bytes_per_token: f64,
}

#[derive(Debug, Serialize)]
pub struct Pass {
    pub seconds: f64,
    pub texts_per_second: f64,
    pub real_tokens_per_second: f64,
    /// Real tokens per second per CPU thread.
    pub real_tokens_per_second_per_thread: f64,
    pub padding_efficiency: f64,
    pub gflops: f64,
    pub gemm_ratio: f64,
}

/// Median seconds of `n` runs of `f` after one warm-up.
fn median_seconds(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[n / 2])
}

/// The loaded BLAS's f32 GEMM peak, 2048³ split over the threads as the linear layers split it.
fn blas_gflops() -> Option<f64> {
    use rayon::prelude::*;
    let blas = distill_blas::get()?;
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let rows = n.div_ceil(threads);
    median_seconds(5, || {
        c.par_chunks_mut(rows * n)
            .zip(a.par_chunks(rows * n))
            .for_each(|(c, x)| blas.sgemm((x.len() / n, n, n), x, &a, 0.0, c));
        Ok(())
    })
    .ok()
    .map(|secs| 2.0 * (n as f64).powi(3) / secs / 1e9)
}

fn gemm_gflops() -> anyhow::Result<f64> {
    let n = 2048;
    let a = candle_core::Tensor::randn(0f32, 1.0, (n, n), &candle_core::Device::Cpu)?;
    let b = candle_core::Tensor::randn(0f32, 1.0, (n, n), &candle_core::Device::Cpu)?;
    let secs = median_seconds(5, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / secs / 1e9)
}

/// Runs the benchmark: the GEMM peaks, bare forward passes, and end-to-end labeling runs.
pub async fn run(args: &TeacherBenchSpec) -> anyhow::Result<TeacherFigures> {
    let gemm = tokio::task::spawn_blocking(gemm_gflops).await??;
    let blas = tokio::task::spawn_blocking(blas_gflops).await?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let p = Prepared::new(args).await?;
    let work = p.work(threads, gemm);
    p.forward(0).await?; // warm-up
    let unsorted = match args.unsorted_batch > 0 && p.spec.is_per_example() {
        true => {
            let (secs, padded) = p.unsorted(args.unsorted_batch).await?;
            Some(work.pass(secs, padded))
        }
        false => None,
    };
    let r = end_to_end(args, &p).await?;
    Ok(TeacherFigures {
        rows: p.rows.len(),
        threads,
        output: p.spec.describe(),
        parameters: p.teacher.shape().parameters,
        gemm_gflops: gemm,
        blas_gflops: blas,
        matmul: distill_blas::get()
            .map(|b| b.name.clone())
            .unwrap_or_else(|| "candle".into()),
        tokenize_seconds: p.tokenize_seconds,
        end_to_end_over_forward: median(r.ratios.clone()),
        end_to_end_rounds: r.ratios,
        end_to_end_rows_per_second: median(r.rows_per_second),
        end_to_end_with_load_rows_per_second: median(r.with_load),
        cache_bytes_per_token: r.bytes_per_token,
        sorted: work.pass(median(r.forward_seconds), r.padded),
        unsorted,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The rows, the loaded teacher and the rows tokenized once: what every timed pass reads.
struct Prepared {
    rows: Vec<distill_cache::corpus::Row>,
    teacher: Arc<Teacher>,
    spec: OutputSpec,
    encoded: Arc<Vec<Encoded>>,
    budget: usize,
    load_seconds: f64,
    tokenize_seconds: f64,
}

impl Prepared {
    /// Reads the first `limit` rows, loads the teacher (timed) and tokenizes the rows (timed).
    async fn new(args: &TeacherBenchSpec) -> anyhow::Result<Self> {
        let mut reader = CorpusReader::open(&args.corpus).await?;
        let shard = reader
            .next_shard(args.limit)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the corpus is empty"))?;
        let dir = ModelDir::resolve(&args.teacher.model).await?;
        let spec = args.output.resolve(&dir)?;
        let loading = Instant::now();
        let teacher = Arc::new(args.teacher.load_dir(dir).await?);
        let load_seconds = loading.elapsed().as_secs_f64();
        let texts: Vec<String> = shard.rows.iter().map(|r| r.text.clone()).collect();
        let (t, topk) = (teacher.clone(), matches!(spec, OutputSpec::TokenTopk(_)));
        let (tokenize_seconds, encoded) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let s = Instant::now();
            let encoded = match topk {
                true => t.tokenizer().encode(&refs)?,
                false => t.tokenize(&refs)?,
            };
            anyhow::Ok((s.elapsed().as_secs_f64(), encoded))
        })
        .await??;
        Ok(Self {
            rows: shard.rows,
            teacher,
            spec,
            encoded: Arc::new(encoded),
            budget: args.teacher.max_batch_tokens,
            load_seconds,
            tokenize_seconds,
        })
    }

    /// The useful work of one pass over the rows: the layers per real token, attention over each
    /// row's own length, the output head where it runs.
    fn work(&self, threads: usize, gemm: f64) -> Work {
        let lengths: Vec<usize> = self.encoded.iter().map(|e| e.ids.len()).collect();
        let real: u64 = lengths.iter().map(|&l| l as u64).sum();
        let head_positions = match &self.spec {
            OutputSpec::TokenTopk(_) => real,
            _ => 0,
        };
        Work {
            rows: self.encoded.len(),
            real,
            flops: self.teacher.shape().forward_flops(&lengths, head_positions),
            threads,
            gemm,
        }
    }

    /// One bare forward pass over all rows (length-sorted token-budget batches), or over shards of
    /// `shard_rows` rows one after the other as a worker gets them (0: all rows at once): seconds and
    /// padded tokens.
    async fn forward(&self, shard_rows: usize) -> anyhow::Result<(f64, u64)> {
        let (teacher, spec, encoded) = (
            self.teacher.clone(),
            self.spec.clone(),
            self.encoded.clone(),
        );
        let budget = self.budget;
        tokio::task::spawn_blocking(move || {
            let s = Instant::now();
            let mut padded = 0;
            let size = if shard_rows == 0 {
                encoded.len()
            } else {
                shard_rows
            };
            for part in encoded.chunks(size.max(1)) {
                padded += match &spec {
                    OutputSpec::TokenTopk(t) => teacher.label_topk(part, t, budget, 1)?,
                    _ => teacher.label_encoded(part, budget)?,
                }
                .padded_tokens;
            }
            anyhow::Ok((s.elapsed().as_secs_f64(), padded))
        })
        .await?
    }

    /// Fixed batches of `batch` rows in corpus order: seconds and padded tokens.
    async fn unsorted(&self, batch: usize) -> anyhow::Result<(f64, u64)> {
        let (teacher, encoded) = (self.teacher.clone(), self.encoded.clone());
        tokio::task::spawn_blocking(move || {
            let s = Instant::now();
            let mut padded = 0u64;
            for chunk in encoded.chunks(batch) {
                let rows: Vec<_> = chunk.iter().collect();
                padded += (rows.len() * rows.iter().map(|r| r.ids.len()).max().unwrap_or(0)) as u64;
                teacher.forward(&rows)?;
            }
            anyhow::Ok((s.elapsed().as_secs_f64(), padded))
        })
        .await?
    }
}

/// The useful work of a pass, to turn its seconds into figures.
struct Work {
    rows: usize,
    real: u64,
    flops: f64,
    threads: usize,
    gemm: f64,
}

impl Work {
    fn pass(&self, seconds: f64, padded: u64) -> Pass {
        let real = self.real as f64;
        Pass {
            seconds,
            texts_per_second: self.rows as f64 / seconds,
            real_tokens_per_second: real / seconds,
            real_tokens_per_second_per_thread: real / seconds / self.threads as f64,
            padding_efficiency: real / padded as f64,
            gflops: self.flops / seconds / 1e9,
            gemm_ratio: self.flops / seconds / 1e9 / self.gemm,
        }
    }
}

/// What the rounds measured: each round's bare pass, and each end-to-end run beside its own bare
/// pass over the same two shards.
struct Rounds {
    forward_seconds: Vec<f64>,
    padded: u64,
    rows_per_second: Vec<f64>,
    ratios: Vec<f64>,
    with_load: Vec<f64>,
    bytes_per_token: f64,
}

/// End to end: the same rows through `distill label`'s in-process coordinator and worker into a
/// fresh local store, each run right after a bare forward pass, so the ratio of the two is taken side
/// by side (this kind of machine's speed drifts by ±10–20% within minutes). Each run writes into a
/// fresh store (a second run into the same store would be all cache hits); the rows make two
/// shards, so the second is labeled while the first commits. Without label runs, three bare passes.
async fn end_to_end(args: &TeacherBenchSpec, p: &Prepared) -> anyhow::Result<Rounds> {
    let dir = tempfile_dir()?;
    let corpus_path = dir.join("bench.jsonl");
    let mut body = String::new();
    for r in &p.rows {
        body.push_str(&serde_json::to_string(
            &serde_json::json!({"id": r.id, "text": r.text}),
        )?);
        body.push('\n');
    }
    std::fs::write(&corpus_path, body)?;
    let rounds = if args.label_runs > 0 {
        args.label_runs
    } else {
        3
    };
    let mut r = Rounds {
        forward_seconds: Vec::new(),
        padded: 0,
        rows_per_second: Vec::new(),
        ratios: Vec::new(),
        with_load: Vec::new(),
        bytes_per_token: 0.0,
    };
    let shard_rows = p.encoded.len().div_ceil(2).max(1);
    for run in 0..rounds {
        let (secs, padded) = p.forward(0).await?;
        r.forward_seconds.push(secs);
        r.padded = padded;
        if run >= args.label_runs {
            continue;
        }
        // The baseline of the end-to-end run: the same two shards' forward passes back to back.
        let (shard_secs, _) = p.forward(shard_rows).await?;
        let store_url = dir.join(format!("store-{run}")).display().to_string();
        let label_spec = distill_label::LabelSpec {
            teacher: args.teacher.clone(),
            shard_size: shard_rows as u64,
            ..distill_label::LabelSpec::new(
                &corpus_path.display().to_string(),
                &args.teacher.model,
                &store_url,
                args.output.clone(),
            )
        };
        // The teacher this process already holds, warm, as a worker holds it across shards; its load
        // is a cost per process, counted in the second figure.
        let store = distill_cache::store::open(&store_url, true)?;
        let started = Instant::now();
        let summary =
            distill_label::local::with_teacher(&label_spec, store, p.teacher.clone(), false)
                .await?;
        let l = &summary.ledger;
        let rows_per_second = l.rows as f64 / l.wall_seconds;
        let total = started.elapsed().as_secs_f64() + p.load_seconds;
        r.with_load.push(l.rows as f64 / total);
        r.rows_per_second.push(rows_per_second);
        r.ratios
            .push(rows_per_second * shard_secs / p.encoded.len() as f64);
        r.bytes_per_token = l.bytes_written as f64 / l.tokens.max(1) as f64;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("distill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
