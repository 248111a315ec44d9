//! Submitting a job to a coordinator and following it until it ends, riding out a coordinator that
//! restarts or is not ready yet ([`Waiting`]); gRPC statuses become one-line errors.

use crate::progress::Bar;
use crate::{JobSummary, LabelError, LabelSpec, RemoteSpec, Result};
use distill_proto::retry::Backoff;
use distill_proto::v1;
use std::time::{Duration, Instant};
use tonic::Code;

/// Submits `spec` to its coordinator and follows the job until it ends.
pub async fn submit(remote: &RemoteSpec, spec: &LabelSpec, progress: bool) -> Result<JobSummary> {
    let ch = connect(remote).await?;
    let mut to = Coordinator::remote(&remote.url, remote.wait()?);
    to.run(ch, spec.job().to_wire(), progress).await
}

/// Connects, retrying for up to the spec's wait while the coordinator cannot be reached.
pub async fn connect(remote: &RemoteSpec) -> Result<distill_proto::Channel> {
    let cfg = remote.client_config();
    let mut waiting = Waiting::new(&cfg.url, remote.wait()?);
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

/// The coordinator a job goes to: where it is, whether it runs in this process (its refusals are
/// then about the input alone), and how long an outage is waited out.
pub struct Coordinator {
    url: String,
    in_process: bool,
    waiting: Waiting,
}

impl Coordinator {
    pub fn remote(url: &str, wait: Duration) -> Self {
        Self {
            url: url.to_owned(),
            in_process: false,
            waiting: Waiting::new(url, wait),
        }
    }

    pub fn in_process(url: &str, wait: Duration) -> Self {
        Self {
            in_process: true,
            ..Self::remote(url, wait)
        }
    }

    /// The outage in progress, waited out between tries.
    pub fn waiting(&mut self) -> &mut Waiting {
        &mut self.waiting
    }

    /// A refused call as one line.
    pub fn refused(&self, s: tonic::Status) -> LabelError {
        LabelError::Refused {
            url: self.url.clone(),
            code: s.code(),
            message: s.message().to_owned(),
            in_process: self.in_process,
        }
    }

    /// Submits a job and follows it with a progress bar until it ends, riding out coordinator
    /// restarts: a submission is retried (the coordinator attaches a repeated one to the job already
    /// running it), and the watch re-attaches to the same job id.
    pub async fn run(
        &mut self,
        ch: distill_proto::Channel,
        spec: v1::JobSpec,
        progress: bool,
    ) -> Result<JobSummary> {
        let mut jobs = distill_proto::job_client(ch);
        let bar = Bar::new(progress);
        let job = loop {
            let request = v1::SubmitJobRequest {
                spec: Some(spec.clone()),
            };
            match jobs.submit_job(request).await {
                Ok(r) => match r.into_inner().job {
                    Some(job) => break job,
                    None => {
                        return Err(LabelError::Local("the coordinator returned no job".into()))
                    }
                },
                Err(s) if transient(&s) => self.waiting.pause(s.message(), &|m| bar.say(m)).await?,
                Err(s) => return Err(self.refused(s)),
            }
        };
        self.waiting.reset();
        tracing::info!(job = %job.job_id, "job submitted");
        let last = self.follow(&mut jobs, job, &bar).await?;
        bar.finish();
        let summary = JobSummary::from_wire(&last);
        match v1::JobState::try_from(last.state) {
            Ok(v1::JobState::Succeeded) => Ok(summary),
            _ => Err(LabelError::Job {
                job: last.job_id.clone(),
                state: summary.state.to_string(),
                reason: if last.error.is_empty() {
                    "cancelled".into()
                } else {
                    last.error.clone()
                },
            }),
        }
    }

    /// Follows a job until it ends and returns its last state. A cut stream, a coordinator restart
    /// or one not ready yet is waited out and the watch re-attached by job id.
    pub async fn follow(
        &mut self,
        jobs: &mut distill_proto::JobClient,
        mut last: v1::Job,
        bar: &Bar,
    ) -> Result<v1::Job> {
        let id = last.job_id.clone();
        loop {
            let request = v1::WatchJobRequest { job_id: id.clone() };
            let mut stream = match jobs.watch_job(request).await {
                Ok(s) => s.into_inner(),
                Err(s) if transient(&s) => {
                    self.waiting.pause(s.message(), &|m| bar.say(m)).await?;
                    continue;
                }
                Err(s) => return Err(self.refused(s)),
            };
            let why = loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        if let Some(j) = update.job {
                            self.waiting.reset();
                            bar.update(&j);
                            last = j;
                        }
                    }
                    Ok(None) if last.state != v1::JobState::Running as i32 => return Ok(last),
                    // A coordinator shutting down ends its streams cleanly, the job still running.
                    Ok(None) => break "the coordinator closed the stream".to_owned(),
                    Err(s) if transient(&s) => break s.message().to_owned(),
                    Err(s) => return Err(self.refused(s)),
                }
            };
            self.waiting.pause(&why, &|m| bar.say(m)).await?;
        }
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

    /// Sleeps before the next try, or fails once the outage has lasted the limit. `show` gets a
    /// one-line state for a progress bar.
    pub async fn pause(&mut self, why: &str, show: &dyn Fn(String)) -> Result<()> {
        let since = *self.since.get_or_insert_with(|| {
            tracing::warn!(coordinator = %self.url, "waiting for the coordinator: {why}");
            Instant::now()
        });
        let waited = since.elapsed();
        if waited >= self.limit {
            return Err(LabelError::Unreachable {
                url: self.url.clone(),
                waited,
                why: why.to_owned(),
            });
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
