//! Acceptance 8 and the lifecycle around it: delete, idle culling, shutdown,
//! restart, interrupt and reaping leftovers never leave kernels behind.

use cellblock_tests::{eventually, Server};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_kernel_behind() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    // A child process of the kernel must go too.
    s.exec(
        &id,
        "import subprocess\np = subprocess.Popen(['sleep', '300'])",
    )
    .await;
    assert!(!s.kernel_pids().is_empty(), "kernel should be running");
    let (st, v) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{id}")))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "ready");
    assert_eq!(s.delete(&id).await, 204);
    assert!(
        s.kernel_pids().is_empty(),
        "left behind: {:?}",
        s.kernel_pids()
    );
    let (st, _) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{id}")))
        .await;
    assert_eq!(st, 404);
    assert_eq!(s.delete(&id).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_are_culled() {
    let s = Server::start();
    let idle = s.create(json!({"idle_timeout_s": 1})).await;
    let kept = s
        .create(json!({"idle_timeout_s": 600, "metadata": {"owner": "t"}}))
        .await;
    let (_, v) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kept}")))
        .await;
    assert_eq!(v["metadata"]["owner"], "t");
    let path = format!("/v1/sandboxes/{idle}");
    let mut gone = false;
    for _ in 0..100 {
        let (st, _) = s.call(s.req(Method::GET, &path)).await;
        if st == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "idle sandbox was not culled");
    let r = s.exec(&kept, "print('kept')").await;
    assert_eq!(r["stdout"], "kept\n");
    let (_, list) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    let ids: Vec<_> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(kept)]);
    // One kernel left: the kept sandbox's.
    assert!(eventually(Duration::from_secs(5), || s.kernels().len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sandboxes_are_not_culled() {
    let s = Server::start();
    let id = s.create(json!({"idle_timeout_s": 1})).await;
    let r = s
        .exec_with(
            &id,
            json!({"code": "import time; time.sleep(2.5); print('done')", "timeout_s": 10}),
        )
        .await;
    assert_eq!(r["stdout"], "done\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_kernel() {
    let mut s = Server::start();
    let a = s.create(json!({})).await;
    let _b = s.create(json!({})).await;
    let busy = {
        let http = s.http.clone();
        let url = format!("{}/v1/sandboxes/{a}/execute", s.base);
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"code": "while True: pass", "timeout_s": 600}))
                .send()
                .await
        })
    };
    assert!(eventually(Duration::from_secs(10), || s.kernels().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = s
        .terminate(Duration::from_secs(30))
        .expect("server did not exit on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        s.kernel_pids().is_empty(),
        "left behind: {:?}",
        s.kernel_pids()
    );
    let _ = busy.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_server_are_reaped() {
    let mut s = Server::start();
    let _id = s.create(json!({})).await;
    let before = s.kernel_pids();
    assert!(!before.is_empty());
    s.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .expect("server killed");
    assert_eq!(
        s.kernel_pids(),
        before,
        "kernel outlives a SIGKILLed broker"
    );
    let data = s.data_dir.clone();
    std::mem::forget(s); // keep the data dir for the next server
    let s2 = Server::start_in(data, &[]);
    assert!(
        s2.kernel_pids().is_empty(),
        "not reaped: {:?}",
        s2.kernel_pids()
    );
    let id = s2.create(json!({})).await;
    assert_eq!(s2.exec(&id, "print(1)").await["stdout"], "1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_interrupt() {
    let s = std::sync::Arc::new(Server::start());
    let id = s.create(json!({})).await;
    s.exec(&id, "x = 1").await;
    let (st, v) = s
        .call(s.req(Method::POST, &format!("/v1/sandboxes/{id}/restart")))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["kernel_restarts"], 1, "{v}");
    let r = s.exec(&id, "x").await;
    assert_eq!(r["error"]["ename"], "NameError", "{r}");
    s.exec(&id, "y = 2").await;

    let running = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move {
            s.exec_with(&id, json!({"code": "import time\nprint('start', flush=True)\ntime.sleep(60)", "timeout_s": 120})).await
        })
    };
    let mut interrupted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = s
            .call(s.req(Method::GET, &format!("/v1/sandboxes/{id}")))
            .await;
        if v["state"] == "busy" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (st, v) = s
                .call(s.req(Method::POST, &format!("/v1/sandboxes/{id}/interrupt")))
                .await;
            assert_eq!(st, 200, "{v}");
            interrupted = true;
            break;
        }
    }
    assert!(interrupted);
    let r = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("interrupt did not end the cell")
        .unwrap();
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["ename"], "KeyboardInterrupt", "{r}");
    assert_eq!(r["stdout"], "start\n");
    let r = s.exec(&id, "print(y)").await;
    assert_eq!(r["stdout"], "2\n", "state kept after interrupt: {r}");
}
