//! Few-shot fine-tuning of an encoder teacher on a task's gold labels (`distill task fit
//! --finetune`), with one of two objectives ([`Objective`]), the whole encoder trained (every layer, the
//! frozen word embeddings aside) on sentence embeddings pooled and normalised as the teacher's head
//! does:
//!
//! - **contrastive** (SetFit's way): pairs of gold examples — for each example and iteration one
//!   partner of its class (target cosine 1) and one of another class (target 0) — and the mean squared
//!   error between the pair's cosine similarity and its target;
//! - **classifier** (full fine-tuning with a head): a linear head over the embeddings, trained with the
//!   encoder on the gold classes (cross-entropy), at its own learning rate; the head is dropped after.
//!
//! Either way the tuned encoder is written in the teacher's own layout: a new teacher with its own
//! fingerprint, which labels the corpus through the normal labeling path; a head is then fitted on its
//! embeddings as for any teacher. The command line's default, [`Objective::RECOMMENDED`], was chosen by
//! measurement (README, the quickstart's tuned-teacher rows).
//!
//! Seeded (pairs, their order, nothing else is random), checkpointed every `checkpoint_every` steps
//! and resumed from the checkpoint of the same run; a finished tuned teacher of the same run is
//! reused.

use crate::checkpoint::{self, Position};
use crate::model::StudentInfo;
use crate::ngram::StepReport;
use crate::optim::{lr_at, AdamW, VarAdamW};
use crate::transformer::{TransformerOptions, TransformerStudent};
use crate::{Result, StudentError};
use candle_core::{Device, Tensor, Var, D};
use distill_cache::fingerprint::Hasher;
use distill_cache::model_dir::{Head, ModelDir};
use distill_cache::store::Location;
use distill_tasks::labels::Gold;
use distill_tasks::rng::Rng;
use distill_tasks::task::Entry;
use distill_teacher::DeviceSpec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the encoder is trained to do. `Default` is the objective of the first release — what options
/// recorded without the field mean; [`Objective::RECOMMENDED`] is what the command line uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Cosine similarity of contrastive pairs (SetFit).
    #[default]
    Contrastive,
    /// Cross-entropy of a linear head over the embeddings, trained with the encoder.
    Classifier,
}

impl Objective {
    /// The objective chosen by measurement (the README's fine-tuning table): the classifier gained
    /// more over the linear probe on the quickstart's task, in less time.
    pub const RECOMMENDED: Objective = Objective::Classifier;

    pub fn is_contrastive(&self) -> bool {
        *self == Objective::Contrastive
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::Contrastive => "contrastive",
            Objective::Classifier => "classifier",
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Objective {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "contrastive" => Ok(Objective::Contrastive),
            "classifier" => Ok(Objective::Classifier),
            other => Err(format!(
                "unknown fine-tuning objective {other:?}: contrastive or classifier"
            )),
        }
    }
}

/// How the encoder is fine-tuned. The fields added after the first release (`objective`, `head_lr`)
/// are left out of the serialised form at their contrastive defaults, so a contrastive run keeps the
/// run id (and a finished tuned teacher stays reused) across releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneOptions {
    /// Contrastive: iterations per gold example; each gives one positive and one negative pair.
    pub pairs: usize,
    pub epochs: usize,
    /// Pairs (contrastive) or examples (classifier) per step.
    pub batch: usize,
    /// Peak learning rate of the encoder (linear warm-up, then linear decay).
    pub lr: f64,
    pub warmup: f64,
    pub max_seq: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
    #[serde(default, skip_serializing_if = "Objective::is_contrastive")]
    pub objective: Objective,
    /// Classifier: peak learning rate of the head (same schedule as the encoder's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self::for_objective(Objective::default())
    }
}

impl FinetuneOptions {
    /// The defaults of an objective. The classifier sees each gold example once per epoch (the
    /// contrastive run twice per pair iteration): 10 epochs cost about half of what 5 pair iterations
    /// do.
    pub fn for_objective(objective: Objective) -> Self {
        let contrastive = Self {
            pairs: 5,
            epochs: 1,
            batch: 16,
            lr: 2e-5,
            warmup: 0.1,
            max_seq: 128,
            seed: 0,
            checkpoint_every: 50,
            objective,
            head_lr: None,
        };
        match objective {
            Objective::Contrastive => contrastive,
            Objective::Classifier => Self {
                epochs: 10,
                lr: 3e-5,
                head_lr: Some(1e-2),
                ..contrastive
            },
        }
    }

    /// A one-line description for the tuned teacher's `distill.json`.
    pub fn method(&self) -> &'static str {
        match self.objective {
            Objective::Contrastive => "contrastive pairs (SetFit), cosine loss",
            Objective::Classifier => {
                "linear head on the embeddings, cross-entropy (full fine-tuning)"
            }
        }
    }
}

/// Contrastive pairs `(a, b, target)`: for each example and iteration, a random partner of its class
/// (target 1) and one of another class (target 0). Examples without such a partner get none.
pub fn pairs(y: &[usize], per_example: usize, seed: u64) -> Vec<(usize, usize, f32)> {
    let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &c) in y.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut rng = Rng::derive(seed, "finetune-pairs", 0);
    let mut out = Vec::with_capacity(y.len() * per_example * 2);
    for _ in 0..per_example {
        for (i, &c) in y.iter().enumerate() {
            let same = &by_class[&c];
            if same.len() > 1 {
                let mut j = same[rng.below(same.len())];
                while j == i {
                    j = same[rng.below(same.len())];
                }
                out.push((i, j, 1.0));
            }
            let others = y.len() - same.len();
            if others > 0 {
                let mut k = rng.below(y.len());
                while y[k] == c {
                    k = rng.below(y.len());
                }
                out.push((i, k, 0.0));
            }
        }
    }
    out
}

/// `mean((cos(u, v) − target)²)` over the rows of `u`, `v`.
fn cosine_loss(u: &Tensor, v: &Tensor, target: &Tensor) -> Result<Tensor> {
    let dot = (u * v)?.sum(D::Minus1)?;
    let nu = u.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nv = v.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = (dot / ((nu * nv)? + 1e-8)?)?;
    Ok((cos - target)?.sqr()?.mean_all()?)
}

/// Where a fine-tuning run runs and checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// Checkpoints of another run id are not resumed from.
    pub id: &'a str,
    pub checkpoint: Option<&'a Path>,
    pub device: &'a Device,
}

/// `cross_entropy(e · Wᵀ + b, y)` over the rows of `emb`.
fn classifier_loss(emb: &Tensor, head: &(Var, Var), y: &Tensor) -> Result<Tensor> {
    let logits = emb
        .matmul(&head.0.as_tensor().t()?)?
        .broadcast_add(head.1.as_tensor())?;
    Ok(candle_nn::loss::cross_entropy(&logits, y)?)
}

/// Token ids of `rows`, padded to the longest, and their mask.
fn padded(rows: &[&Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let n = rows.len();
    let mut flat = vec![0u32; n * t];
    let mut mask = vec![0f32; n * t];
    for (i, r) in rows.iter().enumerate() {
        flat[i * t..i * t + r.len()].copy_from_slice(r);
        mask[i * t..i * t + r.len()]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    Ok((
        Tensor::from_vec(flat, (n, t), device)?,
        Tensor::from_vec(mask, (n, t), device)?,
    ))
}

/// The classifier objective's head: zeros (its first step moves the head alone), with its own
/// optimiser (and rate).
fn classifier_head(
    classes: usize,
    hidden: usize,
    adamw: AdamW,
    device: &Device,
) -> Result<((Var, Var), VarAdamW)> {
    let w = Var::zeros((classes, hidden), candle_core::DType::F32, device)?;
    let b = Var::zeros(classes, candle_core::DType::F32, device)?;
    let opt = VarAdamW::new(
        adamw,
        [
            ("head.weight".to_owned(), w.clone(), true),
            ("head.bias".to_owned(), b.clone(), false),
        ],
    )?;
    Ok(((w, b), opt))
}

/// One batch's loss: cosine on pairs `(a, b, target)` without a head, cross-entropy on examples
/// `(row, class, _)` through the classifier head `vars`.
fn batch_loss(
    student: &TransformerStudent,
    vars: Option<&(Var, Var)>,
    chunk: &[(usize, usize, f32)],
    ids: &[Vec<u32>],
    (pooling, normalize): (distill_cache::model_dir::Pooling, bool),
    device: &Device,
) -> Result<Tensor> {
    let Some(vars) = vars else {
        // The pairs' first sentences, then their second ones.
        let rows: Vec<&Vec<u32>> = chunk
            .iter()
            .map(|p| &ids[p.0])
            .chain(chunk.iter().map(|p| &ids[p.1]))
            .collect();
        let (ids_t, mask_t) = padded(&rows, device)?;
        let emb = student.embed(&ids_t, &mask_t, pooling, normalize)?;
        let p = chunk.len();
        let target = Tensor::from_vec(chunk.iter().map(|c| c.2).collect(), p, device)?;
        return cosine_loss(&emb.narrow(0, 0, p)?, &emb.narrow(0, p, p)?, &target);
    };
    let rows: Vec<&Vec<u32>> = chunk.iter().map(|e| &ids[e.0]).collect();
    let (ids_t, mask_t) = padded(&rows, device)?;
    let emb = student.embed(&ids_t, &mask_t, pooling, normalize)?;
    let classes: Vec<u32> = chunk.iter().map(|e| e.1 as u32).collect();
    let y_t = Tensor::from_vec(classes, chunk.len(), device)?;
    classifier_loss(&emb, vars, &y_t)
}

/// Fine-tunes the encoder of `teacher` (a sentence encoder) on `texts` with classes `y`. With a
/// checkpoint folder, saves there every `checkpoint_every` steps and resumes from it when its run id
/// matches. Blocking.
pub fn finetune(
    teacher: &ModelDir,
    (texts, y): (&[String], &[usize]),
    opts: &FinetuneOptions,
    run: Run<'_>,
    mut on_step: impl FnMut(StepReport),
) -> Result<TransformerStudent> {
    let Run {
        id: run_id,
        checkpoint,
        device,
    } = run;
    let Head::Embedding {
        pooling, normalize, ..
    } = teacher.head
    else {
        return Err(StudentError::Invalid(format!(
            "teacher {} is not a sentence encoder: --finetune tunes an embeddings teacher",
            teacher.location
        )));
    };
    let layers = TransformerStudent::teacher_layers(teacher)?;
    // Never longer than the teacher reads.
    let max_seq = opts.max_seq.min(teacher.max_seq_length).max(2);
    let topts = TransformerOptions {
        layers,
        from_teacher: true,
        max_seq,
        seed: opts.seed,
        ..Default::default()
    };
    let student = TransformerStudent::new(teacher, vec!["-".into()], &topts, device)?;
    let tok = crate::transformer::tokenizer(teacher, max_seq)?;
    let enc = tok
        .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
        .map_err(|e| StudentError::Invalid(format!("tokenizer: {e}")))?;
    let ids: Vec<Vec<u32>> = enc.iter().map(|e| e.get_ids().to_vec()).collect();
    let classes = y.iter().copied().max().map_or(0, |m| m + 1);
    let distinct = y.iter().collect::<std::collections::HashSet<_>>().len();
    // Contrastive: the pairs; classifier: the examples. Either is shuffled per epoch and batched.
    let all = match opts.objective {
        Objective::Contrastive => pairs(y, opts.pairs, opts.seed),
        Objective::Classifier if distinct >= 2 => (0..y.len()).map(|i| (i, y[i], 0.0)).collect(),
        Objective::Classifier => vec![],
    };
    if all.is_empty() {
        return Err(StudentError::Invalid(
            "fine-tuning needs gold examples of at least two classes (the contrastive objective: two of one class and one of another)".into(),
        ));
    }
    let adamw = AdamW {
        weight_decay: 0.01,
        ..AdamW::default()
    };
    let mut optimizer = VarAdamW::new(adamw, student.trainable(true))?;
    let mut head = match opts.objective {
        Objective::Contrastive => None,
        Objective::Classifier => Some(classifier_head(
            classes,
            teacher.hidden_size,
            adamw,
            device,
        )?),
    };
    let head_lr = opts.head_lr.unwrap_or(1e-2);
    let per_epoch = all.len().div_ceil(opts.batch.max(1)) as u64;
    let total = per_epoch * opts.epochs as u64;
    let warmup = (total as f64 * opts.warmup) as u64;
    let (mut start_epoch, mut skip, mut step) = (0usize, 0u64, 0u64);
    if let Some(dir) = checkpoint {
        if let Some((pos, state)) = checkpoint::load(dir, run_id, device)? {
            optimizer.restore(&state)?;
            if let Some((_, opt)) = head.as_mut() {
                opt.restore(&state)?;
            }
            tracing::info!(
                epoch = pos.epoch,
                batch = pos.batch,
                "fine-tuning resumes from its checkpoint"
            );
            (start_epoch, skip, step) = (pos.epoch, pos.batch, pos.step);
        }
    }
    for epoch in start_epoch..opts.epochs {
        let mut order = all.clone();
        Rng::derive(opts.seed, "finetune-epoch", epoch as u64).shuffle(&mut order);
        for (b, chunk) in order.chunks(opts.batch.max(1)).enumerate() {
            let done = b as u64 + 1;
            if done <= skip {
                continue;
            }
            let vars = head.as_ref().map(|(vars, _)| vars);
            let loss = batch_loss(&student, vars, chunk, &ids, (pooling, normalize), device)?;
            let grads = loss.backward()?;
            step += 1;
            let rate = lr_at(opts.lr, step - 1, warmup, total);
            optimizer.step(&grads, 1.0, rate, step)?;
            if let Some((_, opt)) = head.as_mut() {
                opt.step(&grads, 1.0, lr_at(head_lr, step - 1, warmup, total), step)?;
            }
            on_step(StepReport {
                step,
                total,
                epoch,
                loss: loss.to_scalar::<f32>()?,
                lr: rate,
                held_out: None,
            });
            if let (Some(dir), true) = (
                checkpoint,
                opts.checkpoint_every > 0 && step.is_multiple_of(opts.checkpoint_every),
            ) {
                let pos = Position {
                    run: run_id.into(),
                    epoch,
                    batch: done,
                    step,
                };
                let mut state = optimizer.state()?;
                if let Some((_, opt)) = &head {
                    state.extend(opt.state()?);
                }
                checkpoint::save(dir, &state, &pos)?;
            }
        }
        skip = 0;
    }
    Ok(student)
}

/// A tuned teacher on disk.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub dir: PathBuf,
    /// Whether a finished tuned teacher of the same run was found and reused.
    pub reused: bool,
    /// Seconds spent fine-tuning in this call.
    pub seconds: f64,
    pub steps: u64,
}

/// What to fine-tune and where the tuned teacher goes.
pub struct TuneRequest<'a> {
    pub loc: &'a Location,
    /// The embeddings entry the task is fitted on (its teacher is the one tuned).
    pub entry: &'a Entry,
    pub gold: &'a [Gold],
    pub labels_path: &'a str,
    /// The teacher's model (`None`: where the cache says it was loaded from).
    pub teacher: Option<String>,
    pub out: &'a Path,
    pub opts: FinetuneOptions,
    pub device: DeviceSpec,
}

/// Fine-tunes the entry's teacher on the gold labels (their texts read from the cache) and writes the
/// tuned teacher to `out` (written aside and renamed; resumed from `out.checkpoint`; reused when `out`
/// holds the same run).
pub async fn tune_teacher(
    r: TuneRequest<'_>,
    on_step: impl FnMut(StepReport) + Send + 'static,
) -> Result<Tuned> {
    // The run is known from the request alone: a finished one is reused before anything is read.
    let labels = distill_tasks::task::check_classes(r.gold, 2, r.labels_path)?;
    let mut gold: Vec<(&str, &str)> = r
        .gold
        .iter()
        .map(|g| (g.id.as_str(), g.label.as_str()))
        .collect();
    gold.sort();
    let run = Hasher::new("distill.finetune.v1")
        .str(r.entry.manifest.teacher.as_str())
        .str(&serde_json::to_string(&r.opts).expect("serialisable"))
        .str(&serde_json::to_string(&gold).expect("serialisable"))
        .clone()
        .finish()
        .to_string();
    let info_path = r.out.join(crate::dir::INFO_FILE);
    if let Ok(bytes) = std::fs::read(&info_path) {
        if let Ok(info) = serde_json::from_slice::<StudentInfo>(&bytes) {
            if info.kind == "tuned-teacher" && info.training["run"] == run.as_str() {
                return Ok(Tuned {
                    dir: r.out.to_owned(),
                    reused: true,
                    seconds: 0.0,
                    steps: 0,
                });
            }
        }
    }
    let source = match &r.teacher {
        Some(t) => t.clone(),
        None => {
            distill_cache::catalog::read_teacher(r.loc, &r.entry.manifest.teacher)
                .await?
                .source
        }
    };
    let dir = ModelDir::resolve(&source).await?;
    let texts = distill_tasks::task::gold_texts(r.loc, r.entry, r.gold, r.labels_path).await?;
    let y: Vec<usize> = r
        .gold
        .iter()
        .map(|g| labels.iter().position(|l| l == &g.label).expect("a class"))
        .collect();
    // A folder without distill.json that holds a model is a download of the URL the tuned teacher
    // goes to (made by resolving it here earlier): it is replaced, not refused.
    if r.out.join("config.json").is_file() && !info_path.is_file() {
        std::fs::remove_dir_all(r.out).map_err(StudentError::io(r.out))?;
    }
    let device = r.device.open()?;
    let (out, opts) = (r.out.to_owned(), r.opts.clone());
    let info = StudentInfo {
        kind: "tuned-teacher".into(),
        task: String::new(),
        labels: labels.clone(),
        teacher: r.entry.manifest.teacher.to_string(),
        task_output: String::new(),
        producer: distill_cache::PRODUCER.into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        training: serde_json::json!({
            "run": run,
            "method": opts.method(),
            "base_teacher": source,
            "gold": gold.len(),
            "options": opts,
        }),
    };
    tokio::task::spawn_blocking(move || -> Result<Tuned> {
        let start = std::time::Instant::now();
        let ckpt = PathBuf::from(format!(
            "{}.checkpoint",
            out.display().to_string().trim_end_matches('/')
        ));
        let mut steps = 0;
        let mut on_step = on_step;
        let student = finetune(
            &dir,
            (&texts, &y),
            &opts,
            Run {
                id: &run,
                checkpoint: Some(&ckpt),
                device: &device,
            },
            |s| {
                steps = s.step;
                on_step(s)
            },
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let mut info = info;
        info.training["seconds"] = seconds.into();
        info.training["steps"] = steps.into();
        crate::dir::write_dir(&out, |tmp| student.save_encoder(tmp, &info))?;
        // Removed only once the tuned teacher is in place: a failure before resumes from it.
        let _ = std::fs::remove_dir_all(&ckpt);
        Ok(Tuned {
            dir: out,
            reused: false,
            seconds,
            steps,
        })
    })
    .await
    .map_err(|e| StudentError::Invalid(format!("fine-tuning panicked: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_positive_within_a_class_and_negative_across() {
        let y = vec![0, 0, 1, 1, 1, 2];
        let p = pairs(&y, 3, 7);
        assert!(p
            .iter()
            .all(|&(a, b, t)| a != b && (t == 1.0) == (y[a] == y[b])));
        // Class 2 has one example: no positive partner for it, negatives for all.
        let positives = p.iter().filter(|x| x.2 == 1.0).count();
        let negatives = p.len() - positives;
        assert_eq!((positives, negatives), (5 * 3, 6 * 3));
        assert_eq!(p, pairs(&y, 3, 7));
        assert_ne!(p, pairs(&y, 3, 8));
    }

    /// The run id of a contrastive run hashes these options as the first release wrote them: the
    /// fields added since stay out at their contrastive defaults, and a finished tuned teacher of an
    /// earlier release is still recognised.
    #[test]
    fn contrastive_options_serialise_as_the_first_release_did() {
        assert_eq!(
            serde_json::to_string(&FinetuneOptions::default()).unwrap(),
            r#"{"pairs":5,"epochs":1,"batch":16,"lr":0.00002,"warmup":0.1,"max_seq":128,"seed":0,"checkpoint_every":50}"#
        );
        let old: FinetuneOptions = serde_json::from_str(
            r#"{"pairs":5,"epochs":1,"batch":16,"lr":0.00002,"warmup":0.1,"max_seq":128,"seed":0,"checkpoint_every":50}"#,
        )
        .unwrap();
        assert_eq!(old, FinetuneOptions::default());
        let classifier =
            serde_json::to_string(&FinetuneOptions::for_objective(Objective::Classifier)).unwrap();
        assert!(
            classifier.contains(r#""objective":"classifier""#)
                && classifier.contains(r#""head_lr":0.01"#),
            "{classifier}"
        );
        assert_eq!("classifier".parse(), Ok(Objective::Classifier));
        assert!("setfit"
            .parse::<Objective>()
            .unwrap_err()
            .contains("contrastive or classifier"));
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;
    use distill_teacher::fixtures::{write_tiny_bert, TinyKind};
    use distill_teacher::Teacher;

    fn tiny_teacher(dir: &Path) -> ModelDir {
        let kind = TinyKind::SentenceEncoder {
            pooling: "mean",
            normalize: true,
        };
        write_tiny_bert(dir, &kind, 5).unwrap();
        ModelDir::inspect("tiny", dir).unwrap()
    }

    fn teacher_embeddings(dir: &ModelDir, texts: &[&str]) -> Vec<Vec<f32>> {
        let t = Teacher::load(dir, &DeviceSpec::Cpu).unwrap();
        let out = t.label(texts, 4096).unwrap();
        let v = out.vectors();
        v.values.chunks(v.width).map(<[f32]>::to_vec).collect()
    }

    fn student_embeddings(s: &TransformerStudent, dir: &ModelDir, texts: &[&str]) -> Vec<Vec<f32>> {
        let tok = crate::transformer::tokenizer(dir, 128).unwrap();
        texts
            .iter()
            .map(|t| {
                let ids = tok.encode(*t, true).unwrap().get_ids().to_vec();
                let n = ids.len();
                let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
                let mask = Tensor::ones((1, n), candle_core::DType::F32, &Device::Cpu).unwrap();
                let Head::Embedding {
                    pooling, normalize, ..
                } = dir.head
                else {
                    unreachable!()
                };
                s.embed(&ids, &mask, pooling, normalize)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    const TEXTS: [&str; 8] = [
        "a great film",
        "truly wonderful",
        "superb acting",
        "moving story",
        "awful plot",
        "dreadful pacing",
        "tedious scenes",
        "boring overall",
    ];

    /// Before any step, the trainable encoder embeds as the teacher does (the teacher's forward is
    /// checked against an independent numpy one elsewhere); after fine-tuning, the saved directory is
    /// a teacher of its own that embeds as the tuned encoder does, and the pairs' loss went down.
    #[test]
    fn the_tuned_encoder_starts_as_the_teacher_learns_the_pairs_and_saves_as_a_teacher() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny_teacher(&tmp.path().join("teacher"));
        let texts: Vec<String> = TEXTS.iter().map(|s| s.to_string()).collect();
        let y = vec![1, 1, 1, 1, 0, 0, 0, 0];
        let opts = FinetuneOptions {
            pairs: 8,
            epochs: 4,
            batch: 8,
            lr: 1e-3,
            ..Default::default()
        };
        let run = |epochs: usize, losses: &mut Vec<f32>| {
            finetune(
                &dir,
                (&texts, &y),
                &FinetuneOptions {
                    epochs,
                    ..opts.clone()
                },
                Run {
                    id: "t",
                    checkpoint: None,
                    device: &Device::Cpu,
                },
                |s| losses.push(s.loss),
            )
            .unwrap()
        };
        let untouched = run(0, &mut vec![]);
        let before = teacher_embeddings(&dir, &TEXTS);
        assert!(max_diff(&student_embeddings(&untouched, &dir, &TEXTS), &before) < 1e-4);

        let mut losses = vec![];
        let tuned = run(4, &mut losses);
        let (first, last) = (
            losses[..4].iter().sum::<f32>(),
            losses[losses.len() - 4..].iter().sum::<f32>(),
        );
        assert!(last < 0.5 * first, "loss {first} → {last}");

        let out = tmp.path().join("tuned");
        let info = StudentInfo {
            kind: "tuned-teacher".into(),
            task: String::new(),
            labels: vec![],
            teacher: String::new(),
            task_output: String::new(),
            producer: "test".into(),
            created_unix: 0,
            training: serde_json::json!({}),
        };
        crate::dir::write_dir(&out, |tmp| tuned.save_encoder(tmp, &info)).unwrap();
        let reloaded = ModelDir::inspect("tuned", &out).unwrap();
        assert_eq!(
            reloaded.head, dir.head,
            "the pooling and normalisation modules came along"
        );
        let after = teacher_embeddings(&reloaded, &TEXTS);
        assert!(max_diff(&student_embeddings(&tuned, &dir, &TEXTS), &after) < 1e-4);
        assert!(max_diff(&after, &before) > 1e-3, "the weights changed");
        let fp = |d: &ModelDir| {
            d.fingerprint(distill_cache::model_dir::COMPUTE_DTYPE)
                .unwrap()
        };
        assert_ne!(fp(&reloaded), fp(&dir), "a teacher of its own");
    }

    /// Mean cosine similarity of same-class pairs minus that of other-class pairs.
    fn separation(emb: &[Vec<f32>], y: &[usize]) -> f32 {
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (n(a) * n(b))
        };
        let (mut same, mut other) = (vec![], vec![]);
        for i in 0..emb.len() {
            for j in i + 1..emb.len() {
                let c = cos(&emb[i], &emb[j]);
                if y[i] == y[j] { &mut same } else { &mut other }.push(c);
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        mean(&same) - mean(&other)
    }

    /// The classifier objective trains the encoder, not only its head: the cross-entropy falls and the
    /// tuned embeddings (the head dropped) pull the classes apart more than the teacher's did.
    #[test]
    fn the_classifier_objective_tunes_the_encoder_towards_the_classes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny_teacher(&tmp.path().join("teacher"));
        let texts: Vec<String> = TEXTS.iter().map(|s| s.to_string()).collect();
        let y = vec![1, 1, 1, 1, 0, 0, 0, 0];
        let opts = FinetuneOptions {
            epochs: 30,
            batch: 4,
            lr: 1e-3,
            head_lr: Some(3e-2),
            ..FinetuneOptions::for_objective(Objective::Classifier)
        };
        let mut losses = vec![];
        let tuned = finetune(
            &dir,
            (&texts, &y),
            &opts,
            Run {
                id: "c",
                checkpoint: None,
                device: &Device::Cpu,
            },
            |s| losses.push(s.loss),
        )
        .unwrap();
        assert_eq!(losses.len(), 30 * 2, "two batches of four per epoch");
        let (first, last) = (
            losses[..4].iter().sum::<f32>(),
            losses[losses.len() - 4..].iter().sum::<f32>(),
        );
        assert!(last < 0.5 * first, "loss {first} → {last}");
        let before = separation(&teacher_embeddings(&dir, &TEXTS), &y);
        let after = separation(&student_embeddings(&tuned, &dir, &TEXTS), &y);
        assert!(after > before + 0.05, "separation {before} → {after}");
    }

    /// A run interrupted after a checkpoint and started again ends with the weights of a run that was
    /// never interrupted — the classifier's head and its moments included.
    #[test]
    fn an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights() {
        let contrastive = FinetuneOptions {
            pairs: 6,
            epochs: 2,
            batch: 8,
            lr: 1e-3,
            checkpoint_every: 2,
            ..Default::default()
        };
        resumes_to_the_same_weights(&contrastive);
        let classifier = FinetuneOptions {
            epochs: 3,
            batch: 3,
            lr: 1e-3,
            head_lr: Some(3e-2),
            checkpoint_every: 2,
            ..FinetuneOptions::for_objective(Objective::Classifier)
        };
        resumes_to_the_same_weights(&classifier);
    }

    fn resumes_to_the_same_weights(opts: &FinetuneOptions) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tiny_teacher(&tmp.path().join("teacher"));
        let texts: Vec<String> = TEXTS.iter().map(|s| s.to_string()).collect();
        let y = vec![1, 1, 1, 1, 0, 0, 0, 0];
        let opts = opts.clone();
        let whole = finetune(
            &dir,
            (&texts, &y),
            &opts,
            Run {
                id: "r",
                checkpoint: None,
                device: &Device::Cpu,
            },
            |_| {},
        )
        .unwrap();
        let ckpt = tmp.path().join("ckpt");
        let broken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            finetune(
                &dir,
                (&texts, &y),
                &opts,
                Run {
                    id: "r",
                    checkpoint: Some(&ckpt),
                    device: &Device::Cpu,
                },
                |s| assert!(s.step < 5, "killed at step 5"),
            )
        }));
        assert!(broken.is_err(), "the first run was interrupted");
        let mut first_step = None;
        let resumed = finetune(
            &dir,
            (&texts, &y),
            &opts,
            Run {
                id: "r",
                checkpoint: Some(&ckpt),
                device: &Device::Cpu,
            },
            |s| {
                first_step.get_or_insert(s.step);
            },
        )
        .unwrap();
        assert_eq!(
            first_step,
            Some(5),
            "resumed after the checkpoint of step 4"
        );
        let a = student_embeddings(&whole, &dir, &TEXTS);
        let b = student_embeddings(&resumed, &dir, &TEXTS);
        assert!(
            max_diff(&a, &b) < 1e-6,
            "{:?}: {}",
            opts.objective,
            max_diff(&a, &b)
        );
    }
}
