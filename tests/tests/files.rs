//! Files, artifacts and commands, end to end over HTTP: uploads (raw,
//! streamed, multipart) and downloads, listings and deletes, traversal and
//! symlink attacks on every file endpoint, quota and cut-off uploads, the
//! `files` field of execution results, and commands run inside the sandbox.

use base64::Engine;
use cellblock_tests::{cgroup_dirs, simple_id, Server};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers

fn sha_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The sandbox's home as the host sees it.
fn host_home(s: &Server, id: &str) -> PathBuf {
    s.data_dir.join("homes").join(simple_id(id))
}

fn file_url(id: &str, path: &str) -> String {
    format!("/v1/sandboxes/{id}/files/{path}")
}

/// Sends a request; returns status, raw body and content type.
async fn send(rb: RequestBuilder) -> (u16, Vec<u8>, String) {
    let resp = rb.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.bytes().await.expect("reading body").to_vec();
    (status, body, ctype)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn put(s: &Server, id: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    s.call(s.req(Method::PUT, &file_url(id, path)).body(body))
        .await
}

async fn get(s: &Server, id: &str, path: &str) -> (u16, Vec<u8>, String) {
    send(s.req(Method::GET, &file_url(id, path))).await
}

async fn del(s: &Server, id: &str, path: &str) -> (u16, Value) {
    s.call(s.req(Method::DELETE, &file_url(id, path))).await
}

async fn list(s: &Server, id: &str, query: &str) -> (u16, Value) {
    s.call(s.req(Method::GET, &format!("/v1/sandboxes/{id}/files?{query}")))
        .await
}

/// Paths of every entry under the home, `depth` levels down.
async fn list_paths(s: &Server, id: &str, depth: u32) -> Vec<String> {
    let (status, v) = list(s, id, &format!("depth={depth}")).await;
    assert_eq!(status, 200, "{v}");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect()
}

fn is_temp(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(".cellblock-upload-"))
}

/// A path through a planted symlink was refused: `403 path_refused`, or `400
/// not_a_directory` when the link is opened as a directory on its own (a
/// link that is the last component fails `O_DIRECTORY` with ENOTDIR before
/// `RESOLVE_NO_SYMLINKS` is looked at).
fn assert_refused(what: &str, status: u16, v: &Value) {
    assert!(
        [(403, "path_refused"), (400, "not_a_directory")].contains(&(status, code(v))),
        "{what}: not refused: {status} {v}"
    );
}

/// Runs a command; asserts 200 and returns the result.
async fn cmd(s: &Server, id: &str, body: Value) -> Value {
    let (status, v) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{id}/commands"))
                .json(&body),
        )
        .await;
    assert_eq!(status, 200, "command {body} failed: {v}");
    v
}

/// Runs a shell command; asserts 200 and exit code 0, returns stdout.
async fn sh(s: &Server, id: &str, script: &str) -> String {
    let r = cmd(s, id, json!({ "cmd": script })).await;
    assert_eq!(r["status"], "ok", "{script}: {r}");
    assert_eq!(r["exit_code"], 0, "{script}: {r}");
    r["stdout"].as_str().unwrap().to_owned()
}

/// Executes code; asserts status "ok" and returns the result.
async fn run(s: &Server, id: &str, code: &str) -> Value {
    let r = s.exec(id, code).await;
    assert_eq!(r["status"], "ok", "{code}: {r}");
    r
}

/// 1 MiB of deterministic pseudo-random bytes (splitmix64 seeded by `i`).
fn chunk(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = vec![0u8; MIB];
    for w in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        w.copy_from_slice(&z.to_le_bytes());
    }
    out
}

/// A body of `mib` deterministic MiB, generated as it is sent.
fn streamed_body(mib: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(
        futures_util::stream::iter(0..mib).map(|i| Ok::<_, std::io::Error>(chunk(i))),
    )
}

/// PUTs `mib` deterministic MiB with a raw HTTP/1.1 client that reads the
/// response while it is still sending. The broker answers `507` as soon as
/// the disk is full and closes the connection without reading the rest, so
/// reqwest (which stops at the failed body write) reports a broken pipe and
/// never shows the response; this client sees what the broker said.
async fn put_raw(s: &Server, id: &str, path: &str, mib: u64) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s
        .base
        .strip_prefix("http://")
        .expect("http base")
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        file_url(id, path),
        mib * MIB as u64
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for i in 0..mib {
            wr.write_all(&chunk(i)).await?;
        }
        wr.flush().await?;
        // Keep the write side open until the response is read.
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok::<_, std::io::Error>(())
    });
    let mut resp = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => resp.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if resp.len() >= end + 4 + len {
                break;
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The real uid of a host process.
fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Host `sleep` processes (not zombies) running as host uid `uid`, with
/// their command lines.
fn sleeps_of_uid(uid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if uid_of(pid) != Some(uid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if argv0 == b"sleep" || argv0.ends_with(b"/sleep") {
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// Bytes charged to the sandbox's memory cgroup (v1 or v2).
fn memory_usage(name: &str) -> u64 {
    for d in cgroup_dirs(name) {
        for f in ["memory.usage_in_bytes", "memory.current"] {
            if let Ok(v) = std::fs::read_to_string(d.join(f)) {
                return v.trim().parse().expect("memory usage");
            }
        }
    }
    panic!("no memory cgroup found for {name}");
}

/// Peak resident memory of a host process, KiB.
fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ tests

/// Text, binary and nested files go up and come back identical, with their
/// sha256, a guessed content type, inline base64/text forms, and the right
/// owner inside the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip() {
    let s = Server::start();
    let id = s.create(json!({})).await;

    let text = b"hello, files\nline two \xc3\xa9\n".to_vec();
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let nested: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n"
        .iter()
        .copied()
        .chain(0..200u8)
        .collect();
    let csv = b"a,b\n1,x\n2,y\n".to_vec();
    let cases: [(&str, &[u8], &str); 6] = [
        ("hello.txt", &text, "text/plain"),
        ("bin/all.bin", &binary, "application/octet-stream"),
        ("a/b/c/d.bin", &nested, "application/octet-stream"),
        ("img/pic.png", &png, "image/png"),
        ("t.csv", &csv, "text/csv"),
        ("empty.txt", b"", "text/plain"),
    ];
    for (path, bytes, _) in cases {
        let (status, v) = put(&s, &id, path, bytes.to_vec()).await;
        assert_eq!(status, 200, "PUT {path}: {v}");
        assert_eq!(v["path"], path, "{v}");
        assert_eq!(v["size"], bytes.len(), "{v}");
        assert_eq!(v["sha256"], sha_hex(bytes), "{v}");
    }
    for (path, bytes, mime) in cases {
        let resp = s
            .req(Method::GET, &file_url(&id, path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        let ctype = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let clen = resp.headers()[CONTENT_LENGTH].to_str().unwrap().to_owned();
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..], bytes, "GET {path} returned other bytes");
        assert_eq!(ctype, mime, "content type of {path}");
        assert_eq!(clen, bytes.len().to_string(), "content length of {path}");
    }

    // Inline forms.
    let (status, body, ctype) = get(&s, &id, "bin/all.bin?format=base64").await;
    let v = json_of(&body);
    assert_eq!(status, 200, "{v}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(v["path"], "bin/all.bin", "{v}");
    assert_eq!(v["size"], binary.len(), "{v}");
    assert_eq!(v["encoding"], "base64", "{v}");
    assert_eq!(v["mime"], "application/octet-stream", "{v}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v["content"].as_str().unwrap())
        .expect("base64 content");
    assert_eq!(decoded, binary);
    let (status, body, _) = get(&s, &id, "hello.txt?format=text").await;
    let v = json_of(&body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["encoding"], "utf-8", "{v}");
    assert_eq!(v["mime"], "text/plain", "{v}");
    assert_eq!(v["size"], text.len(), "{v}");
    assert_eq!(v["content"], "hello, files\nline two é\n", "{v}");
    let (status, body, _) = get(&s, &id, "bin/all.bin?format=text").await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert_eq!(code(&json_of(&body)), "not_text");
    let (status, body, _) = get(&s, &id, "hello.txt?format=hex").await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert_eq!(code(&json_of(&body)), "invalid_request");

    // Overwriting replaces the whole file.
    let (status, v) = put(&s, &id, "hello.txt", "v2").await;
    assert_eq!((status, v["size"].as_u64()), (200, Some(2)), "{v}");
    let (status, body, _) = get(&s, &id, "hello.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"v2"[..]));

    // Errors.
    for (path, status, want) in [
        ("missing.txt", 404, "file_not_found"),
        ("a/nope/x", 404, "file_not_found"),
        ("a/b", 400, "is_a_directory"),
        ("hello.txt/x", 400, "not_a_directory"),
    ] {
        let (got, body, _) = get(&s, &id, path).await;
        assert_eq!(
            got,
            status,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(code(&json_of(&body)), want, "GET {path}");
    }
    let (status, v) = put(&s, &id, "a/b", "over a dir").await;
    assert_eq!((status, code(&v)), (400, "is_a_directory"), "{v}");
    let (status, v) = put(&s, &id, "hello.txt/x", "under a file").await;
    assert_eq!((status, code(&v)), (400, "not_a_directory"), "{v}");
    let paths = list_paths(&s, &id, 8).await;
    assert!(!paths.iter().any(|p| is_temp(p)), "temp left: {paths:?}");
    let (status, body, _) = get(&s, &uuid::Uuid::new_v4().to_string(), "x").await;
    assert_eq!(status, 404);
    assert_eq!(code(&json_of(&body)), "sandbox_not_found");

    // The kernel reads what the API wrote, as its own files.
    let r = run(
        &s,
        &id,
        r#"
import os
print(open('hello.txt').read())
print(open('bin/all.bin', 'rb').read() == bytes(range(256)) + bytes(reversed(range(256))))
print(open('a/b/c/d.bin', 'rb').read() == bytes(i * 7 % 251 for i in range(10000)))
print(*[os.stat(p).st_uid for p in ['hello.txt', 'bin/all.bin', 'a', 'a/b', 'a/b/c', 'a/b/c/d.bin']])
print(*[os.stat(p).st_gid for p in ['hello.txt', 'a/b/c']])
open('a/b/c/from_kernel.txt', 'w').write('k')
"#,
    )
    .await;
    assert_eq!(
        r["stdout"], "v2\nTrue\nTrue\n1000 1000 1000 1000 1000 1000\n1000 1000\n",
        "{r}"
    );
    let (status, body, _) = get(&s, &id, "a/b/c/from_kernel.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"k"[..]));
}

/// A 200 MB file is streamed up and down without the broker or the test
/// holding it in memory, and arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_file_streams_up_and_down() {
    const SIZE_MIB: u64 = 200;
    let s = Server::start();
    let id = s
        .create(json!({"limits": {"disk_mb": 400, "memory_mb": 1024}}))
        .await;
    let hwm_before = vm_hwm_kib(s.pid());

    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let h = hasher.clone();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(0..SIZE_MIB).map(move |i| {
        let c = chunk(i);
        h.lock().unwrap().update(&c);
        Ok::<_, std::io::Error>(c)
    }));
    let started = Instant::now();
    let (status, v) = put(&s, &id, "big/blob.bin", body).await;
    assert_eq!(status, 200, "{v}");
    let local = hex(&hasher.lock().unwrap().clone().finalize());
    assert_eq!(v["size"], SIZE_MIB * MIB as u64, "{v}");
    assert_eq!(v["sha256"], local, "{v}");
    eprintln!("200 MB upload took {:?}", started.elapsed());

    let (status, l) = list(&s, &id, "path=big").await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(l["entries"][0]["path"], "big/blob.bin", "{l}");
    assert_eq!(l["entries"][0]["size"], SIZE_MIB * MIB as u64, "{l}");
    assert_eq!(l["entries"].as_array().unwrap().len(), 1, "temp left: {l}");

    let mut resp = s
        .req(Method::GET, &file_url(&id, "big/blob.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[CONTENT_LENGTH].to_str().unwrap(),
        (SIZE_MIB * MIB as u64).to_string()
    );
    let mut down = Sha256::new();
    let mut len = 0u64;
    let mut biggest = 0usize;
    while let Some(c) = resp.chunk().await.expect("reading the download") {
        len += c.len() as u64;
        biggest = biggest.max(c.len());
        down.update(&c);
    }
    assert_eq!(len, SIZE_MIB * MIB as u64);
    assert_eq!(hex(&down.finalize()), local, "download differs");
    assert!(biggest < 64 * MIB, "a {biggest}-byte chunk: not streamed");

    // The broker streamed both ways: its peak RSS did not grow by the file.
    let grew_mib = vm_hwm_kib(s.pid()).saturating_sub(hwm_before) / 1024;
    assert!(grew_mib < 100, "broker peak RSS grew by {grew_mib} MiB");

    // Inside, the same bytes.
    let out = sh(
        &s,
        &id,
        "sha256sum big/blob.bin; stat -c '%s %u' big/blob.bin",
    )
    .await;
    assert_eq!(
        out,
        format!("{local}  big/blob.bin\n{} 1000\n", SIZE_MIB * MIB as u64)
    );
}

/// Multipart uploads (at the filename, or at a preceding `path` field),
/// listings with depth, and deletes (file, non-empty dir, recursive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_list_and_delete() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let form = Form::new()
        .part("a", Part::bytes(b"first".to_vec()).file_name("one.txt"))
        .text("path", "docs/two.md")
        .part(
            "b",
            Part::bytes(b"# two\n".to_vec()).file_name("ignored.bin"),
        )
        .part(
            "c",
            Part::bytes(vec![3u8; 3000]).file_name("data/three.bin"),
        );
    let (status, v) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{id}/files"))
                .multipart(form),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let files = v["files"].as_array().expect("files");
    let got: Vec<(&str, u64, &str)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["size"].as_u64().unwrap(),
                f["sha256"].as_str().unwrap(),
            )
        })
        .collect();
    let (s1, s2, s3) = (
        sha_hex(b"first"),
        sha_hex(b"# two\n"),
        sha_hex(&[3u8; 3000]),
    );
    assert_eq!(
        got,
        [
            ("one.txt", 5, s1.as_str()),
            ("docs/two.md", 6, s2.as_str()),
            ("data/three.bin", 3000, s3.as_str()),
        ],
        "{v}"
    );
    for (path, want) in [
        ("one.txt", &b"first"[..]),
        ("docs/two.md", &b"# two\n"[..]),
        ("data/three.bin", &[3u8; 3000][..]),
    ] {
        let (status, body, _) = get(&s, &id, path).await;
        assert_eq!((status, body.as_slice()), (200, want), "GET {path}");
    }
    let (status, _, _) = get(&s, &id, "ignored.bin").await;
    assert_eq!(
        status, 404,
        "the part went to its filename, not its path field"
    );

    let (status, v) = s
        .call(
            s.req(Method::POST, &format!("/v1/sandboxes/{id}/files"))
                .multipart(Form::new().text("path", "only-a-path.txt")),
        )
        .await;
    assert_eq!((status, code(&v)), (400, "bad_multipart"), "{v}");

    // Listings.
    let (status, _) = put(&s, &id, "deep/a/b/c.txt", "deep").await;
    assert_eq!(status, 200);
    let (status, l) = list(&s, &id, "depth=2").await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(l["path"], "", "{l}");
    assert_eq!(l["truncated"], false, "{l}");
    let entries = l["entries"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("data", "dir"),
            ("data/three.bin", "file"),
            ("deep", "dir"),
            ("deep/a", "dir"),
            ("docs", "dir"),
            ("docs/two.md", "file"),
            ("one.txt", "file"),
        ],
        "{l}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for e in entries {
        let mtime = e["mtime"].as_f64().expect("mtime");
        assert!((mtime - now).abs() < 600.0, "mtime {mtime} vs now {now}");
    }
    let three = entries.iter().find(|e| e["name"] == "three.bin").unwrap();
    assert_eq!(three["size"], 3000, "{l}");
    let (status, l) = list(&s, &id, "path=docs").await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(l["path"], "docs", "{l}");
    assert_eq!(l["entries"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["entries"][0]["path"], "docs/two.md", "{l}");
    assert_eq!(l["entries"][0]["name"], "two.md", "{l}");
    assert!(list_paths(&s, &id, 4)
        .await
        .contains(&"deep/a/b/c.txt".to_owned()));
    for (query, status, want) in [
        ("path=nope", 404, "file_not_found"),
        ("path=one.txt", 400, "not_a_directory"),
        ("depth=0", 422, "invalid_request"),
        ("depth=33", 422, "invalid_request"),
        ("bogus=1", 400, "invalid_query"),
    ] {
        let (got, v) = list(&s, &id, query).await;
        assert_eq!((got, code(&v)), (status, want), "list {query}: {v}");
    }

    // Deletes.
    let (status, v) = del(&s, &id, "one.txt").await;
    assert_eq!(status, 204, "{v}");
    let (status, _, _) = get(&s, &id, "one.txt").await;
    assert_eq!(status, 404);
    let (status, v) = del(&s, &id, "docs").await;
    assert_eq!((status, code(&v)), (409, "directory_not_empty"), "{v}");
    let (status, body, _) = get(&s, &id, "docs/two.md").await;
    assert_eq!((status, body.as_slice()), (200, &b"# two\n"[..]));
    let (status, v) = del(&s, &id, "docs?recursive=true").await;
    assert_eq!(status, 204, "{v}");
    let (status, body, _) = get(&s, &id, "docs/two.md").await;
    assert_eq!(status, 404);
    assert_eq!(code(&json_of(&body)), "file_not_found");
    let (status, v) = del(&s, &id, "deep?recursive=true").await;
    assert_eq!(status, 204, "{v}");
    let (status, _) = del(&s, &id, "data/three.bin").await;
    assert_eq!(status, 204);
    let (status, v) = del(&s, &id, "data").await;
    assert_eq!(status, 204, "an empty dir needs no recursive: {v}");
    let (status, v) = del(&s, &id, "data").await;
    assert_eq!((status, code(&v)), (404, "file_not_found"), "{v}");
    let (status, v) = del(&s, &id, "%2E%2F").await;
    assert_eq!((status, code(&v)), (400, "invalid_path"), "{v}");
    assert_eq!(list_paths(&s, &id, 8).await, Vec::<String>::new());
    let r = run(&s, &id, "import os\nprint(sorted(os.listdir('.')))").await;
    assert_eq!(r["stdout"], "[]\n", "{r}");
}

/// Every file endpoint refuses `..`, absolute paths, NUL bytes and any
/// symlink the sandbox planted (to host files, to the host root, to another
/// sandbox's home); nothing is read, written or deleted outside the home; a
/// symlink is deleted, never its target; a fifo does not hang the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_symlinks_are_refused_on_every_endpoint() {
    let s = Server::start();
    let a = s.create(json!({})).await;
    let b = s.create(json!({})).await;
    let marker = format!("CBSECRET{}", unique());
    let (status, _) = put(&s, &a, "secret/marker.txt", marker.clone()).await;
    assert_eq!(status, 200);
    let home_a = host_home(&s, &a);
    assert_eq!(
        std::fs::read_to_string(home_a.join("secret/marker.txt")).unwrap(),
        marker
    );
    let shadow_before = std::fs::read("/etc/shadow").ok();
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    let tag = unique();
    let mut bodies: Vec<String> = Vec::new();

    // Plain traversal: 400 invalid_path on GET, PUT, DELETE and list.
    let bad = [
        "..%2F..%2Fetc%2Fshadow".to_owned(),
        "..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
        "%2Fetc%2Fshadow".to_owned(),
        "/etc/passwd".to_owned(), // a double slash in the URL
        "a%2F..%2F..%2Fescape".to_owned(),
        "%2E%2E%2Fescape".to_owned(),
        "a%00b".to_owned(),
        "ok%00%2F..%2Fx".to_owned(),
        format!("..%2F..%2F..%2F..%2F..%2F..%2F..%2Ftmp%2Fcb-escape-{tag}"),
        format!("..%2Fescape-{tag}"),
    ];
    for p in &bad {
        for (method, body) in [
            (Method::GET, None),
            (Method::GET, Some("?format=base64")),
            (Method::PUT, None),
            (Method::DELETE, None),
        ] {
            let url = format!("{}{}", file_url(&b, p), body.unwrap_or_default());
            let mut rb = s.req(method.clone(), &url);
            if method == Method::PUT {
                rb = rb.body("pwned");
            }
            let (status, raw, _) = send(rb).await;
            let v = json_of(&raw);
            assert_eq!(
                (status, code(&v)),
                (400, "invalid_path"),
                "{method} {url}: {v}"
            );
            bodies.push(String::from_utf8_lossy(&raw).into_owned());
        }
        let (status, v) = list(&s, &b, &format!("path={p}")).await;
        assert_eq!((status, code(&v)), (400, "invalid_path"), "list {p}: {v}");
    }
    assert!(!Path::new(&format!("/tmp/cb-escape-{tag}")).exists());
    assert!(!s.data_dir.join(format!("homes/escape-{tag}")).exists());
    assert!(!s.data_dir.join("escape").exists());
    for (name, value, filename) in [
        ("f", None, "../../escape.txt".to_owned()),
        ("f", None, format!("/tmp/cb-escape-{tag}")),
        (
            "f",
            Some(format!("../../../../../../../tmp/cb-escape-{tag}")),
            "x".into(),
        ),
        ("f", Some(format!("/tmp/cb-escape-{tag}")), "x".into()),
        ("f", Some("a\0b".to_owned()), "x".into()),
    ] {
        let mut form = Form::new();
        if let Some(p) = &value {
            form = form.text("path", p.clone());
        }
        form = form.part(
            name,
            Part::bytes(b"pwned".to_vec()).file_name(filename.clone()),
        );
        let (status, raw, _) = send(
            s.req(Method::POST, &format!("/v1/sandboxes/{b}/files"))
                .multipart(form),
        )
        .await;
        let v = json_of(&raw);
        assert_eq!(
            (status, code(&v)),
            (400, "invalid_path"),
            "multipart {value:?} {filename:?}: {v}"
        );
    }
    assert!(!Path::new(&format!("/tmp/cb-escape-{tag}")).exists());
    assert!(!s.data_dir.join("escape.txt").exists());

    // Symlinks planted by the sandbox.
    let code_b = format!(
        r#"
import os
os.symlink('/etc/shadow', 'shadow')
os.symlink('/etc/shadow', 'shadow2')
os.symlink('/etc/passwd', 'passwd')
os.symlink('/', 'rootlink')
os.symlink('../../../../../../../../../../etc', 'up')
os.symlink('{home_a}', 'otherhome')
os.symlink('/home/user', 'selfhome')
os.symlink('/home/user/secret/marker.txt', 'selfmarker')
open('target.txt', 'w').write('keep me')
os.symlink('target.txt', 'tlink')
os.mkdir('realdir')
open('realdir/inside.txt', 'w').write('inside')
os.symlink('realdir', 'dirlink')
os.mkfifo('p')
try:
    open('{home_a}/secret/marker.txt').read()
    print('OTHER_HOME_READABLE')
except OSError as e:
    print(type(e).__name__)
"#,
        home_a = home_a.display()
    );
    let r = run(&s, &b, &code_b).await;
    assert_eq!(r["stdout"], "FileNotFoundError\n", "{r}");

    let refused_paths = [
        "shadow".to_owned(),
        "passwd".to_owned(),
        "rootlink".to_owned(),
        "rootlink/etc/passwd".to_owned(),
        "rootlink/etc/shadow".to_owned(),
        format!("rootlink{}", home_a.join("secret/marker.txt").display()),
        "up/passwd".to_owned(),
        "up/shadow".to_owned(),
        "otherhome/secret/marker.txt".to_owned(),
        "selfhome/target.txt".to_owned(),
        "selfmarker".to_owned(),
        "tlink".to_owned(),
        "dirlink/inside.txt".to_owned(),
    ];
    for p in &refused_paths {
        for q in ["", "?format=base64", "?format=text"] {
            let (status, raw, _) = get(&s, &b, &format!("{p}{q}")).await;
            let v = json_of(&raw);
            assert_eq!(
                (status, code(&v)),
                (403, "path_refused"),
                "GET {p}{q}: {}",
                String::from_utf8_lossy(&raw)
            );
            bodies.push(String::from_utf8_lossy(&raw).into_owned());
        }
    }
    for p in [
        "rootlink",
        "rootlink/etc",
        "up",
        "otherhome",
        "otherhome/secret",
        "selfhome",
        "dirlink",
    ] {
        let (status, v) = list(&s, &b, &format!("path={p}")).await;
        assert_refused(&format!("list {p}"), status, &v);
        bodies.push(v.to_string());
    }
    // The whole home, deep: the links are listed as links, never followed.
    let (status, l) = list(&s, &b, "depth=10").await;
    assert_eq!(status, 200, "{l}");
    bodies.push(l.to_string());
    let entries = l["entries"].as_array().unwrap();
    let kinds: std::collections::BTreeMap<&str, &str> = entries
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    for link in [
        "shadow",
        "passwd",
        "rootlink",
        "up",
        "otherhome",
        "selfhome",
        "tlink",
        "dirlink",
    ] {
        assert_eq!(kinds.get(link), Some(&"symlink"), "{link}: {l}");
        assert!(
            !kinds.keys().any(|k| k.starts_with(&format!("{link}/"))),
            "followed {link}: {l}"
        );
    }
    assert_eq!(kinds.get("p"), Some(&"other"), "{l}");
    assert_eq!(kinds.get("realdir/inside.txt"), Some(&"file"), "{l}");

    // Writes through a symlinked directory create nothing outside.
    let evil = |n: &str| format!("cb-evil-{n}-{tag}");
    let put_refused = [
        (
            format!("rootlink/tmp/{}", evil("put")),
            PathBuf::from(format!("/tmp/{}", evil("put"))),
        ),
        (
            format!("rootlink/tmp/{}/sub/x", evil("dir")),
            PathBuf::from(format!("/tmp/{}", evil("dir"))),
        ),
        (
            format!("up/{}", evil("etc")),
            PathBuf::from(format!("/etc/{}", evil("etc"))),
        ),
        (
            format!("otherhome/{}", evil("home")),
            home_a.join(evil("home")),
        ),
        (
            format!("otherhome/secret/{}", evil("home2")),
            home_a.join("secret").join(evil("home2")),
        ),
        // Overwriting A's marker is checked below, by its content.
        (
            "otherhome/secret/marker.txt".to_owned(),
            home_a.join(evil("unused")),
        ),
        (
            format!("dirlink/{}", evil("inner")),
            host_home(&s, &b).join("realdir").join(evil("inner")),
        ),
        (
            format!("selfhome/{}", evil("self")),
            host_home(&s, &b).join(evil("self")),
        ),
    ];
    for (p, host) in &put_refused {
        let (status, v) = put(&s, &b, p, "pwned").await;
        assert_refused(&format!("PUT {p}"), status, &v);
        assert!(!host.exists(), "PUT {p} created {}", host.display());
        let form = Form::new()
            .text("path", p.clone())
            .part("f", Part::bytes(b"pwned".to_vec()).file_name("x"));
        let (status, v) = s
            .call(
                s.req(Method::POST, &format!("/v1/sandboxes/{b}/files"))
                    .multipart(form),
            )
            .await;
        assert_refused(&format!("multipart {p}"), status, &v);
        assert!(!host.exists(), "multipart {p} created {}", host.display());
        let form = Form::new().part("f", Part::bytes(b"pwned".to_vec()).file_name(p.clone()));
        let (status, v) = s
            .call(
                s.req(Method::POST, &format!("/v1/sandboxes/{b}/files"))
                    .multipart(form),
            )
            .await;
        assert_refused(&format!("multipart filename {p}"), status, &v);
        assert!(!host.exists(), "multipart {p} created {}", host.display());
    }
    assert_eq!(
        std::fs::read_to_string(home_a.join("secret/marker.txt")).unwrap(),
        marker
    );
    assert_eq!(
        list_paths(&s, &a, 8).await,
        ["secret", "secret/marker.txt"],
        "sandbox A's home changed"
    );

    // Deletes through a symlinked directory are refused.
    for p in [
        "rootlink/etc/passwd",
        "up/passwd",
        "otherhome/secret/marker.txt",
        "otherhome/secret?recursive=true",
        "selfhome/target.txt",
        "dirlink/inside.txt",
        "rootlink/tmp?recursive=true",
    ] {
        let (status, v) = del(&s, &b, p).await;
        assert_refused(&format!("DELETE {p}"), status, &v);
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    assert!(home_a.join("secret/marker.txt").exists());
    let (status, body, _) = get(&s, &b, "target.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"keep me"[..]));
    let (status, body, _) = get(&s, &b, "realdir/inside.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"inside"[..]));

    // A fifo is refused at once, not read (the broker would block).
    for q in ["", "?format=base64", "?format=text"] {
        let started = Instant::now();
        let (status, raw, _) =
            tokio::time::timeout(Duration::from_secs(10), get(&s, &b, &format!("p{q}")))
                .await
                .expect("GET of a fifo hung");
        let v = json_of(&raw);
        assert_eq!((status, code(&v)), (400, "not_a_file"), "GET p{q}: {v}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // Deleting a symlink removes the link, never its target.
    for p in [
        "shadow",
        "passwd",
        "rootlink?recursive=true",
        "up?recursive=true",
        "otherhome?recursive=true",
        "selfhome?recursive=true",
        "tlink",
        "dirlink?recursive=true",
        "p",
    ] {
        let (status, v) = del(&s, &b, p).await;
        assert_eq!(status, 204, "DELETE {p}: {v}");
    }
    assert_eq!(std::fs::read("/etc/shadow").ok(), shadow_before);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    assert_eq!(
        std::fs::read_to_string(home_a.join("secret/marker.txt")).unwrap(),
        marker
    );
    let (status, body, _) = get(&s, &a, "secret/marker.txt").await;
    assert_eq!((status, body), (200, marker.clone().into_bytes()));
    let (status, body, _) = get(&s, &b, "target.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"keep me"[..]));
    let (status, body, _) = get(&s, &b, "realdir/inside.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"inside"[..]));
    assert_eq!(
        list_paths(&s, &b, 4).await,
        [
            "realdir",
            "realdir/inside.txt",
            "selfmarker",
            "shadow2",
            "target.txt"
        ]
    );

    // A PUT onto a symlink replaces the link (or is refused): never writes
    // its target.
    let (status, v) = put(&s, &b, "shadow2", "replaced").await;
    assert!(
        status == 200 || (status, code(&v)) == (403, "path_refused"),
        "PUT shadow2: {v}"
    );
    assert_eq!(std::fs::read("/etc/shadow").ok(), shadow_before);
    if status == 200 {
        let (status, body, _) = get(&s, &b, "shadow2").await;
        assert_eq!((status, body.as_slice()), (200, &b"replaced"[..]));
        let meta = std::fs::symlink_metadata(host_home(&s, &b).join("shadow2")).unwrap();
        assert!(meta.is_file(), "still a link");
    }

    for body in &bodies {
        assert!(!body.contains("root:"), "host file content leaked: {body}");
        assert!(!body.contains(&marker), "sandbox A's file leaked: {body}");
    }
    // Both sandboxes still work.
    let r = run(&s, &a, "print(open('secret/marker.txt').read())").await;
    assert_eq!(r["stdout"], format!("{marker}\n"), "{r}");
    let r = run(&s, &b, "print(open('target.txt').read())").await;
    assert_eq!(r["stdout"], "keep me\n", "{r}");
}

/// Sockets and device nodes in the home are refused like fifos: `400
/// not_a_file` (README: "fifos and devices are 400 not_a_file"), not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_and_device_nodes_are_not_a_file() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = run(
        &s,
        &id,
        r#"
import os, socket, stat
listener = socket.socket(socket.AF_UNIX)
listener.bind('sock')
listener.listen()
try:
    os.mknod('dev', stat.S_IFCHR | 0o600, os.makedev(0, 0))
    print('dev')
except OSError as e:
    print('no dev', e)
"#,
    )
    .await;
    let mut specials = vec!["sock"];
    if r["stdout"] == "dev\n" {
        specials.push("dev");
    }
    let (status, l) = list(&s, &id, "").await;
    assert_eq!(status, 200, "{l}");
    let mut wrong = Vec::new();
    for p in specials {
        let entry = l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p);
        assert_eq!(entry.map(|e| &e["type"]), Some(&json!("other")), "{l}");
        for q in ["", "?format=base64", "?format=text"] {
            let (status, raw, _) =
                tokio::time::timeout(Duration::from_secs(10), get(&s, &id, &format!("{p}{q}")))
                    .await
                    .expect("GET hung");
            let v = json_of(&raw);
            if (status, code(&v)) != (400, "not_a_file") {
                wrong.push(format!("GET {p}{q}: {status} {v}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not 400 not_a_file:\n{}",
        wrong.join("\n")
    );
    // Both can be deleted.
    for p in ["sock", "dev"] {
        let (status, v) = del(&s, &id, p).await;
        assert!(status == 204 || p == "dev", "DELETE {p}: {v}");
    }
}

/// Over `disk_mb` an upload is `507 disk_full` and leaves nothing; an upload
/// cut off mid-stream (client error, client gone) leaves nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_and_interrupted_uploads_leave_nothing() {
    let s = Server::start();
    let id = s.create(json!({"limits": {"disk_mb": 16}})).await;

    let (status, v) = put_raw(&s, &id, "big.bin", 32).await;
    assert_eq!((status, code(&v)), (507, "disk_full"), "{v}");
    let paths = list_paths(&s, &id, 8).await;
    assert!(
        !paths.iter().any(|p| is_temp(p) || p == "big.bin"),
        "leftover after a full disk: {paths:?}"
    );
    let out = sh(
        &s,
        &id,
        "df -k /home/user | tail -1 | awk '{print $3}'; du -sk /home/user | cut -f1",
    )
    .await;
    let used: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(
        used.len() == 2 && used.iter().all(|kib| *kib < 1024),
        "home still uses {out:?} KiB"
    );
    // The space is really free again.
    let (status, v) = put(&s, &id, "fits.bin", streamed_body(12)).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = del(&s, &id, "fits.bin").await;
    assert_eq!(status, 204);

    // A client whose body fails after a few MB.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = (0..4)
        .map(|i| Ok(chunk(i)))
        .chain([Err(std::io::Error::other("client gave up"))])
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(parts));
    match s
        .req(Method::PUT, &file_url(&id, "cut.bin"))
        .body(body)
        .send()
        .await
    {
        Err(_) => {}
        Ok(resp) => assert!(!resp.status().is_success(), "{resp:?}"),
    }
    assert!(
        wait_for_no_upload_left(&s, &id, "cut.bin").await,
        "a failed upload left files: {:?}",
        list_paths(&s, &id, 8).await
    );

    // A client that goes away mid-upload.
    let body = reqwest::Body::wrap_stream(
        futures_util::stream::iter((0..3).map(|i| Ok::<_, std::io::Error>(chunk(i))))
            .chain(futures_util::stream::pending()),
    );
    let rb = s
        .req(Method::PUT, &file_url(&id, "gone/away.bin"))
        .body(body);
    let task = tokio::spawn(rb.send());
    let mut saw_temp = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if list_paths(&s, &id, 8).await.iter().any(|p| is_temp(p)) {
            saw_temp = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_temp, "the upload never started");
    task.abort();
    let _ = task.await;
    assert!(
        wait_for_no_upload_left(&s, &id, "gone/away.bin").await,
        "a cut-off upload left files: {:?}",
        list_paths(&s, &id, 8).await
    );
    let (status, _, _) = get(&s, &id, "gone/away.bin").await;
    assert_eq!(status, 404);
    let r = run(&s, &id, "print('still fine')").await;
    assert_eq!(r["stdout"], "still fine\n");
}

/// Polls the listing until no temp file and no `target` remain (10 s).
async fn wait_for_no_upload_left(s: &Server, id: &str, target: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let paths = list_paths(s, id, 8).await;
        if !paths.iter().any(|p| is_temp(p) || p == target) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// "A cut-off, failed or over-quota upload leaves nothing" (README): not even
/// the parent directories the upload created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_leaves_no_new_directories() {
    let s = Server::start();
    let id = s.create(json!({"limits": {"disk_mb": 16}})).await;
    let (status, v) = put_raw(&s, &id, "new1/new2/big.bin", 32).await;
    assert_eq!((status, code(&v)), (507, "disk_full"), "{v}");
    let paths = list_paths(&s, &id, 8).await;
    assert_eq!(paths, Vec::<String>::new(), "left behind: {paths:?}");
}

/// `disk_mb` "counts against `memory_mb`" (SECURITY.md): files the API
/// uploads are charged to the sandbox's memory cgroup, like files its kernel
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_files_are_charged_to_the_sandbox_memory() {
    let s = Server::start();
    let id = s
        .create(json!({"limits": {"disk_mb": 256, "memory_mb": 1024}}))
        .await;
    let name = simple_id(&id);
    let charged = 48 * MIB as u64;

    // The measure works: 64 MiB written by the kernel are charged.
    let before = memory_usage(&name);
    run(&s, &id, "open('k.bin', 'wb').write(b'k' * (64 << 20))").await;
    let after = memory_usage(&name);
    assert!(
        after.saturating_sub(before) >= charged,
        "kernel-written file: usage {before} -> {after}"
    );
    let (status, _) = del(&s, &id, "k.bin").await;
    assert_eq!(status, 204);

    let before = memory_usage(&name);
    let (status, v) = put(&s, &id, "u.bin", streamed_body(64)).await;
    assert_eq!(status, 200, "{v}");
    let after = memory_usage(&name);
    assert!(
        after.saturating_sub(before) >= charged,
        "64 MiB uploaded through the API are not charged to the sandbox: usage {before} -> {after}"
    );
}

/// Executions report the files they created, modified and deleted, with
/// sizes and types; the files are downloadable as reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_report_artifacts() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    let r = run(
        &s,
        &id,
        r#"
import pandas as pd
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']}).to_csv('data.csv', index=False)
fig, ax = plt.subplots()
ax.plot([1, 3, 2])
fig.savefig('chart.png')
plt.close(fig)
"#,
    )
    .await;
    let files = &r["files"];
    assert_eq!(files["truncated"], false, "{r}");
    assert_eq!(files["modified"], json!([]), "{r}");
    assert_eq!(files["deleted"], json!([]), "{r}");
    let created = files["created"].as_array().unwrap();
    let paths: Vec<&str> = created
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["chart.png", "data.csv"], "{r}");
    let chart = &created[0];
    let csv = &created[1];
    assert_eq!(chart["mime"], "image/png", "{r}");
    assert_eq!(csv["mime"], "text/csv", "{r}");
    assert_eq!(csv["size"], 12, "{r}");
    let (status, body, ctype) = get(&s, &id, "chart.png").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "image/png");
    assert_eq!(body.len() as u64, chart["size"].as_u64().unwrap(), "{r}");
    assert!(body.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(body.len() > 1000);
    let (status, body, _) = get(&s, &id, "data.csv").await;
    assert_eq!((status, body.as_slice()), (200, &b"a,b\n1,x\n2,y\n"[..]));

    let r = run(
        &s,
        &id,
        "import os\nopen('data.csv', 'a').write('3,z\\n')\nos.remove('chart.png')",
    )
    .await;
    assert_eq!(
        r["files"],
        json!({
            "created": [],
            "modified": [{"path": "data.csv", "size": 16, "mime": "text/csv"}],
            "deleted": [{"path": "chart.png", "size": chart["size"], "mime": "image/png"}],
            "truncated": false,
        }),
        "{r}"
    );

    let empty = json!({"created": [], "modified": [], "deleted": [], "truncated": false});
    let r = run(&s, &id, "x = 1\nprint(open('data.csv').read()[:1])").await;
    assert_eq!(r["files"], empty, "{r}");

    // Nested files; an mtime-only change; links and dirs are not files.
    let r = run(
        &s,
        &id,
        r#"
import os, json
os.makedirs('out/sub')
json.dump({'k': 1}, open('out/sub/r.json', 'w'))
os.utime('data.csv', (0, 0))
os.symlink('/etc/passwd', 'link')
os.mkdir('emptydir')
"#,
    )
    .await;
    assert_eq!(
        r["files"],
        json!({
            "created": [{"path": "out/sub/r.json", "size": 8, "mime": "application/json"}],
            "modified": [{"path": "data.csv", "size": 16, "mime": "text/csv"}],
            "deleted": [],
            "truncated": false,
        }),
        "{r}"
    );

    // An upload between executions is not the next execution's change.
    let (status, _) = put(&s, &id, "uploaded.txt", "u").await;
    assert_eq!(status, 200);
    let r = run(&s, &id, "y = 2").await;
    assert_eq!(r["files"], empty, "{r}");

    // A failing execution still reports what it wrote.
    let r = s
        .exec(&id, "open('partial.txt', 'w').write('p')\n1/0")
        .await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(
        r["files"]["created"],
        json!([{"path": "partial.txt", "size": 1, "mime": "text/plain"}]),
        "{r}"
    );
}

/// Commands run in the sandbox: output, exit codes, argv, stdin, cwd, env,
/// timeouts that kill the whole tree, files shared with the kernel, the same
/// confinement, and input validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_inside_the_sandbox() {
    let s = Server::start();
    let id = s.create(json!({})).await;
    run(&s, &id, "state = 'alive'").await;
    let kernel = s.kernel_of(&id);
    let uid = uid_of(kernel).expect("kernel uid");
    assert!(uid >= 1_000_000, "kernel runs as host uid {uid}");

    let r = cmd(&s, &id, json!({"cmd": "echo hi"})).await;
    assert_eq!(
        (
            &r["exit_code"],
            &r["stdout"],
            &r["stderr"],
            &r["status"],
            &r["truncated"]
        ),
        (
            &json!(0),
            &json!("hi\n"),
            &json!(""),
            &json!("ok"),
            &json!(false)
        ),
        "{r}"
    );
    assert!(r["duration_ms"].as_u64().is_some(), "{r}");
    let r = cmd(&s, &id, json!({"cmd": "exit 3"})).await;
    assert_eq!(
        (&r["exit_code"], &r["status"]),
        (&json!(3), &json!("ok")),
        "{r}"
    );
    let r = cmd(&s, &id, json!({"cmd": "echo out; echo oops >&2; exit 1"})).await;
    assert_eq!(
        (&r["exit_code"], &r["stdout"], &r["stderr"]),
        (&json!(1), &json!("out\n"), &json!("oops\n")),
        "{r}"
    );
    let r = cmd(&s, &id, json!({"cmd": "kill -TERM $$"})).await;
    assert_eq!(r["exit_code"], 128 + 15, "{r}");

    // argv: no shell, looked up in PATH.
    let (status, _) = put(&s, &id, "listed.txt", "l").await;
    assert_eq!(status, 200);
    let r = cmd(&s, &id, json!({"cmd": ["ls", "-la"]})).await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("listed.txt") && out.contains(" user "), "{r}");
    let r = cmd(
        &s,
        &id,
        json!({"cmd": ["printf", "%s|", "a b", "$HOME", "c;d"]}),
    )
    .await;
    assert_eq!(r["stdout"], "a b|$HOME|c;d|", "{r}");

    // stdin, cwd, env.
    let r = cmd(&s, &id, json!({"cmd": "cat", "stdin": "line1\nline2\n"})).await;
    assert_eq!(r["stdout"], "line1\nline2\n", "{r}");
    // Without stdin, stdin is empty (closed), not left open.
    let r = cmd(&s, &id, json!({"cmd": "cat; echo done", "timeout_s": 10})).await;
    assert_eq!(
        (&r["status"], &r["stdout"]),
        (&json!("ok"), &json!("done\n")),
        "{r}"
    );
    let r = cmd(
        &s,
        &id,
        json!({"cmd": ["wc", "-c"], "stdin": "x".repeat(300_000)}),
    )
    .await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "300000", "{r}");
    let (status, _) = put(&s, &id, "work/dir/f.txt", "f").await;
    assert_eq!(status, 200);
    let r = cmd(&s, &id, json!({"cmd": "pwd; ls", "cwd": "work/dir"})).await;
    assert_eq!(r["stdout"], "/home/user/work/dir\nf.txt\n", "{r}");
    let r = cmd(&s, &id, json!({"cmd": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(r["stdout"], "/tmp\n", "{r}");
    let r = cmd(&s, &id, json!({"cmd": "pwd -P"})).await;
    assert_eq!(r["stdout"], "/home/user\n", "{r}");
    let r = cmd(
        &s,
        &id,
        json!({"cmd": "echo \"$FOO|$HOME|$USER\"", "env": {"FOO": "bar baz"}}),
    )
    .await;
    assert_eq!(r["stdout"], "bar baz|/home/user|user\n", "{r}");

    // Timeouts.
    let started = Instant::now();
    let r = cmd(
        &s,
        &id,
        json!({"cmd": "echo before; sleep 30", "timeout_s": 1}),
    )
    .await;
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["exit_code"], Value::Null, "{r}");
    assert_eq!(r["stdout"], "before\n", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10), "{r}");

    // The whole tree goes: at a timeout, and when the command ends.
    assert!(sleeps_of_uid(uid).is_empty(), "{:?}", sleeps_of_uid(uid));
    let r = cmd(
        &s,
        &id,
        json!({"cmd": "sh -c 'sleep 4701 & sleep 4702 & sleep 4703'", "timeout_s": 1}),
    )
    .await;
    assert_eq!(r["status"], "timeout", "{r}");
    let r = cmd(&s, &id, json!({"cmd": "sleep 4704 & echo started"})).await;
    assert_eq!(
        (&r["status"], &r["exit_code"], &r["stdout"]),
        (&json!("ok"), &json!(0), &json!("started\n")),
        "{r}"
    );
    let r = cmd(
        &s,
        &id,
        json!({"cmd": "setsid sh -c 'sleep 4705' </dev/null >/dev/null 2>&1 & nohup sleep 4706 >/dev/null 2>&1 &"}),
    )
    .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(
        cellblock_tests::eventually(Duration::from_secs(5), || sleeps_of_uid(uid).is_empty()).await,
        "left running: {:?}",
        sleeps_of_uid(uid)
    );
    // (The check sees them while they run.)
    let s = Arc::new(s);
    let running = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move {
            cmd(
                &s,
                &id,
                json!({"cmd": "sleep 4707 & sleep 4708", "timeout_s": 4}),
            )
            .await
        })
    };
    assert!(
        cellblock_tests::eventually(Duration::from_secs(3), || sleeps_of_uid(uid).len() == 2).await,
        "{:?}",
        sleeps_of_uid(uid)
    );
    // Commands run beside the kernel, not behind it.
    let busy = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move { s.exec(&id, "import time\ntime.sleep(8)").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = cmd(&s, &id, json!({"cmd": "echo beside"})).await;
    assert_eq!(r["stdout"], "beside\n", "{r}");
    assert!(!busy.is_finished(), "the command waited for the kernel");
    let r = running.await.unwrap();
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(busy.await.unwrap()["status"], "ok");
    assert!(
        cellblock_tests::eventually(Duration::from_secs(5), || sleeps_of_uid(uid).is_empty()).await,
        "left running: {:?}",
        sleeps_of_uid(uid)
    );
    // The kernel was not touched.
    let r = run(&s, &id, "print(state)").await;
    assert_eq!(r["stdout"], "alive\n", "{r}");
    assert_eq!(r["kernel_restarted"], false, "{r}");
    assert_eq!(s.kernel_of(&id), kernel);

    // Files are shared with the kernel.
    run(&s, &id, "open('from_kernel.txt', 'w').write('k-data')").await;
    let out = sh(&s, &id, "cat from_kernel.txt; echo cmd-data > from_cmd.txt").await;
    assert_eq!(out, "k-data");
    let r = run(&s, &id, "print(open('from_cmd.txt').read(), end='')").await;
    assert_eq!(r["stdout"], "cmd-data\n", "{r}");
    let (status, body, _) = get(&s, &id, "from_cmd.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"cmd-data\n"[..]));

    // The same confinement as the kernel.
    let out = sh(
        &s,
        &id,
        "id -u; id -g; grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status",
    )
    .await;
    assert_eq!(
        out,
        "1000\n1000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
    let r = cmd(&s, &id, json!({"cmd": "cat /etc/shadow"})).await;
    assert_ne!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "", "{r}");
    let host_mark = std::env::temp_dir().join(format!("cb-hostmark-{}", unique()));
    std::fs::write(&host_mark, "HOSTONLY").unwrap();
    let r = cmd(
        &s,
        &id,
        json!({"cmd": ["cat", host_mark.display().to_string()]}),
    )
    .await;
    let _ = std::fs::remove_file(&host_mark);
    assert_ne!(r["exit_code"], 0, "{r}");
    assert!(!r.to_string().contains("HOSTONLY"), "{r}");
    let r = cmd(
        &s,
        &id,
        json!({"cmd": ["cat", host_home(&s, &id).join("listed.txt").display().to_string()]}),
    )
    .await;
    assert_ne!(
        r["exit_code"], 0,
        "the host path of the home is visible: {r}"
    );

    let out = sh(
        &s,
        &id,
        "python3 -c 'import sys; print(sys.base_prefix)'; ls -A /root 2>/dev/null; true",
    )
    .await;
    let mut lines = out.lines();
    let base_prefix = lines.next().unwrap().to_owned();
    let inside: Vec<&str> = lines.collect();
    let allowed = base_prefix
        .strip_prefix("/root/")
        .and_then(|r| r.split('/').next());
    for name in &inside {
        assert_eq!(Some(*name), allowed, "/root shows {name}: {out}");
    }
    for e in std::fs::read_dir("/root").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if Some(n.as_str()) != allowed {
            assert!(!inside.contains(&n.as_str()), "host /root/{n} visible");
        }
    }
    let host_init = std::fs::read("/proc/1/cmdline").unwrap();
    let r = cmd(&s, &id, json!({"cmd": "cat /proc/1/cmdline"})).await;
    let init = r["stdout"].as_str().unwrap();
    assert_ne!(init.as_bytes(), host_init.as_slice(), "host init visible");
    assert!(
        init.contains("__jail") || init.contains("cellblock_zygote"),
        "pid 1 is not the sandbox's init: {r}"
    );
    let out = sh(&s, &id, "ls /proc | grep -c '^[0-9]'").await;
    assert!(
        out.trim().parse::<u32>().unwrap() < 20,
        "host processes visible: {out}"
    );

    // Nothing of the commands is left: spec files, child cgroups.
    let run_dir = s.data_dir.join("run").join(simple_id(&id));
    let specs: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cmd-"))
        .collect();
    assert!(specs.is_empty(), "{specs:?}");
    let dirs = cgroup_dirs(&simple_id(&id));
    assert!(!dirs.is_empty());
    for d in dirs {
        let children: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cmd-"))
            .map(|e| e.path())
            .collect();
        assert!(children.is_empty(), "{children:?}");
    }

    // Bad input.
    let url = format!("/v1/sandboxes/{id}/commands");
    for body in [
        json!({}),
        json!({"cmd": ""}),
        json!({"cmd": "   "}),
        json!({"cmd": []}),
        json!({"cmd": 123}),
        json!({"cmd": "true", "bogus": 1}),
        json!({"cmd": "true", "timeout_s": -1}),
        json!({"cmd": "true", "timeout_s": 0}),
        json!({"cmd": "true", "env": {"1X": "a"}}),
        json!({"cmd": "true", "cwd": "a\u{0}b"}),
        json!({"cmd": ["echo", "a\u{0}b"]}),
    ] {
        let (status, v) = s.call(s.req(Method::POST, &url).json(&body)).await;
        assert_eq!((status, code(&v)), (422, "invalid_request"), "{body}: {v}");
    }
    let (status, v) = s
        .call(
            s.req(
                Method::POST,
                &format!("/v1/sandboxes/{}/commands", uuid::Uuid::new_v4()),
            )
            .json(&json!({"cmd": "true"})),
        )
        .await;
    assert_eq!((status, code(&v)), (404, "sandbox_not_found"), "{v}");
}
