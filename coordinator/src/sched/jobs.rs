//! Jobs: adding and planning them, their shards' slots, cancellation, the end of a job and what
//! is shown of it.

use super::*;

impl Scheduler {
    /// Adds a running job (its shards arrive through [`Scheduler::add_shard`]).
    pub fn add_job(&mut self, info: JobRecord, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.job_ids.insert(info.job_id.clone(), seq);
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
        job.finished_unix_ms = view.finished_unix_ms;
    }

    pub(super) fn job_seq(&self, id: &str) -> Outcome<u64> {
        self.job_ids.get(id).copied().ok_or_else(|| {
            Refusal::NotFound(format!(
                "no job {id:?} on this coordinator (see `distill jobs ls`)"
            ))
        })
    }

    pub fn has_job(&self, id: &str) -> bool {
        self.job_ids.contains_key(id)
    }

    /// A running job with the same work as `probe` ([`JobRecord::same_work`]): a resubmission
    /// attaches to it instead of starting a twin.
    pub fn running_twin(&self, probe: &JobRecord) -> Option<String> {
        self.jobs
            .values()
            .find(|j| j.state == JobState::Running && j.info.same_work(probe))
            .map(|j| j.info.job_id.clone())
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
            after: p.after.map(|a| a as u32),
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
                "job {id} already finished ({})",
                if job.state.is_final() {
                    job.state
                } else {
                    JobState::Succeeded
                }
                .name()
            )));
        }
        self.end_job(seq, JobState::Cancelled, None, now);
        Ok(vec![Effect::Finalize { job: id.to_owned() }])
    }

    pub(super) fn end_job(
        &mut self,
        seq: u64,
        state: JobState,
        error: Option<String>,
        now: Instant,
    ) {
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

    pub(super) fn maybe_finish(&mut self, seq: u64) -> Vec<Effect> {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        if job.planned && job.open == 0 && !job.finalizing && job.state == JobState::Running {
            job.finalizing = true;
            job.wall_seconds = Some(job.started.elapsed().as_secs_f64());
            return vec![Effect::Finalize {
                job: job.info.job_id.clone(),
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

    pub(super) fn view_of(&self, j: &Job) -> JobView {
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
            finished_unix_ms: j.finished_unix_ms,
        }
    }

    // ---- workers -------------------------------------------------------------------------------

    /// The job a grant belongs to (for building the wire lease).
    pub fn job_info(&self, id: &str) -> Option<&JobRecord> {
        self.job_ids
            .get(id)
            .and_then(|s| self.jobs.get(s))
            .map(|j| &j.info)
    }
}
