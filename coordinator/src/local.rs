//! Running a job in this process.
//!
//! Three stages overlap: a planner task reads the corpus into shards and looks each up in the cache;
//! the executor labels misses on a blocking thread; a commit task encodes and publishes the previous
//! shard while the next one is labeled. Memory holds at most a few shards.

use crate::ledger::JobSummary;
use crate::{JobError, Result};
use distill_cache::catalog::{self, CorpusManifest, ManifestShard};
use distill_cache::commit::{self, CommitOutcome};
use distill_cache::corpus::{CorpusReader, CorpusSpec, Shard};
use distill_cache::format::{OutputSpec, ShardData, ShardMeta};
use distill_cache::layout::ShardKey;
use distill_cache::model_dir::TeacherInfo;
use distill_cache::store::Location;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A labeled shard, in the cache's types.
#[derive(Debug)]
pub struct Labeled {
    pub meta: ShardMeta,
    pub data: ShardData,
    pub padded_tokens: u64,
}

/// Something that runs the teacher over a shard (a worker).
pub trait Executor: Send + Sync + 'static {
    /// The teacher this executor runs.
    fn teacher(&self) -> &TeacherInfo;
    /// Labels one shard. Called on a blocking thread.
    fn label(
        &self,
        shard: &Shard,
        spec: OutputSpec,
        corpus: &str,
    ) -> std::result::Result<Labeled, String>;
}

/// Receives progress as shards finish.
pub trait Progress: Send + Sync {
    /// The corpus size in progress units, once known.
    fn start(&self, total: u64);
    /// A shard finished: `position` in progress units, its rows, and whether it was a cache hit.
    fn shard_done(&self, position: u64, rows: u64, hit: bool);
}

/// A job to run.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub corpus: CorpusSpec,
    pub store: Location,
    pub output: OutputSpec,
    pub shard_size: usize,
    /// Fail on the first rejected entry instead of recording it.
    pub strict: bool,
}

struct Planned {
    shard: Shard,
    key: ShardKey,
    hit: Option<(ShardMeta, u64)>,
}

/// Runs a job to the end and returns its ledger.
pub async fn run(
    job: JobSpec,
    exec: Arc<dyn Executor>,
    progress: &dyn Progress,
) -> Result<JobSummary> {
    if job.shard_size == 0 {
        return Err(JobError::Invalid("--shard-size must be at least 1".into()));
    }
    let started = Instant::now();
    let teacher = exec.teacher().clone();
    let output_fp = job.output.fingerprint();
    distill_cache::store::probe(&job.store).await?;
    catalog::write_descriptions(&job.store, &teacher, &job.output).await?;

    let mut reader = CorpusReader::open(&job.corpus).await?;
    progress.start(reader.total());
    let locator = reader.locator();
    let (tx, mut rx) = mpsc::channel::<Result<Planned>>(2);
    let planner = {
        let store = job.store.clone();
        let (t, o) = (teacher.fingerprint.clone(), output_fp.clone());
        let size = job.shard_size;
        tokio::spawn(async move {
            loop {
                let shard = match reader.next_shard(size).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let key = ShardKey {
                    teacher: t.clone(),
                    output: o.clone(),
                    shard: shard.fingerprint.clone(),
                };
                let hit = commit::shard_meta(&store, &key).await;
                let planned = hit
                    .map(|hit| Planned { shard, key, hit })
                    .map_err(JobError::from);
                if tx.send(planned).await.is_err() {
                    return;
                }
            }
        })
    };

    let mut summary = JobSummary {
        corpus: job.corpus.url.clone(),
        store: job.store.url.clone(),
        teacher: teacher.source.clone(),
        teacher_fingerprint: teacher.fingerprint.to_string(),
        output_fingerprint: output_fp.to_string(),
        ..Default::default()
    };
    let mut manifest_shards = Vec::new();
    let mut pending_commit: Option<tokio::task::JoinHandle<Result<(CommitOutcome, u64, u64)>>> =
        None;
    while let Some(planned) = rx.recv().await {
        let Planned { shard, key, hit } = planned?;
        if job.strict {
            if let Some(r) = shard.rejects.first() {
                return Err(JobError::Strict {
                    url: job.corpus.url.clone(),
                    locator,
                    line: r.line,
                    reason: r.reason.clone(),
                });
            }
        }
        summary.shards += 1;
        manifest_shards.push(ManifestShard {
            index: shard.index,
            fingerprint: shard.fingerprint.clone(),
            rows: shard.rows.len() as u64,
            rejected_rows: shard.rejects.len() as u64,
        });
        summary.rows += shard.rows.len() as u64;
        summary.rejected_rows += shard.rejects.len() as u64;
        if !shard.rejects.is_empty() {
            summary
                .reject_files
                .push(job.store.display(&job.store.child(&key.rejects_path())));
        }
        if let Some((meta, _size)) = hit {
            tracing::debug!(shard = shard.index, fingerprint = %shard.fingerprint.short(), "cache hit");
            summary.cache_hits += 1;
            summary.truncated_rows += meta.truncated_rows;
            summary.teacher_seconds_saved += meta.device_seconds;
            progress.shard_done(shard.progress, shard.rows.len() as u64, true);
            continue;
        }
        tracing::debug!(shard = shard.index, fingerprint = %shard.fingerprint.short(), rows = shard.rows.len(), "labeling");
        let (exec2, corpus) = (exec.clone(), job.corpus.url.clone());
        let spec = job.output;
        let (shard, labeled) = tokio::task::spawn_blocking(move || {
            let r = exec2.label(&shard, spec, &corpus);
            (shard, r)
        })
        .await
        .map_err(|e| JobError::Internal(format!("labeling task failed: {e}")))?;
        let labeled = labeled.map_err(|reason| JobError::Shard {
            index: shard.index,
            fingerprint: shard.fingerprint.to_string(),
            reason,
        })?;
        summary.shards_labeled += 1;
        summary.tokens += labeled.meta.tokens;
        summary.padded_tokens += labeled.padded_tokens;
        summary.truncated_rows += labeled.meta.truncated_rows;
        summary.teacher_seconds += labeled.meta.device_seconds;
        // Publish this shard while the next one is labeled; at most one commit in flight.
        if let Some(prev) = pending_commit.take() {
            finish_commit(prev, &mut summary, progress).await?;
        }
        let store = job.store.clone();
        let position = shard.progress;
        let rows = shard.rows.len() as u64;
        pending_commit = Some(tokio::spawn(async move {
            let outcome =
                commit::commit_shard(&store, &key, &labeled.meta, &labeled.data, &shard.rejects)
                    .await?;
            Ok((outcome, position, rows))
        }));
    }
    if let Some(prev) = pending_commit.take() {
        finish_commit(prev, &mut summary, progress).await?;
    }
    planner
        .await
        .map_err(|e| JobError::Internal(format!("planner failed: {e}")))?;

    let shard_size = job.shard_size as u64;
    let manifest = CorpusManifest {
        schema_version: distill_cache::SCHEMA_VERSION,
        corpus_fingerprint: catalog::corpus_fingerprint(shard_size, &manifest_shards),
        corpus: job.corpus.url.clone(),
        shard_size,
        teacher: teacher.fingerprint.clone(),
        output: output_fp,
        rows: summary.rows,
        rejected_rows: summary.rejected_rows,
        shards: manifest_shards,
    };
    summary.manifest = catalog::write_manifest(&job.store, &manifest).await?;
    summary.wall_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn finish_commit(
    handle: tokio::task::JoinHandle<Result<(CommitOutcome, u64, u64)>>,
    summary: &mut JobSummary,
    progress: &dyn Progress,
) -> Result<()> {
    let (outcome, position, rows) = handle
        .await
        .map_err(|e| JobError::Internal(format!("commit task failed: {e}")))??;
    if let CommitOutcome::Committed { bytes } = outcome {
        summary.bytes_written += bytes;
    }
    progress.shard_done(position, rows, false);
    Ok(())
}
