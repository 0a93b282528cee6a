//! `cargo bench -p cellblock-tests --bench files`
//!
//! - The cost of artifact reporting: median HTTP `execute` of `pass` with 0,
//!   1000 and 5000 files in the sandbox's home (each execution walks the home
//!   before and after).
//! - Broker memory while a 1 GiB file is uploaded and downloaded (streamed with
//!   curl): the growth of the broker's RSS over its value before, sampled
//!   every 20 ms.
//!
//! Prints a table and writes `target/bench/files.json`.

use cellblock_tests::{median_ms, Server};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kib(pid: i32) -> u64 {
    cellblock_tests::proc_status_kib(pid, "VmRSS")
}

/// Runs a shell pipeline and returns the largest broker RSS seen meanwhile.
fn peak_rss_during(pid: i32, script: &str) -> u64 {
    let mut child = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .spawn()
        .expect("sh");
    let mut peak = rss_kib(pid);
    loop {
        peak = peak.max(rss_kib(pid));
        if let Ok(Some(st)) = child.try_wait() {
            assert!(st.success(), "{script} failed");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Server::start();
    let id = s
        .create(json!({"limits": {"disk_mb": 1300, "memory_mb": 3072}}))
        .await;
    let mut walk = serde_json::Map::new();
    let mut made = 0;
    for n in [0usize, 1000, 5000] {
        let code = format!("import os\nos.makedirs('many', exist_ok=True)\nfor i in range({made}, {n}):\n    open(f'many/f{{i}}', 'w').close()");
        s.exec(&id, &code).await;
        made = n;
        for _ in 0..10 {
            s.exec(&id, "pass").await;
        }
        let mut times = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let r = s.exec(&id, "pass").await;
            times.push(t.elapsed());
            assert_eq!(r["files"]["created"].as_array().map(Vec::len), Some(0));
        }
        walk.insert(format!("{n}_files"), json!(median_ms(times)));
    }
    s.exec(&id, "import shutil; shutil.rmtree('many')").await;

    let pid = s.pid();
    let url = format!("{}/v1/sandboxes/{id}/files/big.bin", s.base);
    let before = rss_kib(pid);
    let t = Instant::now();
    let up_peak = peak_rss_during(
        pid,
        &format!("head -c 1073741824 /dev/zero | curl -sS -f -T - -X PUT {url}"),
    );
    let up_s = t.elapsed().as_secs_f64();
    let mid = rss_kib(pid);
    let t = Instant::now();
    let down_peak = peak_rss_during(pid, &format!("curl -sS -f {url} -o /dev/null"));
    let down_s = t.elapsed().as_secs_f64();

    let report = json!({
        "execute_pass_median_ms_by_home_size": walk,
        "upload_1gib": {"seconds": up_s, "rss_growth_mib": (up_peak.saturating_sub(before)) as f64 / 1024.0},
        "download_1gib": {"seconds": down_s, "rss_growth_mib": (down_peak.saturating_sub(mid)) as f64 / 1024.0},
        "broker_rss_before_mib": before as f64 / 1024.0,
    });
    println!(
        "execute `pass` median by files in the home: {}",
        report["execute_pass_median_ms_by_home_size"]
    );
    println!(
        "1 GiB upload: {:.1} s, broker RSS +{:.1} MiB; download: {:.1} s, +{:.1} MiB",
        up_s,
        report["upload_1gib"]["rss_growth_mib"].as_f64().unwrap(),
        down_s,
        report["download_1gib"]["rss_growth_mib"].as_f64().unwrap()
    );
    cellblock_tests::write_bench_report("files", &report);
}
