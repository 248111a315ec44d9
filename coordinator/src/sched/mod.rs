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
//!
//! One struct behind one lock, its methods split by concern: `jobs.rs` (adding, planning, ending and
//! showing jobs), `leases.rs` (granting, reports, retries, expiry) and `workers.rs` (registration,
//! re-stated leases, heartbeats); the types, ids and gauges are here, the tick-by-tick tests in
//! `tests.rs`.

mod jobs;
mod leases;
mod workers;

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
    /// Rows copied from the cache instead of labeled, and the device-seconds they cost before.
    pub rows_reused: u64,
    pub seconds_saved: f64,
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
    /// A shard of the same job, planned before, whose new rows this one copies: it is leased only
    /// once that one is done (or has failed), so a text is labeled once in the job.
    pub after: Option<u64>,
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

pub use crate::job::JobRecord;

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
    /// [`PlannedShard::after`].
    after: Option<u32>,
}

#[derive(Debug)]
struct Job {
    info: JobRecord,
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
    /// The job as accepted (its creation time in it).
    pub info: JobRecord,
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
impl Job {
    /// Whether slot `i` waits for the shard it copies from (still pending or leased).
    fn waits(&self, i: u32) -> bool {
        let after = self.slots[i as usize].after;
        after.is_some_and(|a| {
            matches!(
                self.slots.get(a as usize).map(|s| s.state),
                Some(SlotState::Pending | SlotState::Leased)
            )
        })
    }
}

fn add_stats(l: &mut Ledger, s: &ShardStats) {
    l.shards_labeled += 1;
    l.tokens = l.tokens.saturating_add(s.tokens);
    l.padded_tokens = l.padded_tokens.saturating_add(s.padded_tokens);
    l.truncated_rows = l.truncated_rows.saturating_add(s.truncated_rows);
    if s.device_seconds.is_finite() && s.device_seconds >= 0.0 {
        l.teacher_seconds += s.device_seconds;
    }
    l.bytes_written = l.bytes_written.saturating_add(s.bytes_written);
    l.rows_reused = l.rows_reused.saturating_add(s.rows_reused);
    if s.seconds_saved.is_finite() && s.seconds_saved >= 0.0 {
        l.teacher_seconds_saved += s.seconds_saved;
    }
}

#[cfg(test)]
mod tests;
