//! The warm pool (issue #8): a pooled sandbox is as fresh as a cold one and
//! takes the request's env and limits; pooled kernels share no RNG state; a
//! burst larger than the pool all succeeds (the rest cold); a pooled kernel
//! that died is replaced and shutdown leaves nothing. (`./scripts/test.sh`
//! also runs the core, isolation and files tests with a pool.)

use cellblock_tests::{eventually, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn pool_ready(s: &Server) -> u64 {
    let (_, h) = s.call(s.req(Method::GET, "/healthz")).await;
    h["pool"]["ready"].as_u64().unwrap_or(0)
}

async fn wait_pool(s: &Server, n: u64) {
    for _ in 0..600 {
        if pool_ready(s).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the pool did not reach {n}");
}

async fn create_view(s: &Server, body: Value) -> Value {
    let (st, v) = s
        .call(s.req(Method::POST, "/v1/sandboxes").json(&body))
        .await;
    assert_eq!(st, 201, "{v}");
    v
}

/// What a fresh kernel looks like from inside: its user namespace, its
/// home, its first execution count.
const FRESH: &str = "import os, json\n\
print(json.dumps({'names': sorted(k for k in globals() if not k.startswith('_')),\n\
 'home': sorted(os.listdir('/home/user')), 'cwd': os.getcwd()}))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_is_fresh_and_takes_the_requests_options() {
    let s = Server::start_with(&["--pool-size", "2"]);
    wait_pool(&s, 2).await;
    let v = create_view(
        &s,
        json!({"env": {"GREETING": "hello pool"}, "limits": {"memory_mb": 256},
               "metadata": {"task": "t1"}, "idle_timeout_s": 77}),
    )
    .await;
    assert_eq!(v["from_pool"], true, "{v}");
    assert_eq!(v["metadata"]["task"], "t1");
    assert_eq!(v["idle_timeout_s"], 77);
    assert_eq!(v["limits"]["memory_mb"], 256);
    let pooled = v["id"].as_str().unwrap().to_owned();
    // A cold one to compare with: a different disk size never fits the pool.
    let cold = create_view(&s, json!({"limits": {"disk_mb": 300}})).await;
    assert_eq!(cold["from_pool"], false, "{cold}");
    let cold = cold["id"].as_str().unwrap().to_owned();

    let a = s.exec(&pooled, FRESH).await;
    let b = s.exec(&cold, FRESH).await;
    assert_eq!(a["execution_count"], 1, "{a}");
    assert_eq!(a["execution_count"], b["execution_count"]);
    assert_eq!(a["stdout"], b["stdout"], "pooled vs cold");

    // The env reached the kernel, its subprocesses and commands.
    let r = s
        .exec(
            &pooled,
            "import os, subprocess\nprint(os.environ['GREETING'])\nprint(subprocess.run(['sh','-c','echo $GREETING'],capture_output=True,text=True).stdout, end='')",
        )
        .await;
    assert_eq!(r["stdout"], "hello pool\nhello pool\n", "{r}");
    let (st, c) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{pooled}/commands"))
                .json(&json!({"cmd": "echo $GREETING"})),
        )
        .await;
    assert_eq!(
        (st, c["stdout"].as_str()),
        (200, Some("hello pool\n")),
        "{c}"
    );
    // The new memory limit holds: 400 MB does not fit in 256.
    let r = s
        .exec(&pooled, "x = bytearray(400 * 1024 * 1024); print('fit')")
        .await;
    assert_ne!(r["stdout"], "fit\n", "{r}");
    // The env survives a kernel restart (the restart uses the sandbox's env).
    let r = s
        .exec(&pooled, "import os; print(os.environ['GREETING'])")
        .await;
    assert_eq!(r["stdout"], "hello pool\n", "{r}");
    // The pool refilled to its size.
    wait_pool(&s, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_kernels_have_their_own_random_state() {
    let s = Server::start_with(&["--pool-size", "2"]);
    wait_pool(&s, 2).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let v = create_view(&s, json!({})).await;
        assert_eq!(v["from_pool"], true, "{v}");
        let id = v["id"].as_str().unwrap();
        let r = s
            .exec(
                id,
                "import random, numpy as np, os\nprint(random.random(), np.random.rand(), os.urandom(8).hex())",
            )
            .await;
        seen.push(r["stdout"].as_str().unwrap().to_owned());
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (
        seen[0].split_whitespace().collect(),
        seen[1].split_whitespace().collect(),
    );
    for i in 0..3 {
        assert_ne!(a[i], b[i], "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pool_all_succeeds() {
    let s = Server::start_with(&["--pool-size", "2"]);
    wait_pool(&s, 2).await;
    let creates = (0..50).map(|i| {
        let rb = s
            .req(Method::POST, "/v1/sandboxes")
            .json(&json!({"metadata": {"n": i}}));
        async move {
            let r = rb.send().await.expect("create");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    });
    let made = futures_util::future::join_all(creates).await;
    let mut ids = Vec::new();
    let mut pooled = 0;
    for (st, v) in &made {
        assert_eq!(*st, 201, "{v}");
        pooled += usize::from(v["from_pool"] == true);
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    assert!(pooled >= 2, "{pooled} of 50 came from the pool");
    assert!(pooled < 50, "all 50 came from a pool of 2?");
    eprintln!("burst of 50: {pooled} from the pool, {} cold", 50 - pooled);
    let runs = ids.iter().map(|id| s.exec(id, "print(1+1)"));
    for r in futures_util::future::join_all(runs).await {
        assert_eq!(r["stdout"], "2\n", "{r}");
    }
    for id in &ids {
        s.delete(id).await;
    }
    // Only the refilled pool is left.
    wait_pool(&s, 2).await;
    assert!(eventually(Duration::from_secs(20), || s.kernels().len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pooled_kernel_is_replaced_and_shutdown_leaves_nothing() {
    let mut s = Server::start_with(&["--pool-size", "1"]);
    wait_pool(&s, 1).await;
    let pooled = s.kernels();
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pooled[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || s.kernels().is_empty()).await);
    // The dead one is noticed at take time: this create still works.
    let v = create_view(&s, json!({})).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let r = s.exec(&id, "print(6*7)").await;
    assert_eq!(r["stdout"], "42\n", "{r}");
    wait_pool(&s, 1).await;
    let status = s.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
    assert!(
        eventually(Duration::from_secs(10), || s.kernels().is_empty()).await,
        "kernels left after shutdown: {:?}",
        s.kernels()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_modules_are_imported_before_the_first_cell() {
    // A module that does not exist is reported on the kernel's stderr and
    // skipped; the kernel starts anyway.
    let s = Server::start_with(&[
        "--pool-size",
        "1",
        "--preload",
        "numpy, matplotlib.pyplot,no_such_module_cb",
    ]);
    wait_pool(&s, 1).await;
    for body in [json!({}), json!({"limits": {"disk_mb": 300}})] {
        let v = create_view(&s, body).await;
        let id = v["id"].as_str().unwrap();
        let r = s
            .exec(
                id,
                "import sys, os\nprint(all(m in sys.modules for m in ('numpy', 'matplotlib.pyplot')), 'CELLBLOCK_PRELOAD' in os.environ, 'np' in globals())",
            )
            .await;
        assert_eq!(r["stdout"], "True False False\n", "{v} {r}");
        assert_eq!(r["execution_count"], 1, "{r}");
    }
    // Only module names are accepted.
    let out = std::process::Command::new(cellblock_tests::binary())
        .args(["serve", "--preload", "os;import shutil"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a module name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
