//! Distributed labeling with real processes on loopback: a `distill coordinator`, `distill worker`s,
//! clients; workers and coordinators killed with SIGKILL; a stale worker played by a raw gRPC client.
//! Each test ends by reading the cache back: every corpus row exactly once, and the job's ledger right.

use crate::common::*;
use distill_proto::v1;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped; its stderr goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// The metrics address a coordinator printed (empty for workers).
    pub metrics: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `distill coordinator` on `port` over `store`; returns it once it listens.
pub fn coordinator(dir: &Path, name: &str, port: u16, store: &str, extra: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let listen = format!("127.0.0.1:{port}");
    // Quick lease times for tests; `extra` overrides any of them.
    let defaults = [
        ("--lease-ttl-seconds", "2"),
        ("--heartbeat-seconds", "0.4"),
        ("--retry-backoff-seconds", "0.2"),
        ("--speculate-after-seconds", "0"),
    ];
    let mut args: Vec<&str> = vec![
        "coordinator",
        "--listen",
        &listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--store",
        store,
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .args(extra)
        .env("DISTILL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("grpc="),
        "coordinator did not start: {line} {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let metrics = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics="))
        .unwrap_or_default()
        .to_owned();
    Proc {
        child,
        log,
        metrics,
    }
}

/// Starts `distill worker` against `url`.
pub fn worker(dir: &Path, name: &str, url: &str, extra: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args([
            "worker",
            "--coordinator",
            url,
            "--metrics-listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--max-batch-tokens",
            "2048",
        ])
        .args(extra)
        .env("DISTILL_LOG", "info,distill_worker=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log,
        metrics: String::new(),
    }
}

pub async fn client(url: &str, token: Option<&str>) -> distill_proto::JobClient {
    let cfg = distill_proto::ClientConfig {
        url: url.into(),
        token: token.map(str::to_owned),
        tls_ca: None,
    };
    distill_proto::job_client(distill_proto::connect(&cfg).await.unwrap())
}

pub async fn worker_client(url: &str) -> distill_proto::WorkerClient {
    let cfg = distill_proto::ClientConfig {
        url: url.into(),
        ..Default::default()
    };
    distill_proto::worker_client(distill_proto::connect(&cfg).await.unwrap())
}

pub fn spec(corpus: &Path, teacher: &Path, shard_size: u64) -> v1::JobSpec {
    v1::JobSpec {
        corpus: Some(v1::CorpusSpec {
            url: corpus.display().to_string(),
            ..Default::default()
        }),
        teacher: teacher.display().to_string(),
        shard_size,
        ..Default::default()
    }
}

/// Submits, retrying while the coordinator is not ready yet.
pub async fn submit(c: &mut distill_proto::JobClient, spec: v1::JobSpec) -> v1::Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec.clone()),
            })
            .await
        {
            Ok(r) => return r.into_inner().job.unwrap(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("submit: {s:?}"),
        }
    }
}

/// Polls a job until it is no longer running.
pub async fn wait_job(c: &mut distill_proto::JobClient, id: &str, limit: Duration) -> v1::Job {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = c.get_job(v1::GetJobRequest { job_id: id.into() }).await {
            let job = r.into_inner().job.unwrap();
            if job.state != v1::JobState::Running as i32 {
                return job;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not finish in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `f` holds, polling.
pub async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row of the corpus is in the cache exactly once (ids of all shard files, no duplicates), and
/// the manifest lists them in corpus order.
pub async fn assert_exactly_once(store: &str, job: &v1::Job, expected_ids: &[String]) {
    let summary = serde_json::json!({ "manifest": job.manifest });
    let (ids, values, width) = read_corpus_back(store, &summary).await;
    assert_eq!(ids, expected_ids, "manifest rows in corpus order");
    assert_eq!(values.len(), ids.len() * width);
    // No stray shard file beyond the manifest's: nothing labeled into a second copy.
    let files = shard_files(store).await;
    let l = job.ledger.unwrap();
    assert_eq!(files.len() as u64, l.shards, "{files:?}");
}

pub fn ids(corpus: &Path) -> Vec<String> {
    std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Shards committed by the workers whose logs are given (from their "shard labeled" lines).
pub fn committed(procs: &[&Proc]) -> usize {
    procs
        .iter()
        .map(|p| {
            p.log_text()
                .lines()
                .filter(|l| l.contains("shard labeled") && l.contains("committed=true"))
                .count()
        })
        .sum()
}

fn stores(dir: &Path, name: &str) -> Vec<String> {
    let mut v = vec![dir.join(format!("{name}-cache")).display().to_string()];
    if let Ok(s3) = std::env::var("DISTILL_TEST_S3_URL") {
        v.push(format!("{s3}/{name}-{}", std::process::id()));
    }
    v
}

fn real_corpus(dir: &Path, rows: usize) -> Option<PathBuf> {
    let rt = rotten_tomatoes()?;
    let corpus = dir.join("corpus.jsonl");
    let body: String = std::fs::read_to_string(rt)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"text\": \"\"") && !l.contains("\"text\":\"\""))
        .take(rows)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&corpus, body).unwrap();
    Some(corpus)
}

#[tokio::test]
async fn three_workers_label_a_corpus_once_on_the_filesystem_and_s3() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(corpus) = real_corpus(dir.path(), 240) else {
        return;
    };
    if s3_url().is_none() && require_all() {
        return;
    }
    for store in stores(dir.path(), "three") {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        // Lease times with room for three real teachers sharing two cores (expiry is another test's).
        let _c = coordinator(
            dir.path(),
            "three-c",
            port,
            &store,
            &["--lease-ttl-seconds", "20", "--heartbeat-seconds", "1"],
        );
        let ws: Vec<Proc> = (0..3)
            .map(|i| worker(dir.path(), &format!("three-w{i}"), &url, &[]))
            .collect();
        let mut c = client(&url, None).await;
        let job = submit(&mut c, spec(&corpus, &model, 20)).await;
        let job = wait_job(&mut c, &job.job_id, Duration::from_secs(300)).await;
        assert_eq!(
            job.state,
            v1::JobState::Succeeded as i32,
            "{store}: {job:?}"
        );
        let l = job.ledger.unwrap();
        assert_eq!(
            (l.shards, l.shards_labeled, l.cache_hits, l.rows),
            (12, 12, 0, 240),
            "{store}"
        );
        assert!(l.teacher_seconds > 0.0 && l.tokens > 0 && l.bytes_written > 0);
        assert_exactly_once(&store, &job, &ids(&corpus)).await;
        let refs: Vec<&Proc> = ws.iter().collect();
        assert_eq!(
            committed(&refs),
            12,
            "each shard labeled by exactly one worker"
        );
        // The same corpus again: every shard a cache hit, with the teacher-seconds it saved.
        let again = submit(&mut c, spec(&corpus, &model, 20)).await;
        let again = wait_job(&mut c, &again.job_id, Duration::from_secs(60)).await;
        let l2 = again.ledger.unwrap();
        assert_eq!((l2.cache_hits, l2.shards_labeled), (12, 0));
        assert!((l2.teacher_seconds_saved - l.teacher_seconds).abs() < 1e-6);
        assert_eq!(committed(&refs), 12);
        let listed = c
            .list_jobs(v1::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(listed.len(), 2);
    }
}

#[tokio::test]
async fn a_worker_killed_mid_shard_loses_nothing() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(corpus) = real_corpus(dir.path(), 200) else {
        return;
    };
    let store = stores(dir.path(), "kill").pop().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c_proc = coordinator(dir.path(), "kill-c", port, &store, &[]);
    let mut w1 = worker(dir.path(), "kill-w1", &url, &[]);
    let mut c = client(&url, None).await;
    let job = submit(&mut c, spec(&corpus, &model, 40)).await;
    // Kill w1 once it has committed one shard and leased the next (labeling it now).
    until("w1 to commit a shard", Duration::from_secs(120), || {
        committed(&[&w1]) >= 1
    })
    .await;
    w1.kill9();
    let w2 = worker(dir.path(), "kill-w2", &url, &[]);
    let job = wait_job(&mut c, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(
        job.state,
        v1::JobState::Succeeded as i32,
        "{job:?}\n{}",
        c_proc.log_text()
    );
    let l = job.ledger.unwrap();
    assert_eq!((l.shards, l.rows), (5, 200));
    assert!(l.lease_expiries >= 1, "w1's lease expired: {l:?}");
    assert_eq!(l.shards_labeled, 5);
    assert_exactly_once(&store, &job, &ids(&corpus)).await;
    assert!(committed(&[&w1, &w2]) <= 5);
}

/// `distill label --coordinator URL --json` as a child process (the user's client).
fn label_client(corpus: &Path, model: &Path, url: &str, shard_size: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["label", "--corpus"])
        .arg(corpus)
        .arg("--teacher")
        .arg(model)
        .args(["--coordinator", url, "--shard-size"])
        .arg(shard_size.to_string())
        .args(["--wait-seconds", "120", "--json"])
        .env("DISTILL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The summary a label client printed; panics with its stderr unless it succeeded.
fn client_summary(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

#[tokio::test]
async fn a_coordinator_killed_mid_job_resumes_with_nothing_lost_or_relabeled() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(corpus) = real_corpus(dir.path(), 200) else {
        return;
    };
    for store in stores(dir.path(), "restart") {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut c1 = coordinator(dir.path(), "restart-c1", port, &store, &[]);
        let w = worker(dir.path(), "restart-w", &url, &[]);
        // The user's client rides out the restart on its own: never resubmitted by hand.
        let first = label_client(&corpus, &model, &url, 25);
        until("a committed shard", Duration::from_secs(120), || {
            committed(&[&w]) >= 2
        })
        .await;
        c1.kill9();
        let c2 = coordinator(
            dir.path(),
            "restart-c2",
            port,
            &store,
            &["--recovery-window-seconds", "3"],
        );
        // The same work submitted again while it runs attaches to the running job.
        let second = label_client(&corpus, &model, &url, 25);
        let (a, b) = (client_summary(first), client_summary(second));
        assert_eq!(a["job_id"], b["job_id"], "{store}: a twin job started");
        let mut c = client(&url, None).await;
        let jobs = c
            .list_jobs(v1::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(jobs.len(), 1, "{store}: {jobs:?}");
        let done = wait_job(&mut c, &jobs[0].job_id, Duration::from_secs(300)).await;
        assert_eq!(
            done.state,
            v1::JobState::Succeeded as i32,
            "{store}: {done:?}\n{}",
            c2.log_text()
        );
        let l = done.ledger.unwrap();
        assert_eq!(
            (l.shards, l.rows, l.shards_labeled, l.cache_hits),
            (8, 200, 8, 0),
            "{store}: {l:?}"
        );
        assert_eq!(a["rows"], 200, "{store}: {a}");
        assert_exactly_once(&store, &done, &ids(&corpus)).await;
        assert_eq!(committed(&[&w]), 8, "{store}: no shard labeled twice");
        assert!(
            !w.log_text().contains("already in the cache"),
            "{store}: no lease of a committed shard"
        );
    }
}

#[tokio::test]
async fn a_stale_worker_report_is_refused_and_the_shard_is_labeled_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 30);
    for store in stores(dir.path(), "stale") {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let _c = coordinator(dir.path(), "stale-c", port, &store, &[]);
        let mut jobs = client(&url, None).await;
        let job = submit(&mut jobs, spec(&corpus, &model, 10)).await;
        // Two hand-played workers: A leases shard 0 and goes silent; B gets it after A's lease expires.
        let mut w = worker_client(&url).await;
        let reg = |name: &str| v1::RegisterRequest {
            protocol_version: distill_proto::PROTOCOL_VERSION,
            name: name.into(),
            ..Default::default()
        };
        let a = w
            .register(reg("stale-a"))
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let b = w
            .register(reg("stale-b"))
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let lease = |id: &str| v1::LeaseRequest {
            worker_id: id.into(),
            teachers_loaded: vec![],
        };
        let la = loop {
            if let Some(l) = w.lease(lease(&a)).await.unwrap().into_inner().lease {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut others = Vec::new();
        let lb = loop {
            // B heartbeats its leases; A does not.
            w.heartbeat(v1::HeartbeatRequest {
                worker_id: b.clone(),
                lease_ids: others.clone(),
            })
            .await
            .unwrap();
            if let Some(l) = w.lease(lease(&b)).await.unwrap().into_inner().lease {
                if l.shard_index == la.shard_index {
                    break l;
                }
                others.push(l.lease_id); // another shard: hold it, keep waiting for A's
            }
            assert!(Instant::now() < deadline, "A's shard was never re-leased");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(lb.attempt, 2);
        let stale = w
            .complete(v1::CompleteRequest {
                worker_id: a.clone(),
                lease_id: la.lease_id.clone(),
                stats: Some(v1::ShardStats {
                    rows: 10,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
        assert!(
            stale.message().contains("expired") && stale.message().contains("stale-b"),
            "{}",
            stale.message()
        );
        // B hands its lease back; a real worker finishes the job.
        for id in others.into_iter().chain([lb.lease_id]) {
            w.fail(v1::FailRequest {
                worker_id: b.clone(),
                lease_id: id,
                error: String::new(),
                release: true,
            })
            .await
            .unwrap();
        }
        let real = worker(dir.path(), "stale-real", &url, &[]);
        let done = wait_job(&mut jobs, &job.job_id, Duration::from_secs(60)).await;
        assert_eq!(
            done.state,
            v1::JobState::Succeeded as i32,
            "{store}: {done:?}"
        );
        let l = done.ledger.unwrap();
        assert_eq!((l.shards, l.shards_labeled, l.rows), (3, 3, 30));
        assert!(l.lease_expiries >= 1);
        assert_exactly_once(&store, &done, &ids(&corpus)).await;
        assert_eq!(committed(&[&real]), 3, "{}", real.log_text());
    }
}

#[tokio::test]
async fn a_worker_sent_sigterm_finishes_its_shard_hands_back_the_next_and_exits() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(corpus) = real_corpus(dir.path(), 160) else {
        return;
    };
    let store = stores(dir.path(), "drain").remove(0);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // A long lease time: if the drained worker's leases were not handed back, the job would stall.
    let _c = coordinator(
        dir.path(),
        "drain-c",
        port,
        &store,
        &["--lease-ttl-seconds", "600", "--heartbeat-seconds", "1"],
    );
    let mut w1 = worker(dir.path(), "drain-w1", &url, &[]);
    let mut c = client(&url, None).await;
    let job = submit(&mut c, spec(&corpus, &model, 40)).await;
    until("w1 to commit a shard", Duration::from_secs(120), || {
        committed(&[&w1]) >= 1
    })
    .await;
    let before = committed(&[&w1]);
    let ok = Command::new("kill")
        .args(["-TERM", &w1.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = w1.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "w1 did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{}", w1.log_text());
    let log = w1.log_text();
    assert!(log.contains("draining"), "{log}");
    // It finished at most the shard it was labeling and took no new work after SIGTERM.
    assert!(committed(&[&w1]) <= before + 1, "{log}");
    let w2 = worker(dir.path(), "drain-w2", &url, &[]);
    let done = wait_job(&mut c, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{done:?}");
    let l = done.ledger.unwrap();
    assert_eq!(
        (l.shards, l.shards_labeled, l.lease_expiries, l.retries),
        (4, 4, 0, 0),
        "{l:?}"
    );
    assert_eq!(committed(&[&w1, &w2]), 4);
    assert_exactly_once(&store, &done, &ids(&corpus)).await;
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test]
async fn a_second_coordinator_on_a_store_stands_by_and_a_paused_one_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 40);
    for store in stores(dir.path(), "lease") {
        let lease = ["--store-lease-seconds", "2"];
        let (p1, p2) = (free_port(), free_port());
        let (u1, u2) = (
            format!("http://127.0.0.1:{p1}"),
            format!("http://127.0.0.1:{p2}"),
        );
        let mut c1 = coordinator(dir.path(), "lease-c1", p1, &store, &lease);
        let mut first = client(&u1, None).await;
        let _ = submit(&mut first, spec(&corpus, &model, 10)).await; // c1 is ready: it holds the store
        let c2 = coordinator(dir.path(), "lease-c2", p2, &store, &lease);
        until("c2 standing by", Duration::from_secs(30), || {
            c2.log_text().contains("standing by")
        })
        .await;
        assert!(
            c2.log_text().contains(&format!("pid {}", c1.child.id())),
            "c2 names the holder: {}",
            c2.log_text()
        );
        let mut second = client(&u2, None).await;
        let refused = second
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec(&corpus, &model, 10)),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        // c1 stops renewing (paused, as by a partition or a long GC): after the lease's time to live
        // c2 takes the store over and runs the unfinished job to the end with its own worker.
        signal(&c1, "-STOP");
        let w = worker(dir.path(), "lease-w", &u2, &[]);
        let job = submit(&mut second, spec(&corpus, &model, 10)).await;
        let done = wait_job(&mut second, &job.job_id, Duration::from_secs(120)).await;
        assert_eq!(done.state, v1::JobState::Succeeded as i32, "{done:?}");
        assert_exactly_once(&store, &done, &ids(&corpus)).await;
        // c1 resumes: it learns it lost the store, grants nothing more and exits with the reason.
        signal(&c1, "-CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = c1.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "a fenced coordinator kept running"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!status.success());
        let log = c1.log_text();
        assert!(
            log.lines()
                .last()
                .is_some_and(|l| l.starts_with("error:") && l.contains("took over this store")),
            "{log}"
        );
        drop(w);
        c1.kill9();
    }
}

#[tokio::test]
async fn damaged_inputs_shards_and_records_end_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 40);
    let root = dir.path().join("cache");
    let store = root.display().to_string();
    // A job record this release cannot read (a newer schema) is skipped: the coordinator still serves.
    let newer = root.join("v1/jobs/job-from-the-future");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("job.json"), r#"{"schema": 99, "spec": []}"#).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let coord = coordinator(
        dir.path(),
        "damage-c",
        port,
        &store,
        &["--max-attempts", "2"],
    );
    let mut c = client(&url, None).await;
    let job = submit(&mut c, spec(&corpus, &model, 10)).await;
    assert!(
        coord.log_text().contains("job record skipped"),
        "{}",
        coord.log_text()
    );
    // Before any worker runs: one staged input cut in half, another deleted.
    let inputs = root.join(format!("v1/jobs/{}/inputs", job.job_id));
    let staged = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&inputs)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    until("4 staged inputs", Duration::from_secs(30), || {
        staged().len() == 4
    })
    .await;
    let files = staged();
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&files[2]).unwrap();
    let _w = worker(dir.path(), "damage-w", &url, &[]);
    let done = wait_job(&mut c, &job.job_id, Duration::from_secs(120)).await;
    assert_eq!(done.state, v1::JobState::Failed as i32, "{done:?}");
    let failed: Vec<(u64, &str)> = done
        .failed_shards
        .iter()
        .map(|f| (f.index, f.last_error.as_str()))
        .collect();
    assert_eq!(
        failed.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![1, 2],
        "{failed:?}"
    );
    assert!(failed[0].1.contains("00000001.json.zst"), "{failed:?}");
    assert!(failed[1].1.contains("00000002.json.zst"), "{failed:?}");
    assert!(
        done.error.contains("2 of 4 shards failed"),
        "{}",
        done.error
    );
    // The two good shards are in the cache. One of them damaged there: the next job names it and
    // says what to do, and nothing else is written.
    let shards = shard_files(&store).await;
    assert_eq!(shards.len(), 2, "{shards:?}");
    let damaged = root.join(&shards[0]);
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 3]).unwrap();
    let again = submit(&mut c, spec(&corpus, &model, 10)).await;
    let done = wait_job(&mut c, &again.job_id, Duration::from_secs(120)).await;
    assert_eq!(done.state, v1::JobState::Failed as i32, "{done:?}");
    let name = damaged.file_name().unwrap().to_str().unwrap();
    assert!(
        done.error.contains(name) && done.error.contains("delete it"),
        "{}",
        done.error
    );
}
