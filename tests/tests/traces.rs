//! Traces: every execution and command is recorded durably and stays
//! readable after its sandbox is gone (and after a `kill -9` of the broker),
//! the session exports as a notebook that nbformat accepts in strict mode and
//! nbconvert re-executes, large outputs are stored once, traces past their
//! retention are pruned, and secrets given to commands never reach the trace.
//!
//! Notebooks are checked with the real tools (nbformat, nbconvert) from the
//! venv `./scripts/test.sh` prepares (`CELLBLOCK_TEST_TOOLS`).

use base64::Engine;
use cellblock_tests::{
    eventually, nb_text, processes_mentioning, tools, tools_python, validate_notebook_file, Server,
    TempDir,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs SQL on a trace database with the tools' sqlite3; rows as JSON.
fn sql(db: &Path, query: &str) -> Value {
    let out = tools_python(
        "import sys, json, sqlite3\n\
         c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
         print(json.dumps(c.execute(sys.argv[2]).fetchall()))\n",
        &[db.as_os_str(), OsStr::new(query)],
    );
    serde_json::from_str(&out).expect("sqlite rows as JSON")
}

/// `GET /v1/sandboxes/{id}/notebook`: the notebook and the bytes served.
async fn notebook(s: &Server, id: &str) -> (Value, Vec<u8>) {
    let resp = s
        .req(Method::GET, &format!("/v1/sandboxes/{id}/notebook"))
        .send()
        .await
        .expect("notebook request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.bytes().await.expect("notebook body").to_vec();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        ct.starts_with("application/x-ipynb+json"),
        "content-type {ct:?}"
    );
    let nb = serde_json::from_slice(&bytes).expect("the notebook is JSON");
    (nb, bytes)
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    s.call(s.req(Method::GET, path)).await
}

/// All text a cell's outputs wrote to one stream.
fn stream_text(outputs: &Value, name: &str) -> String {
    outputs
        .as_array()
        .expect("outputs")
        .iter()
        .filter(|o| o["output_type"] == "stream" && o["name"] == name)
        .map(|o| nb_text(&o["text"]))
        .collect()
}

/// A cell's outputs as (type, stream name or first line of text/plain, ename).
fn output_kinds(outputs: &Value) -> Vec<String> {
    outputs
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| match o["output_type"].as_str().unwrap_or_default() {
            "stream" => format!("stream:{}:{}", nb_text(&o["name"]), nb_text(&o["text"])),
            "error" => format!("error:{}", nb_text(&o["ename"])),
            t => format!("{t}:{}", nb_text(&o["data"]["text/plain"])),
        })
        .collect()
}

fn valid_cell_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn decode_png(b64: &str) -> Vec<u8> {
    let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .expect("image/png is base64");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_exports_as_a_valid_notebook_that_nbconvert_reexecutes() {
    let tools = tools();
    let s = Server::start();
    let id = s.create(json!({})).await;
    let cells = [
        "import sys, time\n\
         for i in range(3):\n    \
             print(f'out{i}', flush=True)\n    \
             time.sleep(0.02)\n    \
             print(f'err{i}', file=sys.stderr, flush=True)\n    \
             time.sleep(0.02)",
        "import pandas as pd\n\
         df = pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']})\n\
         df",
        "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])\nplt.show()",
        "1/0",
        "from IPython.display import display\n\
         print('before', flush=True)\n\
         h = display('v1', display_id=True)\n\
         h.update('v2')\n\
         print('after the update')",
        "print('the end')",
    ];
    let mut live = Vec::new();
    for code in cells {
        live.push(s.exec(&id, code).await);
    }
    assert_eq!(live[0]["stdout"], "out0\nout1\nout2\n", "{}", live[0]);
    assert_eq!(live[0]["stderr"], "err0\nerr1\nerr2\n", "{}", live[0]);
    assert_eq!(live[3]["status"], "error", "{}", live[3]);
    let png_live = live[2]["outputs"][0]["data"]["image/png"]
        .as_str()
        .unwrap_or_else(|| panic!("no PNG in the chart's result: {}", live[2]))
        .to_owned();
    decode_png(&png_live);

    // Exported while the sandbox lives.
    let (nb, raw) = notebook(&s, &id).await;
    let tmp = TempDir::new();
    let path = tmp.0.join("session.ipynb");
    std::fs::write(&path, &raw).expect("writing the notebook");
    validate_notebook_file(&path);

    assert_eq!(nb["nbformat"], 4);
    assert_eq!(nb["nbformat_minor"], 5);
    assert_eq!(
        nb["metadata"]["kernelspec"]["name"], "python3",
        "{}",
        nb["metadata"]
    );
    assert_eq!(nb["metadata"]["kernelspec"]["language"], "python");
    let (_, view) = get(&s, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(nb["metadata"]["language_info"]["name"], "python");
    assert_eq!(
        nb["metadata"]["language_info"], view["language_info"],
        "language_info comes from the kernel"
    );
    let nb_cells = nb["cells"].as_array().expect("cells");
    assert_eq!(nb_cells.len(), cells.len(), "one cell per execution");
    let mut ids = HashSet::new();
    for (i, (cell, r)) in nb_cells.iter().zip(&live).enumerate() {
        assert_eq!(cell["cell_type"], "code");
        assert_eq!(nb_text(&cell["source"]), cells[i], "cell {i} source");
        let cid = cell["id"].as_str().expect("cell id");
        assert!(valid_cell_id(cid), "cell id {cid:?}");
        assert!(ids.insert(cid.to_owned()), "duplicate cell id {cid}");
        let eid = r["execution_id"].as_str().unwrap();
        assert_eq!(
            cid,
            eid.replace('-', ""),
            "cell id = execution id without dashes"
        );
        assert_eq!(cell["metadata"]["cellblock"]["execution_id"], eid);
        assert_eq!(cell["execution_count"], json!(i + 1), "cell {i}");
        assert_eq!(cell["execution_count"], r["execution_count"], "cell {i}");
        let timing = &cell["metadata"]["execution"];
        for key in [
            "iopub.status.busy",
            "iopub.execute_input",
            "shell.execute_reply",
            "iopub.status.idle",
        ] {
            assert!(
                timing[key].as_str().is_some_and(|t| t.ends_with('Z')),
                "cell {i} metadata.execution.{key}: {timing}"
            );
        }
        assert!(
            timing["iopub.execute_input"].as_str() <= timing["shell.execute_reply"].as_str(),
            "cell {i}: {timing}"
        );
    }
    let outs = |i: usize| output_kinds(&nb_cells[i]["outputs"]);
    assert_eq!(
        outs(0),
        [
            "stream:stdout:out0\n",
            "stream:stderr:err0\n",
            "stream:stdout:out1\n",
            "stream:stderr:err1\n",
            "stream:stdout:out2\n",
            "stream:stderr:err2\n",
        ],
        "streams interleaved as produced"
    );
    let df = &nb_cells[1]["outputs"];
    assert_eq!(outs(1).len(), 1, "{df}");
    assert_eq!(df[0]["output_type"], "execute_result");
    assert_eq!(df[0]["execution_count"], 2);
    assert!(
        nb_text(&df[0]["data"]["text/html"]).contains("<table"),
        "{df}"
    );
    assert_eq!(df[0]["data"], live[1]["outputs"][0]["data"]);
    let chart = &nb_cells[2]["outputs"];
    assert_eq!(outs(2).len(), 1, "{chart}");
    assert_eq!(chart[0]["output_type"], "display_data");
    let png_nb = nb_text(&chart[0]["data"]["image/png"]);
    assert!(
        png_nb == png_live,
        "the exported PNG differs from the live result's"
    );
    assert_eq!(decode_png(&png_nb), decode_png(&png_live));
    assert_eq!(outs(3), ["error:ZeroDivisionError"]);
    let err = &nb_cells[3]["outputs"][0];
    assert_eq!(err["evalue"], "division by zero");
    assert!(
        err["traceback"].as_array().is_some_and(|t| !t.is_empty()),
        "{err}"
    );
    assert_eq!(
        outs(4),
        [
            "stream:stdout:before\n",
            "display_data:'v2'",
            "stream:stdout:after the update\n"
        ],
        "the display is updated in place: {}",
        nb_cells[4]["outputs"]
    );
    for o in nb_cells
        .iter()
        .flat_map(|c| c["outputs"].as_array().unwrap())
    {
        assert!(
            o.get("transient").is_none() && o.get("display_id").is_none(),
            "{o}"
        );
    }
    assert_eq!(outs(5), ["stream:stdout:the end\n"]);

    // After the deletion, the same cells.
    assert_eq!(s.delete(&id).await, 204);
    let (after, raw_after) = notebook(&s, &id).await;
    assert_eq!(
        after["cells"], nb["cells"],
        "the notebook changed with the deletion"
    );
    assert!(after["metadata"]["cellblock"]["deleted_at"].is_string());
    std::fs::write(&path, &raw_after).expect("writing the notebook");
    validate_notebook_file(&path);

    // Jupyter re-runs it with the same packages and prints the same.
    let out = tmp.0.join("rerun.ipynb");
    let started = Instant::now();
    let run = Command::new(tools.join("jupyter"))
        .args([
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--allow-errors",
            "--ExecutePreprocessor.kernel_name=python3",
            "--ExecutePreprocessor.timeout=300",
            "--output",
        ])
        .arg(&out)
        .arg(&path)
        .env("JUPYTER_PATH", tools.join("../share/jupyter"))
        .env_remove("MPLBACKEND")
        .output()
        .expect("running nbconvert");
    assert!(
        run.status.success(),
        "nbconvert failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "nbconvert re-executed the notebook in {:?}",
        started.elapsed()
    );
    let rerun: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("the re-executed notebook"))
            .expect("JSON");
    let re_cells = rerun["cells"].as_array().expect("cells");
    assert_eq!(re_cells.len(), cells.len());
    for i in [0, 4, 5] {
        for name in ["stdout", "stderr"] {
            assert_eq!(
                stream_text(&re_cells[i]["outputs"], name),
                stream_text(&nb_cells[i]["outputs"], name),
                "cell {i} {name} after re-execution"
            );
        }
    }
    let re = |i: usize| output_kinds(&re_cells[i]["outputs"]);
    assert_eq!(re(3), ["error:ZeroDivisionError"]);
    assert_eq!(
        re(4)
            .iter()
            .filter(|k| k.starts_with("display_data"))
            .collect::<Vec<_>>(),
        ["display_data:'v2'"],
        "nbclient shows the updated display too"
    );
    assert_eq!(
        nb_text(&re_cells[1]["outputs"][0]["data"]["text/plain"]),
        nb_text(&df[0]["data"]["text/plain"]),
        "the DataFrame prints the same"
    );
    assert!(
        re_cells[2]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["data"]["image/png"].is_string()),
        "the chart is drawn again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_stays_readable_after_delete_without_secrets() {
    let s = Server::start();
    let id = s
        .create(json!({
            "metadata": {"task": "t1"},
            "limits": {"memory_mb": 512},
            "env": {"SANDBOX_TOKEN": "envvalue-zz9"},
        }))
        .await;
    let r1 = s.exec(&id, "print('one')").await;
    // A result with a large rich value: stored as a blob, restored on read.
    let r2 = s
        .exec(
            &id,
            "from IPython.display import HTML, display\n\
             print('two')\n\
             display(HTML('<b>' + 'y' * 3000 + '</b>'))\n\
             42",
        )
        .await;
    assert_eq!(r2["outputs"].as_array().map(Vec::len), Some(2), "{r2}");
    let (status, cmd) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{id}/commands"))
                .json(&json!({
                    "cmd": "echo hi",
                    "env": {"SECRET_X": "topsecret"},
                    "stdin": "sss-stdin-sss",
                })),
        )
        .await;
    assert_eq!(status, 200, "{cmd}");
    assert_eq!(cmd["stdout"], "hi\n");
    let (_, list_live) = get(&s, &format!("/v1/sandboxes/{id}/executions")).await;
    let eid2 = r2["execution_id"].as_str().unwrap();
    let (_, one_live) = get(&s, &format!("/v1/sandboxes/{id}/executions/{eid2}")).await;

    assert_eq!(s.delete(&id).await, 204);
    let (status, _) = get(&s, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 404, "the sandbox is gone");

    // The list, from the trace.
    let (status, list) = get(&s, &format!("/v1/sandboxes/{id}/executions")).await;
    assert_eq!(status, 200, "{list}");
    let before = list_live["executions"].as_array().unwrap();
    let after = list["executions"].as_array().unwrap();
    assert_eq!(after.len(), 2, "{list}");
    for (a, b) in after.iter().zip(before) {
        for key in [
            "execution_id",
            "sandbox_id",
            "state",
            "status",
            "execution_count",
            "code",
            "created_at",
            "started_at",
            "duration_ms",
        ] {
            assert_eq!(a[key], b[key], "{key} differs after delete: {a} vs {b}");
        }
        assert!(a["finished_at"].is_string(), "{a}");
    }

    // One execution with its full result, blob restored.
    let (status, one) = get(&s, &format!("/v1/sandboxes/{id}/executions/{eid2}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["result"], r2, "the stored result is the one returned");
    assert_eq!(one["result"], one_live["result"]);
    assert_eq!(one["code"], one_live["code"]);
    let eid1 = r1["execution_id"].as_str().unwrap();
    let (_, one1) = get(&s, &format!("/v1/sandboxes/{id}/executions/{eid1}")).await;
    assert_eq!(one1["result"]["stdout"], "one\n", "{one1}");

    // The notebook.
    let (nb, _) = notebook(&s, &id).await;
    assert_eq!(nb["cells"].as_array().map(Vec::len), Some(2), "{nb}");
    let html = &nb["cells"][1]["outputs"][1]["data"]["text/html"];
    assert_eq!(nb_text(html).len(), "<b></b>".len() + 3000, "{html}");

    // The trace.
    let (status, trace) = get(&s, &format!("/v1/sandboxes/{id}/trace")).await;
    assert_eq!(status, 200, "{trace}");
    let sb = &trace["sandbox"];
    assert_eq!(sb["id"], id.as_str());
    assert_eq!(sb["image"], "python");
    assert!(
        sb["image_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{sb}"
    );
    assert_eq!(sb["metadata"], json!({"task": "t1"}));
    assert_eq!(sb["limits"]["memory_mb"], 512, "{sb}");
    assert_eq!(sb["language_info"]["name"], "python", "{sb}");
    assert!(sb["created_at"].is_string(), "{sb}");
    assert!(sb["deleted_at"].is_string(), "deleted_at is set: {sb}");
    assert!(sb["deleted_at"].as_str() >= sb["created_at"].as_str());
    assert_eq!(sb["env_keys"], json!(["SANDBOX_TOKEN"]), "{sb}");
    let execs = trace["executions"].as_array().unwrap();
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[1]["code"], one_live["code"]);
    assert_eq!(execs[1]["result"], r2);
    assert!(execs[1]["started_at"].is_string() && execs[1]["finished_at"].is_string());
    assert_eq!(
        execs[1]["outputs"], nb["cells"][1]["outputs"],
        "nbformat outputs"
    );
    let cmds = trace["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 1, "{}", trace["commands"]);
    let c = &cmds[0];
    assert!(c["started_at"].is_string(), "{c}");
    assert_eq!(
        c["request"]["argv"],
        json!(["/bin/sh", "-c", "echo hi"]),
        "{c}"
    );
    assert_eq!(c["request"]["env_keys"], json!(["SECRET_X"]), "{c}");
    assert_eq!(c["request"]["stdin_bytes"], 13, "{c}");
    assert!(
        c["request"]["timeout_s"].as_f64().is_some_and(|t| t > 0.0),
        "{c}"
    );
    assert_eq!(c["result"]["exit_code"], 0, "{c}");
    assert_eq!(c["result"]["stdout"], "hi\n", "{c}");

    // No secret anywhere: not in the API's trace, not in the database files.
    let dump = trace.to_string();
    let mut db = Vec::new();
    for f in ["trace.db", "trace.db-wal"] {
        db.extend(std::fs::read(s.data_dir.join(f)).unwrap_or_default());
    }
    let has = |needle: &str| db.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("SECRET_X") && has("echo hi"),
        "the command is not in {}/trace.db*: the scan below would prove nothing",
        s.data_dir.display()
    );
    for secret in ["topsecret", "sss-stdin-sss", "envvalue-zz9"] {
        assert!(!dump.contains(secret), "{secret:?} is in the trace");
        assert!(!has(secret), "{secret:?} is in the trace database");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_large_outputs_are_stored_once() {
    tools();
    let mut s = Server::start();
    let id = s.create(json!({})).await;
    let chart = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()";
    let r1 = s.exec(&id, chart).await;
    let r2 = s.exec(&id, chart).await;
    let png = |r: &Value| {
        r["outputs"][0]["data"]["image/png"]
            .as_str()
            .unwrap_or_else(|| panic!("no PNG: {r}"))
            .to_owned()
    };
    let png1 = png(&r1);
    assert!(
        png1 == png(&r2),
        "the chart is not deterministic; the check needs it to be"
    );
    decode_png(&png1);
    let hash = format!("{:x}", Sha256::digest(png1.as_bytes()));
    let data_dir = s.data_dir.clone();
    assert!(
        s.terminate(Duration::from_secs(30)).is_some(),
        "the server did not stop"
    );

    let db = data_dir.join("trace.db");
    let blobs = sql(&db, "SELECT hash, length(data) FROM blobs");
    assert_eq!(
        blobs,
        json!([[hash, png1.len()]]),
        "one blob, keyed by the SHA-256"
    );
    let refs = sql(
        &db,
        &format!("SELECT count(*) FROM executions WHERE result LIKE '%{hash}%'"),
    );
    assert_eq!(refs, json!([[2]]), "both executions refer to the blob");
    let inline = sql(
        &db,
        "SELECT count(*) FROM executions WHERE result LIKE '%iVBORw0KGgo%'",
    );
    assert_eq!(inline, json!([[0]]), "the PNG is not stored inline");

    // Read back after a restart: the PNG is put back in place.
    let s2 = Server::start_in(data_dir, &[]);
    for r in [&r1, &r2] {
        let eid = r["execution_id"].as_str().unwrap();
        let (status, v) = get(&s2, &format!("/v1/sandboxes/{id}/executions/{eid}")).await;
        assert_eq!(status, 200, "{v}");
        assert!(png(&v["result"]) == png1, "the restored PNG differs");
        assert_eq!(v["result"], *r);
    }
    let (nb, _) = notebook(&s2, &id).await;
    for c in nb["cells"].as_array().unwrap() {
        assert!(nb_text(&c["outputs"][0]["data"]["image/png"]) == png1);
    }
    drop(s2);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_nothing_the_client_was_told_about() {
    tools();
    let s1 = Server::start_with(&["--max-queue", "64"]);
    let id = s1.create(json!({})).await;
    let old_kernel = s1.kernel_of(&id);
    const LONG_CELL: usize = 20;
    let path = format!("/v1/sandboxes/{id}/execute");
    // Acknowledged (202) executions: input index -> id.
    let mut acked: Vec<(usize, String)> = Vec::new();
    // JSON waits: they learn their id only with their result.
    let mut waiters = Vec::new();
    for i in 0..30 {
        let code = if i == LONG_CELL {
            "import time\ntime.sleep(120)".to_owned()
        } else if i % 7 == 3 {
            format!("import time\ntime.sleep(0.2)\nx{i} = {i}\nprint({i})")
        } else {
            format!("x{i} = {i}\nprint({i})")
        };
        if i % 4 == 1 {
            let rb = s1.req(Method::POST, &path).json(&json!({"code": code}));
            waiters.push(tokio::spawn(async move {
                let resp = rb.send().await.ok()?;
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.ok()?;
                Some((status, v))
            }));
        } else {
            acked.push((i, s1.submit(&id, json!({"code": &code})).await));
        }
    }
    let long_id = acked
        .iter()
        .find(|(i, _)| *i == LONG_CELL)
        .map(|(_, e)| e.clone())
        .unwrap();
    // Wait until the long cell runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = get(&s1, &format!("/v1/sandboxes/{id}/executions/{long_id}")).await;
        if v["state"] == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long cell never started: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever ran ahead of it has finished, and its result has been
    // recorded (that happens just after the next cell takes the kernel), and
    // JSON answers for those cells have arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Results the client has received: (status, stdout) by execution id.
    let mut received: HashMap<String, (Value, Value)> = HashMap::new();
    for (_, eid) in &acked {
        let (_, v) = get(&s1, &format!("/v1/sandboxes/{id}/executions/{eid}")).await;
        if v["state"] == "finished" {
            received.insert(
                eid.clone(),
                (v["result"]["status"].clone(), v["result"]["stdout"].clone()),
            );
        }
    }
    let mut json_received = 0;
    let mut pending = Vec::new();
    for w in waiters {
        if w.is_finished() {
            if let Some((status, v)) = w.await.expect("waiter task") {
                assert_eq!(status, 200, "{v}");
                json_received += 1;
                received.insert(
                    v["execution_id"].as_str().unwrap().to_owned(),
                    (v["status"].clone(), v["stdout"].clone()),
                );
            }
        } else {
            pending.push(w);
        }
    }
    let (_, live_list) = get(&s1, &format!("/v1/sandboxes/{id}/executions")).await;
    let live_ids: Vec<String> = live_list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap().to_owned())
        .collect();
    eprintln!(
        "{} executions accepted, {} acknowledged with 202, {} results received ({} JSON)",
        live_ids.len(),
        acked.len(),
        received.len(),
        json_received
    );
    assert!(
        json_received > 0,
        "no JSON wait finished before the long cell"
    );
    assert!(!received.contains_key(&long_id));

    let mut s1 = s1;
    assert!(
        s1.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
            .is_some(),
        "the broker survived SIGKILL"
    );
    for w in pending {
        let _ = w.await;
    }

    let s2 = Server::start_in(s1.data_dir.clone(), &[]);
    // The killed broker's kernel was reaped at the start.
    let run_dir = s2.data_dir.join("run");
    assert!(
        eventually(Duration::from_secs(15), || processes_mentioning(&run_dir)
            .is_empty()
            && s2.kernel_pids().is_empty())
        .await,
        "processes of the killed broker's sandbox remain: {:?} {:?} (kernel was {old_kernel})",
        processes_mentioning(&run_dir),
        s2.kernel_pids()
    );
    let (status, _) = get(&s2, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 404, "the sandbox did not survive the kill");

    let (status, list) = get(&s2, &format!("/v1/sandboxes/{id}/executions")).await;
    assert_eq!(status, 200, "{list}");
    let stored: HashMap<String, Value> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["execution_id"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert!(stored.len() <= 30, "{list}");
    for eid in &live_ids {
        assert!(
            stored.contains_key(eid),
            "execution {eid} is not in the trace"
        );
    }
    let mut lost = 0;
    for (i, eid) in &acked {
        let e = stored
            .get(eid)
            .unwrap_or_else(|| panic!("acknowledged execution {i} ({eid}) is not in the trace"));
        assert_eq!(e["state"], "finished", "{e}");
        if !received.contains_key(eid) {
            assert_eq!(e["status"], "lost", "unfinished execution {i}: {e}");
            lost += 1;
        }
    }
    assert!(lost > 0, "the long cell at least was lost");
    for (eid, (status, stdout)) in &received {
        let (code, v) = get(&s2, &format!("/v1/sandboxes/{id}/executions/{eid}")).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], *status, "{v}");
        assert_eq!(v["result"]["status"], *status, "{v}");
        assert_eq!(v["result"]["stdout"], *stdout, "{v}");
    }
    let (_, lost_one) = get(&s2, &format!("/v1/sandboxes/{id}/executions/{long_id}")).await;
    assert_eq!(lost_one["status"], "lost", "{lost_one}");
    assert_eq!(lost_one["result"]["status"], "lost", "{lost_one}");
    let (_, trace) = get(&s2, &format!("/v1/sandboxes/{id}/trace")).await;
    assert!(
        trace["sandbox"]["deleted_at"].is_string(),
        "the sandbox is ended: {}",
        trace["sandbox"]
    );

    // The notebook is still valid, with the received cells as they ran.
    let (nb, raw) = notebook(&s2, &id).await;
    let tmp = TempDir::new();
    let path = tmp.0.join("killed.ipynb");
    std::fs::write(&path, &raw).unwrap();
    validate_notebook_file(&path);
    let cells = nb["cells"].as_array().unwrap();
    for (eid, (_, stdout)) in &received {
        let cell = cells
            .iter()
            .find(|c| c["id"] == eid.replace('-', ""))
            .unwrap_or_else(|| panic!("no cell for finished execution {eid}"));
        assert_eq!(
            json!(stream_text(&cell["outputs"], "stdout")),
            *stdout,
            "{cell}"
        );
    }
    drop(s2);
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_past_their_retention_are_pruned_at_start() {
    tools();
    let mut s1 = Server::start();
    let data_dir = s1.data_dir.clone();
    let a = s1.create(json!({})).await;
    s1.exec(
        &a,
        "import matplotlib.pyplot as plt\nplt.plot([5, 1, 5])\nplt.show()",
    )
    .await;
    assert_eq!(s1.delete(&a).await, 204);
    let a_deleted = Instant::now();
    assert!(s1.terminate(Duration::from_secs(30)).is_some());
    let db = data_dir.join("trace.db");
    assert_eq!(sql(&db, "SELECT count(*) FROM blobs"), json!([[1]]));

    // The default retention (7 days) keeps it across a restart.
    let mut s2 = Server::start_in(data_dir.clone(), &[]);
    notebook(&s2, &a).await;
    let b = s2.create(json!({})).await;
    let rb = s2.exec(&b, "print('b')").await;
    assert_eq!(rb["stdout"], "b\n");
    let wait = Duration::from_secs(8).saturating_sub(a_deleted.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(s2.delete(&b).await, 204);
    let b_deleted = Instant::now();
    assert!(s2.terminate(Duration::from_secs(30)).is_some());

    // A was deleted 8 s ago, B just now: 4 s of retention keeps only B.
    let s3 = Server::start_in(data_dir.clone(), &["--trace-retention", "4s"]);
    assert!(
        b_deleted.elapsed() < Duration::from_secs(4),
        "the restart took {:?}: too slow for this check",
        b_deleted.elapsed()
    );
    for what in ["notebook", "trace", "executions"] {
        let (status, v) = get(&s3, &format!("/v1/sandboxes/{a}/{what}")).await;
        assert_eq!(status, 404, "{what} of the pruned sandbox: {v}");
        assert_eq!(v["error"]["code"], "sandbox_not_found", "{v}");
    }
    let (nb, _) = notebook(&s3, &b).await;
    let cells = nb["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{nb}");
    assert_eq!(stream_text(&cells[0]["outputs"], "stdout"), "b\n");
    let (status, _) = get(
        &s3,
        &format!(
            "/v1/sandboxes/{b}/executions/{}",
            rb["execution_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200);
    // A's PNG went with it; nothing else refers to it.
    assert_eq!(sql(&db, "SELECT count(*) FROM blobs"), json!([[0]]));
    assert_eq!(
        sql(
            &db,
            &format!("SELECT count(*) FROM executions WHERE sandbox_id = '{a}'")
        ),
        json!([[0]])
    );
    drop(s3);
    drop(s2);
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sandboxes_have_no_trace() {
    let s = Server::start();
    let random = uuid::Uuid::new_v4();
    for what in ["notebook", "trace", "executions"] {
        for id in [random.to_string(), "not-a-uuid".to_owned()] {
            let (status, v) = get(&s, &format!("/v1/sandboxes/{id}/{what}")).await;
            assert_eq!(status, 404, "{what} of {id}: {v}");
            assert_eq!(
                v["error"]["code"], "sandbox_not_found",
                "{what} of {id}: {v}"
            );
        }
    }
    let (status, v) = get(
        &s,
        &format!("/v1/sandboxes/{random}/executions/{}", uuid::Uuid::new_v4()),
    )
    .await;
    // (Its code is execution_not_found: the trace has no such execution.)
    assert_eq!(status, 404, "{v}");
    // A live sandbox's unknown execution, and after its deletion.
    let id = s.create(json!({})).await;
    let other = uuid::Uuid::new_v4();
    let (status, v) = get(&s, &format!("/v1/sandboxes/{id}/executions/{other}")).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("execution_not_found")),
        "{v}"
    );
    assert_eq!(s.delete(&id).await, 204);
    let (status, v) = get(&s, &format!("/v1/sandboxes/{id}/executions/{other}")).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("execution_not_found")),
        "{v}"
    );
    let (status, v) = get(&s, &format!("/v1/sandboxes/{id}/executions/nope")).await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_executions_are_listed_but_are_not_cells() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let e1 = s
        .submit(
            &id,
            json!({"code": "import time\ntime.sleep(3)\nprint('slept')"}),
        )
        .await;
    let e2 = s.submit(&id, json!({"code": "print('never')"})).await;
    let (status, v) = s
        .call(s.req(
            Method::POST,
            &format!("/v1/sandboxes/{id}/executions/{e2}/interrupt"),
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cancelled"], true, "{v}");
    let r3 = s.exec(&id, "print('after')").await;
    assert_eq!(r3["stdout"], "after\n");

    let check = |list: &Value, nb: &Value, when: &str| {
        let execs = list["executions"].as_array().unwrap();
        let statuses: Vec<(&str, &str)> = execs
            .iter()
            .map(|e| {
                (
                    e["execution_id"].as_str().unwrap(),
                    e["status"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            [
                (e1.as_str(), "ok"),
                (e2.as_str(), "cancelled"),
                (r3["execution_id"].as_str().unwrap(), "ok"),
            ],
            "{when}"
        );
        let cells = nb["cells"].as_array().unwrap();
        let ids: Vec<&str> = cells.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                e1.replace('-', ""),
                r3["execution_id"].as_str().unwrap().replace('-', "")
            ],
            "{when}: the cancelled execution is not a cell"
        );
        let counts: Vec<&Value> = cells.iter().map(|c| &c["execution_count"]).collect();
        assert_eq!(counts, [&json!(1), &json!(2)], "{when}");
        assert!(!nb.to_string().contains("never"), "{when}");
    };
    let (_, list) = get(&s, &format!("/v1/sandboxes/{id}/executions")).await;
    let (nb, _) = notebook(&s, &id).await;
    check(&list, &nb, "live");

    assert_eq!(s.delete(&id).await, 204);
    let (status, list) = get(&s, &format!("/v1/sandboxes/{id}/executions")).await;
    assert_eq!(status, 200, "{list}");
    let (nb, _) = notebook(&s, &id).await;
    check(&list, &nb, "after delete");
    let (status, v) = get(&s, &format!("/v1/sandboxes/{id}/executions/{e2}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["execution_count"], Value::Null, "{v}");
    let (_, trace) = get(&s, &format!("/v1/sandboxes/{id}/trace")).await;
    assert_eq!(
        trace["executions"].as_array().map(Vec::len),
        Some(3),
        "the trace keeps the cancelled one: {trace}"
    );
}
