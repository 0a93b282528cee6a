//! Acceptance 7: every bad input gets its documented JSON error, and the
//! server keeps serving afterwards.

use cellblock_tests::Server;
use reqwest::Method;
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let s = Server::start_with(&["--max-body-mb", "1"]);
    let id = s.create(json!({})).await;
    let exec = format!("/v1/sandboxes/{id}/execute");
    let unknown = uuid::Uuid::new_v4();

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            s.req(Method::GET, &format!("/v1/sandboxes/{unknown}")),
            404,
            "sandbox_not_found",
        ),
        (
            s.req(Method::POST, &format!("/v1/sandboxes/{unknown}/execute"))
                .json(&json!({"code": "1"})),
            404,
            "sandbox_not_found",
        ),
        (
            s.req(Method::DELETE, &format!("/v1/sandboxes/{unknown}")),
            404,
            "sandbox_not_found",
        ),
        (
            s.req(Method::GET, "/v1/sandboxes/not-a-uuid"),
            404,
            "sandbox_not_found",
        ),
        (
            s.req(Method::POST, &exec).body("{\"code\": "),
            400,
            "invalid_json",
        ),
        (
            s.req(Method::POST, &exec).body("not json"),
            400,
            "invalid_json",
        ),
        (s.req(Method::POST, &exec), 400, "empty_body"),
        (
            s.req(Method::POST, &exec).json(&json!({})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, &exec).json(&json!({"code": 5})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, &exec)
                .json(&json!({"code": "1", "timout_s": 1})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, &exec)
                .json(&json!({"code": "1", "timeout_s": -1})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, &exec)
                .json(&json!({"code": "1", "timeout_s": 1e9})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, &exec)
                .json(&json!({"code": "x".repeat(2 << 20)})),
            413,
            "payload_too_large",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"image": "ruby"})),
            422,
            "unknown_image",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"idle_timeout_s": 0})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"env": {"1BAD": "x"}})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"env": {"HOME": "/"}})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"env": {"A": "a\u{0}b"}})),
            422,
            "invalid_request",
        ),
        (
            s.req(Method::POST, "/v1/sandboxes")
                .json(&json!({"bogus": 1})),
            422,
            "invalid_request",
        ),
        (s.req(Method::GET, "/v1/nothing-here"), 404, "not_found"),
        (
            s.req(Method::PUT, "/v1/sandboxes"),
            405,
            "method_not_allowed",
        ),
        (s.req(Method::GET, &exec), 405, "method_not_allowed"),
    ];
    for (rb, status, want) in cases {
        let (got, body) = s.call(rb).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(code(&body), want, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A chunked body (no Content-Length) over the limit is read away and
    // refused, so a client still sending gets the 413, not a broken pipe.
    let addr = s.base.trim_start_matches("http://").to_string();
    let path = exec.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        write!(
            t,
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: application/json\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..32 {
            write!(t, "{:x}\r\n", chunk.len()).unwrap();
            t.write_all(&chunk).unwrap();
            t.write_all(b"\r\n").unwrap();
        }
        t.write_all(b"0\r\n\r\n").unwrap();
        let mut out = String::new();
        t.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
    // Still serving, and the sandbox still works.
    let r = s.exec(&id, "print('alive')").await;
    assert_eq!(r["stdout"], "alive\n");
    let (st, h) = s.call(s.req(Method::GET, "/healthz")).await;
    assert_eq!(st, 200);
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let s = Server::start_with(&["--api-key", "s3cret-key"]);
    let url = format!("{}/v1/sandboxes", s.base);
    let (st, body) = s.call(s.http.get(&url)).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"));
    let (st, body) = s.call(s.http.get(&url).bearer_auth("wrong")).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"));
    let (st, _) = s
        .call(s.http.get(&url).header("Authorization", "s3cret-key"))
        .await;
    assert_eq!(st, 401);
    let (st, _) = s.call(s.http.get(format!("{}/healthz", s.base))).await;
    assert_eq!(st, 200, "health needs no key");
    let (st, body) = s.call(s.http.get(&url).bearer_auth("s3cret-key")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body["sandboxes"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_limit_gives_429() {
    let s = Server::start_with(&["--max-sandboxes", "1"]);
    let id = s.create(json!({})).await;
    let (st, body) = s.call(s.req(Method::POST, "/v1/sandboxes")).await;
    assert_eq!((st, code(&body)), (429, "too_many_sandboxes"), "{body}");
    assert_eq!(s.delete(&id).await, 204);
    s.create(json!({})).await;
}

#[test]
fn open_listen_without_key_is_refused() {
    let dir = cellblock_tests::temp_data_dir();
    let out = std::process::Command::new(cellblock_tests::binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .arg("--images-dir")
        .arg(cellblock_tests::images_dir())
        .env_remove("CELLBLOCK_API_KEY")
        .output()
        .expect("running cellblock");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an API key"), "{err}");
}
