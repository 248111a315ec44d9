//! Fitting tasks from the cache: a head on cached embeddings (or label descriptions, zero-shot), applied
//! to every cached row and committed as a derived logits entry; then the task record. No teacher pass.

use crate::labels::Gold;
use crate::logreg::{self, CvOptions};
use crate::{Result, TaskError};
use distill_cache::catalog::{self, CorpusManifest};
use distill_cache::commit::{commit_shard, put_if_absent, read_shard, shard_meta};
use distill_cache::fingerprint::Fingerprint;
use distill_cache::format::{ShardData, ShardMeta};
use distill_cache::layout::{self, ShardKey};
use distill_cache::model_dir::{Head, TeacherInfo};
use distill_cache::spec::{Dtype, OutputKind, OutputSpec};
use distill_cache::store::Location;
use distill_cache::task::{self, GoldLabel, LinearHead, TaskKind, TaskRecord};
use distill_cache::values::{OutputValues, Vectors};
use std::collections::{BTreeMap, HashMap};

/// Which cached entry a task reads.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manifest: CorpusManifest,
    pub spec: OutputSpec,
}

impl Entry {
    /// Whether the entry holds a prompted decoder's class scores.
    pub fn spec_is_prompted(&self) -> bool {
        matches!(
            self.spec,
            OutputSpec::Logits {
                prompt: Some(_),
                ..
            }
        )
    }
}

/// Which entry a task reads, when a store holds several; every part that is set must match.
#[derive(Clone, Debug, Default)]
pub struct EntryQuery<'a> {
    /// A part of the corpus's path or URL.
    pub corpus: Option<&'a str>,
    /// A prefix of the teacher fingerprint.
    pub teacher: Option<&'a str>,
    /// The output as `cache ls` shows it (`embeddings/f16`) or a prefix of its fingerprint.
    pub output: Option<&'a str>,
    pub kind: Option<OutputKind>,
}

/// Finds the teacher-output entry of a corpus: the store's only one, or the one the query picks.
/// Derived task entries and kinds this release does not know are never candidates; per-token entries
/// only when the query asks for `token_topk`. Zero or several matches are errors that list the candidates with their outputs.
pub async fn find_entry(loc: &Location, q: &EntryQuery<'_>) -> Result<Entry> {
    let all = catalog::manifests(loc).await?;
    let mut found: Vec<Entry> = all
        .into_iter()
        .filter_map(|(m, spec)| {
            let spec = spec?;
            let wanted = match q.kind {
                Some(OutputKind::TokenTopk) => spec.kind() == Some(OutputKind::TokenTopk),
                _ => spec.is_per_example(),
            };
            (wanted && spec.fingerprint() == m.output).then_some(Entry { manifest: m, spec })
        })
        .collect();
    if found.is_empty() {
        return Err(TaskError::Invalid(format!(
            "the cache {} holds no labeled corpus: run `distill label` first",
            loc.url
        )));
    }
    let describe = |es: &[Entry]| {
        es.iter()
            .map(|e| {
                format!(
                    "{} (teacher {}, output {} {})",
                    e.manifest.corpus,
                    e.manifest.teacher.short(),
                    e.spec.describe(),
                    e.manifest.output.short()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let everything = describe(&found);
    found.retain(|e| {
        q.corpus.is_none_or(|c| e.manifest.corpus.contains(c))
            && q.teacher
                .is_none_or(|t| e.manifest.teacher.as_str().starts_with(t))
            && q.output
                .is_none_or(|o| e.spec.describe() == o || e.manifest.output.as_str().starts_with(o))
            && q.kind.is_none_or(|k| e.spec.kind() == Some(k))
    });
    // The same corpus labeled twice with one teacher (other shard sizes) counts once: take the largest.
    found.sort_by_key(|e| std::cmp::Reverse(e.manifest.rows));
    let mut seen = std::collections::HashSet::new();
    found.retain(|e| {
        seen.insert((
            e.manifest.corpus.clone(),
            e.manifest.teacher.clone(),
            e.manifest.output.clone(),
        ))
    });
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(TaskError::Invalid(format!(
            "no cached corpus in {} matches (it has: {everything}); use --corpus / --teacher-fingerprint / --output",
            loc.url
        ))),
        _ => Err(TaskError::Invalid(format!(
            "several cached corpora in {} match ({}); choose one with --corpus / --teacher-fingerprint / --output",
            loc.url,
            describe(&found)
        ))),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key(m: &CorpusManifest, shard: &Fingerprint) -> ShardKey {
    ShardKey {
        teacher: m.teacher.clone(),
        output: m.output.clone(),
        shard: shard.clone(),
    }
}

/// One value per gold id, in gold order, taken from its cached row by `take` (shard, row index).
/// Every id must be in the cache; the first missing one is named by its line.
async fn gold_rows<T: Clone>(
    loc: &Location,
    entry: &Entry,
    gold: &[Gold],
    labels_path: &str,
    take: impl Fn(&ShardData, usize, &str) -> Result<T>,
) -> Result<Vec<T>> {
    let want: HashMap<&str, usize> = gold
        .iter()
        .enumerate()
        .map(|(i, g)| (g.id.as_str(), i))
        .collect();
    let mut out: Vec<Option<T>> = vec![None; gold.len()];
    for s in &entry.manifest.shards {
        let (_, data) = read_shard(loc, &key(&entry.manifest, &s.fingerprint)).await?;
        for (i, id) in data.ids.iter().enumerate() {
            if let Some(&j) = want.get(id.as_str()) {
                out[j] = Some(take(&data, i, s.fingerprint.as_str())?);
            }
        }
    }
    let missing: Vec<&Gold> = gold
        .iter()
        .zip(&out)
        .filter(|(_, e)| e.is_none())
        .map(|(g, _)| g)
        .collect();
    if let Some(first) = missing.first() {
        return Err(TaskError::Line {
            path: labels_path.to_owned(),
            line: first.line,
            reason: format!(
                "id {:?} is not in the cached corpus {} ({} of {} labeled ids are missing): label with the corpus these ids come from",
                first.id,
                entry.manifest.corpus,
                missing.len(),
                gold.len()
            ),
        });
    }
    Ok(out.into_iter().map(|e| e.expect("checked")).collect())
}

/// Reads the cached embeddings of the gold ids. Every id must be in the cache.
pub async fn gold_embeddings(
    loc: &Location,
    entry: &Entry,
    gold: &[Gold],
    labels_path: &str,
) -> Result<Vec<Vec<f32>>> {
    gold_rows(loc, entry, gold, labels_path, |data, i, shard| {
        Ok(data.expect_vectors(shard)?.row(i).to_vec())
    })
    .await
}

/// The cached texts of the gold ids, in gold order. Every id must be in the cache.
pub async fn gold_texts(
    loc: &Location,
    entry: &Entry,
    gold: &[Gold],
    labels_path: &str,
) -> Result<Vec<String>> {
    gold_rows(loc, entry, gold, labels_path, |data, i, _| {
        Ok(data.texts[i].clone())
    })
    .await
}

/// Checks that reading the corpus with `spec` gives the entry's shards (the same content, in the same
/// order), before a new teacher labels it for this entry's task.
pub async fn check_corpus(entry: &Entry, spec: &distill_cache::corpus::CorpusSpec) -> Result<()> {
    let mut reader = distill_cache::corpus::CorpusReader::open(spec).await?;
    let m = &entry.manifest;
    let mut i = 0;
    while let Some(shard) = reader.next_shard(m.shard_size as usize).await? {
        if m.shards.get(i).map(|s| &s.fingerprint) != Some(&shard.fingerprint) {
            return Err(TaskError::Invalid(format!(
                "the corpus {} read with text field {:?} and id field {:?} is not what the entry was labeled from (shard {i} differs): give --text-field and --corpus-id-field as when it was labeled, or the corpus as it was",
                spec.url, spec.text_field, spec.id_field
            )));
        }
        i += 1;
    }
    if i != m.shards.len() {
        return Err(TaskError::Invalid(format!(
            "the corpus {} has {i} shards now, the entry {}: give the corpus as it was labeled",
            spec.url,
            m.shards.len()
        )));
    }
    Ok(())
}

/// The ids of every cached row of an entry (rows the teacher pass rejected are absent).
pub async fn cached_ids(
    loc: &Location,
    entry: &Entry,
) -> Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    for s in &entry.manifest.shards {
        let (_, data) = read_shard(loc, &key(&entry.manifest, &s.fingerprint)).await?;
        ids.extend(data.ids);
    }
    Ok(ids)
}

/// Class names, sorted, so the same labels always give the same logits columns.
pub fn class_names(gold: &[Gold]) -> Vec<String> {
    let mut names: Vec<String> = gold.iter().map(|g| g.label.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// Checks there are at least two classes and `min_per_class` examples of each.
pub fn check_classes(
    gold: &[Gold],
    min_per_class: usize,
    labels_path: &str,
) -> Result<Vec<String>> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for g in gold {
        *counts.entry(g.label.as_str()).or_default() += 1;
    }
    if counts.len() < 2 {
        return Err(TaskError::File {
            path: labels_path.to_owned(),
            reason: format!(
                "every example has the label {:?}: a task needs at least two classes",
                gold[0].label
            ),
        });
    }
    if let Some((l, n)) = counts.iter().find(|(_, &n)| n < min_per_class) {
        return Err(TaskError::File {
            path: labels_path.to_owned(),
            reason: format!(
                "class {l:?} has {n} example(s); at least {min_per_class} per class are needed (label more, or lower --min-per-class)"
            ),
        });
    }
    Ok(class_names(gold))
}

/// Fits a logistic-regression head on the gold examples' cached embeddings — `C` and temperature
/// chosen by stratified cross-validation unless `C` is fixed ([`logreg::fit_cv`]) — and publishes
/// the task, with the cross-validated figures in its record.
pub async fn fit_head(
    loc: &Location,
    name: &str,
    entry: &Entry,
    gold: &[Gold],
    labels_path: &str,
    cvo: CvOptions,
    min_per_class: usize,
) -> Result<TaskRecord> {
    task::check_name(name)?;
    if entry.spec.kind() != Some(OutputKind::Embeddings) {
        return Err(TaskError::Invalid(format!(
            "{} is cached as {}: a head is fitted on embeddings (a classifier teacher's logits are a task already: fit without --labels)",
            entry.manifest.corpus,
            entry.spec.describe()
        )));
    }
    let labels = check_classes(gold, min_per_class, labels_path)?;
    let x = gold_embeddings(loc, entry, gold, labels_path).await?;
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let y: Vec<usize> = gold.iter().map(|g| index[g.label.as_str()]).collect();
    let classes = labels.len();
    let (head, report) = tokio::task::spawn_blocking(move || logreg::fit_cv(&x, &y, classes, cvo))
        .await
        .map_err(|e| TaskError::Invalid(format!("head fit panicked: {e}")))?;
    let def = Definition {
        head: Some(head),
        gold,
        cross_validation: Some(serde_json::to_value(&report).expect("serialisable")),
        ..Definition::new(TaskKind::Head, labels)
    };
    publish(loc, name, entry, def).await
}

/// A zero-shot task's labels and what the teacher made of their descriptions.
#[derive(Clone, Debug)]
pub struct ZeroShot {
    pub labels: Vec<String>,
    pub descriptions: Vec<String>,
    /// The teacher's embedding of each description, in label order.
    pub embedded: Vec<Vec<f32>>,
    /// Softmax temperature of the cosine scores.
    pub temperature: f32,
    /// Teacher-seconds spent embedding the descriptions.
    pub teacher_seconds: f64,
}

/// A zero-shot task: the descriptions (one per label) embedded by the teacher, cosine similarity
/// divided by the temperature.
pub async fn fit_zero_shot(
    loc: &Location,
    name: &str,
    entry: &Entry,
    z: ZeroShot,
) -> Result<TaskRecord> {
    let ZeroShot {
        labels,
        descriptions,
        embedded,
        temperature,
        teacher_seconds,
    } = z;
    task::check_name(name)?;
    if labels.len() < 2 {
        return Err(TaskError::Invalid(
            "a zero-shot task needs at least two labels".into(),
        ));
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(TaskError::Invalid(format!(
            "temperature must be > 0, not {temperature}"
        )));
    }
    let dim = embedded[0].len();
    let mut weight = Vec::with_capacity(labels.len() * dim);
    for e in &embedded {
        let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        weight.extend(e.iter().map(|v| v / n / temperature));
    }
    let head = LinearHead {
        classes: labels.len(),
        dim,
        weight,
        bias: vec![0.0; labels.len()],
        normalize_input: true,
    };
    let def = Definition {
        head: Some(head),
        descriptions,
        temperature: Some(temperature),
        teacher_seconds,
        ..Definition::new(TaskKind::ZeroShot, labels)
    };
    publish(loc, name, entry, def).await
}

/// A classifier teacher's cached logits as a task (optionally with gold labels for the trainer).
pub async fn from_teacher(
    loc: &Location,
    name: &str,
    entry: &Entry,
    teacher: &TeacherInfo,
    gold: &[Gold],
    labels_path: &str,
) -> Result<TaskRecord> {
    task::check_name(name)?;
    let prompted = match &entry.spec {
        OutputSpec::Logits {
            prompt: Some(p), ..
        } => Some(p.labels()),
        _ => None,
    };
    let labels = match (&teacher.head, &prompted) {
        (_, Some(l)) => l,
        (Head::Classifier { labels }, None) => labels,
        _ => {
            return Err(TaskError::Invalid(format!(
            "{} is cached as embeddings: give --labels (few-shot head) or --describe (zero-shot)",
            entry.manifest.corpus
        )))
        }
    };
    for g in gold {
        if !labels.contains(&g.label) {
            return Err(TaskError::Line {
                path: labels_path.to_owned(),
                line: g.line,
                reason: format!(
                    "label {:?} of id {:?} is not one of the teacher's labels ({})",
                    g.label,
                    g.id,
                    labels.join(", ")
                ),
            });
        }
    }
    let def = Definition {
        gold,
        ..Definition::new(TaskKind::Teacher, labels.clone())
    };
    publish(loc, name, entry, def).await
}

/// A task from a prompted teacher's class scores, calibrated on gold labels: no calibration, a bias
/// per class, or a small head, chosen by stratified `folds`-fold cross-validation (reported in the
/// record).
pub async fn fit_calibrated(
    loc: &Location,
    name: &str,
    entry: &Entry,
    gold: &[Gold],
    labels_path: &str,
    folds: usize,
    seed: u64,
) -> Result<TaskRecord> {
    task::check_name(name)?;
    let OutputSpec::Logits {
        prompt: Some(p), ..
    } = &entry.spec
    else {
        return Err(TaskError::Invalid(format!(
            "{} is not a prompted entry",
            entry.manifest.output.short()
        )));
    };
    let labels = p.labels();
    for g in gold {
        if !labels.contains(&g.label) {
            return Err(TaskError::Line {
                path: labels_path.to_owned(),
                line: g.line,
                reason: format!(
                    "label {:?} of id {:?} is not one of the prompt's choices ({})",
                    g.label,
                    g.id,
                    labels.join(", ")
                ),
            });
        }
    }
    if let Some(unused) = labels.iter().find(|l| !gold.iter().any(|g| &g.label == *l)) {
        return Err(TaskError::Invalid(format!(
            "{labels_path}: no gold label is {unused:?}, a choice of the prompt: give examples of every choice, or drop that --choice"
        )));
    }
    let x = gold_embeddings(loc, entry, gold, labels_path).await?;
    let y: Vec<usize> = gold
        .iter()
        .map(|g| labels.iter().position(|l| l == &g.label).expect("checked"))
        .collect();
    let classes = labels.len();
    let (head, report) =
        tokio::task::spawn_blocking(move || crate::calibrate::choose(&x, &y, classes, folds, seed))
            .await
            .map_err(|e| TaskError::Invalid(format!("calibration panicked: {e}")))?;
    let def = Definition {
        head: Some(head),
        gold,
        cross_validation: Some(serde_json::to_value(&report).expect("serialisable")),
        ..Definition::new(TaskKind::Head, labels)
    };
    publish(loc, name, entry, def).await
}

/// What defines a task, besides its name and entry.
struct Definition<'a> {
    kind: TaskKind,
    labels: Vec<String>,
    head: Option<LinearHead>,
    gold: &'a [Gold],
    descriptions: Vec<String>,
    temperature: Option<f32>,
    /// Teacher device-seconds spent to define it.
    teacher_seconds: f64,
    cross_validation: Option<serde_json::Value>,
}

impl Definition<'_> {
    fn new(kind: TaskKind, labels: Vec<String>) -> Self {
        Self {
            kind,
            labels,
            head: None,
            gold: &[],
            descriptions: Vec::new(),
            temperature: None,
            teacher_seconds: 0.0,
            cross_validation: None,
        }
    }
}

/// Applies the head to every cached shard, commits the derived entry (idempotently: shards already
/// there are kept), writes its manifest, then the task record last.
async fn publish(
    loc: &Location,
    name: &str,
    entry: &Entry,
    def: Definition<'_>,
) -> Result<TaskRecord> {
    let Definition {
        kind,
        labels,
        head,
        gold,
        descriptions,
        temperature,
        teacher_seconds,
        cross_validation,
    } = def;
    let base = &entry.manifest;
    let output = match &head {
        Some(h) => task::derived_output(&base.teacher, &base.output, &h.fingerprint()),
        None => base.output.clone(),
    };
    if let Some(head) = &head {
        let spec = OutputSpec::Logits {
            dtype: Dtype::F32,
            prompt: None,
        };
        for s in &base.shards {
            let dkey = ShardKey {
                teacher: base.teacher.clone(),
                output: output.clone(),
                shard: s.fingerprint.clone(),
            };
            if shard_meta(loc, &dkey).await?.is_some() {
                continue;
            }
            let (meta, data) = read_shard(loc, &key(base, &s.fingerprint)).await?;
            let emb = data.expect_vectors(s.fingerprint.as_str())?;
            if emb.width != head.dim {
                return Err(TaskError::Invalid(format!(
                    "shard {}: embeddings of width {} but the head expects {}",
                    s.fingerprint, emb.width, head.dim
                )));
            }
            let mut values = vec![0f32; data.rows() * head.classes];
            for i in 0..data.rows() {
                head.apply(
                    emb.row(i),
                    &mut values[i * head.classes..(i + 1) * head.classes],
                );
            }
            let out = ShardData {
                values: OutputValues::Vectors(Vectors {
                    width: head.classes,
                    values,
                }),
                ..data
            };
            let dmeta = ShardMeta {
                output: spec.clone(),
                output_fingerprint: output.clone(),
                device_seconds: 0.0,
                device: format!("task head ({kind:?})"),
                created_unix: now(),
                producer: distill_cache::PRODUCER.into(),
                ..meta.clone()
            };
            commit_shard(loc, &dkey, &dmeta, &out, &[]).await?;
        }
        put_if_absent(
            loc,
            &layout::output_path(&base.teacher, &output),
            serde_json::to_vec_pretty(&spec)
                .expect("serialisable")
                .into(),
        )
        .await?;
        let manifest = CorpusManifest {
            output: output.clone(),
            ..base.clone()
        };
        catalog::write_manifest(loc, &manifest).await?;
    }
    let record = TaskRecord {
        schema_version: distill_cache::SCHEMA_VERSION,
        name: name.to_owned(),
        kind,
        labels,
        teacher: base.teacher.clone(),
        base_output: base.output.clone(),
        output,
        corpus: base.corpus.clone(),
        corpus_fingerprint: base.corpus_fingerprint.clone(),
        head,
        descriptions,
        temperature,
        gold: gold
            .iter()
            .map(|g| GoldLabel {
                id: g.id.clone(),
                label: g.label.clone(),
            })
            .collect(),
        teacher_seconds,
        rows: base.rows,
        created_unix: now(),
        cross_validation,
    };
    task::write_task(loc, &record).await?;
    Ok(record)
}
