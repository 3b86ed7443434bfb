//! The JSON messages metricast sends, and their WebSocket framing.
//!
//! Server-to-client WebSocket frames are never masked, so a frame's bytes
//! are the same for every dashboard. Messages are therefore encoded and
//! framed once here and the bytes are shared by everyone who receives them.

use std::io::Write;

use crate::decimal::Number;

/// `{"event":"keepalive"}` as a complete text frame.
pub const KEEPALIVE_FRAME: &[u8] = b"\x81\x15{\"event\":\"keepalive\"}";
/// An empty WebSocket ping frame.
pub const PING_FRAME: &[u8] = b"\x89\x00";

/// Writes the header of an unmasked, final text frame of `len` bytes.
pub fn text_frame_header(len: usize, out: &mut Vec<u8>) {
    let (header, used) = text_frame_header_bytes(len);
    out.extend_from_slice(&header[..used]);
}

/// The header of an unmasked, final text frame of `len` bytes, and how many
/// of the returned bytes it uses.
pub fn text_frame_header_bytes(len: usize) -> ([u8; 10], usize) {
    let mut header = [0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

/// Wraps a JSON payload in a text frame.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    text_frame_header(payload.len(), &mut frame);
    frame.extend_from_slice(payload);
    frame
}

/// Writes `s` as a JSON string.
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Encodes the `metric_update` message for one accepted record.
pub fn metric_update(
    metric: &str,
    value: Number,
    metadata: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"event\":\"metric_update\",\"metric\":");
    json_string(metric, out);
    let _ = write!(out, ",\"value\":{value},\"metadata\":");
    out.extend_from_slice(metadata.unwrap_or("null").as_bytes());
    out.push(b'}');
}

/// The `snapshot` message around an already encoded state object, as a
/// complete text frame.
pub fn snapshot_frame(state: &[u8]) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"event\":\"snapshot\",\"data\":";
    let len = HEAD.len() + state.len() + 1;
    let mut frame = Vec::with_capacity(len + 10);
    text_frame_header(len, &mut frame);
    frame.extend_from_slice(HEAD);
    frame.extend_from_slice(state);
    frame.push(b'}');
    frame
}

/// Encodes the body of an error answer.
pub fn error_body(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"status\":\"error\",\"error\":");
    json_string(message, out);
    out.push(b'}');
}

/// The body of a successful `POST /record`.
pub const RECORDED_BODY: &[u8] = b"{\"status\":\"recorded\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_frame_matches_its_payload() {
        assert_eq!(KEEPALIVE_FRAME, text_frame(br#"{"event":"keepalive"}"#));
    }

    #[test]
    fn frame_lengths_use_the_right_width() {
        assert_eq!(text_frame(&[b'x'; 125])[..2], [0x81, 125]);
        assert_eq!(text_frame(&[b'x'; 126])[..4], [0x81, 126, 0, 126]);
        let big = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(big[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn update_is_valid_json() {
        let mut out = Vec::new();
        let value = Number::parse("2").unwrap();
        metric_update("a\"b", value, Some(r#"{"k":1}"#), &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["metric"], "a\"b");
        assert_eq!(parsed["metadata"]["k"], 1);
        assert!(String::from_utf8(out).unwrap().contains("\"value\":2.0"));
    }
}
