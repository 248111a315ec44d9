//! Corpus readers and deterministic sharding.
//!
//! A corpus is one object (local path or object-store URL) in one of three formats:
//! JSONL (`--text-field`, `--id-field`, default `text` and `id`), plain text (one text per line) or
//! Parquet (a text column and an optional id column). JSONL and text may be gzip- or zstd-compressed
//! (detected from the magic bytes, whatever the extension).
//!
//! Every non-blank line (every Parquet row) is one *entry*, in file order. An entry is either a row
//! (`id`, `text`) or a reject (a malformed line, a missing or non-string text field, invalid UTF-8, an
//! empty text, a duplicate id) with its reason; rejects never stop the read, the caller decides
//! (`--strict`). Shard `i` holds entries `i*N .. (i+1)*N`, so the same input always yields the same shards
//! and the same fingerprints. Rows without an id get one from their position: `line-<n>` (1-based line)
//! for JSONL and text, `row-<n>` (0-based row) for Parquet.
//!
//! Reading streams: memory holds one shard plus a bounded read-ahead, whatever the corpus size. A
//! JSONL or text line longer than the spec's row limit ([`DEFAULT_MAX_ROW_BYTES`] unless set) is a
//! reject, read past without being held: one line of gigabytes inside a small compressed file costs
//! the limit, not the line.

use crate::fingerprint::{Fingerprint, Hasher};
use crate::store::{self, Location};
use crate::{CacheError, Result};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use tokio::sync::mpsc;

/// Corpus file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Text,
    Parquet,
}

impl Format {
    /// The name `--format` and the wire use (as serialised).
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Text => "text",
            Self::Parquet => "parquet",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jsonl" | "json" | "ndjson" => Ok(Self::Jsonl),
            "text" | "txt" | "lines" => Ok(Self::Text),
            "parquet" => Ok(Self::Parquet),
            _ => Err(format!(
                "unknown corpus format {s:?}: use jsonl, text or parquet"
            )),
        }
    }
}

impl Format {
    /// Guesses the format from a file name, ignoring `.gz` / `.zst` / `.zstd`.
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name
            .trim_end_matches(".gz")
            .trim_end_matches(".zstd")
            .trim_end_matches(".zst");
        let ext = base.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "txt" | "text" => Some(Self::Text),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// The longest JSONL or text line read by default, in bytes (`--max-row-bytes`).
pub const DEFAULT_MAX_ROW_BYTES: u64 = 8 << 20;

/// What to read and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CorpusSpec {
    pub url: String,
    /// `None`: from the file name.
    pub format: Option<Format>,
    pub text_field: String,
    pub id_field: String,
    /// The longest line read (JSONL, text), in bytes; a longer one is a reject. 0: the default
    /// ([`DEFAULT_MAX_ROW_BYTES`]). Absent from the job records of earlier releases.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_row_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl CorpusSpec {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            format: None,
            text_field: "text".into(),
            id_field: "id".into(),
            max_row_bytes: 0,
        }
    }

    /// The longest line read, in bytes.
    pub fn row_limit(&self) -> usize {
        match self.max_row_bytes {
            0 => DEFAULT_MAX_ROW_BYTES as usize,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}

/// One usable corpus entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line (JSONL, text) or 0-based row (Parquet) it came from.
    pub line: u64,
    pub id: String,
    pub text: String,
}

/// One entry that cannot be labeled, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub line: u64,
    pub id: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug)]
enum Entry {
    Row(Row),
    Reject(Reject),
}

/// A shard: `N` consecutive entries of a corpus, fingerprinted by content.
#[derive(Clone, Debug)]
pub struct Shard {
    pub index: u64,
    /// How far into the corpus this shard ends, in [`CorpusReader::total`] units (for progress).
    pub progress: u64,
    pub rows: Vec<Row>,
    pub rejects: Vec<Reject>,
    pub fingerprint: Fingerprint,
}

impl Shard {
    /// Entries in the shard (rows and rejects).
    pub fn entries(&self) -> usize {
        self.rows.len() + self.rejects.len()
    }
}

/// Fingerprint of a shard's content: rows by (id, text), rejects by (reason), in order.
/// The position of the shard in its corpus and the corpus's name do not enter: the same content found
/// in another corpus hits the same cache entry.
fn fingerprint_entries(entries: &[Entry]) -> Fingerprint {
    let mut h = Hasher::new("distill.shard.v1");
    for e in entries {
        match e {
            Entry::Row(r) => h.str("row").str(&r.id).str(&r.text),
            Entry::Reject(r) => h.str("reject").str(&r.reason),
        };
    }
    h.finish()
}

/// Streams shards of a corpus.
pub struct CorpusReader {
    rx: mpsc::Receiver<Result<(Vec<Entry>, u64)>>,
    pending: std::collections::VecDeque<(Entry, u64)>,
    total: u64,
    done: bool,
    next_index: u64,
    seen_ids: HashMap<u64, u64>,
    url: String,
    locator: &'static str,
}

impl std::fmt::Debug for CorpusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusReader")
            .field("url", &self.url)
            .finish()
    }
}

/// Splits a corpus URL or path into its store and object path.
pub fn locate_object(url: &str) -> Result<(Location, Path)> {
    let corpus_err = |reason: String| CacheError::Corpus {
        url: url.to_owned(),
        reason,
    };
    if !url.contains("://") || url.starts_with("file://") {
        let p = if let Some(rest) = url.strip_prefix("file://") {
            rest
        } else {
            url
        };
        let abs = std::fs::canonicalize(p).map_err(|e| corpus_err(format!("cannot open: {e}")))?;
        if !abs.is_file() {
            return Err(corpus_err("not a file".into()));
        }
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::local::LocalFileSystem::new());
        let path = Path::from_filesystem_path(&abs).map_err(|e| corpus_err(e.to_string()))?;
        return Ok((
            Location {
                store,
                prefix: Path::default(),
                url: url.to_owned(),
            },
            path,
        ));
    }
    let loc = store::open(url, false)?;
    let path = loc.prefix.clone();
    Ok((loc, path))
}

const READ_AHEAD_BATCHES: usize = 8;
const BATCH_ENTRIES: usize = 1024;

impl CorpusReader {
    /// Opens a corpus. Fails at once, with the URL, if it cannot be found or its format is unknown.
    pub async fn open(spec: &CorpusSpec) -> Result<Self> {
        let url = spec.url.clone();
        let corpus_err = |reason: String| CacheError::Corpus {
            url: url.clone(),
            reason,
        };
        let format = match spec.format {
            Some(f) => f,
            None => Format::from_name(&url).ok_or_else(|| {
                corpus_err(
                    "cannot tell the format from the name: pass --format jsonl|text|parquet".into(),
                )
            })?,
        };
        let (loc, path) = locate_object(&url)?;
        let meta = loc.store.head(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => corpus_err("not found".into()),
            e => corpus_err(store::describe_store_error(&e)),
        })?;
        let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
        let locator = match format {
            Format::Parquet => "row",
            _ => "line",
        };
        let total = match format {
            Format::Jsonl | Format::Text => {
                let get = loc
                    .store
                    .get(&path)
                    .await
                    .map_err(|e| corpus_err(store::describe_store_error(&e)))?;
                let stream =
                    futures::TryStreamExt::map_err(get.into_stream(), std::io::Error::other);
                let reader =
                    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
                let spec = spec.clone();
                tokio::task::spawn_blocking(move || read_lines(reader, format, &spec, tx));
                meta.size
            }
            Format::Parquet => {
                let reader =
                    crate::parquet_io::ObjectReader::new(loc.store.clone(), path, meta.size);
                let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(|e| corpus_err(format!("not a readable Parquet file: {e}")))?;
                let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
                let spec = spec.clone();
                tokio::spawn(async move {
                    // A panic inside the parquet crate (a damaged file) must end the read with an
                    // error, not close the channel as if the corpus ended there.
                    use futures::FutureExt;
                    let failed = tx.clone();
                    let read = std::panic::AssertUnwindSafe(read_parquet(builder, &spec, tx));
                    if let Err(e) = read.catch_unwind().await {
                        let why = crate::format::panic_message(e.as_ref()).to_owned();
                        let reason = format!("a damaged Parquet file ({why})");
                        let _ = failed
                            .send(Err(CacheError::Corpus {
                                url: spec.url,
                                reason,
                            }))
                            .await;
                    }
                });
                rows
            }
        };
        Ok(Self {
            rx,
            pending: Default::default(),
            total,
            done: false,
            next_index: 0,
            seen_ids: HashMap::new(),
            url,
            locator,
        })
    }

    /// "line" for JSONL and text, "row" for Parquet: how rejects name their place.
    pub fn locator(&self) -> &'static str {
        self.locator
    }

    /// The size of the corpus in progress units: bytes (as stored) for JSONL and text, rows for Parquet.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next shard of up to `size` entries, or `None` at the end of the corpus.
    pub async fn next_shard(&mut self, size: usize) -> Result<Option<Shard>> {
        assert!(size > 0, "shard size must be positive");
        while self.pending.len() < size && !self.done {
            match self.rx.recv().await {
                Some(batch) => {
                    let (entries, mark) = batch?;
                    self.pending.extend(entries.into_iter().map(|e| (e, mark)));
                }
                None => self.done = true,
            }
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let n = size.min(self.pending.len());
        let marked: Vec<(Entry, u64)> = self.pending.drain(..n).collect();
        let progress = marked.last().map(|(_, m)| *m).unwrap_or(0);
        let mut entries: Vec<Entry> = marked.into_iter().map(|(e, _)| e).collect();
        for e in &mut entries {
            self.check_duplicate(e);
        }
        let fingerprint = fingerprint_entries(&entries);
        let (mut rows, mut rejects) = (Vec::new(), Vec::new());
        for e in entries {
            match e {
                Entry::Row(r) => rows.push(r),
                Entry::Reject(r) => rejects.push(r),
            }
        }
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Shard {
            index,
            progress,
            rows,
            rejects,
            fingerprint,
        }))
    }

    /// Ids are unique across the corpus: a repeated id is rejected, naming where it was first seen.
    fn check_duplicate(&mut self, e: &mut Entry) {
        let Entry::Row(r) = e else { return };
        use std::hash::{Hash, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.id.hash(&mut h);
        let key = h.finish();
        if let Some(first) = self.seen_ids.get(&key) {
            let reason = format!(
                "duplicate id {:?} (first at {} {first})",
                r.id, self.locator
            );
            *e = Entry::Reject(Reject {
                line: r.line,
                id: Some(r.id.clone()),
                reason,
            });
        } else {
            self.seen_ids.insert(key, r.line);
        }
    }
}

/// Wraps a reader in the right decompressor, found from its first bytes.
fn decompress<'a>(inner: impl Read + Send + 'a) -> std::io::Result<Box<dyn BufRead + Send + 'a>> {
    let mut buf = BufReader::with_capacity(1 << 16, inner);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(buf),
        )))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            zstd::stream::read::Decoder::with_buffer(buf)?,
        )))
    } else {
        Ok(Box::new(buf))
    }
}

/// Counts the bytes read through it (stored bytes, before decompression).
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

fn read_lines(
    reader: impl Read + Send,
    format: Format,
    spec: &CorpusSpec,
    tx: mpsc::Sender<Result<(Vec<Entry>, u64)>>,
) {
    let fail = |reason: String| CacheError::Corpus {
        url: spec.url.clone(),
        reason,
    };
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mark = || count.load(std::sync::atomic::Ordering::Relaxed);
    let mut input = match decompress(Counting {
        inner: reader,
        count: count.clone(),
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(fail(format!("cannot read: {e}"))));
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH_ENTRIES);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let limit = spec.row_limit();
    loop {
        let line = match read_line_bounded(&mut input, &mut buf, limit) {
            Ok(Line::End) => break,
            Ok(line) => line,
            Err(e) => {
                let _ =
                    tx.blocking_send(Err(fail(format!("read failed after line {line_no}: {e}"))));
                return;
            }
        };
        line_no += 1;
        if let Line::TooLong(bytes) = line {
            batch.push(reject(
                line_no,
                None,
                format!(
                    "a line of {bytes} bytes, longer than the limit of {limit} (--max-row-bytes)"
                ),
            ));
        } else {
            let raw = trim_newline(&buf);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            batch.push(match format {
                Format::Text => parse_text_line(raw, line_no),
                _ => parse_json_line(raw, line_no, spec),
            });
        }
        if batch.len() == BATCH_ENTRIES
            && tx
                .blocking_send(Ok((std::mem::take(&mut batch), mark())))
                .is_err()
        {
            return; // the reader was dropped
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok((batch, mark())));
    }
}

/// What [`read_line_bounded`] read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The end of the input.
    End,
    /// A line, in the buffer.
    Read,
    /// A line of this many bytes (its newline included), longer than the limit: read past, not kept.
    TooLong(u64),
}

/// Reads one line into `buf` (cleared first) if it holds at most `limit` bytes; a longer line is read
/// past in the reader's own pieces, `buf` never holding more than `limit` plus one piece.
fn read_line_bounded(
    input: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut total = 0u64;
    let mut over = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        total += take as u64;
        if !over && buf.len() + take > limit.saturating_add(2) {
            // The line and its "\r\n" may take `limit` + 2 bytes.
            over = true;
            buf.clear();
            buf.shrink_to(1 << 16);
        }
        if !over {
            buf.extend_from_slice(&chunk[..take]);
        }
        input.consume(take);
        if done {
            break;
        }
    }
    Ok(match (total, over) {
        (0, _) => Line::End,
        (n, true) => Line::TooLong(n),
        _ => Line::Read,
    })
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn reject(line: u64, id: Option<String>, reason: impl Into<String>) -> Entry {
    Entry::Reject(Reject {
        line,
        id,
        reason: reason.into(),
    })
}

fn parse_text_line(raw: &[u8], line: u64) -> Entry {
    match std::str::from_utf8(raw) {
        Ok(text) => Entry::Row(Row {
            line,
            id: format!("line-{line}"),
            text: text.trim().to_owned(),
        }),
        Err(e) => reject(
            line,
            None,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        ),
    }
}

fn parse_json_line(raw: &[u8], line: u64, spec: &CorpusSpec) -> Entry {
    let s = match std::str::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => {
            return reject(
                line,
                None,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        }
    };
    let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return reject(line, None, "not a JSON object"),
        Err(e) => return reject(line, None, format!("invalid JSON: {e}")),
    };
    let id = match obj.get(&spec.id_field) {
        None | Some(serde_json::Value::Null) => format!("line-{line}"),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => {
            return reject(
                line,
                None,
                format!(
                    "field {:?} must be a non-empty string or a number, not {other}",
                    spec.id_field
                ),
            )
        }
    };
    match obj.get(&spec.text_field) {
        Some(serde_json::Value::String(t)) => text_row(line, id, t),
        None => reject(
            line,
            Some(id),
            format!("missing text field {:?}", spec.text_field),
        ),
        Some(other) => reject(
            line,
            Some(id),
            format!(
                "field {:?} is not a string: {}",
                spec.text_field,
                kind(other)
            ),
        ),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn text_row(line: u64, id: String, text: &str) -> Entry {
    if text.trim().is_empty() {
        reject(line, Some(id), "empty text")
    } else {
        Entry::Row(Row {
            line,
            id,
            text: text.to_owned(),
        })
    }
}

async fn read_parquet(
    builder: parquet::arrow::ParquetRecordBatchStreamBuilder<crate::parquet_io::ObjectReader>,
    spec: &CorpusSpec,
    tx: mpsc::Sender<Result<(Vec<Entry>, u64)>>,
) {
    use futures::StreamExt;
    let fail = |reason: String| CacheError::Corpus {
        url: spec.url.clone(),
        reason,
    };
    let schema = builder.schema().clone();
    let Some((text_idx, _)) = schema.column_with_name(&spec.text_field) else {
        let cols: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let _ = tx
            .send(Err(fail(format!(
                "no text column {:?} (columns: {})",
                spec.text_field,
                cols.join(", ")
            ))))
            .await;
        return;
    };
    let id_idx = schema.column_with_name(&spec.id_field).map(|(i, _)| i);
    let mut leaves = vec![text_idx];
    leaves.extend(id_idx);
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), leaves);
    let mut stream = match builder
        .with_projection(mask)
        .with_batch_size(BATCH_ENTRIES)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(fail(e.to_string()))).await;
            return;
        }
    };
    let mut row = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = tx
                    .send(Err(fail(format!("read failed after row {row}: {e}"))))
                    .await;
                return;
            }
        };
        let texts = batch.column_by_name(&spec.text_field).expect("projected");
        let texts = match string_column(texts) {
            Some(v) => v,
            None => {
                let _ = tx
                    .send(Err(fail(format!(
                        "column {:?} is {}, not a string",
                        spec.text_field,
                        texts.data_type()
                    ))))
                    .await;
                return;
            }
        };
        let ids: Option<Vec<Option<String>>> = match batch.column_by_name(&spec.id_field) {
            None => None,
            Some(col) => match parquet_ids(col) {
                Ok(v) => Some(v),
                Err(t) => {
                    let _ = tx
                        .send(Err(fail(format!(
                            "column {:?} is {t}: use strings or integers",
                            spec.id_field
                        ))))
                        .await;
                    return;
                }
            },
        };
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.into_iter().enumerate() {
            let id = ids
                .as_ref()
                .and_then(|v| v[i].clone())
                .unwrap_or_else(|| format!("row-{row}"));
            out.push(match text {
                Some(t) => text_row(row, id, &t),
                None => reject(
                    row,
                    Some(id),
                    format!("text column {:?} is null", spec.text_field),
                ),
            });
            row += 1;
        }
        if tx.send(Ok((out, row))).await.is_err() {
            return;
        }
    }
}

/// The values of a string column (utf8, large utf8 or utf8 view); `None` for any other type.
fn string_column(col: &arrow_array::ArrayRef) -> Option<Vec<Option<String>>> {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;
    let owned = |s: Option<&str>| s.map(str::to_owned);
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().iter().map(owned).collect(),
        DataType::LargeUtf8 => col.as_string::<i64>().iter().map(owned).collect(),
        DataType::Utf8View => col.as_string_view().iter().map(owned).collect(),
        _ => return None,
    })
}

/// Ids from a string or integer column, as strings.
fn parquet_ids(col: &arrow_array::ArrayRef) -> Result<Vec<Option<String>>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_schema::DataType;
    if let Some(strings) = string_column(col) {
        return Ok(strings);
    }
    Ok(match col.data_type() {
        DataType::Int32 => col
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(|v| v.to_string()))
            .collect(),
        DataType::Int64 => col
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| v.to_string()))
            .collect(),
        DataType::UInt32 => col
            .as_primitive::<UInt32Type>()
            .iter()
            .map(|v| v.map(|v| v.to_string()))
            .collect(),
        DataType::UInt64 => col
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| v.to_string()))
            .collect(),
        other => return Err(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn shards(path: &std::path::Path, size: usize) -> Vec<Shard> {
        let mut spec = CorpusSpec::new(path.to_str().unwrap());
        spec.format = Some(Format::from_name(path.to_str().unwrap()).unwrap_or(Format::Jsonl));
        let mut r = CorpusReader::open(&spec).await.unwrap();
        let mut out = vec![];
        while let Some(s) = r.next_shard(size).await.unwrap() {
            out.push(s);
        }
        out
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    const JSONL: &str = "{\"id\":\"a\",\"text\":\"first\"}\n\n{\"text\":\"no id\"}\n{\"id\":7,\"text\":\"numeric id\"}\n{\"id\":\"b\",\"text\":\"  \"}\n{\"id\":\"c\"}\nnot json\n{\"id\":\"a\",\"text\":\"dup\"}\n{\"id\":\"d\",\"text\":5}\n";

    #[tokio::test]
    async fn jsonl_rows_and_rejects_keep_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "c.jsonl", JSONL.as_bytes());
        let s = shards(&p, 100).await;
        assert_eq!(s.len(), 1);
        let rows: Vec<_> = s[0]
            .rows
            .iter()
            .map(|r| (r.line, r.id.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "a", "first"),
                (3, "line-3", "no id"),
                (4, "7", "numeric id")
            ]
        );
        let rejects: Vec<_> = s[0]
            .rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(rejects[0], (5, "empty text"));
        assert_eq!(rejects[1], (6, "missing text field \"text\""));
        assert!(rejects[2].1.starts_with("invalid JSON"), "{rejects:?}");
        assert_eq!(rejects[3], (8, "duplicate id \"a\" (first at line 1)"));
        assert_eq!(rejects[4], (9, "field \"text\" is not a string: a number"));
    }

    /// A line of 64 MiB inside a gzip file of a few hundred KB, with a limit of 1 MiB: a reject naming
    /// the limit, read past in pieces (the buffer never holds more than the limit and one piece), and
    /// the rows around it read as usual.
    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_a_reject_read_past_in_pieces() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"id\":\"a\",\"text\":\"before\"}\n{\"id\":\"big\",\"text\":\"")
            .unwrap();
        let piece = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&piece).unwrap();
        }
        gz.write_all(b"\"}\r\n{\"id\":\"b\",\"text\":\"after\"}")
            .unwrap();
        let bytes = gz.finish().unwrap();
        assert!(bytes.len() < 1 << 20, "{} bytes compressed", bytes.len());
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "bomb.jsonl.gz", &bytes);
        let mut spec = CorpusSpec::new(p.to_str().unwrap());
        spec.max_row_bytes = 1 << 20;
        let mut r = CorpusReader::open(&spec).await.unwrap();
        let s = r.next_shard(10).await.unwrap().unwrap();
        let rows: Vec<_> = s.rows.iter().map(|r| (r.line, r.id.as_str())).collect();
        assert_eq!(rows, [(1, "a"), (3, "b")]);
        assert_eq!(s.rejects.len(), 1);
        assert_eq!(s.rejects[0].line, 2);
        let reason = &s.rejects[0].reason;
        assert!(
            reason.contains("longer than the limit of 1048576 (--max-row-bytes)"),
            "{reason}"
        );

        // The buffer stays within the limit and one piece of the reader.
        let line = [b"abc\r\n".as_slice(), &vec![b'y'; 10 << 20], b"\nlast"].concat();
        let mut input = std::io::BufReader::with_capacity(1 << 16, line.as_slice());
        let mut buf = Vec::new();
        let mut read =
            |buf: &mut Vec<u8>, limit| read_line_bounded(&mut input, buf, limit).unwrap();
        assert_eq!(
            read(&mut buf, 3),
            Line::Read,
            "a line of the limit, its \\r\\n aside"
        );
        assert_eq!(read(&mut buf, 1 << 20), Line::TooLong((10 << 20) + 1));
        assert!(buf.capacity() <= 1 << 17, "{}", buf.capacity());
        assert_eq!(read(&mut buf, 1 << 20), Line::Read);
        assert_eq!(buf, b"last");
        assert_eq!(read(&mut buf, 1 << 20), Line::End);
    }

    #[tokio::test]
    async fn invalid_utf8_is_rejected_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "c.txt", b"good line\nbad \xff byte\nlast\n");
        let s = shards(&p, 10).await;
        assert_eq!(s[0].rows.len(), 2);
        assert_eq!(s[0].rejects[0].line, 2);
        assert!(s[0].rejects[0].reason.contains("invalid UTF-8"));
        assert_eq!(s[0].rows[1].id, "line-3");
    }

    #[tokio::test]
    async fn sharding_is_deterministic_and_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..25)
            .map(|i| format!("{{\"id\":\"{i}\",\"text\":\"text {i}\"}}\n"))
            .collect();
        let p = write(&dir, "c.jsonl", text.as_bytes());
        let a = shards(&p, 10).await;
        let b = shards(&p, 10).await;
        assert_eq!(
            a.iter().map(|s| s.entries()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let fa: Vec<_> = a.iter().map(|s| s.fingerprint.clone()).collect();
        let fb: Vec<_> = b.iter().map(|s| s.fingerprint.clone()).collect();
        assert_eq!(fa, fb);
        assert_ne!(fa[0], fa[1]);
        // The same content under another name and compression has the same fingerprints.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let p2 = write(&dir, "other.jsonl.gz", &gz.finish().unwrap());
        let c = shards(&p2, 10).await;
        assert_eq!(
            fa,
            c.iter().map(|s| s.fingerprint.clone()).collect::<Vec<_>>()
        );
        // A changed text changes its shard only.
        let changed = text.replace("text 13", "text thirteen");
        let p3 = write(&dir, "changed.jsonl", changed.as_bytes());
        let d = shards(&p3, 10).await;
        assert_eq!(d[0].fingerprint, fa[0]);
        assert_ne!(d[1].fingerprint, fa[1]);
        assert_eq!(d[2].fingerprint, fa[2]);
    }

    #[tokio::test]
    async fn zstd_text_and_custom_fields() {
        let dir = tempfile::tempdir().unwrap();
        let body = "{\"key\":\"k1\",\"body\":\"hello\"}\n";
        let p = write(
            &dir,
            "c.jsonl.zst",
            &zstd::encode_all(body.as_bytes(), 3).unwrap(),
        );
        let mut spec = CorpusSpec::new(p.to_str().unwrap());
        spec.text_field = "body".into();
        spec.id_field = "key".into();
        let mut r = CorpusReader::open(&spec).await.unwrap();
        let s = r.next_shard(5).await.unwrap().unwrap();
        assert_eq!(
            (s.rows[0].id.as_str(), s.rows[0].text.as_str()),
            ("k1", "hello")
        );
    }

    #[tokio::test]
    async fn missing_corpus_and_unknown_format_name_the_url() {
        let err = CorpusReader::open(&CorpusSpec::new("/nonexistent/c.jsonl"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/c.jsonl") && err.contains("cannot open"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "c.csv", b"x");
        let err = CorpusReader::open(&CorpusSpec::new(p.to_str().unwrap()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--format"), "{err}");
    }

    #[tokio::test]
    async fn parquet_corpus_with_integer_ids() {
        use arrow_array::{Int64Array, RecordBatch, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.parquet");
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                std::sync::Arc::new(Int64Array::from(vec![10, 11, 12])) as arrow_array::ArrayRef,
            ),
            (
                "text",
                std::sync::Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as _,
            ),
        ])
        .unwrap();
        let f = std::fs::File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let s = shards(&p, 2).await;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].rows[0].id, "10");
        assert_eq!(s[0].rejects[0].id.as_deref(), Some("11"));
        assert_eq!(s[1].rows[0].text, "c");
    }
}
