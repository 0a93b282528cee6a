//! `cargo bench -p cellblock-tests --bench roundtrip`
//!
//! Median, p90 and p99 of:
//! - sandbox create → ready over HTTP (fully isolated), next to a plain
//!   `python -m ipykernel_launcher` spawn → `kernel_info` reply with no
//!   isolation at all (the baseline; the difference is the isolation cost);
//! - HTTP `execute` of `pass`, end to end through the built binary;
//! - a direct ZeroMQ round trip (`execute_request` → reply + idle) to the same
//!   kernel with cellblock-protocol, the floor the HTTP path is compared to.
//!
//! Prints a table and writes `target/bench/roundtrip.json`.

use cellblock_protocol::client::ClientOptions;
use cellblock_protocol::message::ExecuteRequest;
use cellblock_protocol::{ConnectionInfo, KernelClient};
use cellblock_tests::Server;
use serde_json::json;
use std::time::{Duration, Instant};

fn stats(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    let pick = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1000.0
    };
    json!({"n": v.len(), "median_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99)})
}

/// Spawns a bare kernel from the image with no isolation and times it to ready.
async fn plain_kernel_start() -> Duration {
    let image = cellblock_tests::images_dir().join("python");
    let version = std::fs::read_dir(&image)
        .expect("image dir")
        .flatten()
        .find(|e| e.path().join(".complete").exists())
        .expect("a built image")
        .path();
    let dir = cellblock_tests::temp_data_dir();
    let conn = ConnectionInfo::new_ipc(&dir.join("k"));
    let conn_path = dir.join("k.json");
    conn.write(&conn_path).unwrap();
    let t = Instant::now();
    let mut child = tokio::process::Command::new(version.join("venv/bin/python"))
        .args(["-m", "ipykernel_launcher", "-f"])
        .arg(&conn_path)
        .env("IPYTHONDIR", dir.join("ipy"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kernel");
    let client = KernelClient::connect(&conn, ClientOptions::default())
        .await
        .expect("connect");
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    let took = t.elapsed();
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let s = Server::start();

    let mut create = Vec::new();
    let mut last = String::new();
    for _ in 0..8 {
        let t = Instant::now();
        last = s.create(json!({})).await;
        create.push(t.elapsed());
    }
    let id = last;
    let mut plain = Vec::new();
    for _ in 0..8 {
        plain.push(plain_kernel_start().await);
    }
    for _ in 0..20 {
        s.exec(&id, "pass").await;
    }
    let mut http = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = s.exec(&id, "pass").await;
        http.push(t.elapsed());
        assert_eq!(r["status"], "ok");
    }

    let simple = cellblock_tests::simple_id(&id);
    let conn_path = s.data_dir.join("run").join(simple).join("sock/k0.json");
    let conn = ConnectionInfo::read(&conn_path).expect("connection file");
    let client = KernelClient::connect(&conn, ClientOptions::default())
        .await
        .expect("connect");
    client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    let mut direct = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let mut exec = client
            .execute(ExecuteRequest::new("pass"))
            .await
            .expect("execute");
        while exec.next().await.is_some() {}
        assert!(exec.is_complete());
        if i >= 20 {
            direct.push(t.elapsed());
        }
    }

    let http_s = stats(http);
    let direct_s = stats(direct);
    let ratio = http_s["median_ms"].as_f64().unwrap() / direct_s["median_ms"].as_f64().unwrap();
    let create_s = stats(create);
    let plain_s = stats(plain);
    let isolation_cost =
        create_s["median_ms"].as_f64().unwrap() - plain_s["median_ms"].as_f64().unwrap();
    let report = json!({
        "create_to_ready": create_s,
        "plain_kernel_start": plain_s,
        "isolation_cost_median_ms": isolation_cost,
        "http_execute_pass": http_s,
        "direct_zmq_execute_pass": direct_s,
        "http_over_direct_median_ratio": ratio,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>10}",
        "figure", "n", "median ms", "p90 ms", "p99 ms"
    );
    for key in [
        "create_to_ready",
        "plain_kernel_start",
        "http_execute_pass",
        "direct_zmq_execute_pass",
    ] {
        let r = &report[key];
        println!(
            "{:<28} {:>6} {:>10.2} {:>10.2} {:>10.2}",
            key,
            r["n"],
            r["median_ms"].as_f64().unwrap(),
            r["p90_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap()
        );
    }
    println!("HTTP / direct median ratio: {ratio:.2}x (target ≤ 1.15x)");
    println!("isolation cost (create median − plain spawn median): {isolation_cost:.1} ms (target ≤ 30 ms)");
    cellblock_tests::write_bench_report("roundtrip", &report);
}
