//! Leases: granting shards (teacher affinity, the oldest job first, tail speculation), reports of
//! completion and failure, retries with backoff, and expiry.

use super::*;

impl Scheduler {
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

    pub(super) fn next_ready(&mut self, seq: u64, now: Instant) -> Option<u32> {
        let job = self.jobs.get_mut(&seq)?;
        // Entries no longer pending go; a shard waiting for another keeps its place.
        let mut k = 0;
        while let Some(&i) = job.ready.get(k) {
            if job.slots[i as usize].state != SlotState::Pending {
                job.ready.remove(k);
            } else if job.waits(i) {
                k += 1;
            } else {
                job.ready.remove(k);
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

    pub(super) fn speculation_candidate(
        &mut self,
        seq: u64,
        worker: u64,
        now: Instant,
    ) -> Option<u32> {
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

    pub(super) fn grant(
        &mut self,
        seq: u64,
        index: u32,
        w: u64,
        speculative: bool,
        now: Instant,
    ) -> Grant {
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
            job: job.info.job_id.clone(),
            index: index as u64,
            fingerprint: slot.fingerprint.clone(),
            input: distill_cache::jobs::input_path(&job.info.job_id, index as u64),
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
                    job.info.job_id,
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

    pub(super) fn shard_done(
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
        if stats.seconds_saved.is_finite() && stats.seconds_saved >= 0.0 {
            self.counters.teacher_seconds_saved += stats.seconds_saved;
        }
        let mut effects = vec![Effect::DeleteInput {
            job: job.info.job_id.clone(),
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

    pub(super) fn attempt_failed(
        &mut self,
        seq: u64,
        index: u32,
        error: String,
        now: Instant,
    ) -> (bool, Vec<Effect>) {
        let job = self.jobs.get_mut(&seq).expect("indexed");
        let max = job.info.spec.max_attempts;
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
                job: job.info.job_id.clone(),
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

    pub(super) fn end_lease(&mut self, l: u64, how: Ended) {
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
    pub(super) fn remember(&mut self, l: u64, how: (u64, u32, Ended)) {
        if self.ended.insert(l, how).is_none() {
            self.ended_order.push_back(l);
        }
        while self.ended_order.len() > ENDED_KEPT {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    /// After an outage in which the coordinator refused heartbeats (not ready: store out of reach):
    /// every lease gets a full lease time from `now` and every worker counts as seen now, so that no
    /// lease expires for heartbeats the coordinator itself refused.
    pub fn forgive(&mut self, now: Instant) {
        let deadline = now + self.cfg.lease_ttl;
        for (&l, lease) in self.leases.iter_mut() {
            if lease.deadline < deadline {
                lease.deadline = deadline;
                self.expiry.push(Reverse((deadline, l)));
            }
        }
        for w in self.workers.values_mut() {
            w.last_seen = now;
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
}
