//! One coordinator per store: a lease kept in the store itself, taken with conditional creates only
//! (so it works the same on every object store and on a local directory) and without a clock shared
//! between machines.
//!
//! ```text
//! v1/coordinator/lease-<generation>.json   {holder, host, pid, beat, released, ttl_ms}
//! ```
//!
//! - **Take**: the highest generation `G` is read. With none, `G = 1` is created. If `G` is released,
//!   or its `beat` has not changed for `ttl` while this contender watched it (its own monotonic clock:
//!   no clock skew between machines matters), `G + 1` is created with a conditional put: of several
//!   contenders exactly one wins.
//! - **Hold**: the holder rewrites its own generation with `beat + 1` every `ttl / 4`, then checks
//!   that no higher generation exists. A holder that sees one has lost the store for good; one that
//!   has not renewed for `ttl / 2` must stop granting work until it renews (fencing: a contender only
//!   takes over after a full `ttl` without beats, so the two never act at once).
//! - **Release**: on shutdown the holder marks its generation released, and a successor takes over at
//!   once instead of after `ttl`.

use crate::commit::put_if_absent;
use crate::store::{describe_store_error, Location};
use crate::{CacheError, Result};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Folder of the lease generations.
pub fn lease_dir() -> String {
    format!("v{}/coordinator", crate::SCHEMA_VERSION)
}

fn lease_path(generation: u64) -> String {
    format!("{}/lease-{generation:012}.json", lease_dir())
}

/// One generation of the lease, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's unique id (a fresh one per process).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// Bumped by every renewal: a contender watches it change.
    pub beat: u64,
    pub released: bool,
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// `holder on host (pid N)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} on {} (pid {})", self.holder, self.host, self.pid)
    }
}

/// What a contender saw of the current generation, and since when unchanged.
#[derive(Debug, Default)]
pub struct Watch {
    seen: Option<(u64, u64, Instant)>,
}

/// The outcome of one try to take the lease.
#[derive(Debug)]
pub enum Take {
    Held(StoreLease),
    /// Another live holder has it (`generation`, its record).
    Busy(u64, LeaseRecord),
}

/// The lease, held.
#[derive(Debug)]
pub struct StoreLease {
    loc: Location,
    generation: u64,
    record: LeaseRecord,
    ttl: Duration,
    renewed: Instant,
}

fn store_err(loc: &Location, e: object_store::Error) -> CacheError {
    CacheError::Store {
        url: loc.url.clone(),
        reason: describe_store_error(&e),
    }
}

/// The highest generation in the store, if any.
async fn highest(loc: &Location) -> Result<Option<u64>> {
    let prefix = loc.child(&lease_dir());
    let metas: Vec<_> = loc
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| store_err(loc, e))?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            m.location
                .filename()?
                .strip_prefix("lease-")?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max())
}

async fn read(loc: &Location, generation: u64) -> Result<Option<LeaseRecord>> {
    crate::catalog::get_json(loc, &lease_path(generation)).await
}

async fn write(loc: &Location, generation: u64, r: &LeaseRecord) -> Result<()> {
    let path = loc.child(&lease_path(generation));
    let body = serde_json::to_vec_pretty(r).expect("serialisable");
    loc.store
        .put(&path, body.into())
        .await
        .map_err(|e| store_err(loc, e))?;
    Ok(())
}

/// Tries once to take the lease of `loc` for `holder`. Call again (with the same `watch`) while it
/// answers [`Take::Busy`]: the holder's beats are timed between calls.
pub async fn try_take(
    loc: &Location,
    holder: &str,
    ttl: Duration,
    watch: &mut Watch,
) -> Result<Take> {
    let current = highest(loc).await?;
    let next = match current {
        None => 1,
        Some(g) => {
            let Some(r) = read(loc, g).await? else {
                // Listed but gone: a holder cleaning up; look again next time.
                return Ok(Take::Busy(g, unknown_holder()));
            };
            let now = Instant::now();
            let since = match watch.seen {
                Some((sg, sb, since)) if sg == g && sb == r.beat => since,
                _ => {
                    watch.seen = Some((g, r.beat, now));
                    now
                }
            };
            if !r.released && now.duration_since(since) < ttl {
                return Ok(Take::Busy(g, r));
            }
            g + 1
        }
    };
    let record = LeaseRecord {
        holder: holder.to_owned(),
        host: hostname(),
        pid: std::process::id(),
        beat: 0,
        released: false,
        ttl_ms: ttl.as_millis() as u64,
    };
    let body = serde_json::to_vec_pretty(&record).expect("serialisable");
    if !put_if_absent(loc, &lease_path(next), body.into()).await? {
        // Another contender took this generation first.
        let r = read(loc, next).await?.unwrap_or_else(unknown_holder);
        watch.seen = Some((next, r.beat, Instant::now()));
        return Ok(Take::Busy(next, r));
    }
    // Older generations are history now (best effort: a leftover is ignored by `highest`).
    for g in 1..next {
        let _ = loc.store.delete(&loc.child(&lease_path(g))).await;
    }
    Ok(Take::Held(StoreLease {
        loc: loc.clone(),
        generation: next,
        record,
        ttl,
        renewed: Instant::now(),
    }))
}

fn unknown_holder() -> LeaseRecord {
    LeaseRecord {
        holder: "?".into(),
        host: "?".into(),
        pid: 0,
        beat: 0,
        released: false,
        ttl_ms: 0,
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Why a holder no longer holds the lease.
#[derive(Debug, thiserror::Error)]
#[error("store {url}: coordinator {by} took over this store (lease generation {generation})")]
pub struct Lost {
    pub url: String,
    pub generation: u64,
    pub by: String,
}

impl StoreLease {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Until when the holder may grant work without another renewal (`ttl / 2` after the last
    /// successful one).
    pub fn valid_until(&self) -> Instant {
        self.renewed + self.ttl / 2
    }

    /// Renews the lease. `Ok(Err(lost))` once a successor holds a higher generation (final);
    /// `Err` when the store could not be reached (the lease may still be held: try again).
    pub async fn renew(&mut self) -> Result<std::result::Result<(), Lost>> {
        self.record.beat += 1;
        write(&self.loc, self.generation, &self.record).await?;
        if let Some(g) = highest(&self.loc).await? {
            if g > self.generation {
                let by = read(&self.loc, g)
                    .await?
                    .map(|r| r.describe())
                    .unwrap_or_else(|| "?".into());
                return Ok(Err(Lost {
                    url: self.loc.url.clone(),
                    generation: g,
                    by,
                }));
            }
        }
        self.renewed = Instant::now();
        Ok(Ok(()))
    }

    /// Marks the lease released so that a successor takes over at once.
    pub async fn release(mut self) -> Result<()> {
        if matches!(highest(&self.loc).await?, Some(g) if g > self.generation) {
            return Ok(());
        }
        self.record.released = true;
        write(&self.loc, self.generation, &self.record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl() -> Duration {
        Duration::from_millis(300)
    }

    #[tokio::test]
    async fn one_holder_a_contender_waits_for_expiry_and_the_old_holder_learns_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let loc = crate::store::open(dir.path().to_str().unwrap(), true).unwrap();
        let (mut wa, mut wb) = (Watch::default(), Watch::default());
        let Take::Held(mut a) = try_take(&loc, "a", ttl(), &mut wa).await.unwrap() else {
            panic!("an empty store is free")
        };
        assert_eq!(a.generation(), 1);
        // While `a` beats, `b` stays out however long it tries.
        for _ in 0..4 {
            match try_take(&loc, "b", ttl(), &mut wb).await.unwrap() {
                Take::Busy(1, r) => assert_eq!(r.holder, "a"),
                other => panic!("{other:?}"),
            }
            a.renew().await.unwrap().unwrap();
            tokio::time::sleep(ttl() / 3).await;
        }
        // `a` stops beating (paused, partitioned): after a full ttl `b` takes generation 2.
        let b = loop {
            match try_take(&loc, "b", ttl(), &mut wb).await.unwrap() {
                Take::Held(b) => break b,
                Take::Busy(..) => tokio::time::sleep(ttl() / 5).await,
            }
        };
        assert_eq!(b.generation(), 2);
        assert!(
            a.valid_until() < Instant::now(),
            "a is fenced by its own clock"
        );
        // `a` comes back: its next renewal reports the loss, naming the successor.
        let lost = a.renew().await.unwrap().unwrap_err();
        assert_eq!(lost.generation, 2);
        assert!(lost.by.starts_with("b on "), "{}", lost.by);
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_only_one_contender_wins() {
        let dir = tempfile::tempdir().unwrap();
        let loc = crate::store::open(dir.path().to_str().unwrap(), true).unwrap();
        let long = Duration::from_secs(3600);
        let Take::Held(a) = try_take(&loc, "a", long, &mut Watch::default())
            .await
            .unwrap()
        else {
            panic!()
        };
        a.release().await.unwrap();
        let mut tries = Vec::new();
        for name in ["b", "c", "d"] {
            let loc = loc.clone();
            tries.push(tokio::spawn(async move {
                try_take(&loc, name, long, &mut Watch::default())
                    .await
                    .unwrap()
            }));
        }
        let mut held = 0;
        for t in tries {
            if let Take::Held(l) = t.await.unwrap() {
                assert_eq!(l.generation(), 2);
                held += 1;
            }
        }
        assert_eq!(held, 1);
    }
}
