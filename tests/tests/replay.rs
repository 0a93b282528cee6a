//! Replay: a recorded session (live or deleted) or a client's `.ipynb` runs
//! again in a fresh sandbox, and each code cell's outputs are compared with
//! the recorded ones after normalisation (execution counts, memory addresses,
//! durations are noise; a random number is a real change). The executed
//! notebook is strictly valid nbformat 4.5, the replay sandbox is deleted
//! afterwards unless kept (also when the client goes away mid-replay), its
//! provenance metadata describes the replay, malformed or oversized input
//! never creates a sandbox, and the `cellblock replay` / `cellblock export`
//! CLI exits 0, 1 or 2 as documented.
//!
//! Notebooks are checked with nbformat from the venv `./scripts/test.sh`
//! prepares (`CELLBLOCK_TEST_TOOLS`).

use cellblock_tests::{binary, eventually, nb_text, tools, validate_notebook, Server, TempDir};
use reqwest::Method;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whole-request limit of a replay (a fresh sandbox plus every cell; the
/// harness's client gives up after 120 s otherwise).
const REPLAY: Duration = Duration::from_secs(900);

/// The recorded session: deterministic cells, noise that normalisation must
/// ignore (a memory address, a measured duration), an error, a random number
/// and a cell after them.
const SESSION: [&str; 8] = [
    "print('hello')\nfor i in range(3):\n    print('line', i)",
    "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']})\ndf",
    "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])\nplt.show()",
    "object()",
    "import time\nt = time.perf_counter()\nsum(range(10**5))\nprint(f\"took {time.perf_counter() - t:.4f} s\")",
    "1/0",
    "import random\nprint(random.random())",
    "print('after', df.shape)",
];
const ERROR_CELL: usize = 5;
const RANDOM_CELL: usize = 6;

/// Ids of the live sandboxes.
async fn listed(s: &Server) -> Vec<String> {
    let (status, v) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    assert_eq!(status, 200, "{v}");
    v["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect()
}

/// `GET /v1/sandboxes/{id}/notebook`.
async fn export(s: &Server, id: &str) -> Value {
    let (status, nb) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{id}/notebook")))
        .await;
    assert_eq!(status, 200, "{nb}");
    nb
}

/// `POST /v1/sandboxes/{id}/replay`, with an optional body.
async fn replay_sandbox(s: &Server, id: &str, body: Option<Value>) -> (u16, Value) {
    let rb = s
        .req(Method::POST, &format!("/v1/sandboxes/{id}/replay"))
        .timeout(REPLAY);
    let rb = match body {
        Some(b) => rb.json(&b),
        None => rb,
    };
    s.call(rb).await
}

/// `POST /v1/notebooks/execute{query}` with a JSON body.
async fn execute_notebook(s: &Server, query: &str, body: &Value) -> (u16, Value) {
    s.call(
        s.req(Method::POST, &format!("/v1/notebooks/execute{query}"))
            .timeout(REPLAY)
            .json(body),
    )
    .await
}

/// Runs `cells` in a new sandbox; returns its id and the results.
async fn record(s: &Server, cells: &[&str]) -> (String, Vec<Value>) {
    let id = s.create(json!({})).await;
    let mut results = Vec::new();
    for code in cells {
        results.push(s.exec(&id, code).await);
    }
    (id, results)
}

/// The `result` of each cell report.
fn results(r: &Value) -> Vec<String> {
    r["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| c["result"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Checks a replay's report of `SESSION` run to the end.
fn check_full_session_report(r: &Value, recorded: &Value) {
    assert_eq!(
        r["summary"],
        json!({"cells": 8, "identical": 7, "changed": 1, "errors": 1, "skipped": 0}),
        "{}",
        r["cells"]
    );
    let mut want = vec!["identical"; SESSION.len()];
    want[RANDOM_CELL] = "changed";
    assert_eq!(results(r), want, "{}", r["cells"]);
    let rec_cells = recorded["cells"].as_array().expect("recorded cells");
    for (i, c) in r["cells"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i, "{c}");
        assert_eq!(c["cell_id"], rec_cells[i]["id"], "{c}");
        let eid = c["execution_id"].as_str().expect("execution_id");
        assert_ne!(
            Some(eid),
            rec_cells[i]["metadata"]["cellblock"]["execution_id"].as_str(),
            "cell {i} was not executed again"
        );
        if i == ERROR_CELL {
            assert_eq!(c["status"], "error", "{c}");
            assert_eq!(c["error"]["ename"], "ZeroDivisionError", "{c}");
        } else {
            assert_eq!(c["status"], "ok", "{c}");
            assert!(c["error"].is_null(), "{c}");
        }
        let diffs = c["differences"].as_array().expect("differences");
        if i == RANDOM_CELL {
            assert!(!diffs.is_empty(), "{c}");
        } else {
            assert!(diffs.is_empty(), "cell {i}: {c}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replays_with_noise_ignored_and_randomness_reported() {
    let _ = tools();
    let s = Server::start();
    let (id, live) = record(&s, &SESSION).await;
    for (i, r) in live.iter().enumerate() {
        let want = if i == ERROR_CELL { "error" } else { "ok" };
        assert_eq!(r["status"], want, "cell {i}: {r}");
    }
    assert!(
        live[3]["outputs"][0]["data"]["text/plain"]
            .as_str()
            .is_some_and(|t| t.contains(" at 0x")),
        "object() shows a memory address: {}",
        live[3]
    );
    assert!(
        live[2]["outputs"][0]["data"]["image/png"].is_string(),
        "{}",
        live[2]
    );
    let recorded = export(&s, &id).await;
    assert_eq!(recorded["cells"].as_array().map(Vec::len), Some(8));

    let started = Instant::now();
    let (status, r) = replay_sandbox(&s, &id, None).await;
    eprintln!(
        "replay of {} cells took {:?}",
        SESSION.len(),
        started.elapsed()
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["replay_of"], id.as_str());
    assert_eq!(r["kept"], false);
    let replay_sid = r["sandbox_id"].as_str().expect("sandbox_id").to_owned();
    assert_ne!(replay_sid, id, "a fresh sandbox");
    check_full_session_report(&r, &recorded);

    // The executed notebook: the recorded cells with the new outputs.
    let nb = &r["notebook"];
    let cells = nb["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), SESSION.len());
    for (i, c) in cells.iter().enumerate() {
        assert_eq!(nb_text(&c["source"]), SESSION[i], "cell {i}");
        assert_eq!(c["id"], recorded["cells"][i]["id"], "cell {i}");
        assert_eq!(c["execution_count"], json!(i + 1), "cell {i}");
    }
    assert!(
        nb_text(&cells[3]["outputs"][0]["data"]["text/plain"]).contains(" at 0x"),
        "{}",
        cells[3]
    );
    assert_eq!(cells[ERROR_CELL]["outputs"][0]["output_type"], "error");
    assert_ne!(
        cells[RANDOM_CELL]["outputs"], recorded["cells"][RANDOM_CELL]["outputs"],
        "a new random number"
    );
    assert_eq!(
        nb_text(&cells[2]["outputs"][0]["data"]["image/png"]),
        nb_text(&recorded["cells"][2]["outputs"][0]["data"]["image/png"]),
        "the chart is drawn identically"
    );
    validate_notebook(nb);

    // The replay sandbox is gone; its own trace stays readable.
    assert_eq!(listed(&s).await, vec![id.clone()]);
    assert!(
        eventually(Duration::from_secs(10), || s.kernels().len() == 1).await,
        "kernels left: {:?}",
        s.kernels()
    );
    let (status, v) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{replay_sid}")))
        .await;
    assert_eq!(status, 404, "{v}");
    let trace = export(&s, &replay_sid).await;
    assert_eq!(
        trace["cells"].as_array().map(Vec::len),
        Some(SESSION.len()),
        "the replay's own session"
    );

    assert_eq!(s.delete(&id).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_session_executes_with_stop_on_error_and_keep() {
    let _ = tools();
    let s = Server::start();
    let (id, _) = record(&s, &SESSION).await;
    let nb = export(&s, &id).await;

    // Bare notebook, options in the query: the cells after the error are
    // skipped and have neither outputs nor an execution count.
    let (status, r) = execute_notebook(&s, "?stop_on_error=true", &nb).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["replay_of"].is_null(), "{}", r["replay_of"]);
    assert_eq!(r["kept"], false);
    assert_eq!(
        r["summary"],
        json!({"cells": 8, "identical": 6, "changed": 0, "errors": 1, "skipped": 2}),
        "{}",
        r["cells"]
    );
    let mut want = vec!["identical"; SESSION.len()];
    want[ERROR_CELL + 1..].fill("skipped");
    assert_eq!(results(&r), want, "{}", r["cells"]);
    let reports = r["cells"].as_array().unwrap();
    assert_eq!(reports[ERROR_CELL]["status"], "error");
    let cells = r["notebook"]["cells"].as_array().expect("cells");
    for i in ERROR_CELL + 1..SESSION.len() {
        assert_eq!(reports[i]["index"], i);
        assert_eq!(reports[i]["cell_id"], nb["cells"][i]["id"]);
        assert_eq!(cells[i]["outputs"], json!([]), "cell {i}: {}", cells[i]);
        assert!(
            cells[i]["execution_count"].is_null(),
            "cell {i}: {}",
            cells[i]
        );
    }
    assert_eq!(cells[ERROR_CELL]["execution_count"], ERROR_CELL + 1);
    validate_notebook(&r["notebook"]);
    assert_eq!(listed(&s).await, vec![id.clone()]);

    // The wrapper form keeps the sandbox, which holds the replayed state.
    let (status, r) = execute_notebook(&s, "", &json!({"notebook": nb, "keep": true})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["kept"], true);
    assert_eq!(
        r["summary"],
        json!({"cells": 8, "identical": 7, "changed": 1, "errors": 1, "skipped": 0}),
        "{}",
        r["cells"]
    );
    let kept = r["sandbox_id"].as_str().expect("sandbox_id").to_owned();
    let mut ids = listed(&s).await;
    ids.sort();
    let mut want = vec![id.clone(), kept.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(eventually(Duration::from_secs(10), || s.kernels().len() == 2).await);
    let v = s.exec(&kept, "print(df.shape)").await;
    assert_eq!(v["stdout"], "(3, 2)\n", "{v}");
    assert_eq!(s.delete(&kept).await, 204);
    assert_eq!(listed(&s).await, vec![id.clone()]);
    assert!(eventually(Duration::from_secs(10), || s.kernels().len() == 1).await);
    assert_eq!(s.delete(&id).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_nbformat_4_4_notebook_replays() {
    let _ = tools();
    let s = Server::start();
    let nb = json!({
        "nbformat": 4,
        "nbformat_minor": 4,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}
        },
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# A title\n", "Some *text*."]},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 7,
                "source": ["a = 1\n", "a + 1"],
                "outputs": [{
                    "output_type": "execute_result",
                    "execution_count": 7,
                    "metadata": {},
                    "data": {"text/plain": "2"}
                }]
            },
            {"cell_type": "markdown", "metadata": {}, "source": "The end."}
        ]
    });
    let (status, r) = execute_notebook(&s, "", &nb).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["summary"],
        json!({"cells": 1, "identical": 1, "changed": 0, "errors": 0, "skipped": 0}),
        "{}",
        r["cells"]
    );
    let reports = r["cells"].as_array().expect("cells");
    assert_eq!(reports.len(), 1, "markdown is not replayed: {reports:?}");
    assert_eq!(reports[0]["index"], 1);
    assert!(reports[0]["cell_id"].is_null());
    assert_eq!(reports[0]["status"], "ok");
    assert_eq!(reports[0]["result"], "identical");

    let out = &r["notebook"];
    assert_eq!(out["nbformat"], 4);
    assert_eq!(out["nbformat_minor"], 5);
    let cells = out["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 3);
    let mut ids = std::collections::HashSet::new();
    for (i, c) in cells.iter().enumerate() {
        let cid = c["id"]
            .as_str()
            .unwrap_or_else(|| panic!("cell {i} has no id: {c}"));
        assert!(ids.insert(cid.to_owned()), "duplicate id {cid}");
    }
    assert_eq!(cells[0]["source"], nb["cells"][0]["source"]);
    assert!(cells[0].get("outputs").is_none(), "{}", cells[0]);
    assert_eq!(cells[2]["source"], "The end.");
    let code = &cells[1];
    assert_eq!(code["execution_count"], 1);
    let outs = code["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert_eq!(outs[0]["output_type"], "execute_result");
    assert_eq!(nb_text(&outs[0]["data"]["text/plain"]), "2");
    let summary = validate_notebook(out);
    assert!(summary.starts_with("valid 4 5 3"), "{summary}");
    assert!(listed(&s).await.is_empty());
    assert!(eventually(Duration::from_secs(10), || s.kernels().is_empty()).await);
}

/// Status, error code and message of a request.
async fn refused(s: &Server, rb: reqwest::RequestBuilder) -> (u16, String, String) {
    let (status, v) = s.call(rb).await;
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// How a request body is sent by [`raw_post`].
enum Framing {
    /// With `Content-Length: declared` (possibly more than is ever sent).
    Length(u64),
    Chunked,
}

/// What [`raw_post`] saw: the status, the JSON body, how many body bytes the
/// server took before answering, and the time to the answer.
struct RawAnswer {
    status: u16,
    body: Value,
    sent: u64,
    took: Duration,
}

/// POSTs `total` bytes (`head`, then `filler` repeated) over a plain TCP
/// connection, reading the answer while still sending, as curl does. A
/// server that refuses a body answers and closes before all of it is sent;
/// hyper's client then reports only the broken pipe (the answer is lost), so
/// oversized bodies are sent this way instead of with reqwest.
async fn raw_post(
    s: &Server,
    path: &str,
    head: Vec<u8>,
    filler: u8,
    total: u64,
    framing: Framing,
) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s
        .base
        .strip_prefix("http://")
        .expect("an http:// base")
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connecting");
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let path = path.to_owned();
    let writer = tokio::spawn(async move {
        let length = match framing {
            Framing::Length(n) => format!("Content-Length: {n}"),
            Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{length}\r\n\r\n"
        );
        wr.write_all(req.as_bytes()).await?;
        let chunked = matches!(framing, Framing::Chunked);
        let fill = vec![filler; 1 << 20];
        let mut done = 0u64;
        while done < total {
            let from_head = (head.len() as u64).saturating_sub(done);
            let chunk: &[u8] = if from_head > 0 {
                let at = done as usize;
                &head[at..(at + (1 << 20)).min(head.len())]
            } else {
                &fill[..fill.len().min((total - done) as usize)]
            };
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
            }
            wr.write_all(chunk).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
            done += chunk.len() as u64;
            counter.store(done, std::sync::atomic::Ordering::Relaxed);
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        // Kept open (in the task's output) until the answer is read: a
        // half-close after the body makes hyper drop the connection
        // unanswered, and curl does not half-close either.
        std::io::Result::Ok(wr)
    });
    // The answer: its head, then Content-Length bytes (or up to EOF).
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let read = async {
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let want = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if want.is_some_and(|n| raw.len() >= split + 4 + n) {
                    break;
                }
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("no answer within 60 s: the server reads the whole body?");
    let took = started.elapsed();
    writer.abort();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    RawAnswer {
        status,
        body,
        sent: sent.load(std::sync::atomic::Ordering::Relaxed),
        took,
    }
}

/// Runs curl through sh; returns its exit code, the HTTP code it printed
/// and the time taken.
fn curl(script: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    let took = started.elapsed();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        took,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_notebooks_create_no_sandbox() {
    let s = Server::start();
    let url = format!("{}/v1/notebooks/execute", s.base);
    let post = || s.req(Method::POST, "/v1/notebooks/execute");

    let (st, code, msg) = refused(&s, post().body("{\"nbformat\": 4, \"cells\": [")).await;
    assert_eq!((st, code.as_str()), (400, "invalid_json"), "{msg}");

    let shapes = [
        (
            json!({"nbformat": 3, "nbformat_minor": 0, "cells": []}),
            "nbformat",
        ),
        (
            json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}}),
            "cells",
        ),
        (json!({"nbformat": 4, "cells": [1]}), "cell 0"),
        (
            json!({"nbformat": 4, "cells": [{"cell_type": "markdown", "source": ""}, {"source": "x"}]}),
            "cell 1",
        ),
        (
            json!({"nbformat": 4, "cells": [{"cell_type": "code", "source": 5, "outputs": []}]}),
            "cell 0",
        ),
        (
            json!({"nbformat": 4, "cells": [{"cell_type": "code", "source": ["a", 5]}]}),
            "cell 0",
        ),
        (json!([1, 2]), "object"),
        // The wrapper form is checked the same way.
        (
            json!({"notebook": {"nbformat": 3, "cells": []}}),
            "nbformat",
        ),
        (
            json!({"notebook": {"nbformat": 4, "cells": [1]}, "keep": true}),
            "cell 0",
        ),
    ];
    for (nb, names) in &shapes {
        let (st, code, msg) = refused(&s, post().json(nb)).await;
        assert_eq!(
            (st, code.as_str()),
            (422, "invalid_notebook"),
            "{nb}: {msg}"
        );
        assert!(
            msg.contains(names),
            "{nb}: the message {msg:?} should name {names:?}"
        );
    }
    // Unknown wrapper fields and unknown sandboxes are refused too.
    let (st, code, msg) = refused(
        &s,
        post().json(&json!({"notebook": {"nbformat": 4, "cells": []}, "bogus": 1})),
    )
    .await;
    assert_eq!((st, code.as_str()), (422, "invalid_request"), "{msg}");
    let unknown = uuid::Uuid::new_v4();
    let (st, code, msg) = refused(
        &s,
        s.req(Method::POST, &format!("/v1/sandboxes/{unknown}/replay")),
    )
    .await;
    assert_eq!((st, code.as_str()), (404, "sandbox_not_found"), "{msg}");

    // 17 MiB of valid JSON, with a declared length and chunked; 1 GB
    // with a declared length is refused before it is read.
    let path = "/v1/notebooks/execute";
    let big = format!(
        "{{\"nbformat\": 4, \"cells\": [{{\"cell_type\": \"code\", \"source\": \"{}\"}}]}}",
        "x".repeat(17 << 20)
    )
    .into_bytes();
    let n = big.len() as u64;
    let cases = [
        ("17 MiB, Content-Length", big.clone(), n, Framing::Length(n)),
        ("17 MiB, chunked", big, n, Framing::Chunked),
        (
            "1 GB, Content-Length",
            b"{\"nbformat\": 4, \"cells\": [], \"pad\": \"".to_vec(),
            1_000_000_000,
            Framing::Length(1_000_000_000),
        ),
    ];
    for (what, head, total, framing) in cases {
        let declared = matches!(framing, Framing::Length(_));
        let a = raw_post(&s, path, head, b'x', total, framing).await;
        eprintln!(
            "{what}: {} after {:?}, {} bytes sent by then",
            a.status, a.took, a.sent
        );
        assert_eq!(a.status, 413, "{what}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "payload_too_large", "{what}");
        assert!(a.took < Duration::from_secs(10), "{what}: {:?}", a.took);
        if declared && total > n {
            assert!(
                a.sent < 256 << 20,
                "{what}: {} bytes were taken before the refusal",
                a.sent
            );
        }
    }

    let tmp = TempDir::new();
    let sparse = tmp.0.join("gigabyte.json");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(1_000_000_000))
        .expect("a sparse 1 GB file");
    let (rc, code, took) = curl(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 60 -X POST -H 'Content-Type: application/json' -T '{}' '{url}'",
        sparse.display()
    ));
    eprintln!("curl, 1 GB with Content-Length: {code} (exit {rc:?}) after {took:?}");
    assert_eq!((rc, code.as_str()), (Some(0), "413"));
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Chunked, the server reads and throws away up to 64 MiB, answers 413
    // and closes without reading the rest; curl, still sending, then
    // sometimes fails with a send error (exit 55) before it reads the
    // answer. A gigabyte is not worth draining; here it must not hang.
    let (rc, code, took) = curl(&format!(
        "head -c 1000000000 /dev/zero | curl -s -o /dev/null -w '%{{http_code}}' --max-time 60 -X POST -H 'Content-Type: application/json' -T - '{url}'"
    ));
    eprintln!("curl, 1 GB chunked: {code} (exit {rc:?}) after {took:?}");
    assert!(
        (rc, code.as_str()) == (Some(0), "413") || rc == Some(55),
        "curl exit {rc:?}, HTTP {code}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Nothing was created, and the server still answers.
    assert!(listed(&s).await.is_empty());
    assert!(s.kernels().is_empty(), "kernels: {:?}", s.kernels());
    let (st, v) = s.call(s.req(Method::GET, "/healthz")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sandboxes"], 0);
}

/// Runs the `cellblock` CLI without a key or server from the environment.
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .env_remove("CELLBLOCK_API_KEY")
            .env_remove("CELLBLOCK_SERVER")
            .env("CELLBLOCK_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("running the cellblock CLI")
    })
    .await
    .expect("the CLI task")
}

fn args(a: &[&dyn AsRef<OsStr>]) -> Vec<String> {
    a.iter()
        .map(|x| x.as_ref().to_string_lossy().into_owned())
        .collect()
}

fn describe(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cellblock export ID` into `path`; asserts exit 0.
async fn cli_export(s: &Server, id: &str, path: &Path) -> Value {
    let out = cli(args(&[&"export", &id, &"--server", &s.base])).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    std::fs::write(path, &out.stdout).expect("writing the export");
    serde_json::from_slice(&out.stdout).expect("the export is JSON")
}

/// `cellblock replay FILE`; returns the exit code and stdout.
async fn cli_replay(s: &Server, path: &Path, extra: &[&str]) -> (Option<i32>, String, Output) {
    let mut a = args(&[&"replay", &path, &"--server", &s.base]);
    a.extend(extra.iter().map(|x| x.to_string()));
    let out = cli(a).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_and_replays_with_meaningful_exit_codes() {
    let s = Server::start();
    let tmp = TempDir::new();
    let deterministic = [SESSION[0], SESSION[1], SESSION[3], SESSION[4]];
    let (det_id, _) = record(&s, &deterministic).await;
    let mut with_random = deterministic.to_vec();
    with_random.push(SESSION[RANDOM_CELL]);
    let (rnd_id, _) = record(&s, &with_random).await;

    // The CLI's export is the HTTP notebook.
    let det_path = tmp.0.join("det.ipynb");
    let exported = cli_export(&s, &det_id, &det_path).await;
    let http = export(&s, &det_id).await;
    assert_eq!(exported["cells"], http["cells"]);
    assert_eq!(exported["nbformat"], 4);
    let rnd_path = tmp.0.join("rnd.ipynb");
    let exported = cli_export(&s, &rnd_id, &rnd_path).await;
    assert_eq!(
        exported["cells"].as_array().map(Vec::len),
        Some(with_random.len())
    );

    // Deterministic cells only: exit 0.
    let (code, stdout, out) = cli_replay(&s, &det_path, &[]).await;
    assert_eq!(code, Some(0), "{}", describe(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), deterministic.len() + 1, "{stdout}");
    for l in &lines[..deterministic.len()] {
        assert!(l.contains("identical"), "{l}");
    }
    assert_eq!(
        *lines.last().unwrap(),
        "4 cells: 4 identical, 0 changed, 0 errors, 0 skipped",
        "{stdout}"
    );

    // A random number changes: exit 1, and the cell says so.
    let (code, stdout, out) = cli_replay(&s, &rnd_path, &["--timeout-s", "60"]).await;
    assert_eq!(code, Some(1), "{}", describe(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[4].contains("changed"), "{stdout}");
    assert!(
        stdout.contains("5 cells: 4 identical, 1 changed, 0 errors, 0 skipped"),
        "{stdout}"
    );

    // An error is a failure too, even if it is the recorded one.
    let err_path = tmp.0.join("err.ipynb");
    let err_nb = json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "boom", "metadata": {}, "execution_count": null,
         "source": "1/0", "outputs": []},
        {"cell_type": "code", "id": "next", "metadata": {}, "execution_count": null,
         "source": "print('x')", "outputs": [{"output_type": "stream", "name": "stdout", "text": "x\n"}]},
    ]});
    std::fs::write(&err_path, serde_json::to_vec(&err_nb).unwrap()).unwrap();
    let (code, stdout, out) = cli_replay(&s, &err_path, &["--stop-on-error"]).await;
    assert_eq!(code, Some(1), "{}", describe(&out));
    assert!(stdout.contains("(ZeroDivisionError)"), "{stdout}");
    assert!(
        stdout.contains("2 cells: 0 identical, 1 changed, 1 errors, 1 skipped"),
        "{stdout}"
    );

    // Client errors: exit 2.
    let (code, _, out) = cli_replay(&s, &tmp.0.join("missing.ipynb"), &[]).await;
    assert_eq!(code, Some(2), "{}", describe(&out));
    let bad_path = tmp.0.join("bad.ipynb");
    std::fs::write(&bad_path, br#"{"nbformat": 3, "cells": []}"#).unwrap();
    let (code, _, out) = cli_replay(&s, &bad_path, &[]).await;
    assert_eq!(code, Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("422"),
        "{}",
        describe(&out)
    );
    // Over the body limit: the server refuses it before reading it all.
    let huge_path = tmp.0.join("huge.ipynb");
    let huge = json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "big", "metadata": {}, "execution_count": null,
         "source": "x".repeat(17 << 20), "outputs": []},
    ]});
    std::fs::write(&huge_path, serde_json::to_vec(&huge).unwrap()).unwrap();
    let (code, _, out) = cli_replay(&s, &huge_path, &[]).await;
    assert_eq!(code, Some(2), "{}", describe(&out));
    eprintln!(
        "cellblock replay of a 17 MiB notebook: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let out = cli(args(&[
        &"replay",
        &det_path,
        &"--server",
        &"http://127.0.0.1:1",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = cli(args(&[&"export", &unknown, &"--server", &s.base])).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        describe(&out)
    );

    // No replay sandbox was left behind.
    let mut ids = listed(&s).await;
    ids.sort();
    let mut want = vec![det_id.clone(), rnd_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(eventually(Duration::from_secs(10), || s.kernels().len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sandboxs_session_replays() {
    let s = Server::start();
    let cells = [
        "x = 21",
        "print(x * 2)",
        "import pandas as pd\npd.Series([x, x + 1], name='s')",
    ];
    let (id, _) = record(&s, &cells).await;
    assert_eq!(s.delete(&id).await, 204);
    assert!(listed(&s).await.is_empty());

    let (status, r) = replay_sandbox(&s, &id, Some(json!({"timeout_s": 60}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["replay_of"], id.as_str());
    assert_eq!(
        r["summary"],
        json!({"cells": 3, "identical": 3, "changed": 0, "errors": 0, "skipped": 0}),
        "{}",
        r["cells"]
    );
    assert_eq!(
        nb_text(&r["notebook"]["cells"][1]["outputs"][0]["text"]),
        "42\n"
    );
    assert!(listed(&s).await.is_empty());
    assert!(eventually(Duration::from_secs(10), || s.kernels().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_completes_and_is_cleaned_up_when_the_client_goes_away() {
    let s = Server::start();
    let nb = json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "slow", "metadata": {}, "execution_count": null,
         "source": "import time\ntime.sleep(4)\nprint('slept')",
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "slept\n"}]},
    ]});
    let gave_up = s
        .req(Method::POST, "/v1/notebooks/execute")
        .timeout(Duration::from_millis(1500))
        .json(&nb)
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "{gave_up:?}"
    );
    // Still running without a client, then deleted.
    let ids = listed(&s).await;
    assert_eq!(ids.len(), 1, "the replay sandbox runs on: {ids:?}");
    let rid = ids[0].clone();
    let mut gone = false;
    for _ in 0..600 {
        if listed(&s).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the replay sandbox was not deleted");
    assert!(eventually(Duration::from_secs(10), || s.kernels().is_empty()).await);
    let trace = export(&s, &rid).await;
    assert_eq!(
        nb_text(&trace["cells"][0]["outputs"][0]["text"]),
        "slept\n",
        "the cell ran to its end: {}",
        trace["cells"][0]
    );
}

/// The executed notebook's provenance (`metadata.cellblock`, cell timings)
/// must describe the replay that produced its outputs, not the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executed_notebook_describes_the_replay_not_the_recording() {
    let s = Server::start();
    let (id, _) = record(&s, &["print('one')", "1/0"]).await;
    let (status, r) = replay_sandbox(&s, &id, None).await;
    assert_eq!(status, 200, "{r}");
    let nb = &r["notebook"];
    let replay_sid = r["sandbox_id"].as_str().expect("sandbox_id");
    if let Some(sid) = nb["metadata"]["cellblock"]["sandbox_id"].as_str() {
        assert_eq!(
            sid, replay_sid,
            "metadata.cellblock.sandbox_id names the recorded sandbox, not the replay's"
        );
    }
    for (c, report) in nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["cells"].as_array().unwrap())
    {
        if let Some(eid) = c["metadata"]["cellblock"]["execution_id"].as_str() {
            assert_eq!(
                Some(eid),
                report["execution_id"].as_str(),
                "the cell's metadata.cellblock names the recorded execution, but its \
                 outputs come from the replay's: {c}"
            );
        }
    }
}
