//! The labeling loop of a draw, with the gold labels held back: the same budget of more labels, at
//! random or suggested by `task suggest` (with the draw's distilled n-gram student), each added to
//! the draw's gold labels and a head fitted on them; the two heads scored on the test set from the
//! cache.

use crate::draw::{fit_head, Draw};
use crate::protocol::{Row, MORE_RANDOM_ROW, MORE_SUGGESTED_ROW};
use crate::rows::{Scoring, TeacherRow};
use crate::{QuickstartSpec, Result};
use distill_cache::store::Location;
use distill_student_trainer::model::Predictor;
use distill_tasks::labels::Gold;
use distill_tasks::rng::Rng;
use distill_tasks::task::Entry;
use distill_teacher::DeviceSpec;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What the loop reads: the run's spec, the cache entry its heads are fitted on, where the gold
/// files go, and the teacher that scores the heads.
pub struct Loop<'a> {
    pub spec: &'a QuickstartSpec,
    pub loc: &'a Location,
    pub entry: &'a Entry,
    pub split_dir: &'a Path,
    pub teacher_row: &'a TeacherRow,
}

impl Loop<'_> {
    /// The loop's two rows for `draw`: its gold labels plus as many random ones, and plus as many
    /// suggested ones.
    pub async fn run(&self, draw: &Draw) -> Result<Vec<Row>> {
        let spec = self.spec;
        let rest = unlabeled(draw, spec.seed);
        let random: Vec<Gold> = rest
            .iter()
            .take(spec.suggest)
            .map(|g| (*g).clone())
            .collect();
        let revealed = self.suggested(draw, &rest).await?;
        let mut rows = Vec::new();
        for (row, more, suffix) in [
            (MORE_RANDOM_ROW, random, "more-random"),
            (MORE_SUGGESTED_ROW, revealed, "more-suggested"),
        ] {
            let mut gold = draw.picked.clone();
            gold.extend(more);
            let task_name = format!("{}-{suffix}", draw.name);
            let path = self.split_dir.join(format!("{task_name}.gold.jsonl"));
            let r = fit_head(self.loc, self.entry, &task_name, &gold, &path, draw.cvo).await?;
            let report = self
                .teacher_row
                .evaluate(self.loc, &r, &draw.test_path, row, Scoring::FromCache)
                .await?;
            rows.push(Row {
                task: "sentiment".into(),
                draw: draw.d,
                model: row.into(),
                distilled: false,
                unseen: true,
                report,
            });
        }
        Ok(rows)
    }

    /// The labels `task suggest` asks for among `rest`, with the draw's distilled n-gram student.
    async fn suggested(&self, draw: &Draw, rest: &[&Gold]) -> Result<Vec<Gold>> {
        suggested(self.spec, self.loc, draw, rest).await
    }
}

/// The pool's rows not in the draw, in a seeded order of the draw (the random labels are its first).
fn unlabeled(draw: &Draw, seed: u64) -> Vec<&Gold> {
    let taken: HashSet<&str> = draw.picked.iter().map(|g| g.id.as_str()).collect();
    let mut rest: Vec<&Gold> = draw
        .pool
        .iter()
        .filter(|g| !taken.contains(g.id.as_str()))
        .collect();
    rest.sort_by(|a, b| a.id.cmp(&b.id));
    Rng::derive(seed, "more-random", draw.d as u64).shuffle(&mut rest);
    rest
}

async fn suggested(
    spec: &QuickstartSpec,
    loc: &Location,
    draw: &Draw,
    rest: &[&Gold],
) -> Result<Vec<Gold>> {
    let student_dir = spec
        .out
        .join("models")
        .join(format!("{}-n-gram-distilled", draw.name));
    let student =
        tokio::task::spawn_blocking(move || Predictor::load(&student_dir, &DeviceSpec::Cpu))
            .await??;
    let candidates: HashSet<String> = rest.iter().map(|g| g.id.clone()).collect();
    eprintln!(
        "    suggesting {} more labels (teacher uncertainty, disagreement with the n-gram student, spread)",
        spec.suggest
    );
    let suggested = distill_tasks::suggest::for_task(
        loc,
        &draw.record,
        spec.suggest,
        Some(Box::new(student)),
        Some(candidates),
    )
    .await?;
    let by_id: HashMap<&str, &Gold> = rest.iter().map(|g| (g.id.as_str(), *g)).collect();
    Ok(suggested
        .iter()
        .map(|s| (*by_id[s.id.as_str()]).clone())
        .collect())
}
