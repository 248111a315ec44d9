//! The main job as a library: the whole product on Rotten Tomatoes, end to end, from library calls.
//!
//! 1. label the corpus once with the teacher (a rerun is all cache hits) — [`teacher_pass`];
//! 2. split the gold labels **by movie** (no movie on both sides) into a train pool and a test set;
//!    test labels are never trained on; test texts take part in distillation as unlabeled text (the
//!    reference setup) unless `exclude_test_texts`, and one extra n-gram row never sees them —
//!    [`split`];
//! 3. per draw of gold labels from the pool: fit the sentiment task from the cache, train the
//!    students, evaluate each and the teachers with their heads on the test set — [`draws`], with
//!    the rows made in [`rows`] and the labeling loop in [`labeling_loop`];
//! 4. fit a second task on the same cache (critic review vs plot summary): zero teacher-seconds;
//! 5. summarise, check the targets, write `report.json`, `report.md` and a plot of accuracy against
//!    latency — [`report`], [`plot`].
//!
//! What is decided (the split, the draws, their pairing, the summaries, the targets) is in
//! [`protocol`], unit-tested. [`run`] takes a [`QuickstartSpec`] and returns the [`Outcome`]; the
//! command prints it.

pub mod draw;
pub mod draws;
pub mod error;
pub mod labeling_loop;
pub mod plot;
pub mod protocol;
pub mod report;
pub mod rows;
pub mod spec;
pub mod split;
pub mod teacher_pass;

pub use error::{QuickstartError, Result};
pub use spec::QuickstartSpec;

use distill_label::JobSummary;
use protocol::{loop_gap, summarize, targets, Check, LoopGap, Row, Summary};

/// What a run found: every evaluated row, their summaries over draws, the targets, and the teacher
/// passes' ledgers. `report.json`, `report.md` and the plot are written in `spec.out`.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub summary: Vec<Summary>,
    pub targets: Vec<Check>,
    pub labeling_loop: Option<LoopGap>,
    pub label_job: JobSummary,
    pub llm_label_job: Option<JobSummary>,
    /// Teacher-seconds each task cost to define (0 for a head on cached outputs).
    pub task_teacher_seconds: Vec<(String, f64)>,
    pub train_rows: usize,
    pub test_rows: usize,
    pub wall_seconds: f64,
}

/// Runs the quickstart and writes its report.
pub async fn run(spec: &QuickstartSpec) -> Result<Outcome> {
    spec.validate()?;
    let started = std::time::Instant::now();
    error::create_dir(&spec.out)?;
    let loc = distill_cache::store::open(&spec.store, true)?;
    let (job, entry) = teacher_pass::encoder(spec, &loc).await?;
    let split = split::split(spec, &loc, &entry).await?;
    let mut run = draws::Run::new(spec, loc, entry, &split).await?;
    run.student_draws().await?;
    run.loop_draws().await?;
    let (rows, task_seconds, llm_job) = run.finish();
    let summary = summarize(&rows);
    let outcome = Outcome {
        targets: targets(&summary, spec.draws),
        labeling_loop: loop_gap(&rows),
        summary,
        rows,
        label_job: job,
        llm_label_job: llm_job,
        task_teacher_seconds: task_seconds,
        train_rows: split.train.len(),
        test_rows: split.test.len(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    report::write(spec, &outcome)?;
    Ok(outcome)
}
