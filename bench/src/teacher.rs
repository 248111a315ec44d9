//! Teacher throughput: the GEMM peak of this machine, bare forward passes over a corpus's rows
//! (length-sorted token-budget batches, and corpus-order fixed batches), and end-to-end labeling
//! runs of the same rows in process, each right after a bare pass so their ratio is side by side.

use distill_cache::corpus::{CorpusReader, CorpusSpec};
use distill_cache::format::OutputRequest;
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::OutputSpec;
use distill_label::TeacherSpec;
use serde::{Deserialize, Serialize};
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
    let mut reader = CorpusReader::open(&args.corpus).await?;
    let shard = reader
        .next_shard(args.limit)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the corpus is empty"))?;
    let texts: Vec<String> = shard.rows.iter().map(|r| r.text.clone()).collect();
    let dir = ModelDir::resolve(&args.teacher.model).await?;
    let spec = args.output.resolve(&dir)?;
    let loading = Instant::now();
    let teacher = std::sync::Arc::new(args.teacher.load_dir(dir).await?);
    let load_seconds = loading.elapsed().as_secs_f64();
    let shape = teacher.shape();
    let parameters = shape.parameters;
    let budget = args.teacher.max_batch_tokens;
    let unsorted_batch = args.unsorted_batch;
    let t2 = teacher.clone();
    let spec2 = spec.clone();
    let (tokenize_seconds, encoded) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let s = Instant::now();
        let encoded = match &spec2 {
            OutputSpec::TokenTopk(_) => t2.tokenizer().encode(&refs)?,
            _ => t2.tokenize(&refs)?,
        };
        Ok((s.elapsed().as_secs_f64(), encoded))
    })
    .await??;
    let encoded = std::sync::Arc::new(encoded);
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let real: u64 = lengths.iter().map(|&l| l as u64).sum();
    let head_positions = match &spec {
        OutputSpec::TokenTopk(_) => real,
        _ => 0,
    };
    // Useful work only: the layers per real token, attention over each row's own length, the output
    // head where it runs.
    let flops = shape.forward_flops(&lengths, head_positions);
    let rows = encoded.len();
    let pass = |seconds: f64, padded: u64| Pass {
        seconds,
        texts_per_second: rows as f64 / seconds,
        real_tokens_per_second: real as f64 / seconds,
        real_tokens_per_second_per_thread: real as f64 / seconds / threads as f64,
        padding_efficiency: real as f64 / padded as f64,
        gflops: flops / seconds / 1e9,
        gemm_ratio: flops / seconds / 1e9 / gemm,
    };
    // One bare forward pass over all rows (length-sorted token-budget batches), or over shards of
    // `shard_rows` rows one after the other as a worker gets them (0: all rows at once): seconds and
    // padded tokens.
    let forward = {
        let (teacher, spec, encoded) = (teacher.clone(), spec.clone(), encoded.clone());
        move |shard_rows: usize| -> anyhow::Result<(f64, u64)> {
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
            Ok((s.elapsed().as_secs_f64(), padded))
        }
    };
    let forward = std::sync::Arc::new(forward);
    let run_forward = |shard_rows: usize| {
        let f = forward.clone();
        async move { tokio::task::spawn_blocking(move || f(shard_rows)).await? }
    };
    run_forward(0).await?; // warm-up

    let unsorted = if unsorted_batch > 0 && spec.is_per_example() {
        let (t2, encoded) = (teacher.clone(), encoded.clone());
        let (secs, padded) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let s = Instant::now();
            let mut padded = 0u64;
            for chunk in encoded.chunks(unsorted_batch) {
                let rows: Vec<_> = chunk.iter().collect();
                padded += (rows.len() * rows.iter().map(|r| r.ids.len()).max().unwrap_or(0)) as u64;
                t2.forward(&rows)?;
            }
            Ok((s.elapsed().as_secs_f64(), padded))
        })
        .await??;
        Some(pass(secs, padded))
    } else {
        None
    };

    // End to end: the same rows through `distill label`'s in-process coordinator and worker into a
    // fresh local store, each run right after a bare forward pass, so the ratio of the two is taken
    // side by side (this kind of machine's speed drifts by ±10–20% within minutes). Each run writes into a fresh store (a second run into
    // the same store would be all cache hits); the rows make two shards, so the second is labeled
    // while the first commits.
    let dir = tempfile_dir()?;
    let corpus_path = dir.join("bench.jsonl");
    let mut body = String::new();
    for r in &shard.rows {
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
    let (mut forward_runs, mut padded) = (Vec::new(), 0);
    let (mut e2e_runs, mut ratios, mut load_runs, mut bytes_per_token) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0);
    let shard_rows = rows.div_ceil(2).max(1);
    for run in 0..rounds {
        let (secs, p) = run_forward(0).await?;
        forward_runs.push(secs);
        padded = p;
        if run >= args.label_runs {
            continue;
        }
        // The baseline of the end-to-end run: the same two shards' forward passes back to back.
        let (shard_secs, _) = run_forward(shard_rows).await?;
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
            distill_label::local::with_teacher(&label_spec, store, teacher.clone(), false).await?;
        let rows_per_second = summary.ledger.rows as f64 / summary.ledger.wall_seconds;
        load_runs
            .push(summary.ledger.rows as f64 / (started.elapsed().as_secs_f64() + load_seconds));
        e2e_runs.push(rows_per_second);
        ratios.push(rows_per_second * shard_secs / rows as f64);
        bytes_per_token = summary.ledger.bytes_written as f64 / summary.ledger.tokens.max(1) as f64;
    }
    drop(teacher);
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let sorted = pass(median(forward_runs), padded);
    let (e2e, with_load) = (median(e2e_runs), median(load_runs));
    let e2e_over_forward = median(ratios.clone());
    Ok(TeacherFigures {
        rows: shard.rows.len(),
        threads,
        output: spec.describe(),
        parameters,
        gemm_gflops: gemm,
        blas_gflops: blas,
        matmul: distill_blas::get()
            .map(|b| b.name.clone())
            .unwrap_or_else(|| "candle".into()),
        tokenize_seconds,
        end_to_end_over_forward: e2e_over_forward,
        end_to_end_rounds: ratios,
        end_to_end_rows_per_second: e2e,
        end_to_end_with_load_rows_per_second: with_load,
        cache_bytes_per_token: bytes_per_token,
        sorted,
        unsorted,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("distill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
