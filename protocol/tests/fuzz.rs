//! Fuzz-style tests of the decoders of untrusted frames.
//!
//! A deterministic xorshift PRNG generates thousands of frame sets: random
//! counts (zero included) of random bytes, real `<IDS|MSG>` delimiters in
//! random places, validly signed messages cut short at every frame count or
//! mutated byte by byte, and frames too many or too large for small
//! [`Limits`]. The decoders must never panic, and each result is checked
//! against an independent oracle.

mod common;

use bytes::Bytes;
use cellblock_protocol::message::{
    ClearOutput, Comm, DisplayData, ErrorContent, ExecuteInput, ExecuteReply, ExecuteRequest,
    ExecuteResult, Header, InputReply, InputRequest, JsonMap, Message, Shutdown, Status,
    StatusReply, Stream,
};
use cellblock_protocol::wire::{RawMessage, DELIMITER};
use cellblock_protocol::{Content, Limits, Signer, WireError};
use common::Rng;
use serde_json::{json, Value};

const KEY: &[u8] = b"fuzz-key-0123456789";

/// Every `msg_type` with a typed content, the two without content, and a few
/// unknown ones that must be kept as raw JSON.
const MSG_TYPES: &[&str] = &[
    "execute_request",
    "execute_reply",
    "status",
    "stream",
    "display_data",
    "update_display_data",
    "execute_result",
    "error",
    "execute_input",
    "clear_output",
    "input_request",
    "input_reply",
    "kernel_info_request",
    "kernel_info_reply",
    "interrupt_request",
    "interrupt_reply",
    "shutdown_request",
    "shutdown_reply",
    "comm_open",
    "comm_msg",
    "comm_close",
    "iopub_welcome",
    "debug_request",
    "",
    "<IDS|MSG>",
];

/// Field names used by the typed contents and the header, so random objects
/// hit real fields often.
const KEYS: &[&str] = &[
    "code",
    "silent",
    "store_history",
    "user_expressions",
    "allow_stdin",
    "stop_on_error",
    "status",
    "execution_count",
    "execution_state",
    "name",
    "text",
    "data",
    "metadata",
    "transient",
    "display_id",
    "ename",
    "evalue",
    "traceback",
    "wait",
    "prompt",
    "password",
    "value",
    "protocol_version",
    "implementation",
    "implementation_version",
    "language_info",
    "banner",
    "restart",
    "comm_id",
    "target_name",
    "msg_id",
    "msg_type",
    "session",
    "username",
    "date",
    "version",
    "",
    "\u{0}",
    "é\u{2603}",
];

fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        " ",
        "\"",
        "\\",
        "\n",
        "\t",
        "\u{0}",
        "\u{1f}",
        "\u{7f}",
        "é",
        "\u{2028}",
        "\u{fffd}",
        "\u{1F600}",
        "<IDS|MSG>",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "null",
    ];
    let len = rng.below(12);
    (0..len).map(|_| *rng.pick(PIECES)).collect()
}

/// Numbers whose JSON text round-trips exactly, so equality checks are fair.
fn random_number(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!(rng.next_u64() as i64),
        1 => json!(rng.next_u64()),
        2 => json!(rng.below(100)),
        3 => json!(-(rng.below(100) as i64)),
        _ => json!(*rng.pick(&[0.5, -1.25, 3.0e-3, 1.0e300, 0.0])),
    }
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    let pick = if depth == 0 {
        rng.below(5)
    } else {
        rng.below(7)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => random_number(rng),
        3 | 4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(random_object(rng, depth - 1)),
    }
}

/// A value of the type a field usually has, so typed decodes often succeed.
fn plausible(rng: &mut Rng, key: &str, depth: usize) -> Value {
    if rng.chance(1, 5) {
        return random_json(rng, depth);
    }
    match key {
        "silent" | "store_history" | "allow_stdin" | "stop_on_error" | "wait" | "password"
        | "restart" => Value::Bool(rng.chance(1, 2)),
        "execution_count" => {
            if rng.chance(1, 4) {
                Value::Null
            } else {
                json!(rng.below(1000))
            }
        }
        "traceback" => Value::Array(
            (0..rng.below(4))
                .map(|_| Value::String(random_string(rng)))
                .collect(),
        ),
        "user_expressions" | "data" | "metadata" | "transient" | "language_info" => {
            Value::Object(random_object(rng, depth))
        }
        "date" => random_json(rng, 0),
        _ => Value::String(random_string(rng)),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> JsonMap {
    let mut map = JsonMap::new();
    for _ in 0..rng.below(7) {
        let key = rng.pick(KEYS).to_string();
        let value = plausible(rng, &key, depth.min(2));
        map.insert(key, value);
    }
    map
}

/// A header object that usually parses, sometimes with a known `msg_type`.
fn random_header_json(rng: &mut Rng) -> Value {
    let mut map = random_object(rng, 1);
    if rng.chance(9, 10) {
        map.insert("msg_id".into(), Value::String(random_string(rng)));
    }
    if rng.chance(9, 10) {
        let t = if rng.chance(3, 4) {
            rng.pick(MSG_TYPES).to_string()
        } else {
            random_string(rng)
        };
        map.insert("msg_type".into(), Value::String(t));
    }
    Value::Object(map)
}

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.below(max + 1);
    rng.bytes(len)
}

/// Random bytes, or JSON text, or JSON text with a few bytes changed.
fn random_frame_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => random_bytes(rng, 48),
        1 => random_json(rng, 3).to_string().into_bytes(),
        2 => Value::Object(random_object(rng, 2))
            .to_string()
            .into_bytes(),
        _ => {
            let mut v = Value::Object(random_object(rng, 2))
                .to_string()
                .into_bytes();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(v.len());
                v[i] = rng.byte();
            }
            v
        }
    }
}

/// A typed content with random field values, for building valid messages.
fn random_content(rng: &mut Rng) -> Content {
    let s = |rng: &mut Rng| random_string(rng);
    let count = |rng: &mut Rng| rng.chance(2, 3).then(|| rng.below(500) as i64);
    let obj = |rng: &mut Rng| random_object(rng, 2);
    match rng.below(17) {
        0 => Content::ExecuteRequest(ExecuteRequest {
            code: s(rng),
            silent: rng.chance(1, 2),
            store_history: rng.chance(1, 2),
            user_expressions: obj(rng),
            allow_stdin: rng.chance(1, 2),
            stop_on_error: rng.chance(1, 2),
        }),
        1 => Content::ExecuteReply(ExecuteReply {
            status: s(rng),
            execution_count: count(rng),
            extra: JsonMap::new(),
        }),
        2 => Content::Status(Status {
            execution_state: s(rng),
        }),
        3 => Content::Stream(Stream {
            name: s(rng),
            text: s(rng),
        }),
        4 => Content::DisplayData(DisplayData {
            data: obj(rng),
            metadata: obj(rng),
            transient: rng.chance(1, 2).then(|| obj(rng)),
        }),
        5 => Content::UpdateDisplayData(DisplayData {
            data: obj(rng),
            metadata: obj(rng),
            transient: rng.chance(1, 2).then(|| obj(rng)),
        }),
        6 => Content::ExecuteResult(ExecuteResult {
            execution_count: count(rng),
            data: obj(rng),
            metadata: obj(rng),
            transient: rng.chance(1, 2).then(|| obj(rng)),
        }),
        7 => Content::Error(ErrorContent {
            ename: s(rng),
            evalue: s(rng),
            traceback: (0..rng.below(4)).map(|_| s(rng)).collect(),
        }),
        8 => Content::ExecuteInput(ExecuteInput {
            code: s(rng),
            execution_count: count(rng),
        }),
        9 => Content::ClearOutput(ClearOutput {
            wait: rng.chance(1, 2),
        }),
        10 => Content::InputRequest(InputRequest {
            prompt: s(rng),
            password: rng.chance(1, 2),
        }),
        11 => Content::InputReply(InputReply { value: s(rng) }),
        12 => Content::KernelInfoRequest,
        13 => Content::InterruptReply(StatusReply {
            status: s(rng),
            extra: JsonMap::new(),
        }),
        14 => Content::ShutdownRequest(Shutdown {
            restart: rng.chance(1, 2),
            extra: JsonMap::new(),
        }),
        15 => Content::CommMsg(Comm {
            comm_id: s(rng),
            target_name: rng.chance(1, 2).then(|| s(rng)),
            data: obj(rng),
            extra: JsonMap::new(),
        }),
        _ => Content::Unknown {
            msg_type: format!("x_{}", rng.below(1000)),
            content: random_json(rng, 3),
        },
    }
}

/// A validly signed message with 0–3 idents and 0–3 buffers.
fn random_valid(rng: &mut Rng, signer: &Signer) -> (Vec<Bytes>, Message, Vec<Bytes>) {
    let mut msg = Message::new(
        random_content(rng),
        &random_string(rng),
        &random_string(rng),
    );
    if rng.chance(1, 2) {
        let parent_type = *rng.pick(MSG_TYPES);
        let parent = Header::new(parent_type, "parent-session", "u");
        msg.parent_header = serde_json::to_value(parent).expect("header serialises");
    }
    msg.metadata = random_object(rng, 2);
    msg.buffers = (0..rng.below(4))
        .map(|_| Bytes::from(random_bytes(rng, 40)))
        .collect();
    let idents: Vec<Bytes> = (0..rng.below(4))
        .map(|_| Bytes::from(random_bytes(rng, 20)))
        .filter(|i| i.as_ref() != DELIMITER)
        .collect();
    let frames = msg.to_frames(signer, &idents);
    (idents, msg, frames)
}

fn decode(frames: &[Bytes], signer: &Signer) -> Result<(Vec<Bytes>, Message), WireError> {
    Message::from_frames(frames.to_vec(), signer, &Limits::default())
}

/// What `RawMessage::from_frames` must return for `frames` under `limits`,
/// worked out independently: caps first, then the first delimiter, then at
/// least five frames after it.
fn raw_oracle(frames: &[Bytes], limits: &Limits) -> Result<(), WireError> {
    if frames.len() > limits.max_frames {
        return Err(WireError::TooManyFrames(frames.len(), limits.max_frames));
    }
    let total: usize = frames.iter().map(|f| f.len()).sum();
    if total > limits.max_message_bytes {
        return Err(WireError::TooLarge(total, limits.max_message_bytes));
    }
    let mut pos = None;
    for (i, f) in frames.iter().enumerate() {
        if f.as_ref() == DELIMITER {
            pos = Some(i);
            break;
        }
    }
    let Some(pos) = pos else {
        return Err(WireError::NoDelimiter);
    };
    let after = frames.len() - pos - 1;
    if after < 5 {
        return Err(WireError::Truncated(after));
    }
    Ok(())
}

fn check_raw(frames: &[Bytes], limits: &Limits, case: &str) {
    let got = RawMessage::from_frames(frames.to_vec(), limits);
    let want = raw_oracle(frames, limits);
    match (&got, &want) {
        (Ok(raw), Ok(())) => {
            // The split must put every frame back where it came from.
            let mut joined = raw.idents.clone();
            joined.push(Bytes::from_static(DELIMITER));
            joined.push(raw.signature.clone());
            joined.extend(raw.signed_parts().iter().map(|p| Bytes::copy_from_slice(p)));
            joined.extend(raw.buffers.iter().cloned());
            assert_eq!(joined, frames, "{case}: split does not reassemble");
            assert!(
                !raw.idents.iter().any(|i| i.as_ref() == DELIMITER),
                "{case}: a delimiter ended up among the idents"
            );
        }
        (Err(g), Err(w)) => assert_eq!(g, w, "{case}: wrong error"),
        _ => panic!("{case}: got {got:?}, oracle says {want:?}"),
    }
}

#[test]
fn random_frame_sets_never_panic_and_match_the_oracle() {
    let mut rng = Rng::new(0xF022_0001);
    let signer = Signer::new(KEY).expect("non-empty key");
    let small = Limits {
        max_frames: 6,
        max_message_bytes: 96,
    };
    let mut with_delimiter_ok = 0;
    for case in 0..6000 {
        let count = rng.below(14);
        let mut frames: Vec<Bytes> = (0..count)
            .map(|_| {
                let body = match rng.below(7) {
                    0 => DELIMITER.to_vec(),
                    1 => hex::encode(rng.bytes(32)).into_bytes(),
                    // Oversized against the small limits below.
                    2 if rng.chance(1, 4) => {
                        let len = 200 + rng.below(4000);
                        rng.bytes(len)
                    }
                    _ => random_frame_body(&mut rng),
                };
                Bytes::from(body)
            })
            .collect();
        if !frames.is_empty() && rng.chance(1, 2) {
            let at = rng.below(frames.len() + 1);
            frames.insert(at, Bytes::from_static(DELIMITER));
        }
        let name = format!("random case {case} ({} frames)", frames.len());
        check_raw(&frames, &Limits::default(), &name);
        check_raw(&frames, &small, &format!("{name}, small limits"));
        if raw_oracle(&frames, &Limits::default()).is_ok() {
            with_delimiter_ok += 1;
        }
        // No random frame set carries a valid signature.
        let full = decode(&frames, &signer);
        assert!(full.is_err(), "{name}: random frames decoded: {full:?}");
        let full_small = Message::from_frames(frames, &signer, &small);
        assert!(full_small.is_err(), "{name}: random frames decoded");
    }
    // The generator must actually reach the signature check often.
    assert!(
        with_delimiter_ok > 1000,
        "only {with_delimiter_ok} random cases got past the framing checks"
    );
}

#[test]
fn valid_messages_decode_and_every_truncation_fails() {
    let mut rng = Rng::new(0x7A11_0002);
    let signer = Signer::new(KEY).expect("non-empty key");
    for case in 0..400 {
        let (idents, msg, frames) = random_valid(&mut rng, &signer);
        let n_idents = idents.len();
        let first_buffer = n_idents + 6;

        // Untouched: decodes to exactly what was encoded.
        let (got_idents, got) = decode(&frames, &signer)
            .unwrap_or_else(|e| panic!("case {case}: valid message rejected: {e}"));
        assert_eq!(got_idents, idents, "case {case}: idents");
        assert_eq!(got, msg, "case {case}: message round trip");

        // Cut at every frame count from the end. Dropping only buffers is
        // still a valid message (buffers are not signed); anything shorter
        // must be refused.
        for keep in 0..frames.len() {
            let cut = &frames[..keep];
            check_raw(
                cut,
                &Limits::default(),
                &format!("case {case} cut to {keep}"),
            );
            let result = decode(cut, &signer);
            if keep >= first_buffer {
                let (_, m) = result.unwrap_or_else(|e| {
                    panic!("case {case}: dropping buffers down to {keep} frames failed: {e}")
                });
                assert_eq!(
                    m.buffers,
                    &frames[first_buffer..keep],
                    "case {case}: buffers"
                );
            } else {
                let err = result.expect_err("truncated message decoded");
                let want = if keep <= n_idents {
                    WireError::NoDelimiter
                } else {
                    WireError::Truncated(keep - n_idents - 1)
                };
                assert_eq!(err, want, "case {case}: cut to {keep} frames");
            }
        }

        // Cut at every frame count from the front: losing idents is fine,
        // losing the delimiter or anything after it is not.
        for skip in 1..=frames.len() {
            let result = decode(&frames[skip..], &signer);
            if skip <= n_idents {
                let (ids, m) = result
                    .unwrap_or_else(|e| panic!("case {case}: dropping {skip} idents failed: {e}"));
                assert_eq!(ids, &idents[skip..], "case {case}: idents");
                assert_eq!(m, msg, "case {case}: message");
            } else {
                assert!(result.is_err(), "case {case}: front cut by {skip} decoded");
            }
        }

        // Caps: exactly at the limits passes, one below fails with the
        // error naming the actual numbers.
        let total: usize = frames.iter().map(|f| f.len()).sum();
        let exact = Limits {
            max_frames: frames.len(),
            max_message_bytes: total,
        };
        Message::from_frames(frames.clone(), &signer, &exact)
            .unwrap_or_else(|e| panic!("case {case}: refused at exactly its size: {e}"));
        let fewer_frames = Limits {
            max_frames: frames.len() - 1,
            ..exact
        };
        assert_eq!(
            Message::from_frames(frames.clone(), &signer, &fewer_frames).map(|_| ()),
            Err(WireError::TooManyFrames(frames.len(), frames.len() - 1)),
            "case {case}: frame cap"
        );
        let fewer_bytes = Limits {
            max_message_bytes: total - 1,
            ..exact
        };
        assert_eq!(
            Message::from_frames(frames.clone(), &signer, &fewer_bytes).map(|_| ()),
            Err(WireError::TooLarge(total, total - 1)),
            "case {case}: byte cap"
        );
    }
}

#[test]
fn every_byte_of_the_signed_frames_is_protected() {
    let mut rng = Rng::new(0xB17E_0003);
    let signer = Signer::new(KEY).expect("non-empty key");
    let mut mutations = 0usize;
    for case in 0..60 {
        let (idents, msg, frames) = random_valid(&mut rng, &signer);
        let delim = idents.len();
        for index in 0..frames.len() {
            for pos in 0..frames[index].len() {
                let mut bytes = frames[index].to_vec();
                let flip = 1 + rng.below(255) as u8;
                bytes[pos] ^= flip;
                let mut mutated = frames.clone();
                mutated[index] = Bytes::from(bytes);
                mutations += 1;
                let result = decode(&mutated, &signer);
                let what = format!("case {case}: frame {index} byte {pos} ^ {flip:#04x}");
                if index < delim {
                    // Idents are routing only: the message is unchanged.
                    let (ids, m) = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(ids[index], mutated[index], "{what}");
                    assert_eq!(m, msg, "{what}");
                } else if index > delim + 5 {
                    // Buffers are not signed (as in Jupyter): delivered as is.
                    let (_, m) = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(m.buffers[index - delim - 6], mutated[index], "{what}");
                } else {
                    let err = result.expect_err(&what);
                    let allowed: &[WireError] = match index - delim {
                        0 => &[WireError::NoDelimiter],
                        1 => &[WireError::BadSignature, WireError::BadSignatureEncoding],
                        _ => &[WireError::BadSignature],
                    };
                    assert!(allowed.contains(&err), "{what}: got {err:?}");
                }
            }
        }

        // Inserting or deleting a byte in a signed frame is caught too.
        for index in delim + 2..delim + 6 {
            let original = &frames[index];
            for pos in 0..=original.len() {
                let mut ins = original.to_vec();
                ins.insert(pos, rng.byte());
                let mut mutated = frames.clone();
                mutated[index] = Bytes::from(ins);
                assert_eq!(
                    decode(&mutated, &signer).map(|_| ()),
                    Err(WireError::BadSignature),
                    "case {case}: byte inserted in frame {index} at {pos}"
                );
                if pos < original.len() {
                    let mut del = original.to_vec();
                    del.remove(pos);
                    let mut mutated = frames.clone();
                    mutated[index] = Bytes::from(del);
                    assert_eq!(
                        decode(&mutated, &signer).map(|_| ()),
                        Err(WireError::BadSignature),
                        "case {case}: byte removed from frame {index} at {pos}"
                    );
                }
            }
        }

        // The signature re-cased (as uppercase hex) is not the signature.
        let mut upper = frames.clone();
        upper[delim + 1] = Bytes::from(frames[delim + 1].to_ascii_uppercase());
        if upper[delim + 1] != frames[delim + 1] {
            assert_eq!(
                decode(&upper, &signer).map(|_| ()),
                Err(WireError::BadSignatureEncoding),
                "case {case}: uppercase signature"
            );
        }

        // Two differing signed frames swapped: refused.
        for (a, b) in [(2, 3), (3, 4), (4, 5), (2, 5)] {
            let (a, b) = (delim + a, delim + b);
            if frames[a] != frames[b] {
                let mut swapped = frames.clone();
                swapped.swap(a, b);
                assert_eq!(
                    decode(&swapped, &signer).map(|_| ()),
                    Err(WireError::BadSignature),
                    "case {case}: frames {a} and {b} swapped"
                );
            }
        }

        // Another key: refused.
        let other = Signer::new(b"fuzz-key-0123456788").expect("non-empty key");
        assert_eq!(
            Message::from_frames(frames.clone(), &other, &Limits::default()).map(|_| ()),
            Err(WireError::BadSignature),
            "case {case}: wrong key"
        );
    }
    assert!(mutations > 10_000, "only {mutations} mutations tried");
}

#[test]
fn signed_garbage_never_panics_and_fails_only_on_bad_json() {
    // Frames that pass the signature check but carry arbitrary bytes, as a
    // kernel holding the key could send. The decode must succeed exactly when
    // each frame parses as its type.
    let mut rng = Rng::new(0x6A2B_0004);
    let signer = Signer::new(KEY).expect("non-empty key");
    let mut decoded = 0;
    for case in 0..5000 {
        let header = if rng.chance(3, 4) {
            random_header_json(&mut rng).to_string().into_bytes()
        } else {
            random_frame_body(&mut rng)
        };
        let parent = if rng.chance(3, 4) {
            random_json(&mut rng, 2).to_string().into_bytes()
        } else {
            random_frame_body(&mut rng)
        };
        let metadata = if rng.chance(3, 4) {
            Value::Object(random_object(&mut rng, 2))
                .to_string()
                .into_bytes()
        } else {
            random_frame_body(&mut rng)
        };
        let content = random_frame_body(&mut rng);
        let idents: Vec<Bytes> = (0..rng.below(3))
            .map(|_| Bytes::from(random_bytes(&mut rng, 8)))
            .filter(|i| i.as_ref() != DELIMITER)
            .collect();
        let frames = RawMessage::sign_frames(
            &signer,
            &idents,
            Bytes::from(header.clone()),
            Bytes::from(parent.clone()),
            Bytes::from(metadata.clone()),
            Bytes::from(content.clone()),
            &[],
        );
        let result = decode(&frames, &signer);

        let header_ok = serde_json::from_slice::<Header>(&header).ok();
        let parent_ok = serde_json::from_slice::<Value>(&parent).is_ok();
        let metadata_ok = serde_json::from_slice::<JsonMap>(&metadata).is_ok();
        let content_ok = header_ok
            .as_ref()
            .map(|h| Content::decode(&h.msg_type, &content).is_ok());
        let expect_ok = parent_ok && metadata_ok && content_ok == Some(true);
        match (&result, expect_ok) {
            (Ok((ids, m)), true) => {
                decoded += 1;
                assert_eq!(ids, &idents, "case {case}: idents");
                let h = header_ok.expect("header parsed");
                assert_eq!(m.header, h, "case {case}: header");
                assert_eq!(
                    m.msg_type(),
                    m.content.msg_type(),
                    "case {case}: content type"
                );
            }
            (Err(WireError::BadJson { .. }), false) => {}
            _ => panic!(
                "case {case}: got {result:?}, expected ok={expect_ok} (header {:?})",
                String::from_utf8_lossy(&header)
            ),
        }
    }
    assert!(
        decoded > 200,
        "only {decoded} signed random messages decoded"
    );
}

#[test]
fn content_decode_never_panics_and_round_trips() {
    let mut rng = Rng::new(0xC0DE_0005);
    let mut ok = 0usize;
    for &msg_type in MSG_TYPES {
        for case in 0..1500 {
            let bytes = match rng.below(4) {
                0 => random_bytes(&mut rng, 64),
                1 => random_json(&mut rng, 3).to_string().into_bytes(),
                _ => random_frame_body(&mut rng),
            };
            let Ok(content) = Content::decode(msg_type, &bytes) else {
                continue;
            };
            ok += 1;
            let what = format!(
                "{msg_type:?} case {case}: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(content.msg_type(), msg_type, "{what}: msg_type");
            // What we would send again decodes to the same content.
            let again = Content::decode(msg_type, &content.to_json_bytes())
                .unwrap_or_else(|e| panic!("{what}: re-encoded content fails: {e}"));
            assert_eq!(again, content, "{what}: round trip");
            // Unknown types are passed on untouched.
            if let Content::Unknown { content: v, .. } = &content {
                let original: Value = serde_json::from_slice(&bytes).expect("decoded as JSON");
                assert_eq!(v, &original, "{what}: unknown content changed");
            }
        }
    }
    assert!(ok > 3000, "only {ok} random contents decoded");
}
