//! The coordinator: the [`Scheduler`] behind a lock, the planners that feed it, and the store writes its
//! effects call for. The gRPC handlers ([`crate::server`]) are thin calls into this.

use crate::job::{JobRecord, JobSpec};
use crate::records::{unix_ms, ResultRecord};
use crate::sched::{Config, Effect, Held, JobState, JobView, PlannedShard, Refusal, Scheduler};
use distill_cache::catalog::{self, CorpusManifest, ManifestShard};
use distill_cache::corpus::{CorpusReader, Format};
use distill_cache::format::OutputRequest;
use distill_cache::jobs;
use distill_cache::layout;
use distill_cache::lease::{self, StoreLease, Take, Watch};
use distill_cache::model_dir::{self, ModelDir};
use distill_cache::store::Location;
use distill_proto::retry::Backoff;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

mod plan;
pub use plan::PLAN_CONCURRENCY;

/// Coordinator settings beyond scheduling.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sched: Config,
    /// Resume the store's unfinished jobs at start (a `distill coordinator`; not the in-process one).
    pub resume: bool,
    /// Shards staged for workers but not yet done, per job: bounds the staged copy of the corpus.
    pub plan_ahead: usize,
    /// Store lookups (and, apart, staged writes) in flight at once while a job is planned.
    pub plan_concurrency: usize,
    /// Hold the store's coordinator lease ([`distill_cache::lease`]) with this time to live: a second
    /// coordinator on the store stands by until this one is gone. `None`: no lease (the in-process
    /// coordinator of `distill label`, which resumes nothing).
    pub store_lease: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sched: Config::default(),
            resume: true,
            plan_ahead: 1024,
            plan_concurrency: PLAN_CONCURRENCY,
            store_lease: None,
        }
    }
}

/// A refused submission or call, with the gRPC code it maps to.
pub type CallResult<T> = Result<T, Refusal>;

/// The coordinator of one store.
pub struct Coordinator {
    store: Location,
    settings: Settings,
    sched: Mutex<Scheduler>,
    /// Whether the store answered the last probe (and resumed jobs are loaded); the server maps it
    /// onto the health service.
    ready: tokio::sync::watch::Sender<bool>,
    /// Per job: permits for staging more shards.
    staging: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Staged inputs to delete, for one background deleter (no task per completed shard).
    deletions: tokio::sync::mpsc::UnboundedSender<(String, u64)>,
    deletions_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, u64)>>>,
    /// Held from a submission's twin check to its launch.
    submitting: tokio::sync::Mutex<()>,
    /// Set when the coordinator cannot work at all (its store refuses it, a successor took its
    /// store): the process should exit.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// The store lease, once held (with [`Settings::store_lease`]).
    lease: tokio::sync::Mutex<Option<StoreLease>>,
    /// Until when the held lease lets this coordinator grant work (fencing by its own clock).
    lease_valid_until: Mutex<Option<Instant>>,
    /// This process's id as a lease holder.
    holder: String,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("store", &self.store.url)
            .finish()
    }
}

/// Probes in a row (about 15 s with backoff) that a store refuses a coordinator before it exits.
pub const STORE_REFUSALS: u32 = 5;

/// Failed probes in a row before a store counts as out of reach (the coordinator not ready).
const PROBE_MISSES: u32 = 3;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Refusal {
    Refusal::InvalidArgument(format!("{field}: {reason}"))
}

impl Coordinator {
    /// A coordinator of `store`; call [`Coordinator::start`] to run its background tasks.
    pub fn new(store: Location, settings: Settings) -> Arc<Self> {
        let epoch = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let (deletions, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Self {
            deletions,
            deletions_rx: Mutex::new(Some(rx)),
            submitting: Default::default(),
            fatal: tokio::sync::watch::Sender::new(None),
            lease: Default::default(),
            lease_valid_until: Mutex::new(None),
            holder: format!("coordinator-{epoch}"),
            store,
            sched: Mutex::new(Scheduler::new(settings.sched.clone(), epoch)),
            settings,
            ready: tokio::sync::watch::channel(false).0,
            staging: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Location {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn sched(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.sched.lock().expect("scheduler lock poisoned")
    }

    /// Whether the store answered the last probe, resumed jobs are loaded and (with a store lease)
    /// the lease was renewed recently enough to grant work.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() && self.lease_fresh()
    }

    fn lease_fresh(&self) -> bool {
        self.settings.store_lease.is_none()
            || self
                .lease_valid_until
                .lock()
                .expect("poisoned")
                .is_some_and(|t| Instant::now() < t)
    }

    /// Takes the store lease if it is free (see [`distill_cache::lease`]); starts renewing it.
    async fn take_lease(
        self: &Arc<Self>,
        ttl: Duration,
        watch: &mut Watch,
        told: &mut String,
    ) -> bool {
        match lease::try_take(&self.store, &self.holder, ttl, watch).await {
            Ok(Take::Held(l)) => {
                tracing::info!(generation = l.generation(), holder = %self.holder, "holding the store's coordinator lease");
                *self.lease_valid_until.lock().expect("poisoned") = Some(l.valid_until());
                *self.lease.lock().await = Some(l);
                let me = self.clone();
                tokio::spawn(async move { me.renew_lease(ttl).await });
                true
            }
            Ok(Take::Busy(generation, r)) => {
                let who = r.describe();
                if *told != who {
                    tracing::warn!(
                        store = %self.store.url,
                        generation,
                        "the store is held by coordinator {who}; standing by (not ready) until it stops or its lease expires ({:.0} s without renewal)",
                        ttl.as_secs_f64()
                    );
                    *told = who;
                }
                false
            }
            Err(e) => {
                tracing::error!("cannot read the store's coordinator lease: {e}; not ready");
                false
            }
        }
    }

    /// Renews the held lease every quarter of its life; a successor's generation ends the process.
    async fn renew_lease(self: Arc<Self>, ttl: Duration) {
        loop {
            tokio::time::sleep(ttl / 4).await;
            let mut guard = self.lease.lock().await;
            let Some(l) = guard.as_mut() else { return };
            match l.renew().await {
                Ok(Ok(())) => {
                    *self.lease_valid_until.lock().expect("poisoned") = Some(l.valid_until());
                }

                Ok(Err(lost)) => {
                    *self.lease_valid_until.lock().expect("poisoned") = None;
                    *guard = None;
                    self.set_ready(false);
                    tracing::error!("{lost}; this coordinator stops");
                    self.fatal.send_replace(Some(format!("{lost}")));
                    return;
                }
                Err(e) => {
                    tracing::warn!("cannot renew the store's coordinator lease: {e}");
                    if Instant::now() >= l.valid_until() {
                        // Fenced until a renewal succeeds: the health service says so too.
                        self.set_ready(false);
                    }
                }
            }
        }
    }

    /// Hands the store lease back (on shutdown) so that a successor need not wait for it to expire.
    pub async fn release(&self) {
        *self.lease_valid_until.lock().expect("poisoned") = None;
        if let Some(l) = self.lease.lock().await.take() {
            match l.release().await {
                Ok(()) => tracing::info!("store lease released"),
                Err(e) => tracing::warn!("cannot release the store lease: {e}"),
            }
        }
    }

    /// Readiness changes, for the health service.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Starts the lease-expiry ticker and the store prober; the first successful probe resumes the
    /// store's unfinished jobs and makes the coordinator ready.
    pub fn start(self: &Arc<Self>) {
        if let Some(mut rx) = self.deletions_rx.lock().expect("poisoned").take() {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((job, index)) = rx.recv().await {
                    if let Err(e) =
                        jobs::delete_rel(&me.store, &jobs::input_path(&job, index)).await
                    {
                        tracing::warn!(%job, shard = index, "cannot delete staged input: {e}");
                    }
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // While not ready the coordinator refuses heartbeats, so it expires nothing then, and
            // gives every lease a fresh lease time when it is ready again.
            let mut paused = false;
            loop {
                tick.tick().await;
                if !me.is_ready() {
                    paused = true;
                    continue;
                }
                if std::mem::take(&mut paused) {
                    me.sched().forgive(Instant::now());
                }
                let effects = me.sched().expire(Instant::now());
                me.apply(effects);
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut loaded = false;
            let mut held = me.settings.store_lease.is_none();
            let (mut watch, mut told) = (Watch::default(), String::new());
            let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            let (mut refusals, mut misses) = (0, 0);
            loop {
                let ok = match distill_cache::store::probe(&me.store).await {
                    Ok(()) => {
                        (refusals, misses) = (0, 0);
                        true
                    }
                    Err(e @ distill_cache::CacheError::StoreRefused { .. }) => {
                        refusals += 1;
                        tracing::error!(store = %me.store.url, "{e}; not ready");
                        if refusals >= STORE_REFUSALS && !loaded {
                            // Misconfigured from the start (bucket, credentials): say so and stop,
                            // rather than stay alive and unready forever.
                            me.fatal.send_replace(Some(format!(
                                "{e}; fix --store (DISTILL_STORE) or its credentials and restart"
                            )));
                            return;
                        }
                        false
                    }
                    // One failed probe is a blip (the calls themselves retry); a store that fails
                    // PROBE_MISSES probes in a row is out of reach: not ready until it answers.
                    Err(e) => {
                        misses += 1;
                        if misses >= PROBE_MISSES || !loaded {
                            tracing::error!(store = %me.store.url, "store unreachable: {e}; not ready");
                            false
                        } else {
                            tracing::warn!(store = %me.store.url, "store probe failed: {e}");
                            true
                        }
                    }
                };
                if let (true, false, Some(ttl)) = (ok, held, me.settings.store_lease) {
                    held = me.take_lease(ttl, &mut watch, &mut told).await;
                }
                if ok && held && !loaded {
                    match me.resume().await {
                        Ok(()) => loaded = true,
                        Err(e) => tracing::error!("cannot read the job records: {e}; not ready"),
                    }
                }
                if me.fatal.borrow().is_some() {
                    return;
                }
                me.set_ready(ok && held && loaded);
                // Probe every 10 s while ready; retry sooner (backing off) while not; watch a
                // held lease often enough to see it expire.
                let delay = if ok && held && loaded {
                    retry.reset();
                    Duration::from_secs(10)
                } else if let (true, false, Some(ttl)) = (ok, held, me.settings.store_lease) {
                    (ttl / 4).min(Duration::from_secs(2))
                } else {
                    retry.next_delay()
                };
                tokio::time::sleep(delay).await;
            }
        });
    }

    /// Resolves with the reason once the coordinator cannot work at all: its store refused it
    /// ([`STORE_REFUSALS`] probes in a row, before it was ever ready). An unreachable store never
    /// resolves this: the coordinator stays up and unready until the store is back.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.subscribe();
        let why = match rx.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    fn set_ready(&self, ready: bool) {
        if self.ready.send_replace(ready) != ready {
            tracing::info!(ready, "coordinator readiness changed");
        }
    }

    pub(crate) fn check_ready(&self) -> CallResult<()> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(Refusal::Unavailable(format!(
                "the coordinator cannot reach its store {} yet; retry",
                self.store.url
            )))
        }
    }

    /// Loads every job record: finished jobs for listing, unfinished ones planned again.
    async fn resume(self: &Arc<Self>) -> distill_cache::Result<()> {
        if !self.settings.resume {
            return Ok(());
        }
        let mut ids = jobs::list_jobs(&self.store).await?;
        let mut records = Vec::new();
        for id in ids.drain(..) {
            if self.sched().has_job(&id) {
                continue;
            }
            let rec = match jobs::read_json::<JobRecord>(&self.store, &jobs::job_path(&id)).await {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                // One record this release cannot read (another schema, damaged) must not keep the
                // coordinator from every other job: it is skipped, said once.
                Err(
                    e @ (distill_cache::CacheError::Store { .. }
                    | distill_cache::CacheError::StoreRefused { .. }),
                ) => return Err(e),
                Err(e) => {
                    tracing::error!(job = %id, "job record skipped: {e} (written by a newer distill? this release cannot resume it)");
                    continue;
                }
            };
            records.push(rec);
        }
        records.sort_by_key(|r| r.created_unix_ms);
        let mut loaded = Vec::new();
        for rec in records {
            let result: Option<ResultRecord> =
                jobs::read_json(&self.store, &jobs::result_path(&rec.job_id)).await?;
            let cancelled = result.is_none()
                && jobs::read_json::<i64>(&self.store, &jobs::cancelled_path(&rec.job_id))
                    .await?
                    .is_some();
            loaded.push((rec, result, cancelled));
        }
        // Hold leasing back before any job is launched, so workers can re-state what they hold.
        let unfinished = loaded.iter().filter(|(_, r, c)| r.is_none() && !c).count();
        if unfinished > 0 {
            let until = Instant::now() + self.settings.sched.recovery_window;
            self.sched().recover_until(until);
            tracing::info!(
                jobs = unfinished,
                window_s = self.settings.sched.recovery_window.as_secs_f64(),
                "waiting for workers to re-state their leases before leasing again"
            );
        }
        // Finished jobs whose inputs a stopped coordinator may have left: swept by one background
        // task, one listing each, after start-up rather than during it.
        let mut finished = Vec::new();
        for (rec, result, cancelled) in loaded {
            if cancelled {
                // Cancelled, but the coordinator stopped before recording the result: end it now.
                let id = rec.job_id.clone();
                self.sched().add_job(rec, Instant::now());
                let effects = self.sched().cancel(&id, Instant::now()).unwrap_or_default();
                self.apply(effects);
                continue;
            }
            match result {
                Some(r) => {
                    let view = JobView {
                        info: rec.clone(),
                        state: r.state,
                        error: r.error,
                        planned: true,
                        pending: 0,
                        leased: 0,
                        done: r.ledger.shards_labeled + r.ledger.cache_hits,
                        ledger: r.ledger,
                        failed: r.failed_shards,
                        reject_files: r.reject_files,
                        first_rejects: r.first_rejects,
                        manifest: r.manifest,
                        finished_unix_ms: r.finished_unix_ms,
                    };
                    self.sched().add_finished_job(view, Instant::now());
                    finished.push(rec.job_id.clone());
                }
                None => {
                    tracing::info!(job = %rec.job_id, "resuming job");
                    self.launch(rec, None, true).await;
                }
            }
        }
        if !finished.is_empty() {
            let me = self.clone();
            tokio::spawn(async move {
                for id in finished {
                    me.delete_inputs(&id).await;
                }
            });
        }
        Ok(())
    }

    // ---- jobs ----------------------------------------------------------------------------------

    /// Validates a submission, records it and starts planning it.
    pub async fn submit(self: &Arc<Self>, mut s: JobSpec) -> CallResult<JobView> {
        self.check_ready()?;
        if s.shard_size == 0 {
            return Err(invalid(
                "shard_size",
                "must be at least 1 (corpus entries per shard)",
            ));
        }
        if s.corpus.url.is_empty() {
            return Err(invalid(
                "corpus.url",
                "missing: give the corpus path or URL",
            ));
        }
        if !s.store.is_empty()
            && s.store.trim_end_matches('/') != self.store.url.trim_end_matches('/')
        {
            return Err(invalid(
                "store",
                format!(
                    "{} is not this coordinator's store ({}): submit to its coordinator, or leave the store out",
                    s.store, self.store.url
                ),
            ));
        }
        let request = OutputRequest {
            kind: s.output.parse().map_err(|e| invalid("output", e))?,
            dtype: s.dtype.parse().map_err(|e| invalid("dtype", e))?,
            top_k: s.top_k,
            samples: s.samples,
            window: s.window,
            stride: s.stride,
            prompt: s.prompt.clone(),
        };
        if s.teacher.is_empty() {
            return Err(invalid(
                "teacher",
                "missing: give the teacher's model directory",
            ));
        }
        let dir = ModelDir::resolve(&s.teacher)
            .await
            .map_err(|e| invalid("teacher", e))?;
        let spec = request.resolve(&dir).map_err(|e| invalid(e.field(), e))?;
        if let Some(p) = &request.prompt {
            let (d, p) = (dir.clone(), p.clone());
            tokio::task::spawn_blocking(move || distill_teacher::prompt::check(&d, &p))
                .await
                .map_err(|e| Refusal::Internal(e.to_string()))?
                .map_err(|e| invalid("prompt", e))?;
        }
        if !crate::job::PRECISIONS.contains(&s.precision.as_str()) {
            return Err(invalid(
                "precision",
                format!("unknown precision {:?}: use f32 or bf16", s.precision),
            ));
        }
        if !s.precision.is_empty() && dir.family != model_dir::Family::Llama {
            return Err(invalid(
                "precision",
                format!(
                    "precision {} is for decoder teachers; {} runs in f32",
                    s.precision, s.teacher
                ),
            ));
        }
        let (dir2, dtype) = (dir.clone(), s.compute_dtype().to_owned());
        let teacher_fp = tokio::task::spawn_blocking(move || dir2.fingerprint(&dtype))
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
            .map_err(|e| invalid("teacher", e))?;
        let reader = CorpusReader::open(&s.corpus)
            .await
            .map_err(|e| invalid("corpus", e))?;
        let info = dir.info(teacher_fp.clone(), s.compute_dtype());
        catalog::write_descriptions(&self.store, &info, &spec)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        // One submission at a time from here, so that two identical ones cannot both start.
        let _one = self.submitting.lock().await;
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        s.store = self.store.url.clone();
        if s.max_attempts == 0 {
            s.max_attempts = self.settings.sched.max_attempts;
        }
        let rec = JobRecord::new(id.clone(), s, spec, teacher_fp.to_string(), unix_ms());
        let twin = self.sched().running_twin(&rec);
        if let Some(twin) = twin {
            tracing::info!(job = %twin, "the same work is running: attached to it");
            return self.view(&twin);
        }
        jobs::create_json(&self.store, &jobs::job_path(&id), &rec)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        tracing::info!(job = %id, corpus = %rec.spec.corpus.url, teacher = %rec.spec.teacher, "job accepted");
        self.launch(rec, Some(reader), false).await;
        self.view(&id)
    }

    /// Adds a recorded job to the scheduler and starts its planner.
    async fn launch(self: &Arc<Self>, rec: JobRecord, reader: Option<CorpusReader>, resumed: bool) {
        let age = Duration::from_millis((unix_ms() - rec.created_unix_ms).max(0) as u64);
        let started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        {
            let mut s = self.sched();
            s.add_job(rec.clone(), started);
        }
        let permits = Arc::new(Semaphore::new(self.settings.plan_ahead.max(1)));
        self.staging
            .lock()
            .expect("poisoned")
            .insert(rec.job_id.clone(), permits.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let id = rec.job_id.clone();
            let result = me
                .plan(&rec, reader, resumed, permits)
                .await
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(job = %id, "planning failed: {e}");
            }
            let effects = me.sched().planning_done(&id, result, Instant::now());
            me.apply(effects);
        });
    }

    /// Adds a job whose shards are already planned, without reading a corpus or writing records:
    /// for benchmarks of the scheduling path (`distill bench coordinator`).
    pub fn add_planned_job(&self, info: JobRecord, shards: impl Iterator<Item = PlannedShard>) {
        let id = info.job_id.clone();
        let mut s = self.sched();
        s.add_job(info, Instant::now());
        for p in shards {
            s.add_shard(&id, p);
        }
        let _ = s.planning_done(&id, Ok(()), Instant::now());
    }

    /// A job as it stands. Before the job records are loaded (a restart), an unknown job may be
    /// one of them: that is `Unavailable` (retry), not `NotFound`.
    pub fn view(&self, id: &str) -> CallResult<JobView> {
        match self.sched().view(id) {
            Err(Refusal::NotFound(_)) if !self.is_ready() => Err(Refusal::Unavailable(format!(
                "job {id}: the coordinator is loading its job records; retry"
            ))),
            r => r,
        }
    }

    pub fn views(&self) -> Vec<JobView> {
        self.sched().views()
    }

    /// Cancels a job; the cancellation is recorded in the store before the answer, so a coordinator
    /// restarted before the job's result is written does not resume it.
    pub async fn cancel(self: &Arc<Self>, id: &str) -> CallResult<JobView> {
        self.view(id)?;
        jobs::create_json(&self.store, &jobs::cancelled_path(id), &unix_ms())
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let effects = self.sched().cancel(id, Instant::now())?;
        if let Some(p) = self.staging.lock().expect("poisoned").get(id) {
            p.close();
        }
        tracing::info!(job = %id, "job cancelled");
        self.apply(effects);
        self.view(id)
    }

    // ---- workers -------------------------------------------------------------------------------

    pub fn register(
        &self,
        version: u32,
        name: String,
        device: String,
        teachers: Vec<String>,
        held: Vec<Held>,
    ) -> CallResult<(String, Vec<String>)> {
        if version != distill_proto::PROTOCOL_VERSION {
            return Err(Refusal::FailedPrecondition(format!(
                "worker {name} speaks protocol version {version}, this coordinator speaks {}: run the same distill release on both",
                distill_proto::PROTOCOL_VERSION
            )));
        }
        let (id, adopted) = self
            .sched()
            .register(name.clone(), teachers, held, Instant::now());
        tracing::info!(worker = %id, %name, %device, adopted = adopted.len(), "worker registered");
        Ok((id, adopted))
    }

    /// Carries out the scheduler's effects in the background.
    pub fn apply(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            let me = self.clone();
            match e {
                Effect::DeleteInput { job, index } => {
                    me.release_permit(&job);
                    let _ = me.deletions.send((job, index));
                }
                Effect::RecordFailed { job, shard } => {
                    me.release_permit(&job);
                    tracing::error!(%job, shard = shard.index, attempts = shard.attempts, "shard failed: {}", shard.last_error);
                    tokio::spawn(async move {
                        if let Err(e) =
                            jobs::put_json(&me.store, &jobs::failed_path(&job, shard.index), &shard)
                                .await
                        {
                            tracing::warn!(%job, shard = shard.index, "cannot record failed shard: {e}");
                        }
                    });
                }
                Effect::Finalize { job } => {
                    tokio::spawn(async move { me.finalize(&job).await });
                }
            }
        }
    }

    fn release_permit(&self, job: &str) {
        if let Some(p) = self.staging.lock().expect("poisoned").get(job) {
            p.add_permits(1);
        }
    }

    /// Ends a job: verifies a complete job's shards are all in the cache and writes its manifest,
    /// then records the result (retrying the store until it answers: a result is never lost).
    async fn finalize(self: &Arc<Self>, id: &str) {
        let Ok(view) = self.view(id) else { return };
        let mut state = view.state;
        let mut error = view.error.clone();
        let mut manifest = None;
        if state == JobState::Running {
            if !view.failed.is_empty() {
                state = JobState::Failed;
                let f = &view.failed[0];
                error = Some(format!(
                    "{} of {} shards failed after every attempt; first: shard {} ({}) after {} attempts: {}",
                    view.failed.len(),
                    view.ledger.shards,
                    f.index,
                    f.fingerprint.short(),
                    f.attempts,
                    f.last_error
                ));
            } else {
                // A store that fails for a while does not fail a job whose shards are all in:
                // verification and the manifest are retried (for up to STORE_PATIENCE).
                let since = Instant::now();
                let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                loop {
                    match self.write_manifest(id).await {
                        Ok(path) => {
                            state = JobState::Succeeded;
                            manifest = Some(path);
                        }
                        Err(Finalize::Store(e)) if since.elapsed() < STORE_PATIENCE => {
                            tracing::warn!(job = %id, "cannot write the manifest yet: {e}; retrying");
                            tokio::time::sleep(retry.next_delay()).await;
                            continue;
                        }
                        Err(Finalize::Store(e) | Finalize::Invalid(e)) => {
                            state = JobState::Failed;
                            error = Some(e);
                        }
                    }
                    break;
                }
            }
        }
        let finished = unix_ms();
        let mut ledger = view.ledger;
        ledger.wall_seconds = view.ledger.wall_seconds;
        let result = ResultRecord {
            state,
            error: error.clone(),
            ledger,
            failed_shards: view.failed.clone(),
            reject_files: view.reject_files.clone(),
            first_rejects: view.first_rejects.clone(),
            manifest: manifest.clone(),
            finished_unix_ms: finished,
        };
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let (mut state, mut error, mut manifest) = (state, error, manifest);
        loop {
            match jobs::create_json(&self.store, &jobs::result_path(id), &result).await {
                Ok(true) => break,
                Ok(false) => {
                    // Recorded already (by a finalize that raced this one): the record stands.
                    if let Ok(Some(r)) =
                        jobs::read_json::<ResultRecord>(&self.store, &jobs::result_path(id)).await
                    {
                        (state, error, manifest) = (r.state, r.error, r.manifest);
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(job = %id, "cannot record the job's result: {e}; retrying");
                    tokio::time::sleep(retry.next_delay()).await;
                }
            }
        }
        self.delete_inputs(id).await;
        self.staging.lock().expect("poisoned").remove(id);
        self.sched()
            .finalized(id, state, error.clone(), manifest, finished);
        tracing::info!(job = %id, state = ?state, error = error.as_deref().unwrap_or(""), "job finished");
    }

    /// Deletes a finished job's staged inputs, retrying through store failures (for up to
    /// [`STORE_PATIENCE`]); a coordinator that stops first sweeps them when it resumes.
    async fn delete_inputs(&self, id: &str) {
        let deleted = patiently("deleting staged inputs", || {
            jobs::delete_inputs(&self.store, id)
        });
        if let Err(e) = deleted.await {
            tracing::warn!(job = %id, "cannot delete staged inputs: {e}; left for the next start");
        }
    }

    async fn write_manifest(&self, id: &str) -> Result<String, Finalize> {
        let (rec, shards, view) = {
            let s = self.sched();
            let vanished = || Finalize::Invalid("job vanished".into());
            let rec = s.job_info(id).cloned().ok_or_else(vanished)?;
            (rec, s.shard_list(id), s.view(id).map_err(|_| vanished())?)
        };
        let parse = |s: &str| {
            distill_cache::fingerprint::Fingerprint::parse(s)
                .ok_or_else(|| Finalize::Invalid(format!("bad fingerprint {s:?}")))
        };
        let (teacher, output) = (
            parse(&rec.teacher_fingerprint)?,
            parse(&rec.output_fingerprint)?,
        );
        // Every shard must be committed: one listing of the output's shards.
        let prefix = self
            .store
            .child(&format!("{}/shards", layout::output_dir(&teacher, &output)));
        let present: std::collections::HashSet<String> = catalog::list_under(&self.store, &prefix)
            .await
            .map_err(Finalize::store)?
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect();
        if let Some((i, fp, _, _)) = shards
            .iter()
            .find(|(_, fp, _, _)| !present.contains(&format!("{fp}.parquet")))
        {
            return Err(Finalize::Invalid(format!(
                "shard {i} ({}) was reported done but is not in the cache at {}: run the job again to label it",
                fp.short(),
                self.store.display(&prefix)
            )));
        }
        let manifest_shards: Vec<ManifestShard> = shards
            .into_iter()
            .map(|(index, fingerprint, rows, rejected_rows)| ManifestShard {
                index,
                fingerprint,
                rows,
                rejected_rows,
            })
            .collect();
        let manifest = CorpusManifest {
            schema_version: distill_cache::SCHEMA_VERSION,
            corpus_fingerprint: catalog::corpus_fingerprint(rec.spec.shard_size, &manifest_shards),
            corpus: rec.spec.corpus.url.clone(),
            shard_size: rec.spec.shard_size,
            teacher,
            output,
            rows: view.ledger.rows,
            rejected_rows: view.ledger.rejected_rows,
            shards: manifest_shards,
        };
        catalog::write_manifest(&self.store, &manifest)
            .await
            .map_err(Finalize::store)
    }
}

/// Why a job's manifest could not be written.
enum Finalize {
    /// The store failed: try again.
    Store(String),
    /// The job is not whole (a shard missing, a record gone): it fails.
    Invalid(String),
}

impl Finalize {
    fn store(e: distill_cache::CacheError) -> Self {
        Self::Store(e.to_string())
    }
}

/// How long a job's store operations (planning, verification, the manifest, clean-up) are retried
/// through store failures before the job fails.
const STORE_PATIENCE: Duration = Duration::from_secs(300);

/// Runs a store operation, retrying store failures (not other errors) for up to [`STORE_PATIENCE`].
async fn patiently<T, F, Fut>(what: &str, mut op: F) -> distill_cache::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = distill_cache::Result<T>>,
{
    let since = Instant::now();
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match op().await {
            Err(e @ distill_cache::CacheError::Store { .. })
                if since.elapsed() < STORE_PATIENCE =>
            {
                tracing::warn!("{what}: {e}; retrying");
                tokio::time::sleep(retry.next_delay()).await;
            }
            r => return r,
        }
    }
}

/// Parses a corpus format name ("" = from the file name).
pub fn parse_format(s: &str) -> CallResult<Option<Format>> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some).map_err(|e| invalid("corpus.format", e))
    }
}
