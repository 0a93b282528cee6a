//! `cargo bench -p cellblock-tests --bench suite`
//!
//! On a release build, from the workspace root (about 4 minutes on 2 cores):
//! `CELLBLOCK_BIN=target/release/cellblock CELLBLOCK_TEST_TOOLS=$PWD/target/test-tools/bin
//! cargo bench -p cellblock-tests --bench suite`
//!
//! The whole picture in one run (issue #8). Every figure is measured next to
//! its baseline in the same run, so drift on a shared machine hits both:
//!
//! 1. **Create → ready** over HTTP, median / p90 / p99:
//!    - from the warm pool (`--pool-size 2`; before each create the pool is
//!      full again, so each is a pool hit: `from_pool` is checked);
//!    - cold (`--pool-size 0`): forked from the zygote (`kernel_origin` is
//!      checked);
//!    - cold and spawned (`--pool-size 0 --no-zygote`), the zygote's fallback;
//!    - the baseline: a plain `python -m ipykernel_launcher` from the image's
//!      venv, no isolation, spawn → `kernel_info` reply.
//!
//!    The four are interleaved, one of each per round. Then the same, plus
//!    the first execution `import numpy, pandas, matplotlib` (what the data
//!    stack costs the first cell), against a plain kernel doing the same
//!    over ZeroMQ. Warm page cache: one untimed round first.
//! 2. **Execute round trip of `pass`**: HTTP `execute`; the Jupyter websocket
//!    (`tests/scripts/ws_roundtrip.py` with the test tools' python; it reports
//!    p95, not p90); a direct ZeroMQ round trip with cellblock-protocol to a
//!    plain kernel (the baseline) and to the sandbox's own kernel (what is
//!    left when only the broker is taken out). HTTP and both ZeroMQ loops are
//!    interleaved in chunks of 100.
//!
//!    The plain kernel gets the image's IPython profile, matplotlib cache and
//!    backend like a sandbox's kernel (no history database), so the two
//!    differ by the isolation and the broker only.
//! 3. **Memory** of idle sandboxes (each ran `1+1` once) with 1, 50 and 200
//!    live, and at the density peak, next to a plain kernel alone: the sum
//!    of `Pss` from `/proc/PID/smaps_rollup` over a sandbox's processes (jail
//!    helpers, init, kernel: all are in its cgroup), mean per sandbox, and the
//!    zygote's own PSS apart (all forked kernels share it); the broker's `VmRSS`; the drop of `MemAvailable` per
//!    sandbox (which also counts tmpfs, page tables and kernel memory).
//!    Server: `--max-sandboxes 600 --pool-size 0`.
//! 4. **Density**, on the same server, continuing the ramp: sandboxes created
//!    4 at a time, each must answer `1+1` with `2`, until 500 are live, a
//!    create or execute fails, or `MemAvailable` is under 2 GiB. Then all
//!    are deleted (8 at a time) and the server's kernels must be gone.
//! 5. **Throughput**: 50 of those sandboxes (the rest deleted first) run
//!    `pass` in a loop over HTTP, all at once, for 10 s: executions per
//!    second in total and the per-execution latency; first 5 s each with 1,
//!    10 and 25 of them, to show how it scales.
//!
//! Where the CPU goes is metered alongside (user + system time from `/proc`
//! of the broker, of the sandboxes' processes and of this client, context
//! switches from `/proc/stat`, CPU-quota throttling from the sandboxes'
//! cgroups): per `pass` over HTTP and over ZeroMQ, per execution in the
//! throughput runs, and for the idle fleet at its peak.
//!
//! Knobs (defaults in brackets): `BENCH_CREATE_N` [50], `BENCH_IMPORT_N` [10],
//! `BENCH_EXEC_N` [500], `BENCH_DENSITY_MAX` [500], `BENCH_MIN_AVAILABLE_MIB`
//! [2048], `BENCH_CONCURRENCY` [4], `BENCH_TPUT_SANDBOXES` [50],
//! `BENCH_TPUT_SECS` [10], `BENCH_TPUT_STEP_SECS` [5], `BENCH_FLEET_ARGS`
//! [none; e.g. `--no-zygote`: extra `serve` arguments for figures 3–5]. The websocket client needs `CELLBLOCK_TEST_TOOLS`
//! (`target/test-tools/bin`, made by `./scripts/test.sh`). Servers are
//! stopped (and their kernels with them) when the bench ends or fails, and on
//! Ctrl-C / SIGTERM.
//!
//! Prints a table and writes `target/bench/suite.json`.

use cellblock_protocol::client::ClientOptions;
use cellblock_protocol::message::ExecuteRequest;
use cellblock_protocol::{ConnectionInfo, KernelClient};
use cellblock_tests::{proc_status_kib, Server, TempDir};
use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const IMPORT: &str = "import numpy, pandas, matplotlib";
const MIB: f64 = 1024.0;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// n, median, p90, p95, p99, mean, min and max of some durations, in ms.
fn stats(v: &[Duration]) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    let mut v = v.to_vec();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(),
        "median_ms": pick(0.5),
        "p90_ms": pick(0.9),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": mean,
        "min_ms": ms(v[0]),
        "max_ms": ms(v[v.len() - 1]),
    })
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// `MemAvailable` from `/proc/meminfo`, KiB.
fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// User and system CPU seconds of a process and all its threads (`/proc`
/// counts in USER_HZ, 100 on Linux).
fn cpu_split(pid: i32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0.0, 0.0);
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let tick = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / 100.0;
    (tick(0), tick(1))
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: i32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// Machine-wide CPU (busy and total jiffies) and context switches, from
/// `/proc/stat`.
fn machine_cpu() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    let ctxt = stat
        .lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (total - idle, total, ctxt)
}

/// User and system CPU seconds of every process of the server's sandboxes.
fn sandboxes_cpu_seconds(data_dir: &Path) -> (f64, f64) {
    let pids = cellblock_tests::processes_in_cgroup(&cellblock_tests::instance_group(data_dir));
    pids.iter()
        .map(|&p| cpu_split(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Periods the sandboxes' CPU quota throttled them, and for how long (s):
/// the sums of `nr_throttled` and `throttled_time` (cgroup v1, ns) or
/// `throttled_usec` (v2) over their cpu cgroups.
fn throttling(ids: &[String]) -> (u64, f64) {
    let (mut n, mut secs) = (0, 0.0);
    for id in ids {
        for dir in cellblock_tests::cgroup_dirs(&cellblock_tests::simple_id(id)) {
            let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) else {
                continue;
            };
            for l in stat.lines() {
                let mut kv = l.split_whitespace();
                let (Some(k), Some(v)) = (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok()))
                else {
                    continue;
                };
                match k {
                    "nr_throttled" => n += v,
                    "throttled_time" => secs += v as f64 / 1e9,
                    "throttled_usec" => secs += v as f64 / 1e6,
                    _ => {}
                }
            }
        }
    }
    (n, secs)
}

/// CPU use over a stretch of work: where the time went.
struct CpuMeter {
    broker_pid: i32,
    data_dir: PathBuf,
    broker: f64,
    sandboxes: (f64, f64),
    client: f64,
    machine: (u64, u64, u64),
    at: Instant,
}

impl CpuMeter {
    fn start(s: &Server) -> Self {
        Self {
            broker_pid: s.pid(),
            data_dir: s.data_dir.clone(),
            broker: cpu_seconds(s.pid()),
            sandboxes: sandboxes_cpu_seconds(&s.data_dir),
            client: cpu_seconds(std::process::id() as i32),
            machine: machine_cpu(),
            at: Instant::now(),
        }
    }

    /// CPU ms per operation of the broker, the sandboxes and this client;
    /// how busy the machine's cores were and the context switches per
    /// operation.
    fn per_op(&self, ops: usize) -> Value {
        let wall = self.at.elapsed().as_secs_f64();
        let ops = ops.max(1) as f64;
        let (busy, total, ctxt) = machine_cpu();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy_frac = (busy - self.machine.0) as f64 / (total - self.machine.1).max(1) as f64;
        let (user, system) = sandboxes_cpu_seconds(&self.data_dir);
        let (user, system) = (user - self.sandboxes.0, system - self.sandboxes.1);
        json!({
            "broker_cpu_ms": (cpu_seconds(self.broker_pid) - self.broker) * 1000.0 / ops,
            "sandboxes_cpu_ms": (user + system) * 1000.0 / ops,
            "sandboxes_user_ms": user * 1000.0 / ops,
            "sandboxes_system_ms": system * 1000.0 / ops,
            "client_cpu_ms": (cpu_seconds(std::process::id() as i32) - self.client) * 1000.0 / ops,
            "machine_cpu_ms": busy_frac * cores * wall * 1000.0 / ops,
            "machine_busy_pct": busy_frac * 100.0,
            "context_switches": (ctxt - self.machine.2) as f64 / ops,
        })
    }
}

/// Sends a request; status and JSON body (a string if not JSON), or why not.
async fn call(
    s: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let what = format!("{method} {path}");
    let mut rb = s.req(method, path);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, v))
}

/// Creates a sandbox: its view and how long the request took.
async fn create(s: &Server) -> Result<(Value, Duration), String> {
    let t = Instant::now();
    let (status, v) = call(s, Method::POST, "/v1/sandboxes", Some(json!({}))).await?;
    let took = t.elapsed();
    if status != 201 || !v["id"].is_string() {
        return Err(format!("create answered {status}: {v}"));
    }
    Ok((v, took))
}

/// Executes `code`; the result if it answered 200 with status ok.
async fn execute(s: &Server, id: &str, code: &str) -> Result<Value, String> {
    let path = format!("/v1/sandboxes/{id}/execute");
    let (status, v) = call(s, Method::POST, &path, Some(json!({ "code": code }))).await?;
    if status != 200 || v["status"] != "ok" {
        return Err(format!("execute {code:?} answered {status}: {v}"));
    }
    Ok(v)
}

async fn delete(s: &Server, id: &str) -> Result<(), String> {
    match call(s, Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await? {
        (204, _) => Ok(()),
        (status, v) => Err(format!("delete {id} answered {status}: {v}")),
    }
}

/// Deletes `ids`, `concurrency` at a time; the time taken and the failures.
async fn delete_all(s: &Server, ids: &[String], concurrency: usize) -> (Duration, Vec<String>) {
    let t = Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(ids)
        .map(|id| delete(s, id))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    (
        t.elapsed(),
        results.into_iter().filter_map(Result::err).collect(),
    )
}

async fn healthz(s: &Server) -> Value {
    match call(s, Method::GET, "/healthz", None).await {
        Ok((_, v)) => v,
        Err(e) => json!({ "error": e }),
    }
}

/// Waits until the warm pool holds `want` ready sandboxes (so nothing is
/// being started in the background either).
async fn wait_pool(s: &Server, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = healthz(s).await;
        if h["pool"]["ready"].as_u64() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pool did not refill to {want} in 120 s: {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The image's python, for the plain kernel baselines: the version the
/// server reports in `/healthz`.
async fn image_python(s: &Server) -> PathBuf {
    let h = healthz(s).await;
    let version = h["image"]["version"].as_str().expect("image version");
    let python = cellblock_tests::images_dir()
        .join(h["image"]["name"].as_str().unwrap_or("python"))
        .join(version)
        .join("venv/bin/python");
    assert!(python.exists(), "{} is missing", python.display());
    python
}

/// Copies a directory tree (files and directories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a directory");
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copying a file");
        }
    }
}

/// A bare kernel from the image's venv: no isolation, no broker.
struct PlainKernel {
    client: KernelClient,
    child: tokio::process::Child,
    _dir: TempDir,
}

impl PlainKernel {
    /// Spawns `python -m ipykernel_launcher` and waits for its `kernel_info`
    /// reply; returns it and the time that took. It gets what a sandbox's
    /// kernel gets from the image (the IPython profile: no history database,
    /// plain tracebacks; matplotlib's font cache and inline backend), so the
    /// two differ by the isolation and the broker only.
    async fn start(python: &Path) -> (Self, Duration) {
        let dir = TempDir::new();
        let conn = ConnectionInfo::new_ipc(&dir.0.join("k"));
        let conn_path = dir.0.join("k.json");
        conn.write(&conn_path).expect("connection file");
        let image = python.ancestors().nth(3).expect("<image>/venv/bin/python");
        copy_dir(
            &image.join("ipython/profile_default"),
            &dir.0.join("ipy/profile_default"),
        );
        copy_dir(&image.join("mplcache"), &dir.0.join("mpl"));
        let t = Instant::now();
        let child = tokio::process::Command::new(python)
            .args(["-m", "ipykernel_launcher", "-f"])
            .arg(&conn_path)
            .env("IPYTHONDIR", dir.0.join("ipy"))
            .env("MPLCONFIGDIR", dir.0.join("mpl"))
            .env("MPLBACKEND", "module://matplotlib_inline.backend_inline")
            .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kernel");
        let client = KernelClient::connect(&conn, ClientOptions::default())
            .await
            .expect("connect");
        client
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("plain kernel ready");
        let took = t.elapsed();
        (
            Self {
                client,
                child,
                _dir: dir,
            },
            took,
        )
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One execution over ZeroMQ, until its reply and `status: idle`.
async fn zmq_exec(client: &KernelClient, code: &str) -> Duration {
    let t = Instant::now();
    let mut exec = client
        .execute(ExecuteRequest::new(code))
        .await
        .expect("execute");
    while exec.next().await.is_some() {}
    let took = t.elapsed();
    assert!(exec.is_complete(), "{code}: the kernel went away");
    assert_eq!(
        exec.reply().map(|r| r.status.as_str()),
        Some("ok"),
        "{code}"
    );
    took
}

/// The websocket round trip of `pass`, with the test tools' python.
async fn ws_roundtrip(base: &str, n: usize, warmup: usize) -> Value {
    let args = ["--n", &n.to_string(), "--warmup", &warmup.to_string()]
        .into_iter()
        .chain(["--print-n", "0", "--deadline", "600"])
        .map(str::to_owned)
        .collect();
    cellblock_tests::ws_roundtrip(cellblock_tests::tools().join("python"), base, args).await
}

/// Memory of one sandbox's processes, KiB.
#[derive(Debug, Default, Clone)]
struct SandboxMem {
    procs: usize,
    pss: u64,
    pss_anon: u64,
    pss_file: u64,
    pss_shmem: u64,
    rss: u64,
    kernel_pss: u64,
}

/// The `Key: N kB` fields of `/proc/PID/smaps_rollup` (none for a zombie).
fn smaps_rollup(pid: i32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Every live process in the cgroup of one of the server's sandboxes
/// (`cellblock/<instance>/<id>`), grouped by sandbox id; also how many other
/// processes run from the same images dir (the zygote, other kernels: they
/// share its pages, so they lower the PSS here).
fn sandbox_memory(data_dir: &Path) -> (BTreeMap<String, SandboxMem>, usize) {
    let group = cellblock_tests::instance_group(data_dir);
    let images = cellblock_tests::images_dir()
        .into_os_string()
        .into_encoded_bytes();
    let mut out: BTreeMap<String, SandboxMem> = BTreeMap::new();
    let mut foreign = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let found = cgroup
            .find(&group)
            .map(|at| &cgroup[at + group.len()..])
            .filter(|rest| {
                rest.len() >= 32 && rest.as_bytes()[..32].iter().all(u8::is_ascii_hexdigit)
            })
            .map(|rest| rest[..32].to_owned());
        let Some(id) = found else {
            if cmd.windows(images.len()).any(|w| w == images.as_slice()) {
                foreign += 1;
            }
            continue;
        };
        let r = smaps_rollup(pid);
        let Some(&pss) = r.get("Pss") else {
            continue;
        };
        let m = out.entry(id).or_default();
        m.procs += 1;
        m.pss += pss;
        m.pss_anon += r.get("Pss_Anon").copied().unwrap_or(0);
        m.pss_file += r.get("Pss_File").copied().unwrap_or(0);
        m.pss_shmem += r.get("Pss_Shmem").copied().unwrap_or(0);
        m.rss += r.get("Rss").copied().unwrap_or(0);
        if cellblock_tests::is_kernel_process(pid) {
            m.kernel_pss += pss;
        }
    }
    (out, foreign)
}

/// The memory figures with `live` sandboxes up.
async fn memory_point(s: &Server, live: usize, avail_before_kib: u64) -> Value {
    // Let the last kernels settle after their first execution.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (per, foreign) = sandbox_memory(&s.data_dir);
    let n = per.len().max(1) as f64;
    let mean = |g: fn(&SandboxMem) -> u64| per.values().map(g).sum::<u64>() as f64 / n / MIB;
    let max_pss = per.values().map(|m| m.pss).max().unwrap_or(0) as f64 / MIB;
    let avail = mem_available_kib();
    // The zygote is shared by every forked kernel: its own figures, apart.
    let zygote = healthz(s).await["zygote"]["pid"]
        .as_i64()
        .map(|p| smaps_rollup(p as i32))
        .unwrap_or_default();
    let zygote_mib = |k: &str| zygote.get(k).map(|v| *v as f64 / MIB);
    json!({
        "live": live,
        "sandboxes_measured": per.len(),
        "processes_per_sandbox": per.values().map(|m| m.procs).sum::<usize>() as f64 / n,
        "pss_mib_mean": mean(|m| m.pss),
        "pss_mib_max": max_pss,
        "pss_anon_mib_mean": mean(|m| m.pss_anon),
        "pss_file_mib_mean": mean(|m| m.pss_file),
        "pss_shmem_mib_mean": mean(|m| m.pss_shmem),
        "kernel_pss_mib_mean": mean(|m| m.kernel_pss),
        "rss_mib_mean": mean(|m| m.rss),
        "broker_rss_mib": proc_status_kib(s.pid(), "VmRSS") as f64 / MIB,
        "mem_available_mib": avail as f64 / MIB,
        "mem_available_drop_mib_per_sandbox":
            (avail_before_kib as f64 - avail as f64) / MIB / live.max(1) as f64,
        "other_image_processes": foreign,
        "zygote_pss_mib": zygote_mib("Pss"),
        "zygote_rss_mib": zygote_mib("Rss"),
        "forked_kernels": forked_count(s).await,
        "loadavg": loadavg(),
    })
}

/// How many live sandboxes have a kernel forked from the zygote.
async fn forked_count(s: &Server) -> usize {
    let (_, v) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    v["sandboxes"].as_array().map_or(0, |a| {
        a.iter().filter(|x| x["kernel_origin"] == "zygote").count()
    })
}

/// The density fleet: sandboxes created so far.
#[derive(Default)]
struct Fleet {
    ids: Vec<String>,
    working: usize,
    stopped: Option<String>,
}

/// Creates a sandbox and checks that `1+1` answers `2`: its id (if it was
/// created) and whether it works.
async fn working_sandbox(s: &Server) -> (Option<String>, Result<(), String>) {
    let id = match create(s).await {
        Ok((v, _)) => v["id"].as_str().unwrap_or_default().to_owned(),
        Err(e) => return (None, Err(e)),
    };
    let ok = match execute(s, &id, "1+1").await {
        Ok(r) if r["outputs"][0]["data"]["text/plain"] == "2" => Ok(()),
        Ok(r) => Err(format!("1+1 answered {r}")),
        Err(e) => Err(e),
    };
    (Some(id), ok)
}

/// Grows the fleet to `target` sandboxes, `concurrency` creates at a time,
/// unless something fails or `MemAvailable` falls under `floor_kib`.
async fn ramp(s: &Server, fleet: &mut Fleet, target: usize, concurrency: usize, floor_kib: u64) {
    let mut inflight = FuturesUnordered::new();
    loop {
        while fleet.stopped.is_none()
            && inflight.len() < concurrency
            && fleet.ids.len() + inflight.len() < target
        {
            let avail = mem_available_kib();
            if avail < floor_kib {
                fleet.stopped = Some(format!(
                    "MemAvailable {:.0} MiB is under the {:.0} MiB floor",
                    avail as f64 / MIB,
                    floor_kib as f64 / MIB
                ));
                break;
            }
            inflight.push(working_sandbox(s));
        }
        let Some((id, ok)) = inflight.next().await else {
            break;
        };
        fleet.ids.extend(id);
        match ok {
            Ok(()) => fleet.working += 1,
            Err(e) => {
                eprintln!("suite: density: {e}");
                fleet.stopped.get_or_insert(e);
            }
        }
    }
}

/// Every sandbox in `ids` runs `pass` in a loop for `secs`, all at once.
async fn throughput(s: &Server, ids: &[String], secs: f64) -> Value {
    // One untimed execution each, so every client connection is open.
    let warm = ids.iter().map(|id| execute(s, id, "pass"));
    for r in futures_util::future::join_all(warm).await {
        r.expect("throughput warm-up");
    }
    let throttled_before = throttling(ids);
    let meter = CpuMeter::start(s);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let loops = ids.iter().map(|id| async move {
        let (mut lat, mut errors) = (Vec::new(), 0usize);
        while Instant::now() < end {
            let t = Instant::now();
            match execute(s, id, "pass").await {
                Ok(_) => lat.push(t.elapsed()),
                Err(e) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("suite: throughput: {e}");
                    }
                }
            }
        }
        (lat, errors)
    });
    let per: Vec<(Vec<Duration>, usize)> = futures_util::future::join_all(loops).await;
    let elapsed = start.elapsed().as_secs_f64();
    let counts: Vec<usize> = per.iter().map(|(l, _)| l.len()).collect();
    let all: Vec<Duration> = per.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let errors: usize = per.iter().map(|(_, e)| e).sum();
    let cpu = meter.per_op(all.len());
    let throttled_after = throttling(ids);
    json!({
        "sandboxes": ids.len(),
        "seconds": elapsed,
        "executions": all.len(),
        "errors": errors,
        "exec_per_s": all.len() as f64 / elapsed,
        "per_sandbox_min": counts.iter().min(),
        "per_sandbox_max": counts.iter().max(),
        "latency": stats(&all),
        "cpu_per_exec": cpu,
        "throttled_periods": throttled_after.0 - throttled_before.0,
        "throttled_s": throttled_after.1 - throttled_before.1,
        "loadavg": loadavg(),
    })
}

/// Figure 1: create → ready (pool, cold, plain spawn), then with the data
/// stack imported by the first execution.
/// One cold create (and delete) on `s`, checking how its kernel was made.
async fn cold_create(s: &Server, origin: &str) -> Duration {
    let (v, t) = create(s).await.expect("cold create");
    assert_eq!(v["from_pool"], false, "{v}");
    assert_eq!(v["kernel_origin"], origin, "{v}");
    delete(s, v["id"].as_str().unwrap()).await.expect("delete");
    t
}

/// Create, then `import numpy, pandas, matplotlib`, on a server without a
/// pool: (total, the execution alone).
async fn create_import(s: &Server) -> (Duration, Duration) {
    let t = Instant::now();
    let (v, _) = create(s).await.expect("cold create");
    let id = v["id"].as_str().unwrap().to_owned();
    let tx = Instant::now();
    execute(s, &id, IMPORT).await.expect("import");
    let out = (t.elapsed(), tx.elapsed());
    delete(s, &id).await.expect("delete");
    out
}

async fn create_figures(
    pool: &Server,
    cold: &Server,
    spawn: &Server,
    python: &Path,
    n: usize,
    n_import: usize,
) -> Value {
    let (mut pooled, mut colds, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut spawned = Vec::new();
    for round in 0..=n {
        wait_pool(pool, 2).await;
        let (v, t_pool) = create(pool).await.expect("pool create");
        assert_eq!(v["from_pool"], true, "not a pool hit: {v}");
        delete(pool, v["id"].as_str().unwrap())
            .await
            .expect("delete");
        wait_pool(pool, 2).await;
        let t_cold = cold_create(cold, "zygote").await;
        let t_spawn = cold_create(spawn, "spawn").await;
        let (k, t_plain) = PlainKernel::start(python).await;
        k.stop().await;
        if round > 0 {
            pooled.push(t_pool);
            colds.push(t_cold);
            spawned.push(t_spawn);
            plain.push(t_plain);
        }
    }

    // Create + `import numpy, pandas, matplotlib`; the pool refills in the
    // background meanwhile, as it would for a user.
    let (mut i_pool, mut i_cold, mut i_plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut x_pool, mut x_cold, mut x_plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i_spawn, mut x_spawn) = (Vec::new(), Vec::new());
    for round in 0..=n_import {
        wait_pool(pool, 2).await;
        let t = Instant::now();
        let (v, _) = create(pool).await.expect("pool create");
        assert_eq!(v["from_pool"], true, "not a pool hit: {v}");
        let id = v["id"].as_str().unwrap().to_owned();
        let tx = Instant::now();
        execute(pool, &id, IMPORT).await.expect("import");
        let (total_pool, exec_pool) = (t.elapsed(), tx.elapsed());
        delete(pool, &id).await.expect("delete");
        wait_pool(pool, 2).await;

        let (total_cold, exec_cold) = create_import(cold).await;
        let (total_spawn, exec_spawn) = create_import(spawn).await;

        let t = Instant::now();
        let (k, _) = PlainKernel::start(python).await;
        let exec_plain = zmq_exec(&k.client, IMPORT).await;
        let total_plain = t.elapsed();
        k.stop().await;
        if round > 0 {
            i_pool.push(total_pool);
            i_cold.push(total_cold);
            i_spawn.push(total_spawn);
            i_plain.push(total_plain);
            x_pool.push(exec_pool);
            x_cold.push(exec_cold);
            x_spawn.push(exec_spawn);
            x_plain.push(exec_plain);
        }
    }
    json!({
        "create_pool": stats(&pooled),
        "create_cold": stats(&colds),
        "create_spawn": stats(&spawned),
        "plain_spawn": stats(&plain),
        "create_import_pool": stats(&i_pool),
        "create_import_cold": stats(&i_cold),
        "create_import_spawn": stats(&i_spawn),
        "plain_spawn_import": stats(&i_plain),
        "import_exec_pool": stats(&x_pool),
        "import_exec_cold": stats(&x_cold),
        "import_exec_spawn": stats(&x_spawn),
        "import_exec_plain": stats(&x_plain),
    })
}

/// Figure 2: `pass` round trips over HTTP, the websocket and ZeroMQ.
async fn roundtrip_figures(s: &Server, python: &Path, n: usize) -> Value {
    wait_pool(s, 2).await;
    let (v, _) = create(s).await.expect("create");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_pool(s, 2).await;
    let conn_path = s
        .data_dir
        .join("run")
        .join(cellblock_tests::simple_id(&id))
        .join("sock/k0.json");
    let conn = ConnectionInfo::read(&conn_path).expect("the sandbox's connection file");
    let sandboxed = KernelClient::connect(&conn, ClientOptions::default())
        .await
        .expect("connect to the sandbox's kernel");
    sandboxed
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    let (plain, _) = PlainKernel::start(python).await;
    for _ in 0..20 {
        execute(s, &id, "pass").await.expect("warm-up");
        zmq_exec(&sandboxed, "pass").await;
        zmq_exec(&plain.client, "pass").await;
    }
    let (mut http, mut zs, mut zp) = (Vec::new(), Vec::new(), Vec::new());
    let chunk = 100.min(n.max(1));
    while http.len() < n {
        let k = chunk.min(n - http.len());
        for _ in 0..k {
            let t = Instant::now();
            execute(s, &id, "pass").await.expect("execute");
            http.push(t.elapsed());
        }
        for _ in 0..k {
            zs.push(zmq_exec(&sandboxed, "pass").await);
        }
        for _ in 0..k {
            zp.push(zmq_exec(&plain.client, "pass").await);
        }
    }
    // Where the CPU goes: 200 more of each, metered.
    let m = 200.min(n.max(1));
    let meter = CpuMeter::start(s);
    for _ in 0..m {
        execute(s, &id, "pass").await.expect("execute");
    }
    let http_cpu = meter.per_op(m);
    let meter = CpuMeter::start(s);
    for _ in 0..m {
        zmq_exec(&sandboxed, "pass").await;
    }
    let zmq_cpu = meter.per_op(m);
    drop(sandboxed);
    plain.stop().await;
    delete(s, &id).await.expect("delete");
    wait_pool(s, 2).await;
    // 100 warm-up round trips: the pool refill its kernel set off is over.
    let ws = ws_roundtrip(&s.base, n, 100).await;
    json!({
        "http_execute": stats(&http),
        "websocket_execute": ws,
        "zmq_sandbox_kernel": stats(&zs),
        "zmq_plain_kernel": stats(&zp),
        "http_cpu_per_exec": http_cpu,
        "zmq_sandbox_cpu_per_exec": zmq_cpu,
    })
}

/// Figures 3 to 5 on one `--max-sandboxes 600 --pool-size 0` server.
async fn fleet_figures(s: &Server) -> Value {
    let max = knob("BENCH_DENSITY_MAX", 500);
    let floor_kib = knob("BENCH_MIN_AVAILABLE_MIB", 2048) as u64 * 1024;
    let concurrency = knob("BENCH_CONCURRENCY", 4);
    let tput_n = knob("BENCH_TPUT_SANDBOXES", 50);
    let tput_secs = knob("BENCH_TPUT_SECS", 10) as f64;

    // The baseline: a plain kernel from the same venv after `1+1`.
    let plain_memory = {
        let (k, _) = PlainKernel::start(&image_python(s).await).await;
        zmq_exec(&k.client, "1+1").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = smaps_rollup(k.child.id().map_or(0, |p| p as i32));
        k.stop().await;
        let mib = |key: &str| r.get(key).copied().unwrap_or(0) as f64 / MIB;
        json!({
            "pss_mib": mib("Pss"),
            "pss_anon_mib": mib("Pss_Anon"),
            "pss_file_mib": mib("Pss_File"),
            "rss_mib": mib("Rss"),
        })
    };
    let avail_before = mem_available_kib();
    let broker_before = proc_status_kib(s.pid(), "VmRSS");
    let mut fleet = Fleet::default();
    let mut memory = Vec::new();
    let mut ramp_time = Duration::ZERO;
    let mut levels: Vec<usize> = [1, 50, 200].into_iter().filter(|&l| l < max).collect();
    levels.push(max);
    for level in levels {
        let t = Instant::now();
        ramp(s, &mut fleet, level, concurrency, floor_kib).await;
        ramp_time += t.elapsed();
        let live = fleet.ids.len();
        eprintln!(
            "suite: {live} sandboxes live ({} working), {:.1} s of creating, MemAvailable {:.0} MiB",
            fleet.working,
            ramp_time.as_secs_f64(),
            mem_available_kib() as f64 / MIB
        );
        memory.push(memory_point(s, live, avail_before).await);
        if fleet.stopped.is_some() {
            break;
        }
    }
    let peak = fleet.ids.len();
    // What the idle fleet costs in CPU.
    let idle_secs = 5.0;
    let meter = CpuMeter::start(s);
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle = meter.per_op(1);
    let idle_cpu = json!({
        "seconds": idle_secs,
        "sandboxes_cores": f(&idle, "sandboxes_cpu_ms") / 1000.0 / idle_secs,
        "broker_cores": f(&idle, "broker_cpu_ms") / 1000.0 / idle_secs,
        "machine_busy_pct": f(&idle, "machine_busy_pct"),
        "context_switches_per_s": f(&idle, "context_switches") / idle_secs,
    });
    let kernels_at_peak = s.kernels().len();
    let health_at_peak = healthz(s).await;
    let avail_peak = mem_available_kib();

    // Throughput on `tput_n` of them; the rest are deleted first.
    let keep = tput_n.min(peak);
    let (rest_time, mut delete_failures) = delete_all(s, &fleet.ids[keep..], 2 * concurrency).await;
    let mut tput_ids = fleet.ids[..keep].to_vec();
    while tput_ids.len() < tput_n {
        match create(s).await {
            Ok((v, _)) => tput_ids.push(v["id"].as_str().unwrap_or_default().to_owned()),
            Err(e) => {
                eprintln!("suite: throughput: only {} sandboxes: {e}", tput_ids.len());
                break;
            }
        }
    }
    // How throughput scales: shorter runs on fewer sandboxes first.
    let step_secs = knob("BENCH_TPUT_STEP_SECS", 5) as f64;
    let mut scaling = Vec::new();
    for n in [1, 10, 25].into_iter().filter(|&n| n < tput_ids.len()) {
        let t = throughput(s, &tput_ids[..n], step_secs).await;
        eprintln!("suite: throughput with {n}: {:.0}/s", f(&t, "exec_per_s"));
        scaling.push(t);
    }
    let tput = throughput(s, &tput_ids, tput_secs).await;
    let (tput_del_time, more) = delete_all(s, &tput_ids, 2 * concurrency).await;
    delete_failures.extend(more);
    let gone =
        cellblock_tests::eventually(Duration::from_secs(60), || s.kernels().is_empty()).await;
    let left = s.kernels().len();
    let health_after = healthz(s).await;
    let density = json!({
        "target": max,
        "concurrency": concurrency,
        "live": peak,
        "working": fleet.working,
        "kernels_at_peak": kernels_at_peak,
        "idle_cpu_at_peak": idle_cpu,
        "healthz_sandboxes_at_peak": health_at_peak["sandboxes"],
        "stopped_because": fleet.stopped.clone().unwrap_or_else(|| format!("reached {max}")),
        "create_seconds": ramp_time.as_secs_f64(),
        "creates_per_s": peak as f64 / ramp_time.as_secs_f64(),
        "mem_available_before_mib": avail_before as f64 / MIB,
        "mem_available_peak_mib": avail_peak as f64 / MIB,
        "mem_available_after_delete_mib": mem_available_kib() as f64 / MIB,
        "broker_rss_before_mib": broker_before as f64 / MIB,
        "broker_rss_after_mib": proc_status_kib(s.pid(), "VmRSS") as f64 / MIB,
        "delete_seconds": (rest_time + tput_del_time).as_secs_f64(),
        "delete_failures": delete_failures,
        "kernels_gone": gone,
        "kernels_left": left,
        "healthz_sandboxes_after": health_after["sandboxes"],
    });
    assert!(
        gone,
        "{left} kernels still running after every sandbox was deleted"
    );
    json!({
        "memory": memory,
        "memory_plain_kernel": plain_memory,
        "density": density,
        "throughput": tput,
        "throughput_scaling": scaling,
    })
}

async fn run() -> Value {
    let n_create = knob("BENCH_CREATE_N", 50);
    let n_import = knob("BENCH_IMPORT_N", 10);
    let n_exec = knob("BENCH_EXEC_N", 500);
    let _ = cellblock_tests::tools(); // fail now, not after minutes, if missing
    let started = Instant::now();
    let load_start = loadavg();

    let (create, roundtrip) = {
        let pool = Server::start_with(&["--pool-size", "2"]);
        let cold = Server::start_with(&["--pool-size", "0"]);
        let spawn = Server::start_with(&["--pool-size", "0", "--no-zygote"]);
        wait_pool(&pool, 2).await;
        let python = image_python(&pool).await;
        eprintln!("suite: create → ready ({n_create} rounds, {n_import} with the data stack)");
        let create = create_figures(&pool, &cold, &spawn, &python, n_create, n_import).await;
        drop(cold);
        drop(spawn);
        eprintln!("suite: execute round trips ({n_exec} each)");
        let roundtrip = roundtrip_figures(&pool, &python, n_exec).await;
        (create, roundtrip)
    };
    eprintln!("suite: memory, density and throughput");
    let fleet = {
        // BENCH_FLEET_ARGS: extra `serve` arguments, e.g. `--no-zygote` to
        // compare spawned kernels' memory and throughput.
        let extra = std::env::var("BENCH_FLEET_ARGS").unwrap_or_default();
        let mut args = vec!["--max-sandboxes", "600", "--pool-size", "0"];
        args.extend(extra.split_whitespace());
        let s = Server::start_with(&args);
        fleet_figures(&s).await
    };
    json!({
        "create": create,
        "roundtrip": roundtrip,
        "memory": fleet["memory"],
        "memory_plain_kernel": fleet["memory_plain_kernel"],
        "density": fleet["density"],
        "throughput": fleet["throughput"],
        "throughput_scaling": fleet["throughput_scaling"],
        "seconds": started.elapsed().as_secs_f64(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "cellblock_bin": cellblock_tests::binary(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_mib": std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|k| k / MIB),
    })
}

fn row(name: &str, v: &Value, base: Option<(&str, &Value)>) {
    let ratio = base.map_or(String::new(), |(label, b)| {
        format!("{:.2}x {label}", f(v, "median_ms") / f(b, "median_ms"))
    });
    let p90 = match v["p90_ms"].as_f64() {
        Some(p) => format!("{p:.2}"),
        None => format!("(p95 {:.2})", f(v, "p95_ms")),
    };
    println!(
        "{:<46} {:>5} {:>10.2} {:>11} {:>10.2}  {}",
        name,
        v["n"].as_u64().unwrap_or(0),
        f(v, "median_ms"),
        p90,
        f(v, "p99_ms"),
        ratio
    );
}

fn print_report(r: &Value) {
    let c = &r["create"];
    let rt = &r["roundtrip"];
    println!(
        "\n{:<46} {:>5} {:>10} {:>11} {:>10}  ratio (median)",
        "figure", "n", "median ms", "p90 ms", "p99 ms"
    );
    let spawn = ("plain spawn", &c["plain_spawn"]);
    row(
        "create → ready, warm pool (HTTP)",
        &c["create_pool"],
        Some(spawn),
    );
    row(
        "create → ready, cold: zygote fork (HTTP)",
        &c["create_cold"],
        Some(spawn),
    );
    row(
        "create → ready, cold: spawned (--no-zygote)",
        &c["create_spawn"],
        Some(spawn),
    );
    row(
        "plain ipykernel spawn → kernel_info",
        &c["plain_spawn"],
        None,
    );
    let imp = ("plain spawn+import", &c["plain_spawn_import"]);
    row(
        "create + import numpy/pandas/mpl, pool",
        &c["create_import_pool"],
        Some(imp),
    );
    row(
        "create + import numpy/pandas/mpl, zygote",
        &c["create_import_cold"],
        Some(imp),
    );
    row(
        "create + import numpy/pandas/mpl, spawned",
        &c["create_import_spawn"],
        Some(imp),
    );
    row(
        "plain spawn + import numpy/pandas/mpl",
        &c["plain_spawn_import"],
        None,
    );
    row(
        "  of which the import, pool",
        &c["import_exec_pool"],
        Some(("plain import", &c["import_exec_plain"])),
    );
    row(
        "  of which the import, zygote",
        &c["import_exec_cold"],
        Some(("plain import", &c["import_exec_plain"])),
    );
    row(
        "  of which the import, spawned",
        &c["import_exec_spawn"],
        Some(("plain import", &c["import_exec_plain"])),
    );
    row(
        "  of which the import, plain (ZMQ)",
        &c["import_exec_plain"],
        None,
    );
    let zmq = ("direct ZMQ", &rt["zmq_plain_kernel"]);
    row("execute `pass`, HTTP", &rt["http_execute"], Some(zmq));
    row(
        "execute `pass`, websocket (ws_roundtrip.py)",
        &rt["websocket_execute"],
        Some(zmq),
    );
    row(
        "execute `pass`, ZMQ to the sandbox's kernel",
        &rt["zmq_sandbox_kernel"],
        Some(zmq),
    );
    row(
        "execute `pass`, direct ZMQ to a plain kernel",
        &rt["zmq_plain_kernel"],
        None,
    );
    let t = &r["throughput"];
    row(
        &format!(
            "execute `pass`, {} sandboxes at once (HTTP)",
            t["sandboxes"]
        ),
        &t["latency"],
        Some(("single HTTP", &rt["http_execute"])),
    );
    println!(
        "HTTP / sandbox-kernel ZMQ median: {:.2}x (the broker alone)",
        f(&rt["http_execute"], "median_ms") / f(&rt["zmq_sandbox_kernel"], "median_ms")
    );
    for (how, key) in [
        ("HTTP", "http_cpu_per_exec"),
        ("ZMQ to the sandbox's kernel", "zmq_sandbox_cpu_per_exec"),
    ] {
        let c = &rt[key];
        println!(
            "CPU per `pass` over {how}: sandbox {:.2} ms, broker {:.2} ms, client {:.2} ms; \
             {:.0} context switches",
            f(c, "sandboxes_cpu_ms"),
            f(c, "broker_cpu_ms"),
            f(c, "client_cpu_ms"),
            f(c, "context_switches"),
        );
    }

    println!(
        "\n{:>6} {:>12} {:>10} {:>10} {:>10} {:>13} {:>15} {:>8}",
        "live", "PSS MiB/sb", "of kernel", "anon", "file", "broker RSS", "MemAvail drop", "others"
    );
    for m in r["memory"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {:>12.1} {:>10.1} {:>10.1} {:>10.1} {:>9.1} MiB {:>11.1} MiB {:>8}  \
             ({} forked; zygote PSS {:.1} MiB)",
            m["live"].as_u64().unwrap_or(0),
            f(m, "pss_mib_mean"),
            f(m, "kernel_pss_mib_mean"),
            f(m, "pss_anon_mib_mean"),
            f(m, "pss_file_mib_mean"),
            f(m, "broker_rss_mib"),
            f(m, "mem_available_drop_mib_per_sandbox"),
            m["other_image_processes"].as_u64().unwrap_or(0),
            m["forked_kernels"].as_u64().unwrap_or(0),
            f(m, "zygote_pss_mib"),
        );
    }
    let pm = &r["memory_plain_kernel"];
    println!(
        "{:>6} {:>12.1} {:>10} {:>10.1} {:>10.1}   (a plain ipykernel after `1+1`, alone: the baseline)",
        "plain",
        f(pm, "pss_mib"),
        "",
        f(pm, "pss_anon_mib"),
        f(pm, "pss_file_mib"),
    );
    let d = &r["density"];
    println!(
        "\ndensity: {} live, {} working (`1+1` → 2), {} kernels; stopped: {}",
        d["live"],
        d["working"],
        d["kernels_at_peak"],
        d["stopped_because"].as_str().unwrap_or("")
    );
    println!(
        "  created in {:.1} s ({:.1}/s, {} at a time); MemAvailable {:.0} MiB before, {:.0} MiB at peak, {:.0} MiB after deleting",
        f(d, "create_seconds"),
        f(d, "creates_per_s"),
        d["concurrency"],
        f(d, "mem_available_before_mib"),
        f(d, "mem_available_peak_mib"),
        f(d, "mem_available_after_delete_mib"),
    );
    println!(
        "  deleted in {:.1} s, {} failures; kernels left: {}",
        f(d, "delete_seconds"),
        d["delete_failures"].as_array().map_or(0, Vec::len),
        d["kernels_left"],
    );
    let idle = &d["idle_cpu_at_peak"];
    println!(
        "  idle fleet at peak: sandboxes {:.3} cores, broker {:.3} cores, {:.0} context switches/s",
        f(idle, "sandboxes_cores"),
        f(idle, "broker_cores"),
        f(idle, "context_switches_per_s"),
    );
    println!(
        "\nthroughput: `pass` in a loop over HTTP in every sandbox at once\n\
         {:>9} {:>7} {:>8} {:>10} {:>9} {:>7}  {:<44} {:>8} {:>9}",
        "sandboxes",
        "s",
        "exec/s",
        "median ms",
        "p99 ms",
        "errors",
        "CPU ms/exec: sandbox usr+sys, broker, client",
        "ctx/exec",
        "throttled"
    );
    let steps = r["throughput_scaling"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for x in steps.iter().chain([t]) {
        let c = &x["cpu_per_exec"];
        println!(
            "{:>9} {:>7.1} {:>8.0} {:>10.2} {:>9.2} {:>7}  {:<44} {:>8.0} {:>9}",
            x["sandboxes"].as_u64().unwrap_or(0),
            f(x, "seconds"),
            f(x, "exec_per_s"),
            f(&x["latency"], "median_ms"),
            f(&x["latency"], "p99_ms"),
            x["errors"].as_u64().unwrap_or(0),
            format!(
                "{:.2}+{:.2}, {:.2}, {:.2}",
                f(c, "sandboxes_user_ms"),
                f(c, "sandboxes_system_ms"),
                f(c, "broker_cpu_ms"),
                f(c, "client_cpu_ms")
            ),
            f(c, "context_switches"),
            x["throttled_periods"].as_u64().unwrap_or(0),
        );
    }
    println!(
        "  {} sandboxes: {} executions, {}–{} per sandbox",
        t["sandboxes"], t["executions"], t["per_sandbox_min"], t["per_sandbox_max"],
    );
    println!(
        "{:.0} s in all; loadavg {} at the start, {} at the end",
        f(r, "seconds"),
        r["loadavg_start"].as_str().unwrap_or(""),
        r["loadavg_end"].as_str().unwrap_or("")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // On Ctrl-C or SIGTERM the run is dropped, and with it its servers
    // (each stops its sandboxes on drop).
    let report = tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => panic!("interrupted; servers stopped"),
        _ = term.recv() => panic!("terminated; servers stopped"),
    };
    print_report(&report);
    cellblock_tests::write_bench_report("suite", &report);
}
