//! The scheduler: every job's shards, every lease and worker, in memory, behind one lock.
//!
//! It is synchronous and takes the time as an argument, so it is tested tick by tick without a
//! network or a clock. What must outlive the process is not here: shard commits are in the cache,
//! job records in the store (see [`distill_cache::jobs`]); the service turns the [`Effect`]s the
//! scheduler returns into those writes.
//!
//! Rules:
//! - a shard is leased to one worker at a time, except at a job's tail, where a shard leased longer
//!   than [`Config::speculate_after`] (or twice the job's median shard time) gets one speculative copy;
//!   the first completion wins and the other lease is revoked;
//! - a lease lives `lease_ttl` after it was granted or last renewed; an expired lease counts as a failed
//!   attempt; a failed attempt is retried after `retry_backoff · 2^(attempts−1)` (capped at one minute)
//!   until `max_attempts`, then the shard is failed with its last error and the job goes on;
//! - a lease handed back unworked (`release`, on worker drain) goes to the front of the queue and costs
//!   no attempt;
//! - workers get shards of the jobs whose teacher they hold first, then of the oldest job.

use distill_cache::fingerprint::Fingerprint;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Scheduling settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// Minimum age of a lease before a speculative copy; `None` disables speculation.
    pub speculate_after: Option<Duration>,
    /// After a restart with unfinished jobs, how long workers get to re-register their leases before
    /// shards are leased again.
    pub recovery_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(2),
            speculate_after: Some(Duration::from_secs(30)),
            recovery_window: Duration::from_secs(60),
        }
    }
}

/// Why a call was refused; becomes a precise gRPC status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound(String),
    FailedPrecondition(String),
    InvalidArgument(String),
    Unavailable(String),
    Internal(String),
}

pub type Outcome<T> = Result<T, Refusal>;

/// A job's final or current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// The name records and clients use (as serialised).
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// What a job did and cost: the wire message itself (`distill.v1.Ledger`), defined once.
pub use distill_proto::v1::Ledger;

/// A shard that failed every attempt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedShard {
    pub index: u64,
    pub fingerprint: Fingerprint,
    pub attempts: u32,
    pub last_error: String,
}

/// What labeling one shard did (reported by the worker, or read from a committed shard's metadata).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStats {
    pub rows: u64,
    pub tokens: u64,
    pub padded_tokens: u64,
    pub truncated_rows: u64,
    pub device_seconds: f64,
    pub bytes_written: u64,
}

/// Rejected entries a job keeps to show on the console (all of them are in its reject files).
pub const FIRST_REJECTS: usize = 5;

/// A shard as the planner found it.
#[derive(Clone, Debug)]
pub struct PlannedShard {
    pub index: u64,
    pub fingerprint: Fingerprint,
    pub rows: u64,
    pub rejects: u64,
    /// Corpus progress units this shard covers.
    pub progress: u64,
    /// Path of its rejects record, if it has rejects.
    pub rejects_file: Option<String>,
    /// Its first rejected entries as `corpus:line: reason` (at most [`FIRST_REJECTS`]).
    pub first_rejects: Vec<String>,
    pub status: PlannedStatus,
}

#[derive(Clone, Debug)]
pub enum PlannedStatus {
    /// To label; its input is staged at [`distill_cache::jobs::input_path`].
    ToLabel,
    /// In the cache before this job: a hit, with the device-seconds it cost then.
    Hit {
        truncated_rows: u64,
        device_seconds: f64,
    },
    /// Labeled by this job before a coordinator restart (found committed on re-planning).
    DoneEarlier(ShardStats),
    /// Failed every attempt before a coordinator restart.
    FailedEarlier(FailedShard),
}

/// What the job needs to hand out leases; fixed at submission.
#[derive(Clone, Debug)]
pub struct JobInfo {
    pub id: String,
    pub teacher: String,
    pub teacher_fingerprint: String,
    pub output: String,
    pub dtype: String,
    pub output_spec: distill_cache::spec::OutputSpec,
    pub store: String,
    pub corpus: String,
    pub format: String,
    pub text_field: String,
    pub id_field: String,
    pub shard_size: u64,
    pub strict: bool,
    pub output_fingerprint: String,
    pub max_attempts: u32,
}

/// Work for the service to do outside the lock.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A shard is done: its staged input can go.
    DeleteInput { job: String, index: u64 },
    /// A shard failed every attempt: record it.
    RecordFailed { job: String, shard: FailedShard },
    /// Every shard of a job is done or failed and the corpus is fully planned: verify, write the
    /// manifest and the result.
    Finalize { job: String },
}

/// A lease as granted to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub lease_id: String,
    pub job: String,
    pub index: u64,
    pub fingerprint: Fingerprint,
    pub input: String,
    pub speculative: bool,
    pub attempt: u32,
    pub deadline: Instant,
}

/// A lease a worker re-states after a coordinator restart.
#[derive(Clone, Debug)]
pub struct Held {
    pub lease_id: String,
    pub job: String,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Pending,
    Leased,
    Done,
    Failed,
}

#[derive(Debug)]
struct Slot {
    fingerprint: Fingerprint,
    rows: u64,
    rejects: u64,
    progress: u64,
    state: SlotState,
    failures: u32,
    last_error: String,
    leases: Vec<u64>,
    speculated: bool,
}

#[derive(Debug)]
struct Job {
    info: JobInfo,
    seq: u64,
    state: JobState,
    error: Option<String>,
    planned: bool,
    finalizing: bool,
    slots: Vec<Slot>,
    ready: VecDeque<u32>,
    retry: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Leases in grant order, for speculation (stale entries skipped lazily).
    inflight: VecDeque<u64>,
    pending: u64,
    open: u64,
    ledger: Ledger,
    failed: Vec<FailedShard>,
    reject_files: Vec<String>,
    first_rejects: Vec<String>,
    durations: Vec<f64>,
    started: Instant,
    wall_seconds: Option<f64>,
    manifest: Option<String>,
    created_unix_ms: i64,
    finished_unix_ms: i64,
}

#[derive(Debug)]
struct Lease {
    job: u64,
    index: u32,
    worker: u64,
    granted: Instant,
    deadline: Instant,
    speculative: bool,
}

/// How a lease ended, kept to answer late reports precisely.
#[derive(Clone, Debug)]
enum Ended {
    Completed,
    Expired { at: Instant },
    Revoked,
    Released,
    Failed,
}

#[derive(Debug)]
struct Worker {
    name: String,
    teachers: Vec<String>,
    leases: Vec<u64>,
    last_seen: Instant,
}

/// Counters since start, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub leases_granted: u64,
    pub shards_done: u64,
    pub shards_failed: u64,
    pub cache_hits: u64,
    pub rows: u64,
    pub lease_expiries: u64,
    pub retries: u64,
    pub speculative_leases: u64,
    pub teacher_seconds: f64,
    pub teacher_seconds_saved: f64,
}

/// Gauges and counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub pending_shards: u64,
    pub leases_in_flight: u64,
    pub workers: u64,
    pub jobs_running: u64,
    pub counters: Counters,
}

/// A job as clients see it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub info: JobInfo,
    pub state: JobState,
    pub error: Option<String>,
    pub planned: bool,
    pub pending: u64,
    pub leased: u64,
    pub done: u64,
    pub ledger: Ledger,
    pub failed: Vec<FailedShard>,
    pub reject_files: Vec<String>,
    /// The job's first rejected entries as `corpus:line: reason` (at most [`FIRST_REJECTS`]).
    pub first_rejects: Vec<String>,
    pub manifest: Option<String>,
    pub created_unix_ms: i64,
    pub finished_unix_ms: i64,
}

/// The scheduler. Lease and worker ids carry this process's `epoch`, so ids from an earlier
/// coordinator are recognised as such.
#[derive(Debug)]
pub struct Scheduler {
    cfg: Config,
    epoch: String,
    next_id: u64,
    next_seq: u64,
    jobs: BTreeMap<u64, Job>,
    job_ids: HashMap<String, u64>,
    leases: HashMap<u64, Lease>,
    ended: HashMap<u64, (u64, u32, Ended)>,
    /// `ended` in insertion order: the oldest are forgotten beyond [`ENDED_KEPT`].
    ended_order: VecDeque<u64>,
    /// Adopted leases of an earlier coordinator: their id string → our number.
    adopted: HashMap<String, u64>,
    /// Leases re-stated for shards the planner has not reached yet: (job, index) → (worker, lease id).
    claims: HashMap<(String, u64), (u64, String)>,
    expiry: BinaryHeap<Reverse<(Instant, u64)>>,
    workers: HashMap<u64, Worker>,
    recovering_until: Option<Instant>,
    counters: Counters,
}

/// How many ended leases are remembered (for precise answers to late reports).
const ENDED_KEPT: usize = 100_000;

fn backoff(base: Duration, failures: u32) -> Duration {
    distill_proto::retry::Backoff::nth(base, Duration::from_secs(60), failures.saturating_sub(1))
}

impl Scheduler {
    pub fn new(cfg: Config, epoch: impl Into<String>) -> Self {
        Self {
            cfg,
            epoch: epoch.into(),
            next_id: 1,
            next_seq: 1,
            jobs: BTreeMap::new(),
            job_ids: HashMap::new(),
            leases: HashMap::new(),
            ended: HashMap::with_capacity(ENDED_KEPT),
            ended_order: VecDeque::with_capacity(ENDED_KEPT),
            adopted: HashMap::new(),
            claims: HashMap::new(),
            expiry: BinaryHeap::new(),
            workers: HashMap::new(),
            recovering_until: None,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Holds back new leases until `until`, so workers of an earlier coordinator can re-state theirs.
    pub fn recover_until(&mut self, until: Instant) {
        self.recovering_until = Some(until);
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn id_string(&self, prefix: &str, n: u64) -> String {
        format!("{prefix}-{}-{n}", self.epoch)
    }

    fn parse_id(&self, prefix: &str, s: &str) -> Option<u64> {
        let rest = s.strip_prefix(prefix)?.strip_prefix('-')?;
        let (epoch, n) = rest.rsplit_once('-')?;
        if epoch != self.epoch {
            return None;
        }
        n.parse().ok()
    }

    fn lease_number(&self, s: &str) -> Option<u64> {
        self.adopted
            .get(s)
            .copied()
            .or_else(|| self.parse_id("lease", s))
    }

    // ---- jobs ----------------------------------------------------------------------------------

    /// Adds a running job (its shards arrive through [`Scheduler::add_shard`]).
    pub fn add_job(&mut self, info: JobInfo, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.job_ids.insert(info.id.clone(), seq);
        self.jobs.insert(
            seq,
            Job {
                info,
                seq,
                state: JobState::Running,
                error: None,
                planned: false,
                finalizing: false,
                slots: Vec::new(),
                ready: VecDeque::new(),
                retry: BinaryHeap::new(),
                inflight: VecDeque::new(),
                pending: 0,
                open: 0,
                ledger: Ledger::default(),
                failed: Vec::new(),
                reject_files: Vec::new(),
                first_rejects: Vec::new(),
                durations: Vec::new(),
                started: now,
                wall_seconds: None,
                manifest: None,
                created_unix_ms: 0,
                finished_unix_ms: 0,
            },
        );
    }

    /// Adds a finished job (known from its result record) so that it can be listed and shown.
    pub fn add_finished_job(&mut self, view: JobView, now: Instant) {
        let wall = view.ledger.wall_seconds;
        self.add_job(view.info, now);
        let seq = self.next_seq - 1;
        let job = self.jobs.get_mut(&seq).expect("just added");
        job.state = view.state;
        job.error = view.error;
        job.planned = true;
        job.ledger = view.ledger;
        job.failed = view.failed;
        job.reject_files = view.reject_files;
        job.first_rejects = view.first_rejects;
        job.wall_seconds = Some(wall);
        job.manifest = view.manifest;
        job.created_unix_ms = view.created_unix_ms;
        job.finished_unix_ms = view.finished_unix_ms;
    }

    fn job_seq(&self, id: &str) -> Outcome<u64> {
        self.job_ids.get(id).copied().ok_or_else(|| {
            Refusal::NotFound(format!(
                "no job {id:?} on this coordinator (see `distill jobs ls`)"
            ))
        })
    }

    pub fn has_job(&self, id: &str) -> bool {
        self.job_ids.contains_key(id)
    }

    /// A running job with the same work as `probe` (corpus and how it is read, teacher, output,
    /// shard size, strictness): a resubmission attaches to it instead of starting a twin.
    pub fn running_twin(&self, probe: &JobInfo) -> Option<String> {
        let same = |a: &JobInfo| {
            (
                &a.corpus,
                &a.format,
                &a.text_field,
                &a.id_field,
                &a.teacher_fingerprint,
                &a.output_fingerprint,
                a.shard_size,
                a.strict,
            ) == (
                &probe.corpus,
                &probe.format,
                &probe.text_field,
                &probe.id_field,
                &probe.teacher_fingerprint,
                &probe.output_fingerprint,
                probe.shard_size,
                probe.strict,
            )
        };
        self.jobs
            .values()
            .find(|j| j.state == JobState::Running && same(&j.info))
            .map(|j| j.info.id.clone())
    }

    /// Whether the job is still accepting planned shards.
    pub fn is_running(&self, id: &str) -> bool {
        self.job_ids
            .get(id)
            .and_then(|s| self.jobs.get(s))
            .is_some_and(|j| j.state == JobState::Running)
    }

    pub fn set_progress_total(&mut self, id: &str, total: u64) {
        if let Some(job) = self.job_ids.get(id).and_then(|s| self.jobs.get_mut(s)) {
            job.ledger.progress_total = total;
        }
    }

    /// Adds one planned shard. Shards arrive in index order.
    pub fn add_shard(&mut self, id: &str, p: PlannedShard) {
        let Some(seq) = self.job_ids.get(id).copied() else {
            return;
        };
        let job = self.jobs.get_mut(&seq).expect("indexed");
        if job.state != JobState::Running {
            return;
        }
        debug_assert_eq!(p.index, job.slots.len() as u64);
        let l = &mut job.ledger;
        l.shards += 1;
        l.rows += p.rows;
        l.rejected_rows += p.rejects;
        if let Some(f) = p.rejects_file {
            job.reject_files.push(f);
        }
        let room = FIRST_REJECTS.saturating_sub(job.first_rejects.len());
        job.first_rejects
            .extend(p.first_rejects.into_iter().take(room));
        let mut slot = Slot {
            fingerprint: p.fingerprint,
            rows: p.rows,
            rejects: p.rejects,
            progress: p.progress,
            state: SlotState::Done,
            failures: 0,
            last_error: String::new(),
            leases: Vec::new(),
            speculated: false,
        };
        match p.status {
            PlannedStatus::ToLabel => {
                slot.state = SlotState::Pending;
                job.open += 1;
                let index = job.slots.len() as u32;
                let claim = self.claims.remove(&(id.to_owned(), p.index));
                match claim {
                    Some((w, lease_id)) if self.workers.contains_key(&w) => {
                        job.slots.push(slot);
                        self.adopt(seq, index, w, lease_id, Instant::now(), false);
                        return;
                    }
                    _ => {
                        job.ready.push_back(index);
                        job.pending += 1;
                    }
                }
            }
            PlannedStatus::Hit {
                truncated_rows,
                device_seconds,
            } => {
                l.cache_hits += 1;
                l.truncated_rows += truncated_rows;
                l.teacher_seconds_saved += device_seconds;
                l.progress += p.progress;
                self.counters.cache_hits += 1;
                self.counters.teacher_seconds_saved += device_seconds;
            }
            PlannedStatus::DoneEarlier(stats) => {
                add_stats(l, &stats);
                l.progress += p.progress;
            }
            PlannedStatus::FailedEarlier(f) => {
                slot.state = SlotState::Failed;
                slot.failures = f.attempts;
                l.shards_failed += 1;
                job.failed.push(f);
            }
        }
        job.slots.push(slot);
    }

    /// The planner has read the whole corpus (`Ok`) or failed (`Err(reason)`: the job fails).
    pub fn planning_done(
        &mut self,
        id: &str,
        result: Result<(), String>,
        now: Instant,
    ) -> Vec<Effect> {
        let Some(seq) = self.job_ids.get(id).copied() else {
            return vec![];
        };
        match result {
            Ok(()) => {
                let job = self.jobs.get_mut(&seq).expect("indexed");
                job.planned = true;
                self.maybe_finish(seq)
            }
            Err(reason) => {
                let job = &self.jobs[&seq];
                if job.state != JobState::Running || job.finalizing {
                    return vec![]; // cancelled or finishing already: that outcome stands
                }
                self.end_job(seq, JobState::Failed, Some(reason), now);
                vec![Effect::Finalize { job: id.to_owned() }]
            }
        }
    }

    /// Cancels a running job: no more leases, every lease revoked.
    pub fn cancel(&mut self, id: &str, now: Instant) -> Outcome<Vec<Effect>> {
        let seq = self.job_seq(id)?;
        let job = &self.jobs[&seq];
        if job.state.is_final() || job.finalizing {
            return Err(Refusal::FailedPrecondition(format!(
                "job {id} already finished ({:?})",
                if job.state.is_final() {
                    job.state
                } else {
                    JobState::Succeeded
                }
            )));
        }
        self.end_job(seq, JobState::Cancelled, None, now);
        Ok(vec![Effect::Finalize { job: id.to_owned() }])
    }

    fn end_job(&mut self, seq: u64, state: JobState, error: Option<String>, now: Instant) {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        job.state = state;
        job.error = error;
        job.finalizing = true;
        job.wall_seconds = Some(now.duration_since(job.started).as_secs_f64());
        job.ready.clear();
        job.retry.clear();
        job.inflight.clear();
        job.pending = 0;
        let mut revoke = Vec::new();
        for slot in &mut job.slots {
            revoke.append(&mut slot.leases);
            if slot.state == SlotState::Pending || slot.state == SlotState::Leased {
                slot.state = SlotState::Failed;
            }
        }
        for n in revoke {
            self.end_lease(n, Ended::Revoked);
        }
    }

    /// Records when a job was created (wall clock, for clients).
    pub fn set_created(&mut self, id: &str, unix_ms: i64) {
        if let Some(job) = self.job_ids.get(id).and_then(|s| self.jobs.get_mut(s)) {
            job.created_unix_ms = unix_ms;
        }
    }

    /// Marks a finalized job's final state (after verification and manifest writing).
    pub fn finalized(
        &mut self,
        id: &str,
        state: JobState,
        error: Option<String>,
        manifest: Option<String>,
        finished_unix_ms: i64,
    ) {
        if let Some(job) = self.job_ids.get(id).and_then(|s| self.jobs.get_mut(s)) {
            job.state = state;
            if error.is_some() {
                job.error = error;
            }
            job.manifest = manifest;
            job.finished_unix_ms = finished_unix_ms;
            job.slots = Vec::new();
        }
        // Answers to late reports of this job's leases are no longer needed.
        if let Some(seq) = self.job_ids.get(id).copied() {
            self.ended.retain(|_, (j, _, _)| *j != seq);
            let ended = &self.ended;
            self.ended_order.retain(|l| ended.contains_key(l));
        }
    }

    fn maybe_finish(&mut self, seq: u64) -> Vec<Effect> {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        if job.planned && job.open == 0 && !job.finalizing && job.state == JobState::Running {
            job.finalizing = true;
            job.wall_seconds = Some(job.started.elapsed().as_secs_f64());
            return vec![Effect::Finalize {
                job: job.info.id.clone(),
            }];
        }
        vec![]
    }

    /// The manifest of a planned job: `(index, fingerprint, rows, rejects)` per shard.
    pub fn shard_list(&self, id: &str) -> Vec<(u64, Fingerprint, u64, u64)> {
        self.job_ids
            .get(id)
            .and_then(|s| self.jobs.get(s))
            .map(|j| {
                j.slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as u64, s.fingerprint.clone(), s.rows, s.rejects))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn view(&self, id: &str) -> Outcome<JobView> {
        let seq = self.job_seq(id)?;
        Ok(self.view_of(&self.jobs[&seq]))
    }

    pub fn views(&self) -> Vec<JobView> {
        self.jobs.values().map(|j| self.view_of(j)).collect()
    }

    fn view_of(&self, j: &Job) -> JobView {
        let leased = j
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Leased)
            .count() as u64;
        let mut ledger = j.ledger;
        ledger.wall_seconds = j
            .wall_seconds
            .unwrap_or_else(|| j.started.elapsed().as_secs_f64());
        let done = ledger.shards_labeled + ledger.cache_hits;
        JobView {
            info: j.info.clone(),
            state: j.state,
            error: j.error.clone(),
            planned: j.planned,
            pending: j.pending,
            leased,
            done,
            ledger,
            failed: j.failed.clone(),
            reject_files: j.reject_files.clone(),
            first_rejects: j.first_rejects.clone(),
            manifest: j.manifest.clone(),
            created_unix_ms: j.created_unix_ms,
            finished_unix_ms: j.finished_unix_ms,
        }
    }

    // ---- workers -------------------------------------------------------------------------------

    /// Registers a worker; adopts the leases it re-states when their shards are still unleased.
    pub fn register(
        &mut self,
        name: String,
        teachers: Vec<String>,
        held: Vec<Held>,
        now: Instant,
    ) -> (String, Vec<String>) {
        let n = self.fresh_id();
        self.workers.insert(
            n,
            Worker {
                name,
                teachers,
                leases: Vec::new(),
                last_seen: now,
            },
        );
        let mut adopted = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for h in held {
            if !seen.insert(h.lease_id.clone()) || self.adopted.contains_key(&h.lease_id) {
                continue;
            }
            let Some(&seq) = self.job_ids.get(&h.job) else {
                continue;
            };
            let job = &self.jobs[&seq];
            if job.state != JobState::Running || job.finalizing {
                continue;
            }
            match job.slots.get(h.index as usize).map(|s| s.state) {
                Some(SlotState::Pending) => {
                    self.adopt(seq, h.index as u32, n, h.lease_id.clone(), now, true);
                    adopted.push(h.lease_id);
                }
                None if !job.planned => {
                    // Not planned yet (the planner re-reads the corpus): claim it for this worker.
                    self.claims
                        .insert((h.job.clone(), h.index), (n, h.lease_id.clone()));
                    adopted.push(h.lease_id);
                }
                _ => {}
            }
        }
        (self.id_string("worker", n), adopted)
    }

    /// Gives a pending shard to `w` under a lease id of an earlier coordinator. `queued`: the shard is
    /// in the ready or retry queue (counted as pending; its queue entry is skipped lazily).
    fn adopt(
        &mut self,
        seq: u64,
        index: u32,
        w: u64,
        lease_id: String,
        now: Instant,
        queued: bool,
    ) {
        let l = self.fresh_id();
        let job = self.jobs.get_mut(&seq).expect("indexed");
        if queued {
            job.pending -= 1;
        }
        let slot = &mut job.slots[index as usize];
        slot.state = SlotState::Leased;
        slot.leases.push(l);
        job.inflight.push_back(l);
        let deadline = now + self.cfg.lease_ttl;
        self.leases.insert(
            l,
            Lease {
                job: seq,
                index,
                worker: w,
                granted: now,
                deadline,
                speculative: false,
            },
        );
        self.expiry.push(Reverse((deadline, l)));
        if let Some(wk) = self.workers.get_mut(&w) {
            wk.leases.push(l);
        }
        self.adopted.insert(lease_id, l);
    }

    fn worker(&mut self, id: &str, now: Instant) -> Outcome<u64> {
        let n = self
            .parse_id("worker", id)
            .filter(|n| self.workers.contains_key(n));
        match n {
            Some(n) => {
                self.workers.get_mut(&n).expect("checked").last_seen = now;
                Ok(n)
            }
            None => Err(Refusal::NotFound(format!(
                "{} {id:?} (the coordinator restarted or forgot an idle worker): register again",
                distill_proto::UNKNOWN_WORKER
            ))),
        }
    }

    /// Grants a lease, or `None` when there is nothing to do now.
    pub fn lease(
        &mut self,
        worker: &str,
        teachers: &[String],
        now: Instant,
    ) -> Outcome<Option<Grant>> {
        let w = self.worker(worker, now)?;
        if !teachers.is_empty() {
            self.workers.get_mut(&w).expect("known").teachers = teachers.to_vec();
        }
        if self.recovering_until.is_some_and(|t| now < t) {
            return Ok(None);
        }
        // Running jobs, those of a teacher the worker holds first, then by age (stable sort).
        let mut order: Vec<(bool, u64)> = {
            let held = &self.workers[&w].teachers;
            self.jobs
                .values()
                .filter(|j| j.state == JobState::Running)
                .map(|j| (!held.contains(&j.info.teacher_fingerprint), j.seq))
                .collect()
        };
        order.sort_by_key(|(other, _)| *other);
        for &(_, seq) in &order {
            if let Some(index) = self.next_ready(seq, now) {
                return Ok(Some(self.grant(seq, index, w, false, now)));
            }
        }
        for &(_, seq) in &order {
            if let Some(index) = self.speculation_candidate(seq, w, now) {
                return Ok(Some(self.grant(seq, index, w, true, now)));
            }
        }
        Ok(None)
    }

    fn next_ready(&mut self, seq: u64, now: Instant) -> Option<u32> {
        let job = self.jobs.get_mut(&seq)?;
        while let Some(i) = job.ready.pop_front() {
            if job.slots[i as usize].state == SlotState::Pending {
                return Some(i);
            }
        }
        while let Some(Reverse((at, i))) = job.retry.peek().copied() {
            if job.slots[i as usize].state != SlotState::Pending {
                job.retry.pop();
                continue;
            }
            if at <= now {
                job.retry.pop();
                return Some(i);
            }
            break;
        }
        None
    }

    fn speculation_candidate(&mut self, seq: u64, worker: u64, now: Instant) -> Option<u32> {
        let min_age = self.cfg.speculate_after?;
        let job = self.jobs.get_mut(&seq)?;
        if !job.planned || job.pending > 0 {
            return None;
        }
        let mut durations = job.durations.clone();
        let typical = if durations.is_empty() {
            0.0
        } else {
            let mid = durations.len() / 2;
            durations.select_nth_unstable_by(mid, f64::total_cmp);
            durations[mid]
        };
        let threshold = min_age.max(Duration::from_secs_f64(2.0 * typical));
        while let Some(&l) = job.inflight.front() {
            let Some(lease) = self.leases.get(&l) else {
                job.inflight.pop_front();
                continue;
            };
            let slot = &job.slots[lease.index as usize];
            if slot.state != SlotState::Leased || slot.speculated || lease.speculative {
                job.inflight.pop_front();
                continue;
            }
            if now.duration_since(lease.granted) < threshold || lease.worker == worker {
                // Too young (and so is every later lease), or the asking worker's own shard.
                return None;
            }
            job.inflight.pop_front();
            return Some(lease.index);
        }
        None
    }

    fn grant(&mut self, seq: u64, index: u32, w: u64, speculative: bool, now: Instant) -> Grant {
        let l = self.fresh_id();
        let lease_id = self.id_string("lease", l);
        let deadline = now + self.cfg.lease_ttl;
        let job = self.jobs.get_mut(&seq).expect("indexed");
        let slot = &mut job.slots[index as usize];
        if slot.state == SlotState::Pending {
            job.pending -= 1;
        }
        slot.state = SlotState::Leased;
        slot.leases.push(l);
        if speculative {
            slot.speculated = true;
            job.ledger.speculative_leases += 1;
            self.counters.speculative_leases += 1;
        } else {
            job.inflight.push_back(l);
        }
        let grant = Grant {
            lease_id,
            job: job.info.id.clone(),
            index: index as u64,
            fingerprint: slot.fingerprint.clone(),
            input: distill_cache::jobs::input_path(&job.info.id, index as u64),
            speculative,
            attempt: slot.failures + 1,
            deadline,
        };
        self.leases.insert(
            l,
            Lease {
                job: seq,
                index,
                worker: w,
                granted: now,
                deadline,
                speculative,
            },
        );
        self.expiry.push(Reverse((deadline, l)));
        self.workers.get_mut(&w).expect("known").leases.push(l);
        self.counters.leases_granted += 1;
        grant
    }

    /// The job a grant belongs to (for building the wire lease).
    pub fn job_info(&self, id: &str) -> Option<&JobInfo> {
        self.job_ids
            .get(id)
            .and_then(|s| self.jobs.get(s))
            .map(|j| &j.info)
    }

    /// Renews the worker's leases; returns those it must stop (revoked, expired or unknown).
    pub fn heartbeat(
        &mut self,
        worker: &str,
        lease_ids: &[String],
        now: Instant,
    ) -> Outcome<Vec<String>> {
        let w = self.worker(worker, now)?;
        let mut revoked = Vec::new();
        for id in lease_ids {
            match self.lease_number(id) {
                Some(l) if self.leases.get(&l).is_some_and(|x| x.worker == w) => {
                    let deadline = now + self.cfg.lease_ttl;
                    self.leases.get_mut(&l).expect("checked").deadline = deadline;
                    self.expiry.push(Reverse((deadline, l)));
                }
                _ => revoked.push(id.clone()),
            }
        }
        Ok(revoked)
    }

    /// A worker committed its shard.
    pub fn complete(
        &mut self,
        worker: &str,
        lease_id: &str,
        stats: ShardStats,
        now: Instant,
    ) -> Outcome<(bool, Vec<Effect>)> {
        let w = self.worker(worker, now)?;
        let unknown = || {
            Refusal::NotFound(format!(
                "unknown lease {lease_id:?} (granted by an earlier coordinator, or its job is finished)"
            ))
        };
        let l = self.lease_number(lease_id).ok_or_else(unknown)?;
        if let Some(lease) = self.leases.get(&l) {
            if lease.worker != w {
                return Err(Refusal::FailedPrecondition(format!(
                    "lease {lease_id} belongs to another worker"
                )));
            }
            let (seq, index, granted) = (lease.job, lease.index, lease.granted);
            self.end_lease(l, Ended::Completed);
            return Ok(self.shard_done(seq, index, stats, Some(now.duration_since(granted))));
        }
        let Some((seq, index, how)) = self.ended.get(&l).cloned() else {
            return Err(unknown());
        };
        let job = self.jobs.get(&seq).expect("ended leases of live jobs only");
        let slot = &job.slots[index as usize];
        match how {
            Ended::Expired { at } => {
                if slot.state == SlotState::Pending {
                    // Expired but not given to anyone else yet: the work is committed, take it.
                    self.remember(l, (seq, index, Ended::Completed));
                    return Ok(self.shard_done(seq, index, stats, None));
                }
                if slot.state == SlotState::Failed
                    && job.state == JobState::Running
                    && !job.finalizing
                {
                    // That expiry was its last attempt, but the work is committed: the shard is done
                    // after all, not failed.
                    let job = self.jobs.get_mut(&seq).expect("indexed");
                    job.slots[index as usize].state = SlotState::Leased;
                    job.open += 1;
                    job.failed.retain(|f| f.index != index as u64);
                    job.ledger.shards_failed -= 1;
                    self.remember(l, (seq, index, Ended::Completed));
                    return Ok(self.shard_done(seq, index, stats, None));
                }
                let by = slot
                    .leases
                    .first()
                    .and_then(|o| self.leases.get(o))
                    .and_then(|o| self.workers.get(&o.worker))
                    .map(|o| format!(" and the shard was given to worker {}", o.name))
                    .unwrap_or_else(|| " and the shard was given to another worker".into());
                Err(Refusal::FailedPrecondition(format!(
                    "lease {lease_id} on shard {index} of job {} expired {:.1} s ago (no heartbeat within the lease time){by}; this report is discarded (the cache keeps exactly one copy of the shard)",
                    job.info.id,
                    now.duration_since(at).as_secs_f64()
                )))
            }
            Ended::Revoked | Ended::Completed => Ok((true, vec![])),
            Ended::Released => Err(Refusal::FailedPrecondition(format!(
                "lease {lease_id} was handed back (released); its shard is leased again"
            ))),
            Ended::Failed => Err(Refusal::FailedPrecondition(format!(
                "lease {lease_id} was reported failed; its shard is retried"
            ))),
        }
    }

    fn shard_done(
        &mut self,
        seq: u64,
        index: u32,
        stats: ShardStats,
        took: Option<Duration>,
    ) -> (bool, Vec<Effect>) {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        let slot = &mut job.slots[index as usize];
        match slot.state {
            SlotState::Done | SlotState::Failed => return (true, vec![]),
            SlotState::Pending => job.pending -= 1,
            SlotState::Leased => {}
        }
        slot.state = SlotState::Done;
        let siblings = std::mem::take(&mut slot.leases);
        job.open -= 1;
        job.ledger.progress += slot.progress;
        add_stats(&mut job.ledger, &stats);
        if let Some(t) = took {
            job.durations.push(t.as_secs_f64());
            if job.durations.len() > 512 {
                job.durations.drain(..256);
            }
        }
        self.counters.shards_done += 1;
        self.counters.rows = self.counters.rows.saturating_add(stats.rows);
        if stats.device_seconds.is_finite() && stats.device_seconds >= 0.0 {
            self.counters.teacher_seconds += stats.device_seconds;
        }
        let mut effects = vec![Effect::DeleteInput {
            job: job.info.id.clone(),
            index: index as u64,
        }];
        for s in siblings {
            self.end_lease(s, Ended::Revoked);
        }
        effects.extend(self.maybe_finish(seq));
        (false, effects)
    }

    /// A worker could not label its shard (or hands it back unworked, with `release`).
    pub fn fail(
        &mut self,
        worker: &str,
        lease_id: &str,
        error: &str,
        release: bool,
        now: Instant,
    ) -> Outcome<(bool, Vec<Effect>)> {
        let w = self.worker(worker, now)?;
        let l = self
            .lease_number(lease_id)
            .filter(|l| self.leases.get(l).is_some_and(|x| x.worker == w))
            .ok_or_else(|| {
                Refusal::NotFound(format!(
                    "no live lease {lease_id:?} held by this worker (expired, revoked or unknown)"
                ))
            })?;
        let (seq, index) = {
            let x = &self.leases[&l];
            (x.job, x.index)
        };
        if release {
            self.end_lease(l, Ended::Released);
            let job = self.jobs.get_mut(&seq).expect("indexed");
            let slot = &mut job.slots[index as usize];
            if slot.state == SlotState::Leased && slot.leases.is_empty() {
                slot.state = SlotState::Pending;
                job.pending += 1;
                job.ready.push_front(index);
            }
            return Ok((true, vec![]));
        }
        self.end_lease(l, Ended::Failed);
        Ok(self.attempt_failed(seq, index, error.to_owned(), now))
    }

    fn attempt_failed(
        &mut self,
        seq: u64,
        index: u32,
        error: String,
        now: Instant,
    ) -> (bool, Vec<Effect>) {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        let max = job.info.max_attempts;
        let slot = &mut job.slots[index as usize];
        if slot.state != SlotState::Leased {
            return (false, vec![]);
        }
        slot.failures += 1;
        slot.last_error = error;
        if !slot.leases.is_empty() {
            // Another copy is still running; it decides.
            return (true, vec![]);
        }
        if slot.failures >= max {
            slot.state = SlotState::Failed;
            let f = FailedShard {
                index: index as u64,
                fingerprint: slot.fingerprint.clone(),
                attempts: slot.failures,
                last_error: slot.last_error.clone(),
            };
            job.open -= 1;
            job.ledger.shards_failed += 1;
            job.failed.push(f.clone());
            self.counters.shards_failed += 1;
            let mut effects = vec![Effect::RecordFailed {
                job: job.info.id.clone(),
                shard: f,
            }];
            effects.extend(self.maybe_finish(seq));
            return (false, effects);
        }
        slot.state = SlotState::Pending;
        job.pending += 1;
        job.ledger.retries += 1;
        self.counters.retries += 1;
        job.retry.push(Reverse((
            now + backoff(self.cfg.retry_backoff, slot.failures),
            index,
        )));
        (true, vec![])
    }

    fn end_lease(&mut self, l: u64, how: Ended) {
        let Some(lease) = self.leases.remove(&l) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&lease.worker) {
            w.leases.retain(|x| *x != l);
        }
        if let Some(job) = self.jobs.get_mut(&lease.job) {
            if let Some(slot) = job.slots.get_mut(lease.index as usize) {
                slot.leases.retain(|x| *x != l);
            }
        }
        self.remember(l, (lease.job, lease.index, how));
    }

    /// Remembers how a lease ended, to answer its late reports; the oldest are forgotten, so the map
    /// stays a fixed size (no rehashing under the lock in a million-shard job).
    fn remember(&mut self, l: u64, how: (u64, u32, Ended)) {
        if self.ended.insert(l, how).is_none() {
            self.ended_order.push_back(l);
        }
        while self.ended_order.len() > ENDED_KEPT {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    /// Expires leases past their deadline and forgets workers silent for three lease times.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(Reverse((deadline, l))) = self.expiry.peek().copied() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(lease) = self.leases.get(&l) else {
                continue;
            };
            if lease.deadline > now {
                continue; // renewed; a later heap entry holds its deadline
            }
            let (seq, index, w) = (lease.job, lease.index, lease.worker);
            let name = self
                .workers
                .get(&w)
                .map(|w| w.name.clone())
                .unwrap_or_default();
            self.end_lease(l, Ended::Expired { at: now });
            self.counters.lease_expiries += 1;
            if let Some(job) = self.jobs.get_mut(&seq) {
                job.ledger.lease_expiries += 1;
            }
            tracing::warn!(lease = l, shard = index, worker = %name, "lease expired");
            let (_, e) = self.attempt_failed(
                seq,
                index,
                format!("lease expired: worker {name} stopped heartbeating (killed, partitioned or stuck)"),
                now,
            );
            effects.extend(e);
        }
        let silent = self.cfg.lease_ttl * 3;
        self.workers
            .retain(|_, w| !w.leases.is_empty() || now.duration_since(w.last_seen) < silent);
        effects
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            pending_shards: self.jobs.values().map(|j| j.pending).sum(),
            leases_in_flight: self.leases.len() as u64,
            workers: self.workers.len() as u64,
            jobs_running: self
                .jobs
                .values()
                .filter(|j| j.state == JobState::Running)
                .count() as u64,
            counters: self.counters.clone(),
        }
    }
}

/// Adds a shard's figures (saturating: a worker's report cannot overflow the ledger).
fn add_stats(l: &mut Ledger, s: &ShardStats) {
    l.shards_labeled += 1;
    l.tokens = l.tokens.saturating_add(s.tokens);
    l.padded_tokens = l.padded_tokens.saturating_add(s.padded_tokens);
    l.truncated_rows = l.truncated_rows.saturating_add(s.truncated_rows);
    if s.device_seconds.is_finite() && s.device_seconds >= 0.0 {
        l.teacher_seconds += s.device_seconds;
    }
    l.bytes_written = l.bytes_written.saturating_add(s.bytes_written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u64) -> Fingerprint {
        distill_cache::fingerprint::Hasher::new("t")
            .u64(i)
            .clone()
            .finish()
    }

    fn sched(speculate: Option<u64>) -> (Scheduler, Instant) {
        let cfg = Config {
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            max_attempts: 2,
            retry_backoff: Duration::from_secs(1),
            speculate_after: speculate.map(Duration::from_secs),
            recovery_window: Duration::from_secs(10),
        };
        (Scheduler::new(cfg, "e1"), Instant::now())
    }

    fn job(s: &mut Scheduler, id: &str, teacher: &str, shards: u64, now: Instant) {
        s.add_job(
            JobInfo {
                id: id.into(),
                teacher: "t".into(),
                teacher_fingerprint: teacher.into(),
                output: "embeddings".into(),
                dtype: "f32".into(),
                output_spec: distill_cache::spec::OutputSpec::Embeddings {
                    dtype: distill_cache::spec::Dtype::F32,
                },
                store: "memory://x".into(),
                corpus: "c".into(),
                format: String::new(),
                text_field: "text".into(),
                id_field: "id".into(),
                shard_size: 10,
                strict: false,
                output_fingerprint: "o".into(),
                max_attempts: 2,
            },
            now,
        );
        for i in 0..shards {
            s.add_shard(
                id,
                PlannedShard {
                    index: i,
                    fingerprint: fp(i),
                    rows: 10,
                    rejects: 0,
                    progress: 5,
                    rejects_file: None,
                    first_rejects: Vec::new(),
                    status: PlannedStatus::ToLabel,
                },
            );
        }
        s.planning_done(id, Ok(()), now);
    }

    fn stats() -> ShardStats {
        ShardStats {
            rows: 10,
            tokens: 100,
            padded_tokens: 120,
            device_seconds: 1.5,
            ..Default::default()
        }
    }

    #[test]
    fn every_shard_is_leased_once_and_the_job_finalizes_after_the_last() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 3, t);
        let (w, _) = s.register("a".into(), vec![], vec![], t);
        let mut seen = Vec::new();
        let mut effects = Vec::new();
        while let Some(g) = s.lease(&w, &[], t).unwrap() {
            seen.push(g.index);
            let (dup, e) = s.complete(&w, &g.lease_id, stats(), t).unwrap();
            assert!(!dup);
            effects.extend(e);
        }
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(effects.last(), Some(&Effect::Finalize { job: "j".into() }));
        let v = s.view("j").unwrap();
        assert_eq!(
            (v.ledger.shards_labeled, v.ledger.tokens, v.ledger.progress),
            (3, 300, 15)
        );
        assert_eq!(v.ledger.teacher_seconds, 4.5);
    }

    #[test]
    fn an_expired_lease_is_retried_after_backoff_and_a_late_report_is_refused() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 1, t);
        let (a, _) = s.register("a".into(), vec![], vec![], t);
        let (b, _) = s.register("b".into(), vec![], vec![], t);
        let ga = s.lease(&a, &[], t).unwrap().unwrap();
        // Renewed at t+8: still alive at t+15.
        assert!(s
            .heartbeat(
                &a,
                std::slice::from_ref(&ga.lease_id),
                t + Duration::from_secs(8)
            )
            .unwrap()
            .is_empty());
        assert!(s.expire(t + Duration::from_secs(15)).is_empty());
        assert!(s
            .lease(&b, &[], t + Duration::from_secs(15))
            .unwrap()
            .is_none());
        // Silent until t+19: expired, retried after 1 s of backoff.
        s.expire(t + Duration::from_secs(19));
        assert!(s
            .lease(&b, &[], t + Duration::from_secs(19))
            .unwrap()
            .is_none());
        let gb = s
            .lease(&b, &[], t + Duration::from_secs(20))
            .unwrap()
            .unwrap();
        assert_eq!((gb.index, gb.attempt), (0, 2));
        let late = s
            .complete(&a, &ga.lease_id, stats(), t + Duration::from_secs(21))
            .unwrap_err();
        match late {
            Refusal::FailedPrecondition(m) => {
                assert!(m.contains("expired") && m.contains("worker b"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.heartbeat(&a, std::slice::from_ref(&ga.lease_id), t)
                .unwrap(),
            vec![ga.lease_id.clone()]
        );
        let (dup, e) = s
            .complete(&b, &gb.lease_id, stats(), t + Duration::from_secs(22))
            .unwrap();
        assert!(!dup && e.contains(&Effect::Finalize { job: "j".into() }));
        let v = s.view("j").unwrap();
        assert_eq!(
            (
                v.ledger.lease_expiries,
                v.ledger.retries,
                v.ledger.shards_labeled
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_shard_fails_after_max_attempts_with_its_last_error_and_the_job_ends() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 2, t);
        let (w, _) = s.register("a".into(), vec![], vec![], t);
        let g0 = s.lease(&w, &[], t).unwrap().unwrap();
        let g1 = s.lease(&w, &[], t).unwrap().unwrap();
        s.complete(&w, &g1.lease_id, stats(), t).unwrap();
        let (retry, _) = s.fail(&w, &g0.lease_id, "oom", false, t).unwrap();
        assert!(retry);
        let later = t + Duration::from_secs(5);
        let g0b = s.lease(&w, &[], later).unwrap().unwrap();
        let (retry, effects) = s
            .fail(&w, &g0b.lease_id, "oom again", false, later)
            .unwrap();
        assert!(!retry);
        assert!(
            matches!(&effects[0], Effect::RecordFailed { shard, .. } if shard.last_error == "oom again" && shard.attempts == 2)
        );
        assert_eq!(effects.last(), Some(&Effect::Finalize { job: "j".into() }));
        let v = s.view("j").unwrap();
        assert_eq!(
            (
                v.ledger.shards_failed,
                v.ledger.shards_labeled,
                v.failed.len()
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_late_report_of_a_shard_failed_by_its_last_expiry_makes_it_done() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 2, t);
        let (a, _) = s.register("a".into(), vec![], vec![], t);
        let mut now = t;
        let mut last = None;
        for _ in 0..2 {
            // Lease shard 0 and let it expire, twice (max_attempts = 2).
            let g = loop {
                let g = s.lease(&a, &[], now).unwrap();
                now += Duration::from_secs(1);
                if let Some(g) = g.filter(|g| g.index == 0) {
                    break g;
                }
            };
            s.heartbeat(&a, &[], now).unwrap();
            now += Duration::from_secs(11);
            s.expire(now);
            last = Some(g);
        }
        let v = s.view("j").unwrap();
        assert_eq!((v.ledger.shards_failed, v.failed.len()), (1, 1));
        let (dup, effects) = s
            .complete(&a, &last.unwrap().lease_id, stats(), now)
            .unwrap();
        assert!(!dup);
        assert!(effects.contains(&Effect::DeleteInput {
            job: "j".into(),
            index: 0
        }));
        let v = s.view("j").unwrap();
        assert_eq!(
            (
                v.ledger.shards_failed,
                v.failed.len(),
                v.ledger.shards_labeled
            ),
            (0, 0, 1)
        );
    }

    #[test]
    fn a_released_lease_goes_back_to_the_front_without_costing_an_attempt() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 2, t);
        let (w, _) = s.register("a".into(), vec![], vec![], t);
        let g = s.lease(&w, &[], t).unwrap().unwrap();
        s.fail(&w, &g.lease_id, "draining", true, t).unwrap();
        let again = s.lease(&w, &[], t).unwrap().unwrap();
        assert_eq!((again.index, again.attempt), (0, 1));
        assert!(matches!(
            s.complete(&w, &g.lease_id, stats(), t),
            Err(Refusal::FailedPrecondition(_))
        ));
    }

    #[test]
    fn the_tail_gets_one_speculative_copy_and_the_loser_is_revoked() {
        let (mut s, t) = sched(Some(3));
        job(&mut s, "j", "T", 1, t);
        let (a, _) = s.register("a".into(), vec![], vec![], t);
        let (b, _) = s.register("b".into(), vec![], vec![], t);
        let ga = s.lease(&a, &[], t).unwrap().unwrap();
        assert!(
            s.lease(&b, &[], t + Duration::from_secs(1))
                .unwrap()
                .is_none(),
            "too young"
        );
        let gb = s
            .lease(&b, &[], t + Duration::from_secs(4))
            .unwrap()
            .unwrap();
        assert!(gb.speculative && gb.index == ga.index);
        assert!(
            s.lease(&b, &[], t + Duration::from_secs(9))
                .unwrap()
                .is_none(),
            "one copy only"
        );
        let (dup, e) = s
            .complete(&b, &gb.lease_id, stats(), t + Duration::from_secs(5))
            .unwrap();
        assert!(!dup && e.contains(&Effect::Finalize { job: "j".into() }));
        assert_eq!(
            s.heartbeat(&a, std::slice::from_ref(&ga.lease_id), t)
                .unwrap(),
            vec![ga.lease_id.clone()]
        );
        let (dup, _) = s
            .complete(&a, &ga.lease_id, stats(), t + Duration::from_secs(6))
            .unwrap();
        assert!(dup, "the loser's report changes nothing");
        let v = s.view("j").unwrap();
        assert_eq!(
            (v.ledger.shards_labeled, v.ledger.speculative_leases),
            (1, 1)
        );
    }

    #[test]
    fn workers_get_the_job_of_the_teacher_they_hold_first() {
        let (mut s, t) = sched(None);
        job(&mut s, "old", "T1", 2, t);
        job(&mut s, "new", "T2", 2, t);
        let (w, _) = s.register("a".into(), vec![], vec![], t);
        assert_eq!(s.lease(&w, &[], t).unwrap().unwrap().job, "old");
        assert_eq!(s.lease(&w, &["T2".into()], t).unwrap().unwrap().job, "new");
    }

    #[test]
    fn after_a_restart_workers_keep_the_leases_they_restate_and_others_wait() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 2, t);
        s.recover_until(t + Duration::from_secs(10));
        let (b, _) = s.register("b".into(), vec![], vec![], t);
        assert!(s.lease(&b, &[], t).unwrap().is_none(), "recovery window");
        let held = vec![Held {
            lease_id: "lease-e0-7".into(),
            job: "j".into(),
            index: 1,
        }];
        let (a, adopted) = s.register("a".into(), vec![], held, t);
        assert_eq!(adopted, vec!["lease-e0-7".to_string()]);
        let g = s
            .lease(&b, &[], t + Duration::from_secs(11))
            .unwrap()
            .unwrap();
        assert_eq!(g.index, 0);
        assert!(s
            .lease(&b, &[], t + Duration::from_secs(11))
            .unwrap()
            .is_none());
        assert!(s
            .heartbeat(&a, &["lease-e0-7".into()], t)
            .unwrap()
            .is_empty());
        s.complete(&a, "lease-e0-7", stats(), t).unwrap();
        assert!(matches!(
            s.lease("worker-e0-1", &[], t),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn a_lease_restated_before_its_shard_is_planned_again_is_kept_for_its_worker() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 0, t);
        // A second job, still being planned (re-read after a coordinator restart).
        let info = JobInfo {
            id: "k".into(),
            ..s.view("j").unwrap().info
        };
        s.add_job(info, t);
        let held = vec![Held {
            lease_id: "lease-e0-3".into(),
            job: "k".into(),
            index: 1,
        }];
        let (a, adopted) = s.register("a".into(), vec![], held, t);
        assert_eq!(adopted, vec!["lease-e0-3".to_string()]);
        for i in 0..2 {
            s.add_shard(
                "k",
                PlannedShard {
                    index: i,
                    fingerprint: fp(i),
                    rows: 10,
                    rejects: 0,
                    progress: 5,
                    rejects_file: None,
                    first_rejects: Vec::new(),
                    status: PlannedStatus::ToLabel,
                },
            );
        }
        s.planning_done("k", Ok(()), t);
        let (b, _) = s.register("b".into(), vec![], vec![], t);
        assert_eq!(s.lease(&b, &[], t).unwrap().unwrap().index, 0);
        assert!(s.lease(&b, &[], t).unwrap().is_none(), "shard 1 is a's");
        let (dup, e) = s.complete(&a, "lease-e0-3", stats(), t).unwrap();
        assert!(
            !dup && e.contains(&Effect::DeleteInput {
                job: "k".into(),
                index: 1
            })
        );
        assert_eq!(s.view("k").unwrap().pending, 0);
    }

    #[test]
    fn cancelling_revokes_every_lease() {
        let (mut s, t) = sched(None);
        job(&mut s, "j", "T", 3, t);
        let (w, _) = s.register("a".into(), vec![], vec![], t);
        let g = s.lease(&w, &[], t).unwrap().unwrap();
        s.cancel("j", t).unwrap();
        assert_eq!(
            s.heartbeat(&w, std::slice::from_ref(&g.lease_id), t)
                .unwrap(),
            vec![g.lease_id.clone()]
        );
        assert!(s.lease(&w, &[], t).unwrap().is_none());
        assert_eq!(s.view("j").unwrap().state, JobState::Cancelled);
        assert!(matches!(
            s.cancel("j", t),
            Err(Refusal::FailedPrecondition(_))
        ));
        assert!(matches!(s.cancel("nope", t), Err(Refusal::NotFound(_))));
    }
}
