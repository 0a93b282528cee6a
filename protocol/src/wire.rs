//! The Jupyter wire format: frames, signatures and caps.
//!
//! A message on the wire is
//! `[idents…, "<IDS|MSG>", hex-hmac, header, parent_header, metadata, content, buffers…]`.
//! The signature is HMAC-SHA256 over the four JSON frames as sent, keyed with the
//! connection file's `key` taken as raw bytes. Buffers are not signed.
//!
//! This module owns the decoding of untrusted frames. [`RawMessage::from_frames`]
//! checks counts and sizes before it slices, and returns a [`WireError`] for
//! anything malformed; it never panics.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The delimiter frame between routing identities and the signed message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

type HmacSha256 = Hmac<Sha256>;

/// Errors from decoding or verifying frames. Each names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message has {0} frames, more than the cap of {1}")]
    TooManyFrames(usize, usize),
    #[error("message is {0} bytes, more than the cap of {1}")]
    TooLarge(usize, usize),
    #[error("no <IDS|MSG> delimiter frame")]
    NoDelimiter,
    #[error("message has {0} frames after the delimiter; at least 5 are needed")]
    Truncated(usize),
    #[error("signature frame is not lowercase hex of 32 bytes")]
    BadSignatureEncoding,
    #[error("signature does not match")]
    BadSignature,
    #[error("the signing key is empty; unsigned messages are refused")]
    EmptyKey,
    #[error("{frame} frame is not valid JSON: {reason}")]
    BadJson { frame: &'static str, reason: String },
}

/// Caps applied to every message received from a kernel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most frames in one message, identities and buffers included.
    pub max_frames: usize,
    /// Most bytes in one message, all frames together.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frames: 1024,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Signs and verifies messages with the connection key.
///
/// The key never appears in `Debug` output.
#[derive(Clone)]
pub struct Signer {
    mac: HmacSha256,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer { key: <redacted> }")
    }
}

impl Signer {
    /// A signer for `key`, used as raw bytes (it is not hex-decoded).
    /// An empty key is refused: it would turn signing off.
    pub fn new(key: &[u8]) -> Result<Self, WireError> {
        if key.is_empty() {
            return Err(WireError::EmptyKey);
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| WireError::EmptyKey)?;
        Ok(Self { mac })
    }

    fn mac_over(&self, parts: [&[u8]; 4]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The lowercase hex signature of the four JSON frames.
    pub fn sign(&self, parts: [&[u8]; 4]) -> String {
        hex::encode(self.mac_over(parts).finalize().into_bytes())
    }

    /// Verifies `signature` (hex) over the four frames in constant time.
    pub fn verify(&self, parts: [&[u8]; 4], signature: &[u8]) -> Result<(), WireError> {
        // Lowercase only, as jupyter_client compares the hex digest byte for
        // byte: `hex::decode` alone would also accept uppercase, so a message
        // with a re-cased signature would pass here and fail in Python.
        if signature.len() != 64
            || !signature
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(WireError::BadSignatureEncoding);
        }
        let raw = hex::decode(signature).map_err(|_| WireError::BadSignatureEncoding)?;
        self.mac_over(parts)
            .verify_slice(&raw)
            .map_err(|_| WireError::BadSignature)
    }
}

/// A message split into its frames, signature not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Routing identities before the delimiter.
    pub idents: Vec<Bytes>,
    /// The hex signature frame.
    pub signature: Bytes,
    pub header: Bytes,
    pub parent_header: Bytes,
    pub metadata: Bytes,
    pub content: Bytes,
    /// Extra binary frames after the content.
    pub buffers: Vec<Bytes>,
}

impl RawMessage {
    /// Splits received frames, checking caps before slicing anything.
    ///
    /// Everything before the delimiter is kept as routing identities; for a
    /// SUB socket that is the publisher's topic frame, which is ignored.
    pub fn from_frames(frames: Vec<Bytes>, limits: &Limits) -> Result<Self, WireError> {
        if frames.len() > limits.max_frames {
            return Err(WireError::TooManyFrames(frames.len(), limits.max_frames));
        }
        let total: usize = frames.iter().map(Bytes::len).sum();
        if total > limits.max_message_bytes {
            return Err(WireError::TooLarge(total, limits.max_message_bytes));
        }
        let pos = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(WireError::NoDelimiter)?;
        let after = frames.len() - pos - 1;
        if after < 5 {
            return Err(WireError::Truncated(after));
        }
        let mut iter = frames.into_iter();
        let idents: Vec<Bytes> = iter.by_ref().take(pos).collect();
        let _delimiter = iter.next();
        // `after >= 5` was checked above, so these five frames exist; the
        // `unwrap_or_default` calls can never take the default branch.
        let signature = iter.next().unwrap_or_default();
        let header = iter.next().unwrap_or_default();
        let parent_header = iter.next().unwrap_or_default();
        let metadata = iter.next().unwrap_or_default();
        let content = iter.next().unwrap_or_default();
        let buffers = iter.collect();
        Ok(Self {
            idents,
            signature,
            header,
            parent_header,
            metadata,
            content,
            buffers,
        })
    }

    /// The four signed frames, in signing order.
    pub fn signed_parts(&self) -> [&[u8]; 4] {
        [
            &self.header,
            &self.parent_header,
            &self.metadata,
            &self.content,
        ]
    }

    /// Checks the signature in constant time.
    pub fn verify(&self, signer: &Signer) -> Result<(), WireError> {
        signer.verify(self.signed_parts(), &self.signature)
    }

    /// Builds the frames of a message and signs them.
    pub fn sign_frames(
        signer: &Signer,
        idents: &[Bytes],
        header: Bytes,
        parent_header: Bytes,
        metadata: Bytes,
        content: Bytes,
        buffers: &[Bytes],
    ) -> Vec<Bytes> {
        let signature = signer.sign([&header, &parent_header, &metadata, &content]);
        let mut frames = Vec::with_capacity(idents.len() + 6 + buffers.len());
        frames.extend(idents.iter().cloned());
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(signature));
        frames.push(header);
        frames.push(parent_header);
        frames.push(metadata);
        frames.push(content);
        frames.extend(buffers.iter().cloned());
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn empty_key_is_refused() {
        assert_eq!(Signer::new(b"").unwrap_err(), WireError::EmptyKey);
    }

    #[test]
    fn debug_redacts_key() {
        let s = Signer::new(b"supersecret").unwrap();
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn sign_then_verify_roundtrip_and_tamper() {
        let signer = Signer::new(b"k").unwrap();
        let out = RawMessage::sign_frames(
            &signer,
            &[Bytes::from_static(b"id")],
            Bytes::from_static(b"{\"msg_id\":\"1\"}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{\"a\":1}"),
            &[Bytes::from_static(b"\x00buf")],
        );
        let raw = RawMessage::from_frames(out.clone(), &Limits::default()).unwrap();
        assert_eq!(raw.idents.len(), 1);
        assert_eq!(raw.buffers.len(), 1);
        raw.verify(&signer).unwrap();
        let mut tampered = out;
        tampered[5] = Bytes::from_static(b"{\"a\":2}");
        let raw = RawMessage::from_frames(tampered, &Limits::default()).unwrap();
        assert_eq!(raw.verify(&signer), Err(WireError::BadSignature));
        let other = Signer::new(b"other").unwrap();
        let raw = RawMessage::from_frames(
            RawMessage::sign_frames(
                &signer,
                &[],
                Bytes::new(),
                Bytes::new(),
                Bytes::new(),
                Bytes::new(),
                &[],
            ),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(raw.verify(&other), Err(WireError::BadSignature));
    }

    #[test]
    fn caps_and_truncation() {
        let limits = Limits {
            max_frames: 8,
            max_message_bytes: 16,
        };
        assert_eq!(
            RawMessage::from_frames(frames(&[b"a".as_slice(); 9]), &limits),
            Err(WireError::TooManyFrames(9, 8))
        );
        assert_eq!(
            RawMessage::from_frames(frames(&[&[0u8; 17]]), &limits),
            Err(WireError::TooLarge(17, 16))
        );
        assert_eq!(
            RawMessage::from_frames(frames(&[b"x", b"y"]), &limits),
            Err(WireError::NoDelimiter)
        );
        assert_eq!(
            RawMessage::from_frames(frames(&[DELIMITER, b"s", b"h"]), &Limits::default()),
            Err(WireError::Truncated(2))
        );
        assert_eq!(
            RawMessage::from_frames(vec![], &limits),
            Err(WireError::NoDelimiter)
        );
    }

    #[test]
    fn bad_signature_encoding() {
        let signer = Signer::new(b"k").unwrap();
        let parts: [&[u8]; 4] = [b"", b"", b"", b""];
        assert_eq!(
            signer.verify(parts, b"zz"),
            Err(WireError::BadSignatureEncoding)
        );
        assert_eq!(
            signer.verify(parts, &[b'g'; 64]),
            Err(WireError::BadSignatureEncoding)
        );
    }
}
