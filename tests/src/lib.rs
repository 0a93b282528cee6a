//! Test harness: starts the real `cellblock` binary on a free port with its
//! own data dir, and talks to it over HTTP like a user does.
//!
//! The binary comes from `CELLBLOCK_BIN` (default `target/debug/cellblock`),
//! images from `CELLBLOCK_IMAGES_DIR` (default `target/cellblock-images`);
//! `./scripts/test.sh` builds both first.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `cellblock` binary under test.
pub fn binary() -> PathBuf {
    // Relative paths are taken from the workspace root, not the test's cwd.
    let path = workspace_root().join(
        std::env::var_os("CELLBLOCK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/debug/cellblock")),
    );
    assert!(
        path.exists(),
        "cellblock binary not found at {}: run ./scripts/test.sh, or `cargo build -p cellblock` first",
        path.display()
    );
    path
}

/// Where test servers find (or build) images.
pub fn images_dir() -> PathBuf {
    workspace_root().join(
        std::env::var_os("CELLBLOCK_IMAGES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/cellblock-images")),
    )
}

/// A fresh short data dir (unix socket paths must stay short).
pub fn temp_data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cbt-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ));
    std::fs::create_dir_all(&dir).expect("creating data dir");
    dir
}

/// Every pid in `/proc` now.
fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// True if the process is a zombie (or gone).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
        st.rsplit_once(')')
            .is_none_or(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Live processes whose command line mentions `needle` (kernels carry their
/// connection file path, which is under the data dir).
pub fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !is_zombie(pid) && cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
            pids.push(pid);
        }
    }
    pids
}

/// The cgroup parent the broker with `data_dir` puts its sandboxes under,
/// as it names it: `cellblock/` and the first 6 bytes of the SHA-256 of
/// the (absolute) data dir, in hex, then `/`.
pub fn instance_group(data_dir: &Path) -> String {
    use sha2::Digest;
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let h = sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("cellblock/{hex}/")
}

/// Live (not zombie) processes whose cgroup path contains `needle`: every
/// process of a sandbox is in its cgroup, however it was started (spawned
/// by `cellblock __jail` or forked from the zygote).
pub fn processes_in_cgroup(needle: &str) -> Vec<i32> {
    all_pids()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| cg.contains(needle))
                && !is_zombie(pid)
        })
        .collect()
}

/// True if `pid` is a sandbox's kernel (see [`Server::kernels`]).
pub fn is_kernel_process(pid: i32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd);
    let parent_uid = parent_of(pid).and_then(uid_of);
    (cmd.contains("cellblock_kernel") || cmd.contains("cellblock_zygote"))
        && uid_of(pid).is_some_and(|u| u >= 1000 && parent_uid == Some(u - 1000))
}

/// The parent pid of a process.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid of a process.
fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Host processes whose real uid is in `[lo, hi)`.
pub fn processes_with_uid_in(lo: u32, hi: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if uid.is_some_and(|u| (lo..hi).contains(&u)) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// The sandbox's cgroup directories that exist (v1 and v2 layouts).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let parents = [
        root.join("memory/cellblock"),
        root.join("pids/cellblock"),
        root.join("cpu/cellblock"),
        root.join("cellblock"),
    ];
    let mut out = Vec::new();
    for p in parents {
        for inst in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let d = inst.path().join(name);
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out
}

/// A sandbox id in the form the broker names its directories and cgroups
/// with: the UUID as 32 hex digits.
pub fn simple_id(id: &str) -> String {
    uuid::Uuid::parse_str(id)
        .expect("uuid")
        .simple()
        .to_string()
}

/// A running `cellblock serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    key: Option<String>,
    /// Kernels are forked from the zygote (not `--no-zygote`).
    zygote: bool,
}

impl Server {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `serve` arguments. Its warm pool is off
    /// (tests count kernels) unless `args` sets `--pool-size` or
    /// `CELLBLOCK_TEST_POOL_SIZE` does (`./scripts/test.sh` runs the core,
    /// isolation and files tests again with a pool). Kernels are forked
    /// from the zygote, as by default, unless `args` has `--no-zygote` or
    /// `CELLBLOCK_TEST_ZYGOTE=off` (the spawn pass of `./scripts/test.sh`).
    /// It returns once the zygote is ready and the pool full.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_in(temp_data_dir(), args)
    }

    /// Starts a server on an existing data dir.
    pub fn start_in(data_dir: PathBuf, args: &[&str]) -> Self {
        let key = args
            .windows(2)
            .find(|w| w[0] == "--api-key")
            .map(|w| w[1].to_owned());
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--images-dir")
            .arg(images_dir())
            .args(pool_args(args))
            .args(zygote_args(args))
            .args(args)
            .env_remove("CELLBLOCK_API_KEY")
            .env("CELLBLOCK_LOG", "info,tower_http=warn,zeromq=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning cellblock");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("cellblock listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("cellblock did not start listening (see its log above)");
            }
        };
        let zygote = !args.contains(&"--no-zygote") && zygote_args(args).is_empty();
        wait_until_warm(&base, args, zygote);
        Self {
            zygote,
            child: Some(child),
            base,
            data_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            key,
        }
    }

    /// A request builder with the API key, if the server has one.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends a request and returns status and JSON body (Null when empty).
    pub async fn call(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = rb.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("reading body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("response is not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, body)
    }

    /// Creates a sandbox and returns its id (asserts 201).
    pub async fn create(&self, body: Value) -> String {
        let (status, v) = self
            .call(self.req(reqwest::Method::POST, "/v1/sandboxes").json(&body))
            .await;
        assert_eq!(status, 201, "create failed: {v}");
        // A server with the zygote forks every kernel whose request sets no
        // env (an env variable read at startup gets a spawn): a silent
        // fallback to spawning would make the forked pass test nothing.
        if self.zygote && body.get("env").is_none() && v["from_pool"] == false {
            assert_eq!(v["kernel_origin"], "zygote", "not forked: {v}");
        }
        v["id"].as_str().expect("id").to_owned()
    }

    /// Executes code; asserts 200 and returns the result.
    pub async fn exec(&self, id: &str, code: &str) -> Value {
        self.exec_with(id, json!({ "code": code })).await
    }

    /// `POST …/execute` with `body`; asserts the status, returns the answer.
    async fn post_execute(&self, id: &str, body: &Value, want: u16) -> Value {
        let (status, v) = self
            .call(
                self.req(
                    reqwest::Method::POST,
                    &format!("/v1/sandboxes/{id}/execute"),
                )
                .json(body),
            )
            .await;
        assert_eq!(status, want, "execute failed: {v}");
        v
    }

    /// Executes with a full request body; asserts 200.
    pub async fn exec_with(&self, id: &str, body: Value) -> Value {
        self.post_execute(id, &body, 200).await
    }

    /// Submits an execution with `wait: false`; asserts 202 and returns its id.
    pub async fn submit(&self, id: &str, mut body: Value) -> String {
        body["wait"] = json!(false);
        let v = self.post_execute(id, &body, 202).await;
        v["execution_id"].as_str().expect("execution_id").to_owned()
    }

    /// The JSON view of one execution; asserts 200.
    pub async fn execution(&self, id: &str, eid: &str) -> Value {
        let (status, v) = self
            .call(self.req(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/executions/{eid}"),
            ))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls an execution's view every 100 ms until `cond` holds (panics
    /// after `limit`).
    pub async fn execution_until(
        &self,
        id: &str,
        eid: &str,
        limit: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.execution(id, eid).await;
            if cond(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "condition never held: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes a sandbox; returns the status.
    pub async fn delete(&self, id: &str) -> u16 {
        self.call(self.req(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}")))
            .await
            .0
    }

    /// Every process started for this server's sandboxes (jail helpers,
    /// init and kernels, and whatever they started): all are in the cgroups
    /// under this server's instance group.
    pub fn kernel_pids(&self) -> Vec<i32> {
        processes_in_cgroup(&instance_group(&self.data_dir))
    }

    /// The kernel processes themselves, one per live sandbox: processes of
    /// the sandboxes run by the launcher (`cellblock_kernel`, or forked
    /// from `cellblock_zygote`) as the sandbox user (host uid 1000 above
    /// the sandbox's base) whose parent is the sandbox's init (its root,
    /// the base uid). The jail helpers run as root or sandbox root.
    pub fn kernels(&self) -> Vec<i32> {
        let group = instance_group(&self.data_dir);
        self.kernels_in(&group)
    }

    fn kernels_in(&self, group: &str) -> Vec<i32> {
        processes_in_cgroup(group)
            .into_iter()
            .filter(|&p| is_kernel_process(p))
            .collect()
    }

    /// The host pid of the kernel of sandbox `id`.
    pub fn kernel_of(&self, id: &str) -> i32 {
        let group = format!("{}{}", instance_group(&self.data_dir), simple_id(id));
        let found = self.kernels_in(&group);
        assert_eq!(found.len(), 1, "kernel of {id}: {found:?}");
        found[0]
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends SIGTERM and waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, limit)
    }

    /// Sends a signal and waits up to `limit` for the exit.
    pub fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: Duration,
    ) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Gracefully first, so sandboxes are torn down (mounts, cgroups).
        let _ = self.terminate(Duration::from_secs(15));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.kernel_pids() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn proc_status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The median of some durations, in milliseconds.
pub fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// Writes a benchmark's JSON report to `target/bench/NAME.json`.
pub fn write_bench_report(name: &str, report: &Value) {
    let out = workspace_root().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_vec_pretty(report).unwrap_or_default(),
    );
}

/// The bin dir of the notebook tools venv (nbformat, nbconvert, and the
/// kernel image's packages), from `CELLBLOCK_TEST_TOOLS`.
pub fn tools() -> PathBuf {
    let dir = std::env::var_os("CELLBLOCK_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "CELLBLOCK_TEST_TOOLS is not set: run ./scripts/test.sh, which installs nbformat, \
                 nbconvert and the kernel's packages into target/test-tools and sets it \
                 (or set it to target/test-tools/bin yourself)"
            )
        });
    assert!(
        dir.join("python").exists() && dir.join("jupyter").exists(),
        "CELLBLOCK_TEST_TOOLS={} has no python/jupyter: run ./scripts/test.sh to (re)create the tools venv",
        dir.display()
    );
    dir
}

/// Runs the tools' python on a script; asserts it succeeds, returns stdout.
pub fn tools_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(tools().join("python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running the tools python");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Validates a notebook file the strictest way nbformat offers (a missing or
/// duplicate cell id is an error); returns nbformat's summary line.
pub fn validate_notebook_file(path: &Path) -> String {
    let out = tools_python(
        "import sys, warnings, nbformat\n\
         warnings.simplefilter('error', nbformat.warnings.MissingIDFieldWarning)\n\
         warnings.simplefilter('error', nbformat.warnings.DuplicateCellId)\n\
         nb = nbformat.read(sys.argv[1], as_version=4)\n\
         nbformat.validate(nb)\n\
         print('valid', nb.nbformat, nb.nbformat_minor, len(nb.cells))\n",
        &[path.as_os_str()],
    );
    assert!(out.starts_with("valid 4 5 "), "{out}");
    out
}

/// [`validate_notebook_file`] for a notebook in memory.
pub fn validate_notebook(nb: &Value) -> String {
    let tmp = TempDir::new();
    let path = tmp.0.join("nb.ipynb");
    std::fs::write(&path, serde_json::to_vec(nb).expect("JSON")).expect("writing the notebook");
    validate_notebook_file(&path)
}

/// Text of a notebook string field (a string or a list of lines).
pub fn nb_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh empty directory under the system's temp dir.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cbtmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--pool-size` for a test server: `CELLBLOCK_TEST_POOL_SIZE`, or 0,
/// unless the test sets it itself.
fn pool_args(args: &[&str]) -> Vec<String> {
    if args.contains(&"--pool-size") {
        return Vec::new();
    }
    let size = std::env::var("CELLBLOCK_TEST_POOL_SIZE").unwrap_or_else(|_| "0".into());
    vec!["--pool-size".into(), size]
}

/// `--no-zygote` when `CELLBLOCK_TEST_ZYGOTE=off`.
fn zygote_args(args: &[&str]) -> Vec<String> {
    let off = std::env::var("CELLBLOCK_TEST_ZYGOTE").is_ok_and(|v| v == "off");
    if off && !args.contains(&"--no-zygote") {
        vec!["--no-zygote".into()]
    } else {
        Vec::new()
    }
}

/// Waits (up to 60 s) until the zygote is ready (unless it is off) and,
/// with `CELLBLOCK_TEST_POOL_SIZE` set, the warm pool is full, so the
/// test's creates are forked or served from the pool.
fn wait_until_warm(base: &str, args: &[&str], zygote: bool) {
    use std::io::{Read, Write};
    let mut want = std::env::var("CELLBLOCK_TEST_POOL_SIZE").unwrap_or_default();
    if want.is_empty() || args.contains(&"--pool-size") {
        want = "0".into();
    }
    let addr = base.trim_start_matches("http://").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let mut answer = String::new();
        if let Ok(mut t) = std::net::TcpStream::connect(&addr) {
            let _ = write!(
                t,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let _ = t.read_to_string(&mut answer);
        }
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let health = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        let pool_full = want == "0"
            || health["pool"]["ready"]
                .as_u64()
                .is_some_and(|n| n.to_string() == want);
        let zygote_ready = !zygote || health["zygote"]["state"] == "ready";
        if pool_full && zygote_ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the zygote was not ready or the warm pool did not fill to {want} within 60 s");
}

/// Runs `tests/scripts/ws_roundtrip.py` (the Jupyter websocket round-trip
/// client the benches share) with `python` against `base`, with extra
/// `args`; returns the JSON it prints.
pub async fn ws_roundtrip(python: PathBuf, base: &str, args: Vec<String>) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ws_roundtrip.py"))
        .arg(base)
        .args(&args)
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("running ws_roundtrip.py");
    assert!(
        out.status.success(),
        "ws_roundtrip.py {base} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ws_roundtrip.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
