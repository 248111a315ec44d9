//! The coordinator under many workers: simulated workers against one coordinator with a very large
//! job — lease + complete cycles per second, their latency, and the coordinator's peak memory.
//!
//! The coordinator runs in its own process ([`server`], started by the caller's command), so its
//! peak RSS is its own; it serves a job of `shards` planned shards over an in-memory store. The
//! workers are tasks of this process, each with its own HTTP/2 connection, doing what `distill
//! worker` does on the wire minus the teacher: register, lease, complete (with stats), heartbeat
//! every 10 s.

use anyhow::Context;
use distill_coordinator::sched::{PlannedShard, PlannedStatus};
use distill_coordinator::{JobRecord, JobSpec};
use distill_proto::v1;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The load to offer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordBenchSpec {
    /// Simulated workers (one connection each).
    pub workers: usize,
    /// Shards of the job.
    pub shards: u64,
    /// Stop after this many seconds of leasing even if shards remain.
    pub seconds: f64,
    /// Seconds at the start whose cycles are not counted (connections and maps warming up).
    pub warmup_seconds: f64,
    /// HTTP/2 connections the simulated workers share (default: one each, as separate processes
    /// have).
    pub connections: Option<usize>,
    /// Offered load: lease+complete cycles per second over all workers (0: back to back).
    pub rate: f64,
}

impl Default for CoordBenchSpec {
    fn default() -> Self {
        Self {
            workers: 1000,
            shards: 1_000_000,
            seconds: 60.0,
            warmup_seconds: 2.0,
            connections: None,
            rate: 5000.0,
        }
    }
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct CoordFigures {
    pub workers: usize,
    pub connections: usize,
    pub offered_cycles_per_second: f64,
    pub shards: u64,
    pub cycles: u64,
    pub seconds: f64,
    pub cycles_per_second: f64,
    pub cycle_p50_ms: f64,
    pub cycle_p99_ms: f64,
    pub lease_p99_ms: f64,
    pub complete_p99_ms: f64,
    pub setup_seconds: f64,
    pub coordinator_peak_rss_mib: f64,
    /// CPU the coordinator process used while the workers ran, in cores (of the 2 shared with them).
    pub coordinator_cpu_cores: f64,
}

/// The hidden server half: a coordinator with one planned job, on loopback.
pub async fn server(shards: u64) -> anyhow::Result<()> {
    let store = distill_cache::store::open("memory://bench-coordinator/cache", true)?;
    let settings = distill_coordinator::Settings {
        resume: false,
        ..Default::default()
    };
    let coord = distill_coordinator::Coordinator::new(store, settings);
    let fp = |i: u64| {
        distill_cache::fingerprint::Hasher::new("bench")
            .u64(i)
            .clone()
            .finish()
    };
    coord.add_planned_job(
        JobRecord::new(
            "job-bench".into(),
            JobSpec {
                store: coord.store().url.clone(),
                max_attempts: 3,
                ..JobSpec::embeddings(
                    distill_cache::corpus::CorpusSpec::new("bench.jsonl"),
                    "bench-teacher",
                    1000,
                )
            },
            distill_cache::spec::OutputSpec::Embeddings {
                dtype: distill_cache::spec::Dtype::F32,
            },
            fp(u64::MAX).to_string(),
            0,
        ),
        (0..shards).map(|i| PlannedShard {
            index: i,
            fingerprint: fp(i),
            rows: 1000,
            rejects: 0,
            progress: 1000,
            rejects_file: None,
            first_rejects: Vec::new(),
            status: PlannedStatus::ToLabel,
            after: None,
        }),
    );
    coord.start();
    while !coord.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    distill_coordinator::server::serve(coord, listener, Default::default(), std::future::pending())
        .await?;
    Ok(())
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 13 {
        return f64::NAN;
    }
    (f[11] + f[12]) / 100.0
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Starts the coordinator with `server` (a command that runs [`server`] and prints `listening
/// ADDR`), drives it with the simulated workers, and stops it.
pub async fn run(
    spec: &CoordBenchSpec,
    mut server: std::process::Command,
) -> anyhow::Result<CoordFigures> {
    let setup = Instant::now();
    let mut child = server
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the coordinator process")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("coordinator did not start: {line:?}"))?
        .to_owned();
    let pid = child.id();
    let result = drive(spec, &addr, setup, pid).await;
    let rss = peak_rss_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let mut figures = result?;
    figures.coordinator_peak_rss_mib = rss;
    Ok(figures)
}

async fn drive(
    args: &CoordBenchSpec,
    addr: &str,
    setup: Instant,
    pid: u32,
) -> anyhow::Result<CoordFigures> {
    let cfg = distill_proto::ClientConfig {
        url: format!("http://{addr}"),
        ..Default::default()
    };
    let connections = args
        .connections
        .unwrap_or(args.workers)
        .clamp(1, args.workers.max(1));
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(distill_proto::connect(&cfg).await?);
    }
    let mut clients = Vec::with_capacity(args.workers);
    for i in 0..args.workers {
        let mut c = distill_proto::worker_client(channels[i % connections].clone());
        let id = c
            .register(v1::RegisterRequest {
                protocol_version: distill_proto::PROTOCOL_VERSION,
                name: format!("sim-{i}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .worker_id;
        clients.push((c, id));
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_seconds);
    let stop_at = measure_from + Duration::from_secs_f64(args.seconds);
    let go = Arc::new(tokio::sync::Barrier::new(args.workers + 1));
    // Each worker's period between cycle starts; starts staggered over one period.
    let period =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.workers as f64 / args.rate));
    let n = args.workers as u32;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, id))| {
            let go = go.clone();
            tokio::spawn(async move {
                go.wait().await;
                let (mut cycles, mut leases, mut completes) = (Vec::new(), Vec::new(), Vec::new());
                // Heartbeats spread over their 10 s period, as those of workers started at different
                // times are (all at once would be a burst of 1,000 extra calls every 10 s).
                let mut last_beat = Instant::now() - Duration::from_secs(10) * i as u32 / n;
                let mut next = tokio::time::Instant::now()
                    + period.map(|p| p * i as u32 / n).unwrap_or_default();
                while Instant::now() < stop_at {
                    if let Some(p) = period {
                        tokio::time::sleep_until(next).await;
                        next = (next + p).max(tokio::time::Instant::now());
                    }
                    let t0 = Instant::now();
                    let lease = c
                        .lease(v1::LeaseRequest {
                            worker_id: id.clone(),
                            teachers_loaded: vec![],
                        })
                        .await?
                        .into_inner()
                        .lease;
                    let t1 = Instant::now();
                    let Some(lease) = lease else { break };
                    c.complete(v1::CompleteRequest {
                        worker_id: id.clone(),
                        lease_id: lease.lease_id,
                        stats: Some(v1::ShardStats {
                            rows: 1000,
                            tokens: 30_000,
                            padded_tokens: 32_000,
                            device_seconds: 0.5,
                            bytes_written: 1 << 20,
                            ..Default::default()
                        }),
                    })
                    .await?;
                    let t2 = Instant::now();
                    if t0 < measure_from {
                        continue;
                    }
                    leases.push((t1 - t0).as_micros() as u32);
                    completes.push((t2 - t1).as_micros() as u32);
                    cycles.push((t2 - t0).as_micros() as u32);
                    if last_beat.elapsed() > Duration::from_secs(10) {
                        c.heartbeat(v1::HeartbeatRequest {
                            worker_id: id.clone(),
                            lease_ids: vec![],
                        })
                        .await?;
                        last_beat = Instant::now();
                    }
                }
                Ok::<_, tonic::Status>((cycles, leases, completes))
            })
        })
        .collect();
    go.wait().await;
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_seconds(pid);
    let (mut cycles, mut leases, mut completes) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (c, l, p) = t.await??;
        cycles.extend(c);
        leases.extend(l);
        completes.extend(p);
    }
    let seconds = measure_from.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    cycles.sort_unstable();
    leases.sort_unstable();
    completes.sort_unstable();
    Ok(CoordFigures {
        workers: args.workers,
        connections,
        offered_cycles_per_second: args.rate,
        shards: args.shards,
        cycles: cycles.len() as u64,
        seconds,
        cycles_per_second: cycles.len() as f64 / seconds,
        cycle_p50_ms: percentile(&cycles, 0.5),
        cycle_p99_ms: percentile(&cycles, 0.99),
        lease_p99_ms: percentile(&leases, 0.99),
        complete_p99_ms: percentile(&completes, 0.99),
        setup_seconds,
        coordinator_peak_rss_mib: f64::NAN,
        coordinator_cpu_cores: cpu / seconds,
    })
}
