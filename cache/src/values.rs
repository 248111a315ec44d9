//! What a teacher produced for a shard's rows: one values type per output kind, each with one Arrow
//! codec (the columns after `id`, `text`, `tokens`, `truncated`; see `docs/cache-format.md`).
//!
//! - [`Vectors`] — `embeddings` and `logits`: one `fixed_size_list<float>[width]` per row;
//! - [`TokenTopk`] — `token_topk`: per row its `token_ids`, and per position the top-k of the
//!   next-token distribution (`topk_ids`, `topk_logprobs`), the mass outside it (`tail_logprob`), the
//!   raw logits' logsumexp (`log_partition`) and optionally sampled tokens (`sample_ids`,
//!   `sample_counts`). Position `t` of a row predicts its token `t + 1`.
//!
//! Values are held in memory as f32 (f16 storage is widened on reading) in flat arrays with offsets,
//! so a shard is a handful of allocations whatever its size.

use crate::spec::{Dtype, OutputSpec, TopkSpec};
use crate::{CacheError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int32Type, UInt16Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Int32Array, ListArray,
    RecordBatch, UInt16Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use std::sync::Arc;

/// The teacher's outputs for a shard's rows, in row order.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputValues {
    Vectors(Vectors),
    TokenTopk(TokenTopk),
}

/// One vector per row (embeddings or class logits), row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vectors {
    pub width: usize,
    /// `rows × width` values.
    pub values: Vec<f32>,
}

impl Vectors {
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    /// The vector of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// Sampled next tokens of each position: distinct ids with their counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Start of each position's samples in `ids`/`counts`; `positions + 1` entries.
    pub offsets: Vec<usize>,
    pub ids: Vec<u32>,
    pub counts: Vec<u16>,
}

/// Per-token next-token distributions, kept as top-k + tail (+ samples).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenTopk {
    pub k: usize,
    /// Start of each row's positions in the per-position arrays; `rows + 1` entries.
    pub offsets: Vec<usize>,
    /// The token ids each row was scored on (one per position).
    pub token_ids: Vec<u32>,
    /// `positions × k`, per position sorted by descending log-probability.
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    /// log(1 − Σ top-k probability), computed before any rounding; −∞ when the top-k hold it all.
    pub tail_logprob: Vec<f32>,
    /// logsumexp of the raw logits.
    pub log_partition: Vec<f32>,
    pub samples: Option<Samples>,
}

impl TokenTopk {
    /// No rows yet.
    pub fn empty(k: usize, with_samples: bool) -> Self {
        Self {
            k,
            offsets: vec![0],
            token_ids: vec![],
            topk_ids: vec![],
            topk_logprobs: vec![],
            tail_logprob: vec![],
            log_partition: vec![],
            samples: with_samples.then(|| Samples {
                offsets: vec![0],
                ..Default::default()
            }),
        }
    }

    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn positions(&self) -> usize {
        self.token_ids.len()
    }

    /// The positions of row `i`.
    pub fn row_positions(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Row `i` alone.
    pub fn row(&self, i: usize) -> TokenTopk {
        let p = self.row_positions(i);
        let k = self.k;
        TokenTopk {
            k,
            offsets: vec![0, p.len()],
            token_ids: self.token_ids[p.clone()].to_vec(),
            topk_ids: self.topk_ids[p.start * k..p.end * k].to_vec(),
            topk_logprobs: self.topk_logprobs[p.start * k..p.end * k].to_vec(),
            tail_logprob: self.tail_logprob[p.clone()].to_vec(),
            log_partition: self.log_partition[p.clone()].to_vec(),
            samples: self.samples.as_ref().map(|s| {
                let (a, b) = (s.offsets[p.start], s.offsets[p.end]);
                Samples {
                    offsets: s.offsets[p.start..=p.end].iter().map(|o| o - a).collect(),
                    ids: s.ids[a..b].to_vec(),
                    counts: s.counts[a..b].to_vec(),
                }
            }),
        }
    }

    /// Appends the rows of `other` (same `k`, same sampling).
    pub fn extend(&mut self, other: &TokenTopk) {
        assert_eq!(self.k, other.k, "top-k values of different k");
        let base = self.positions();
        self.offsets
            .extend(other.offsets[1..].iter().map(|o| o + base));
        self.token_ids.extend_from_slice(&other.token_ids);
        self.topk_ids.extend_from_slice(&other.topk_ids);
        self.topk_logprobs.extend_from_slice(&other.topk_logprobs);
        self.tail_logprob.extend_from_slice(&other.tail_logprob);
        self.log_partition.extend_from_slice(&other.log_partition);
        match (&mut self.samples, &other.samples) {
            (Some(a), Some(b)) => {
                let base = a.ids.len();
                a.offsets.extend(b.offsets[1..].iter().map(|o| o + base));
                a.ids.extend_from_slice(&b.ids);
                a.counts.extend_from_slice(&b.counts);
            }
            (None, None) => {}
            _ => panic!("top-k values with and without samples"),
        }
    }
}

impl OutputValues {
    pub fn rows(&self) -> usize {
        match self {
            Self::Vectors(v) => v.rows(),
            Self::TokenTopk(t) => t.rows(),
        }
    }

    /// Empty values of the shape a spec stores (`width` for per-example kinds).
    pub fn empty(spec: &OutputSpec, width: usize) -> Self {
        match spec {
            OutputSpec::TokenTopk(t) => {
                Self::TokenTopk(TokenTopk::empty(t.top_k as usize, t.samples > 0))
            }
            _ => Self::Vectors(Vectors {
                width,
                values: vec![],
            }),
        }
    }
}

fn float_type(dtype: Dtype) -> DataType {
    match dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
    }
}

fn floats(dtype: Dtype, values: &[f32]) -> ArrayRef {
    match dtype {
        Dtype::F32 => Arc::new(Float32Array::from(values.to_vec())),
        Dtype::F16 => Arc::new(Float16Array::from(
            values
                .iter()
                .map(|v| half::f16::from_f32(*v))
                .collect::<Vec<_>>(),
        )),
    }
}

fn item(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

fn fixed_list(dt: DataType, width: usize) -> DataType {
    DataType::FixedSizeList(item(dt), width as i32)
}

fn list(dt: DataType) -> DataType {
    DataType::List(item(dt))
}

/// The Arrow fields of the value columns a spec stores (`width` for per-example kinds).
pub fn fields(spec: &OutputSpec, width: usize) -> Vec<Field> {
    match spec {
        OutputSpec::Embeddings { dtype } => vec![Field::new(
            "embedding",
            fixed_list(float_type(*dtype), width),
            false,
        )],
        OutputSpec::Logits { dtype, .. } => vec![Field::new(
            "logits",
            fixed_list(float_type(*dtype), width),
            false,
        )],
        OutputSpec::TokenTopk(t) => {
            let k = t.top_k as usize;
            let mut f = vec![
                Field::new("token_ids", list(DataType::Int32), false),
                Field::new("topk_ids", list(fixed_list(DataType::Int32, k)), false),
                Field::new(
                    "topk_logprobs",
                    list(fixed_list(float_type(t.dtype), k)),
                    false,
                ),
                Field::new("tail_logprob", list(DataType::Float32), false),
                Field::new("log_partition", list(DataType::Float32), false),
            ];
            if t.samples > 0 {
                f.push(Field::new("sample_ids", list(list(DataType::Int32)), false));
                f.push(Field::new(
                    "sample_counts",
                    list(list(DataType::UInt16)),
                    false,
                ));
            }
            f
        }
        OutputSpec::Unknown { .. } => vec![],
    }
}

fn offsets(o: &[usize]) -> Result<OffsetBuffer<i32>> {
    let v: Vec<i32> = o
        .iter()
        .map(|&x| i32::try_from(x))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| CacheError::Shard {
            path: "<new shard>".into(),
            reason: "more than 2^31 values in one shard: use a smaller --shard-size".into(),
        })?;
    Ok(OffsetBuffer::new(ScalarBuffer::from(v)))
}

fn list_array(inner: ArrayRef, o: &[usize]) -> Result<ArrayRef> {
    Ok(Arc::new(ListArray::try_new(
        item(inner.data_type().clone()),
        offsets(o)?,
        inner,
        None,
    )?))
}

fn ids(v: &[u32]) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(v.iter().map(|&x| x as i32)))
}

/// Encodes values into the columns [`fields`] names. Panics on values that do not fit the spec
/// (a programming error: the teacher produced them for this spec).
pub fn encode(spec: &OutputSpec, values: &OutputValues) -> Result<Vec<ArrayRef>> {
    match (spec, values) {
        (
            OutputSpec::Embeddings { dtype } | OutputSpec::Logits { dtype, .. },
            OutputValues::Vectors(v),
        ) => {
            let list = FixedSizeListArray::try_new(
                item(float_type(*dtype)),
                v.width as i32,
                floats(*dtype, &v.values),
                None,
            )?;
            Ok(vec![Arc::new(list)])
        }
        (OutputSpec::TokenTopk(t), OutputValues::TokenTopk(v)) => encode_topk(t, v),
        _ => panic!(
            "values of another kind than the output spec {}",
            spec.describe()
        ),
    }
}

fn encode_topk(spec: &TopkSpec, v: &TokenTopk) -> Result<Vec<ArrayRef>> {
    let k = spec.top_k as usize;
    assert_eq!(v.k, k, "top-k values of another k than the spec");
    let n = v.positions();
    assert!(v.topk_ids.len() == n * k && v.topk_logprobs.len() == n * k);
    assert!(v.tail_logprob.len() == n && v.log_partition.len() == n);
    let per_position = |inner: ArrayRef| -> Result<ArrayRef> {
        let fixed =
            FixedSizeListArray::try_new(item(inner.data_type().clone()), k as i32, inner, None)?;
        list_array(Arc::new(fixed), &v.offsets)
    };
    let mut cols = vec![
        list_array(ids(&v.token_ids), &v.offsets)?,
        per_position(ids(&v.topk_ids))?,
        per_position(floats(spec.dtype, &v.topk_logprobs))?,
        list_array(
            Arc::new(Float32Array::from(v.tail_logprob.clone())),
            &v.offsets,
        )?,
        list_array(
            Arc::new(Float32Array::from(v.log_partition.clone())),
            &v.offsets,
        )?,
    ];
    if spec.samples > 0 {
        let s = v
            .samples
            .as_ref()
            .expect("an entry with samples has sampled values");
        assert_eq!(s.offsets.len(), n + 1);
        let by_position = |inner: ArrayRef| list_array(inner, &s.offsets);
        cols.push(list_array(by_position(ids(&s.ids))?, &v.offsets)?);
        cols.push(list_array(
            by_position(Arc::new(UInt16Array::from(s.counts.clone())))?,
            &v.offsets,
        )?);
    }
    Ok(cols)
}

/// Decodes the value columns of one record batch.
pub fn decode(path: &str, spec: &OutputSpec, batch: &RecordBatch) -> Result<OutputValues> {
    let bad = |reason: String| CacheError::Shard {
        path: path.to_owned(),
        reason,
    };
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| bad(format!("column {name} is missing")))
    };
    let widen = |values: &ArrayRef| -> Result<Vec<f32>> {
        match values.data_type() {
            DataType::Float32 => Ok(values.as_primitive::<Float32Type>().values().to_vec()),
            DataType::Float16 => Ok(values
                .as_primitive::<Float16Type>()
                .values()
                .iter()
                .map(|v| v.to_f32())
                .collect()),
            other => Err(bad(format!("float column has type {other}"))),
        }
    };
    let list_parts = |name: &str| -> Result<(Vec<usize>, ArrayRef)> {
        let c = col(name)?;
        let l = c
            .as_list_opt::<i32>()
            .ok_or_else(|| bad(format!("column {name} is not a list")))?;
        let first = l.offsets()[0] as usize;
        let offs: Vec<usize> = l.offsets().iter().map(|&o| o as usize - first).collect();
        let last = *offs.last().unwrap_or(&0);
        Ok((offs, l.values().slice(first, last)))
    };
    let int_ids = |a: &ArrayRef| -> Result<Vec<u32>> {
        a.as_primitive_opt::<Int32Type>()
            .map(|p| p.values().iter().map(|&x| x as u32).collect())
            .ok_or_else(|| bad("id column is not int32".into()))
    };
    match spec {
        OutputSpec::Embeddings { .. } | OutputSpec::Logits { .. } => {
            let name = if matches!(spec, OutputSpec::Embeddings { .. }) {
                "embedding"
            } else {
                "logits"
            };
            let c = col(name)?;
            let list = c
                .as_fixed_size_list_opt()
                .ok_or_else(|| bad(format!("column {name} is not a fixed-size list")))?;
            Ok(OutputValues::Vectors(Vectors {
                width: list.value_length() as usize,
                values: widen(list.values())?,
            }))
        }
        OutputSpec::TokenTopk(t) => {
            let k = t.top_k as usize;
            let (offsets, token_ids) = list_parts("token_ids")?;
            let per_position = |name: &str| -> Result<ArrayRef> {
                let (o, inner) = list_parts(name)?;
                if o != offsets {
                    return Err(bad(format!("column {name} has other row lengths than token_ids")));
                }
                let fixed = inner
                    .as_fixed_size_list_opt()
                    .filter(|f| f.value_length() as usize == k)
                    .ok_or_else(|| bad(format!("column {name} is not a list of {k} values per position")))?;
                Ok(fixed.values().slice(0, inner.len() * k))
            };
            let scalars = |name: &str| -> Result<Vec<f32>> {
                let (o, inner) = list_parts(name)?;
                if o != offsets {
                    return Err(bad(format!("column {name} has other row lengths than token_ids")));
                }
                widen(&inner)
            };
            let samples = if t.samples > 0 {
                let nested = |name: &str| -> Result<(Vec<usize>, ArrayRef)> {
                    let (o, inner) = list_parts(name)?;
                    if o != offsets {
                        return Err(bad(format!("column {name} has other row lengths than token_ids")));
                    }
                    let l = inner
                        .as_list_opt::<i32>()
                        .ok_or_else(|| bad(format!("column {name} is not a list of lists")))?;
                    let first = l.offsets()[0] as usize;
                    let offs: Vec<usize> = l.offsets().iter().map(|&x| x as usize - first).collect();
                    let last = *offs.last().unwrap_or(&0);
                    Ok((offs, l.values().slice(first, last)))
                };
                let (so, sids) = nested("sample_ids")?;
                let (co, counts) = nested("sample_counts")?;
                if so != co {
                    return Err(bad("sample_ids and sample_counts differ in length".into()));
                }
                let counts = counts
                    .as_primitive_opt::<UInt16Type>()
                    .ok_or_else(|| bad("sample_counts is not uint16".into()))?
                    .values()
                    .to_vec();
                Some(Samples {
                    offsets: so,
                    ids: int_ids(&sids)?,
                    counts,
                })
            } else {
                None
            };
            Ok(OutputValues::TokenTopk(TokenTopk {
                k,
                token_ids: int_ids(&token_ids)?,
                topk_ids: int_ids(&per_position("topk_ids")?)?,
                topk_logprobs: widen(&per_position("topk_logprobs")?)?,
                tail_logprob: scalars("tail_logprob")?,
                log_partition: scalars("log_partition")?,
                offsets,
                samples,
            }))
        }
        OutputSpec::Unknown { kind, .. } => Err(bad(format!(
            "output kind {kind:?} is not known to this distill ({}): it was written by a newer release",
            crate::PRODUCER
        ))),
    }
}
