//! The report's words: the setup note, the labeling loop's line and report.md.

use crate::protocol::{Check, LoopGap, Summary, UNSEEN_ROW};
use crate::QuickstartSpec;
use distill_label::progress::count;

/// Bytes in B, KB, MB, GB or TB (powers of 1000), one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What the distilled students were allowed to see.
pub fn setup_note(args: &QuickstartSpec) -> String {
    if args.exclude_test_texts {
        "Distillation excluded the test movies' texts entirely: every student is evaluated on text it never saw.".into()
    } else {
        format!(
            "Students distill from the teacher's soft labels over the whole unlabeled corpus, as in the reference setup \
             (test texts included as unlabeled text; test labels are never used). The row `{UNSEEN_ROW}` is an n-gram \
             student distilled without the test texts: how students do on text they never saw \
             (`--exclude-test-texts` runs every student that way)."
        )
    }
}

/// The labeling loop's gap, a line under the sentiment table.
pub fn loop_line(args: &QuickstartSpec, g: &LoopGap) -> String {
    format!(
        "Labeling loop ({} + {} labels, the two `+` rows): mean of {} draws; suggested − random = {:+.2} points (standard error {:.2}), suggested ahead in {} of {} draws.",
        args.gold_count, args.suggest, g.draws, 100.0 * g.mean, 100.0 * g.standard_error, g.suggested_ahead, g.draws
    )
}

pub fn markdown(
    args: &QuickstartSpec,
    summary: &[Summary],
    gap: Option<&LoopGap>,
    checks: &[Check],
    job: &distill_label::JobSummary,
    wall: f64,
) -> String {
    let mut s = String::from("# distill quickstart report\n\n");
    s += &format!(
        "Corpus `{}` ({} rows) labeled once by `{}`: {:.1} teacher-seconds spent in this run, {:.1} saved by cache hits. \
         Gold labels split by `{}` (no {} on both sides); {} gold labels per draw, {} draw(s). Wall time {:.0} s.\n\n{}\n\n",
        args.corpus, job.ledger.rows, args.teacher, job.ledger.teacher_seconds, job.ledger.teacher_seconds_saved, args.group_field, args.group_field, args.gold_count, args.draws, wall,
        setup_note(args)
    );
    for task in ["sentiment", "review-vs-plot"] {
        s += &format!(
            "## {}\n\n",
            if task == "sentiment" {
                "Task 1: fresh vs rotten"
            } else {
                "Task 2: critic review vs plot summary (0 teacher-seconds)"
            }
        );
        s += "| model | accuracy (min–max) | macro-F1 | agreement | ECE | p50 ms | p99 ms | texts/s | parameters | size |\n|---|---|---|---|---|---|---|---|---|---|\n";
        for r in summary.iter().filter(|r| r.task == task) {
            let m = &r.mean;
            s += &format!(
                "| {} | {:.1}% ({:.1}–{:.1}) | {:.3} | {:.1}% | {:.3} | {:.2} | {:.2} | {:.0} | {} | {} |\n",
                r.model, 100.0 * m.accuracy, 100.0 * r.accuracy_min, 100.0 * r.accuracy_max, m.macro_f1, 100.0 * m.agreement, m.ece,
                m.latency_p50_ms, m.latency_p99_ms, m.throughput, count(m.parameters), bytes(m.bytes)
            );
        }
        if let (true, Some(g)) = (task == "sentiment", gap) {
            s += &format!("\n{}\n", loop_line(args, g));
        }
        s += "\n";
    }
    s += "## Targets\n\n";
    for c in checks {
        s += &format!("- {} {}\n", if c.met { "✅" } else { "❌" }, c.what);
    }
    s += "\n![accuracy against latency](accuracy-latency.svg)\n";
    s
}

/// Writes `report.json`, `accuracy-latency.svg` and `report.md` into `spec.out`.
pub fn write(spec: &QuickstartSpec, o: &crate::Outcome) -> crate::Result<()> {
    let job = &o.label_job;
    let report = serde_json::json!({
        "corpus": spec.corpus,
        "teacher": spec.teacher,
        "teacher_fingerprint": job.teacher_fingerprint,
        "draws": spec.draws,
        "loop_draws": spec.loop_draws,
        "labeling_loop": o.labeling_loop,
        "gold_per_draw": spec.gold_count,
        "split": {"by": spec.group_field, "train_rows": o.train_rows, "test_rows": o.test_rows},
        "students_saw_test_texts": !spec.exclude_test_texts,
        "setup": setup_note(spec),
        "label_job": job,
        "llm_label_job": o.llm_label_job,
        "task_teacher_seconds": o.task_teacher_seconds,
        "rows": o.rows,
        "summary": o.summary,
        "targets": o.targets,
        "wall_seconds": o.wall_seconds,
    });
    let out = &spec.out;
    crate::error::write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    crate::error::write(
        &out.join("accuracy-latency.svg"),
        crate::plot::plot(&o.summary),
    )?;
    let md = markdown(
        spec,
        &o.summary,
        o.labeling_loop.as_ref(),
        &o.targets,
        job,
        o.wall_seconds,
    );
    crate::error::write(&out.join("report.md"), md)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(distill_label::progress::count(1234567), "1,234,567");
        assert_eq!(distill_label::progress::count(12), "12");
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(21_300_000), "21.3 MB");
    }
}
