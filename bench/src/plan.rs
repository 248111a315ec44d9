//! Planning at the store's speed: a JSONL corpus planned by a real coordinator against a store, with
//! no workers — how fast a job's shards are read, fingerprinted, looked up and staged.
//!
//! Three cases, each on a store of its own kind:
//! - **cold**: an empty cache — every shard looked up, missed and staged for workers;
//! - **warm**: the corpus's shards all committed — every shard a hit (its footer read);
//! - **reused**: a shuffled copy of the corpus against the warm cache — every shard new, every row
//!   found in the row index (loaded once), every shard staged with its rows' sources;
//! - **warm, one at a time**: the warm case with one store lookup in flight (as planning was before
//!   lookups ran concurrently): the baseline of the concurrent figures;
//! - **read only**: the corpus read into fingerprinted shards, no store at all: the reader's ceiling.
//!
//! The warm cache is made here by committing each shard of the corpus with zero embeddings and its
//! row keys (the planner reads only footers, keys and staged inputs, never the values).

use anyhow::Context;
use distill_cache::commit;
use distill_cache::corpus::{CorpusReader, CorpusSpec};
use distill_cache::format::{OutputRequest, ShardData, ShardMeta};
use distill_cache::layout::ShardKey;
use distill_cache::model_dir::ModelDir;
use distill_cache::spec::{Dtype, OutputKind};
use distill_cache::store::Location;
use distill_cache::values::{OutputValues, Vectors};
use distill_coordinator::{Coordinator, JobSpec};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// What to plan, where.
#[derive(Clone, Debug)]
pub struct PlanBenchSpec {
    /// Rows of the generated corpus.
    pub rows: usize,
    /// The store (a local folder or an object-store URL); each run uses a fresh prefix under it.
    pub store: String,
    pub shard_size: u64,
    /// Runs of each case (the median is reported).
    pub runs: usize,
    /// Where the corpus and the tiny teacher are written (`None`: a temporary folder, removed after).
    pub work_dir: Option<std::path::PathBuf>,
}

/// One case's figures.
#[derive(Debug, Serialize)]
pub struct PlanFigures {
    pub case: &'static str,
    pub rows: u64,
    pub shards: u64,
    pub bytes: u64,
    /// Median seconds from submission to the last shard planned.
    pub seconds: f64,
    pub rows_per_second: f64,
    pub mb_per_second: f64,
    /// The process's peak resident memory after this case's runs (cases run in the order listed,
    /// cold first; the warm cache is made between cold and warm), MiB.
    pub peak_rss_mib_after: f64,
}

const WORDS: &[&str] = &[
    "the", "film", "was", "a", "quiet", "triumph", "of", "craft", "and", "nerve", "though", "its",
    "second", "act", "drags", "under", "weight", "every", "scene", "earns", "place", "cast",
    "plays", "with", "warmth", "script", "never", "quite", "lands", "ending", "bold", "score",
];

/// Writes a JSONL corpus of `rows` reviews (100–400 bytes each) and, shuffled, the same rows.
fn write_corpora(dir: &std::path::Path, rows: usize) -> anyhow::Result<(String, String)> {
    let line = |i: usize| {
        let n = 15 + (i * 7919) % 60;
        let text: Vec<&str> = (0..n)
            .map(|j| WORDS[(i * 31 + j * 17 + j * j) % WORDS.len()])
            .collect();
        format!("{{\"id\":\"r{i}\",\"text\":\"{i} {}\"}}\n", text.join(" "))
    };
    let write = |name: &str, order: &mut dyn Iterator<Item = usize>| -> anyhow::Result<String> {
        let path = dir.join(name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for i in order {
            f.write_all(line(i).as_bytes())?;
        }
        f.flush()?;
        Ok(path.display().to_string())
    };
    // A fixed permutation: i * p mod rows, p prime to rows.
    let p = (1..rows)
        .rev()
        .find(|p| gcd(*p, rows) == 1 && *p < rows / 2 + 1)
        .unwrap_or(1);
    Ok((
        write("corpus.jsonl", &mut (0..rows))?,
        write("shuffled.jsonl", &mut (0..rows).map(|i| (i * p) % rows))?,
    ))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Runs every case.
pub async fn run(spec: &PlanBenchSpec) -> anyhow::Result<Vec<PlanFigures>> {
    let scratch = std::env::temp_dir().join(format!("distill-bench-plan-{}", std::process::id()));
    let work_dir = spec.work_dir.clone().unwrap_or_else(|| scratch.clone());
    let figures = run_in(spec, &work_dir).await;
    let _ = std::fs::remove_dir_all(&scratch);
    figures
}

async fn run_in(
    spec: &PlanBenchSpec,
    work_dir: &std::path::Path,
) -> anyhow::Result<Vec<PlanFigures>> {
    std::fs::create_dir_all(work_dir)?;
    let teacher = work_dir.join("tiny-encoder");
    distill_teacher::fixtures::write_tiny_bert(
        &teacher,
        &distill_teacher::fixtures::TinyKind::SentenceEncoder {
            pooling: "mean",
            normalize: true,
        },
        7,
    )
    .map_err(|e| anyhow::anyhow!("the tiny teacher: {e}"))?;
    let teacher = teacher.display().to_string();
    let (corpus, shuffled) = write_corpora(work_dir, spec.rows)?;
    let bytes = std::fs::metadata(&corpus)?.len();
    let mut out = vec![];
    let times = |case| (case, Vec::with_capacity(spec.runs));
    let (mut cold, mut warm, mut reused) = (times("cold"), times("warm"), times("reused"));
    let mut one = times("warm, one at a time");
    let mut read = times("read only");
    let mut peaks = [0.0f64; 5];
    let n = spec.shard_size;
    let wide = distill_coordinator::PLAN_CONCURRENCY;
    for run in 0..spec.runs {
        let base = format!(
            "{}/plan-{}-{run}",
            spec.store.trim_end_matches('/'),
            std::process::id()
        );
        let empty = distill_cache::store::open(&format!("{base}/cold"), true)?;
        cold.1
            .push(plan_once(&empty, &corpus, &teacher, n, wide).await?);
        peaks[0] = peak_rss_mib();
        let full = distill_cache::store::open(&format!("{base}/warm"), true)?;
        fill(&full, &corpus, &teacher, n).await?;
        warm.1
            .push(plan_once(&full, &corpus, &teacher, n, wide).await?);
        peaks[1] = peak_rss_mib();
        let reuse = plan_once(&full, &shuffled, &teacher, n, wide).await?;
        reused.1.push(reuse);
        peaks[2] = peak_rss_mib();
        one.1.push(plan_once(&full, &corpus, &teacher, n, 1).await?);
        peaks[3] = peak_rss_mib();
        read.1.push(read_once(&corpus, n).await?);
        peaks[4] = peak_rss_mib();
    }
    let cases = [cold, warm, reused, one, read];
    for ((case, mut t), peak) in cases.into_iter().zip(peaks) {
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (seconds, shards) = t[t.len() / 2];
        out.push(PlanFigures {
            case,
            rows: spec.rows as u64,
            shards,
            bytes,
            seconds,
            rows_per_second: spec.rows as f64 / seconds,
            mb_per_second: bytes as f64 / 1e6 / seconds,
            peak_rss_mib_after: peak,
        });
    }
    Ok(out)
}

/// Submits one job to a coordinator without workers and waits until it is planned: (seconds, shards).
async fn plan_once(
    store: &Location,
    corpus: &str,
    teacher: &str,
    shard_size: u64,
    concurrency: usize,
) -> anyhow::Result<(f64, u64)> {
    let settings = distill_coordinator::Settings {
        resume: false,
        plan_ahead: usize::MAX >> 4,
        plan_concurrency: concurrency,
        ..Default::default()
    };
    let coord = Coordinator::new(store.clone(), settings);
    coord.start();
    while !coord.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let view = coord
        .submit(JobSpec::embeddings(
            CorpusSpec::new(corpus),
            teacher,
            shard_size,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let id = view.info.job_id;
    loop {
        let v = coord.view(&id).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Some(e) = v.error {
            anyhow::bail!("planning failed: {e}");
        }
        if v.planned {
            let seconds = started.elapsed().as_secs_f64();
            let _ = coord.cancel(&id).await;
            return Ok((seconds, v.ledger.shards));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// This process's peak resident memory so far (`VmHWM`), MiB; 0 where /proc is not there.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Reads the corpus into shards: (seconds, shards).
async fn read_once(corpus: &str, shard_size: u64) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut reader = CorpusReader::open(&CorpusSpec::new(corpus)).await?;
    let mut shards = 0;
    while reader.next_shard(shard_size as usize).await?.is_some() {
        shards += 1;
    }
    Ok((started.elapsed().as_secs_f64(), shards))
}

/// Commits every shard of a corpus with zero embeddings, and its row keys: a warm cache.
async fn fill(
    store: &Location,
    corpus: &str,
    teacher: &str,
    shard_size: u64,
) -> anyhow::Result<()> {
    let dir = ModelDir::resolve(teacher).await?;
    let request = OutputRequest::simple(OutputKind::Embeddings, Dtype::F32);
    let output = request.resolve(&dir).context("output spec")?;
    let teacher_fp = dir.fingerprint("f32")?;
    let info = dir.info(teacher_fp.clone(), "f32");
    distill_cache::catalog::write_descriptions(store, &info, &output).await?;
    let width = distill_teacher::fixtures::HIDDEN;
    let mut reader = CorpusReader::open(&CorpusSpec::new(corpus)).await?;
    let mut commits = tokio::task::JoinSet::new();
    while let Some(shard) = reader.next_shard(shard_size as usize).await? {
        let n = shard.rows.len();
        let meta = ShardMeta {
            schema_version: distill_cache::SCHEMA_VERSION,
            producer: distill_cache::PRODUCER.to_owned(),
            teacher: info.clone(),
            output: output.clone(),
            output_fingerprint: output.fingerprint(),
            shard_fingerprint: shard.fingerprint.clone(),
            corpus: corpus.to_owned(),
            shard_index: shard.index,
            rows: n as u64,
            rejected_rows: shard.rejects.len() as u64,
            truncated_rows: 0,
            tokens: n as u64,
            device_seconds: 0.001 * n as f64,
            device: "bench".into(),
            created_unix: 0,
        };
        let data = ShardData {
            ids: shard.rows.iter().map(|r| r.id.clone()).collect(),
            texts: shard.rows.iter().map(|r| r.text.clone()).collect(),
            tokens: vec![1; n],
            truncated: vec![false; n],
            values: OutputValues::Vectors(Vectors {
                width,
                values: vec![0.0; n * width],
            }),
        };
        let key = ShardKey {
            teacher: teacher_fp.clone(),
            output: output.fingerprint(),
            shard: shard.fingerprint.clone(),
        };
        let store = store.clone();
        if commits.len() >= 16 {
            commits.join_next().await.expect("running")??;
        }
        commits.spawn(async move {
            commit::commit_shard(&store, &key, &meta, &data, &shard.rejects).await?;
            let texts = data.texts.iter().map(String::as_str);
            distill_cache::rows::write_keys(&store, &key, texts).await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = commits.join_next().await {
        r??;
    }
    Ok(())
}
