//! Planning a job: the corpus read into shards, each looked up in the cache — a hit is done at once,
//! a miss staged for workers with the sources of its rows the cache holds already
//! ([`distill_cache::rows`]). Lookups and staged writes run `Settings::plan_concurrency` (default
//! [`PLAN_CONCURRENCY`]) at a time; shards
//! reach the scheduler in corpus order, and staged shards not yet done are bounded by the job's
//! plan-ahead permits, so memory does not grow with the corpus.

use super::{patiently, Coordinator};
use crate::job::JobRecord;
use crate::sched::{FailedShard, PlannedShard, PlannedStatus, ShardStats, FIRST_REJECTS};
use distill_cache::commit;
use distill_cache::corpus::{CorpusReader, Shard};
use distill_cache::fingerprint::Fingerprint;
use distill_cache::format::ShardMeta;
use distill_cache::jobs;
use distill_cache::layout::ShardKey;
use distill_cache::rows::{self, RowIndex, RowKey};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Store lookups (and, separately, staged writes) in flight at once per job, by default.
pub const PLAN_CONCURRENCY: usize = 16;

/// Why planning a job failed (recorded as the job's error).
#[derive(Debug, thiserror::Error)]
pub(super) enum PlanError {
    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),
    #[error("{0}: this cached shard is damaged; delete it and run the job again to relabel it")]
    Damaged(distill_cache::CacheError),
    #[error("{place}: {reason} (run without --strict to record it as a reject and go on)")]
    Strict { place: String, reason: String },
    #[error("job record {job}: bad fingerprint {value:?}")]
    BadFingerprint { job: String, value: String },
    #[error("failed-shard record {0} vanished")]
    FailedRecordVanished(u64),
}

/// What a job's planning needs to know throughout.
struct Job<'a> {
    rec: &'a JobRecord,
    store: &'a distill_cache::store::Location,
    id: &'a str,
    teacher: Fingerprint,
    output: Fingerprint,
    resumed: bool,
    created_s: u64,
    failed_before: Vec<u64>,
    locator: &'static str,
}

impl Job<'_> {
    fn key(&self, shard: &Shard) -> ShardKey {
        ShardKey {
            teacher: self.teacher.clone(),
            output: self.output.clone(),
            shard: shard.fingerprint.clone(),
        }
    }
}

type Planned<'a> = BoxFuture<'a, Result<Option<PlannedShard>, PlanError>>;

/// What a shard's lookup found: its committed file's metadata and size, or nothing (its rows' keys).
enum Lookup {
    Hit(Box<(ShardMeta, u64)>),
    Miss(Vec<RowKey>),
}

impl Coordinator {
    /// Reads the corpus into shards: cache hits are done at once, the rest staged for workers.
    pub(super) async fn plan(
        &self,
        rec: &JobRecord,
        reader: Option<CorpusReader>,
        resumed: bool,
        permits: Arc<Semaphore>,
    ) -> Result<(), PlanError> {
        let reader = match reader {
            Some(r) => r,
            None => CorpusReader::open(&rec.spec.corpus).await?,
        };
        let job = self.job(rec, &reader, resumed).await?;
        let id = job.id;
        let size = rec.spec.shard_size as usize;
        let shards = futures::stream::try_unfold(reader, move |mut r| async move {
            Ok::<_, PlanError>(r.next_shard(size).await?.map(|s| (s, r)))
        });
        let job = &job;
        let width = self.settings.plan_concurrency.max(1);
        let mut looked = std::pin::pin!(shards
            .map_ok(|shard| self.look_up(job, shard))
            .try_buffered(width));
        let mut queue: FuturesOrdered<Planned<'_>> = FuturesOrdered::new();
        let mut index: Option<RowIndex> = None;
        let mut previous_progress = 0;
        while let Some((shard, found)) = looked.try_next().await? {
            if !self.sched().is_running(id) {
                // Cancelled: the writes in flight finish (and delete what they staged) first.
                return self.flush(id, &mut queue, 0).await;
            }
            job.check_strict(&shard)?;
            let progress = shard.progress.saturating_sub(previous_progress);
            previous_progress = shard.progress;
            let planned: Planned<'_> = match found {
                Lookup::Hit(found) => {
                    let (meta, size) = *found;
                    let status = job.found(&meta, size);
                    futures::future::ready(Ok(Some(job.planned(&shard, progress, status)))).boxed()
                }
                Lookup::Miss(_) if job.failed_before.contains(&shard.index) => {
                    self.failed_earlier(job, shard, progress).boxed()
                }
                Lookup::Miss(keys) => {
                    if permits.available_permits() == 0 {
                        // Shards waiting here hold permits: hand them to the scheduler first.
                        self.flush(id, &mut queue, 0).await?;
                    }
                    match permits.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return self.flush(id, &mut queue, 0).await, // job ended
                    }
                    let index = match &mut index {
                        Some(i) => i,
                        None => index.insert(self.load_index(job).await?),
                    };
                    let (sources, after) = index.sources(&shard.fingerprint, shard.index, &keys);
                    self.stage(job, shard, sources, progress, after).boxed()
                }
            };
            queue.push_back(planned);
            self.flush(id, &mut queue, width - 1).await?;
        }
        self.flush(id, &mut queue, 0).await
    }

    /// Adds finished shards to the scheduler, in order, until at most `left` are in flight (a job
    /// that ended takes none: they are only waited for).
    async fn flush(
        &self,
        id: &str,
        queue: &mut FuturesOrdered<Planned<'_>>,
        left: usize,
    ) -> Result<(), PlanError> {
        while queue.len() > left {
            if let Some(planned) = queue.next().await.expect("not empty")? {
                self.sched().add_shard(id, planned);
            }
        }
        Ok(())
    }

    async fn job<'a>(
        &'a self,
        rec: &'a JobRecord,
        reader: &CorpusReader,
        resumed: bool,
    ) -> Result<Job<'a>, PlanError> {
        let id = rec.job_id.as_str();
        self.sched().set_progress_total(id, reader.total());
        let parse = |s: &str| {
            Fingerprint::parse(s).ok_or_else(|| PlanError::BadFingerprint {
                job: id.to_owned(),
                value: s.to_owned(),
            })
        };
        let failed_before: Vec<u64> = if resumed {
            patiently("reading failed shards", || {
                jobs::failed_shards(&self.store, id)
            })
            .await?
        } else {
            Vec::new()
        };
        Ok(Job {
            rec,
            store: &self.store,
            id,
            teacher: parse(&rec.teacher_fingerprint)?,
            output: parse(&rec.output_fingerprint)?,
            resumed,
            created_s: (rec.created_unix_ms / 1000) as u64,
            failed_before,
            locator: reader.locator(),
        })
    }

    /// The shard's metadata if the cache holds it, else its rows' keys (computed here, so that
    /// lookups in flight hash their rows in parallel).
    async fn look_up(&self, job: &Job<'_>, shard: Shard) -> Result<(Shard, Lookup), PlanError> {
        let key = job.key(&shard);
        let found = patiently("looking up a shard", || {
            commit::shard_meta(&self.store, &key)
        })
        .await
        .map_err(|e| match e {
            distill_cache::CacheError::Parquet { .. } | distill_cache::CacheError::Shard { .. } => {
                PlanError::Damaged(e)
            }
            e => e.into(),
        })?;
        let found = match found {
            Some(meta) => Lookup::Hit(Box::new(meta)),
            None => Lookup::Miss(rows::row_keys(&shard)),
        };
        Ok((shard, found))
    }

    async fn load_index(&self, job: &Job<'_>) -> Result<RowIndex, PlanError> {
        let loaded = patiently("loading the row index", || {
            RowIndex::load(&self.store, &job.teacher, &job.output)
        })
        .await?;
        tracing::info!(job = %job.id, rows = loaded.len(), rebuilt = loaded.rebuilt, "row index loaded");
        Ok(loaded)
    }

    async fn failed_earlier(
        &self,
        job: &Job<'_>,
        shard: Shard,
        progress: u64,
    ) -> Result<Option<PlannedShard>, PlanError> {
        let path = jobs::failed_path(job.id, shard.index);
        let f: Option<FailedShard> = patiently("reading a failed shard", || {
            jobs::read_json(&self.store, &path)
        })
        .await?;
        match f {
            Some(f) => Ok(Some(job.planned(
                &shard,
                progress,
                PlannedStatus::FailedEarlier(f),
            ))),
            None => Err(PlanError::FailedRecordVanished(shard.index)),
        }
    }

    /// Writes a missed shard's input for workers; `None` if the job ended meanwhile.
    async fn stage(
        &self,
        job: &Job<'_>,
        shard: Shard,
        sources: Vec<Option<distill_cache::rows::Source>>,
        progress: u64,
        after: Option<u64>,
    ) -> Result<Option<PlannedShard>, PlanError> {
        let store = &self.store;
        patiently("staging a shard", || {
            jobs::write_input(store, job.id, &shard, &sources)
        })
        .await?;
        if !self.sched().is_running(job.id) {
            // Cancelled while this input was written: it must not outlive the job.
            let _ = jobs::delete_rel(store, &jobs::input_path(job.id, shard.index)).await;
            return Ok(None);
        }
        let planned = job.planned(&shard, progress, PlannedStatus::ToLabel);
        Ok(Some(PlannedShard { after, ..planned }))
    }
}

impl Job<'_> {
    fn check_strict(&self, shard: &Shard) -> Result<(), PlanError> {
        match shard.rejects.first() {
            Some(r) if self.rec.spec.strict => Err(PlanError::Strict {
                place: format!(
                    "corpus {}, {} {}",
                    r.file_url(&self.rec.spec.corpus.url),
                    self.locator,
                    r.line
                ),
                reason: r.reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The status of a shard the cache holds: done by this job before a restart, or a hit.
    fn found(&self, meta: &ShardMeta, size: u64) -> PlannedStatus {
        if self.resumed && meta.created_unix >= self.created_s {
            PlannedStatus::DoneEarlier(ShardStats {
                rows: meta.rows,
                tokens: meta.tokens,
                padded_tokens: meta.tokens,
                truncated_rows: meta.truncated_rows,
                device_seconds: meta.device_seconds,
                bytes_written: size,
                ..Default::default()
            })
        } else {
            PlannedStatus::Hit {
                truncated_rows: meta.truncated_rows,
                device_seconds: meta.device_seconds,
            }
        }
    }

    fn planned(&self, shard: &Shard, progress: u64, status: PlannedStatus) -> PlannedShard {
        let url = &self.rec.spec.corpus.url;
        PlannedShard {
            index: shard.index,
            fingerprint: shard.fingerprint.clone(),
            rows: shard.rows.len() as u64,
            rejects: shard.rejects.len() as u64,
            progress,
            rejects_file: (!shard.rejects.is_empty()).then(|| {
                let path = self.store.child(&self.key(shard).rejects_path());
                self.store.display(&path)
            }),
            first_rejects: shard
                .rejects
                .iter()
                .take(FIRST_REJECTS)
                .map(|r| format!("{}: {}", r.place(url, self.locator), r.reason))
                .collect(),
            status,
            after: None,
        }
    }
}
