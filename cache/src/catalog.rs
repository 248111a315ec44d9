//! What a cache store holds: per (teacher, output) the shards, rows, bytes and device-seconds, and the
//! corpora whose shard lists were recorded. Also the corpus manifest, which lets later tasks find "the
//! labels of this corpus" from its fingerprint without re-reading the corpus.

use crate::commit::{put_if_absent, read_meta_at};
use crate::fingerprint::{Fingerprint, Hasher};
use crate::layout;
use crate::model_dir::TeacherInfo;
use crate::spec::OutputSpec;
use crate::store::{describe_store_error, get_bounded, Location, MAX_OBJECT_BYTES};
use crate::{CacheError, Result};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

/// One shard of a corpus, in corpus order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestShard {
    pub index: u64,
    pub fingerprint: Fingerprint,
    pub rows: u64,
    pub rejected_rows: u64,
}

/// The shard list of one corpus under one teacher and output spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusManifest {
    pub schema_version: u32,
    /// Fingerprint of the shard size and the shard fingerprints in order.
    pub corpus_fingerprint: Fingerprint,
    pub corpus: String,
    pub shard_size: u64,
    pub teacher: Fingerprint,
    pub output: Fingerprint,
    pub rows: u64,
    pub rejected_rows: u64,
    pub shards: Vec<ManifestShard>,
}

/// The corpus fingerprint: shard size and shard fingerprints, in order.
pub fn corpus_fingerprint(shard_size: u64, shards: &[ManifestShard]) -> Fingerprint {
    let mut h = Hasher::new("distill.corpus.v1");
    h.u64(shard_size);
    for s in shards {
        h.str(s.fingerprint.as_str());
    }
    h.finish()
}

/// Records a corpus manifest (once; an identical corpus recorded earlier is kept). Returns its path.
pub async fn write_manifest(loc: &Location, m: &CorpusManifest) -> Result<String> {
    let rel = layout::corpus_manifest_path(&m.teacher, &m.output, &m.corpus_fingerprint);
    put_if_absent(
        loc,
        &rel,
        serde_json::to_vec_pretty(m).expect("serialisable").into(),
    )
    .await?;
    Ok(rel)
}

/// Writes `teacher.json` and `output.json` for a (teacher, output) pair, once.
pub async fn write_descriptions(
    loc: &Location,
    teacher: &TeacherInfo,
    output: &OutputSpec,
) -> Result<()> {
    let t = &teacher.fingerprint;
    put_if_absent(
        loc,
        &layout::teacher_path(t),
        serde_json::to_vec_pretty(teacher)
            .expect("serialisable")
            .into(),
    )
    .await?;
    put_if_absent(
        loc,
        &layout::output_path(t, &output.fingerprint()),
        serde_json::to_vec_pretty(output)
            .expect("serialisable")
            .into(),
    )
    .await?;
    Ok(())
}

/// One (teacher, output) entry of a cache.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogEntry {
    pub teacher: Option<TeacherInfo>,
    pub teacher_fingerprint: Fingerprint,
    pub output: Option<OutputSpec>,
    pub output_fingerprint: Fingerprint,
    pub corpora: Vec<String>,
    pub shards: u64,
    pub rows: u64,
    pub rejected_rows: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub device_seconds: f64,
}

/// Reads a JSON object of the store; `None` if it does not exist.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    loc: &Location,
    rel: &str,
) -> Result<Option<T>> {
    let path = loc.child(rel);
    let Some(b) = get_bounded(loc, &path, "record", MAX_OBJECT_BYTES).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| CacheError::Shard {
            path: loc.display(&path),
            reason: e.to_string(),
        })
}

/// Every object under `prefix` (a path of the store).
pub async fn list_under(
    loc: &Location,
    prefix: &object_store::path::Path,
) -> Result<Vec<object_store::ObjectMeta>> {
    loc.store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| CacheError::Store {
            url: loc.url.clone(),
            reason: describe_store_error(&e),
        })
}

/// Reads a teacher's description (`teacher.json`), which names where the teacher was loaded from.
pub async fn read_teacher(loc: &Location, teacher: &Fingerprint) -> Result<TeacherInfo> {
    let rel = layout::teacher_path(teacher);
    get_json(loc, &rel).await?.ok_or_else(|| CacheError::Store {
        url: loc.display(&loc.child(&rel)),
        reason: "missing: the cache entry has no teacher description".into(),
    })
}

/// Reads the output spec of an entry (`output.json`; `None` if the entry has none).
pub async fn read_output(
    loc: &Location,
    teacher: &Fingerprint,
    output: &Fingerprint,
) -> Result<Option<OutputSpec>> {
    get_json(loc, &layout::output_path(teacher, output)).await
}

/// Reads a corpus manifest.
pub async fn read_manifest(
    loc: &Location,
    teacher: &Fingerprint,
    output: &Fingerprint,
    corpus: &Fingerprint,
) -> Result<Option<CorpusManifest>> {
    get_json(loc, &layout::corpus_manifest_path(teacher, output, corpus)).await
}

/// Lists every (teacher, output) entry of the store, reading each shard's footer for its counts.
pub async fn list(loc: &Location) -> Result<Vec<CatalogEntry>> {
    let root = loc.child(&layout::version_root());
    let objects = list_under(loc, &root).await?;
    let mut groups: std::collections::BTreeMap<
        (Fingerprint, Fingerprint),
        (Vec<object_store::ObjectMeta>, Vec<String>),
    > = Default::default();
    let root_prefix = format!("{}/", root.as_ref());
    for o in objects {
        let rel = o
            .location
            .as_ref()
            .strip_prefix(root_prefix.as_str())
            .unwrap_or(o.location.as_ref())
            .to_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        let (Some(t), Some(out)) = (
            parts.first().and_then(|s| Fingerprint::parse(s)),
            parts.get(1).and_then(|s| Fingerprint::parse(s)),
        ) else {
            continue;
        };
        let g = groups.entry((t, out)).or_default();
        match (parts.get(2), parts.get(3)) {
            (Some(&"shards"), Some(name)) if name.ends_with(".parquet") => g.0.push(o),
            (Some(&"corpora"), Some(name)) if name.ends_with(".json") => g.1.push(rel.clone()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for ((t, o), (shards, corpora)) in groups {
        let teacher: Option<TeacherInfo> = get_json(loc, &layout::teacher_path(&t)).await?;
        let output: Option<OutputSpec> = get_json(loc, &layout::output_path(&t, &o)).await?;
        let metas: Vec<_> = futures::stream::iter(shards.iter())
            .map(|s| read_meta_at(loc, &s.location, s.size))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut names = Vec::new();
        for c in &corpora {
            if let Some(m) =
                get_json::<CorpusManifest>(loc, &format!("{}/{c}", layout::version_root())).await?
            {
                names.push(m.corpus);
            }
        }
        names.sort();
        names.dedup();
        out.push(CatalogEntry {
            teacher,
            teacher_fingerprint: t,
            output,
            output_fingerprint: o,
            corpora: names,
            shards: metas.len() as u64,
            rows: metas.iter().map(|m| m.rows).sum(),
            rejected_rows: metas.iter().map(|m| m.rejected_rows).sum(),
            tokens: metas.iter().map(|m| m.tokens).sum(),
            bytes: shards.iter().map(|s| s.size).sum(),
            device_seconds: metas.iter().map(|m| m.device_seconds).sum(),
        });
    }
    Ok(out)
}

/// Every corpus manifest the store holds, with the output spec of its entry (`None` if the entry has
/// no `output.json`).
pub async fn manifests(loc: &Location) -> Result<Vec<(CorpusManifest, Option<OutputSpec>)>> {
    let root = loc.child(&layout::version_root());
    let objects = list_under(loc, &root).await?;
    let root_prefix = format!("{}/", root.as_ref());
    let mut out = Vec::new();
    for o in objects {
        let Some(rel) = o.location.as_ref().strip_prefix(root_prefix.as_str()) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.len() != 4 || parts[2] != "corpora" || !parts[3].ends_with(".json") {
            continue;
        }
        let rel = format!("{}/{rel}", layout::version_root());
        if let Some(m) = get_json::<CorpusManifest>(loc, &rel).await? {
            let spec =
                get_json::<OutputSpec>(loc, &layout::output_path(&m.teacher, &m.output)).await?;
            out.push((m, spec));
        }
    }
    Ok(out)
}
