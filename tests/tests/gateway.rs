//! The Jupyter kernels REST API (`/api`): kernelspecs, kernels as sandboxes,
//! interrupt, restart, sessions, Jupyter's error shape and auth schemes.
//! (The websocket is not served yet.)

use cellblock_tests::Server;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn is_jupyter_time(s: &str) -> bool {
    // %Y-%m-%dT%H:%M:%S.%fZ: microseconds and a Z.
    let b = s.as_bytes();
    b.len() == 27
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && s[20..26].bytes().all(|c| c.is_ascii_digit())
}

fn check_model(m: &Value) {
    assert!(
        uuid::Uuid::parse_str(m["id"].as_str().unwrap_or_default()).is_ok(),
        "{m}"
    );
    assert_eq!(m["name"], "python3", "{m}");
    assert!(
        is_jupyter_time(m["last_activity"].as_str().unwrap_or_default()),
        "{m}"
    );
    assert!(m["execution_state"].is_string(), "{m}");
    assert!(m["connections"].is_number(), "{m}");
}

fn check_error(v: &Value) {
    assert!(v["reason"].is_string() && v["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernelspecs_name_the_python_image() {
    let s = Server::start();
    let (status, v) = s.call(s.req(Method::GET, "/api")).await;
    assert_eq!(status, 200);
    assert!(v["version"].is_string(), "{v}");
    let (status, v) = s.call(s.req(Method::GET, "/api/kernelspecs")).await;
    assert_eq!(status, 200);
    assert_eq!(v["default"], "python3");
    let spec = &v["kernelspecs"]["python3"];
    assert_eq!(spec["name"], "python3");
    for key in [
        "argv",
        "display_name",
        "language",
        "interrupt_mode",
        "metadata",
    ] {
        assert!(!spec["spec"][key].is_null(), "{key} missing: {spec}");
    }
    // The logos JupyterLab's launcher shows, served from the image.
    for (key, mime, magic) in [
        ("logo-64x64", "image/png", &b"\x89PNG"[..]),
        ("logo-32x32", "image/png", &b"\x89PNG"[..]),
        ("logo-svg", "image/svg+xml", &b"<"[..]),
    ] {
        let path = spec["resources"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {spec}"));
        let r = s.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], mime, "{path}");
        let body = r.bytes().await.unwrap();
        assert!(body.trim_ascii_start().starts_with(magic), "{path}");
    }
    let (status, v) = s
        .call(s.req(Method::GET, "/kernelspecs/python3/..%2F..%2Fkernel.json"))
        .await;
    assert_eq!(status, 404);
    check_error(&v);
    let (status, one) = s.call(s.req(Method::GET, "/api/kernelspecs/python3")).await;
    assert_eq!((status, &one), (200, spec));
    let (status, v) = s.call(s.req(Method::GET, "/api/kernelspecs/ruby")).await;
    assert_eq!(status, 404);
    check_error(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_is_a_sandbox_from_start_to_delete() {
    let s = Server::start();
    let resp = s
        .req(Method::POST, "/api/kernels")
        .json(&json!({"name": "python3", "env": {
            "KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": "/etc", "PATH": "/evil"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let m: Value = resp.json().await.unwrap();
    check_model(&m);
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/kernels/{id}"));

    // The same sandbox in /v1, isolated, with only KERNEL_* variables.
    let (_, v) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    assert_eq!(v["sandboxes"][0]["id"], id.as_str());
    let r = s
        .exec(&id, "import os\nprint(os.environ.get('KERNEL_USERNAME'), os.environ.get('KERNEL_WORKING_DIR'), os.getcwd(), os.environ['PATH'] != '/evil', os.getuid())")
        .await;
    assert_eq!(r["stdout"], "alice None /home/user True 1000\n", "{r}");

    let (status, list) = s.call(s.req(Method::GET, "/api/kernels")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    check_model(&list[0]);

    // Interrupt a running cell: 204, and the cell ends with KeyboardInterrupt.
    s.exec(&id, "x = 41").await;
    let eid = s
        .submit(
            &id,
            json!({"code": "import time\nprint('go', flush=True)\ntime.sleep(60)"}),
        )
        .await;
    s.execution_until(&id, &eid, Duration::from_secs(30), |v| {
        v["output"]["stdout"] == "go\n"
    })
    .await;
    let (_, k) = s
        .call(s.req(Method::GET, &format!("/api/kernels/{id}")))
        .await;
    assert_eq!(k["execution_state"], "busy", "{k}");
    let resp = s
        .req(Method::POST, &format!("/api/kernels/{id}/interrupt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let ended = s
        .execution_until(&id, &eid, Duration::from_secs(30), |v| {
            v["state"] == "finished"
        })
        .await;
    assert_eq!(
        ended["result"]["error"]["ename"], "KeyboardInterrupt",
        "{ended}"
    );
    assert_eq!(s.exec(&id, "print(x + 1)").await["stdout"], "42\n");

    // Restart: 200 with the model, and the state is gone.
    let (status, m) = s
        .call(s.req(Method::POST, &format!("/api/kernels/{id}/restart")))
        .await;
    assert_eq!(status, 200, "{m}");
    check_model(&m);
    let r = s.exec(&id, "print('x' in globals())").await;
    assert_eq!(r["stdout"], "False\n", "{r}");

    // Delete: 204, then 404 in Jupyter's error shape; its trace remains.
    let resp = s
        .req(Method::DELETE, &format!("/api/kernels/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, v) = s
        .call(s.req(Method::GET, &format!("/api/kernels/{id}")))
        .await;
    assert_eq!(status, 404);
    check_error(&v);
    let (status, _) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{id}/notebook")))
        .await;
    assert_eq!(status, 200, "a kernel's executions are traced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_jupyter_errors() {
    let s = Server::start_with(&["--max-sandboxes", "1"]);
    for (method, path) in [
        (Method::GET, "/api/kernels/not-a-uuid"),
        (
            Method::GET,
            "/api/kernels/00000000-0000-0000-0000-000000000000",
        ),
        (
            Method::DELETE,
            "/api/kernels/00000000-0000-0000-0000-000000000000",
        ),
        (
            Method::POST,
            "/api/kernels/00000000-0000-0000-0000-000000000000/interrupt",
        ),
        (Method::GET, "/api/sessions/nope"),
        (Method::GET, "/api/nothing-here"),
    ] {
        let (status, v) = s.call(s.req(method.clone(), path)).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        check_error(&v);
    }
    let (status, v) = s
        .call(s.req(Method::POST, "/api/kernels").body("{not json"))
        .await;
    assert_eq!(status, 400, "{v}");
    check_error(&v);
    let (status, v) = s
        .call(
            s.req(Method::POST, "/api/kernels")
                .json(&json!({"name": "julia"})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, _) = s.call(s.req(Method::POST, "/api/kernels")).await;
    assert_eq!(status, 201, "an empty body starts the default kernel");
    let (status, v) = s.call(s.req(Method::POST, "/api/kernels")).await;
    assert_eq!(status, 429, "max kernels is --max-sandboxes: {v}");
    check_error(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_bind_a_path_to_a_kernel() {
    let s = Server::start();
    let (status, sess) = s
        .call(
            s.req(Method::POST, "/api/sessions").json(
                &json!({"path": "a.ipynb", "type": "notebook", "kernel": {"name": "python3"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{sess}");
    check_model(&sess["kernel"]);
    let sid = sess["id"].as_str().unwrap().to_owned();
    let kid = sess["kernel"]["id"].as_str().unwrap().to_owned();
    let (_, list) = s.call(s.req(Method::GET, "/api/sessions")).await;
    assert_eq!(list[0]["id"], sid.as_str());
    assert_eq!(list[0]["path"], "a.ipynb");
    let (status, one) = s
        .call(s.req(Method::GET, &format!("/api/sessions/{sid}")))
        .await;
    assert_eq!((status, &one["kernel"]["id"]), (200, &json!(kid)));
    // A second session on the same kernel.
    let (status, two) = s
        .call(
            s.req(Method::POST, "/api/sessions")
                .json(&json!({"path": "b.ipynb", "kernel": {"id": kid}})),
        )
        .await;
    assert_eq!((status, &two["kernel"]["id"]), (201, &json!(kid)));
    let resp = s
        .req(Method::DELETE, &format!("/api/sessions/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _) = s
        .call(s.req(Method::GET, &format!("/api/kernels/{kid}")))
        .await;
    assert_eq!(status, 404, "deleting a session shuts its kernel down");
    let (_, list) = s.call(s.req(Method::GET, "/api/sessions")).await;
    assert_eq!(list, json!([]), "the other session went with the kernel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_accepted_in_every_jupyter_form() {
    let s = Server::start_with(&["--api-key", "k3y"]);
    let anon = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", s.base);
    let r = anon.get(url("/api/kernels")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    check_error(&r.json().await.unwrap());
    let r = anon
        .get(url("/api/kernels"))
        .header("authorization", "token wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    for auth in ["token k3y", "Token k3y", "Bearer k3y"] {
        let r = anon
            .get(url("/api/kernels"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{auth}");
    }
    let r = anon
        .get(url("/api/kernels?token=k3y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The same forms work for /v1.
    let r = anon
        .get(url("/v1/sandboxes?token=k3y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = anon
        .get(url("/v1/sandboxes"))
        .header("authorization", "token k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = anon.get(url("/v1/sandboxes")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The workspace's tests/scripts directory.
fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a websocket client script from tests/scripts against `s` (base URL,
/// then `args`); it must succeed, and its last line is `ok KERNEL_ID …`.
async fn run_client(s: &Server, name: &'static str, args: &[usize]) -> String {
    let base = s.base.clone();
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cellblock_tests::tools().join("python"))
            .arg(script(name))
            .arg(&base)
            .args(&args)
            .output()
            .expect("running the websocket client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{name}: {}", stdout.trim());
    stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the script's last line")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_websocket_speaks_jupyter() {
    let s = Server::start();
    let kid = run_client(&s, "kernel_websocket.py", &[]).await;
    // Everything ran in a traced sandbox.
    let (status, nb) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kid}/notebook")))
        .await;
    assert_eq!(status, 200);
    let sources: Vec<&str> = nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["source"].as_str())
        .collect();
    assert!(sources.contains(&"x = 5\nprint('hi', x)"), "{sources:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_reconnect_and_carry_binary_buffers() {
    let s = Server::start_with(&["--max-body-mb", "1"]);
    let kid = run_client(&s, "kernel_websocket_sessions.py", &[1024 * 1024]).await;
    // The kernel is gone from /v1 too.
    let (status, _) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kid}")))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_kernel() {
    // It sends a cell that floods output and a kernel_info_request, then
    // never reads: /v1 still executes in that sandbox (after the 30 s the
    // server gives a stalled frame) and the kernel can be deleted.
    let s = Server::start();
    let kid = run_client(&s, "kernel_websocket_stall.py", &[]).await;
    let (status, _) = s
        .call(s.req(Method::GET, &format!("/v1/sandboxes/{kid}")))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_kernel_is_not_culled_until_its_last_connection_closes() {
    let s = Server::start_with(&["--default-idle-timeout-s", "1"]);
    let script = r#"
import asyncio, json, sys, time, urllib.request, urllib.error
from tornado.websocket import websocket_connect
base = sys.argv[1]
def status(kid):
    try:
        with urllib.request.urlopen(f"{base}/api/kernels/{kid}") as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
async def main():
    req = urllib.request.Request(base + "/api/kernels", data=b"{}", method="POST")
    kid = json.load(urllib.request.urlopen(req))["id"]
    ws = await websocket_connect(base.replace("http", "ws") + f"/api/kernels/{kid}/channels")
    await asyncio.sleep(3.5)  # well past the 1 s idle timeout
    assert status(kid) == 200, "a connected kernel was culled"
    ws.close()
    for _ in range(100):
        if status(kid) == 404:
            print("culled", kid)
            return
        await asyncio.sleep(0.1)
    raise AssertionError("not culled after its connection closed")
asyncio.run(main())
"#;
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        cellblock_tests::tools_python(script, &[std::ffi::OsStr::new(&base)])
    })
    .await
    .unwrap();
    assert!(out.starts_with("culled "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbconvert_executes_through_the_gateway_kernel_manager() {
    let s = Server::start();
    let dir = cellblock_tests::TempDir::new();
    let nb = json!({"nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": null, "outputs": [],
             "source": "import os\nprint(os.getuid(), os.environ['HOME'], os.path.exists('/sys'))"},
            {"cell_type": "code", "id": "c2", "metadata": {}, "execution_count": null, "outputs": [],
             "source": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"},
            {"cell_type": "code", "id": "c3", "metadata": {}, "execution_count": null, "outputs": [],
             "source": "6 * 7"}]});
    let input = dir.0.join("in.ipynb");
    std::fs::write(&input, nb.to_string()).unwrap();
    let output = dir.0.join("out.ipynb");
    let (base, inp, outp, cwd) = (s.base.clone(), input.clone(), output.clone(), dir.0.clone());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cellblock_tests::tools().join("jupyter"))
            .args(["nbconvert", "--to", "notebook", "--execute"])
            .arg("--ExecutePreprocessor.kernel_manager_class=jupyter_server.gateway.managers.GatewayKernelManager")
            .arg("--output")
            .arg(&outp)
            .arg(&inp)
            .env("JUPYTER_GATEWAY_URL", &base)
            .current_dir(&cwd)
            .output()
            .expect("running nbconvert")
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "nbconvert failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let done: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let cells = done["cells"].as_array().unwrap();
    // It really ran in a sandbox: uid 1000, home /home/user, no /sys.
    let text = |v: &Value| cellblock_tests::nb_text(v);
    assert_eq!(
        text(&cells[0]["outputs"][0]["text"]),
        "1000 /home/user False\n",
        "{}",
        cells[0]
    );
    assert!(
        cells[1]["outputs"][0]["data"]["image/png"].is_string(),
        "{}",
        cells[1]
    );
    assert_eq!(
        text(&cells[2]["outputs"][0]["data"]["text/plain"]),
        "42",
        "{}",
        cells[2]
    );
    // nbconvert deleted its kernel; the session is in the trace.
    let (_, v) = s.call(s.req(Method::GET, "/v1/sandboxes")).await;
    assert_eq!(v["sandboxes"], json!([]), "the kernel was shut down: {v}");
}
