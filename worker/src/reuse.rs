//! The worker's side of row reuse ([`distill_cache::rows`]): the rows of a staged shard whose outputs
//! the cache holds already are copied, the teacher labels only the rest, and the shard is committed
//! whole.

use crate::Result;
use distill_cache::corpus::{Row, Shard};
use distill_cache::layout::ShardKey;
use distill_cache::rows::{self, Gathered, Plan, Reuse, Source};
use distill_cache::store::Location;
use distill_teacher::pass::LabeledShard;

/// What a shard copies, kept while its fresh rows are labeled.
#[derive(Debug)]
pub struct Reused {
    whole: Shard,
    sources: Vec<Option<Source>>,
    gathered: Gathered,
    plans: Vec<Plan>,
}

/// Splits a staged shard into the rows the teacher labels (a shard of the same identity) and, when
/// any row is copied, what it copies. Source shards gone from the cache are passed over: their rows
/// are labeled.
pub async fn split(
    store: &Location,
    key: &ShardKey,
    shard: Shard,
    sources: Vec<Option<Source>>,
) -> Result<(Shard, Option<Reused>)> {
    if sources.is_empty() {
        return Ok((shard, None));
    }
    let gathered = rows::gather(store, key, &sources).await?;
    let texts: Vec<&str> = shard.rows.iter().map(|r| r.text.as_str()).collect();
    let plans = gathered.plan(&texts, &sources, &shard.fingerprint);
    if plans.iter().all(|p| matches!(p, Plan::Fresh(_))) {
        return Ok((shard, None));
    }
    let fresh: Vec<Row> = plans
        .iter()
        .zip(&shard.rows)
        .filter(|(p, _)| matches!(p, Plan::Fresh(_)))
        .map(|(_, r)| r.clone())
        .collect();
    let part = Shard {
        rows: fresh,
        ..shard.clone()
    };
    let reused = Reused {
        whole: shard,
        sources,
        gathered,
        plans,
    };
    Ok((part, Some(reused)))
}

impl Reused {
    /// The whole shard, from its fresh part as the teacher labeled it: the shard, its outputs, and
    /// what copying saved.
    pub fn assemble(self, fresh: LabeledShard) -> (Shard, LabeledShard, Reuse) {
        let ids = self.whole.rows.iter().map(|r| r.id.clone()).collect();
        let texts = self.whole.rows.iter().map(|r| r.text.clone()).collect();
        let fresh_tokens = fresh.meta.tokens;
        let (meta, data, reuse) = rows::assemble(
            &self.gathered,
            &self.sources,
            &self.plans,
            fresh.meta,
            ids,
            texts,
            fresh.data,
        );
        // Copied rows count as their tokens, unpadded: the ledger's padding efficiency stays that
        // of the teacher's batches over the shard.
        let padded_tokens = fresh.padded_tokens + (meta.tokens - fresh_tokens);
        let labeled = LabeledShard {
            meta,
            data,
            padded_tokens,
        };
        (self.whole, labeled, reuse)
    }
}
