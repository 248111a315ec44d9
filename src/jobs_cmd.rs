//! `distill jobs ls|show|cancel`: the jobs of a coordinator.

use crate::remote::{status, RemoteArgs};
use crate::report::count;
use clap::{Args, Subcommand};
use distill_coordinator::JobSummary;
use distill_label::remote::{transient, Coordinator};
use distill_proto::v1;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List every job: id, state, progress, teacher-seconds spent and saved.
    Ls(JobsArgs),
    /// Show one job's ledger, failed shards and errors.
    Show(JobArgs),
    /// Cancel a job: no more leases; shards already committed stay in the cache.
    Cancel(JobArgs),
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job id (from `distill jobs ls`).
    pub job_id: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// `show`: follow the job with a progress bar until it ends (riding out coordinator restarts),
    /// then show it; exits non-zero unless it succeeded.
    #[arg(long)]
    pub watch: bool,
}

pub async fn run(cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Ls(a) => {
            let mut c = distill_proto::job_client(a.remote.connect().await?);
            let jobs = c
                .list_jobs(v1::ListJobsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .jobs;
            let summaries: Vec<JobSummary> = jobs.iter().map(JobSummary::from_wire).collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summaries)?);
                return Ok(());
            }
            println!(
                "{:<18} {:<10} {:>8} {:>8} {:>8} {:>7} {:>11} {:>11}  corpus",
                "job", "state", "shards", "labeled", "hits", "failed", "teacher s", "saved s"
            );
            for s in &summaries {
                println!(
                    "{:<18} {:<10} {:>8} {:>8} {:>8} {:>7} {:>11.1} {:>11.1}  {}",
                    s.job_id,
                    s.state,
                    count(s.ledger.shards),
                    count(s.ledger.shards_labeled),
                    count(s.ledger.cache_hits),
                    count(s.ledger.shards_failed),
                    s.ledger.teacher_seconds,
                    s.ledger.teacher_seconds_saved,
                    s.corpus
                );
            }
            Ok(())
        }
        JobsCommand::Show(a) => {
            let mut c = distill_proto::job_client(a.remote.connect().await?);
            let remote = a.remote.required()?;
            let mut to = Coordinator::remote(&remote.url, remote.wait()?);
            let job = loop {
                let r = c.get_job(v1::GetJobRequest {
                    job_id: a.job_id.clone(),
                });
                match r.await {
                    Ok(r) => break r.into_inner().job.unwrap_or_default(),
                    Err(s) if a.watch && transient(&s) => {
                        to.waiting().pause(s.message(), &|_| {}).await?
                    }
                    Err(s) => return Err(status(s)),
                }
            };
            if !a.watch {
                return print_job(Some(job), a.json);
            }
            to.waiting().reset();
            let bar = distill_label::progress::Bar::new(!a.json);
            let last = to.follow(&mut c, job, &bar).await?;
            bar.finish();
            let succeeded = last.state == v1::JobState::Succeeded as i32;
            print_job(Some(last), a.json)?;
            if !succeeded {
                anyhow::bail!("job {} did not succeed", a.job_id);
            }
            Ok(())
        }
        JobsCommand::Cancel(a) => {
            let mut c = distill_proto::job_client(a.remote.connect().await?);
            let r = c.cancel_job(v1::CancelJobRequest { job_id: a.job_id });
            print_job(r.await.map_err(status)?.into_inner().job, a.json)
        }
    }
}

fn print_job(job: Option<v1::Job>, json: bool) -> anyhow::Result<()> {
    let job = &job.unwrap_or_default();
    let s = JobSummary::from_wire(job);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        crate::label::print_summary(&s);
        println!(
            "  progress    {} done, {} leased, {} pending{}",
            count(job.shards_done),
            count(job.shards_leased),
            count(job.shards_pending),
            if job.planned {
                ""
            } else {
                " (still reading the corpus)"
            }
        );
    }
    Ok(())
}
