//! Steps 3 and 4: each draw of gold labels — a task fitted from the cache, its teacher rows, its
//! students, the tuned teachers and the LLM — and the labeling loop's further draws.

use crate::draw::{draw_cv, fit_head, Draw};
use crate::labeling_loop;
use crate::protocol::{
    draw, llm_encoder_row, relabel, review_or_plot, sentiment, tuned_ngram_row, tuned_row, Mapping,
    Row, FIXED_C_ROW, LLM_NGRAM_ROW, LLM_NGRAM_UNSEEN_ROW, LLM_TEACHER_ROW, UNSEEN_ROW,
};
use crate::rows::{self, Scoring, TeacherRow};
use crate::split::{write_jsonl, Split};
use crate::teacher_pass::{self, Llm};
use crate::{QuickstartSpec, Result};
use distill_cache::model_dir::ModelDir;
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_label::JobSummary;
use distill_student_trainer::eval::{self, TeacherSource};
use distill_student_trainer::finetune::Objective;
use distill_student_trainer::model::Predictor;
use distill_student_trainer::recipe::{TaskStudent, TrainSpec};
use distill_student_trainer::transformer::TransformerStudent;
use distill_student_trainer::tuned::{self, TuneSpec};
use distill_tasks::data::Example;
use distill_tasks::logreg::CvOptions;
use distill_tasks::task::{self, Entry};
use distill_teacher::DeviceSpec;
use std::path::PathBuf;

/// The run after the teacher pass and the split: what every draw reads, and the rows so far.
pub struct Run<'a> {
    spec: &'a QuickstartSpec,
    loc: Location,
    entry: Entry,
    split: &'a Split,
    split_dir: PathBuf,
    teacher_dir: ModelDir,
    teacher_row: TeacherRow,
    llm: Option<Llm>,
    rows: Vec<Row>,
    task_seconds: Vec<(String, f64)>,
    mimicked: Option<(TransformerStudent, String)>,
}

impl<'a> Run<'a> {
    /// Loads the teacher for its rows and, with an LLM teacher, runs its pass.
    pub async fn new(
        spec: &'a QuickstartSpec,
        loc: Location,
        entry: Entry,
        split: &'a Split,
    ) -> Result<Self> {
        let teacher_dir = ModelDir::resolve(&spec.teacher).await?;
        let teacher_row =
            TeacherRow::load(&teacher_dir, source(&spec.teacher), spec.latency_samples).await?;
        let llm = match spec.llm_teacher.is_empty() {
            true => None,
            false => Some(teacher_pass::llm(spec, &loc, split).await?),
        };
        Ok(Self {
            spec,
            loc,
            entry,
            split,
            split_dir: spec.out.join("split"),
            teacher_dir,
            teacher_row,
            llm,
            rows: Vec::new(),
            task_seconds: Vec::new(),
            mimicked: None,
        })
    }

    /// The rows, each task's teacher-seconds and the LLM's pass.
    pub fn finish(self) -> (Vec<Row>, Vec<(String, f64)>, Option<JobSummary>) {
        (self.rows, self.task_seconds, self.llm.map(|l| l.job))
    }

    /// Steps 3 (the sentiment draws) and 4 (the second task): each a head, its teacher rows and its
    /// students.
    pub async fn student_draws(&mut self) -> Result<()> {
        let spec = self.spec;
        let mut tasks: Vec<(&'static str, Mapping, usize)> = (0..spec.draws)
            .map(|d| ("sentiment", sentiment as Mapping, d))
            .collect();
        tasks.push(("review-vs-plot", review_or_plot, 0));
        for (task, mapping, d) in tasks {
            let draw = self.fit_draw(task, mapping, d).await?;
            self.teacher_rows(&draw).await?;
            self.student_rows(&draw).await?;
            if !draw.second() && spec.suggest > 0 && d < spec.loop_draws {
                let rows = self.labeling_loop().run(&draw).await?;
                self.rows.extend(rows);
            }
            if !draw.second() {
                for &objective in &spec.finetune_objectives {
                    self.tuned_rows(&draw, objective).await?;
                }
                self.llm_rows(&draw).await?;
            }
        }
        Ok(())
    }

    /// Draws gold labels for a task, writes them and the test set, fits the head.
    async fn fit_draw(&mut self, task: &'static str, mapping: Mapping, d: usize) -> Result<Draw> {
        let spec = self.spec;
        let second = task != "sentiment";
        let pool = relabel(&self.split.train, mapping);
        let test = relabel(&self.split.test, mapping);
        // Sentiment: a random draw, as in the reference setup. Review vs plot: plot summaries are 8%
        // of the corpus, so a random 100 holds a handful; the practitioner labels each class equally.
        let seed = spec.seed + if second { 1000 } else { 0 };
        let picked = draw(&pool, spec.gold_count, seed, d, second);
        let name = if second {
            "quickstart-review-vs-plot".to_owned()
        } else {
            format!("quickstart-sentiment-d{d}")
        };
        let gold_path = self.split_dir.join(format!("{name}.gold.jsonl"));
        let test_path = self.split_dir.join(format!("{task}.test.jsonl"));
        write_jsonl(&test_path, &test)?;
        eprintln!(
            "{} task {name}: head fitted on {} gold labels{} from the cache",
            if second { "4/5" } else { "3/5" },
            picked.len(),
            if second {
                " (an equal number per class)"
            } else {
                ""
            }
        );
        let cvo = draw_cv(spec.seed + d as u64);
        let record = fit_head(&self.loc, &self.entry, &name, &picked, &gold_path, cvo).await?;
        self.task_seconds
            .push((name.clone(), record.teacher_seconds));
        Ok(Draw {
            task,
            d,
            name,
            pool,
            picked,
            gold_path,
            test_path,
            cvo,
            record,
        })
    }

    /// The teacher with the head of earlier releases (C fixed at 1, no temperature) and with the
    /// cross-validated head the students distill from, run live for their latency.
    async fn teacher_rows(&mut self, draw: &Draw) -> Result<()> {
        let cvo = CvOptions {
            c: Some(1.0),
            ..draw.cvo
        };
        let at = draw.gold_path.display().to_string();
        let fixed = task::fit_head(
            &self.loc,
            &format!("{}-c1", draw.name),
            &self.entry,
            &draw.picked,
            &at,
            cvo,
            2,
        )
        .await?;
        for (row, record) in [(FIXED_C_ROW, &fixed), ("teacher + head", &draw.record)] {
            let report = self
                .teacher_row
                .evaluate(&self.loc, record, &draw.test_path, row, Scoring::Live)
                .await?;
            self.rows.push(draw.row(row, false, true, report));
        }
        Ok(())
    }

    /// The draw's students: n-gram on gold alone, n-gram and transformer distilled, and the n-gram
    /// that never sees the test texts.
    async fn student_rows(&mut self, draw: &Draw) -> Result<()> {
        let spec = self.spec;
        let examples = rows::test_examples(
            &self.loc,
            &draw.record,
            &draw.test_path,
            &source(&spec.teacher),
        )
        .await?;
        // (row, student, gold only, test texts unseen)
        let mut students: Vec<(&str, TaskStudent, bool, bool)> = vec![
            ("n-gram, gold only", TaskStudent::Ngram, true, true),
            (
                "n-gram, distilled",
                TaskStudent::Ngram,
                false,
                spec.exclude_test_texts,
            ),
        ];
        if !spec.exclude_test_texts {
            students.push((UNSEEN_ROW, TaskStudent::Ngram, false, true));
        }
        if spec.transformer_epochs > 0 && (!draw.second() || spec.second_task_transformer) {
            let t = TaskStudent::Transformer;
            students.push(("transformer, distilled", t, false, spec.exclude_test_texts));
        }
        for (label, kind, gold_only, unseen) in students {
            let report = self
                .student(draw, label, kind, gold_only, unseen, examples.clone())
                .await?;
            self.rows.push(draw.row(label, !gold_only, unseen, report));
        }
        Ok(())
    }

    /// Trains and scores one student of a draw (a transformer after the run's one mimicry).
    async fn student(
        &mut self,
        draw: &Draw,
        label: &str,
        kind: TaskStudent,
        gold_only: bool,
        unseen: bool,
        examples: Vec<Example>,
    ) -> Result<eval::EvalReport> {
        let spec = self.spec;
        let dir = spec.out.join("models").join(format!(
            "{}-{}",
            draw.name,
            label.replace(", ", "-").replace(' ', "-")
        ));
        let mut train = rows::student_spec(spec, kind, &dir, draw.seed(spec));
        train.gold_only = gold_only;
        train.exclude = match unseen {
            true => self.split.test_ids.clone(),
            false => self.split.exclude.clone(),
        };
        let mimic = kind == TaskStudent::Transformer && spec.mimic_epochs > 0;
        if mimic && self.mimicked.is_none() {
            eprintln!(
                "    mimicking the teacher's embeddings ({} epoch(s), once for every task)",
                spec.mimic_epochs
            );
            let m = rows::mimic_once(
                &self.loc,
                &draw.record,
                &train,
                &self.teacher_dir,
                spec.progress,
            );
            self.mimicked = Some(m.await?);
        }
        eprintln!("    training {label}");
        let t0 = std::time::Instant::now();
        rows::train_student(
            spec,
            &self.loc,
            &draw.record,
            &train,
            self.mimicked.as_ref(),
        )
        .await?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let report = rows::evaluate_student(&dir, examples, spec.latency_samples, label).await?;
        eprintln!(
            "      {:.1}% accuracy, trained in {train_seconds:.0} s",
            100.0 * report.accuracy
        );
        Ok(report)
    }

    /// The teacher fine-tuned on the draw's gold labels, its head, and an n-gram student from it.
    async fn tuned_rows(&mut self, draw: &Draw, objective: Objective) -> Result<()> {
        let spec = self.spec;
        let tuned_name = match objective {
            Objective::Contrastive => format!("{}-tuned", draw.name),
            other => format!("{}-tuned-{other}", draw.name),
        };
        let (row_name, ngram_row_name) = (tuned_row(objective), tuned_ngram_row(objective));
        let tuned_out = spec
            .out
            .join("models")
            .join(format!("{tuned_name}-teacher"));
        eprintln!(
            "    fine-tuning the teacher on the {} gold labels ({objective} objective), then its pass over the corpus",
            draw.picked.len(),
        );
        let tune = TuneSpec {
            cache: spec.store.clone(),
            out: tuned_out.display().to_string(),
            teacher: Some(spec.teacher.clone()),
            opts: tuned::options(
                objective,
                objective.is_contrastive().then_some(spec.finetune_pairs),
                (spec.finetune_epochs, None, None),
                draw.seed(spec),
            )?,
            device: DeviceSpec::Cpu,
            show: spec.progress,
            text_field: "text".into(),
            id_field: "id".into(),
        };
        let at = draw.gold_path.display().to_string();
        let record = tuned::fit(
            &self.loc,
            &tuned_name,
            &self.entry,
            &draw.picked,
            &at,
            &tune,
            draw.cvo,
        )
        .await?;
        self.task_seconds.push((tuned_name, record.teacher_seconds));
        let md = ModelDir::inspect(&tune.out, &tuned_out)?;
        let teacher = TeacherRow {
            teacher: rows::load_teacher(&md).await?,
            source: source(&tune.out),
            ..self.teacher_row.clone()
        };
        let report = teacher
            .evaluate(
                &self.loc,
                &record,
                &draw.test_path,
                &row_name,
                Scoring::Live,
            )
            .await?;
        self.rows.push(draw.row(&row_name, false, true, report));
        let examples =
            rows::test_examples(&self.loc, &record, &draw.test_path, &source(&spec.teacher))
                .await?;
        let exclude = &self.split.exclude;
        let report = rows::distilled_ngram(
            spec,
            &self.loc,
            &record,
            exclude,
            draw.seed(spec),
            examples,
            &ngram_row_name,
        )
        .await?;
        let unseen = spec.exclude_test_texts;
        self.rows
            .push(draw.row(&ngram_row_name, true, unseen, report));
        Ok(())
    }

    /// The LLM teacher calibrated on the draw's gold labels, and a student distilled from it.
    async fn llm_rows(&mut self, draw: &Draw) -> Result<()> {
        let (spec, Some(llm)) = (self.spec, &self.llm) else {
            return Ok(());
        };
        let llm_name = format!("quickstart-sentiment-llm-d{}", draw.d);
        let at = draw.gold_path.display().to_string();
        let record = task::fit_calibrated(
            &self.loc,
            &llm_name,
            &llm.entry,
            &draw.picked,
            &at,
            5,
            draw.seed(spec),
        )
        .await?;
        if let Some(cv) = &record.cross_validation {
            eprintln!("    LLM calibration chosen by 5-fold CV on the gold labels: {cv}");
        }
        let examples =
            rows::test_examples(&self.loc, &record, &draw.test_path, &source(&spec.teacher))
                .await?;
        let head = record.head.clone().expect("a calibrated task has a head");
        let model = Predictor::Prompted(
            llm.teacher.clone(),
            Box::new(teacher_pass::sentiment_prompt()),
            head,
            record.labels.clone(),
        );
        let params = llm.teacher.shape().parameters;
        let (ex, samples, bytes) = (examples.clone(), spec.latency_samples.min(100), llm.bytes);
        let report = tokio::task::spawn_blocking(move || {
            eval::evaluate_cached(LLM_TEACHER_ROW, &model, &ex, samples, params, bytes)
        })
        .await??;
        eprintln!(
            "      LLM + calibration: {:.1}% accuracy",
            100.0 * report.accuracy
        );
        self.rows
            .push(draw.row(LLM_TEACHER_ROW, false, true, report));
        let exclude = &self.split.exclude;
        let seed = draw.seed(spec);
        let report = rows::distilled_ngram(
            spec,
            &self.loc,
            &record,
            exclude,
            seed,
            examples.clone(),
            LLM_NGRAM_ROW,
        )
        .await?;
        let unseen = spec.exclude_test_texts;
        self.rows
            .push(draw.row(LLM_NGRAM_ROW, true, unseen, report));
        self.llm_unseen_students(draw, &record, examples).await
    }

    /// The LLM's students that never see the test texts: its n-gram student again (unless every
    /// student is trained so), and pretrained encoders of `llm_encoder_layers` layers.
    async fn llm_unseen_students(
        &mut self,
        draw: &Draw,
        record: &TaskRecord,
        examples: Vec<Example>,
    ) -> Result<()> {
        let spec = self.spec;
        let (test_ids, seed) = (&self.split.test_ids, draw.seed(spec));
        if !spec.exclude_test_texts {
            let row = LLM_NGRAM_UNSEEN_ROW;
            let (loc, ex) = (&self.loc, examples.clone());
            let report = rows::distilled_ngram(spec, loc, record, test_ids, seed, ex, row).await?;
            self.rows.push(draw.row(row, true, true, report));
        }
        for &layers in &spec.llm_encoder_layers {
            let row = llm_encoder_row(layers);
            let dir = spec
                .out
                .join("models")
                .join(format!("{}-encoder-{layers}", record.name));
            let mut train = TrainSpec::new(TaskStudent::Transformer, &dir);
            train.seed = seed;
            train.exclude = test_ids.clone();
            train.transformer.init = Some(spec.encoder_init.clone());
            train.transformer.layers = layers;
            train.transformer.max_seq = spec.max_seq;
            train.transformer.mimic_epochs = 0;
            eprintln!("    training {row}");
            rows::train_student(spec, &self.loc, record, &train, None).await?;
            let samples = spec.latency_samples;
            let report = rows::evaluate_student(&dir, examples.clone(), samples, &row).await?;
            eprintln!("      {:.1}% accuracy", 100.0 * report.accuracy);
            self.rows.push(draw.row(&row, true, true, report));
        }
        Ok(())
    }

    /// Step 5, the labeling loop's further draws: a fresh draw of gold labels each, its head and
    /// the n-gram student the suggestions read, then the loop; nothing else. The loop's gap is a
    /// few tenths of a point where the draws spread over several points: it needs more draws than
    /// the students.
    pub async fn loop_draws(&mut self) -> Result<()> {
        let spec = self.spec;
        if spec.suggest == 0 || spec.loop_draws <= spec.draws {
            return Ok(());
        }
        let pool = relabel(&self.split.train, sentiment);
        let test_path = self.split_dir.join("sentiment.test.jsonl");
        for d in spec.draws..spec.loop_draws {
            let picked = draw(&pool, spec.gold_count, spec.seed, d, false);
            let name = format!("quickstart-sentiment-d{d}");
            let gold_path = self.split_dir.join(format!("{name}.gold.jsonl"));
            eprintln!(
                "5/5 labeling loop, draw {}/{}: task {name} from {} gold labels and its n-gram student",
                d + 1,
                spec.loop_draws,
                picked.len()
            );
            let cvo = draw_cv(spec.seed + d as u64);
            let record = fit_head(&self.loc, &self.entry, &name, &picked, &gold_path, cvo).await?;
            self.task_seconds
                .push((name.clone(), record.teacher_seconds));
            // Distilled as the student draws distill it.
            let dir = spec
                .out
                .join("models")
                .join(format!("{name}-n-gram-distilled"));
            let mut train =
                rows::student_spec(spec, TaskStudent::Ngram, &dir, spec.seed + d as u64);
            train.exclude = self.split.exclude.clone();
            rows::train_student(spec, &self.loc, &record, &train, None).await?;
            let draw = Draw {
                task: "sentiment",
                d,
                name,
                pool: pool.clone(),
                picked,
                gold_path,
                test_path: test_path.clone(),
                cvo,
                record,
            };
            let rows = self.labeling_loop().run(&draw).await?;
            self.rows.extend(rows);
        }
        Ok(())
    }

    /// What the labeling loop reads.
    fn labeling_loop(&self) -> labeling_loop::Loop<'_> {
        labeling_loop::Loop {
            spec: self.spec,
            loc: &self.loc,
            entry: &self.entry,
            split_dir: &self.split_dir,
            teacher_row: &self.teacher_row,
        }
    }
}

/// Where test rows' outputs come from: the cache (test rows are ids of the cached corpus: no
/// teacher is loaded for them), the named teacher for texts it does not hold.
fn source(model: &str) -> TeacherSource {
    TeacherSource {
        model: Some(model.to_owned()),
        device: DeviceSpec::Cpu,
    }
}
