//! Reaching a coordinator from the command line: `--coordinator`, `--token`, `--tls-ca`,
//! `--wait-seconds`; riding out a coordinator that restarts or is not ready yet ([`Waiting`]); and gRPC
//! statuses turned into one-line errors.

use clap::Args;
use distill_proto::retry::Backoff;
use std::time::{Duration, Instant};
use tonic::Code;

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Coordinator URL (http://host:port, or https:// with TLS). Without it, `distill label` runs a
    /// coordinator and a worker in this process.
    #[arg(long, env = "DISTILL_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Token the coordinator requires (sent as `authorization: Bearer …`).
    #[arg(long, env = "DISTILL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the coordinator's TLS certificate (default: public roots).
    #[arg(long, env = "DISTILL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Clients (`label --coordinator`, `jobs`): seconds to keep retrying a coordinator that cannot be
    /// reached or is not ready (a restart, a rollout) before giving up; the job goes on without the
    /// client. A worker retries without limit.
    #[arg(long, env = "DISTILL_WAIT_SECONDS", default_value_t = WAIT_SECONDS)]
    pub wait_seconds: f64,
}

/// Seconds a client waits out an unreachable coordinator by default.
const WAIT_SECONDS: f64 = 600.0;

impl Default for RemoteArgs {
    fn default() -> Self {
        Self {
            coordinator: None,
            token: None,
            tls_ca: None,
            wait_seconds: WAIT_SECONDS,
        }
    }
}

impl RemoteArgs {
    pub fn client_config(&self) -> anyhow::Result<distill_proto::ClientConfig> {
        let url = self
            .coordinator
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--coordinator (or DISTILL_COORDINATOR) is required"))?;
        Ok(distill_proto::ClientConfig {
            url,
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
        })
    }

    /// How long to ride out an unreachable coordinator.
    pub fn wait(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.wait_seconds).map_err(|_| {
            anyhow::anyhow!(
                "--wait-seconds {}: must be a number of seconds ≥ 0",
                self.wait_seconds
            )
        })
    }

    /// Connects, retrying for up to `--wait-seconds` while the coordinator cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<distill_proto::Channel> {
        let cfg = self.client_config()?;
        let mut waiting = Waiting::new(&cfg.url, self.wait()?);
        loop {
            match distill_proto::connect(&cfg).await {
                Ok(ch) => return Ok(ch),
                // A coordinator that is down or restarting may come back; a bad URL, CA file or
                // certificate does not get better by waiting.
                Err(e @ distill_proto::TransportError::Connect { .. }) if !is_tls_error(&e) => {
                    waiting.pause(&e.to_string(), &|_| {}).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether a connection failed in the TLS handshake (an untrusted or wrong certificate).
fn is_tls_error(e: &distill_proto::TransportError) -> bool {
    let m = e.to_string().to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "invalid peer",
        "unknownissuer",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Whether a failed call may succeed if repeated: the coordinator is restarting, not ready, or the
/// connection was cut. Everything else (bad input, auth, unknown job) is final.
pub fn transient(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Aborted => true,
        // A stream cut mid-message surfaces as an internal h2 error.
        Code::Internal => {
            let m = s.message();
            m.contains("h2 protocol error") || m.contains("connection") || m.contains("stream")
        }
        _ => false,
    }
}

/// Rides out one outage of the coordinator: bounded, with backoff, saying that it waits.
pub struct Waiting {
    url: String,
    limit: Duration,
    since: Option<Instant>,
    backoff: Backoff,
}

impl Waiting {
    pub fn new(url: &str, limit: Duration) -> Self {
        Self {
            url: url.to_owned(),
            limit,
            since: None,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(5)),
        }
    }

    /// The coordinator answered: the next failure starts a new outage.
    pub fn reset(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                waited_s = since.elapsed().as_secs_f64(),
                "the coordinator is back"
            );
        }
        self.backoff.reset();
    }

    /// Sleeps before the next try, or fails once the outage has lasted `limit`. `show` gets a
    /// one-line state for a progress bar.
    pub async fn pause(&mut self, why: &str, show: &dyn Fn(String)) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(|| {
            tracing::warn!(coordinator = %self.url, "waiting for the coordinator: {why}");
            Instant::now()
        });
        let waited = since.elapsed();
        if waited >= self.limit {
            anyhow::bail!(
                "the coordinator at {} has not answered for {:.0} s ({why}); raise --wait-seconds to wait longer",
                self.url,
                waited.as_secs_f64()
            );
        }
        show(format!(
            "waiting for the coordinator ({:.0} s): {why}",
            waited.as_secs_f64()
        ));
        let delay = self.backoff.next_delay().min(self.limit - waited);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A gRPC status as a one-line error: its code and message.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", s.message(), s.code())
}
