//! `distill coordinator` and `distill worker`: the two long-running processes of a cluster.

use crate::label::TeacherArgs;
use crate::remote::RemoteArgs;
use anyhow::Context;
use clap::Args;
use distill_teacher::{DeviceSpec, Resident};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// gRPC address to listen on.
    #[arg(long, env = "DISTILL_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// The store: cache and job records (a local directory or s3://, gs://, az://, file:// URL).
    #[arg(long, env = "DISTILL_STORE")]
    pub store: String,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "DISTILL_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Require this token on every RPC (health excepted), e.g. from a Kubernetes Secret.
    #[arg(long, env = "DISTILL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate chain to serve TLS with (with --tls-key).
    #[arg(long, env = "DISTILL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DISTILL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Seconds a lease lives without a heartbeat.
    #[arg(long, env = "DISTILL_LEASE_TTL_SECONDS", default_value_t = 60.0)]
    pub lease_ttl_seconds: f64,
    /// Seconds between worker heartbeats (told to workers when they register).
    #[arg(long, env = "DISTILL_HEARTBEAT_SECONDS", default_value_t = 10.0)]
    pub heartbeat_seconds: f64,
    /// Attempts per shard before it is marked failed (jobs may ask for another number).
    #[arg(long, env = "DISTILL_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay in seconds; doubles per attempt, at most 60 s.
    #[arg(long, env = "DISTILL_RETRY_BACKOFF_SECONDS", default_value_t = 2.0)]
    pub retry_backoff_seconds: f64,
    /// Minimum age in seconds of a tail lease before a speculative copy (0: no speculation).
    #[arg(long, env = "DISTILL_SPECULATE_AFTER_SECONDS", default_value_t = 30.0)]
    pub speculate_after_seconds: f64,
    /// Shards staged for workers ahead of completion, per job.
    #[arg(long, env = "DISTILL_PLAN_AHEAD", default_value_t = 1024)]
    pub plan_ahead: usize,
    /// Store lookups (and, apart, staged writes) in flight at once while a job is planned.
    #[arg(long, env = "DISTILL_PLAN_CONCURRENCY", default_value_t = distill_coordinator::PLAN_CONCURRENCY)]
    pub plan_concurrency: usize,
    /// After a restart with unfinished jobs: seconds workers get to re-state their leases.
    #[arg(long, env = "DISTILL_RECOVERY_WINDOW_SECONDS")]
    pub recovery_window_seconds: Option<f64>,
    /// Seconds the store's coordinator lease lives without renewal: a second coordinator on the
    /// same store stands by (not ready) until this one stops, releases it or misses renewals that
    /// long.
    #[arg(long, env = "DISTILL_STORE_LEASE_SECONDS", default_value_t = 30.0)]
    pub store_lease_seconds: f64,
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("--{flag} {v}: must be a number of seconds ≥ 0"))
}

impl CoordinatorArgs {
    pub fn settings(&self) -> anyhow::Result<distill_coordinator::Settings> {
        let lease_ttl = seconds("lease-ttl-seconds", self.lease_ttl_seconds)?;
        let heartbeat = seconds("heartbeat-seconds", self.heartbeat_seconds)?;
        if heartbeat.is_zero() || heartbeat * 2 > lease_ttl {
            anyhow::bail!(
                "--heartbeat-seconds {} must be above 0 and at most half of --lease-ttl-seconds {}",
                self.heartbeat_seconds,
                self.lease_ttl_seconds
            );
        }
        if self.max_attempts == 0 {
            anyhow::bail!("--max-attempts must be at least 1");
        }
        let speculate = seconds("speculate-after-seconds", self.speculate_after_seconds)?;
        Ok(distill_coordinator::Settings {
            sched: distill_coordinator::sched::Config {
                lease_ttl,
                heartbeat_interval: heartbeat,
                max_attempts: self.max_attempts,
                retry_backoff: seconds("retry-backoff-seconds", self.retry_backoff_seconds)?,
                speculate_after: (!speculate.is_zero()).then_some(speculate),
                recovery_window: match self.recovery_window_seconds {
                    Some(s) => seconds("recovery-window-seconds", s)?,
                    None => lease_ttl,
                },
            },
            resume: true,
            plan_ahead: self.plan_ahead.max(1),
            plan_concurrency: self.plan_concurrency.max(1),
            store_lease: Some(seconds("store-lease-seconds", self.store_lease_seconds)?)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow::anyhow!("--store-lease-seconds must be above 0"))
                .map(Some)?,
        })
    }
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let store = distill_cache::store::open(&args.store, true)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("--tls-cert {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("--tls-key {}", k.display()))?,
        )),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let (grpc, http) = (listener.local_addr()?, metrics_listener.local_addr()?);
    let coord = distill_coordinator::Coordinator::new(store, settings);
    coord.start();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics = {
        let (c1, c2) = (coord.clone(), coord.clone());
        tokio::spawn(distill_proto::http::serve(
            metrics_listener,
            Arc::new(move || distill_coordinator::metrics::render(&c1)),
            Arc::new(move || c2.is_ready()),
            wait(stopped.clone()),
        ))
    };
    let server = tokio::spawn(distill_coordinator::server::serve(
        coord.clone(),
        listener,
        distill_coordinator::server::ServeOptions {
            token: args.token.clone(),
            tls,
        },
        wait(stopped.clone()),
    ));
    // One line for scripts and tests that start it on port 0.
    println!(
        "coordinator listening grpc={grpc} metrics={http} store={}",
        coord.store().url
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%grpc, %http, store = %coord.store().url, "coordinator started");
    tokio::select! {
        _ = terminated() => tracing::info!("shutting down"),
        r = server => { r??; anyhow::bail!("the gRPC server stopped"); }
        why = coord.fatal() => {
            let _ = stop.send(true);
            anyhow::bail!("{why}");
        }
    }
    let _ = stop.send(true);
    coord.release().await;
    let _ = metrics.await;
    Ok(())
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Device to run teachers on: cpu or cuda:N.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Token budget of one forward batch (rows × padded length).
    #[arg(long, env = "DISTILL_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// Name in the coordinator's logs (default: $HOSTNAME, the pod name in Kubernetes).
    #[arg(long, env = "DISTILL_WORKER_NAME")]
    pub name: Option<String>,
    /// On SIGTERM: seconds to finish the current shard before handing it back.
    #[arg(long, env = "DISTILL_DRAIN_GRACE_SECONDS", default_value_t = 50.0)]
    pub drain_grace_seconds: f64,
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "DISTILL_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,
    /// Load this teacher at start (otherwise at the first lease).
    #[arg(long, env = "DISTILL_TEACHER")]
    pub teacher: Option<String>,
    /// How a decoder's weights stay in memory on the CPU: compact or f32 (the reference path).
    #[arg(long, env = "DISTILL_RESIDENT_WEIGHTS", default_value = "compact")]
    pub resident_weights: Resident,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let client = args.remote.required()?.client_config();
    let name = args
        .name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    if args.max_batch_tokens == 0 {
        anyhow::bail!("--max-batch-tokens must be at least 1");
    }
    let slot = match &args.teacher {
        Some(t) => {
            let ta = TeacherArgs {
                teacher: t.clone(),
                device: args.device.clone(),
                max_batch_tokens: args.max_batch_tokens,
                resident_weights: args.resident_weights,
                precision: "f32".into(),
            };
            distill_worker::pull::TeacherSlot::with(Arc::new(ta.spec()?.load().await?))
        }
        None => Default::default(),
    };
    let slot = Arc::new(slot);
    let metrics: Arc<distill_worker::pull::WorkerMetrics> = Default::default();
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let http = metrics_listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let m = {
        let (m1, s1, m2) = (metrics.clone(), slot.clone(), metrics.clone());
        let mut rx = stopped.clone();
        tokio::spawn(distill_proto::http::serve(
            metrics_listener,
            Arc::new(move || m1.render(s1.is_loaded())),
            Arc::new(move || m2.connected.load(std::sync::atomic::Ordering::Relaxed) == 1),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ))
    };
    println!("worker {name} metrics={http} coordinator={}", client.url);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let cfg = distill_worker::pull::PullConfig {
        client,
        name,
        device: args.device.clone(),
        load: distill_teacher::LoadOptions {
            resident: args.resident_weights,
            memory_limit: None,
        },
        max_batch_tokens: args.max_batch_tokens,
        drain_grace: seconds("drain-grace-seconds", args.drain_grace_seconds)?,
        stores: Vec::new(),
        idle_poll_max: std::time::Duration::from_secs(1),
    };
    let mut run = tokio::spawn(distill_worker::pull::run(cfg, slot, metrics, stopped));
    // The pull loop ends on its own only with an error (refused by the coordinator, a protocol it
    // does not speak): the process then exits non-zero with that error, so an orchestrator restarts
    // it and shows why, instead of a live pod that does no work.
    let result = tokio::select! {
        _ = terminated() => {
            tracing::info!("SIGTERM: draining");
            let _ = stop.send(true);
            (&mut run).await?
        }
        r = &mut run => r?,
    };
    let _ = stop.send(true);
    let _ = m.await;
    result?;
    Ok(())
}
