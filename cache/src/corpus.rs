//! Corpus readers and deterministic sharding.
//!
//! A corpus is one file, every file under a folder or object-store prefix, or the files a glob
//! matches (`s3://b/data/`, `data/part-*.parquet`; `*`, `?` and `[..]` within a path segment), read
//! in the order of their names as one stream of entries. Hidden files and the markers data-set
//! writers leave (`.crc`, `_SUCCESS`, any segment starting with `.` or `_`) are passed over. Files
//! are in one of three formats: JSONL (`--text-field`, `--id-field`, default `text` and `id`), plain
//! text (one text per line) or Parquet (a text column and an optional id column); `--format` applies
//! to every file, else each file's name tells, and a corpus of two formats is refused, naming one file
//! of each. JSONL and text may be gzip- or zstd-compressed (detected from the magic bytes, whatever
//! the extension).
//!
//! Every non-blank line (every Parquet row) is one *entry*, in file order. An entry is either a row
//! (`id`, `text`) or a reject (a malformed line, a missing or non-string text field, invalid UTF-8, an
//! empty text, a duplicate id) with its reason; rejects never stop the read, the caller decides
//! (`--strict`). Shard `i` holds entries `i*N .. (i+1)*N`, so the same input always yields the same shards
//! and the same fingerprints. Rows without an id get one from their position: `line-<n>` (1-based line)
//! for JSONL and text, `row-<n>` (0-based row) for Parquet, prefixed with the file's name
//! (`part-0.jsonl:line-3`) in a corpus of several files.
//!
//! Reading streams: memory holds one shard plus a bounded read-ahead (of up to four files at once,
//! each a bounded queue of entries), and the ids seen so far (16 bytes each, for the duplicate-id
//! check: the one part that grows with the corpus). A
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
    /// The file it is in, for a corpus of several files (relative to the corpus's folder or prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Reject {
    /// Where it is, for a message: `corpus:line` (`corpus/file:line` in a corpus of several files),
    /// or `corpus row n` for Parquet.
    pub fn place(&self, corpus: &str, locator: &str) -> String {
        let url = self.file_url(corpus);
        match locator {
            "line" => format!("{url}:{}", self.line),
            _ => format!("{url} {locator} {}", self.line),
        }
    }

    /// The file it is in: the corpus itself, or `corpus/file` in a corpus of several files.
    pub fn file_url(&self, corpus: &str) -> String {
        match &self.file {
            Some(f) => format!("{}/{f}", split_glob(corpus).0.trim_end_matches('/')),
            None => corpus.to_owned(),
        }
    }
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

/// Entries read from one file, and the progress mark at their end.
struct Batch {
    entries: Vec<Entry>,
    mark: u64,
    /// The file's place in [`CorpusFiles::files`].
    file: usize,
}

type Sender = mpsc::Sender<Result<Batch>>;

/// Streams shards of a corpus.
pub struct CorpusReader {
    rx: mpsc::Receiver<Result<Batch>>,
    pending: std::collections::VecDeque<(Entry, u64, usize)>,
    total: u64,
    done: bool,
    next_index: u64,
    /// Where each id (by a 64-bit hash) was first seen: [`place`] of (file, line), 16 bytes an id.
    seen_ids: HashMap<u64, u64>,
    url: String,
    locator: &'static str,
    /// File names, for a corpus of several files (empty for one file).
    names: Vec<String>,
}

impl std::fmt::Debug for CorpusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusReader")
            .field("url", &self.url)
            .finish()
    }
}

/// One file of a corpus, in the corpus's order.
#[derive(Clone, Debug)]
pub struct CorpusFile {
    pub path: Path,
    pub size: u64,
    /// Its name relative to the corpus's folder or prefix (the file name for a one-file corpus): what
    /// generated ids and messages name.
    pub name: String,
    pub format: Format,
}

/// The files a corpus URL names: one file, every file under a folder or prefix, or those a glob
/// matches (`*` and `?` within a path segment), in the order of their names.
#[derive(Clone, Debug)]
pub struct CorpusFiles {
    pub location: Location,
    pub files: Vec<CorpusFile>,
    /// The URL named one file (ids `line-<n>` / `row-<n>`, as every earlier release made them).
    pub single: bool,
}

impl CorpusFiles {
    /// The display name of a file: the corpus URL itself for a one-file corpus.
    pub fn display(&self, file: &CorpusFile) -> String {
        self.location.display(&file.path)
    }
}

/// Whether a path segment is a glob pattern.
fn is_glob(segment: &str) -> bool {
    segment.contains(['*', '?', '['])
}

/// `*` any run of characters but `/`, `?` one such character, `[abc]` / `[a-z]` one of a set; the rest
/// literally.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        let end = p.iter().position(|&x| x == ']')?;
        let set = &p[1..end];
        let mut hit = false;
        let mut i = 0;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == '-' {
                hit |= set[i] <= c && c <= set[i + 2];
                i += 3;
            } else {
                hit |= set[i] == c;
                i += 1;
            }
        }
        Some((hit, end + 1))
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len())
                .take_while(|&i| i == 0 || n[i - 1] != '/')
                .any(|i| go(&p[1..], &n[i..])),
            Some('?') => n.first().is_some_and(|&c| c != '/') && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(p, n.first().copied().unwrap_or('/'))) {
                (Some(&c), Some((hit, len))) => c != '/' && hit && go(&p[len..], &n[1..]),
                (_, None) => n.first() == Some(&'[') && go(&p[1..], &n[1..]),
                (None, Some(_)) => false,
            },
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// A file the listing of a folder passes over: hidden, or a marker of the tool that wrote the data set
/// (`_SUCCESS`, `_delta_log/`, `.crc` files).
fn skipped(name: &str) -> bool {
    name.split('/')
        .any(|s| s.starts_with('.') || s.starts_with('_'))
}

/// Splits a URL or path into the part before its first glob segment and the pattern after it.
fn split_glob(url: &str) -> (String, Option<String>) {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.iter().position(|s| is_glob(s)) {
        None => (url.to_owned(), None),
        Some(i) => (
            format!("{scheme}{}", segments[..i].join("/")),
            Some(segments[i..].join("/")),
        ),
    }
}

/// Lists the files a corpus URL names. Fails, naming the URL or the file, when nothing is there, a
/// file's format cannot be told, or the files are of more than one format.
pub async fn list_files(spec: &CorpusSpec) -> Result<CorpusFiles> {
    let url = spec.url.as_str();
    let corpus_err = |reason: String| CacheError::Corpus {
        url: url.to_owned(),
        reason,
    };
    let (base, pattern) = split_glob(url);
    let (location, found) = locate(&base, pattern.is_some()).await?;
    let single = matches!(found, Found::File(_));
    let mut files = match found {
        Found::File(size) => vec![(location.prefix.clone(), size, file_name(url))],
        Found::Folder => list_folder(&location, pattern.as_deref())
            .await
            .map_err(&corpus_err)?,
    };
    if files.is_empty() {
        let what = match &pattern {
            Some(p) => format!("no file matches {p:?}"),
            None => "no files in this folder or prefix".to_owned(),
        };
        return Err(corpus_err(what));
    }
    files.sort_by(|a, b| a.2.cmp(&b.2));
    let mut out: Vec<CorpusFile> = Vec::with_capacity(files.len());
    for (path, size, name) in files {
        let format = match spec.format.or_else(|| Format::from_name(&name)) {
            Some(f) => f,
            None if single => {
                return Err(corpus_err(
                    "cannot tell the format from the name: pass --format jsonl|text|parquet".into(),
                ))
            }
            None => {
                return Err(corpus_err(format!(
                    "cannot tell the format of {name} from its name: pass --format jsonl|text|parquet, or a glob that leaves it out"
                )))
            }
        };
        if let Some(first) = out.first().filter(|f| f.format != format) {
            return Err(corpus_err(format!(
                "holds files of two formats: {} ({}) and {name} ({}); a corpus is of one format: name the files of one with a glob",
                first.name,
                first.format.name(),
                format.name()
            )));
        }
        out.push(CorpusFile {
            path,
            size,
            name,
            format,
        });
    }
    Ok(CorpusFiles {
        location,
        files: out,
        single,
    })
}

fn file_name(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_owned()
}

enum Found {
    /// One object of this size, at the location's prefix.
    File(u64),
    /// A folder or prefix to list.
    Folder,
}

/// The store and path a corpus URL (without its glob) names, and whether it is a file or a folder.
async fn locate(url: &str, folder: bool) -> Result<(Location, Found)> {
    let corpus_err = |reason: String| CacheError::Corpus {
        url: url.to_owned(),
        reason,
    };
    if !url.contains("://") || url.starts_with("file://") {
        let p = url.strip_prefix("file://").unwrap_or(url);
        let p = if p.is_empty() { "." } else { p };
        let abs = std::fs::canonicalize(p).map_err(|e| corpus_err(format!("cannot open: {e}")))?;
        let meta = std::fs::metadata(&abs).map_err(|e| corpus_err(format!("cannot open: {e}")))?;
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::local::LocalFileSystem::new());
        let prefix = Path::from_filesystem_path(&abs).map_err(|e| corpus_err(e.to_string()))?;
        let location = Location {
            store,
            prefix,
            url: url.to_owned(),
        };
        return Ok(match (meta.is_dir(), folder) {
            (true, _) => (location, Found::Folder),
            (false, false) => (location, Found::File(meta.len())),
            (false, true) => return Err(corpus_err("not a folder".into())),
        });
    }
    let loc = store::open(url.trim_end_matches('/'), false)?;
    if folder || url.ends_with('/') {
        return Ok((loc, Found::Folder));
    }
    match loc.store.head(&loc.prefix).await {
        Ok(meta) => Ok((loc, Found::File(meta.size))),
        // No object of that name: a prefix, if anything is under it.
        Err(object_store::Error::NotFound { .. }) => Ok((loc, Found::Folder)),
        Err(e) => Err(corpus_err(store::describe_store_error(&e))),
    }
}

/// The files under a location's prefix (those the pattern matches), hidden ones and tool markers
/// passed over: `(path, size, name relative to the prefix)`.
async fn list_folder(
    loc: &Location,
    pattern: Option<&str>,
) -> std::result::Result<Vec<(Path, u64, String)>, String> {
    use futures::TryStreamExt;
    let prefix = loc.prefix.clone();
    let base = prefix.as_ref().to_owned();
    let objects: Vec<object_store::ObjectMeta> = loc
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => "not found".to_owned(),
            e => store::describe_store_error(&e),
        })?;
    Ok(objects
        .into_iter()
        .filter_map(|o| {
            let full = o.location.as_ref();
            let name = if base.is_empty() {
                full.to_owned()
            } else {
                full.strip_prefix(&base)?.strip_prefix('/')?.to_owned()
            };
            let keep = !skipped(&name) && pattern.is_none_or(|p| glob_match(p, &name));
            keep.then_some((o.location, o.size, name))
        })
        .collect())
}

const READ_AHEAD_BATCHES: usize = 8;
const BATCH_ENTRIES: usize = 1024;

impl CorpusReader {
    /// Opens a corpus: one file, a folder or prefix, or a glob. Fails at once, with the URL, if
    /// nothing is found, a format is unknown or the first Parquet file is unreadable.
    pub async fn open(spec: &CorpusSpec) -> Result<Self> {
        let files = list_files(spec).await?;
        let format = files.files[0].format;
        let first = match format {
            Format::Parquet => Some(parquet_builder(&files, 0).await?),
            _ => None,
        };
        // Progress units: stored bytes, or rows for a one-file Parquet corpus (as before).
        let total = match (&first, files.single) {
            (Some(b), true) => b.metadata().file_metadata().num_rows().max(0) as u64,
            _ => files.files.iter().map(|f| f.size).sum(),
        };
        let names = if files.single {
            vec![]
        } else {
            files.files.iter().map(|f| f.name.clone()).collect()
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
        tokio::spawn(read_files(spec.clone(), files, first, tx));
        Ok(Self {
            rx,
            pending: Default::default(),
            total,
            done: false,
            next_index: 0,
            seen_ids: HashMap::new(),
            url: spec.url.clone(),
            locator: match format {
                Format::Parquet => "row",
                _ => "line",
            },
            names,
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
                    let Batch {
                        entries,
                        mark,
                        file,
                    } = batch?;
                    self.pending
                        .extend(entries.into_iter().map(|e| (e, mark, file)));
                }
                None => self.done = true,
            }
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let n = size.min(self.pending.len());
        let marked: Vec<(Entry, u64, usize)> = self.pending.drain(..n).collect();
        let progress = marked.last().map(|(_, m, _)| *m).unwrap_or(0);
        let mut entries = Vec::with_capacity(n);
        for (mut e, _, file) in marked {
            self.check_duplicate(&mut e, file);
            if let (Entry::Reject(r), Some(name)) = (&mut e, self.names.get(file)) {
                r.file = Some(name.clone());
            }
            entries.push(e);
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
    fn check_duplicate(&mut self, e: &mut Entry, file: usize) {
        let Entry::Row(r) = e else { return };
        use std::hash::{Hash, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.id.hash(&mut h);
        let key = h.finish();
        if let Some(&(first_file, first)) = self.seen_ids.get(&key).map(unplace).as_ref() {
            let place = match self.names.get(first_file) {
                Some(name) => format!("{name} {} {first}", self.locator),
                None => format!("{} {first}", self.locator),
            };
            let reason = format!("duplicate id {:?} (first at {place})", r.id);
            *e = Entry::Reject(Reject {
                line: r.line,
                id: Some(r.id.clone()),
                reason,
                file: None,
            });
        } else {
            self.seen_ids.insert(key, place(file, r.line));
        }
    }
}

/// The ids of a corpus's rows (rejects left out), as a job reads them.
pub async fn ids(spec: &CorpusSpec) -> Result<std::collections::HashSet<String>> {
    let mut reader = CorpusReader::open(spec).await?;
    let mut out = std::collections::HashSet::new();
    while let Some(shard) = reader.next_shard(BATCH_ENTRIES).await? {
        out.extend(shard.rows.into_iter().map(|r| r.id));
    }
    Ok(out)
}

/// A (file, line) in one number: the file's place in the top 20 bits, the line below (a later file or
/// line than those bits hold is shown as the last they can).
fn place(file: usize, line: u64) -> u64 {
    ((file.min(LAST_FILE) as u64) << LINE_BITS) | line.min((1 << LINE_BITS) - 1)
}

fn unplace(p: &u64) -> (usize, u64) {
    ((p >> LINE_BITS) as usize, p & ((1 << LINE_BITS) - 1))
}

const LINE_BITS: u32 = 44;
const LAST_FILE: usize = (1 << (64 - LINE_BITS)) - 1;

/// Opens a Parquet file of a corpus for reading (the text and id columns are chosen later).
async fn parquet_builder(files: &CorpusFiles, i: usize) -> Result<Builder> {
    let f = &files.files[i];
    let reader =
        crate::parquet_io::ObjectReader::new(files.location.store.clone(), f.path.clone(), f.size);
    parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| CacheError::Corpus {
            url: files.display(f),
            reason: format!("not a readable Parquet file: {e}"),
        })
}

/// What a file's reader needs to know of its place in the corpus.
struct FileCtx {
    /// The file's URL, for errors.
    url: String,
    /// Its place in the corpus's file list.
    index: usize,
    /// Prefixed to generated ids: empty for a one-file corpus, `<name>:` otherwise.
    id_prefix: String,
    /// Progress units before this file.
    base: u64,
    /// Progress units of this file (stored bytes; rows for a one-file Parquet corpus).
    units: u64,
}

/// Files read at once in a corpus of several: their entries are passed on in file order.
const FILES_AHEAD: usize = 4;

type Builder = parquet::arrow::ParquetRecordBatchStreamBuilder<crate::parquet_io::ObjectReader>;

/// Reads every file of a corpus into the channel, in file order, up to [`FILES_AHEAD`] files at once;
/// stops at the first error (passed on) or when the reader is dropped.
async fn read_files(spec: CorpusSpec, files: CorpusFiles, first: Option<Builder>, tx: Sender) {
    let files = std::sync::Arc::new(files);
    let mut first = first;
    let mut base = 0u64;
    let mut next = 0;
    let mut running: std::collections::VecDeque<mpsc::Receiver<Result<Batch>>> = Default::default();
    loop {
        while running.len() < FILES_AHEAD && next < files.files.len() {
            let (file_tx, file_rx) = mpsc::channel(READ_AHEAD_BATCHES);
            let builder = if next == 0 { first.take() } else { None };
            let read = read_file(spec.clone(), files.clone(), next, base, builder, file_tx);
            tokio::spawn(read);
            base += files.files[next].size;
            running.push_back(file_rx);
            next += 1;
        }
        let Some(mut rx) = running.pop_front() else {
            return;
        };
        while let Some(batch) = rx.recv().await {
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                return;
            }
        }
    }
}

/// Reads one file of a corpus into its channel (an error is sent there).
async fn read_file(
    spec: CorpusSpec,
    files: std::sync::Arc<CorpusFiles>,
    index: usize,
    base: u64,
    builder: Option<Builder>,
    tx: Sender,
) {
    let file = &files.files[index];
    let ctx = FileCtx {
        url: files.display(file),
        index,
        id_prefix: if files.single {
            String::new()
        } else {
            format!("{}:", file.name)
        },
        base,
        units: file.size,
    };
    match file.format {
        Format::Jsonl | Format::Text => {
            let get = match files.location.store.get(&file.path).await {
                Ok(g) => g,
                Err(e) => {
                    let reason = store::describe_store_error(&e);
                    let err = CacheError::Corpus {
                        url: ctx.url,
                        reason,
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            };
            // A local file is read as a file: object_store would hand it over in 8 KiB pieces,
            // each a hop through the blocking pool.
            let reader: Box<dyn Read + Send> = match get.payload {
                object_store::GetResultPayload::File(file, _) => Box::new(file),
                object_store::GetResultPayload::Stream(stream) => {
                    let stream = futures::TryStreamExt::map_err(stream, std::io::Error::other);
                    let reader = tokio_util::io::StreamReader::new(stream);
                    Box::new(tokio_util::io::SyncIoBridge::new(reader))
                }
            };
            let format = file.format;
            let _ =
                tokio::task::spawn_blocking(move || read_lines(reader, format, &spec, &ctx, &tx))
                    .await;
        }
        Format::Parquet => {
            let builder = match builder {
                Some(b) => b,
                None => match parquet_builder(&files, index).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let ctx = FileCtx {
                units: if files.single {
                    builder.metadata().file_metadata().num_rows().max(0) as u64
                } else {
                    file.size
                },
                ..ctx
            };
            read_parquet_guarded(builder, &spec, &ctx, &tx).await;
        }
    }
}

/// [`read_parquet`], with a panic inside the parquet crate (a damaged file) ending the read with an
/// error rather than closing the channel as if the corpus ended there.
async fn read_parquet_guarded(
    builder: Builder,
    spec: &CorpusSpec,
    ctx: &FileCtx,
    tx: &Sender,
) -> bool {
    use futures::FutureExt;
    let read = std::panic::AssertUnwindSafe(read_parquet(builder, spec, ctx, tx));
    match read.catch_unwind().await {
        Ok(went_on) => went_on,
        Err(e) => {
            let why = crate::format::panic_message(e.as_ref()).to_owned();
            let _ = tx
                .send(Err(CacheError::Corpus {
                    url: ctx.url.clone(),
                    reason: format!("a damaged Parquet file ({why})"),
                }))
                .await;
            false
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

/// Reads one JSONL or text file into the channel; `false` when it failed (the error sent) or the
/// reader was dropped.
fn read_lines(
    reader: impl Read + Send,
    format: Format,
    spec: &CorpusSpec,
    ctx: &FileCtx,
    tx: &Sender,
) -> bool {
    let fail = |reason: String| CacheError::Corpus {
        url: ctx.url.clone(),
        reason,
    };
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mark = || ctx.base + count.load(std::sync::atomic::Ordering::Relaxed);
    let send = |entries: Vec<Entry>, mark: u64| {
        let batch = Batch {
            entries,
            mark,
            file: ctx.index,
        };
        tx.blocking_send(Ok(batch)).is_ok()
    };
    let mut input = match decompress(Counting {
        inner: reader,
        count: count.clone(),
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(fail(format!("cannot read: {e}"))));
            return false;
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
                return false;
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
                Format::Text => parse_text_line(raw, line_no, &ctx.id_prefix),
                _ => parse_json_line(raw, line_no, spec, &ctx.id_prefix),
            });
        }
        if batch.len() == BATCH_ENTRIES && !send(std::mem::take(&mut batch), mark()) {
            return false; // the reader was dropped
        }
    }
    batch.is_empty() || send(batch, mark())
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
        file: None,
    })
}

fn parse_text_line(raw: &[u8], line: u64, id_prefix: &str) -> Entry {
    match std::str::from_utf8(raw) {
        Ok(text) => Entry::Row(Row {
            line,
            id: format!("{id_prefix}line-{line}"),
            text: text.trim().to_owned(),
        }),
        Err(e) => reject(
            line,
            None,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        ),
    }
}

fn parse_json_line(raw: &[u8], line: u64, spec: &CorpusSpec, id_prefix: &str) -> Entry {
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
    let seed = Fields {
        text: &spec.text_field,
        id: &spec.id_field,
    };
    let mut de = serde_json::Deserializer::from_str(s);
    let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|f| {
        de.end()?;
        Ok(f)
    });
    let (text, id) = match parsed {
        Ok(Some(fields)) => fields,
        Ok(None) => return reject(line, None, "not a JSON object"),
        Err(e) => return reject(line, None, format!("invalid JSON: {e}")),
    };
    let id = match id {
        None | Some(serde_json::Value::Null) => format!("{id_prefix}line-{line}"),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
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
    match text {
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
                kind(&other)
            ),
        ),
    }
}

/// Reads a JSON line's text and id fields only (the rest is skipped, not built): `None` when the
/// line is not an object. A field given twice takes its last value.
struct Fields<'a> {
    text: &'a str,
    id: &'a str,
}

type TextAndId = Option<(Option<serde_json::Value>, Option<serde_json::Value>)>;

/// Which field a key names, compared without allocating it.
#[derive(Clone, Copy)]
struct Key<'a> {
    text: &'a str,
    id: &'a str,
}

enum Which {
    Text,
    Id,
    Other,
}

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = Which;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Which, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = Which;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Which, E> {
        Ok(if key == self.text {
            Which::Text
        } else if key == self.id {
            Which::Id
        } else {
            Which::Other
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Fields<'_> {
    type Value = TextAndId;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = TextAndId;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut text, mut id) = (None, None);
        let names = Key {
            text: self.text,
            id: self.id,
        };
        while let Some(key) = map.next_key_seed(names)? {
            match key {
                Which::Text => {
                    let v: serde_json::Value = map.next_value()?;
                    if self.text == self.id {
                        id = Some(v.clone());
                    }
                    text = Some(v);
                }
                Which::Id => id = Some(map.next_value()?),
                Which::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some((text, id)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
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

fn text_row(line: u64, id: String, text: String) -> Entry {
    if text.trim().is_empty() {
        reject(line, Some(id), "empty text")
    } else {
        Entry::Row(Row { line, id, text })
    }
}

/// Reads one Parquet file into the channel; `false` when it failed (the error sent) or the reader
/// was dropped.
async fn read_parquet(builder: Builder, spec: &CorpusSpec, ctx: &FileCtx, tx: &Sender) -> bool {
    use futures::StreamExt;
    let fail = |reason: String| CacheError::Corpus {
        url: ctx.url.clone(),
        reason,
    };
    let rows_in_file = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let mark = |row: u64| ctx.base + ctx.units.saturating_mul(row) / rows_in_file;
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
        return false;
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
            return false;
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
                return false;
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
                return false;
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
                    return false;
                }
            },
        };
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.into_iter().enumerate() {
            let id = ids
                .as_ref()
                .and_then(|v| v[i].clone())
                .unwrap_or_else(|| format!("{}row-{row}", ctx.id_prefix));
            out.push(match text {
                Some(t) => text_row(row, id, t),
                None => reject(
                    row,
                    Some(id),
                    format!("text column {:?} is null", spec.text_field),
                ),
            });
            row += 1;
        }
        let batch = Batch {
            entries: out,
            mark: mark(row),
            file: ctx.index,
        };
        if tx.send(Ok(batch)).await.is_err() {
            return false;
        }
    }
    true
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

    #[test]
    fn globs_match_within_a_segment() {
        assert!(glob_match("part-*.parquet", "part-00.parquet"));
        assert!(!glob_match("part-*.parquet", "sub/part-00.parquet"));
        assert!(glob_match("*/part-?.jsonl", "a/part-1.jsonl"));
        assert!(glob_match("part-[0-2].txt", "part-2.txt"));
        assert!(!glob_match("part-[0-2].txt", "part-3.txt"));
        assert!(glob_match("a[b", "a[b"), "an unclosed class is literal");
        assert_eq!(
            split_glob("s3://b/data/part-*.parquet"),
            ("s3://b/data".to_owned(), Some("part-*.parquet".to_owned()))
        );
        assert_eq!(split_glob("/x/y.jsonl"), ("/x/y.jsonl".to_owned(), None));
    }

    /// A folder is one corpus: its files in name order (hidden files and markers passed over), ids
    /// made from file and line, rejects naming their file, ids unique across files.
    #[tokio::test]
    async fn a_folder_of_files_reads_as_one_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(
                b"{\"id\":\"b1\",\"text\":\"second file\"}\n{\"id\":\"a1\",\"text\":\"dup\"}\n",
            )
            .unwrap();
            e.finish().unwrap()
        };
        write(&dir, "b.jsonl.gz", &gz);
        let a = b"{\"id\":\"a1\",\"text\":\"first\"}\n{\"text\":\"no id\"}\nbad\n";
        write(&dir, "a.jsonl", a);
        write(&dir, "_SUCCESS", b"");
        write(&dir, ".a.jsonl.crc", b"junk");
        let spec = CorpusSpec::new(dir.path().to_str().unwrap());
        let mut r = CorpusReader::open(&spec).await.unwrap();
        assert_eq!(r.total(), (gz.len() + a.len()) as u64, "stored bytes");
        let s = r.next_shard(10).await.unwrap().unwrap();
        let rows: Vec<_> = s.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(rows, ["a1", "a.jsonl:line-2", "b1"]);
        let rejects: Vec<_> = s
            .rejects
            .iter()
            .map(|r| (r.file.as_deref(), r.line, r.reason.as_str()))
            .collect();
        assert_eq!(rejects[0].0, Some("a.jsonl"));
        assert_eq!(rejects[0].1, 3);
        assert_eq!(
            rejects[1],
            (
                Some("b.jsonl.gz"),
                2,
                "duplicate id \"a1\" (first at a.jsonl line 1)"
            )
        );
        let place = s.rejects[0].place("data/", "line");
        assert_eq!(place, "data/a.jsonl:3");
        let all = ids(&spec).await.unwrap();
        assert_eq!(all.len(), 3);
        // A glob picks files; nothing matched, or two formats, is refused naming them.
        let glob = CorpusSpec::new(format!("{}/b.*", dir.path().display()));
        let mut r = CorpusReader::open(&glob).await.unwrap();
        assert_eq!(r.next_shard(10).await.unwrap().unwrap().rows[0].id, "b1");
        let none = CorpusSpec::new(format!("{}/*.parquet", dir.path().display()));
        let err = CorpusReader::open(&none).await.unwrap_err().to_string();
        assert!(err.contains("no file matches"), "{err}");
        write(&dir, "c.txt", b"plain\n");
        let err = CorpusReader::open(&spec).await.unwrap_err().to_string();
        assert!(
            err.contains("two formats") && err.contains("c.txt"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("c.txt")).unwrap();
        write(&dir, "d.csv", b"x\n");
        let err = CorpusReader::open(&spec).await.unwrap_err().to_string();
        assert!(err.contains("d.csv") && err.contains("--format"), "{err}");
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
