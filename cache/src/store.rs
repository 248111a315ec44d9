//! Opening object stores from URLs.
//!
//! One function, [`open`], turns what a user typed (`/data/cache`, `file:///data/cache`,
//! `s3://bucket/prefix`, `gs://…`, `az://…`, `memory://name`, `https://…`) into a store and a root
//! prefix inside it. Credentials and endpoints come from the usual environment variables of each cloud
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
//!
//! Remote stores get bounded retries (so an unreachable endpoint fails in seconds, not minutes).

use crate::{CacheError, Result};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// An object store and the prefix inside it that a URL names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL as the user gave it, for messages.
    pub url: String,
}

impl Location {
    /// The path of `rel` (a `/`-separated relative path) under this location's prefix.
    pub fn child(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// A readable name for an object of this store: the URL joined with its path under the prefix.
    pub fn display(&self, path: &Path) -> String {
        let rel = path
            .as_ref()
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(path.as_ref());
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            rel.trim_start_matches('/')
        )
    }

    /// Wraps the store (for decorators such as fault injection, throttling or metrics).
    pub fn with_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = store;
        self
    }
}

/// Stores named `memory://NAME` live as long as the process; the same name gives the same store.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<object_store::memory::InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
        OnceLock::new();
    STORES.get_or_init(Default::default)
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(allow_http)
}

/// Plain-HTTP endpoints are allowed when `<PREFIX>_ALLOW_HTTP` is true, or when the configured endpoint
/// itself is an `http://` URL (a local test server: saying so twice helps nobody).
fn allow_http(prefix: &str) -> bool {
    let var = |k: &str| std::env::var(format!("{prefix}_{k}")).unwrap_or_default();
    var("ALLOW_HTTP").eq_ignore_ascii_case("true")
        || var("ENDPOINT_URL").starts_with("http://")
        || var("ENDPOINT").starts_with("http://")
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// True when `s` has a URL scheme (and is not a Windows drive letter).
fn has_scheme(s: &str) -> bool {
    match s.find("://") {
        Some(i) => {
            i > 1
                && s[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        }
        None => false,
    }
}

/// Opens the store a URL or local path names. With `create_local`, a missing local directory is created
/// (output stores); otherwise it must exist (inputs).
pub fn open(url: &str, create_local: bool) -> Result<Location> {
    let bad = |reason: String| CacheError::StoreUrl {
        url: url.to_owned(),
        reason,
    };
    if url.is_empty() {
        return Err(bad("empty URL".into()));
    }
    if !has_scheme(url) {
        return open_local(url, std::path::Path::new(url), create_local);
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let path_in = |p: &str| Path::parse(p.trim_start_matches('/')).map_err(|e| bad(e.to_string()));
    match parsed.scheme() {
        "file" => {
            let p = parsed.to_file_path().map_err(|_| bad("not a local file path".into()))?;
            open_local(url, &p, create_local)
        }
        "memory" => {
            let name = parsed.host_str().unwrap_or("default").to_owned();
            let store = memory_stores().lock().expect("poisoned").entry(name).or_default().clone();
            Ok(Location { store, prefix: path_in(parsed.path())?, url: url.to_owned() })
        }
        "s3" | "s3a" => {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_client_options(client_options(allow_http("AWS")))
                .with_retry(retry())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            Ok(Location { store: Arc::new(store), prefix: path_in(parsed.path())?, url: url.to_owned() })
        }
        "gs" => {
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_client_options(client_options(false))
                .with_retry(retry())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            Ok(Location { store: Arc::new(store), prefix: path_in(parsed.path())?, url: url.to_owned() })
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_client_options(client_options(allow_http("AZURE")))
                .with_retry(retry())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            // az://container/path: the container is the host; the prefix is the path.
            Ok(Location { store: Arc::new(store), prefix: path_in(parsed.path())?, url: url.to_owned() })
        }
        "http" | "https" => {
            let origin = parsed[..url::Position::BeforePath].to_string();
            let store = object_store::http::HttpBuilder::new()
                .with_url(origin)
                .with_client_options(client_options(true))
                .with_retry(retry())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            Ok(Location { store: Arc::new(store), prefix: path_in(parsed.path())?, url: url.to_owned() })
        }
        other => Err(bad(format!(
            "unsupported scheme {other:?}; use a local path, file://, s3://, gs://, az://, memory:// or https://"
        ))),
    }
}

fn open_local(url: &str, dir: &std::path::Path, create: bool) -> Result<Location> {
    let store_err = |reason: String| CacheError::Store {
        url: url.to_owned(),
        reason,
    };
    if create {
        std::fs::create_dir_all(dir)
            .map_err(|e| store_err(format!("cannot create directory: {e}")))?;
    }
    let meta =
        std::fs::metadata(dir).map_err(|e| store_err(format!("cannot open directory: {e}")))?;
    if !meta.is_dir() {
        return Err(store_err("not a directory".into()));
    }
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| store_err(e.to_string()))?
        .with_automatic_cleanup(true);
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        url: url.to_owned(),
    })
}

/// Checks that a store answers and that its bucket exists, with a message that says which.
pub async fn probe(loc: &Location) -> Result<()> {
    use futures::TryStreamExt;
    let mut list = loc.store.list(Some(&loc.prefix));
    match list.try_next().await {
        Ok(_) => Ok(()),
        Err(e) if is_refusal(&e) => Err(CacheError::StoreRefused {
            url: loc.url.clone(),
            reason: describe_store_error(&e),
        }),
        Err(e) => Err(CacheError::Store {
            url: loc.url.clone(),
            reason: describe_store_error(&e),
        }),
    }
}

/// Whether a store error is the store answering "no" (a missing bucket, denied access, bad
/// credentials) rather than being out of reach: a misconfiguration that waiting does not fix.
pub fn is_refusal(e: &object_store::Error) -> bool {
    if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) {
        return true;
    }
    let lower = e.to_string().to_ascii_lowercase();
    [
        "nosuchbucket",
        "bucket does not exist",
        "specified bucket",
        "accessdenied",
        "forbidden",
        "signaturedoesnotmatch",
        "invalidaccesskeyid",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// Largest object distill reads whole from a store (a record, a manifest, a shard, a staged input
/// compressed or not): a larger one is refused before it is read, whatever its name claims.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// The whole object at `path` (`None` if absent), refused with one line naming it when it is larger
/// than `max` bytes: checked from the object's size before its body is read.
pub async fn get_bounded(
    loc: &Location,
    path: &Path,
    what: &str,
    max: u64,
) -> Result<Option<bytes::Bytes>> {
    use object_store::ObjectStoreExt;
    let url = || loc.display(path);
    let err = |e: object_store::Error| CacheError::Store {
        url: url(),
        reason: describe_store_error(&e),
    };
    let get = match loc.store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if get.meta.size > max {
        return Err(CacheError::Shard {
            path: url(),
            reason: format!(
                "{} bytes, more than a {what} can be ({max}): not an object distill wrote; delete or replace it",
                get.meta.size
            ),
        });
    }
    get.bytes().await.map(Some).map_err(err)
}

/// Decompresses zstd `bytes` into at most `max` bytes, in bounded pieces: a stream that would expand
/// further is refused (a decompression bomb costs `max`, not its claim).
pub fn zstd_bounded(bytes: &[u8], max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let dec = zstd::stream::read::Decoder::new(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    dec.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > max {
        return Err(format!("decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// A one-line explanation of a store error, with the likely fix.
pub fn describe_store_error(e: &object_store::Error) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("nosuchbucket")
        || lower.contains("bucket does not exist")
        || lower.contains("specified bucket")
    {
        "the bucket does not exist: create it first".into()
    } else if lower.contains("connect")
        || lower.contains("error sending request")
        || lower.contains("dns")
        || lower.contains("timed out")
    {
        format!(
            "cannot reach the store (check AWS_ENDPOINT_URL / network): {}",
            first_line(&text)
        )
    } else if lower.contains("accessdenied")
        || lower.contains("forbidden")
        || lower.contains("signature")
    {
        format!("access denied (check credentials): {}", first_line(&text))
    } else {
        first_line(&text).to_owned()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        let loc = open(sub.to_str().unwrap(), true).unwrap();
        assert!(sub.is_dir());
        assert_eq!(loc.child("x/y.parquet").as_ref(), "x/y.parquet");
        let url = format!("file://{}", sub.display());
        open(&url, false).unwrap();
        let missing = dir.path().join("missing");
        let err = open(missing.to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing") && err.contains("cannot open directory"),
            "{err}"
        );
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = open("memory://shared-test/p", true).unwrap();
        let b = open("memory://shared-test/p", true).unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert_eq!(a.prefix.as_ref(), "p");
    }

    #[test]
    fn unknown_scheme_is_named() {
        let err = open("ftp://host/x", true).unwrap_err().to_string();
        assert!(err.contains("ftp"), "{err}");
    }
}
