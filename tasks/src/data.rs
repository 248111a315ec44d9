//! The training data path: a task's cached logits (and, for embedding mimicry, the teacher's cached
//! embeddings), streamed shard by shard from the object store through a seeded shuffle buffer.
//!
//! At most `buffer` examples plus one shard are in memory at a time; the whole cache never is. A
//! selection small enough to fit in the buffer (the gold examples alone, an evaluation set) is read
//! once and kept.

use crate::rng::Rng;
use crate::{Result, TaskError};
use distill_cache::commit::read_shard;
use distill_cache::fingerprint::Fingerprint;
use distill_cache::layout::ShardKey;
use distill_cache::store::Location;
use distill_cache::task::TaskRecord;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// One training example.
#[derive(Clone, Debug)]
pub struct Example {
    pub id: String,
    pub text: String,
    /// The task's teacher logits.
    pub soft: Vec<f32>,
    /// The gold class, where the task has one for this id.
    pub gold: Option<usize>,
    /// The teacher's embedding (only when opened with embeddings).
    pub embedding: Option<Vec<f32>>,
}

/// Which rows an epoch yields.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every row except the excluded ids.
    #[default]
    All,
    /// Only rows with a gold label.
    Gold,
    /// Only these ids.
    Ids(HashSet<String>),
}

/// A held-out slice of the soft-labeled rows, for early stopping: each row without a gold label is in
/// it with probability `fraction`, decided by a seeded hash of its id (so the same rows whatever the
/// cache order). Gold rows always train: there are few and they are the task's ground truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Holdout {
    pub fraction: f64,
    pub seed: u64,
}

/// Largest held-out slice: the fraction is lowered so a corpus of any size holds out about this many
/// rows (they are kept in memory, tokenized, for the validation passes).
pub const HOLDOUT_MAX_ROWS: u64 = 4096;

/// The index that makes the held-out draw independent of the other draws seeded from an id.
const HOLDOUT_STREAM: u64 = 0x401d;

impl Holdout {
    /// `fraction` of a corpus of `rows` rows, at most [`HOLDOUT_MAX_ROWS`] of them on average.
    pub fn of(fraction: f64, rows: u64, seed: u64) -> Self {
        let cap = HOLDOUT_MAX_ROWS as f64 / rows.max(1) as f64;
        Self {
            fraction: fraction.clamp(0.0, 1.0).min(cap),
            seed,
        }
    }

    /// Whether the row `id` is held out.
    pub fn holds(&self, id: &str) -> bool {
        let x = Rng::derive(self.seed, id, HOLDOUT_STREAM).next_u64();
        (x as f64) < self.fraction * u64::MAX as f64
    }
}

/// Which side of a [`Holdout`] an epoch yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The rows trained on (gold rows and soft rows outside the slice).
    Train,
    /// The held-out soft rows alone.
    Held,
}

/// A task's cached data, ready to stream.
pub struct TrainData {
    loc: Location,
    handle: tokio::runtime::Handle,
    teacher: Fingerprint,
    output: Fingerprint,
    base: Option<Fingerprint>,
    shards: Vec<Fingerprint>,
    gold: HashMap<String, usize>,
    exclude: HashSet<String>,
    selection: Selection,
    split: Option<(Holdout, Side)>,
    pub labels: Vec<String>,
    pub buffer: usize,
    pub seed: u64,
    /// Rows of the task's corpus (before exclusion).
    pub rows: u64,
    kept: Mutex<Option<Vec<Example>>>,
    /// Excluded rows met while loading (to warn about exclusion lists that match nothing).
    excluded_seen: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for TrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainData")
            .field("store", &self.loc.url)
            .field("output", &self.output)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl TrainData {
    /// Opens a task's data. `exclude` ids (a held-out test set) are never yielded. Checks that every
    /// shard the corpus manifest lists is committed.
    pub async fn open(
        loc: &Location,
        task: &TaskRecord,
        exclude: HashSet<String>,
        seed: u64,
    ) -> Result<Self> {
        let manifest = distill_cache::catalog::read_manifest(
            loc,
            &task.teacher,
            &task.output,
            &task.corpus_fingerprint,
        )
        .await?
        .ok_or_else(|| {
            TaskError::Invalid(format!(
                "task {:?}: its corpus manifest is missing from {} (the cache was pruned?): fit the task again",
                task.name, loc.url
            ))
        })?;
        if manifest.rows == 0 {
            return Err(TaskError::Invalid(format!(
                "task {:?}: the cached corpus {} has no rows",
                task.name, manifest.corpus
            )));
        }
        let index: HashMap<&str, usize> = task
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let gold = task
            .gold
            .iter()
            .filter_map(|g| Some((g.id.clone(), *index.get(g.label.as_str())?)))
            .collect();
        Ok(Self {
            loc: loc.clone(),
            handle: tokio::runtime::Handle::current(),
            teacher: task.teacher.clone(),
            output: task.output.clone(),
            base: None,
            shards: manifest
                .shards
                .iter()
                .map(|s| s.fingerprint.clone())
                .collect(),
            gold,
            exclude,
            selection: Selection::All,
            split: None,
            labels: task.labels.clone(),
            buffer: 4096,
            seed,
            rows: manifest.rows,
            kept: Mutex::new(None),
            excluded_seen: Default::default(),
        })
    }

    /// Also yields the teacher's embeddings (from the task's base entry).
    pub fn with_embeddings(mut self, task: &TaskRecord) -> Result<Self> {
        if task.base_output == task.output {
            return Err(TaskError::Invalid(format!(
                "task {:?} has no cached embeddings (its teacher is a classifier): embedding mimicry needs an embeddings entry",
                task.name
            )));
        }
        self.base = Some(task.base_output.clone());
        *self.kept.lock().expect("not poisoned") = None;
        Ok(self)
    }

    /// Restricts what epochs yield.
    pub fn select(mut self, selection: Selection) -> Self {
        self.selection = selection;
        *self.kept.lock().expect("not poisoned") = None;
        self
    }

    /// Yields one side of a held-out slice (with any selection).
    pub fn split(mut self, holdout: Holdout, side: Side) -> Self {
        self.split = Some((holdout, side));
        *self.kept.lock().expect("not poisoned") = None;
        self
    }

    pub fn gold_count(&self) -> usize {
        self.gold.len()
    }

    fn wanted(&self, id: &str) -> bool {
        if self.exclude.contains(id) {
            return false;
        }
        if let Some((h, side)) = self.split {
            let held = !self.gold.contains_key(id) && h.holds(id);
            if held != (side == Side::Held) {
                return false;
            }
        }
        match &self.selection {
            Selection::All => true,
            Selection::Gold => self.gold.contains_key(id),
            Selection::Ids(ids) => ids.contains(id),
        }
    }

    /// Reads one shard's selected rows. Must not be called on an async runtime thread.
    fn load(&self, shard: &Fingerprint) -> Result<Vec<Example>> {
        let key = ShardKey {
            teacher: self.teacher.clone(),
            output: self.output.clone(),
            shard: shard.clone(),
        };
        let (_, data) = self.handle.block_on(read_shard(&self.loc, &key))?;
        let soft = data.expect_vectors(shard.as_str())?;
        if soft.width != self.labels.len() {
            return Err(TaskError::Invalid(format!(
                "shard {shard}: {} logits per row but the task has {} labels: the cache does not belong to this task",
                soft.width,
                self.labels.len()
            )));
        }
        let emb = match &self.base {
            Some(base) => {
                let key = ShardKey {
                    output: base.clone(),
                    ..key
                };
                let (_, e) = self.handle.block_on(read_shard(&self.loc, &key))?;
                if e.ids != data.ids {
                    return Err(TaskError::Invalid(format!(
                        "shard {shard}: the embeddings and the task logits list different rows"
                    )));
                }
                e.expect_vectors(shard.as_str())?;
                Some(e)
            }
            None => None,
        };
        let mut out = Vec::new();
        for i in 0..data.rows() {
            if !self.wanted(&data.ids[i]) {
                if self.exclude.contains(&data.ids[i]) {
                    self.excluded_seen
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                continue;
            }
            out.push(Example {
                id: data.ids[i].clone(),
                text: data.texts[i].clone(),
                soft: soft.row(i).to_vec(),
                gold: self.gold.get(&data.ids[i]).copied(),
                embedding: emb
                    .as_ref()
                    .and_then(|e| e.vectors())
                    .map(|e| e.row(i).to_vec()),
            });
        }
        Ok(out)
    }

    /// How many examples an epoch yields (one streaming pass, or none if the selection is kept).
    /// Warns when ids to exclude match no row of the corpus (a wrong list would let the test set in).
    pub fn count(&self) -> Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        self.excluded_seen.store(0, Relaxed);
        let mut n = 0;
        for ex in self.epoch(0) {
            ex?;
            n += 1;
        }
        let seen = self.excluded_seen.load(Relaxed);
        let reread = self.kept.lock().expect("not poisoned").is_none() || seen > 0;
        if !self.exclude.is_empty() && seen == 0 && reread {
            tracing::warn!(
                excluded = self.exclude.len(),
                "none of the ids to exclude is in the cached corpus: check the --exclude file"
            );
        }
        Ok(n)
    }

    /// Calls `f` with each shard's selected examples in turn (one shard in memory at a time). `f`'s
    /// error type is the caller's (a student's scoring fails with its own).
    pub fn for_each_shard<E: From<TaskError>>(
        &self,
        mut f: impl FnMut(Vec<Example>) -> Result<(), E>,
    ) -> Result<(), E> {
        for s in &self.shards {
            f(self.load(s)?)?;
        }
        Ok(())
    }

    /// Every selected example, in cache order (for small selections: evaluation sets, gold sets).
    pub fn collect(&self) -> Result<Vec<Example>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(self.load(s)?);
        }
        Ok(all)
    }

    /// One epoch's examples in a seeded shuffled order: shards in random order, examples drawn at
    /// random from a buffer refilled shard by shard. Same seed and epoch, same order.
    pub fn epoch(&self, epoch: u64) -> Epoch<'_> {
        let mut rng = Rng::derive(self.seed, "epoch", epoch);
        let kept = self.kept.lock().expect("not poisoned").clone();
        if let Some(mut all) = kept {
            rng.shuffle(&mut all);
            return Epoch {
                data: self,
                order: vec![],
                next: 0,
                buffer: all,
                rng,
                loaded: Vec::new(),
                keep: false,
            };
        }
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        rng.shuffle(&mut order);
        Epoch {
            data: self,
            order,
            next: 0,
            buffer: Vec::new(),
            rng,
            loaded: Vec::new(),
            keep: true,
        }
    }
}

/// An epoch in progress (an iterator of examples).
pub struct Epoch<'a> {
    data: &'a TrainData,
    order: Vec<usize>,
    next: usize,
    buffer: Vec<Example>,
    rng: Rng,
    /// Everything loaded so far, while it still fits the buffer (then kept for later epochs).
    loaded: Vec<Example>,
    keep: bool,
}

impl Iterator for Epoch<'_> {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffer.len() < self.data.buffer && self.next < self.order.len() {
            let shard = &self.data.shards[self.order[self.next]];
            self.next += 1;
            match self.data.load(shard) {
                Ok(rows) => {
                    if self.keep {
                        self.loaded.extend(rows.iter().cloned());
                        if self.loaded.len() > self.data.buffer {
                            self.keep = false;
                            self.loaded = Vec::new();
                        }
                    }
                    self.buffer.extend(rows);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        if self.keep && self.next == self.order.len() && !self.order.is_empty() {
            // The whole selection fitted: later epochs reuse it without reading the store.
            *self.data.kept.lock().expect("not poisoned") = Some(std::mem::take(&mut self.loaded));
            self.keep = false;
        }
        if self.buffer.is_empty() {
            return None;
        }
        let i = self.rng.below(self.buffer.len());
        Some(Ok(self.buffer.swap_remove(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holdout_takes_its_share_by_id_and_is_bounded() {
        let h = Holdout::of(0.1, 20_000, 7);
        let ids: Vec<String> = (0..20_000).map(|i| format!("row-{i}")).collect();
        let held: Vec<&String> = ids.iter().filter(|id| h.holds(id)).collect();
        let share = held.len() as f64 / ids.len() as f64;
        assert!((0.09..0.11).contains(&share), "{share}");
        // The same rows for the same seed, others for another.
        assert!(held.iter().all(|id| Holdout::of(0.1, 20_000, 7).holds(id)));
        let other = held
            .iter()
            .filter(|id| Holdout::of(0.1, 20_000, 8).holds(id));
        assert!(other.count() < held.len() / 3);
        // A billion-row corpus holds out about HOLDOUT_MAX_ROWS rows, not a hundred million.
        let big = Holdout::of(0.1, 1_000_000_000, 7);
        assert!(big.fraction * 1e9 <= HOLDOUT_MAX_ROWS as f64 + 1.0);
        assert_eq!(Holdout::of(0.0, 100, 7).fraction, 0.0);
        assert!(!Holdout::of(0.0, 100, 7).holds("row-1"));
    }
}
