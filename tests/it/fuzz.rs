//! The readers distill owns or wraps, fed mutated copies of real seed files: every input ends in a
//! value or an error, never a panic.
//!
//! Structured mutation, not coverage-guided: each target starts from a valid file made here (a tiny
//! GGUF llama, a tiny BERT directory's `config.json`, `tokenizer.json` and safetensors header, JSONL
//! corpora plain, gzip and zstd, a Parquet corpus, a gold-label file, a committed cache shard) and
//! applies seeded mutations that reach the length and count fields: bit flips, bytes set to 0x00 or
//! 0xFF, a little-endian 2^62 or 2^32−1 written over a random offset, truncation, a duplicated or
//! deleted span. A panicking input is written to `target/fuzz-crashes/` and fails the test with its
//! path. The test command runs each target for `DISTILL_FUZZ_SECONDS` (default 2) seconds;
//! `scripts/fuzz.sh` runs the campaign longer and prints the inputs tried per target.

use crate::common::*;
use distill_tasks::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One mutation of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = 0xFF,
            2 => b[at] = 0,
            3 => {
                let v: u64 = if rng.below(2) == 0 {
                    1 << 62
                } else {
                    u32::MAX as u64
                };
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    if at + k < b.len() {
                        b[at + k] = *byte;
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let span = b[at..end].to_vec();
                b.splice(at..at, span);
            }
            _ => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
        }
    }
    b
}

thread_local! {
    /// Whether this thread is running a fuzz input.
    static FUZZING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics inside third-party readers that distill catches and turns into errors (the parquet crate's
/// asserts) would print a message for each input; while a thread runs fuzz inputs the hook leaves
/// those out. Every other panic prints as usual.
fn quiet_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let third_party = info
                .location()
                .is_some_and(|l| l.file().contains("/.cargo/registry/"));
            if !(third_party && FUZZING.with(|f| f.get())) {
                default(info);
            }
        }));
    });
}

/// Runs `target` on mutations of `seed` (written to `path` first) for the time budget; a panic
/// saves the input and fails. Returns the inputs tried.
fn campaign(name: &str, seed: &[u8], path: &Path, target: &dyn Fn(&Path)) -> u64 {
    let seconds: f64 = std::env::var("DISTILL_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut rng = Rng::derive(7, name, 0);
    let mut tried = 0u64;
    let ceiling = rss_ceiling_mb();
    quiet_caught_panics();
    // The seed itself must pass.
    std::fs::write(path, seed).unwrap();
    target(path);
    while Instant::now() < until {
        let input = mutate(seed, &mut rng);
        std::fs::write(path, &input).unwrap();
        FUZZING.with(|f| f.set(true));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(path)));
        FUZZING.with(|f| f.set(false));
        let save = || {
            let dir = repo_root().join("target/fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let saved = dir.join(format!("{name}-{tried}.bin"));
            std::fs::write(&saved, &input).unwrap();
            saved
        };
        if let Err(e) = outcome {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: input {} panicked: {why}", save().display());
        }
        let peak = peak_rss_mb();
        if let Some(ceiling) = ceiling.filter(|c| peak > *c) {
            panic!(
                "{name}: input {} took the process's peak memory to {peak} MB, over the ceiling of {ceiling} MB",
                save().display()
            );
        }
        tried += 1;
    }
    let ceiling = ceiling.map(|c| format!("{c} MB")).unwrap_or("none".into());
    println!(
        "fuzz {name}: {tried} inputs tried, 0 panics, process peak RSS {} MB (ceiling {ceiling})",
        peak_rss_mb()
    );
    tried
}

/// The memory no fuzz input may take the test process past (`DISTILL_FUZZ_MAX_RSS_MB`, set by
/// `scripts/fuzz.sh`, where only fuzz targets share the process; unset in the test command, where
/// other tests' models do): every reader bounds what it allocates by the file's size and fixed
/// limits, so a crafted length field must not show up here.
fn rss_ceiling_mb() -> Option<u64> {
    std::env::var("DISTILL_FUZZ_MAX_RSS_MB")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// The process's peak resident memory so far (`VmHWM`), in MB (0 where /proc is absent).
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Reads a whole corpus (rows and rejects), whatever it holds; errors are answers.
fn read_corpus(rt: &tokio::runtime::Runtime, path: &Path, format: &str) {
    rt.block_on(async {
        let mut spec = distill_cache::corpus::CorpusSpec::new(path.to_str().unwrap());
        spec.format = Some(format.parse().unwrap());
        spec.max_row_bytes = 1 << 16;
        let Ok(mut r) = distill_cache::corpus::CorpusReader::open(&spec).await else {
            return;
        };
        while let Ok(Some(_)) = r.next_shard(64).await {}
    });
}

#[test]
fn fuzz_gguf_header_metadata_tensor_table_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let seed_path = crate::decoder::tiny_llama(dir.path(), Default::default());
    let seed = std::fs::read(&seed_path).unwrap();
    let path = dir.path().join("m.gguf");
    campaign("gguf", &seed, &path, &|p| {
        let Ok(md) = distill_cache::model_dir::ModelDir::inspect("fuzz.gguf", p) else {
            return;
        };
        let _ = distill_teacher::Teacher::load(&md, &distill_teacher::DeviceSpec::Cpu);
    });
}

#[test]
fn fuzz_hf_config_tokenizer_and_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let seed = std::fs::read(model.join(file)).unwrap();
        // safetensors: the 8-byte header length and the JSON header are what a reader trusts.
        let seed = match file {
            "model.safetensors" => seed[..seed.len().min(4096)].to_vec(),
            _ => seed,
        };
        let work = dir.path().join(format!("m-{file}"));
        copy_dir(&model, &work);
        let path = work.join(file);
        campaign(file, &seed, &path, &|_| {
            let Ok(md) = distill_cache::model_dir::ModelDir::inspect("fuzz", &work) else {
                return;
            };
            let _ = distill_teacher::Teacher::load(&md, &distill_teacher::DeviceSpec::Cpu);
        });
    }
}

#[test]
fn fuzz_corpus_readers_jsonl_gzip_zstd_and_parquet() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let jsonl = dir.path().join("seed.jsonl");
    write_corpus(&jsonl, 20);
    let plain = std::fs::read(&jsonl).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let seeds = [
        ("jsonl", "jsonl", plain.clone()),
        ("jsonl.gz", "jsonl", gz.finish().unwrap()),
        (
            "jsonl.zst",
            "jsonl",
            zstd::encode_all(plain.as_slice(), 3).unwrap(),
        ),
        ("text", "text", b"one line\ntwo lines\n\nthree\n".to_vec()),
    ];
    for (name, format, seed) in seeds {
        let path = dir.path().join(format!("c.{name}"));
        campaign(name, &seed, &path, &|p| read_corpus(&rt, p, format));
    }
    let parquet = dir.path().join("seed.parquet");
    write_parquet_corpus(&parquet);
    let seed = std::fs::read(&parquet).unwrap();
    let path = dir.path().join("c.parquet");
    campaign("parquet", &seed, &path, &|p| read_corpus(&rt, p, "parquet"));
}

#[test]
fn fuzz_gold_label_files() {
    let dir = tempfile::tempdir().unwrap();
    let seed = b"{\"id\":\"a\",\"label\":\"pos\",\"movie\":\"m1\"}\n{\"id\":7,\"label\":\"neg\",\"text\":\"t\"}\n\n{\"id\":\"c\",\"label\":\"\"}\n";
    let path = dir.path().join("gold.jsonl");
    let fields = distill_tasks::labels::Fields {
        group: Some("movie".into()),
        skip_unlabeled: true,
        ..Default::default()
    };
    campaign("gold-labels", seed, &path, &|p| {
        let _ = distill_tasks::labels::read(p, &fields);
        let _ = distill_tasks::labels::read_ids(p);
    });
}

#[test]
fn fuzz_cache_shard_reader() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 12);
    let store = dir.path().join("cache").display().to_string();
    label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[],
    );
    let shard = find_file(&dir.path().join("cache"), ".parquet").expect("a committed shard");
    let seed = std::fs::read(&shard).unwrap();
    let path = dir.path().join("shard.parquet");
    campaign("cache-shard", &seed, &path, &|p| {
        let bytes = bytes::Bytes::from(std::fs::read(p).unwrap());
        let _ = distill_cache::format::decode("fuzz.parquet", bytes);
    });
}

#[test]
fn fuzz_job_records_and_staged_inputs() {
    // The coordinator's durable state as a real labeling run leaves it (job.json, result.json), and a
    // staged shard input as the planner writes it, each read back the way a restarted coordinator
    // or a worker reads it: through the store.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 12);
    let store = dir.path().join("cache");
    label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        store.to_str().unwrap(),
        &[],
    );
    let rt = runtime();
    let loc = distill_cache::store::open(store.to_str().unwrap(), false).unwrap();
    let job = find_file(&store, "job.json").expect("a job record");
    let result = find_file(&store, "result.json").expect("a result record");
    let rel = |p: &Path| p.strip_prefix(&store).unwrap().to_str().unwrap().to_owned();
    let (job_rel, result_rel) = (rel(&job), rel(&result));
    use distill_cache::jobs;
    use distill_coordinator::{job::JobRecord, records::ResultRecord};
    campaign("job-record", &std::fs::read(&job).unwrap(), &job, &|_| {
        if let Ok(Some(r)) = rt.block_on(jobs::read_json::<JobRecord>(&loc, &job_rel)) {
            let _ = (
                r.output_spec().fingerprint(),
                r.spec.compute_dtype(),
                r.same_work(&r),
            );
        }
    });
    campaign(
        "result-record",
        &std::fs::read(&result).unwrap(),
        &result,
        &|_| {
            let _ = rt.block_on(jobs::read_json::<ResultRecord>(&loc, &result_rel));
        },
    );
    let shard = rt.block_on(async {
        let spec = distill_cache::corpus::CorpusSpec::new(corpus.to_str().unwrap());
        let mut r = distill_cache::corpus::CorpusReader::open(&spec)
            .await
            .unwrap();
        r.next_shard(64).await.unwrap().unwrap()
    });
    let staged_rel = rt
        .block_on(jobs::write_input(&loc, "fuzz", &shard, &[]))
        .unwrap();
    let staged = store.join(&staged_rel);
    campaign(
        "staged-input",
        &std::fs::read(&staged).unwrap(),
        &staged,
        &|_| {
            let _ = rt.block_on(jobs::read_input(&loc, &staged_rel, &shard.fingerprint));
        },
    );
}

#[test]
fn a_staged_input_that_decompresses_past_the_bound_is_refused() {
    // A zstd bomb: 64 MB of zeros compresses to a few kB; read with a 1 MB bound it costs 1 MB.
    let bomb = zstd::encode_all(vec![0u8; 64 << 20].as_slice(), 19).unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let err = distill_cache::store::zstd_bounded(&bomb, 1 << 20).unwrap_err();
    assert!(err.contains("more than 1048576 bytes"), "{err}");
    assert_eq!(
        distill_cache::store::zstd_bounded(&bomb[..], 64 << 20)
            .unwrap()
            .len(),
        64 << 20
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        match e.path().is_dir() {
            true => copy_dir(&e.path(), &to.join(e.file_name())),
            false => drop(std::fs::copy(e.path(), to.join(e.file_name())).unwrap()),
        }
    }
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, suffix) {
                return Some(f);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

/// A small Parquet corpus (id and text columns), as pyarrow writes one.
fn write_parquet_corpus(path: &Path) {
    use arrow_array::{RecordBatch, StringArray};
    let ids = StringArray::from_iter_values((0..20).map(|i| format!("r{i}")));
    let texts = StringArray::from_iter_values((0..20).map(|i| text(i, 40)));
    let batch = RecordBatch::try_from_iter([
        ("id", std::sync::Arc::new(ids) as arrow_array::ArrayRef),
        ("text", std::sync::Arc::new(texts) as arrow_array::ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The fuzzer's first find, kept as it was found: a cache shard whose footer gives a column chunk a
/// negative start, on which the parquet crate asserts. Read as a shard and as a Parquet corpus, it
/// is an error naming the file, not a panic.
#[test]
fn a_shard_with_a_negative_column_start_is_an_error() {
    let path = repo_root().join("tests/data/fuzz/shard-negative-column-start.parquet");
    let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
    let err = distill_cache::format::decode("damaged.parquet", bytes).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("damaged.parquet: a damaged Parquet file (column start"),
        "{msg}"
    );
    let rt = runtime();
    read_corpus(&rt, &path, "parquet");
}

/// The fuzzer's second find: a `tokenizer.json` whose decoder entry the tokenizers crate unwraps.
/// Loading the model is an error naming the tokenizer, not a panic.
#[test]
fn a_tokenizer_with_a_malformed_decoder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    std::fs::copy(
        repo_root().join("tests/data/fuzz/tokenizer-bad-decoder.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let loaded = distill_cache::model_dir::ModelDir::inspect("bad-tokenizer", &model)
        .map_err(|e| e.to_string())
        .and_then(|md| {
            distill_teacher::Teacher::load(&md, &distill_teacher::DeviceSpec::Cpu)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    let msg = loaded.unwrap_err();
    assert!(
        msg.contains("bad-tokenizer") && msg.contains("tokenizer"),
        "{msg}"
    );
}

/// The fuzzer's third find, in distill's own GGUF check: a tensor whose claimed shape makes its byte
/// size overflow (the found input had `blk.0.attn_norm.weight` claim 2^62 + 64 elements). Every size
/// is now computed checked; the file is refused in one line. The input is remade here: a tiny GGUF
/// with that one dimension written over its tensor table.
/// Where a GGUF tensor-table entry's dimensions start: after its name (u64 length, bytes); then a
/// u32 count of dimensions and a u64 each.
fn tensor_entry(gguf: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    gguf.windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("the tensor's entry")
        + key.len()
}

#[test]
fn a_gguf_tensor_of_overflowing_shape_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::decoder::tiny_llama(dir.path(), Default::default());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = tensor_entry(&bytes, "blk.0.attn_norm.weight");
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 1);
    bytes[at + 4..at + 12].copy_from_slice(&((1u64 << 62) + 64).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let msg = distill_cache::model_dir::ModelDir::inspect("overflow.gguf", &path)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("overflow.gguf")
            && msg
                .contains("tensor blk.0.attn_norm.weight claims a shape of [4611686018427387968]")
            && msg.ends_with("larger than any file: the GGUF file is damaged"),
        "{msg}"
    );
}

#[test]
fn a_gguf_matrix_with_a_zero_dimension_and_a_huge_one_is_an_error() {
    // Found by the hour-long campaign: a matrix of 0 rows holds no bytes, so the file-size check
    // passes, but its row size (2^63 f32 values) overflowed in the memory estimate.
    let dir = tempfile::tempdir().unwrap();
    let path = crate::decoder::tiny_llama(dir.path(), Default::default());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = tensor_entry(&bytes, "blk.0.ffn_down.weight");
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2);
    bytes[at + 4..at + 12].copy_from_slice(&(1u64 << 63).to_le_bytes());
    bytes[at + 12..at + 20].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let md = distill_cache::model_dir::ModelDir::inspect("zero.gguf", &path).unwrap();
    for resident in [
        distill_teacher::Resident::Compact,
        distill_teacher::Resident::F32,
    ] {
        let o = distill_teacher::LoadOptions {
            resident,
            memory_limit: None,
        };
        let msg = distill_teacher::Teacher::load_with(&md, &distill_teacher::DeviceSpec::Cpu, &o)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("model zero.gguf: ")
                && msg.contains("blk.0.ffn_down.weight")
                && !msg.contains('\n'),
            "{msg}"
        );
    }
}
