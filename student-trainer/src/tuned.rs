//! `task fit --finetune` as one library call: tune an entry's encoder teacher on the gold labels
//! ([`crate::finetune`]), label the entry's corpus once with the tuned teacher (the normal labeling
//! path of `distill-label`: its own fingerprint, cache hits on a rerun), and fit the cross-validated
//! head on its embeddings.

use crate::finetune::{self, FinetuneOptions, Objective};
use crate::progress::TrainBar;
use crate::{Result, StudentError};
use distill_cache::spec::{Dtype, OutputKind, OutputSpec};
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use distill_tasks::labels::Gold;
use distill_tasks::logreg::CvOptions;
use distill_tasks::task::{self, Entry, EntryQuery};
use distill_teacher::DeviceSpec;
use std::path::PathBuf;

/// How a teacher is tuned for a task, and where the tuned teacher goes.
#[derive(Clone, Debug)]
pub struct TuneSpec {
    /// The cache store's URL (the tuned teacher's pass labels into it).
    pub cache: String,
    /// A local directory or an object-store URL (built locally in the model cache, then uploaded).
    pub out: String,
    /// The teacher to tune (default: where the cache says the entry's teacher was loaded from).
    pub teacher: Option<String>,
    pub opts: FinetuneOptions,
    pub device: DeviceSpec,
    /// Progress bars and a line per stage on stderr.
    pub show: bool,
    /// How the entry's corpus was read (its text and id fields).
    pub text_field: String,
    pub id_field: String,
}

/// The fine-tuning options of an objective: its defaults, overridden where given; a setting the
/// objective does not read is refused, naming the flag.
pub fn options(
    objective: Objective,
    pairs: Option<usize>,
    (epochs, lr, head_lr): (Option<usize>, Option<f64>, Option<f64>),
    seed: u64,
) -> Result<FinetuneOptions> {
    let d = FinetuneOptions::for_objective(objective);
    let invalid = |m: &str| Err(StudentError::Invalid(m.to_owned()));
    if head_lr.is_some() && objective.is_contrastive() {
        return invalid("--finetune-head-lr: the contrastive objective has no head (--finetune-objective classifier)");
    }
    // Part of the run id: a flag the objective does not read must not make another run.
    if pairs.is_some() && !objective.is_contrastive() {
        return invalid("--finetune-pairs: the classifier objective makes no pairs (--finetune-objective contrastive)");
    }
    for (flag, v) in [("--finetune-lr", lr), ("--finetune-head-lr", head_lr)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            return invalid(&format!("{flag} {v}: must be a positive number"));
        }
    }
    Ok(FinetuneOptions {
        pairs: pairs.unwrap_or(d.pairs),
        epochs: epochs.unwrap_or(d.epochs),
        lr: lr.unwrap_or(d.lr),
        head_lr: head_lr.or(d.head_lr),
        seed,
        ..d
    })
}

/// Tunes the entry's teacher on `gold` (read from `path`), labels the entry's corpus with it and
/// fits the task `name`'s head on the tuned embeddings. The record's teacher-seconds are the tuning
/// and the tuned pass.
pub async fn fit(
    loc: &Location,
    name: &str,
    entry: &Entry,
    gold: &[Gold],
    path: &str,
    tune: &TuneSpec,
    cvo: CvOptions,
) -> Result<TaskRecord> {
    let Some(OutputKind::Embeddings) = entry.spec.kind() else {
        return Err(StudentError::Invalid(format!(
            "{} is cached as {}: --finetune tunes an embeddings teacher",
            entry.manifest.corpus,
            entry.spec.describe()
        )));
    };
    distill_cache::task::check_name(name)?;
    // The tuned teacher labels the entry's corpus again: it must read as it was labeled.
    let corpus = distill_cache::corpus::CorpusSpec {
        url: entry.manifest.corpus.clone(),
        format: None,
        text_field: tune.text_field.clone(),
        id_field: tune.id_field.clone(),
        max_row_bytes: 0,
    };
    task::check_corpus(entry, &corpus).await?;
    let (teacher, tuned_seconds) = tune_and_place(loc, entry, gold, path, tune).await?;
    let dtype = match entry.spec {
        OutputSpec::Embeddings { dtype } => dtype,
        _ => Dtype::F32,
    };
    let mut spec = distill_label::LabelSpec::new(
        &corpus.url,
        &teacher,
        &tune.cache,
        distill_cache::format::OutputRequest::simple(OutputKind::Embeddings, dtype),
    );
    spec.corpus = corpus;
    spec.teacher.device = tune.device.clone();
    spec.shard_size = entry.manifest.shard_size;
    let job = distill_label::label(&spec, tune.show).await?;
    let tuned_entry = task::find_entry(
        loc,
        &EntryQuery {
            corpus: Some(&entry.manifest.corpus),
            teacher: Some(job.teacher_fingerprint.as_str()),
            output: Some(job.output_fingerprint.as_str()),
            kind: Some(OutputKind::Embeddings),
        },
    )
    .await?;
    let mut record = task::fit_head(loc, name, &tuned_entry, gold, path, cvo, 2).await?;
    record.teacher_seconds = tuned_seconds + job.ledger.teacher_seconds;
    distill_cache::task::write_task(loc, &record).await?;
    if tune.show {
        eprintln!(
            "note: the cross-validated figures of a tuned teacher's head are optimistic (the encoder was tuned on the same gold labels); evaluate it on held-out labels"
        );
    }
    Ok(record)
}

/// Tunes the teacher into `tune.out` (uploaded when it is a URL); returns where the tuned teacher
/// is and the seconds tuning took.
async fn tune_and_place(
    loc: &Location,
    entry: &Entry,
    gold: &[Gold],
    path: &str,
    tune: &TuneSpec,
) -> Result<(String, f64)> {
    let remote = tune.out.contains("://") && !tune.out.starts_with("file://");
    let local = if remote {
        distill_cache::model_dir::local_dir_for(&tune.out)
    } else {
        PathBuf::from(tune.out.strip_prefix("file://").unwrap_or(&tune.out))
    };
    let bar = std::sync::Arc::new(std::sync::Mutex::new(TrainBar::new(tune.show, "fine-tune")));
    let b2 = bar.clone();
    let tuned = finetune::tune_teacher(
        finetune::TuneRequest {
            loc,
            entry,
            gold,
            labels_path: path,
            teacher: tune.teacher.clone(),
            out: &local,
            opts: tune.opts.clone(),
            device: tune.device.clone(),
        },
        move |r| b2.lock().expect("not poisoned").step(r),
    )
    .await?;
    drop(bar);
    if tune.show {
        if tuned.reused {
            eprintln!(
                "tuned teacher {} (the same run, reused)",
                tuned.dir.display()
            );
        } else {
            eprintln!(
                "tuned teacher {} ({} objective): {} steps in {:.0} s",
                tuned.dir.display(),
                tune.opts.objective,
                tuned.steps,
                tuned.seconds
            );
        }
    }
    if !remote {
        return Ok((tuned.dir.display().to_string(), tuned.seconds));
    }
    distill_cache::model_dir::upload_dir(&tuned.dir, &tune.out).await?;
    if tune.show {
        eprintln!("uploaded to {}", tune.out);
    }
    Ok((tune.out.clone(), tuned.seconds))
}
