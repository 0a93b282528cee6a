//! `cargo bench -p cellblock-tests --bench gateway`
//!
//! The kernel websocket (`/api/kernels/{id}/channels`, legacy JSON framing)
//! side by side with Jupyter Kernel Gateway itself on this machine: the same
//! client, `tests/scripts/ws_roundtrip.py` (tornado's websocket client),
//! runs the same loop against a cellblock server and against a JKG whose
//! `python3` kernel is the same ipykernel from the same pinned packages:
//! - `BENCH_N` (default 200) execute round trips of `pass`, from sending the
//!   `execute_request` until its `execute_reply` and iopub `status: idle`
//!   both arrived; then as many of `print('x')` (until its stream too);
//! - once with the client as it comes, once with `--quickack`: the client
//!   ACKs every frame at once, so a server that leaves Nagle's algorithm on
//!   is not held by the client's delayed ACK (about 40 ms a round trip) and
//!   the figure is the server's own work.
//!
//! JKG and the client run from the venv `scripts/bench-tools.sh` prepares
//! (`target/bench-tools`; or `CELLBLOCK_BENCH_TOOLS`, its bin dir).
//! cellblock's kernel runs in a sandbox (default limits: 1 CPU), JKG's as a
//! plain process: the ratio includes the isolation.
//!
//! Prints a table and writes `target/bench/gateway.json`.

use cellblock_tests::{Server, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The bench tools' bin dir: `CELLBLOCK_BENCH_TOOLS`, or the last line
/// `scripts/bench-tools.sh` prints (it installs them when needed).
fn bench_tools() -> PathBuf {
    let dir = match std::env::var_os("CELLBLOCK_BENCH_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new("bash")
                .arg(workspace_root().join("scripts/bench-tools.sh"))
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .expect("running scripts/bench-tools.sh");
            assert!(
                out.status.success(),
                "scripts/bench-tools.sh failed ({})",
                out.status
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
        }
    };
    // Absolute (JKG runs from a temp dir), but not canonical: a venv's
    // python is a symlink that must stay one.
    let dir = std::path::absolute(&dir).expect("an absolute tools path");
    assert!(
        dir.join("python").exists() && dir.join("jupyter-kernelgateway").exists(),
        "{} has no python/jupyter-kernelgateway: run scripts/bench-tools.sh",
        dir.display()
    );
    dir
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running `jupyter kernelgateway`, killed when dropped.
struct Jkg {
    child: Child,
    base: String,
    dir: TempDir,
}

impl Jkg {
    /// Starts JKG from `tools` on a free loopback port, with its own Jupyter
    /// dirs and a `python3` kernelspec that runs `tools`' python (so its
    /// ipykernel is the pinned one); waits until `/api` answers.
    async fn start(tools: &Path) -> Self {
        let dir = TempDir::new();
        let spec_dir = dir.0.join("path/kernels/python3");
        std::fs::create_dir_all(&spec_dir).expect("kernelspec dir");
        let python = tools.join("python");
        let spec = json!({
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (bench)",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {},
        });
        std::fs::write(spec_dir.join("kernel.json"), spec.to_string()).expect("kernel.json");
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("jkg.log")).expect("jkg.log");
        let mut cmd = Command::new(tools.join("jupyter"));
        cmd.args([
            "kernelgateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            &format!("--KernelGatewayApp.port={port}"),
            "--KernelGatewayApp.port_retries=0",
        ]);
        // JKG takes its defaults from KG_* variables: none from the caller.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KG_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("JUPYTER_PATH", dir.0.join("path"))
            .env("JUPYTER_DATA_DIR", dir.0.join("data"))
            .env("JUPYTER_CONFIG_DIR", dir.0.join("config"))
            .env("JUPYTER_RUNTIME_DIR", dir.0.join("runtime"))
            .env("IPYTHONDIR", dir.0.join("ipython"))
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning jupyter kernelgateway");
        let mut jkg = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/api", jkg.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = jkg.child.try_wait() {
                panic!("jupyter kernelgateway exited ({status}):\n{}", jkg.log());
            }
            assert!(
                Instant::now() < deadline,
                "jupyter kernelgateway did not answer /api in 60 s:\n{}",
                jkg.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let specs: Value = http
            .get(format!("{}/api/kernelspecs", jkg.base))
            .send()
            .await
            .expect("GET /api/kernelspecs")
            .json()
            .await
            .expect("kernelspecs JSON");
        assert_eq!(specs["default"], "python3", "{specs}");
        assert_eq!(
            specs["kernelspecs"]["python3"]["spec"]["argv"][0],
            json!(python),
            "JKG's python3 kernel is not the bench venv's: {specs}"
        );
        jkg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("jkg.log")).unwrap_or_default()
    }
}

impl Drop for Jkg {
    /// SIGTERM (JKG shuts its kernels down), SIGKILL after 10 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ws_roundtrip.py` against `base`; returns its JSON.
async fn roundtrip(tools: &Path, base: &str, n: usize, warmup: usize, quickack: bool) -> Value {
    let mut args: Vec<String> = vec![
        "--n".into(),
        n.to_string(),
        "--warmup".into(),
        warmup.to_string(),
    ];
    if quickack {
        args.push("--quickack".into());
    }
    cellblock_tests::ws_roundtrip(tools.join("python"), base, args).await
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let warmup = 20;
    let tools = bench_tools();
    let jkg_version = Command::new(tools.join("python"))
        .args([
            "-c",
            "import kernel_gateway; print(kernel_gateway.__version__)",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let server = Server::start();
    let jkg = Jkg::start(&tools).await;
    // Each mode against both servers in turn, so drift hits both alike.
    let mut results = serde_json::Map::new();
    for (mode, quickack) in [("stock", false), ("quickack", true)] {
        let cb = roundtrip(&tools, &server.base, n, warmup, quickack).await;
        let jk = roundtrip(&tools, &jkg.base, n, warmup, quickack).await;
        results.insert(mode.to_owned(), json!({"cellblock": cb, "jkg": jk}));
    }
    drop(jkg);

    let ratio = |mode: &str, key: &str| {
        ms(&results[mode]["cellblock"], key) / ms(&results[mode]["jkg"], key)
    };
    let report = json!({
        "n": n,
        "warmup": warmup,
        "jupyter_kernel_gateway": jkg_version,
        "stock": results["stock"],
        "quickack": results["quickack"],
        "ratio_median": ratio("stock", "median_ms"),
        "ratio_p95": ratio("stock", "p95_ms"),
        "ratio_print_median": ratio("stock", "print_median_ms"),
        "ratio_median_quickack": ratio("quickack", "median_ms"),
        "ratio_p95_quickack": ratio("quickack", "p95_ms"),
        "ratio_print_median_quickack": ratio("quickack", "print_median_ms"),
        "cellblock_bin": cellblock_tests::binary(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });

    println!(
        "{:<10} {:<22} {:<12} {:>6} {:>10} {:>9} {:>9} {:>9} {:>12}",
        "client",
        "figure",
        "server",
        "n",
        "median ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "print med ms"
    );
    for mode in ["stock", "quickack"] {
        for (name, key) in [("cellblock", "cellblock"), ("JKG", "jkg")] {
            let r = &results[mode][key];
            println!(
                "{:<10} {:<22} {:<12} {:>6} {:>10.2} {:>9.2} {:>9.2} {:>9.2} {:>12.2}",
                mode,
                "ws execute `pass`",
                name,
                r["n"],
                ms(r, "median_ms"),
                ms(r, "p95_ms"),
                ms(r, "p99_ms"),
                ms(r, "mean_ms"),
                ms(r, "print_median_ms"),
            );
        }
    }
    println!(
        "cellblock / JKG {jkg_version} median ratio: {:.2}x (p95 {:.2}x, print {:.2}x); \
         with --quickack: {:.2}x (p95 {:.2}x, print {:.2}x)",
        ratio("stock", "median_ms"),
        ratio("stock", "p95_ms"),
        ratio("stock", "print_median_ms"),
        ratio("quickack", "median_ms"),
        ratio("quickack", "p95_ms"),
        ratio("quickack", "print_median_ms"),
    );
    for (name, key) in [("cellblock", "cellblock"), ("JKG", "jkg")] {
        let r = &results["stock"][key];
        println!(
            "{name}: execute_reply before idle {} times, after {}",
            r["reply_before_idle"], r["idle_before_reply"]
        );
        for (note, count) in r["notes"].as_object().into_iter().flatten() {
            println!("{name}: {note} ({count}x)");
        }
    }
    cellblock_tests::write_bench_report("gateway", &report);
}
