//! The Kubernetes manifests (`deploy/k8s`) against the binary they run: every subcommand, flag and
//! `DISTILL_*` variable they use exists for the command that gets it; the container ports are the
//! addresses the processes listen on; Services, probes, the workers' coordinator URL and the
//! autoscaler's metric point at things a real coordinator and worker serve.
//!
//! The manifests are rendered by `scripts/manifest_commands.py` (`kubectl kustomize`, then PyYAML);
//! without kubectl (`DISTILL_KUBECTL`, default `kubectl`) or PyYAML that test skips (fails under
//! `DISTILL_REQUIRE_ALL=1`). Schemas and security policies are `scripts/check-deploy.sh`'s job.

use crate::common::{distill, prerequisite, python_with, repo_root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Variables the binary reads that are no flag's fallback (so `--help` does not show them), with the
/// source file that reads each.
const NON_FLAG_ENV: &[(&str, &str)] = &[("DISTILL_MODEL_CACHE", "cache/src/model_dir.rs")];

/// One option of a `--help` text.
#[derive(Debug)]
struct Opt {
    env: Option<String>,
    default: Option<String>,
    text: String,
}

/// `distill … --help`, parsed: options by long name, and whether there are subcommands.
#[derive(Debug)]
struct Help {
    opts: BTreeMap<String, Opt>,
    has_subcommands: bool,
}

/// An option's first line: `  -h, --help` or `      --listen <LISTEN>` (descriptions and possible
/// values of the long format are indented further).
fn is_option_header(line: &str) -> bool {
    line.starts_with("      --")
        || (line.starts_with("  -")
            && line[3..].starts_with(|c: char| c.is_ascii_alphabetic())
            && line.contains(", --"))
}

/// The text between `tag` and the next `]` of `block`.
fn bracket(block: &str, tag: &str) -> Option<String> {
    let rest = &block[block.find(tag)? + tag.len()..];
    Some(rest[..rest.find(']')?].to_owned())
}

fn finish(current: Option<(String, String)>, opts: &mut BTreeMap<String, Opt>) {
    if let Some((name, text)) = current {
        let env =
            bracket(&text, "[env: ").map(|e| e.split('=').next().unwrap_or_default().to_owned());
        let default = bracket(&text, "[default: ");
        opts.insert(name, Opt { env, default, text });
    }
}

fn parse_help(text: &str) -> Help {
    let mut opts = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if is_option_header(line) {
            finish(current.take(), &mut opts);
            let name = line
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .expect("an option header names a long flag")
                .trim_end_matches(',')
                .to_owned();
            current = Some((name, line.to_owned()));
        } else if line.is_empty() || line.starts_with(' ') {
            if let Some((_, block)) = current.as_mut() {
                block.push('\n');
                block.push_str(line);
            }
        } else {
            finish(current.take(), &mut opts);
        }
    }
    finish(current, &mut opts);
    Help {
        opts,
        has_subcommands: text.contains("\nCommands:\n"),
    }
}

/// `--help` of each subcommand path, run once.
#[derive(Default)]
struct Helps(HashMap<Vec<String>, Option<Help>>);

impl Helps {
    fn get(&mut self, path: &[String]) -> Option<&Help> {
        self.0
            .entry(path.to_vec())
            .or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let out = distill(&args);
                out.status
                    .success()
                    .then(|| parse_help(&String::from_utf8_lossy(&out.stdout)))
            })
            .as_ref()
    }

    /// The subcommand path a container's arguments run (`["task", "fit"]`) and where the rest begins.
    fn resolve(&mut self, args: &[String], what: &str) -> (Vec<String>, usize) {
        let mut path: Vec<String> = Vec::new();
        while self.get(&path).expect("distill --help").has_subcommands {
            let word = args
                .get(path.len())
                .filter(|w| !w.starts_with('-'))
                .unwrap_or_else(|| {
                    panic!("{what}: `distill {}` needs a subcommand", path.join(" "))
                });
            path.push(word.clone());
            assert!(
                self.get(&path).is_some(),
                "{what} runs `distill {}`, which is no command of the binary",
                path.join(" ")
            );
        }
        let rest = path.len();
        (path, rest)
    }
}

/// The value of `--flag` in `args` (`--flag=v` or `--flag v`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(flag)?.strip_prefix('=').map(str::to_owned)
        }
    })
}

/// What a container's process uses for `flag`: the flag, else its environment variable, else the
/// default.
fn setting(
    help: &Help,
    args: &[String],
    env: &serde_json::Map<String, Value>,
    flag: &str,
) -> Option<String> {
    let opt = help.opts.get(flag)?;
    flag_value(args, flag)
        .or_else(|| {
            let name = opt.env.as_ref()?;
            env.get(name)?.as_str().map(str::to_owned)
        })
        .or_else(|| opt.default.clone())
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in listen address {addr:?}"))
}

/// A container port by name or number.
fn container_port(c: &Value, port: &Value) -> Option<u64> {
    let ports = c["ports"].as_array()?;
    match port {
        Value::Number(n) => ports
            .iter()
            .find(|p| p["containerPort"].as_u64() == n.as_u64())
            .and_then(|p| p["containerPort"].as_u64()),
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64()),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// distill's own containers: the image's repository is `…/distill`.
fn is_distill(c: &Value) -> bool {
    let image = c["image"].as_str().unwrap_or_default();
    let repo = image.split('@').next().unwrap_or_default();
    let name = repo.rsplit('/').next().unwrap_or_default();
    name.split(':').next() == Some("distill")
}

fn manifests() -> Option<Value> {
    let kubectl = std::env::var("DISTILL_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let has_kubectl = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    prerequisite(
        &format!("kubectl ({kubectl}), to render deploy/k8s"),
        has_kubectl.then_some(()),
    )?;
    let python = python_with("yaml")?;
    let out = Command::new(python)
        .arg(repo_root().join("scripts/manifest_commands.py"))
        .env("DISTILL_KUBECTL", &kubectl)
        .output()
        .expect("run scripts/manifest_commands.py");
    assert!(
        out.status.success(),
        "scripts/manifest_commands.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("manifest JSON"))
}

#[test]
fn manifests_run_real_commands_flags_variables_ports_and_probes() {
    let Some(m) = manifests() else { return };
    let mut helps = Helps::default();
    let containers = m["containers"].as_array().expect("containers");
    let services = m["services"].as_array().expect("services");
    let mut subcommands_seen = BTreeSet::new();

    for c in containers.iter().filter(|c| is_distill(c)) {
        let what = format!(
            "{} {}/{} container {}",
            c["kustomization"].as_str().unwrap_or_default(),
            c["kind"].as_str().unwrap_or_default(),
            c["workload"].as_str().unwrap_or_default(),
            c["container"].as_str().unwrap_or_default()
        );
        let command = strings(&c["command"]);
        assert!(
            command.is_empty() || command == ["distill"],
            "{what}: command {command:?} is not the binary (the image's entrypoint is `distill`)"
        );
        let args = strings(&c["args"]);
        let env = c["env"].as_object().expect("env");
        let (path, rest) = helps.resolve(&args, &what);
        let help = helps.get(&path).expect("resolved");
        let rest = &args[rest..];
        subcommands_seen.insert(path.join(" "));

        // Every flag exists for this subcommand, and none is also set, differently, by its variable.
        for a in rest.iter().filter(|a| a.starts_with("--")) {
            let flag = a.split('=').next().unwrap_or_default();
            let opt = help.opts.get(flag).unwrap_or_else(|| {
                panic!("{what}: `distill {}` has no flag {flag}", path.join(" "))
            });
            if let (Some(var), Some(given)) = (&opt.env, flag_value(rest, flag)) {
                if let Some(v) = env.get(var).and_then(Value::as_str) {
                    assert_eq!(v, given, "{what}: {flag} {given} and {var}={v} disagree");
                }
            }
        }

        // Every DISTILL_* variable is one this subcommand reads.
        let reads: BTreeSet<&str> = help
            .opts
            .values()
            .filter_map(|o| o.env.as_deref())
            .collect();
        for name in env.keys().filter(|n| n.starts_with("DISTILL_")) {
            if reads.contains(name.as_str()) {
                continue;
            }
            let (_, file) = NON_FLAG_ENV
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: sets {name}, which `distill {}` does not read",
                        path.join(" ")
                    )
                });
            let src = std::fs::read_to_string(repo_root().join(file)).unwrap();
            assert!(
                src.contains(&format!("\"{name}\"")),
                "{file} no longer reads {name}"
            );
        }

        // `$(VAR)` in arguments is expanded by Kubernetes only for variables the container has.
        for a in &args {
            let mut s = a.as_str();
            while let Some(i) = s.find("$(") {
                let end = s[i..].find(')').expect("closed $(") + i;
                let var = &s[i + 2..end];
                assert!(
                    env.contains_key(var),
                    "{what}: {a} refers to $({var}), which is not set"
                );
                s = &s[end + 1..];
            }
        }

        // Ports: named `grpc` and `metrics`, at the addresses the process listens on; no others.
        let grpc = setting(help, rest, env, "--listen").map(|a| port_of(&a));
        let metrics = setting(help, rest, env, "--metrics-listen").map(|a| port_of(&a));
        for (name, expected) in [("grpc", grpc), ("metrics", metrics)] {
            let declared = container_port(c, &Value::String(name.into()));
            assert_eq!(
                declared, expected,
                "{what}: container port {name} vs the listen address"
            );
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            let n = p["containerPort"].as_u64();
            assert!(
                n == grpc || n == metrics,
                "{what}: port {p} is nothing the process listens on"
            );
        }

        // Probes: gRPC health on the gRPC port; HTTP on the metrics port, at a path the endpoint
        // serves; liveness only on /healthz (it must not depend on the store or the coordinator).
        let endpoints: BTreeSet<String> = help
            .opts
            .get("--metrics-listen")
            .map(|o| {
                o.text
                    .split(|ch: char| ch.is_whitespace() || ch == ',')
                    .filter(|w| w.starts_with('/'))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let probes = c["probes"].as_array().expect("probes");
        for p in probes {
            let port = container_port(c, &p["port"])
                .unwrap_or_else(|| panic!("{what}: probe {p} names no port of the container"));
            match p["type"].as_str() {
                Some("grpc") => {
                    assert_eq!(Some(port), grpc, "{what}: gRPC probe {p} off the gRPC port")
                }
                Some("httpGet") => {
                    assert_eq!(
                        Some(port),
                        metrics,
                        "{what}: HTTP probe {p} off the metrics port"
                    );
                    let path = p["path"].as_str().unwrap_or_default();
                    assert!(
                        endpoints.contains(path),
                        "{what}: probe {p}: the endpoint serves {endpoints:?}"
                    );
                }
                _ => panic!("{what}: unexpected probe {p}"),
            }
            if p["which"] == "liveness" {
                assert!(
                    p["type"] == "httpGet" && p["path"] == "/healthz",
                    "{what}: liveness probe {p} is not /healthz"
                );
            }
        }
        if c["kind"] == "Deployment" {
            for which in ["liveness", "readiness"] {
                assert!(
                    probes.iter().any(|p| p["which"] == which),
                    "{what}: no {which} probe"
                );
            }
        }

        // A coordinator URL names a Service of the same kustomization, on its gRPC port.
        if let Some(url) = env.get("DISTILL_COORDINATOR").and_then(Value::as_str) {
            let hostport = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
            let (host, port) = hostport
                .rsplit_once(':')
                .expect("port in DISTILL_COORDINATOR");
            let service = host.split('.').next().unwrap_or_default();
            let svc = services
                .iter()
                .find(|s| s["kustomization"] == c["kustomization"] && s["name"] == service)
                .unwrap_or_else(|| {
                    panic!("{what}: DISTILL_COORDINATOR {url}: no Service {service}")
                });
            let sp = svc["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "grpc"))
                .expect("the coordinator Service has a grpc port");
            assert_eq!(
                sp["port"].as_u64(),
                port.parse::<u64>().ok(),
                "{what}: {url} vs Service port {sp}"
            );
        }
    }
    for needed in ["coordinator", "worker", "train"] {
        assert!(
            subcommands_seen.contains(needed),
            "no manifest runs `distill {needed}`"
        );
    }

    // Every Service selects pods of its kustomization whose containers have its target ports.
    for s in services {
        let selector = s["selector"].as_object().expect("selector");
        let pods: Vec<&Value> = containers
            .iter()
            .filter(|c| c["kustomization"] == s["kustomization"])
            .filter(|c| selector.iter().all(|(k, v)| &c["labels"][k] == v))
            .collect();
        assert!(!pods.is_empty(), "Service {} selects no pod", s["name"]);
        for p in s["ports"].as_array().expect("ports") {
            assert!(
                pods.iter()
                    .any(|c| container_port(c, &p["targetPort"]).is_some()),
                "Service {} port {p}: no selected container has that port",
                s["name"]
            );
        }
    }
    assert!(
        !m["external_metrics"]
            .as_array()
            .expect("external_metrics")
            .is_empty(),
        "no autoscaler on the coordinator's queue depth"
    );
}

/// A `distill` process, killed when dropped; its stdout stays open so that it may still write.
struct Running {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    first_line: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `distill ARGS` and waits for its first line on stdout (the addresses it listens on).
fn start(args: &[&str]) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
    cmd.args(args)
        .env("DISTILL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for var in [
        "DISTILL_TOKEN",
        "DISTILL_TLS_CA",
        "DISTILL_TEACHER",
        "DISTILL_DEVICE",
        "DISTILL_WORKER_NAME",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("start distill");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("read stdout");
    let running = Running {
        child,
        _stdout: stdout,
        first_line,
    };
    assert!(
        !running.first_line.is_empty(),
        "distill {args:?} exited before listening"
    );
    running
}

impl Running {
    /// The value of `key=` in the first line.
    fn addr(&self, key: &str) -> String {
        self.first_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.first_line))
            .to_owned()
    }
}

/// `GET path` over HTTP/1.0: the status (0 when nothing answers) and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    if s.read_to_string(&mut response).is_err() {
        return (0, String::new());
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn wait_for_status(addr: &str, path: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = get(addr, path);
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {addr}{path}: {got} {body:?}, expected {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every `distill_…` metric name written in `text` (not prefixes such as `distill_worker_*`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("distill_") {
        let tail = &rest[i..];
        let len = tail
            .find(|ch: char| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        let preceded_by_word =
            rest[..i].ends_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_');
        if !preceded_by_word && !name.ends_with('_') && !tail[len..].starts_with('*') {
            names.insert(name.to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// What the probes and the autoscaler rely on, against real processes: a worker whose coordinator is
/// unreachable is alive but not ready; once the coordinator (local store) is up both are ready; the
/// metrics that the manifests and docs/deploy.md name are served.
#[test]
fn probe_endpoints_and_documented_metrics_are_served() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let grpc = format!("127.0.0.1:{port}");
    let worker = start(&[
        "worker",
        "--coordinator",
        &format!("http://{grpc}"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let worker_http = worker.addr("metrics");
    wait_for_status(&worker_http, "/healthz", 200, Duration::from_secs(10));
    let (ready, _) = get(&worker_http, "/readyz");
    assert_ne!(
        ready, 200,
        "a worker without a coordinator must not be ready"
    );

    let store = tempfile::tempdir().unwrap();
    let coordinator = start(&[
        "coordinator",
        "--store",
        store.path().to_str().unwrap(),
        "--listen",
        &grpc,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let coordinator_http = coordinator.addr("metrics");
    wait_for_status(&coordinator_http, "/healthz", 200, Duration::from_secs(10));
    wait_for_status(&coordinator_http, "/readyz", 200, Duration::from_secs(30));
    // The worker retries with backoff (at most 30 s between tries).
    wait_for_status(&worker_http, "/readyz", 200, Duration::from_secs(60));

    let (status, coordinator_metrics) = get(&coordinator_http, "/metrics");
    assert_eq!(status, 200);
    let (status, worker_metrics) = get(&worker_http, "/metrics");
    assert_eq!(status, 200);
    let served: BTreeSet<String> = metric_names(&coordinator_metrics)
        .into_iter()
        .chain(metric_names(&worker_metrics))
        .collect();

    let mut named = BTreeMap::new();
    let k8s = repo_root().join("deploy/k8s");
    let mut dirs = vec![k8s];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                for n in metric_names(&std::fs::read_to_string(&path).unwrap()) {
                    named.insert(n, path.display().to_string());
                }
            }
        }
    }
    assert!(
        named.contains_key("distill_pending_shards"),
        "the autoscaler's metric is gone from deploy/k8s"
    );
    let docs = repo_root().join("docs/deploy.md");
    for n in metric_names(&std::fs::read_to_string(&docs).unwrap()) {
        named.insert(n, docs.display().to_string());
    }
    for (name, file) in &named {
        assert!(
            served.contains(name),
            "{file} names {name}, which neither coordinator nor worker serves"
        );
    }
    drop(worker);
    drop(coordinator);
}

/// The `distill` commands of a Slurm script: each `"$DISTILL" SUB …` or `"$0" SUB …` (the binary
/// handed to a per-task `bash -c`), with line continuations joined, as words.
fn slurm_commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let code = line.trim_start();
        if code.starts_with('#') {
            continue;
        }
        for start in ["\"$DISTILL\" ", "exec \"$0\" "] {
            let Some(i) = code.find(start) else { continue };
            let words: Vec<String> = code[i + start.len()..]
                .split_whitespace()
                .take_while(|w| {
                    !matches!(*w, "<" | ">" | "&" | "|" | "&&") && !w.starts_with(['<', '>'])
                })
                .map(|w| w.trim_end_matches('\'').to_owned())
                .collect();
            // `bash -c '…' "$DISTILL" "$device" …`: the binary passed as `$0`, not a command.
            if words.first().is_some_and(|w| w.starts_with(['"', '$'])) {
                continue;
            }
            out.push(words);
        }
    }
    out
}

/// Every `DISTILL_*` name a text mentions.
fn distill_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("DISTILL_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = name.trim_end_matches('_');
        // `DISTILL_*` (a wildcard in prose) names no variable.
        if name != "DISTILL" {
            out.insert(name.to_owned());
        }
        rest = &rest[i + 8..];
    }
    out
}

#[test]
fn slurm_scripts_run_real_commands_flags_and_variables() {
    let dir = repo_root().join("deploy/slurm");
    let sbatch =
        std::fs::read_to_string(dir.join("distill.sbatch")).expect("deploy/slurm/distill.sbatch");
    let mut helps = Helps::default();
    let commands = slurm_commands(&sbatch);
    let mut seen = BTreeSet::new();
    for words in &commands {
        let what = format!("deploy/slurm/distill.sbatch: distill {}", words.join(" "));
        let (path, rest) = helps.resolve(words, &what);
        let help = helps.get(&path).expect("resolved");
        for a in words[rest..].iter().filter(|a| a.starts_with("--")) {
            let flag = a.split('=').next().unwrap_or_default();
            assert!(
                help.opts.contains_key(flag),
                "{what}: `distill {}` has no flag {flag}",
                path.join(" ")
            );
        }
        seen.insert(path.join(" "));
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "coordinator".to_owned(),
            "worker".to_owned(),
            "label".to_owned()
        ]),
        "the script runs a coordinator, workers and the label client"
    );

    // Every DISTILL_* variable it sets or documents is one of those commands reads (or a global one).
    let mut reads: BTreeSet<String> = NON_FLAG_ENV.iter().map(|(n, _)| n.to_string()).collect();
    for path in [
        vec![],
        vec!["coordinator".to_owned()],
        vec!["worker".to_owned()],
        vec!["label".to_owned()],
    ] {
        let help = helps.get(&path).expect("--help");
        reads.extend(help.opts.values().filter_map(|o| o.env.clone()));
    }
    for script in ["distill.sbatch", "single-node-check.sh"] {
        let text = std::fs::read_to_string(dir.join(script)).unwrap();
        for name in distill_vars(&text) {
            assert!(
                reads.contains(&name),
                "deploy/slurm/{script} names {name}, which no distill command it runs reads"
            );
        }
    }

    // The script reads the ports from the coordinator's first line (`grpc=HOST:PORT metrics=HOST:PORT`)
    // and waits for /readyz on the metrics port: both as the binary has them.
    assert!(sbatch.contains("'^coordinator listening '") && sbatch.contains("/readyz"));
    let store = tempfile::tempdir().unwrap();
    let coordinator = start(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    let line = &coordinator.first_line;
    assert!(line.starts_with("coordinator listening "), "{line:?}");
    let (grpc, metrics) = (
        line.find(" grpc=").unwrap(),
        line.find(" metrics=").unwrap(),
    );
    assert!(
        grpc < metrics,
        "grpc= before metrics=, as the script's pattern has them: {line:?}"
    );
    let metrics = coordinator.addr("metrics");
    wait_for_status(&metrics, "/readyz", 200, Duration::from_secs(30));
}
