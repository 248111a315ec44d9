//! Row reuse: what the teacher computed for a row's text is found again whatever corpus, shard, order
//! or id the row comes with.
//!
//! A shard's address covers its rows' ids and texts in order, so a corpus that is shuffled, sampled,
//! prepended to, split over other files or renamed has new shards. Their rows need not be labeled
//! again: what a teacher computes for a row depends on its text alone (under one teacher × output
//! entry). Each committed shard has a **row-key object** beside it,
//!
//! ```text
//! v1/<teacher>/<output>/rows/<shard>.keys    16 bytes per row, in the shard's row order:
//!                                            the row key, SHA-256("distill.row.v1", text)[..16]
//! ```
//!
//! derived data: written by the worker after its commit, rebuilt by the planner from a shard's text
//! column where it is missing (shards of earlier releases, a write lost in a crash). The planner loads
//! an entry's keys once per job, on its first shard miss ([`RowIndex`]), and gives each row of a missed
//! shard a [`Source`] when some committed shard holds its text (or an earlier row of this job will);
//! the worker copies those rows' outputs ([`gather`], [`assemble`]) and runs the teacher only on the
//! rest. The new shard is committed whole, as any other: readers, manifests and the commit protocol
//! do not change. Exact duplicates within a shard are labeled once; a shard with a duplicate of a row
//! an earlier shard of the same job labels waits for that shard ([`RowIndex::sources`] names it, the
//! scheduler leases it after), then copies it.

use crate::commit::{self, put_if_absent};
use crate::fingerprint::{Fingerprint, Hasher};
use crate::format::{ShardData, ShardMeta};
use crate::layout::{output_dir, ShardKey};
use crate::store::{get_bounded, Location, MAX_OBJECT_BYTES};
use crate::values::{OutputValues, TokenTopk, Vectors};
use crate::{CacheError, Result};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// A row's content key: the first 128 bits of SHA-256 over its text.
pub type RowKey = u128;

/// Store reads and writes in flight at once while loading or rebuilding an index.
const CONCURRENCY: usize = 32;

pub fn row_key(text: &str) -> RowKey {
    let mut h = Hasher::new("distill.row.v1");
    h.str(text);
    h.finish_u128()
}

/// Where a row's outputs are already: a row of a committed shard (or of a shard of the same job).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub shard: Fingerprint,
    pub row: u32,
}

/// The row-key object of a shard.
pub fn keys_path(key: &ShardKey) -> String {
    format!(
        "{}/rows/{}.keys",
        output_dir(&key.teacher, &key.output),
        key.shard
    )
}

pub fn encode_keys<'a>(texts: impl Iterator<Item = &'a str>) -> bytes::Bytes {
    texts
        .flat_map(|t| row_key(t).to_be_bytes())
        .collect::<Vec<u8>>()
        .into()
}

fn decode_keys(bytes: &[u8]) -> Option<Vec<RowKey>> {
    bytes.len().is_multiple_of(16).then(|| {
        bytes
            .chunks_exact(16)
            .map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes")))
            .collect()
    })
}

/// Writes a committed shard's row keys (once; an existing object is left as it is).
pub async fn write_keys<'a>(
    loc: &Location,
    key: &ShardKey,
    texts: impl Iterator<Item = &'a str>,
) -> Result<()> {
    put_if_absent(loc, &keys_path(key), encode_keys(texts)).await?;
    Ok(())
}

/// The row keys of one entry's committed shards, and of the rows a job has staged so far.
#[derive(Debug, Default)]
pub struct RowIndex {
    shards: Vec<Fingerprint>,
    /// Row key (as two words: 24 bytes an entry, where a `u128` key would align to 32) → (shard, row).
    rows: HashMap<[u64; 2], (u32, u32)>,
    /// Shards of the running job whose new rows are recorded here (by place in `shards`), with
    /// their index in the job: they are not committed yet.
    staged: HashMap<u32, u64>,
    /// Shards whose keys were rebuilt from their text columns while loading.
    pub rebuilt: usize,
}

impl RowIndex {
    /// Loads every committed shard's keys of a teacher × output entry, rebuilding the missing ones.
    pub async fn load(loc: &Location, teacher: &Fingerprint, output: &Fingerprint) -> Result<Self> {
        let dir = output_dir(teacher, output);
        let names = |sub: &'static str, ext: &'static str| {
            let prefix = loc.child(&format!("{dir}/{sub}"));
            async move {
                let listed = crate::catalog::list_under(loc, &prefix).await?;
                Ok::<HashSet<String>, CacheError>(
                    listed
                        .iter()
                        .filter_map(|o| o.location.filename()?.strip_suffix(ext).map(str::to_owned))
                        .collect(),
                )
            }
        };
        let (committed, indexed) =
            futures::try_join!(names("shards", ".parquet"), names("rows", ".keys"))?;
        let shard_key = |fp: &str| {
            Fingerprint::parse(fp).map(|shard| ShardKey {
                teacher: teacher.clone(),
                output: output.clone(),
                shard,
            })
        };
        let mut keys: Vec<ShardKey> = committed.iter().filter_map(|s| shard_key(s)).collect();
        // A text held by several shards is found in the same one on every load.
        keys.sort_by(|a, b| a.shard.cmp(&b.shard));
        let rebuilt = keys.iter().filter(|k| !indexed.contains(k.shard.as_str()));
        let rebuilt: Vec<ShardKey> = rebuilt.cloned().collect();
        futures::stream::iter(rebuilt.clone().into_iter().map(|k| rebuild_keys(loc, k)))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let loaded: Vec<(Fingerprint, Vec<RowKey>)> =
            futures::stream::iter(keys.into_iter().map(|k| read_keys(loc, k)))
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
        let mut index = Self {
            rebuilt: rebuilt.len(),
            ..Self::default()
        };
        for (shard, keys) in loaded {
            for (row, k) in keys.into_iter().enumerate() {
                index.insert(k, &shard, row as u32);
            }
        }
        Ok(index)
    }

    /// Rows indexed.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Where a row key's outputs are, if anywhere.
    pub fn get(&self, key: RowKey) -> Option<Source> {
        self.rows.get(&words(key)).map(|&(s, row)| Source {
            shard: self.shards[s as usize].clone(),
            row,
        })
    }

    /// Records where a row key's outputs are (or will be); the first place recorded stays.
    pub fn insert(&mut self, key: RowKey, shard: &Fingerprint, row: u32) {
        if self.rows.contains_key(&words(key)) {
            return;
        }
        if self.shards.last() != Some(shard) {
            self.shards.push(shard.clone());
        }
        let s = (self.shards.len() - 1) as u32;
        self.rows.insert(words(key), (s, row));
    }

    /// The sources of a missed shard's rows, from their keys ([`row_keys`]): where each text is
    /// already, or, for the first of duplicates within the shard or the job, `None` — it is labeled,
    /// and recorded for those after it. Also the latest earlier shard of the job (`index`: this
    /// one's) that a row copies from, which must be done first.
    pub fn sources(
        &mut self,
        shard: &Fingerprint,
        index: u64,
        keys: &[RowKey],
    ) -> (Vec<Option<Source>>, Option<u64>) {
        let mut after = None;
        let sources = keys
            .iter()
            .enumerate()
            .map(|(row, &key)| match self.rows.get(&words(key)).copied() {
                Some((s, r)) => {
                    if let Some(&i) = self.staged.get(&s).filter(|&&i| i != index) {
                        after = after.max(Some(i));
                    }
                    Some(Source {
                        shard: self.shards[s as usize].clone(),
                        row: r,
                    })
                }
                None => {
                    self.insert(key, shard, row as u32);
                    let s = (self.shards.len() - 1) as u32;
                    self.staged.insert(s, index);
                    None
                }
            })
            .collect();
        (sources, after)
    }
}

fn words(key: RowKey) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}

/// The keys of a shard's rows.
pub fn row_keys(shard: &crate::corpus::Shard) -> Vec<RowKey> {
    shard.rows.iter().map(|r| row_key(&r.text)).collect()
}

async fn read_keys(loc: &Location, key: ShardKey) -> Result<(Fingerprint, Vec<RowKey>)> {
    let path = loc.child(&keys_path(&key));
    let bytes = get_bounded(loc, &path, "row keys", MAX_OBJECT_BYTES).await?;
    let keys = bytes
        .as_deref()
        .and_then(decode_keys)
        .ok_or_else(|| CacheError::Shard {
            path: loc.display(&path),
            reason: "not a row-key object (16 bytes per row): delete it and it is rebuilt".into(),
        })?;
    Ok((key.shard, keys))
}

/// Writes a shard's missing row-key object from its text column (read alone).
async fn rebuild_keys(loc: &Location, key: ShardKey) -> Result<()> {
    let texts = commit::read_texts(loc, &key).await?;
    write_keys(loc, &key, texts.iter().map(String::as_str)).await
}

/// The committed outputs of rows found elsewhere, read for one shard: of each source shard, only the
/// rows it is asked for (memory: about one shard's worth, whatever the sources hold).
#[derive(Debug, Default)]
pub struct Gathered {
    shards: HashMap<Fingerprint, Taken>,
}

/// Rows taken from one source shard.
#[derive(Debug)]
struct Taken {
    /// The rows, in the order asked.
    data: ShardData,
    /// Source row → its place in `data`.
    at: HashMap<u32, usize>,
    /// Each row's share of the source's device-seconds (by tokens).
    shares: Vec<f64>,
}

impl Taken {
    fn new(meta: &ShardMeta, source: &ShardData, rows: &[u32]) -> Self {
        let rows: Vec<usize> = rows
            .iter()
            .map(|&r| r as usize)
            .filter(|&r| r < source.rows())
            .collect();
        let parts: Vec<(&ShardData, usize)> = rows.iter().map(|&r| (source, r)).collect();
        let data = ShardData {
            ids: rows.iter().map(|&r| source.ids[r].clone()).collect(),
            texts: rows.iter().map(|&r| source.texts[r].clone()).collect(),
            tokens: rows.iter().map(|&r| source.tokens[r]).collect(),
            truncated: rows.iter().map(|&r| source.truncated[r]).collect(),
            values: gather_values(&parts),
        };
        Self {
            shares: rows.iter().map(|&r| share(meta, source, r)).collect(),
            at: rows
                .iter()
                .enumerate()
                .map(|(i, &r)| (r as u32, i))
                .collect(),
            data,
        }
    }
}

/// Reads the source shards a staged shard's rows name (not the shard itself: rows pointing into it
/// are copied from its own new rows) and keeps the rows named. A source that is gone is passed over:
/// its rows are labeled.
pub async fn gather(
    loc: &Location,
    key: &ShardKey,
    sources: &[Option<Source>],
) -> Result<Gathered> {
    let mut wanted: HashMap<Fingerprint, Vec<u32>> = HashMap::new();
    for s in sources.iter().flatten().filter(|s| s.shard != key.shard) {
        wanted.entry(s.shard.clone()).or_default().push(s.row);
    }
    let read = |(shard, rows): (Fingerprint, Vec<u32>)| async move {
        let k = ShardKey {
            shard: shard.clone(),
            ..key.clone()
        };
        match commit::read_shard(loc, &k).await {
            Ok((meta, data)) => Ok(Some((shard, Taken::new(&meta, &data, &rows)))),
            Err(CacheError::Store { reason, .. }) if reason.starts_with("not found") => Ok(None),
            Err(e) => Err(e),
        }
    };
    let found: Vec<Option<_>> = futures::stream::iter(wanted.into_iter().map(read))
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(Gathered {
        shards: found.into_iter().flatten().collect(),
    })
}

/// How each row of a shard gets its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The teacher labels it: the n-th row of the fresh part.
    Fresh(usize),
    /// Copied from a source shard's row.
    Copy,
    /// Copied from another row of this shard, which is fresh.
    Same(usize),
}

impl Gathered {
    /// Decides how each row gets its outputs: copied where a source holds the same text, else fresh.
    pub fn plan(&self, texts: &[&str], sources: &[Option<Source>], own: &Fingerprint) -> Vec<Plan> {
        let mut fresh = 0;
        let mut plans: Vec<Plan> = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let usable = sources.get(i).cloned().flatten().and_then(|s| {
                let row = s.row as usize;
                if &s.shard == own {
                    // An earlier row of this shard with the same text, labeled here.
                    let same = row < i && texts[row] == *text;
                    return same.then(|| plans[row]).and_then(|p| match p {
                        Plan::Fresh(_) => Some(Plan::Same(row)),
                        _ => None,
                    });
                }
                let taken = self.shards.get(&s.shard)?;
                let at = *taken.at.get(&(row as u32))?;
                (taken.data.texts[at] == *text).then_some(Plan::Copy)
            });
            plans.push(usable.unwrap_or_else(|| {
                fresh += 1;
                Plan::Fresh(fresh - 1)
            }));
        }
        plans
    }
}

/// What a shard's rows cost the teacher, and what copying saved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reuse {
    /// Rows copied from other shards or from a duplicate in this one.
    pub rows: u64,
    /// Device-seconds those rows cost when they were labeled (each row's share of its shard's
    /// seconds, by tokens).
    pub seconds: f64,
}

/// Puts a shard together: the fresh rows' outputs (`fresh`, labeled by the teacher, in the order of
/// [`Plan::Fresh`]) and the copied ones, in row order. `shard_meta` is the fresh part's metadata with
/// the whole shard's identity; its counts are made the whole shard's here, its device-seconds those of
/// the fresh rows plus the copied rows' share.
pub fn assemble(
    gathered: &Gathered,
    sources: &[Option<Source>],
    plans: &[Plan],
    mut meta: ShardMeta,
    ids: Vec<String>,
    texts: Vec<String>,
    fresh: ShardData,
) -> (ShardMeta, ShardData, Reuse) {
    let mut reuse = Reuse::default();
    let mut parts: Vec<(&ShardData, usize)> = Vec::with_capacity(plans.len());
    for (i, plan) in plans.iter().enumerate() {
        parts.push(match *plan {
            Plan::Fresh(n) => (&fresh, n),
            Plan::Same(row) => match plans[row] {
                Plan::Fresh(n) => {
                    reuse.rows += 1;
                    reuse.seconds += share(&meta, &fresh, n);
                    (&fresh, n)
                }
                _ => unreachable!("a row copies only a fresh row of its shard"),
            },
            Plan::Copy => {
                let s = sources[i].as_ref().expect("a copied row has a source");
                let taken = &gathered.shards[&s.shard];
                let at = taken.at[&s.row];
                reuse.rows += 1;
                reuse.seconds += taken.shares[at];
                (&taken.data, at)
            }
        });
    }
    let data = ShardData {
        ids,
        texts,
        tokens: parts.iter().map(|(d, r)| d.tokens[*r]).collect(),
        truncated: parts.iter().map(|(d, r)| d.truncated[*r]).collect(),
        values: gather_values(&parts),
    };
    meta.rows = data.ids.len() as u64;
    meta.truncated_rows = data.truncated.iter().filter(|t| **t).count() as u64;
    meta.tokens = data.tokens.iter().map(|t| *t as u64).sum();
    meta.device_seconds = ((meta.device_seconds + reuse.seconds) * 1e6).round() / 1e6;
    (meta, data, reuse)
}

/// A row's share of its shard's device-seconds, by its tokens.
fn share(meta: &ShardMeta, data: &ShardData, row: usize) -> f64 {
    let total: u64 = data.tokens.iter().map(|t| *t as u64).sum();
    if total == 0 {
        return 0.0;
    }
    meta.device_seconds * data.tokens[row] as f64 / total as f64
}

/// The outputs of the given rows of the given shards, in that order (all of one kind and shape).
fn gather_values(parts: &[(&ShardData, usize)]) -> OutputValues {
    match parts.first().map(|(d, _)| &d.values) {
        None | Some(OutputValues::Vectors(_)) => {
            let width = parts
                .first()
                .and_then(|(d, _)| d.vectors())
                .map_or(0, |v| v.width);
            let mut values = Vec::with_capacity(parts.len() * width);
            for (d, r) in parts {
                values.extend_from_slice(d.vectors().expect("one kind per entry").row(*r));
            }
            OutputValues::Vectors(Vectors { width, values })
        }
        Some(OutputValues::TokenTopk(first)) => {
            let mut out = TokenTopk::empty(first.k, first.samples.is_some());
            for (d, r) in parts {
                let OutputValues::TokenTopk(t) = &d.values else {
                    panic!("one kind per entry")
                };
                out.extend(&t.row(*r));
            }
            OutputValues::TokenTopk(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests_support;
    use crate::values::Samples;

    fn fp(s: &str) -> Fingerprint {
        Hasher::new("t").str(s).clone().finish()
    }

    #[test]
    fn sources_point_at_the_first_place_of_each_text() {
        let mut index = RowIndex::default();
        let (a, b) = (fp("a"), fp("b"));
        let keys: Vec<RowKey> = ["x", "y", "x"].iter().map(|t| row_key(t)).collect();
        let (first, after) = index.sources(&a, 0, &keys);
        assert_eq!(
            after, None,
            "a duplicate in its own shard waits for nothing"
        );
        assert_eq!(first[..2], [None, None]);
        assert_eq!(
            first[2],
            Some(Source {
                shard: a.clone(),
                row: 0
            }),
            "a duplicate in the shard"
        );
        let (second, after) = index.sources(&b, 1, &[row_key("y"), row_key("z")]);
        assert_eq!(second, [Some(Source { shard: a, row: 1 }), None]);
        assert_eq!(
            after,
            Some(0),
            "a row of shard 0, staged by this job: shard 0 goes first"
        );
        assert_eq!(index.len(), 3);
        assert_ne!(row_key("x"), row_key("x "));
    }

    /// Rows copied from a token-topk shard and from a duplicate keep every per-position value.
    #[test]
    fn token_topk_rows_are_assembled_in_row_order() {
        let topk = |rows: &[(u32, usize)]| {
            let mut t = TokenTopk::empty(2, true);
            for &(base, positions) in rows {
                let mut one = TokenTopk::empty(2, true);
                one.offsets = vec![0, positions];
                for p in 0..positions as u32 {
                    one.token_ids.push(base + p);
                    one.topk_ids.extend([base + p, base + p + 1]);
                    one.topk_logprobs.extend([-0.1 * p as f32, -2.0]);
                    one.tail_logprob.push(-3.0);
                    one.log_partition.push(base as f32);
                }
                one.samples = Some(Samples {
                    offsets: (0..=positions).collect(),
                    ids: (0..positions as u32).map(|p| base + p).collect(),
                    counts: vec![1; positions],
                });
                t.extend(&one);
            }
            t
        };
        let data = |texts: &[&str], t: TokenTopk| ShardData {
            ids: texts.iter().map(|t| t.to_string()).collect(),
            texts: texts.iter().map(|t| t.to_string()).collect(),
            tokens: texts.iter().map(|_| 2).collect(),
            truncated: texts.iter().map(|_| false).collect(),
            values: OutputValues::TokenTopk(t),
        };
        let (src, own) = (fp("source"), fp("own"));
        let mut meta = tests_support::meta(crate::spec::Dtype::F32, 2);
        meta.device_seconds = 2.0;
        let source = data(&["old", "older"], topk(&[(100, 2), (200, 3)]));
        let taken = Taken::new(&meta, &source, &[1, 0]);
        assert_eq!(
            taken.data.texts,
            ["older", "old"],
            "only the rows asked, in that order"
        );
        let gathered = Gathered {
            shards: [(src.clone(), taken)].into_iter().collect(),
        };
        // Rows: new, copy of "older", duplicate of "new", "gone" whose source text differs.
        let texts = ["new", "older", "new", "gone"];
        let sources = vec![
            None,
            Some(Source {
                shard: src.clone(),
                row: 1,
            }),
            Some(Source {
                shard: own.clone(),
                row: 0,
            }),
            Some(Source { shard: src, row: 0 }),
        ];
        let plans = gathered.plan(&texts, &sources, &own);
        assert_eq!(
            plans,
            [Plan::Fresh(0), Plan::Copy, Plan::Same(0), Plan::Fresh(1)]
        );
        let fresh = data(&["new", "gone"], topk(&[(10, 1), (20, 2)]));
        meta.device_seconds = 1.0;
        let ids = texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let (meta, out, reuse) =
            assemble(&gathered, &sources, &plans, meta, ids.clone(), ids, fresh);
        assert_eq!(reuse.rows, 2);
        assert!(
            (reuse.seconds - (1.0 + 0.5)).abs() < 1e-9,
            "{}",
            reuse.seconds
        );
        assert_eq!(meta.rows, 4);
        let OutputValues::TokenTopk(t) = out.values else {
            panic!()
        };
        assert_eq!(t.offsets, [0, 1, 4, 5, 7]);
        assert_eq!(t.token_ids, [10, 200, 201, 202, 10, 20, 21]);
        assert_eq!(t.topk_ids[2..4], [200, 201]);
        assert_eq!(
            t.log_partition,
            [10.0, 200.0, 200.0, 200.0, 10.0, 20.0, 20.0]
        );
        let s = t.samples.unwrap();
        assert_eq!(s.offsets, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(s.ids, t.token_ids);
    }
}
