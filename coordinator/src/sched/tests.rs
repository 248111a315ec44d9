//! The scheduler tick by tick: time is an argument, so every rule is checked without a clock.

use super::*;
use crate::job::JobSpec;

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
    job_after(s, id, teacher, &vec![None; shards as usize], now);
}

/// A job of `after.len()` shards, shard `i` planned to wait for shard `after[i]`.
fn job_after(s: &mut Scheduler, id: &str, teacher: &str, after: &[Option<u64>], now: Instant) {
    s.add_job(
        JobRecord::new(
            id.into(),
            JobSpec {
                store: "memory://x".into(),
                max_attempts: 2,
                ..JobSpec::embeddings(distill_cache::corpus::CorpusSpec::new("c"), "t", 10)
            },
            distill_cache::spec::OutputSpec::Embeddings {
                dtype: distill_cache::spec::Dtype::F32,
            },
            teacher.into(),
            0,
        ),
        now,
    );
    for (i, &after) in after.iter().enumerate() {
        let i = i as u64;
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
                after,
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

/// A shard that copies rows another shard of the job labels waits for it; the shards behind it do not.
#[test]
fn a_shard_that_copies_from_an_earlier_one_waits_for_it() {
    let (mut s, t) = sched(None);
    job_after(&mut s, "k", "T", &[None, None, Some(0), None], t);
    let (w, _) = s.register("a".into(), vec![], vec![], t);
    let first = s.lease(&w, &[], t).unwrap().unwrap();
    let second = s.lease(&w, &[], t).unwrap().unwrap();
    let third = s.lease(&w, &[], t).unwrap().unwrap();
    assert_eq!(
        (first.index, second.index, third.index),
        (0, 1, 3),
        "2 waits for 0"
    );
    assert!(
        s.lease(&w, &[], t).unwrap().is_none(),
        "only 2 is left, and 0 is not done"
    );
    s.complete(&w, &first.lease_id, stats(), t).unwrap();
    assert_eq!(s.lease(&w, &[], t).unwrap().unwrap().index, 2);
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
fn leases_outlive_an_outage_in_which_heartbeats_were_refused() {
    let (mut s, t) = sched(None);
    job(&mut s, "j", "T", 1, t);
    let (a, _) = s.register("a".into(), vec![], vec![], t);
    let g = s.lease(&a, &[], t).unwrap().unwrap();
    // Not ready from t+5 to t+40 (no ticks, heartbeats refused); ready again: forgiven.
    s.forgive(t + Duration::from_secs(40));
    assert!(s.expire(t + Duration::from_secs(45)).is_empty());
    assert!(s
        .heartbeat(
            &a,
            std::slice::from_ref(&g.lease_id),
            t + Duration::from_secs(46)
        )
        .unwrap()
        .is_empty());
    s.expire(t + Duration::from_secs(55));
    assert_eq!(s.view("j").unwrap().ledger.lease_expiries, 0);
    // Silent after that: it expires one lease time after its last heartbeat.
    s.expire(t + Duration::from_secs(57));
    assert_eq!(s.view("j").unwrap().ledger.lease_expiries, 1);
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
    let mut info = s.view("j").unwrap().info;
    info.job_id = "k".into();
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
                after: None,
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
