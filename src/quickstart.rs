//! `distill quickstart`: the flags of the main job mapped onto a
//! [`distill_quickstart::QuickstartSpec`], the job run by the library, its tables printed.

use clap::Args;
use distill_quickstart::protocol::Summary;
use distill_quickstart::report::{loop_line, setup_note};
use distill_quickstart::{Outcome, QuickstartSpec};
use distill_student_trainer::eval::EvalReport;
use distill_student_trainer::finetune::Objective;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// The unlabeled corpus (JSONL with id and text).
    #[arg(
        long,
        env = "DISTILL_CORPUS",
        default_value = "assets/corpora/rotten-tomatoes/corpus.jsonl"
    )]
    pub corpus: String,
    /// Gold labels with a label (fresh / rotten / plot) and a group (movie) per id.
    #[arg(
        long,
        env = "DISTILL_GOLD",
        default_value = "assets/corpora/rotten-tomatoes/gold.jsonl"
    )]
    pub gold: PathBuf,
    #[arg(
        long,
        env = "DISTILL_TEACHER",
        default_value = "assets/models/all-MiniLM-L6-v2"
    )]
    pub teacher: String,
    /// Cache store.
    #[arg(long, env = "DISTILL_STORE", default_value = ".work/cache")]
    pub store: String,
    /// Where models, splits and reports go.
    #[arg(long, env = "DISTILL_OUT", default_value = ".work/quickstart")]
    pub out: PathBuf,
    /// Draws of gold labels (the targets are means over 5).
    #[arg(long, env = "DISTILL_DRAWS", default_value_t = 1)]
    pub draws: usize,
    /// Gold labels per draw.
    #[arg(long = "gold-count", env = "DISTILL_GOLD_COUNT", default_value_t = 100)]
    pub gold_count: usize,
    /// Share of movies held out for testing.
    #[arg(long, env = "DISTILL_TEST_SHARE", default_value_t = 0.2)]
    pub test_share: f64,
    #[arg(long, env = "DISTILL_GROUP_FIELD", default_value = "movie")]
    pub group_field: String,
    #[arg(long, env = "DISTILL_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Epochs of transformer distillation per draw (0 skips the transformer student).
    #[arg(long, env = "DISTILL_TRANSFORMER_EPOCHS", default_value_t = 1)]
    pub transformer_epochs: usize,
    /// Epochs of task-agnostic embedding mimicry (once, shared by every draw and task).
    #[arg(long, env = "DISTILL_MIMIC_EPOCHS", default_value_t = 1)]
    pub mimic_epochs: usize,
    #[arg(long, env = "DISTILL_LAYERS", default_value_t = 2)]
    pub layers: usize,
    #[arg(long, env = "DISTILL_MAX_SEQ", default_value_t = 128)]
    pub max_seq: usize,
    /// Keep the test movies' texts out of distillation too (by default students learn from the
    /// teacher's soft labels over the whole unlabeled corpus, as in the reference setup; test labels
    /// are never used). Either way an extra n-gram row shows students on texts they never saw.
    #[arg(long, env = "DISTILL_EXCLUDE_TEST_TEXTS")]
    pub exclude_test_texts: bool,
    /// Also train a transformer student for the second task.
    #[arg(long)]
    pub second_task_transformer: bool,
    /// Texts timed one by one for latency.
    #[arg(long, env = "DISTILL_LATENCY_SAMPLES", default_value_t = 200)]
    pub latency_samples: usize,
    /// Token budget of teacher batches.
    #[arg(long, env = "DISTILL_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// A decoder LM prompted as a second sentiment teacher, calibrated on the same gold labels (empty:
    /// skip it).
    #[arg(
        long,
        env = "DISTILL_LLM_TEACHER",
        default_value = "assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub llm_teacher: String,
    /// More gold labels per draw, at random or suggested by `task suggest`, to compare the two
    /// (0: skip).
    #[arg(long, env = "DISTILL_SUGGEST", default_value_t = 50)]
    pub suggest: usize,
    /// Draws of the labeling loop (`--suggest`): the first `--draws` of them are the student draws;
    /// the rest fit a head on a fresh draw and distill the n-gram student the suggestions read, nothing
    /// else. The loop's gap is a few tenths of a point where draws spread over several points: it
    /// needs more draws than the students.
    #[arg(long, env = "DISTILL_LOOP_DRAWS", default_value_t = 20)]
    pub loop_draws: usize,
    /// Fine-tune the teacher on each draw's gold labels (`task fit --finetune`) with these objectives
    /// (comma-separated: contrastive, classifier), one tuned teacher each; `none`: skip the
    /// tuned-teacher rows.
    #[arg(
        long,
        env = "DISTILL_FINETUNE_OBJECTIVES",
        value_delimiter = ',',
        default_value = "classifier",
        value_parser = objective_or_none
    )]
    pub finetune_objectives: Vec<Option<Objective>>,
    /// Contrastive fine-tuning: pair iterations per gold label.
    #[arg(long, env = "DISTILL_FINETUNE_PAIRS", default_value_t = 5)]
    pub finetune_pairs: usize,
    /// Fine-tuning epochs (default: each objective's own).
    #[arg(long, env = "DISTILL_FINETUNE_EPOCHS")]
    pub finetune_epochs: Option<usize>,
    /// Rows of the training movies the LLM labels for distillation, besides the test rows and the
    /// gold labels of every draw (the LLM labels a subset: a 135M decoder costs ~10× MiniLM per row).
    #[arg(long, env = "DISTILL_LLM_ROWS", default_value_t = 3000)]
    pub llm_rows: usize,
    /// Encoder students of the LLM's task: a pretrained encoder (--encoder-init) with this many of its
    /// layers each (comma-separated, evenly spaced layers), distilled without the test texts; `none`:
    /// skip them.
    #[arg(
        long,
        env = "DISTILL_LLM_ENCODER_LAYERS",
        value_delimiter = ',',
        default_value = "6,3",
        value_parser = layers_or_none
    )]
    pub llm_encoder_layers: Vec<Option<usize>>,
    /// The pretrained BERT-family encoder the LLM's encoder students start from.
    #[arg(
        long,
        env = "DISTILL_ENCODER_INIT",
        default_value = "assets/models/all-MiniLM-L6-v2"
    )]
    pub encoder_init: String,
}

/// `--finetune-objectives`: an objective, or `none` (or nothing) for none.
fn objective_or_none(s: &str) -> Result<Option<Objective>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        other => other.parse().map(Some),
    }
}

impl QuickstartArgs {
    /// The library's spec of these flags.
    pub fn spec(&self) -> QuickstartSpec {
        QuickstartSpec {
            corpus: self.corpus.clone(),
            gold: self.gold.clone(),
            teacher: self.teacher.clone(),
            store: self.store.clone(),
            out: self.out.clone(),
            draws: self.draws,
            gold_count: self.gold_count,
            test_share: self.test_share,
            group_field: self.group_field.clone(),
            seed: self.seed,
            transformer_epochs: self.transformer_epochs,
            mimic_epochs: self.mimic_epochs,
            layers: self.layers,
            max_seq: self.max_seq,
            exclude_test_texts: self.exclude_test_texts,
            second_task_transformer: self.second_task_transformer,
            latency_samples: self.latency_samples,
            max_batch_tokens: self.max_batch_tokens,
            llm_teacher: self.llm_teacher.clone(),
            suggest: self.suggest,
            loop_draws: self.loop_draws,
            finetune_objectives: self.finetune_objectives.iter().flatten().copied().collect(),
            finetune_pairs: self.finetune_pairs,
            finetune_epochs: self.finetune_epochs,
            llm_rows: self.llm_rows,
            llm_encoder_layers: self.llm_encoder_layers.iter().flatten().copied().collect(),
            encoder_init: self.encoder_init.clone(),
            progress: true,
        }
    }
}

/// `--llm-encoder-layers`: a number of layers (at least 1), or `none` (or nothing) for none.
fn layers_or_none(s: &str) -> Result<Option<usize>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        n => match n.parse::<usize>() {
            Ok(k) if k > 0 => Ok(Some(k)),
            _ => Err(format!("{n:?}: a number of layers (at least 1), or none")),
        },
    }
}

pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    let outcome = distill_quickstart::run(&spec).await?;
    print(&spec, &outcome);
    println!(
        "\nwrote {}/report.json, report.md and accuracy-latency.svg",
        spec.out.display()
    );
    Ok(())
}

/// The tables of both tasks, the setup, the teachers' costs and the targets.
fn print(spec: &QuickstartSpec, o: &Outcome) {
    println!();
    for task in ["sentiment", "review-vs-plot"] {
        print_task(spec, o, task);
    }
    println!("{}\n", setup_note(spec));
    println!("Teacher: {:.1} s spent labeling this run, {:.1} s saved by cache hits; tasks fitted with {} teacher-seconds.",
        o.label_job.ledger.teacher_seconds, o.label_job.ledger.teacher_seconds_saved,
        o.task_teacher_seconds.iter().map(|t| t.1).sum::<f64>());
    if let Some(llm_job) = &o.llm_label_job {
        println!(
            "LLM teacher: {} rows labeled from the prompt, {:.1} s spent this run, {:.1} s saved by cache hits.",
            llm_job.ledger.rows, llm_job.ledger.teacher_seconds, llm_job.ledger.teacher_seconds_saved
        );
    }
    for c in &o.targets {
        println!("{} {}", if c.met { "MET " } else { "MISS" }, c.what);
    }
}

fn print_task(spec: &QuickstartSpec, o: &Outcome, task: &str) {
    let of_task = |s: &&Summary| s.task == task;
    let t: Vec<EvalReport> = o
        .summary
        .iter()
        .filter(of_task)
        .map(|s| s.mean.clone())
        .collect();
    let draws = o.summary.iter().find(of_task).map(|s| s.draws).unwrap_or(0);
    println!(
        "{} (test set split by {}; {} gold labels{}):",
        if task == "sentiment" {
            "Task 1: fresh vs rotten"
        } else {
            "Task 2: critic review vs plot summary (same cache, 0 teacher-seconds)"
        },
        spec.group_field,
        spec.gold_count,
        if draws > 1 {
            format!(", mean of {draws} draws")
        } else {
            String::new()
        }
    );
    crate::eval_cmd::print_table(&t);
    if let (true, Some(g)) = (task == "sentiment", &o.labeling_loop) {
        println!("{}", loop_line(spec, g));
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--finetune-objectives`: a list, `none` (or nothing) skips the tuned teachers, a wrong name is
    /// refused by clap with the objectives it knows.
    #[test]
    fn finetune_objectives_parse_as_a_list_or_none() {
        use clap::Parser;
        let parse = |v: &[&str]| {
            let mut argv = vec!["distill", "quickstart"];
            argv.extend(v);
            match crate::cli::Cli::try_parse_from(argv) {
                Ok(crate::cli::Cli {
                    command: crate::cli::Command::Quickstart(a),
                    ..
                }) => Ok(a
                    .finetune_objectives
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&[]), Ok(vec![Objective::Classifier]));
        assert_eq!(
            parse(&["--finetune-objectives", "contrastive,classifier"]),
            Ok(vec![Objective::Contrastive, Objective::Classifier])
        );
        assert_eq!(parse(&["--finetune-objectives", "none"]), Ok(vec![]));
        assert_eq!(parse(&["--finetune-objectives", ""]), Ok(vec![]));
        let e = parse(&["--finetune-objectives", "setfit"]).unwrap_err();
        assert!(e.contains("contrastive or classifier"), "{e}");
    }

    /// The command's defaults are the library's: one home for what the README's run is.
    #[test]
    fn defaults_are_the_library_spec() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["distill", "quickstart"]).unwrap();
        let crate::cli::Command::Quickstart(a) = cli.command else {
            unreachable!()
        };
        assert_eq!(a.spec(), QuickstartSpec::default());
    }
}
