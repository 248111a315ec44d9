//! The Parquet format of a cached shard (schema version 1). `docs/cache-format.md` documents it for
//! users; this module is its only implementation.
//!
//! Columns, one row per labeled corpus row, in corpus order:
//!
//! | column      | type                                        | meaning                                   |
//! |-------------|---------------------------------------------|-------------------------------------------|
//! | `id`        | utf8                                        | the corpus's own id                       |
//! | `text`      | utf8                                        | the text as read                          |
//! | `tokens`    | int32                                       | tokens the teacher saw (after truncation) |
//! | `truncated` | bool                                        | whether the text was cut to fit           |
//! | `embedding` | fixed_size_list<float32 or float16, dim>    | output kind `embeddings`                  |
//! | `logits`    | fixed_size_list<float32 or float16, labels> | output kind `logits`                      |
//!
//! Key-value metadata (all strings) carries the teacher, output spec, fingerprints, counts and cost;
//! see [`ShardMeta`]. Later output kinds (per-token outputs of decoder teachers) add columns and
//! metadata keys under the same schema version only if old readers can ignore them.

use crate::fingerprint::{Fingerprint, Hasher};
use crate::model_dir::TeacherInfo;
use crate::{CacheError, Result};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, Int32Array,
    RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Storage type of the output values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?}: use f32 or f16")),
        }
    }
}

/// Which per-example output a shard holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Embeddings,
    Logits,
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embeddings" | "embedding" => Ok(Self::Embeddings),
            "logits" => Ok(Self::Logits),
            _ => Err(format!("unknown output {s:?}: use embeddings or logits")),
        }
    }
}

impl OutputKind {
    /// The column holding the values.
    pub fn column(self) -> &'static str {
        match self {
            Self::Embeddings => "embedding",
            Self::Logits => "logits",
        }
    }
}

/// What is stored per example. Its fingerprint is part of every shard's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub dtype: Dtype,
}

impl OutputSpec {
    pub fn fingerprint(&self) -> Fingerprint {
        Hasher::new("distill.output.v1")
            .str(&serde_json::to_string(self).expect("serialisable"))
            .clone()
            .finish()
    }
}

/// Everything a shard's key-value metadata records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub schema_version: u32,
    pub producer: String,
    pub teacher: TeacherInfo,
    pub output: OutputSpec,
    pub output_fingerprint: Fingerprint,
    pub shard_fingerprint: Fingerprint,
    /// The corpus it was first produced from, and its index there (informational).
    pub corpus: String,
    pub shard_index: u64,
    pub rows: u64,
    pub rejected_rows: u64,
    pub truncated_rows: u64,
    /// Real tokens the teacher processed (no padding).
    pub tokens: u64,
    /// Seconds of the device spent on the teacher forward passes of this shard.
    pub device_seconds: f64,
    pub device: String,
    pub created_unix: u64,
}

const KEYS: &[&str] = &[
    "distill.schema_version",
    "distill.producer",
    "distill.teacher",
    "distill.teacher_fingerprint",
    "distill.output_spec",
    "distill.output_fingerprint",
    "distill.shard_fingerprint",
    "distill.corpus",
    "distill.shard_index",
    "distill.rows",
    "distill.rejected_rows",
    "distill.truncated_rows",
    "distill.tokens",
    "distill.device_seconds",
    "distill.device",
    "distill.created_unix",
];

impl ShardMeta {
    fn to_kv(&self) -> Vec<(String, String)> {
        let values = [
            self.schema_version.to_string(),
            self.producer.clone(),
            serde_json::to_string(&self.teacher).expect("serialisable"),
            self.teacher.fingerprint.to_string(),
            serde_json::to_string(&self.output).expect("serialisable"),
            self.output_fingerprint.to_string(),
            self.shard_fingerprint.to_string(),
            self.corpus.clone(),
            self.shard_index.to_string(),
            self.rows.to_string(),
            self.rejected_rows.to_string(),
            self.truncated_rows.to_string(),
            self.tokens.to_string(),
            format!("{:.6}", self.device_seconds),
            self.device.clone(),
            self.created_unix.to_string(),
        ];
        KEYS.iter().map(|k| k.to_string()).zip(values).collect()
    }

    fn from_kv(path: &str, kv: &[parquet::file::metadata::KeyValue]) -> Result<Self> {
        let get = |k: &str| -> Result<&str> {
            kv.iter()
                .find(|e| e.key == k)
                .and_then(|e| e.value.as_deref())
                .ok_or_else(|| CacheError::Shard {
                    path: path.to_owned(),
                    reason: format!("metadata key {k} is missing"),
                })
        };
        let bad = |k: &str, e: &dyn std::fmt::Display| CacheError::Shard {
            path: path.to_owned(),
            reason: format!("metadata key {k}: {e}"),
        };
        let num = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|e| bad(k, &e)) };
        let fp = |k: &str| -> Result<Fingerprint> {
            Fingerprint::parse(get(k)?).ok_or_else(|| bad(k, &"not a fingerprint"))
        };
        let schema_version = num("distill.schema_version")? as u32;
        if schema_version != crate::SCHEMA_VERSION {
            return Err(CacheError::Shard {
                path: path.to_owned(),
                reason: format!(
                    "schema version {schema_version}; this distill reads version {}",
                    crate::SCHEMA_VERSION
                ),
            });
        }
        Ok(Self {
            schema_version,
            producer: get("distill.producer")?.to_owned(),
            teacher: serde_json::from_str(get("distill.teacher")?)
                .map_err(|e| bad("distill.teacher", &e))?,
            output: serde_json::from_str(get("distill.output_spec")?)
                .map_err(|e| bad("distill.output_spec", &e))?,
            output_fingerprint: fp("distill.output_fingerprint")?,
            shard_fingerprint: fp("distill.shard_fingerprint")?,
            corpus: get("distill.corpus")?.to_owned(),
            shard_index: num("distill.shard_index")?,
            rows: num("distill.rows")?,
            rejected_rows: num("distill.rejected_rows")?,
            truncated_rows: num("distill.truncated_rows")?,
            tokens: num("distill.tokens")?,
            device_seconds: get("distill.device_seconds")?
                .parse()
                .map_err(|e| bad("distill.device_seconds", &e))?,
            device: get("distill.device")?.to_owned(),
            created_unix: num("distill.created_unix")?,
        })
    }
}

/// The rows of one shard with the teacher's outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardData {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    pub tokens: Vec<u32>,
    pub truncated: Vec<bool>,
    /// Row-major, `rows × width`, widened to f32 when stored as f16.
    pub values: Vec<f32>,
    pub width: usize,
}

impl ShardData {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// The output vector of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// The Arrow schema of a shard.
pub fn arrow_schema(spec: &OutputSpec, width: usize) -> Schema {
    let item = match spec.dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
    };
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("tokens", DataType::Int32, false),
        Field::new("truncated", DataType::Boolean, false),
        Field::new(
            spec.kind.column(),
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), width as i32),
            false,
        ),
    ])
}

/// Encodes a shard as one Parquet file (bytes), ready for a single atomic put.
pub fn encode(meta: &ShardMeta, data: &ShardData) -> Result<bytes::Bytes> {
    let n = data.rows();
    assert!(data.texts.len() == n && data.tokens.len() == n && data.truncated.len() == n);
    assert_eq!(
        data.values.len(),
        n * data.width,
        "values must be rows × width"
    );
    let schema = Arc::new(arrow_schema(&meta.output, data.width));
    let values: ArrayRef = match meta.output.dtype {
        Dtype::F32 => Arc::new(Float32Array::from(data.values.clone())),
        Dtype::F16 => Arc::new(Float16Array::from(
            data.values
                .iter()
                .map(|v| half::f16::from_f32(*v))
                .collect::<Vec<_>>(),
        )),
    };
    let DataType::FixedSizeList(item, _) = schema.field(4).data_type().clone() else {
        unreachable!()
    };
    let list = FixedSizeListArray::try_new(item, data.width as i32, values, None)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&data.ids)),
        Arc::new(StringArray::from_iter_values(&data.texts)),
        Arc::new(Int32Array::from_iter_values(
            data.tokens.iter().map(|t| *t as i32),
        )),
        Arc::new(BooleanArray::from(data.truncated.clone())),
        Arc::new(list),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let kv = meta
        .to_kv()
        .into_iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(kv))
        .set_created_by(crate::PRODUCER.to_owned())
        .build();
    let perr = |source| CacheError::Parquet {
        path: "<new shard>".into(),
        source,
    };
    let mut w = parquet::arrow::ArrowWriter::try_new(
        Vec::with_capacity(n * (data.width * 4 + 128)),
        schema,
        Some(props),
    )
    .map_err(perr)?;
    w.write(&batch).map_err(perr)?;
    Ok(bytes::Bytes::from(w.into_inner().map_err(perr)?))
}

/// Reads only the metadata of an encoded shard's footer.
pub fn decode_meta(
    path: &str,
    footer_kv: Option<&Vec<parquet::file::metadata::KeyValue>>,
) -> Result<ShardMeta> {
    let kv = footer_kv.ok_or_else(|| CacheError::Shard {
        path: path.to_owned(),
        reason: "no key-value metadata: not a distill shard".into(),
    })?;
    ShardMeta::from_kv(path, kv)
}

/// Decodes a whole shard (metadata and rows) from its bytes.
pub fn decode(path: &str, bytes: bytes::Bytes) -> Result<(ShardMeta, ShardData)> {
    use arrow_array::cast::AsArray;
    let perr = |source| CacheError::Parquet {
        path: path.to_owned(),
        source,
    };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(perr)?;
    let meta = decode_meta(
        path,
        builder.metadata().file_metadata().key_value_metadata(),
    )?;
    let reader = builder.build().map_err(perr)?;
    let bad = |reason: String| CacheError::Shard {
        path: path.to_owned(),
        reason,
    };
    let mut data = ShardData {
        ids: vec![],
        texts: vec![],
        tokens: vec![],
        truncated: vec![],
        values: vec![],
        width: 0,
    };
    for batch in reader {
        let batch = batch?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("column {name} is missing")))
        };
        data.ids.extend(
            col("id")?
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_owned()),
        );
        data.texts.extend(
            col("text")?
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_owned()),
        );
        data.tokens.extend(
            col("tokens")?
                .as_primitive::<arrow_array::types::Int32Type>()
                .values()
                .iter()
                .map(|v| *v as u32),
        );
        data.truncated.extend(
            col("truncated")?
                .as_boolean()
                .iter()
                .map(|b| b.unwrap_or(false)),
        );
        let list = col(meta.output.kind.column())?;
        let list = list.as_fixed_size_list();
        data.width = list.value_length() as usize;
        let values = list.values();
        match values.data_type() {
            DataType::Float32 => data.values.extend_from_slice(
                values
                    .as_primitive::<arrow_array::types::Float32Type>()
                    .values(),
            ),
            DataType::Float16 => data.values.extend(
                values
                    .as_primitive::<arrow_array::types::Float16Type>()
                    .values()
                    .iter()
                    .map(|v| v.to_f32()),
            ),
            other => return Err(bad(format!("output column has type {other}"))),
        }
    }
    if data.rows() as u64 != meta.rows {
        return Err(bad(format!(
            "metadata says {} rows, file holds {}",
            meta.rows,
            data.rows()
        )));
    }
    Ok((meta, data))
}

/// Sample values for this crate's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::model_dir::{Head, Pooling};

    pub(crate) fn data(rows: usize) -> ShardData {
        ShardData {
            ids: (0..rows).map(|i| format!("id{i}")).collect(),
            texts: (0..rows).map(|i| format!("text {i}")).collect(),
            tokens: vec![4; rows],
            truncated: vec![false; rows],
            values: (0..rows * 3).map(|i| i as f32 * 0.5).collect(),
            width: 3,
        }
    }

    pub(crate) fn meta(dtype: Dtype, rows: u64) -> ShardMeta {
        let output = OutputSpec {
            kind: OutputKind::Embeddings,
            dtype,
        };
        ShardMeta {
            schema_version: crate::SCHEMA_VERSION,
            producer: crate::PRODUCER.into(),
            teacher: TeacherInfo {
                fingerprint: Hasher::new("t").finish(),
                source: "test".into(),
                architecture: "BertModel".into(),
                head: Head::Embedding {
                    pooling: Pooling::Mean,
                    normalize: true,
                    dim: 3,
                },
                max_seq_length: 16,
                dtype: "f32".into(),
            },
            output,
            output_fingerprint: output.fingerprint(),
            shard_fingerprint: Hasher::new("s").finish(),
            corpus: "c.jsonl".into(),
            shard_index: 0,
            rows,
            rejected_rows: 0,
            truncated_rows: 1,
            tokens: 9,
            device_seconds: 0.25,
            device: "cpu".into(),
            created_unix: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::meta as sample_meta;
    use super::*;

    #[test]
    fn roundtrip_f32_and_f16() {
        let data = ShardData {
            ids: vec!["a".into(), "b".into()],
            texts: vec!["x".into(), "y".into()],
            tokens: vec![4, 5],
            truncated: vec![false, true],
            values: vec![0.1, -0.2, 0.3, 1.0, 0.5, -0.25],
            width: 3,
        };
        for dtype in [Dtype::F32, Dtype::F16] {
            let meta = sample_meta(dtype, 2);
            let bytes = encode(&meta, &data).unwrap();
            let (m2, d2) = decode("mem", bytes).unwrap();
            assert_eq!(m2, meta);
            assert_eq!(d2.ids, data.ids);
            assert_eq!(d2.truncated, data.truncated);
            let tol = if dtype == Dtype::F16 { 1e-3 } else { 0.0 };
            for (a, b) in d2.values.iter().zip(&data.values) {
                assert!((a - b).abs() <= tol, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn output_fingerprint_depends_on_spec() {
        let a = OutputSpec {
            kind: OutputKind::Embeddings,
            dtype: Dtype::F32,
        }
        .fingerprint();
        let b = OutputSpec {
            kind: OutputKind::Embeddings,
            dtype: Dtype::F16,
        }
        .fingerprint();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_row_count_is_refused() {
        let data = ShardData {
            ids: vec!["a".into()],
            texts: vec!["x".into()],
            tokens: vec![1],
            truncated: vec![false],
            values: vec![0.0; 3],
            width: 3,
        };
        let bytes = encode(&sample_meta(Dtype::F32, 2), &data).unwrap();
        let err = decode("s.parquet", bytes).unwrap_err().to_string();
        assert!(err.contains("s.parquet") && err.contains("2 rows"), "{err}");
    }
}
