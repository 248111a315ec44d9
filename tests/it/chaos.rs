//! Chaos: one labeling job on SeaweedFS with real processes — a coordinator and three workers whose
//! store traffic goes through a fault-injecting TCP proxy (connections reset, responses cut
//! mid-stream), workers SIGKILLed at random and restarted, the coordinator SIGKILLed and restarted —
//! followed by one `distill label --coordinator` client that is never resubmitted.
//!
//! Asserts: the client ends `succeeded`; every corpus row is in the cache exactly once; no staged input
//! is left; the ledger's rows and tokens equal what the cache holds and its teacher-seconds agree.
//! Sizes: `DISTILL_CHAOS_ROWS` (default 8000), `DISTILL_CHAOS_WORKER_KILLS` (24),
//! `DISTILL_CHAOS_COORDINATOR_KILLS` (3), `DISTILL_CHAOS_DEADLINE_SECONDS` (600),
//! `DISTILL_CHAOS_FAULT_PERCENT` (3: of new connections reset, and of requests dropped or their
//! responses cut, each with a reset); `scripts/chaos.sh` runs a long one. The figures go to stdout as
//! one JSON line.

use crate::cluster::*;
use crate::common::*;
use object_store::ObjectStoreExt;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator (the test's own; seeded, so a failing run can be replayed).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Makes closing the socket send an RST (linger 0: no blocking on drop, which is why tokio
/// deprecates linger in general).
#[allow(deprecated)]
fn rst_on_close(s: &tokio::net::TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Faults the proxy injected.
#[derive(Default)]
struct Faults {
    connections: AtomicU64,
    resets: AtomicU64,
    cuts: AtomicU64,
}

/// A TCP proxy in front of `target` on its own thread and runtime. Each new connection is reset at
/// once with `percent` % chance; after that about `percent` % of the requests it carries fail (see
/// [`relay`]): an RST, as from a dead peer or a middlebox.
fn fault_proxy(target: String, percent: u64, stop: Arc<AtomicBool>) -> (String, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let f = faults.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            let mut rng = Rand(0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok((client, _))) =
                    tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
                else {
                    continue;
                };
                f.connections.fetch_add(1, Ordering::Relaxed);
                if rng.below(100) < percent {
                    f.resets.fetch_add(1, Ordering::Relaxed);
                    rst_on_close(&client);
                    drop(client);
                    continue;
                }
                let (target, f) = (target.clone(), f.clone());
                let conn_rng = Rand(rng.next() | 1);
                tokio::spawn(async move {
                    if let Ok(upstream) = tokio::net::TcpStream::connect(&target).await {
                        relay(client, upstream, percent, conn_rng, &f).await;
                    }
                });
            }
        });
    });
    (rx.recv().unwrap(), faults)
}

/// Relays one connection both ways, injecting faults (see [`fault_proxy`]): each chunk a client sends
/// (a request, or a piece of an upload) rolls once — `percent / 2` % it is dropped and the connection
/// reset, `percent / 2` % the response that follows is cut after a random number of bytes and the
/// connection reset — so about `percent` % of store requests fail, whatever their responses' sizes.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut upstream: tokio::net::TcpStream,
    percent: u64,
    mut rng: Rand,
    f: &Faults,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut up, mut down) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    // Bytes of response still to pass before the cut, once one is due.
    let mut cut_in: Option<u64> = None;
    let fault = loop {
        tokio::select! {
            r = client.read(&mut up) => {
                let n = match r { Ok(0) | Err(_) => break false, Ok(n) => n };
                let roll = rng.below(200);
                if roll < percent {
                    f.resets.fetch_add(1, Ordering::Relaxed);
                    break true;
                }
                if roll < 2 * percent && cut_in.is_none() {
                    cut_in = Some(rng.below(4096));
                }
                if upstream.write_all(&up[..n]).await.is_err() { break false }
            }
            r = upstream.read(&mut down) => {
                let n = match r { Ok(0) | Err(_) => break false, Ok(n) => n };
                if let Some(k) = cut_in {
                    if (k as usize) < n {
                        let _ = client.write_all(&down[..k as usize]).await;
                        f.cuts.fetch_add(1, Ordering::Relaxed);
                        break true;
                    }
                    cut_in = Some(k - n as u64);
                }
                if client.write_all(&down[..n]).await.is_err() { break false }
            }
        }
    };
    if fault {
        rst_on_close(&client);
        rst_on_close(&upstream);
    } else {
        let _ = client.shutdown().await;
    }
}

/// `distill coordinator|worker …` with its store traffic through the proxy; stderr to `log`.
fn spawn(dir: &Path, log: &str, proxy: &str, args: &[&str]) -> Proc {
    let log = dir.join(log);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
    cmd.args(args)
        .env("AWS_ENDPOINT_URL", format!("http://{proxy}"))
        .env("DISTILL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
    let child = cmd.spawn().unwrap();
    Proc {
        child,
        log,
        metrics: String::new(),
    }
}

fn start_coordinator(dir: &Path, proxy: &str, port: u16, store: &str) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut p = spawn(
        dir,
        "chaos-coordinator.log",
        proxy,
        &[
            "coordinator",
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--lease-ttl-seconds",
            "2",
            "--heartbeat-seconds",
            "0.4",
            "--retry-backoff-seconds",
            "0.2",
            "--max-attempts",
            "20",
            "--speculate-after-seconds",
            "0",
            "--store-lease-seconds",
            "10",
        ],
    );
    // It prints one line once it listens.
    let mut byte = [0u8; 1];
    let mut out = p.child.stdout.take().unwrap();
    while out.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {}
    p
}

fn start_worker(dir: &Path, proxy: &str, url: &str, i: usize) -> Proc {
    let name = format!("chaos-w{i}");
    spawn(
        dir,
        &format!("{name}.log"),
        proxy,
        &[
            "worker",
            "--coordinator",
            url,
            "--metrics-listen",
            "127.0.0.1:0",
            "--name",
            &name,
            "--max-batch-tokens",
            "1024",
        ],
    )
}

#[test]
fn chaos_every_row_once_and_the_client_ends_succeeded_on_its_own() {
    let Some(s3) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let rows = env_or("DISTILL_CHAOS_ROWS", 8000) as usize;
    let worker_kills = env_or("DISTILL_CHAOS_WORKER_KILLS", 24);
    let coordinator_kills = env_or("DISTILL_CHAOS_COORDINATOR_KILLS", 3);
    let percent = env_or("DISTILL_CHAOS_FAULT_PERCENT", 3);
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, rows);
    let store = format!("{s3}/chaos-{}", std::process::id());
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let target = endpoint.trim_start_matches("http://").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let (proxy, faults) = fault_proxy(target, percent, stop.clone());

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut coordinator = start_coordinator(dir.path(), &proxy, port, &store);
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| start_worker(dir.path(), &proxy, &url, i))
        .collect();
    let started = Instant::now();
    let mut client: Child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .arg("label")
        .arg("--corpus")
        .arg(&corpus)
        .arg("--teacher")
        .arg(&model)
        .args(["--coordinator", &url, "--shard-size", "10"])
        .args(["--wait-seconds", "120", "--json"])
        .env("DISTILL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("chaos-client.log")).unwrap())
        .spawn()
        .unwrap();

    // Kills spread over the job: a worker every ~0.2–0.6 s, the coordinator every few worker kills.
    let mut rng = Rand(0x2545_f491_4f6c_dd1d);
    let (mut killed_workers, mut killed_coordinators) = (0u64, 0u64);
    let every = (worker_kills / coordinator_kills.max(1)).max(1);
    let limit = env_or("DISTILL_CHAOS_DEADLINE_SECONDS", 600);
    let deadline = Instant::now() + Duration::from_secs(limit);
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end in {limit} s"
        );
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        if killed_workers < worker_kills {
            let i = rng.below(workers.len() as u64) as usize;
            workers[i].kill9();
            workers[i] = start_worker(dir.path(), &proxy, &url, i);
            killed_workers += 1;
            if killed_coordinators < coordinator_kills && killed_workers % every == 0 {
                coordinator.kill9();
                coordinator = start_coordinator(dir.path(), &proxy, port, &store);
                killed_coordinators += 1;
            }
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let mut out = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let client_log = std::fs::read_to_string(dir.path().join("chaos-client.log")).unwrap();
    assert!(
        status.success(),
        "the client failed: {client_log}\ncoordinator: {}",
        coordinator.log_text()
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["state"], "succeeded", "{summary}");
    assert!(
        killed_workers >= worker_kills.min(6) && killed_coordinators >= coordinator_kills.min(1),
        "the job ended before the chaos did its part ({killed_workers} worker kills, {killed_coordinators} coordinator kills): raise DISTILL_CHAOS_ROWS"
    );
    stop.store(true, Ordering::Relaxed);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let job = distill_proto::v1::Job {
            manifest: summary["manifest"].as_str().unwrap().into(),
            ledger: Some(distill_proto::v1::Ledger {
                shards: summary["shards"].as_u64().unwrap(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_exactly_once(&store, &job, &ids(&corpus)).await;
        let loc = distill_cache::store::open(&store, false).unwrap();
        // No staged input outlives the job.
        let id = summary["job_id"].as_str().unwrap();
        let inputs = distill_cache::catalog::list_under(
            &loc,
            &loc.child(&distill_cache::jobs::inputs_dir(id)),
        )
        .await
        .unwrap();
        assert!(inputs.is_empty(), "staged inputs left: {inputs:?}");
        // The ledger agrees with the cache: rows and tokens exactly, teacher-seconds closely (a
        // shard labeled twice by a killed worker's successor reports its own, similar, seconds). The
        // corpus repeats texts, so rows are copied: what was spent and what copying saved add up to
        // what the shards record.
        let manifest_bytes = loc
            .store
            .get(&loc.child(summary["manifest"].as_str().unwrap()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let m: distill_cache::catalog::CorpusManifest =
            serde_json::from_slice(&manifest_bytes).unwrap();
        let (mut rows_cached, mut tokens, mut seconds) = (0, 0, 0.0);
        for s in &m.shards {
            let key = distill_cache::layout::ShardKey {
                teacher: m.teacher.clone(),
                output: m.output.clone(),
                shard: s.fingerprint.clone(),
            };
            let (meta, _) = distill_cache::commit::shard_meta(&loc, &key)
                .await
                .unwrap()
                .unwrap();
            rows_cached += meta.rows;
            tokens += meta.tokens;
            seconds += meta.device_seconds;
        }
        assert_eq!(summary["rows"].as_u64(), Some(rows_cached));
        assert_eq!(rows_cached, rows as u64);
        assert_eq!(summary["tokens"].as_u64(), Some(tokens), "{summary}");
        let spent = summary["teacher_seconds"].as_f64().unwrap()
            + summary["teacher_seconds_saved"].as_f64().unwrap();
        assert!(
            spent >= 0.5 * seconds && spent <= 2.0 * seconds + 0.5,
            "ledger {spent} s (spent and saved) vs cache {seconds} s"
        );
        assert!(summary["rows_reused"].as_u64().unwrap() > 0, "{summary}");
        println!(
            "{}",
            serde_json::json!({
                "rows": rows, "shards": m.shards.len(),
                "worker_kills": killed_workers, "coordinator_kills": killed_coordinators,
                "fault_percent": percent,
                "connections": faults.connections.load(Ordering::Relaxed),
                "resets": faults.resets.load(Ordering::Relaxed),
                "cuts": faults.cuts.load(Ordering::Relaxed),
                "retries": summary["retries"], "lease_expiries": summary["lease_expiries"],
                "wall_seconds": wall,
            })
        );
    });
}
