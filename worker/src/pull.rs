//! The worker's pull loop (`distill worker`): register with a coordinator, lease shards, label them,
//! commit them to the cache, report.
//!
//! - Heartbeats run on the IO runtime every `heartbeat_interval`, renewing every lease held, while the
//!   teacher's forward passes run on the one thread that owns the device ([`DeviceThread`]; on the
//!   CPU, rayon's pool inside).
//! - Host work stays off the device's path: while one shard is labeled, the next lease is taken, its
//!   input read and tokenized on the blocking pool (prefetch of one), and the labeled shard's Parquet
//!   encoding (blocking pool), commit and report run on tasks of their own while the next shard is
//!   labeled (at most [`COMMITS_IN_FLIGHT`] at once; labeling waits when that many are still running).
//! - The teacher stays loaded across shards and jobs; a lease for another teacher replaces it.
//! - Before labeling, the cache is asked whether the shard is there already (a speculative twin or a
//!   worker of an earlier coordinator committed it): then nothing is labeled twice.
//! - A coordinator that restarted forgets this worker: the worker registers again, re-stating the
//!   leases it works on, and keeps those the coordinator adopts.
//! - On shutdown (SIGTERM), it takes no new work, hands back the prefetched lease, and finishes the
//!   current shard and the commits behind it within `drain_grace`, or hands them back too.
//! - An unreachable coordinator is retried with exponential backoff (0.5 s to 30 s), saying so.

use crate::device::DeviceThread;
use crate::reuse::Reused;
use crate::{Result, WorkerError};
use distill_cache::commit::{self, CommitOutcome};
use distill_cache::corpus::Shard;
use distill_cache::fingerprint::Fingerprint;
use distill_cache::layout::ShardKey;
use distill_cache::model_dir::ModelDir;
use distill_cache::rows::Reuse;
use distill_cache::spec::{Dtype, OutputKind, OutputSpec};
use distill_cache::store::Location;
use distill_proto::retry::Backoff;
use distill_proto::v1;
use distill_proto::{ClientConfig, WorkerClient};
use distill_teacher::pass::{label_tokenized_shard, tokenize_shard, LabeledShard};
use distill_teacher::teacher::Tokenized;
use distill_teacher::{DeviceSpec, LoadOptions, Teacher};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::Code;

/// Settings of a worker.
#[derive(Clone, Debug)]
pub struct PullConfig {
    pub client: ClientConfig,
    /// Shown in the coordinator's logs.
    pub name: String,
    pub device: DeviceSpec,
    /// How teachers are loaded (weights kept compact or f32; the memory they may take).
    pub load: LoadOptions,
    pub max_batch_tokens: usize,
    /// How long a draining worker may take to finish its shard.
    pub drain_grace: Duration,
    /// Stores to use instead of opening the lease's store URL (in-process runs and tests).
    pub stores: Vec<Location>,
    /// The longest wait between lease requests while there is no work (the wait doubles from 100 ms
    /// up to it). A second suits a cluster; in-process runs, on loopback, use 100 ms.
    pub idle_poll_max: Duration,
}

/// The teacher this worker holds, reused across shards and jobs.
#[derive(Default)]
pub struct TeacherSlot(Mutex<Option<Arc<Teacher>>>);

impl std::fmt::Debug for TeacherSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TeacherSlot")
    }
}

impl TeacherSlot {
    /// A slot holding an already loaded teacher.
    pub fn with(teacher: Arc<Teacher>) -> Self {
        Self(Mutex::new(Some(teacher)))
    }

    /// Whether a teacher is in memory.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Teacher>> {
        self.0.lock().expect("poisoned").clone()
    }

    fn fingerprints(&self) -> Vec<String> {
        self.current()
            .map(|t| vec![t.info().fingerprint.to_string()])
            .unwrap_or_default()
    }

    /// The teacher of a lease: the loaded one if its fingerprint matches, else loaded from `source`.
    async fn get(
        &self,
        source: &str,
        fingerprint: &str,
        device: &DeviceSpec,
        options: &LoadOptions,
    ) -> Result<Arc<Teacher>> {
        if let Some(t) = self
            .current()
            .filter(|t| t.info().fingerprint.as_str() == fingerprint)
        {
            return Ok(t);
        }
        tracing::info!(teacher = %source, "loading teacher");
        let dir = ModelDir::resolve(source).await?;
        let (device, options) = (device.clone(), *options);
        let teacher =
            tokio::task::spawn_blocking(move || Teacher::load_with(&dir, &device, &options))
                .await
                .map_err(|e| WorkerError::Config(format!("teacher loading thread: {e}")))??;
        if teacher.info().fingerprint.as_str() != fingerprint {
            return Err(WorkerError::Model {
                location: source.to_owned(),
                reason: format!(
                    "has fingerprint {} here but the job was planned with {}: the model differs between the coordinator and this worker",
                    teacher.info().fingerprint.short(),
                    &fingerprint[..fingerprint.len().min(12)]
                ),
            });
        }
        let teacher = Arc::new(teacher);
        *self.0.lock().expect("poisoned") = Some(teacher.clone());
        Ok(teacher)
    }
}

/// Counters for the worker's `/metrics`.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub shards_labeled: AtomicU64,
    pub shards_already_present: AtomicU64,
    pub shards_failed: AtomicU64,
    pub rows: AtomicU64,
    pub rows_reused: AtomicU64,
    pub tokens: AtomicU64,
    pub device_micros: AtomicU64,
    pub leases_held: AtomicU64,
    pub reports_refused: AtomicU64,
    pub connected: AtomicU64,
}

impl WorkerMetrics {
    /// The Prometheus page.
    pub fn render(&self, teacher_loaded: bool) -> String {
        use distill_proto::http::metric;
        let mut p = String::new();
        let c = |p: &mut String, n: &str, h: &str, v: &AtomicU64| {
            metric(p, n, "counter", h, v.load(Relaxed) as f64)
        };
        c(
            &mut p,
            "distill_worker_shards_labeled_total",
            "Shards this worker labeled and committed.",
            &self.shards_labeled,
        );
        c(
            &mut p,
            "distill_worker_shards_already_present_total",
            "Leased shards found already committed (not labeled again).",
            &self.shards_already_present,
        );
        c(
            &mut p,
            "distill_worker_shard_failures_total",
            "Shard attempts that failed here.",
            &self.shards_failed,
        );
        c(
            &mut p,
            "distill_worker_rows_total",
            "Rows of the shards this worker committed, copied rows included (rate() gives rows/s).",
            &self.rows,
        );
        c(
            &mut p,
            "distill_worker_rows_reused_total",
            "Rows of labeled shards copied from the cache instead (not through the teacher).",
            &self.rows_reused,
        );
        c(
            &mut p,
            "distill_worker_tokens_total",
            "Real tokens through the teacher.",
            &self.tokens,
        );
        c(
            &mut p,
            "distill_worker_reports_refused_total",
            "Completions the coordinator refused (stale leases).",
            &self.reports_refused,
        );
        metric(
            &mut p,
            "distill_worker_device_seconds_total",
            "counter",
            "Device-seconds of forward passes.",
            self.device_micros.load(Relaxed) as f64 / 1e6,
        );
        metric(
            &mut p,
            "distill_worker_leases_held",
            "gauge",
            "Leases held now (current and prefetched).",
            self.leases_held.load(Relaxed) as f64,
        );
        metric(
            &mut p,
            "distill_worker_connected",
            "gauge",
            "1 while registered with the coordinator.",
            self.connected.load(Relaxed) as f64,
        );
        metric(
            &mut p,
            "distill_worker_teacher_loaded",
            "gauge",
            "1 while a teacher is in memory.",
            teacher_loaded as u8 as f64,
        );
        p
    }
}

/// Labeled shards whose commit and report may run at once, behind the shard being labeled.
pub const COMMITS_IN_FLIGHT: usize = 2;

/// A lease with its input read and tokenized, and its teacher ready.
struct Prepared {
    lease: v1::ShardLease,
    /// The rows the teacher labels: the whole shard, or its rows the cache does not hold.
    shard: Shard,
    /// What the shard copies from the cache, if anything.
    reused: Option<Reused>,
    input: Tokenized,
    store: Location,
    teacher: Arc<Teacher>,
    spec: OutputSpec,
}

/// A shard labeled and ready to commit.
struct Labeled {
    lease: v1::ShardLease,
    shard: Shard,
    store: Location,
    output: Fingerprint,
    labeled: LabeledShard,
    /// Device-seconds this worker spent on it (the fresh rows').
    spent_seconds: f64,
    reuse: Reuse,
}

/// What the heartbeat and the main loop share.
struct Shared {
    cfg: PullConfig,
    client: WorkerClient,
    worker_id: Mutex<String>,
    /// Leases held now, by id.
    held: Mutex<HashMap<String, v1::HeldLease>>,
    revoked: Mutex<std::collections::HashSet<String>>,
    teachers: Arc<TeacherSlot>,
    metrics: Arc<WorkerMetrics>,
    stores: Mutex<HashMap<String, Location>>,
    /// One (re-)registration at a time.
    registering: tokio::sync::Mutex<()>,
    /// Runs the forward passes (the device's only caller).
    device: DeviceThread,
}

/// Whether a status says the coordinator does not know this worker (it restarted).
fn unknown_worker(s: &tonic::Status) -> bool {
    s.code() == Code::NotFound && s.message().starts_with(distill_proto::UNKNOWN_WORKER)
}

impl Shared {
    fn id(&self) -> String {
        self.worker_id.lock().expect("poisoned").clone()
    }

    fn hold(&self, l: &v1::ShardLease) {
        let mut h = self.held.lock().expect("poisoned");
        h.insert(
            l.lease_id.clone(),
            v1::HeldLease {
                lease_id: l.lease_id.clone(),
                job_id: l.job_id.clone(),
                shard_index: l.shard_index,
            },
        );
        self.metrics.leases_held.store(h.len() as u64, Relaxed);
    }

    fn drop_lease(&self, id: &str) {
        let mut h = self.held.lock().expect("poisoned");
        h.remove(id);
        self.metrics.leases_held.store(h.len() as u64, Relaxed);
        self.revoked.lock().expect("poisoned").remove(id);
    }

    fn is_revoked(&self, id: &str) -> bool {
        self.revoked.lock().expect("poisoned").contains(id)
    }

    fn store(&self, url: &str) -> Result<Location> {
        let mut stores = self.stores.lock().expect("poisoned");
        if let Some(s) = stores.get(url) {
            return Ok(s.clone());
        }
        let loc = distill_cache::store::open(url, true)?;
        stores.insert(url.to_owned(), loc.clone());
        Ok(loc)
    }

    /// Registers (again), re-stating held leases; leases the coordinator does not adopt are dropped.
    async fn register(&self) -> std::result::Result<(u32, u32), tonic::Status> {
        let held: Vec<v1::HeldLease> = self
            .held
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        let caps = v1::Capabilities {
            device: self.cfg.device.to_string(),
            memory_bytes: 0,
            teachers_loaded: self.teachers.fingerprints(),
            max_batch_tokens: self.cfg.max_batch_tokens as u64,
        };
        let resp = self
            .client
            .clone()
            .register(v1::RegisterRequest {
                protocol_version: distill_proto::PROTOCOL_VERSION,
                name: self.cfg.name.clone(),
                capabilities: Some(caps),
                held: held.clone(),
            })
            .await?
            .into_inner();
        for h in held {
            if !resp.adopted_lease_ids.contains(&h.lease_id) {
                self.revoked.lock().expect("poisoned").insert(h.lease_id);
            }
        }
        *self.worker_id.lock().expect("poisoned") = resp.worker_id.clone();
        self.metrics.connected.store(1, Relaxed);
        tracing::info!(worker = %resp.worker_id, "registered with the coordinator");
        Ok((resp.heartbeat_interval_ms, resp.lease_ttl_ms))
    }

    /// Registers again after `failed` (the id a call was refused for) became unknown; a no-op when
    /// another task has registered since.
    async fn reregister(&self, failed: &str) -> std::result::Result<(), tonic::Status> {
        let _one = self.registering.lock().await;
        if self.id() != failed {
            return Ok(());
        }
        self.register().await.map(|_| ())
    }

    async fn heartbeat(&self) {
        let ids: Vec<String> = self
            .held
            .lock()
            .expect("poisoned")
            .keys()
            .cloned()
            .collect();
        let me = self.id();
        let req = v1::HeartbeatRequest {
            worker_id: me.clone(),
            lease_ids: ids,
        };
        match self.client.clone().heartbeat(req).await {
            Ok(r) => {
                let revoked = r.into_inner().revoked_lease_ids;
                if !revoked.is_empty() {
                    tracing::info!(leases = ?revoked, "leases revoked by the coordinator");
                    self.revoked.lock().expect("poisoned").extend(revoked);
                }
            }
            Err(s) if unknown_worker(&s) => {
                tracing::warn!(
                    "the coordinator no longer knows this worker (restarted?): registering again"
                );
                if let Err(s) = self.reregister(&me).await {
                    tracing::warn!("registering again failed: {}", s.message());
                }
            }
            Err(s) => {
                self.metrics.connected.store(0, Relaxed);
                tracing::warn!("heartbeat failed: {}", s.message());
            }
        }
    }

    async fn lease(&self) -> std::result::Result<Option<v1::ShardLease>, tonic::Status> {
        let me = self.id();
        let req = v1::LeaseRequest {
            worker_id: me.clone(),
            teachers_loaded: self.teachers.fingerprints(),
        };
        match self.client.clone().lease(req.clone()).await {
            Err(s) if unknown_worker(&s) => {
                self.reregister(&me).await?;
                let req = v1::LeaseRequest {
                    worker_id: self.id(),
                    ..req
                };
                Ok(self.client.clone().lease(req).await?.into_inner().lease)
            }
            r => {
                let r = r?.into_inner();
                Ok(r.lease)
            }
        }
    }

    async fn fail(&self, lease: &v1::ShardLease, error: String, release: bool) {
        if !release {
            self.metrics.shards_failed.fetch_add(1, Relaxed);
            tracing::warn!(job = %lease.job_id, shard = lease.shard_index, lease = %lease.lease_id, "shard failed: {error}");
        }
        let req = v1::FailRequest {
            worker_id: self.id(),
            lease_id: lease.lease_id.clone(),
            error,
            release,
        };
        if let Err(s) = self.client.clone().fail(req).await {
            tracing::warn!(lease = %lease.lease_id, "reporting the failure: {}", s.message());
        }
        self.drop_lease(&lease.lease_id);
    }

    async fn complete(&self, lease: &v1::ShardLease, stats: v1::ShardStats) {
        let req = v1::CompleteRequest {
            worker_id: self.id(),
            lease_id: lease.lease_id.clone(),
            stats: Some(stats),
        };
        // A coordinator restarting (unreachable, or not ready yet) gets the report again for a while:
        // the shard is committed, and reporting it spares a lease of the next coordinator.
        let mut result = self.client.clone().complete(req.clone()).await;
        let mut retry = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        while matches!(&result, Err(s) if s.code() == Code::Unavailable)
            && tokio::time::Instant::now() + retry.peek() < give_up
        {
            tokio::time::sleep(retry.next_delay()).await;
            let req = v1::CompleteRequest {
                worker_id: self.id(),
                ..req.clone()
            };
            result = self.client.clone().complete(req).await;
        }
        if matches!(&result, Err(s) if unknown_worker(s)) {
            // A restarted coordinator: register again, re-stating this lease, and report once more.
            if self.reregister(&req.worker_id).await.is_ok() {
                let req = v1::CompleteRequest {
                    worker_id: self.id(),
                    ..req
                };
                result = self.client.clone().complete(req).await;
            }
        }
        match result {
            Ok(r) if r.get_ref().duplicate => {
                tracing::info!(job = %lease.job_id, shard = lease.shard_index, "another copy of the shard finished first")
            }
            Ok(_) => {}
            Err(s) => {
                self.metrics.reports_refused.fetch_add(1, Relaxed);
                tracing::warn!(job = %lease.job_id, shard = lease.shard_index, lease = %lease.lease_id, code = ?s.code(), "completion refused: {}", s.message());
            }
        }
        self.drop_lease(&lease.lease_id);
    }

    /// Takes a lease and gets it ready to label; `None` when there is nothing to do now.
    async fn acquire(self: &Arc<Self>) -> std::result::Result<Option<Prepared>, tonic::Status> {
        let Some(lease) = self.lease().await? else {
            return Ok(None);
        };
        self.hold(&lease);
        tracing::debug!(job = %lease.job_id, shard = lease.shard_index, lease = %lease.lease_id, "leased");
        match self.prepare(&lease).await {
            Ok(Some(p)) => Ok(Some(p)),
            Ok(None) => Ok(None),
            Err(e) => {
                self.fail(&lease, e.to_string(), false).await;
                Ok(None)
            }
        }
    }

    async fn prepare(&self, lease: &v1::ShardLease) -> Result<Option<Prepared>> {
        let store = self.store(&lease.store)?;
        let spec = lease_spec(lease)?;
        let bad_fp = |s: &str| {
            WorkerError::Config(format!("lease {}: bad fingerprint {s:?}", lease.lease_id))
        };
        let shard_fp = Fingerprint::parse(&lease.shard_fingerprint)
            .ok_or_else(|| bad_fp(&lease.shard_fingerprint))?;
        let key = ShardKey {
            teacher: Fingerprint::parse(&lease.teacher_fingerprint)
                .ok_or_else(|| bad_fp(&lease.teacher_fingerprint))?,
            output: spec.fingerprint(),
            shard: shard_fp.clone(),
        };
        if let Some((meta, size)) = commit::shard_meta(&store, &key).await? {
            tracing::info!(job = %lease.job_id, shard = lease.shard_index, "already in the cache: not labeling it again");
            self.metrics.shards_already_present.fetch_add(1, Relaxed);
            let stats = v1::ShardStats {
                rows: meta.rows,
                tokens: meta.tokens,
                padded_tokens: meta.tokens,
                truncated_rows: meta.truncated_rows,
                device_seconds: meta.device_seconds,
                bytes_written: size,
                already_present: true,
                ..Default::default()
            };
            self.complete(lease, stats).await;
            return Ok(None);
        }
        let teacher = self
            .teachers
            .get(
                &lease.teacher,
                &lease.teacher_fingerprint,
                &self.cfg.device,
                &self.cfg.load.for_precision(&lease.precision),
            )
            .await?;
        let (shard, sources) =
            distill_cache::jobs::read_input(&store, &lease.input, &shard_fp).await?;
        let (shard, reused) = crate::reuse::split(&store, &key, shard, sources).await?;
        let (shard, input) = tokio::task::spawn_blocking({
            let (teacher, spec) = (teacher.clone(), spec.clone());
            move || {
                let input = tokenize_shard(&teacher, &shard, &spec);
                (shard, input)
            }
        })
        .await
        .map_err(|e| WorkerError::Config(format!("tokenizing thread: {e}")))?;
        Ok(Some(Prepared {
            lease: lease.clone(),
            shard,
            reused,
            input: input?,
            store,
            teacher,
            spec,
        }))
    }

    /// Labels one shard (the device's part); `None` when it failed (reported) or was revoked.
    async fn label(self: Arc<Self>, p: Prepared) -> Option<Labeled> {
        use tracing::Instrument;
        let l = &p.lease;
        let span = tracing::info_span!("shard", job = %l.job_id, shard = l.shard_index, lease = %l.lease_id);
        self.label_in_span(p).instrument(span).await
    }

    async fn label_in_span(self: Arc<Self>, p: Prepared) -> Option<Labeled> {
        let lease = p.lease.clone();
        if self.is_revoked(&lease.lease_id) {
            self.drop_lease(&lease.lease_id);
            return None;
        }
        let max_tokens = self.cfg.max_batch_tokens;
        let Prepared {
            shard,
            reused,
            input,
            store,
            teacher,
            spec,
            ..
        } = p;
        let corpus = lease.corpus.clone();
        let output = spec.fingerprint();
        let labeled = self
            .device
            .run(move || {
                let r = label_tokenized_shard(&teacher, &shard, &input, &spec, &corpus, max_tokens);
                (shard, r)
            })
            .await;
        match labeled {
            Ok((shard, Ok(labeled))) => {
                let spent_seconds = labeled.meta.device_seconds;
                let (shard, labeled, reuse) = match reused {
                    Some(r) => r.assemble(labeled),
                    None => (shard, labeled, Reuse::default()),
                };
                Some(Labeled {
                    lease,
                    shard,
                    store,
                    output,
                    labeled,
                    spent_seconds,
                    reuse,
                })
            }
            Ok((_, Err(e))) => {
                self.fail(&lease, e.to_string(), false).await;
                None
            }
            Err(e) => {
                self.fail(&lease, format!("labeling thread: {e}"), false)
                    .await;
                None
            }
        }
    }

    /// Commits a labeled shard to the cache and reports it (the host's part, off the device's path).
    async fn commit(self: Arc<Self>, l: Labeled) {
        use tracing::Instrument;
        let span = tracing::info_span!("shard", job = %l.lease.job_id, shard = l.lease.shard_index, lease = %l.lease.lease_id);
        self.commit_in_span(l).instrument(span).await
    }

    async fn commit_in_span(self: Arc<Self>, l: Labeled) {
        let Labeled {
            lease,
            shard,
            store,
            output,
            labeled,
            spent_seconds,
            reuse,
        } = l;
        let key = ShardKey {
            teacher: labeled.meta.teacher.fingerprint.clone(),
            output,
            shard: shard.fingerprint.clone(),
        };
        // Parquet encoding is CPU work: on the blocking pool, not on the runtime's threads.
        let encoded = tokio::task::spawn_blocking(move || {
            let parquet = distill_cache::format::encode(&labeled.meta, &labeled.data);
            (parquet, labeled)
        })
        .await;
        let (parquet, labeled) = match encoded {
            Ok((Ok(parquet), labeled)) => (parquet, labeled),
            Ok((Err(e), _)) => return self.fail(&lease, e.to_string(), false).await,
            Err(e) => {
                return self
                    .fail(&lease, format!("encoding thread: {e}"), false)
                    .await
            }
        };
        let outcome = match commit::commit_encoded(&store, &key, parquet, &shard.rejects).await {
            Ok(o) => o,
            Err(e) => return self.fail(&lease, e.to_string(), false).await,
        };
        // The row keys beside the shard, for later jobs' reuse (derived data: a planner rebuilds
        // them if this write is lost).
        let texts = labeled.data.texts.iter().map(String::as_str);
        if let Err(e) = distill_cache::rows::write_keys(&store, &key, texts).await {
            tracing::warn!(
                "cannot write the shard's row keys: {e}; the next planner rebuilds them"
            );
        }
        let m = &self.metrics;
        m.shards_labeled.fetch_add(1, Relaxed);
        m.rows.fetch_add(labeled.meta.rows, Relaxed);
        m.rows_reused.fetch_add(reuse.rows, Relaxed);
        m.tokens.fetch_add(labeled.meta.tokens, Relaxed);
        m.device_micros
            .fetch_add((spent_seconds * 1e6) as u64, Relaxed);
        let bytes_written = match outcome {
            CommitOutcome::Committed { bytes } => bytes,
            CommitOutcome::AlreadyPresent => 0,
        };
        tracing::info!(
            rows = labeled.meta.rows,
            rows_reused = reuse.rows,
            device_s = spent_seconds,
            committed = bytes_written > 0,
            "shard labeled"
        );
        let mut stats = v1::ShardStats {
            rows: labeled.meta.rows,
            tokens: labeled.meta.tokens,
            padded_tokens: labeled.padded_tokens,
            truncated_rows: labeled.meta.truncated_rows,
            device_seconds: spent_seconds,
            bytes_written,
            already_present: false,
            rows_reused: reuse.rows,
            seconds_saved: reuse.seconds,
        };
        if outcome == CommitOutcome::AlreadyPresent {
            // Another copy won the commit: report the shard the cache holds, so the job's ledger
            // agrees with the cache (this copy's work was wasted, and is counted in the metrics).
            if let Ok(Some((meta, size))) = commit::shard_meta(&store, &key).await {
                stats = v1::ShardStats {
                    rows: meta.rows,
                    tokens: meta.tokens,
                    padded_tokens: meta.tokens,
                    truncated_rows: meta.truncated_rows,
                    device_seconds: meta.device_seconds,
                    bytes_written: size,
                    already_present: true,
                    ..Default::default()
                };
            }
        }
        self.complete(&lease, stats).await;
    }
}

/// Connects and registers, retrying with backoff until it works or `shutdown` is set.
async fn connect(cfg: &PullConfig, shutdown: &mut watch::Receiver<bool>) -> Option<WorkerClient> {
    let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let delay = retry.next_delay();
        match distill_proto::connect(&cfg.client).await {
            Ok(ch) => return Some(distill_proto::worker_client(ch)),
            Err(e) => {
                tracing::warn!("{e}; retrying in {:.1} s", delay.as_secs_f64());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// The output spec of a lease: its `output_spec` JSON, or (from a coordinator of the first release)
/// its `output` and `dtype`.
fn lease_spec(lease: &v1::ShardLease) -> Result<OutputSpec> {
    if !lease.output_spec.is_empty() {
        return serde_json::from_str(&lease.output_spec).map_err(|e| {
            WorkerError::Config(format!("lease {}: output spec: {e}", lease.lease_id))
        });
    }
    let kind: OutputKind = lease.output.parse().map_err(WorkerError::Config)?;
    let dtype: Dtype = lease.dtype.parse().map_err(WorkerError::Config)?;
    Ok(match kind {
        OutputKind::Logits => OutputSpec::Logits {
            dtype,
            prompt: None,
        },
        _ => OutputSpec::Embeddings { dtype },
    })
}

/// Runs the worker until `shutdown` becomes true, then drains.
pub async fn run(
    cfg: PullConfig,
    teachers: Arc<TeacherSlot>,
    metrics: Arc<WorkerMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let Some(client) = connect(&cfg, &mut shutdown).await else {
        return Ok(());
    };
    let stores = cfg
        .stores
        .iter()
        .map(|l| (l.url.clone(), l.clone()))
        .collect();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        client,
        worker_id: Mutex::new(String::new()),
        held: Mutex::new(HashMap::new()),
        revoked: Mutex::new(Default::default()),
        teachers,
        metrics,
        stores: Mutex::new(stores),
        registering: Default::default(),
        device: DeviceThread::start("distill-device")
            .map_err(|e| WorkerError::Config(format!("cannot start the device thread: {e}")))?,
    });
    // Register, retrying while the coordinator is unreachable or not ready.
    let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let (hb_ms, _ttl_ms) = loop {
        match shared.register().await {
            Ok(x) => break x,
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::Unauthenticated => {
                return Err(WorkerError::Config(format!(
                    "the coordinator refused this worker: {}",
                    s.message()
                )));
            }
            Err(s) => {
                let delay = retry.next_delay();
                tracing::warn!(
                    "cannot register with the coordinator at {}: {}; retrying in {:.1} s",
                    cfg.client.url,
                    s.message(),
                    delay.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    };
    let beat = {
        let shared = shared.clone();
        let period = Duration::from_millis(hb_ms.max(100) as u64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                shared.heartbeat().await;
            }
        })
    };
    let result = work(&shared, &mut shutdown).await;
    beat.abort();
    result
}

async fn work(shared: &Arc<Shared>, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
    let mut commits = Commits::default();
    let result = label_loop(shared, shutdown, &mut commits).await;
    // Shards labeled are committed and reported before the worker stops, within the drain grace;
    // what is still unfinished then is handed back.
    let deadline = commits
        .deadline
        .unwrap_or_else(|| tokio::time::Instant::now() + shared.cfg.drain_grace);
    if tokio::time::timeout_at(deadline, commits.wait(shared, 0))
        .await
        .is_err()
    {
        // Commits that finished meanwhile have reported; only those cut short hand their shard back.
        commits.tasks.abort_all();
        while let Some(r) = commits.tasks.join_next_with_id().await {
            match r {
                Ok((id, ())) => {
                    commits.leases.remove(&id);
                }
                Err(e) => {
                    let Some(lease) = commits.leases.remove(&e.id()) else {
                        continue;
                    };
                    if e.is_cancelled() {
                        tracing::warn!(lease = %lease.lease_id, "drain grace elapsed during the commit: handing the shard back");
                        shared.fail(&lease, "worker draining".into(), true).await;
                    } else {
                        shared
                            .fail(&lease, format!("commit task failed: {e}"), false)
                            .await;
                    }
                }
            }
        }
    }
    result
}

/// The commits running behind the labeling: their tasks and the lease of each (to report a task
/// that died).
#[derive(Default)]
struct Commits {
    tasks: tokio::task::JoinSet<()>,
    leases: HashMap<tokio::task::Id, v1::ShardLease>,
    /// When draining: the end of the grace.
    deadline: Option<tokio::time::Instant>,
}

impl Commits {
    fn spawn(&mut self, shared: &Arc<Shared>, labeled: Labeled) {
        let lease = labeled.lease.clone();
        let id = self.tasks.spawn(shared.clone().commit(labeled)).id();
        self.leases.insert(id, lease);
    }

    /// Waits until at most `left` commits are running.
    async fn wait(&mut self, shared: &Arc<Shared>, left: usize) {
        while self.tasks.len() > left {
            match self.tasks.join_next_with_id().await {
                Some(Ok((id, ()))) => {
                    self.leases.remove(&id);
                }
                Some(Err(e)) => {
                    if let Some(lease) = self.leases.remove(&e.id()) {
                        shared
                            .fail(&lease, format!("commit task failed: {e}"), false)
                            .await;
                    }
                }
                None => break,
            }
        }
    }
}

async fn label_loop(
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    commits: &mut Commits,
) -> Result<()> {
    let mut next: Option<Prepared> = None;
    let mut idle = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let current = match next.take() {
            Some(p) => p,
            None => match shared.acquire().await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => {}
                    }
                    idle = (idle * 2).min(shared.cfg.idle_poll_max.max(Duration::from_millis(100)));
                    continue;
                }
                Err(s) => {
                    shared.metrics.connected.store(0, Relaxed);
                    tracing::warn!(
                        "cannot lease from the coordinator at {}: {}; retrying in {:.1} s",
                        shared.cfg.client.url,
                        s.message(),
                        idle.max(Duration::from_secs(1)).as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(idle.max(Duration::from_secs(1))) => {}
                        _ = shutdown.changed() => {}
                    }
                    idle = (idle * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        idle = Duration::from_millis(100);
        let current_lease = current.lease.clone();
        // Labeling waits while the commits behind it are all busy (a bounded queue), unless the
        // worker is told to stop meanwhile: then the shard goes back and the commits drain.
        let draining = tokio::select! {
            _ = commits.wait(shared, COMMITS_IN_FLIGHT - 1) => false,
            _ = shutdown.changed() => true,
        };
        if draining {
            commits.deadline = Some(tokio::time::Instant::now() + shared.cfg.drain_grace);
            shared
                .fail(&current.lease, "worker draining".into(), true)
                .await;
            return Ok(());
        }
        let mut task = tokio::spawn(shared.clone().label(current));
        let mut prefetch = Some(tokio::spawn({
            let shared = shared.clone();
            async move { shared.acquire().await.ok().flatten() }
        }));
        tokio::select! {
            r = &mut task => {
                match r {
                    Ok(Some(labeled)) => commits.spawn(shared, labeled),
                    Ok(None) => {}
                    // The shard's task died (a panic): report it rather than hold the lease forever.
                    Err(e) => shared.fail(&current_lease, format!("worker task failed: {e}"), false).await,
                }
            }
            _ = shutdown.changed() => {
                let deadline = tokio::time::Instant::now() + shared.cfg.drain_grace;
                commits.deadline = Some(deadline);
                tracing::info!(grace_s = shared.cfg.drain_grace.as_secs_f64(), "draining: finishing the current shard, taking no new work");
                if let Some(p) = prefetch.take() {
                    if let Ok(Ok(Some(p))) = tokio::time::timeout_at(deadline, p).await {
                        shared.fail(&p.lease, "worker draining".into(), true).await;
                    }
                }
                match tokio::time::timeout_at(deadline, &mut task).await {
                    Ok(Ok(Some(labeled))) => commits.spawn(shared, labeled),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => shared.fail(&current_lease, format!("worker task failed: {e}"), false).await,
                    Err(_) => {
                        tracing::warn!(lease = %current_lease.lease_id, "drain grace elapsed: handing the shard back");
                        shared.fail(&current_lease, "worker draining".into(), true).await;
                    }
                }
                return Ok(());
            }
        }
        if let Some(p) = prefetch.take() {
            next = p.await.ok().flatten();
        }
    }
    if let Some(p) = next {
        shared.fail(&p.lease, "worker draining".into(), true).await;
    }
    Ok(())
}
