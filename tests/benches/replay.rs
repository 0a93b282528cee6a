//! `cargo bench -p cellblock-tests --bench replay`
//!
//! A 50-cell session (assignments, prints, a DataFrame every 10th cell, a
//! chart every 25th) is recorded, exported and replayed:
//! - the time to export the notebook;
//! - the time to replay all 50 cells in a fresh sandbox (sandbox creation
//!   and deletion included), and per cell;
//! - the cost of recording: HTTP `execute` of `pass`, median of 200, which
//!   now includes two SQLite writes (compare with the roundtrip bench).
//!
//! Prints a table and writes `target/bench/replay.json`.

use cellblock_tests::{median_ms, Server};
use serde_json::json;
use std::time::{Duration, Instant};

fn cell(i: usize) -> String {
    if i % 25 == 24 {
        format!("import matplotlib.pyplot as plt\nplt.plot(range({i}))\nplt.show()")
    } else if i % 10 == 9 {
        format!("import pandas as pd\npd.DataFrame({{'n': range({i}), 'sq': [k * k for k in range({i})]}})")
    } else {
        format!("v{i} = {i} * 2\nprint('cell', {i}, v{i})")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    for i in 0..50 {
        let r = s.exec(&id, &cell(i)).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let t = Instant::now();
    let (status, nb) = s
        .call(s.req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{id}/notebook"),
        ))
        .await;
    let export_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200);
    assert_eq!(nb["cells"].as_array().map(Vec::len), Some(50));

    let t = Instant::now();
    let (status, r) = s
        .call(
            s.req(reqwest::Method::POST, "/v1/notebooks/execute")
                .timeout(Duration::from_secs(1800))
                .json(&nb),
        )
        .await;
    let replay_s = t.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{r}");
    let summary = r["summary"].clone();

    let mut passes = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        s.exec(&id, "pass").await;
        passes.push(t.elapsed());
    }
    let pass_ms = median_ms(passes);

    let report = json!({
        "export_ms": export_ms,
        "replay_50_cells_s": replay_s,
        "replay_per_cell_ms": replay_s * 1000.0 / 50.0,
        "replay_summary": summary,
        "http_execute_pass_median_ms": pass_ms,
    });
    println!("50-cell session: export {export_ms:.1} ms; replay {replay_s:.2} s ({:.1} ms per cell, sandbox create/delete included); summary {summary}", replay_s * 1000.0 / 50.0);
    println!("HTTP execute of pass with tracing: median {pass_ms:.2} ms");
    cellblock_tests::write_bench_report("replay", &report);
}
