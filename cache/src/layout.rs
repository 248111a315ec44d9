//! Where things live in a cache store. Every path is relative to the store URL's prefix.
//!
//! ```text
//! v1/<teacher>/teacher.json                                   what the teacher is (written once)
//! v1/<teacher>/<output>/output.json                           the output spec (written once)
//! v1/<teacher>/<output>/shards/<shard>.parquet                one shard's soft labels (the commit)
//! v1/<teacher>/<output>/shards/<shard>.rejects.jsonl          its rejected entries, if any
//! v1/<teacher>/<output>/corpora/<corpus>.json                 the shard list of one corpus
//! v1/tasks/<name>.json                                       a task: its labels, head and logits entry
//! ```
//!
//! `<teacher>`, `<output>`, `<shard>` and `<corpus>` are fingerprints, so the path of a shard's labels is
//! a function of what it contains: any job, by anyone, that needs the same labels finds them here.
//! `v1` is [`crate::SCHEMA_VERSION`].

use crate::fingerprint::Fingerprint;

/// The content address of one cached shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardKey {
    pub teacher: Fingerprint,
    pub output: Fingerprint,
    pub shard: Fingerprint,
}

fn root() -> String {
    format!("v{}", crate::SCHEMA_VERSION)
}

impl ShardKey {
    /// The Parquet file: present only when the shard is committed.
    pub fn data_path(&self) -> String {
        format!(
            "{}/shards/{}.parquet",
            output_dir(&self.teacher, &self.output),
            self.shard
        )
    }

    /// The rejects record (JSONL), written before the data file when a shard has rejects.
    pub fn rejects_path(&self) -> String {
        format!(
            "{}/shards/{}.rejects.jsonl",
            output_dir(&self.teacher, &self.output),
            self.shard
        )
    }
}

pub fn teacher_path(teacher: &Fingerprint) -> String {
    format!("{}/{teacher}/teacher.json", root())
}

pub fn output_dir(teacher: &Fingerprint, output: &Fingerprint) -> String {
    format!("{}/{teacher}/{output}", root())
}

pub fn output_path(teacher: &Fingerprint, output: &Fingerprint) -> String {
    format!("{}/output.json", output_dir(teacher, output))
}

pub fn corpus_manifest_path(
    teacher: &Fingerprint,
    output: &Fingerprint,
    corpus: &Fingerprint,
) -> String {
    format!("{}/corpora/{corpus}.json", output_dir(teacher, output))
}

/// The root of all entries of this schema version.
pub fn version_root() -> String {
    root()
}

/// The folder of task records.
pub fn tasks_dir() -> String {
    format!("{}/tasks", root())
}

/// A task record (see [`crate::task`]).
pub fn task_path(name: &str) -> String {
    format!("{}/{name}.json", tasks_dir())
}
