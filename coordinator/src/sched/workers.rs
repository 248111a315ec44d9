//! Workers: registration (with the leases they re-state after a coordinator restart) and heartbeats.

use super::*;

impl Scheduler {
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
    pub(super) fn adopt(
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

    pub(super) fn worker(&mut self, id: &str, now: Instant) -> Outcome<u64> {
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
}
