//! `cellblock replay` and `cellblock export`: small clients of a running
//! server, over plain HTTP/1.1 (the API listens on loopback or behind a
//! proxy; no TLS here).

use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Sends one request and returns the status and the body.
pub fn request(
    server: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let host = server
        .strip_prefix("http://")
        .context("the server URL must start with http://")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    ));
    // Ask before sending a body, so a refusal (413 for too large) arrives
    // instead of a broken pipe.
    if !body.is_empty() {
        head.push_str("Expect: 100-continue\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    if !body.is_empty() {
        match interim(&mut stream, &mut raw)? {
            Some(status) if status != 100 => {
                // A final answer before the body: the server refused it.
                stream.read_to_end(&mut raw)?;
                return parse_response(&raw);
            }
            Some(_) => raw.clear(),
            None => {}
        }
        stream.write_all(body)?;
    }
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Waits up to a second for an interim (`100 Continue`) or early final
/// response; its status, or `None` if the server said nothing (it does not
/// do `Expect`). What was read stays in `raw`.
fn interim(stream: &mut TcpStream, raw: &mut Vec<u8>) -> anyhow::Result<Option<u16>> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    let mut buf = [0u8; 4096];
    let found = loop {
        if raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_read_timeout(None)?;
    if !found {
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(raw)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok()))
}

/// Splits a whole HTTP/1.1 response into status and body.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("a malformed HTTP response")?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a response without a status")?;
    let mut payload = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload)?;
    }
    Ok((status, payload))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a malformed chunk")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a malformed chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("a truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn api_error(status: u16, body: &[u8]) -> anyhow::Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match v["error"]["message"].as_str() {
        Some(m) => anyhow::anyhow!("the server answered {status}: {m}"),
        None => anyhow::anyhow!("the server answered {status}"),
    }
}

/// Options of `cellblock replay`.
pub struct Replay<'a> {
    pub server: &'a str,
    pub key: Option<&'a str>,
    pub notebook: &'a [u8],
    pub timeout_s: Option<f64>,
    pub stop_on_error: bool,
    pub keep: bool,
}

/// Replays a notebook; prints one line per cell and a summary. Returns
/// whether every cell ran without error and matched its recorded outputs.
pub fn replay(r: &Replay<'_>) -> anyhow::Result<bool> {
    let mut path = format!(
        "/v1/notebooks/execute?stop_on_error={}&keep={}",
        r.stop_on_error, r.keep
    );
    if let Some(t) = r.timeout_s {
        path.push_str(&format!("&timeout_s={t}"));
    }
    let (status, body) = request(r.server, "POST", &path, r.key, Some(r.notebook))?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    let v: Value = serde_json::from_slice(&body).context("the server's answer is not JSON")?;
    for c in v["cells"].as_array().into_iter().flatten() {
        let mut line = format!(
            "cell {:>3} {:<10} {}",
            c["index"],
            c["result"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("")
        );
        if let Some(e) = c["error"]["ename"].as_str() {
            line.push_str(&format!(" ({e})"));
        }
        for d in c["differences"].as_array().into_iter().flatten() {
            line.push_str(&format!("; {}", d.as_str().unwrap_or("")));
        }
        println!("{line}");
    }
    let s = &v["summary"];
    println!(
        "{} cells: {} identical, {} changed, {} errors, {} skipped",
        s["cells"], s["identical"], s["changed"], s["errors"], s["skipped"]
    );
    if v["kept"] == true {
        println!(
            "the replay sandbox is kept: {}",
            v["sandbox_id"].as_str().unwrap_or("?")
        );
    }
    Ok(s["changed"] == 0 && s["errors"] == 0)
}

/// Prints a sandbox's session as a notebook.
pub fn export(server: &str, key: Option<&str>, id: &str) -> anyhow::Result<Vec<u8>> {
    let (status, body) = request(
        server,
        "GET",
        &format!("/v1/sandboxes/{id}/notebook"),
        key,
        None,
    )?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    Ok(body)
}
