//! One draw of one task: its gold labels, the files they are written to, and the head fitted on
//! them from the cache.

use crate::protocol::Row;
use crate::split::write_jsonl;
use crate::{QuickstartSpec, Result};
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_student_trainer::eval::EvalReport;
use distill_tasks::labels::Gold;
use distill_tasks::logreg::CvOptions;
use distill_tasks::task::{self, Entry};
use std::path::PathBuf;

/// One draw of one task: its gold labels, files and fitted head.
pub struct Draw {
    pub task: &'static str,
    pub d: usize,
    pub name: String,
    pub pool: Vec<Gold>,
    pub picked: Vec<Gold>,
    pub gold_path: PathBuf,
    pub test_path: PathBuf,
    pub cvo: CvOptions,
    pub record: TaskRecord,
}

impl Draw {
    pub fn second(&self) -> bool {
        self.task != "sentiment"
    }

    pub fn seed(&self, spec: &QuickstartSpec) -> u64 {
        spec.seed + self.d as u64
    }

    pub fn row(&self, model: &str, distilled: bool, unseen: bool, report: EvalReport) -> Row {
        Row {
            task: self.task.to_string(),
            draw: self.d,
            model: model.into(),
            distilled,
            unseen,
            report,
        }
    }
}

/// How a draw's heads are cross-validated: C and temperature chosen over 5 repeated 5-fold splits.
pub fn draw_cv(seed: u64) -> CvOptions {
    CvOptions {
        c: None,
        folds: 5,
        repeats: distill_tasks::logreg::CV_REPEATS,
        seed,
    }
}

/// Writes a draw's gold labels to `path` and fits the task's head on their cached embeddings (at
/// least 2 per class), printing what cross-validation chose when it chose.
pub async fn fit_head(
    loc: &Location,
    entry: &Entry,
    name: &str,
    gold: &[Gold],
    path: &std::path::Path,
    cvo: CvOptions,
) -> Result<TaskRecord> {
    write_jsonl(path, gold)?;
    let at = path.display().to_string();
    let record = task::fit_head(loc, name, entry, gold, &at, cvo, 2).await?;
    if let (Some(cv), None) = (&record.cross_validation, cvo.c) {
        eprintln!(
            "    C = {}, temperature {:.2} by {}-fold CV over {} splits: {:.1}% cross-validated accuracy, macro-F1 {:.3}",
            cv["c"],
            cv["temperature"].as_f64().unwrap_or(1.0),
            cv["folds"],
            cv["repeats"],
            100.0 * cv["accuracy"].as_f64().unwrap_or(0.0),
            cv["macro_f1"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(record)
}
