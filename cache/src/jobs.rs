//! Job records: the coordinator's durable state, kept in the cache store itself (no database).
//!
//! ```text
//! v1/jobs/<job>/job.json              the accepted job: spec, teacher and output fingerprints (written once)
//! v1/jobs/<job>/inputs/<index>.json.zst   one shard's input rows, staged for workers; deleted once done
//! v1/jobs/<job>/failed/<index>.json   a shard that failed every attempt, with its last error
//! v1/jobs/<job>/cancelled.json        written when a job is cancelled
//! v1/jobs/<job>/result.json           the finished job: state, ledger, failed shards (written once)
//! ```
//!
//! Which shards are done is not recorded here: a shard is done exactly when its Parquet file is in
//! the cache (the worker's conditional put, [`crate::commit`]). A coordinator restarted on any machine
//! re-reads the job record, re-plans the corpus (deterministic), finds every committed shard in the
//! cache and leases only the rest: nothing lost, nothing labeled twice.

use crate::catalog::get_json;
use crate::commit::put_if_absent;
use crate::corpus::{Reject, Row, Shard};
use crate::fingerprint::Fingerprint;
use crate::rows::Source;
use crate::store::{describe_store_error, get_bounded, zstd_bounded, Location, MAX_OBJECT_BYTES};
use crate::{CacheError, Result};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

/// Folder of every job record.
pub fn jobs_dir() -> String {
    format!("v{}/jobs", crate::SCHEMA_VERSION)
}

pub fn job_dir(job: &str) -> String {
    format!("{}/{job}", jobs_dir())
}

pub fn job_path(job: &str) -> String {
    format!("{}/job.json", job_dir(job))
}

pub fn inputs_dir(job: &str) -> String {
    format!("{}/inputs", job_dir(job))
}

pub fn input_path(job: &str, index: u64) -> String {
    format!("{}/{index:08}.json.zst", inputs_dir(job))
}

pub fn failed_path(job: &str, index: u64) -> String {
    format!("{}/failed/{index:08}.json", job_dir(job))
}

pub fn cancelled_path(job: &str) -> String {
    format!("{}/cancelled.json", job_dir(job))
}

pub fn result_path(job: &str) -> String {
    format!("{}/result.json", job_dir(job))
}

/// One shard's input, as staged for a worker: exactly what the teacher pass needs to label and commit
/// it, so workers never read (or seek in) the corpus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StagedShard {
    pub index: u64,
    pub fingerprint: Fingerprint,
    pub progress: u64,
    /// `(line, id, text)` per row.
    pub rows: Vec<(u64, String, String)>,
    pub rejects: Vec<Reject>,
    /// Per row, where its outputs are already ([`crate::rows`]); empty: every row is labeled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Option<Source>>,
}

impl StagedShard {
    pub fn from_shard(s: &Shard, sources: &[Option<Source>]) -> Self {
        Self {
            index: s.index,
            fingerprint: s.fingerprint.clone(),
            progress: s.progress,
            rows: s
                .rows
                .iter()
                .map(|r| (r.line, r.id.clone(), r.text.clone()))
                .collect(),
            rejects: s.rejects.clone(),
            sources: if sources.iter().any(Option::is_some) {
                sources.to_vec()
            } else {
                vec![]
            },
        }
    }

    pub fn into_shard(self) -> Shard {
        Shard {
            index: self.index,
            progress: self.progress,
            rows: self
                .rows
                .into_iter()
                .map(|(line, id, text)| Row { line, id, text })
                .collect(),
            rejects: self.rejects,
            fingerprint: self.fingerprint,
        }
    }
}

/// Writes a staged input (overwriting: its content is a function of the shard and of the cache).
pub async fn write_input(
    loc: &Location,
    job: &str,
    shard: &Shard,
    sources: &[Option<Source>],
) -> Result<String> {
    let rel = input_path(job, shard.index);
    let json = serde_json::to_vec(&StagedShard::from_shard(shard, sources)).expect("serialisable");
    let bytes = zstd::encode_all(json.as_slice(), 1).map_err(|e| CacheError::Store {
        url: loc.display(&loc.child(&rel)),
        reason: format!("compressing: {e}"),
    })?;
    put(loc, &rel, bytes.into()).await?;
    Ok(rel)
}

/// Reads a staged input and checks it is the shard the lease names: the shard, and where its rows'
/// outputs are already (empty: nowhere).
pub async fn read_input(
    loc: &Location,
    rel: &str,
    expect: &Fingerprint,
) -> Result<(Shard, Vec<Option<Source>>)> {
    let path = loc.child(rel);
    let url = loc.display(&path);
    let bad = |reason: String| CacheError::Shard {
        path: url.clone(),
        reason,
    };
    let bytes = get_bounded(loc, &path, "staged input", MAX_OBJECT_BYTES)
        .await?
        .ok_or_else(|| {
            bad("not found: the job's inputs were deleted (finished or cancelled)".into())
        })?;
    let json =
        zstd_bounded(&bytes, MAX_OBJECT_BYTES).map_err(|e| bad(format!("decompressing: {e}")))?;
    let mut staged: StagedShard = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    if &staged.fingerprint != expect {
        return Err(bad(format!(
            "holds shard {} but the lease names {}: the job's inputs were overwritten",
            staged.fingerprint.short(),
            expect.short()
        )));
    }
    let sources = std::mem::take(&mut staged.sources);
    if !sources.is_empty() && sources.len() != staged.rows.len() {
        return Err(bad(format!(
            "{} sources for {} rows",
            sources.len(),
            staged.rows.len()
        )));
    }
    Ok((staged.into_shard(), sources))
}

/// Writes a JSON record (overwriting).
pub async fn put_json<T: Serialize>(loc: &Location, rel: &str, value: &T) -> Result<()> {
    put(
        loc,
        rel,
        serde_json::to_vec_pretty(value)
            .expect("serialisable")
            .into(),
    )
    .await
}

/// Writes a JSON record unless one is there. Returns whether this call wrote it.
pub async fn create_json<T: Serialize>(loc: &Location, rel: &str, value: &T) -> Result<bool> {
    put_if_absent(
        loc,
        rel,
        serde_json::to_vec_pretty(value)
            .expect("serialisable")
            .into(),
    )
    .await
}

/// Reads a JSON record; `None` if absent.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    loc: &Location,
    rel: &str,
) -> Result<Option<T>> {
    get_json(loc, rel).await
}

/// Ids of every job with a record in the store.
pub async fn list_jobs(loc: &Location) -> Result<Vec<String>> {
    let prefix = loc.child(&jobs_dir());
    let listed = loc
        .store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| CacheError::Store {
            url: loc.display(&prefix),
            reason: describe_store_error(&e),
        })?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect())
}

/// Indices of the shards recorded as failed.
pub async fn failed_shards(loc: &Location, job: &str) -> Result<Vec<u64>> {
    let prefix = loc.child(&format!("{}/failed", job_dir(job)));
    let objects = crate::catalog::list_under(loc, &prefix).await?;
    Ok(objects
        .iter()
        .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
        .collect())
}

/// Deletes every object under a job's inputs (best effort is the caller's choice).
pub async fn delete_inputs(loc: &Location, job: &str) -> Result<()> {
    let prefix = loc.child(&inputs_dir(job));
    for o in crate::catalog::list_under(loc, &prefix).await? {
        delete(loc, &o.location).await?;
    }
    Ok(())
}

/// Deletes one object of the store (absent is fine).
pub async fn delete_rel(loc: &Location, rel: &str) -> Result<()> {
    delete(loc, &loc.child(rel)).await
}

async fn delete(loc: &Location, path: &object_store::path::Path) -> Result<()> {
    match loc.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(CacheError::Store {
            url: loc.display(path),
            reason: describe_store_error(&e),
        }),
    }
}

async fn put(loc: &Location, rel: &str, bytes: bytes::Bytes) -> Result<()> {
    let path = loc.child(rel);
    loc.store
        .put(&path, object_store::PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| CacheError::Store {
            url: loc.display(&path),
            reason: describe_store_error(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_input_round_trips_and_is_checked_against_the_lease() {
        let loc = crate::store::open("memory://jobs-test/x", true).unwrap();
        let shard = Shard {
            index: 7,
            progress: 99,
            rows: vec![Row {
                line: 3,
                id: "a".into(),
                text: "héllo".into(),
            }],
            rejects: vec![Reject {
                line: 4,
                id: None,
                reason: "empty text".into(),
                file: None,
            }],
            fingerprint: crate::fingerprint::Hasher::new("t").finish(),
        };
        let rel = write_input(&loc, "job-1", &shard, &[]).await.unwrap();
        assert_eq!(rel, "v1/jobs/job-1/inputs/00000007.json.zst");
        let (back, sources) = read_input(&loc, &rel, &shard.fingerprint).await.unwrap();
        assert!(sources.is_empty());
        assert_eq!((back.index, back.progress), (7, 99));
        assert_eq!(back.rows, shard.rows);
        assert_eq!(back.rejects, shard.rejects);
        let other = crate::fingerprint::Hasher::new("u").finish();
        let err = read_input(&loc, &rel, &other)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inputs/00000007.json.zst") && err.contains("lease names"),
            "{err}"
        );
        assert_eq!(list_jobs(&loc).await.unwrap(), vec!["job-1".to_string()]);
        delete_inputs(&loc, "job-1").await.unwrap();
        assert!(read_input(&loc, &rel, &shard.fingerprint).await.is_err());
    }
}
