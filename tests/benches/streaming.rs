//! `cargo bench -p cellblock-tests --bench streaming`
//!
//! - **First output latency**: `print` then `time.sleep(1)`, streamed as
//!   NDJSON: time from sending the request to the first `stdout` event, and to
//!   `end`. The first must come well before the second is over.
//! - **Flushed lines**: 100,000 `print(i, flush=True)`, non-streamed and
//!   streamed: wall time and whether all arrived in order.
//! - **1 GB flood**: a print loop of 10^6 lines of 1000 bytes, non-streamed and
//!   streamed (the client reads and discards every event): wall time and the
//!   broker's peak RSS growth (VmHWM after − VmRSS before; target < 100 MB).
//!
//! Prints a table and writes `target/bench/streaming.json`.

use cellblock_tests::{median_ms, proc_status_kib, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Streams an execution as NDJSON; returns (time to first stdout, time to
/// end, stdout text in order, the end result).
async fn stream(s: &Server, id: &str, code: &str) -> (Duration, Duration, String, Value) {
    let t = Instant::now();
    let resp = s
        .req(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/execute"),
        )
        .header("accept", "application/x-ndjson")
        .timeout(Duration::from_secs(1800))
        .json(&json!({"code": code, "timeout_s": 1800}))
        .send()
        .await
        .expect("execute");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut buf, mut text) = (Vec::new(), String::new());
    let mut first = None;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.expect("stream"));
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = serde_json::from_slice(&line).expect("an NDJSON event");
            match ev["type"].as_str() {
                Some("stdout") => {
                    first.get_or_insert_with(|| t.elapsed());
                    text.push_str(ev["text"].as_str().unwrap_or_default());
                }
                Some("end") => {
                    let end = t.elapsed();
                    return (first.unwrap_or(end), end, text, ev["result"].clone());
                }
                _ => {}
            }
        }
    }
    panic!("the stream ended without an end event");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let pid = s.pid();

    let (mut firsts, mut ends) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let (f, e, out, _) = stream(
            &s,
            &id,
            "import time\nprint('tick', flush=True)\ntime.sleep(1)",
        )
        .await;
        assert_eq!(out, "tick\n");
        firsts.push(f);
        ends.push(e);
    }
    let first_ms = median_ms(firsts);
    let end_ms = median_ms(ends);

    let lines = "for i in range(100000):\n    print(i, flush=True)";
    let want: String = (0..100000).map(|i| format!("{i}\n")).collect();
    let t = Instant::now();
    let r = s
        .exec_with(&id, json!({"code": lines, "timeout_s": 1800}))
        .await;
    let lines_plain_s = t.elapsed().as_secs_f64();
    let lines_plain_ok = r["stdout"] == want.as_str();
    let (_, e, out, _) = stream(&s, &id, lines).await;
    let lines_stream_s = e.as_secs_f64();
    let lines_stream_ok = out == want;

    let flood = "s = 'x' * 999\nfor i in range(1_000_000):\n    print(s)";
    let before = proc_status_kib(pid, "VmRSS");
    let t = Instant::now();
    let r = s
        .exec_with(&id, json!({"code": flood, "timeout_s": 1800}))
        .await;
    let flood_plain_s = t.elapsed().as_secs_f64();
    let flood_plain_mib = (proc_status_kib(pid, "VmHWM").saturating_sub(before)) as f64 / 1024.0;
    assert_eq!(r["truncated"], true);
    // Streamed: VmHWM cannot be reset, so sample VmRSS while it runs.
    let before = proc_status_kib(pid, "VmRSS");
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    proc_status_kib(pid, "VmRSS"),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (_, e, out, _) = stream(&s, &id, flood).await;
    sampler.abort();
    let flood_stream_s = e.as_secs_f64();
    let flood_stream_mib = (peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)) as f64
        / 1024.0;
    let streamed_mb = out.len() as f64 / 1e6;

    let report = json!({
        "first_stdout_ms": first_ms,
        "end_ms": end_ms,
        "lines_100k": {"plain_s": lines_plain_s, "plain_complete": lines_plain_ok,
                       "streamed_s": lines_stream_s, "streamed_complete": lines_stream_ok},
        "flood_1gb": {"plain_s": flood_plain_s, "plain_rss_growth_mib": flood_plain_mib,
                      "streamed_s": flood_stream_s, "streamed_rss_growth_mib": flood_stream_mib,
                      "streamed_mb_received": streamed_mb},
    });
    println!("print, then sleep(1), streamed: first stdout {first_ms:.1} ms, end {end_ms:.1} ms (median of 10)");
    println!(
        "100k flushed lines: {lines_plain_s:.1} s non-streamed (complete: {lines_plain_ok}), {lines_stream_s:.1} s streamed (complete: {lines_stream_ok})"
    );
    println!(
        "1 GB flood: {flood_plain_s:.1} s non-streamed, broker RSS +{flood_plain_mib:.1} MiB; {flood_stream_s:.1} s streamed ({streamed_mb:.0} MB received), +{flood_stream_mib:.1} MiB"
    );
    cellblock_tests::write_bench_report("streaming", &report);
}
