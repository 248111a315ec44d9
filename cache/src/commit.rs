//! Publishing and reading cached shards.
//!
//! The commit protocol, per shard:
//!
//! 1. if the shard has rejects, write `<shard>.rejects.jsonl` (plain put: its content is a function of
//!    the shard's content, so concurrent writers write the same bytes);
//! 2. publish the complete Parquet file with one conditional put (`PutMode::Create`). That put *is* the
//!    commit: it either makes the whole file visible or nothing. If another writer committed first, the
//!    store answers "already exists" and this writer's work is dropped — both produced the same labels
//!    for the same content, so the cache holds exactly one copy.
//!
//! A writer killed at any point leaves either no shard file or a complete one; never a part. (A rejects
//! record without its shard file is not a result: readers only look at shard files.)

use crate::corpus::Reject;
use crate::format::{self, ShardData, ShardMeta};
use crate::layout::ShardKey;
use crate::store::{describe_store_error, get_bounded, Location, MAX_OBJECT_BYTES};
use crate::{CacheError, Result};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This writer's file is the shard; `bytes` were written.
    Committed { bytes: u64 },
    /// Another writer had committed the same shard first; nothing was written.
    AlreadyPresent,
}

fn store_err(
    loc: &Location,
    path: &object_store::path::Path,
    e: object_store::Error,
) -> CacheError {
    CacheError::Store {
        url: loc.display(path),
        reason: describe_store_error(&e),
    }
}

/// Writes `bytes` at `rel` unless something is there already. Returns whether this call wrote it.
pub async fn put_if_absent(loc: &Location, rel: &str, bytes: bytes::Bytes) -> Result<bool> {
    let path = loc.child(rel);
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match loc
        .store
        .put_opts(&path, PutPayload::from(bytes), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(false),
        Err(e) => Err(store_err(loc, &path, e)),
    }
}

/// Commits one shard: its rejects record (if any), then the Parquet file, atomically.
pub async fn commit_shard(
    loc: &Location,
    key: &ShardKey,
    meta: &ShardMeta,
    data: &ShardData,
    rejects: &[Reject],
) -> Result<CommitOutcome> {
    debug_assert_eq!(meta.shard_fingerprint, key.shard);
    commit_encoded(loc, key, format::encode(meta, data)?, rejects).await
}

/// [`commit_shard`] of a shard already encoded by [`format::encode`] (a worker encodes on a blocking
/// thread, off the async runtime, and publishes here).
pub async fn commit_encoded(
    loc: &Location,
    key: &ShardKey,
    parquet: bytes::Bytes,
    rejects: &[Reject],
) -> Result<CommitOutcome> {
    if !rejects.is_empty() {
        let mut jsonl = Vec::new();
        for r in rejects {
            serde_json::to_writer(&mut jsonl, r).expect("serialisable");
            jsonl.push(b'\n');
        }
        let path = loc.child(&key.rejects_path());
        loc.store
            .put(&path, PutPayload::from(jsonl))
            .await
            .map_err(|e| store_err(loc, &path, e))?;
    }
    let bytes = parquet.len() as u64;
    Ok(if put_if_absent(loc, &key.data_path(), parquet).await? {
        CommitOutcome::Committed { bytes }
    } else {
        CommitOutcome::AlreadyPresent
    })
}

/// The bytes read from a shard's end to find its footer in one request (a shard's footer is a few KB).
const FOOTER_GUESS: u64 = 64 * 1024;

/// The metadata of a committed shard, read from its footer only; `None` if it is not committed. One
/// store request (a read of the file's last bytes, which also gives its size) in the usual case.
pub async fn shard_meta(loc: &Location, key: &ShardKey) -> Result<Option<(ShardMeta, u64)>> {
    let path = loc.child(&key.data_path());
    let opts = object_store::GetOptions {
        range: Some(object_store::GetRange::Suffix(FOOTER_GUESS)),
        ..Default::default()
    };
    let got = match loc.store.get_opts(&path, opts).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(loc, &path, e)),
    };
    let size = got.meta.size;
    let tail = got.bytes().await.map_err(|e| store_err(loc, &path, e))?;
    let meta = meta_from_tail(loc, &path, size, tail).await?;
    // The address must agree with the content: a file copied to the wrong place is not a hit.
    if meta.shard_fingerprint != key.shard
        || meta.output_fingerprint != key.output
        || meta.teacher.fingerprint != key.teacher
    {
        return Err(CacheError::Shard {
            path: loc.display(&path),
            reason: "fingerprints in the file do not match its path: the cache was tampered with; delete this file".into(),
        });
    }
    Ok(Some((meta, size)))
}

/// A shard's metadata from the last bytes of its file, reading more from the store if the footer is
/// longer.
async fn meta_from_tail(
    loc: &Location,
    path: &object_store::path::Path,
    size: u64,
    tail: bytes::Bytes,
) -> Result<ShardMeta> {
    use parquet::errors::ParquetError;
    use parquet::file::metadata::ParquetMetaDataReader;
    let name = loc.display(path);
    let damaged = |source| CacheError::Parquet {
        path: name.clone(),
        source,
    };
    let mut reader = ParquetMetaDataReader::new();
    match catch_parquet(|| reader.try_parse_sized(&tail, size)) {
        Err(ParquetError::NeedMoreData(needed)) if (needed as u64) <= size => {
            let start = size - needed as u64;
            let more = loc
                .store
                .get_range(path, start..size)
                .await
                .map_err(|e| store_err(loc, path, e))?;
            catch_parquet(|| reader.try_parse_sized(&more, size)).map_err(damaged)?;
        }
        r => r.map_err(damaged)?,
    }
    let metadata = reader.finish().map_err(damaged)?;
    format::decode_meta(&name, metadata.file_metadata().key_value_metadata())
}

/// Runs a parse of the parquet crate, a panic in it (a damaged footer) turned into an error.
fn catch_parquet<T>(f: impl FnOnce() -> parquet::errors::Result<T>) -> parquet::errors::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|e| {
        let why = format::panic_message(e.as_ref()).to_owned();
        Err(parquet::errors::ParquetError::General(format!(
            "a damaged footer ({why})"
        )))
    })
}

/// Reads the footer metadata of a shard file of known size.
pub async fn read_meta_at(
    loc: &Location,
    path: &object_store::path::Path,
    size: u64,
) -> Result<ShardMeta> {
    let name = loc.display(path);
    let reader = crate::parquet_io::ObjectReader::new(loc.store.clone(), path.clone(), size);
    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|source| CacheError::Parquet {
            path: name.clone(),
            source,
        })?;
    format::decode_meta(
        &name,
        builder.metadata().file_metadata().key_value_metadata(),
    )
}

/// Reads a whole committed shard.
pub async fn read_shard(loc: &Location, key: &ShardKey) -> Result<(ShardMeta, ShardData)> {
    let path = loc.child(&key.data_path());
    let bytes = get_bounded(loc, &path, "shard", MAX_OBJECT_BYTES)
        .await?
        .ok_or_else(|| CacheError::Store {
            url: loc.display(&path),
            reason: "not found: the shard is not in the cache".into(),
        })?;
    format::decode(&loc.display(&path), bytes)
}

/// The `text` column of a committed shard alone (its other columns are not read).
pub async fn read_texts(loc: &Location, key: &ShardKey) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let path = loc.child(&key.data_path());
    let name = loc.display(&path);
    let damaged = |source| CacheError::Parquet {
        path: name.clone(),
        source,
    };
    let size = loc
        .store
        .head(&path)
        .await
        .map_err(|e| store_err(loc, &path, e))?
        .size;
    let reader = crate::parquet_io::ObjectReader::new(loc.store.clone(), path.clone(), size);
    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(damaged)?;
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["text"]);
    let batches: Vec<arrow_array::RecordBatch> = builder
        .with_projection(mask)
        .build()
        .map_err(damaged)?
        .try_collect()
        .await
        .map_err(damaged)?;
    let mut texts = Vec::new();
    for b in &batches {
        let col = b.column_by_name("text").ok_or_else(|| CacheError::Shard {
            path: name.clone(),
            reason: "no text column".into(),
        })?;
        let strings = col
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .ok_or_else(|| CacheError::Shard {
                path: name.clone(),
                reason: format!("text column is {}, not utf8", col.data_type()),
            })?;
        texts.extend(strings.iter().map(|t| t.unwrap_or_default().to_owned()));
    }
    Ok(texts)
}

/// Reads the rejects record of a shard (empty if it has none).
pub async fn read_rejects(loc: &Location, key: &ShardKey) -> Result<Vec<Reject>> {
    let path = loc.child(&key.rejects_path());
    let Some(bytes) = get_bounded(loc, &path, "rejects record", MAX_OBJECT_BYTES).await? else {
        return Ok(vec![]);
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| CacheError::Shard {
                path: loc.display(&path),
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Hasher;
    use crate::spec::Dtype;

    fn key() -> ShardKey {
        let meta = crate::format::tests_support::meta(Dtype::F32, 1);
        ShardKey {
            teacher: meta.teacher.fingerprint.clone(),
            output: meta.output_fingerprint.clone(),
            shard: meta.shard_fingerprint.clone(),
        }
    }

    #[tokio::test]
    async fn second_commit_finds_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let loc = crate::store::open(dir.path().to_str().unwrap(), true).unwrap();
        let meta = crate::format::tests_support::meta(Dtype::F32, 1);
        let data = crate::format::tests_support::data(1);
        let k = key();
        assert!(shard_meta(&loc, &k).await.unwrap().is_none());
        let rejects = vec![Reject {
            line: 3,
            id: None,
            reason: "empty text".into(),
            file: None,
        }];
        assert!(matches!(
            commit_shard(&loc, &k, &meta, &data, &rejects)
                .await
                .unwrap(),
            CommitOutcome::Committed { .. }
        ));
        assert_eq!(
            commit_shard(&loc, &k, &meta, &data, &rejects)
                .await
                .unwrap(),
            CommitOutcome::AlreadyPresent
        );
        let (m, _) = shard_meta(&loc, &k).await.unwrap().unwrap();
        assert_eq!(m, meta);
        assert_eq!(read_rejects(&loc, &k).await.unwrap(), rejects);
        let (_, d) = read_shard(&loc, &k).await.unwrap();
        assert_eq!(d, data);
    }

    #[tokio::test]
    async fn a_file_at_the_wrong_address_is_refused() {
        let loc = crate::store::open("memory://commit-wrong-address", true).unwrap();
        let meta = crate::format::tests_support::meta(Dtype::F32, 1);
        let data = crate::format::tests_support::data(1);
        let mut k = key();
        k.shard = Hasher::new("other").finish();
        let mut m = meta.clone();
        m.shard_fingerprint = k.shard.clone();
        commit_shard(&loc, &k, &m, &data, &[]).await.unwrap();
        let mut wrong = key();
        wrong.shard = k.shard.clone();
        wrong.output = Hasher::new("x").finish();
        // Copy the file to another output's address.
        let bytes = loc
            .store
            .get(&loc.child(&k.data_path()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        loc.store
            .put(&loc.child(&wrong.data_path()), bytes.into())
            .await
            .unwrap();
        let err = shard_meta(&loc, &wrong).await.unwrap_err().to_string();
        assert!(err.contains("do not match"), "{err}");
    }
}
