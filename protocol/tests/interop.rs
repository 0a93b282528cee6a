//! Signature interoperability with the reference implementation,
//! `jupyter_client.session.Session`, run through `$CELLBLOCK_TEST_PYTHON`.
//!
//! Frames cross the process boundary as JSON lists of hex strings, and the
//! key as hex, so arbitrary bytes survive the trip.

mod common;

use bytes::Bytes;
use cellblock_protocol::message::{
    Comm, DisplayData, ExecuteRequest, InputReply, JsonMap, Message, Shutdown, Stream,
};
use cellblock_protocol::wire::{RawMessage, DELIMITER};
use cellblock_protocol::{Content, Limits, Signer, WireError};
use common::{run_python, Rng};
use serde_json::{json, Value};
use std::time::Duration;

const PY_TIMEOUT: Duration = Duration::from_secs(120);

fn to_hex_list(frames: &[Bytes]) -> Value {
    Value::Array(
        frames
            .iter()
            .map(|f| Value::String(hex::encode(f)))
            .collect(),
    )
}

fn from_hex_list(v: &Value) -> Vec<Bytes> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list of hex frames, got {v}"))
        .iter()
        .map(|f| {
            let s = f
                .as_str()
                .unwrap_or_else(|| panic!("frame is not a string: {f}"));
            Bytes::from(hex::decode(s).unwrap_or_else(|e| panic!("frame {s:?} is not hex: {e}")))
        })
        .collect()
}

/// A key of random bytes, including non-ASCII ones: `Session` and `Signer`
/// both take the key as raw bytes.
fn random_key(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let len = 1 + rng.below(80);
    rng.bytes(len)
}

/// Runs `script` with the key as argv[1] and `input` on stdin; panics with
/// Python's stderr unless it exits 0. Returns stdout parsed as JSON.
fn python_json(script: &str, key: &[u8], input: &Value) -> Value {
    let out = run_python(
        script,
        &[&hex::encode(key)],
        input.to_string().as_bytes(),
        PY_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("python stdout is not JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Python signs a set of messages with `Session.serialize` and describes each.
const PY_SIGN: &str = r#"
import json, sys
from jupyter_client.session import Session

key = bytes.fromhex(sys.argv[1])
s = Session(key=key, username="py-user")
parent = s.msg("execute_request", content={"code": "parent"})

specs = [
    ("execute_request", {"code": "print('h\u00e9llo \u2603')\nx = {'a': [1, 2]}", "silent": False,
      "store_history": True, "user_expressions": {"e": "x"}, "allow_stdin": False,
      "stop_on_error": True}, None, {}, [], []),
    ("stream", {"name": "stdout", "text": "line 1\nline \u00e9 \U0001F600\n"}, parent,
      {"note": [1, None, True]}, [b"ident-a", b"\x00\xff\x10binary"], []),
    ("execute_reply", {"status": "ok", "execution_count": 7, "user_expressions": {},
      "payload": []}, parent, {"started": "2026-01-01T00:00:00Z"}, [b"one"], []),
    ("display_data", {"data": {"text/plain": "<obj>", "image/png": "iVBORw0KGgo="},
      "metadata": {"image/png": {"width": 3}}, "transient": {"display_id": "d-1"}}, parent,
      {}, [], [b"\x00\x01buffer", b""]),
    ("error", {"ename": "ZeroDivisionError", "evalue": "division by zero",
      "traceback": ["\x1b[0;31mTraceback\x1b[0m", "1/0"]}, parent, {}, [], []),
    ("debug_event", {"seq": 3, "type": "event", "event": "stopped",
      "body": {"reason": "breakpoint", "threadId": 1}}, None, {}, [], []),
]

out = []
for msg_type, content, par, metadata, idents, buffers in specs:
    msg = s.msg(msg_type, content=content, parent=par, metadata=metadata)
    frames = s.serialize(msg, ident=idents) + buffers
    out.append({
        "frames": [f.hex() for f in frames],
        "msg_id": msg["header"]["msg_id"],
        "msg_type": msg_type,
        "session": s.session,
        "parent_msg_id": par["header"]["msg_id"] if par else None,
        "metadata": metadata,
        "content": content,
        "idents": [i.hex() for i in idents],
        "buffers": [b.hex() for b in buffers],
    })
print(json.dumps(out))
"#;

#[test]
fn python_signed_messages_verify_in_rust_and_tampering_is_caught() {
    let key = random_key(0x5157_0001);
    let signer = Signer::new(&key).expect("non-empty key");
    let described = python_json(PY_SIGN, &key, &Value::Null);
    let described = described.as_array().expect("a list of messages");
    assert_eq!(described.len(), 6, "python described every message");

    let limits = Limits::default();
    for d in described {
        let what = d["msg_type"].as_str().expect("msg_type").to_owned();
        let frames = from_hex_list(&d["frames"]);

        // The raw split and the signature check on their own.
        let raw = RawMessage::from_frames(frames.clone(), &limits)
            .unwrap_or_else(|e| panic!("{what}: python frames do not split: {e}"));
        raw.verify(&signer)
            .unwrap_or_else(|e| panic!("{what}: python signature rejected: {e}"));

        // The full decode, compared field by field with what Python sent.
        let (idents, msg) = Message::from_frames(frames.clone(), &signer, &limits)
            .unwrap_or_else(|e| panic!("{what}: python message rejected: {e}"));
        assert_eq!(idents, from_hex_list(&d["idents"]), "{what}: idents");
        assert_eq!(msg.header.msg_id, d["msg_id"], "{what}: msg_id");
        assert_eq!(msg.msg_type(), what, "{what}: msg_type");
        assert_eq!(msg.content.msg_type(), what, "{what}: content variant");
        assert_eq!(msg.header.session, d["session"], "{what}: session");
        assert_eq!(msg.header.username, "py-user", "{what}: username");
        assert_eq!(
            msg.parent_msg_id(),
            d["parent_msg_id"].as_str(),
            "{what}: parent msg_id"
        );
        assert_eq!(
            Value::Object(msg.metadata.clone()),
            d["metadata"],
            "{what}: metadata"
        );
        assert_eq!(msg.content.to_value(), d["content"], "{what}: content");
        assert_eq!(msg.buffers, from_hex_list(&d["buffers"]), "{what}: buffers");

        // The same frames under another key are refused.
        let other = Signer::new(b"not the key").expect("non-empty key");
        assert_eq!(
            Message::from_frames(frames.clone(), &other, &limits).map(|_| ()),
            Err(WireError::BadSignature),
            "{what}: accepted under the wrong key"
        );

        // Tampering with any signed frame is caught: byte flips at the start,
        // middle and end, a byte removed, and a byte appended. Appending a
        // space keeps the JSON valid, so only the signature can catch it.
        let delim = idents.len();
        for index in delim + 1..delim + 6 {
            let original = frames[index].clone();
            let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
            for pos in [0, original.len() / 2, original.len().saturating_sub(1)] {
                if pos < original.len() {
                    let mut v = original.to_vec();
                    v[pos] ^= 0x01;
                    variants.push((format!("bit flip at {pos}"), v));
                }
            }
            if !original.is_empty() {
                variants.push((
                    "last byte removed".into(),
                    original[..original.len() - 1].to_vec(),
                ));
            }
            let mut appended = original.to_vec();
            appended.push(b' ');
            variants.push(("space appended".into(), appended));

            for (how, bytes) in variants {
                let mut tampered = frames.clone();
                tampered[index] = Bytes::from(bytes);
                let raw = RawMessage::from_frames(tampered.clone(), &limits)
                    .expect("tampering keeps the frame count");
                let verdict = raw.verify(&signer);
                let full = Message::from_frames(tampered, &signer, &limits).map(|_| ());
                let expected_kinds: &[WireError] = if index == delim + 1 {
                    &[WireError::BadSignature, WireError::BadSignatureEncoding]
                } else {
                    &[WireError::BadSignature]
                };
                for result in [verdict, full] {
                    match result {
                        Err(e) if expected_kinds.contains(&e) => {}
                        other => panic!(
                            "{what}: frame {index} with {how} gave {other:?}, \
                             expected one of {expected_kinds:?}"
                        ),
                    }
                }
            }
        }
    }
}

/// Python checks Rust-signed messages: `Session.sign` must give our signature,
/// `Session.deserialize` must accept the frames, and what it decodes must equal
/// what Rust says it sent. Exits 1 listing every mismatch.
const PY_CHECK: &str = r#"
import json, sys
from jupyter_client.session import Session

DELIM = b"<IDS|MSG>"
key = bytes.fromhex(sys.argv[1])
cases = json.load(sys.stdin)
problems = []
for n, case in enumerate(cases):
    frames = [bytes.fromhex(f) for f in case["frames"]]
    exp = case["expect"]
    where = "case %d (%s)" % (n, exp["msg_type"])
    try:
        i = frames.index(DELIM)
    except ValueError:
        problems.append(where + ": no delimiter")
        continue
    if [f.hex() for f in frames[:i]] != exp["idents"]:
        problems.append(where + ": idents differ")
    s = Session(key=key)
    ours = s.sign(frames[i + 2:i + 6])
    if ours != frames[i + 1]:
        problems.append(where + ": signature %r, python computes %r" % (frames[i + 1], ours))
        continue
    try:
        msg = s.deserialize(frames[i + 1:])
    except Exception as e:
        problems.append(where + ": deserialize failed: %r" % (e,))
        continue
    got = {
        "msg_id": msg["header"]["msg_id"],
        "msg_type": msg["msg_type"],
        "session": msg["header"]["session"],
        "version": msg["header"]["version"],
        "parent_msg_id": msg["parent_header"].get("msg_id"),
        "metadata": msg["metadata"],
        "content": msg["content"],
        "buffers": [bytes(b).hex() for b in msg["buffers"]],
        "idents": exp["idents"],
    }
    for k, v in exp.items():
        if got[k] != v:
            problems.append(where + ": %s is %r, rust sent %r" % (k, got[k], v))
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"checked": len(cases)}))
"#;

fn rust_messages() -> Vec<(Message, Vec<Bytes>)> {
    let session = "rust-session-\u{e9}";
    let user = "cellblock";
    let mut out = Vec::new();

    let first = Message::new(
        Content::ExecuteRequest(ExecuteRequest::new(
            "for i in range(3):\n    print(f'h\u{e9}llo {i} \u{2603} \u{1F600}')\n",
        )),
        session,
        user,
    );
    out.push((first.clone(), vec![]));

    out.push((
        Message::new(Content::KernelInfoRequest, session, user),
        vec![],
    ));

    let mut reply = Message::new(
        Content::InputReply(InputReply {
            value: "typed \"quoted\" \\ back\u{0}slash".into(),
        }),
        session,
        user,
    );
    reply.parent_header = serde_json::to_value(&first.header).expect("header serialises");
    out.push((reply, vec![Bytes::from_static(b"stdin-ident")]));

    let mut data = JsonMap::new();
    data.insert("method".into(), json!("update"));
    data.insert(
        "state".into(),
        json!({"value": 3, "nested": [1, 2.5, null, "x"]}),
    );
    let mut comm = Message::new(
        Content::CommMsg(Comm {
            comm_id: "c0ffee".into(),
            target_name: None,
            data,
            extra: JsonMap::new(),
        }),
        session,
        user,
    );
    comm.metadata
        .insert("buffer_paths".into(), json!([["state", "b"]]));
    comm.buffers = vec![
        Bytes::from_static(b"\x00\x01\x02\xff"),
        Bytes::new(),
        Bytes::from(vec![0xAB; 4096]),
    ];
    comm.parent_header = serde_json::to_value(&first.header).expect("header serialises");
    out.push((
        comm,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"\xfe\xff")],
    ));

    out.push((
        Message::new(
            Content::ShutdownRequest(Shutdown {
                restart: true,
                extra: JsonMap::new(),
            }),
            session,
            user,
        ),
        vec![],
    ));

    let mut display_data = JsonMap::new();
    display_data.insert("text/plain".into(), json!("a\u{2028}b"));
    let mut transient = JsonMap::new();
    transient.insert("display_id".into(), json!("disp"));
    out.push((
        Message::new(
            Content::DisplayData(DisplayData {
                data: display_data,
                metadata: JsonMap::new(),
                transient: Some(transient),
            }),
            session,
            user,
        ),
        vec![],
    ));

    out.push((
        Message::new(
            Content::Stream(Stream {
                name: "stderr".into(),
                text: "\t\r\n\u{7f}\u{1b}[31mred".into(),
            }),
            session,
            user,
        ),
        vec![],
    ));

    out.push((
        Message::new(
            Content::Unknown {
                msg_type: "comm_info_request".into(),
                content: json!({"target_name": "jupyter.widget", "deep": {"a": [[[]]]}}),
            },
            session,
            user,
        ),
        vec![],
    ));
    out
}

#[test]
fn rust_signed_messages_verify_in_python() {
    let key = random_key(0x5157_0002);
    let signer = Signer::new(&key).expect("non-empty key");
    let cases: Vec<Value> = rust_messages()
        .into_iter()
        .map(|(msg, idents)| {
            let frames = msg.to_frames(&signer, &idents);
            json!({
                "frames": to_hex_list(&frames),
                "expect": {
                    "msg_id": msg.header.msg_id,
                    "msg_type": msg.msg_type(),
                    "session": msg.header.session,
                    "version": msg.header.version,
                    "parent_msg_id": msg.parent_msg_id(),
                    "metadata": msg.metadata,
                    "content": msg.content.to_value(),
                    "buffers": msg.buffers.iter().map(hex::encode).collect::<Vec<_>>(),
                    "idents": idents.iter().map(hex::encode).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    let n = cases.len();
    let result = python_json(PY_CHECK, &key, &Value::Array(cases));
    assert_eq!(result["checked"], n, "python checked every message");
}

#[test]
fn python_check_script_rejects_a_bad_signature() {
    // The checker above must be able to fail: the same message signed under
    // another key has to make it exit non-zero.
    let key = random_key(0x5157_0003);
    let wrong = Signer::new(b"some other key").expect("non-empty key");
    let (msg, idents) = rust_messages().remove(0);
    let frames = msg.to_frames(&wrong, &idents);
    let case = json!([{
        "frames": to_hex_list(&frames),
        "expect": {"msg_type": msg.msg_type(), "idents": []},
    }]);
    let out = run_python(
        PY_CHECK,
        &[&hex::encode(&key)],
        case.to_string().as_bytes(),
        PY_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "python accepted a message signed with the wrong key: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("python computes"),
        "unexpected failure: {stderr}"
    );
}

/// Python's verdict on each frame set: does `Session.deserialize` accept it?
const PY_VERDICT: &str = r#"
import json, sys
from jupyter_client.session import Session

DELIM = b"<IDS|MSG>"
key = bytes.fromhex(sys.argv[1])
verdicts = []
for case in json.load(sys.stdin):
    frames = [bytes.fromhex(f) for f in case]
    try:
        i = frames.index(DELIM)
        Session(key=key).deserialize(frames[i + 1:])
        verdicts.append(True)
    except Exception:
        verdicts.append(False)
print(json.dumps(verdicts))
"#;

#[test]
fn rust_and_python_agree_on_which_frames_are_valid() {
    let key = random_key(0x5157_0004);
    let signer = Signer::new(&key).expect("non-empty key");
    let (msg, _) = rust_messages().remove(3);
    let idents = vec![Bytes::from_static(b"route")];
    let base = msg.to_frames(&signer, &idents);
    let sig = 2; // idents(1), delimiter, signature
    assert_eq!(base[1].as_ref(), DELIMITER);

    let with = |index: usize, bytes: Vec<u8>| {
        let mut f = base.clone();
        f[index] = Bytes::from(bytes);
        f
    };
    let other_key = Signer::new(b"another key").expect("non-empty key");
    let mut variants: Vec<(&str, Vec<Bytes>)> = vec![
        ("untouched", base.clone()),
        ("no idents", base[1..].to_vec()),
        (
            "more idents",
            [vec![Bytes::from_static(b"x")], base.clone()].concat(),
        ),
        ("buffers dropped", base[..sig + 5].to_vec()),
        (
            "buffer appended",
            [base.clone(), vec![Bytes::from_static(b"extra")]].concat(),
        ),
        ("buffer changed", with(sig + 5, b"changed".to_vec())),
        (
            "signature uppercased",
            with(sig, base[sig].to_ascii_uppercase()),
        ),
        ("signature truncated", with(sig, base[sig][..63].to_vec())),
        (
            "signature extended",
            with(sig, [&base[sig][..], b"0"].concat()),
        ),
        ("signature empty", with(sig, Vec::new())),
        ("signature from another key", {
            let parts = [&base[3][..], &base[4][..], &base[5][..], &base[6][..]];
            with(sig, other_key.sign(parts).into_bytes())
        }),
        (
            "header space appended",
            with(3, [&base[3][..], b" "].concat()),
        ),
        ("parent header emptied", with(4, b"{}".to_vec())),
        ("metadata changed", with(5, b"{\"a\":1}".to_vec())),
        ("content changed", with(6, b"{}".to_vec())),
        ("content frame dropped", [&base[..6], &base[7..]].concat()),
        ("delimiter dropped", [&base[..1], &base[2..]].concat()),
        ("header and parent swapped", {
            let mut f = base.clone();
            f.swap(3, 4);
            f
        }),
    ];
    // Each signature bit flipped in turn: every one must be refused.
    for pos in 0..base[sig].len() {
        for bit in [0x01u8, 0x20] {
            let mut s = base[sig].to_vec();
            s[pos] ^= bit;
            variants.push(("signature byte flipped", with(sig, s)));
        }
    }

    let input = Value::Array(variants.iter().map(|(_, f)| to_hex_list(f)).collect());
    let python = python_json(PY_VERDICT, &key, &input);
    let python = python.as_array().expect("a list of verdicts");
    assert_eq!(python.len(), variants.len());
    assert_eq!(python[0], true, "python refused the untouched message");

    let mut disagreements = Vec::new();
    for ((what, frames), py) in variants.iter().zip(python) {
        let rust = Message::from_frames(frames.clone(), &signer, &Limits::default()).map(|_| ());
        if Some(rust.is_ok()) != py.as_bool() {
            let sig = String::from_utf8_lossy(frames.get(sig).map_or(&b""[..], |f| &f[..]));
            disagreements.push(format!(
                "{what}: python accepts: {py}, rust: {rust:?} (signature frame {sig:?})"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "rust and jupyter_client disagree:\n{}",
        disagreements.join("\n")
    );
}
