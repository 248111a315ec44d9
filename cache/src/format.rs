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
//! | …           | the output kind's columns, see [`crate::values`]                                        |
//!
//! Key-value metadata (all strings) carries the teacher, output spec, fingerprints, counts and cost;
//! see [`ShardMeta`]. New output kinds add columns and metadata under the same schema version; a
//! reader lists a kind it does not know ([`OutputSpec::Unknown`]) and reads none of its values.

use crate::fingerprint::Fingerprint;
use crate::model_dir::TeacherInfo;
use crate::spec::{Dtype, OutputKind, OutputSpec, PromptSpec, SpecError, TopkSpec, DEFAULT_TOP_K};
use crate::values::{self, OutputValues, Vectors};
use crate::{CacheError, Result};
use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a user asks for (`--output`, `--dtype`, `--top-k`, …; 0 means "the default"), before it is
/// resolved against a teacher into an [`OutputSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRequest {
    pub kind: OutputKind,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    #[serde(default)]
    pub top_k: u32,
    #[serde(default)]
    pub samples: u32,
    #[serde(default)]
    pub window: u32,
    #[serde(default)]
    pub stride: u32,
    /// `logits` from a decoder: the prompt that makes it a classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptSpec>,
}

fn default_dtype() -> Dtype {
    Dtype::F32
}

impl OutputRequest {
    /// A per-example request (embeddings or logits).
    pub fn simple(kind: OutputKind, dtype: Dtype) -> Self {
        Self {
            kind,
            dtype,
            top_k: 0,
            samples: 0,
            window: 0,
            stride: 0,
            prompt: None,
        }
    }

    /// The spec for a teacher, with defaults filled in (`top_k` 20, `window` the teacher's context,
    /// `stride` half the window). An error names the flag and what to do.
    pub fn resolve(&self, teacher: &crate::model_dir::ModelDir) -> Result<OutputSpec, SpecError> {
        use crate::model_dir::Head;
        match (&teacher.head, &self.prompt) {
            (Head::CausalLm { .. }, Some(p)) => {
                if self.kind != OutputKind::Logits {
                    return Err(SpecError::PromptNeedsLogits);
                }
                p.validate()?;
            }
            (_, Some(_)) => return Err(SpecError::PromptNeedsDecoder(teacher.location.clone())),
            _ => crate::model_dir::check_output(&teacher.head, &teacher.location, self.kind)?,
        }
        if self.kind != OutputKind::TokenTopk {
            for (flag, v) in [
                ("top_k", self.top_k),
                ("samples", self.samples),
                ("window", self.window),
                ("stride", self.stride),
            ] {
                if v != 0 {
                    return Err(SpecError::TopkOnly(flag));
                }
            }
        }
        Ok(match self.kind {
            OutputKind::Embeddings => OutputSpec::Embeddings { dtype: self.dtype },
            OutputKind::Logits => OutputSpec::Logits {
                dtype: self.dtype,
                prompt: self.prompt.clone().map(Box::new),
            },
            OutputKind::TokenTopk => {
                let context = teacher.max_seq_length as u32;
                let window = if self.window == 0 {
                    context
                } else {
                    self.window
                };
                if window > context {
                    return Err(SpecError::WindowTooLong {
                        window,
                        teacher: teacher.location.clone(),
                        context: context as usize,
                    });
                }
                let spec = TopkSpec {
                    dtype: self.dtype,
                    top_k: if self.top_k == 0 {
                        DEFAULT_TOP_K
                    } else {
                        self.top_k
                    },
                    samples: self.samples,
                    window,
                    stride: if self.stride == 0 {
                        (window / 2).max(1)
                    } else {
                        self.stride
                    },
                };
                spec.validate(teacher.vocab_size)
                    .map_err(|e| e.for_teacher(&teacher.location))?;
                OutputSpec::TokenTopk(spec)
            }
        })
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
    /// Real tokens of the shard's rows as the teacher reads them (no padding; copied rows included).
    pub tokens: u64,
    /// What the shard's rows cost the teacher in device-seconds: its forward passes, plus each row
    /// copied from another shard's share of that shard's ([`crate::rows`]).
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
    pub values: OutputValues,
}

impl ShardData {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// The per-example vectors (embeddings, logits); `None` for per-token values.
    pub fn vectors(&self) -> Option<&Vectors> {
        match &self.values {
            OutputValues::Vectors(v) => Some(v),
            OutputValues::TokenTopk(_) => None,
        }
    }

    /// The per-example vectors, or an error naming the shard for per-token values.
    pub fn expect_vectors(&self, shard: &str) -> Result<&Vectors> {
        self.vectors().ok_or_else(|| CacheError::Shard {
            path: shard.to_owned(),
            reason: "holds per-token values, not one vector per row".into(),
        })
    }
}

/// The Arrow schema of a shard (`width`: values per row of per-example kinds).
pub fn arrow_schema(spec: &OutputSpec, width: usize) -> Schema {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("tokens", DataType::Int32, false),
        Field::new("truncated", DataType::Boolean, false),
    ];
    fields.extend(values::fields(spec, width));
    Schema::new(fields)
}

/// Encodes a shard as one Parquet file (bytes), ready for a single atomic put.
pub fn encode(meta: &ShardMeta, data: &ShardData) -> Result<bytes::Bytes> {
    let n = data.rows();
    assert!(data.texts.len() == n && data.tokens.len() == n && data.truncated.len() == n);
    assert_eq!(data.values.rows(), n, "one output per row");
    let width = data.vectors().map(|v| v.width).unwrap_or(0);
    let schema = Arc::new(arrow_schema(&meta.output, width));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&data.ids)),
        Arc::new(StringArray::from_iter_values(&data.texts)),
        Arc::new(Int32Array::from_iter_values(
            data.tokens.iter().map(|t| *t as i32),
        )),
        Arc::new(BooleanArray::from(data.truncated.clone())),
    ];
    columns.extend(values::encode(&meta.output, &data.values)?);
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
        Vec::with_capacity(n * (width * 4 + 128)),
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

/// What a caught panic said.
pub(crate) fn panic_message(e: &(dyn std::any::Any + Send)) -> &str {
    e.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| e.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}

/// Runs the Parquet reader on untrusted bytes: a panic inside it (the parquet crate asserts on some
/// damaged footers, e.g. a column chunk of negative offset) becomes an error naming the file.
pub(crate) fn guarded<T>(path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|e| {
        Err(CacheError::Shard {
            path: path.to_owned(),
            reason: format!("a damaged Parquet file ({})", panic_message(e.as_ref())),
        })
    })
}

/// Decodes a whole shard (metadata and rows) from its bytes; a damaged file is an error, never a
/// panic.
pub fn decode(path: &str, bytes: bytes::Bytes) -> Result<(ShardMeta, ShardData)> {
    guarded(path, || decode_unguarded(path, bytes))
}

fn decode_unguarded(path: &str, bytes: bytes::Bytes) -> Result<(ShardMeta, ShardData)> {
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
    let bad = |reason: String| CacheError::Shard {
        path: path.to_owned(),
        reason,
    };
    // One batch for the whole file, so list columns decode without stitching.
    let reader = builder
        .with_batch_size((meta.rows as usize).max(1))
        .build()
        .map_err(perr)?;
    let mut data = ShardData {
        ids: vec![],
        texts: vec![],
        tokens: vec![],
        truncated: vec![],
        values: OutputValues::empty(&meta.output, 0),
    };
    let mut batches = 0;
    for batch in reader {
        let batch = batch?;
        batches += 1;
        if batches > 1 {
            return Err(bad("more rows than its metadata says".into()));
        }
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
        data.values = values::decode(path, &meta.output, &batch)?;
    }
    if data.rows() as u64 != meta.rows || data.values.rows() != data.rows() {
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
    use crate::fingerprint::Hasher;
    use crate::model_dir::{Head, Pooling};

    pub(crate) fn data(rows: usize) -> ShardData {
        ShardData {
            ids: (0..rows).map(|i| format!("id{i}")).collect(),
            texts: (0..rows).map(|i| format!("text {i}")).collect(),
            tokens: vec![4; rows],
            truncated: vec![false; rows],
            values: OutputValues::Vectors(Vectors {
                width: 3,
                values: (0..rows * 3).map(|i| i as f32 * 0.5).collect(),
            }),
        }
    }

    pub(crate) fn meta_with(output: OutputSpec, rows: u64) -> ShardMeta {
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
                tokenizer: None,
            },
            output_fingerprint: output.fingerprint(),
            output,
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

    pub(crate) fn meta(dtype: Dtype, rows: u64) -> ShardMeta {
        meta_with(OutputSpec::Embeddings { dtype }, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{meta as sample_meta, meta_with};
    use super::*;
    use crate::values::{Samples, TokenTopk};

    #[test]
    fn roundtrip_f32_and_f16() {
        let values = vec![0.1, -0.2, 0.3, 1.0, 0.5, -0.25];
        let data = ShardData {
            ids: vec!["a".into(), "b".into()],
            texts: vec!["x".into(), "y".into()],
            tokens: vec![4, 5],
            truncated: vec![false, true],
            values: OutputValues::Vectors(Vectors {
                width: 3,
                values: values.clone(),
            }),
        };
        for dtype in [Dtype::F32, Dtype::F16] {
            let meta = sample_meta(dtype, 2);
            let bytes = encode(&meta, &data).unwrap();
            let (m2, d2) = decode("mem", bytes).unwrap();
            assert_eq!(m2, meta);
            assert_eq!(d2.ids, data.ids);
            assert_eq!(d2.truncated, data.truncated);
            let tol = if dtype == Dtype::F16 { 1e-3 } else { 0.0 };
            let got = d2.vectors().unwrap();
            assert_eq!(got.width, 3);
            for (a, b) in got.values.iter().zip(&values) {
                assert!((a - b).abs() <= tol, "{a} vs {b}");
            }
        }
    }

    /// The specs of the first release serialise as they did then: their fingerprints are the
    /// addresses of every cache entry it wrote (see tests/data/compat-0.1.0).
    #[test]
    fn first_release_output_fingerprints_are_unchanged() {
        let cases = [
            (
                OutputSpec::Embeddings { dtype: Dtype::F32 },
                r#"{"kind":"embeddings","dtype":"f32"}"#,
                "26052538ee7fdf2d9765ae98f2c0398a",
            ),
            (
                OutputSpec::Embeddings { dtype: Dtype::F16 },
                r#"{"kind":"embeddings","dtype":"f16"}"#,
                "d26be282dd03820813af14cd76cc0b3f",
            ),
            (
                OutputSpec::Logits {
                    dtype: Dtype::F32,
                    prompt: None,
                },
                r#"{"kind":"logits","dtype":"f32"}"#,
                "ea270e68d27489f5b1fc21b9c6f18369",
            ),
        ];
        for (spec, json, fp) in cases {
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            assert_eq!(spec.fingerprint().as_str(), fp, "{json}");
            assert_eq!(serde_json::from_str::<OutputSpec>(json).unwrap(), spec);
        }
    }

    #[test]
    fn an_unknown_kind_is_kept_and_listed_not_misread() {
        let json = r#"{"kind":"future_kind","dtype":"f32","extra":[1,2]}"#;
        let spec: OutputSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.kind(), None);
        assert_eq!(spec.kind_name(), "future_kind");
        assert!(spec.describe().contains("unknown"));
        // Serialised back as it was (so its fingerprint is the one its writer computed).
        let back: serde_json::Value = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    fn topk_values(k: usize, samples: bool) -> TokenTopk {
        // Two rows of 3 and 2 positions.
        let n = 5;
        TokenTopk {
            k,
            offsets: vec![0, 3, 5],
            token_ids: vec![7, 8, 9, 1, 2],
            topk_ids: (0..n * k).map(|i| (i * 3 % 50) as u32).collect(),
            topk_logprobs: (0..n * k).map(|i| -0.25 * (i % k) as f32 - 0.5).collect(),
            tail_logprob: vec![-3.0, -2.5, f32::NEG_INFINITY, -4.0, -1.0],
            log_partition: vec![10.0, 11.5, 9.25, 12.0, 8.0],
            samples: samples.then(|| Samples {
                offsets: vec![0, 2, 3, 3, 5, 6],
                ids: vec![4, 5, 6, 7, 8, 9],
                counts: vec![3, 1, 4, 2, 2, 4],
            }),
        }
    }

    #[test]
    fn token_topk_roundtrip_with_and_without_samples() {
        for (dtype, samples) in [(Dtype::F32, false), (Dtype::F16, true)] {
            let spec = OutputSpec::TokenTopk(TopkSpec {
                dtype,
                top_k: 3,
                samples: if samples { 4 } else { 0 },
                window: 8,
                stride: 4,
            });
            let v = topk_values(3, samples);
            let data = ShardData {
                ids: vec!["a".into(), "b".into()],
                texts: vec!["x y z".into(), "u v".into()],
                tokens: vec![3, 2],
                truncated: vec![false, false],
                values: OutputValues::TokenTopk(v.clone()),
            };
            let meta = meta_with(spec.clone(), 2);
            let (m2, d2) = decode("mem", encode(&meta, &data).unwrap()).unwrap();
            assert_eq!(m2.output, spec);
            let OutputValues::TokenTopk(got) = d2.values else {
                panic!("kind changed")
            };
            assert_eq!(got.offsets, v.offsets);
            assert_eq!(got.token_ids, v.token_ids);
            assert_eq!(got.topk_ids, v.topk_ids);
            assert_eq!(got.tail_logprob[..2], v.tail_logprob[..2]);
            assert!(got.tail_logprob[2].is_infinite());
            assert_eq!(got.log_partition, v.log_partition);
            assert_eq!(got.samples, v.samples);
            let tol = if dtype == Dtype::F16 { 2e-3 } else { 0.0 };
            for (a, b) in got.topk_logprobs.iter().zip(&v.topk_logprobs) {
                assert!((a - b).abs() <= tol, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_shard_of_an_unknown_kind_reads_its_metadata_but_not_its_values() {
        // The footer as a newer release would write it.
        let mut meta = sample_meta(Dtype::F32, 1);
        meta.output = serde_json::from_str(r#"{"kind":"future_kind"}"#).unwrap();
        let kv: Vec<_> = meta
            .to_kv()
            .into_iter()
            .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
            .collect();
        let m = decode_meta("s.parquet", Some(&kv)).unwrap();
        assert_eq!(m.output.kind_name(), "future_kind");
        assert_eq!(m.rows, 1);
        let batch = RecordBatch::new_empty(Arc::new(Schema::empty()));
        let err = values::decode("s.parquet", &m.output, &batch)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("future_kind") && err.contains("newer release"),
            "{err}"
        );
    }

    #[test]
    fn output_fingerprint_depends_on_spec() {
        let a = OutputSpec::Embeddings { dtype: Dtype::F32 }.fingerprint();
        let b = OutputSpec::Embeddings { dtype: Dtype::F16 }.fingerprint();
        let topk = |k| {
            OutputSpec::TokenTopk(TopkSpec {
                dtype: Dtype::F16,
                top_k: k,
                samples: 0,
                window: 2048,
                stride: 1024,
            })
            .fingerprint()
        };
        assert_ne!(a, b);
        assert_ne!(topk(20), topk(21));
    }

    #[test]
    fn wrong_row_count_is_refused() {
        let data = tests_support::data(1);
        let bytes = encode(&sample_meta(Dtype::F32, 2), &data).unwrap();
        let err = decode("s.parquet", bytes).unwrap_err().to_string();
        assert!(err.contains("s.parquet") && err.contains("2 rows"), "{err}");
    }
}
