//! The zygote (issue #8): kernels forked from a process that imported the
//! data stack once. A forked kernel has the stack imported, its own random
//! state, and the environment, paths and identity of a spawned one; a
//! kernel asking for a variable only a fresh interpreter reads is spawned;
//! killing the zygote mid-burst loses no create, it comes back, and no
//! process is left behind. (`./scripts/test.sh` runs the core, isolation
//! and files tests with forked kernels, and again with `--no-zygote`.)

use cellblock_tests::{eventually, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn health(s: &Server) -> Value {
    let (st, h) = s.call(s.req(Method::GET, "/healthz")).await;
    assert_eq!(st, 200, "{h}");
    h
}

async fn create_view(s: &Server, body: Value) -> Value {
    let (st, v) = s
        .call(s.req(Method::POST, "/v1/sandboxes").json(&body))
        .await;
    assert_eq!(st, 201, "{v}");
    v
}

/// What a kernel looks like from inside, as JSON.
const PROBE: &str = r#"import sys
_pre = [m for m in ('numpy', 'pandas', 'matplotlib.pyplot') if m in sys.modules]
import json, os, random, uuid
import numpy as np
print(json.dumps({
  'np': np.random.rand(), 'random': random.random(),
  'urandom': os.urandom(8).hex(), 'uuid': str(uuid.uuid4()),
  'preloaded': _pre,
  'pid': os.getpid(), 'uid': os.getuid(), 'cwd': os.getcwd(),
  'env': {k: v for k, v in os.environ.items()
          if k not in ('PYTHONHASHSEED', 'IPYTHONDIR', 'MPLCONFIGDIR')},
  'path': sys.path, 'isolated': sys.flags.isolated, 'exe': sys.executable,
  'own_proc': [os.access(f'/proc/self/{f}', os.R_OK) for f in ('environ', 'fd', 'mem')],
  'names': sorted(k for k in globals() if not k.startswith('_')),
}))"#;

async fn probe(s: &Server, id: &str) -> Value {
    let r = s.exec(id, PROBE).await;
    assert_eq!(r["status"], "ok", "{r}");
    serde_json::from_str(r["stdout"].as_str().unwrap_or_default()).expect("probe output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_kernels_have_the_stack_fresh_randomness_and_a_spawned_kernels_identity() {
    let s = Server::start();
    let h = health(&s).await;
    assert_eq!(h["zygote"]["state"], "ready", "{h}");
    // The zygote (host root, the image's import-time code) has no network:
    // a network namespace of its own.
    let zpid = h["zygote"]["pid"].as_i64().expect("zygote pid");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).expect("netns");
    assert_ne!(
        ns(&zpid.to_string()),
        ns("self"),
        "the zygote shares the host's network"
    );
    let a = create_view(&s, json!({})).await;
    let b = create_view(&s, json!({"env": {"GREETING": "hi"}})).await;
    assert_eq!(a["kernel_origin"], "zygote", "{a}");
    assert_eq!(b["kernel_origin"], "zygote", "{b}");
    // A variable only a fresh interpreter reads: spawned.
    let c = create_view(
        &s,
        json!({"env": {"PYTHONHASHSEED": "0", "GREETING": "hi"}}),
    )
    .await;
    assert_eq!(c["kernel_origin"], "spawn", "{c}");
    let ids: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let pa = probe(&s, &ids[0]).await;
    let pb = probe(&s, &ids[1]).await;
    let pc = probe(&s, &ids[2]).await;
    for key in ["np", "random", "urandom", "uuid"] {
        assert_ne!(pa[key], pb[key], "{key} is shared by two forked kernels");
    }
    assert_eq!(
        pa["preloaded"],
        json!(["numpy", "pandas", "matplotlib.pyplot"])
    );
    // Same identity as a spawned kernel: pid 2 under init, the sandbox
    // user, home, environment (the request's included), paths, flags.
    for key in [
        "pid", "uid", "cwd", "env", "path", "isolated", "exe", "own_proc",
    ] {
        assert_eq!(pb[key], pc[key], "{key} differs between forked and spawned");
    }
    assert_eq!(pb["env"]["GREETING"], "hi");
    assert_eq!(pa["env"].get("GREETING"), None, "{pa}");
    assert_eq!(pa["pid"], 2);
    // Nothing of the zygote in the user namespace: the same names as a
    // spawned kernel (the probe's own imports).
    assert_eq!(pa["names"], pc["names"]);
    // The stack really is usable: a chart and a table come back as outputs.
    let r = s
        .exec(
            &ids[0],
            "import matplotlib.pyplot as plt, pandas as pd\nplt.plot([1, 2, 3])\nplt.show()\npd.DataFrame({'a': [1]})",
        )
        .await;
    assert_eq!(r["status"], "ok", "{r}");
    let kinds: Vec<String> = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["data"].as_object().unwrap().keys().cloned())
        .collect();
    assert!(kinds.contains(&"image/png".to_owned()), "{r}");
    assert!(kinds.contains(&"text/html".to_owned()), "{r}");
    // A restart forks again.
    let (st, v) = s
        .call(s.req(Method::POST, &format!("/v1/sandboxes/{}/restart", ids[0])))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{}", ids[0])))
        .await;
    assert_eq!(v["kernel_origin"], "zygote", "{v}");
    assert_eq!(v["kernel_restarts"], 1, "{v}");
    assert!(health(&s).await["zygote"]["forks"].as_u64().unwrap() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_zygote_mid_burst_loses_nothing_and_it_comes_back() {
    let s = Server::start();
    let before = health(&s).await["zygote"].clone();
    let zpid = before["pid"].as_i64().expect("zygote pid") as i32;
    let first = create_view(&s, json!({})).await;
    assert_eq!(first["kernel_origin"], "zygote");
    let first = first["id"].as_str().unwrap().to_owned();

    let burst: Vec<_> = (0..8)
        .map(|_| {
            let rb = s.req(Method::POST, "/v1/sandboxes").json(&json!({}));
            tokio::spawn(async move { rb.send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zpid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killing the zygote");
    let mut ids = vec![first.clone()];
    let mut origins = Vec::new();
    for t in burst {
        let resp = t.await.unwrap().expect("create");
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        origins.push(v["kernel_origin"].as_str().unwrap().to_owned());
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let r = s.exec(id, "1+1").await;
        assert_eq!(r["status"], "ok", "{id}: {r}");
        assert_eq!(r["outputs"][0]["data"]["text/plain"], "2", "{r}");
    }
    // It comes back, as a new process, and forks again.
    let mut back = Value::Null;
    for _ in 0..300 {
        back = health(&s).await["zygote"].clone();
        if back["state"] == "ready" && back["pid"].as_i64() != Some(zpid as i64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back["state"], "ready", "{back}");
    assert!(back["restarts"].as_u64().unwrap() >= 1, "{back}");
    let again = create_view(&s, json!({})).await;
    assert_eq!(
        again["kernel_origin"], "zygote",
        "{again} (burst: {origins:?})"
    );
    ids.push(again["id"].as_str().unwrap().to_owned());
    assert_eq!(s.kernels().len(), ids.len(), "one kernel per sandbox");
    for id in &ids {
        assert_eq!(s.delete(id).await, 204);
    }
    // Nothing leaked: no process left in this server's sandbox cgroups,
    // including the kernels the killed zygote had forked.
    assert!(
        eventually(Duration::from_secs(10), || s.kernel_pids().is_empty()).await,
        "left behind: {:?}",
        s.kernel_pids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_zygote_every_kernel_is_spawned() {
    let s = Server::start_with(&["--no-zygote"]);
    assert_eq!(health(&s).await["zygote"], Value::Null);
    let v = create_view(&s, json!({})).await;
    assert_eq!(v["kernel_origin"], "spawn", "{v}");
    let p = probe(&s, v["id"].as_str().unwrap()).await;
    assert_eq!(p["preloaded"], json!([]), "{p}");
}
