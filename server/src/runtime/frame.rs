//! WebSocket frames (RFC 6455) as a server reads and writes them: a decoder
//! that turns masked client bytes into messages, and the header of an
//! unmasked server frame. Pure: no I/O, no clock.
//!
//! The decoder works on the socket's read buffer in place. A message that
//! arrives in one frame becomes a slice of that buffer (unmasked where it
//! lies, no copy); fragments are gathered into one buffer. It enforces the
//! protocol's rules and the message size limit as soon as a header says what
//! is coming, before the payload is read.

use bytes::{Buf, Bytes, BytesMut};

/// Longest control frame payload.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What a frame or message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continue,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continue => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }
}

/// One complete thing the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A text message, checked to be UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; the payload is to be echoed in a pong.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: its code and reason, or `None` for an empty one.
    Close(Option<(u16, String)>),
}

/// Why the client's bytes cannot be read on; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A message (so far) longer than the limit: close 1009. `frame_len`
    /// is the whole offending frame's length, header included, so that it
    /// can be skipped.
    #[error("Message is too large: {size} > {max}")]
    TooLarge {
        size: u64,
        max: usize,
        frame_len: u64,
    },
    /// Text that is not UTF-8: close 1007.
    #[error("Invalid UTF-8 in text frame")]
    Utf8,
    /// A broken rule of the protocol: close 1002.
    #[error("Protocol error: {0}")]
    Protocol(&'static str),
}

impl FrameError {
    /// The close code that answers this error.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => 1009,
            FrameError::Utf8 => 1007,
            FrameError::Protocol(_) => 1002,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Header length in bytes.
    len: usize,
    /// Payload length in bytes.
    payload: u64,
}

/// Turns client bytes into [`Frame`]s, one message at a time.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_message: usize,
    /// The data message being gathered from fragments: its opcode and the
    /// unmasked payload so far.
    fragments: Option<(Opcode, BytesMut)>,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Bytes gathered for a fragmented message not yet complete.
    pub(crate) fn fragment_bytes(&self) -> usize {
        self.fragments.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// Takes the next complete frame from the front of `buf`, or says that
    /// more bytes are needed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FrameError> {
        loop {
            let Some(header) = self.header(buf)? else {
                return Ok(Decoded::Incomplete { frame_len: None });
            };
            // `payload` fits a usize: `header` refused anything over the limit.
            let total = header.len + header.payload as usize;
            if buf.len() < total {
                return Ok(Decoded::Incomplete {
                    frame_len: Some(total),
                });
            }
            buf.advance(header.len);
            let mut payload = buf.split_to(header.payload as usize);
            unmask(&mut payload, header.mask);
            if let Some(frame) = self.frame(header, payload)? {
                return Ok(Decoded::Frame(frame));
            }
        }
    }

    /// Parses and checks the header at the front of `buf`, if complete.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("Reserved bits are non-zero"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = match b0 & 0x0F {
            0x0 => Opcode::Continue,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            0x3..=0x7 => return Err(FrameError::Protocol("Unknown data frame type")),
            _ => return Err(FrameError::Protocol("Unknown control frame type")),
        };
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol(
                "Received an unmasked frame from client",
            ));
        }
        let (payload, at) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut len = [0; 8];
                len.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            n => (u64::from(n), 2),
        };
        let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
        if control {
            if !fin {
                return Err(FrameError::Protocol("Fragmented control frame"));
            }
            if payload > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::Protocol(
                    "Control frame too big (payload must be 125 bytes or less)",
                ));
            }
        } else {
            match (opcode, &self.fragments) {
                (Opcode::Continue, None) => {
                    return Err(FrameError::Protocol(
                        "Continue frame but nothing to continue",
                    ))
                }
                (Opcode::Text | Opcode::Binary, Some(_)) => {
                    return Err(FrameError::Protocol(
                        "A new message began before the fragmented one ended",
                    ))
                }
                _ => {}
            }
            let size = self.fragment_bytes() as u64 + payload;
            if size > self.max_message as u64 {
                return Err(FrameError::TooLarge {
                    size,
                    max: self.max_message,
                    frame_len: (at + 4) as u64 + payload,
                });
            }
        }
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mut mask = [0; 4];
        mask.copy_from_slice(&buf[at..at + 4]);
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len: at + 4,
            payload,
        }))
    }

    /// The frame a complete, unmasked frame makes; `None` for a fragment
    /// that does not end its message.
    fn frame(&mut self, header: Header, payload: BytesMut) -> Result<Option<Frame>, FrameError> {
        let (opcode, data) = match header.opcode {
            Opcode::Ping => return Ok(Some(Frame::Ping(payload.freeze()))),
            Opcode::Pong => return Ok(Some(Frame::Pong)),
            Opcode::Close => return close_frame(&payload).map(|c| Some(Frame::Close(c))),
            Opcode::Continue => {
                let (opcode, mut gathered) = self.fragments.take().expect("checked in header");
                gathered.extend_from_slice(&payload);
                if !header.fin {
                    self.fragments = Some((opcode, gathered));
                    return Ok(None);
                }
                (opcode, gathered)
            }
            opcode @ (Opcode::Text | Opcode::Binary) => {
                if !header.fin {
                    self.fragments = Some((opcode, payload));
                    return Ok(None);
                }
                (opcode, payload)
            }
        };
        let data = data.freeze();
        if opcode == Opcode::Text {
            if std::str::from_utf8(&data).is_err() {
                return Err(FrameError::Utf8);
            }
            return Ok(Some(Frame::Text(data)));
        }
        Ok(Some(Frame::Binary(data)))
    }
}

/// What [`Decoder::decode`] found.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// More bytes are needed; `frame_len` is the whole frame's length once
    /// its header is known.
    Incomplete { frame_len: Option<usize> },
}

/// Reads just the header at the front of `buf`, leniently (after the server
/// started closing, only the client's close frame matters): the frame's
/// whole length and whether it is a close frame. `None` while incomplete.
pub(crate) fn skim(buf: &[u8]) -> Option<(u64, bool)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let (payload, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut len = [0; 8];
            len.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(len), 10)
        }
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    Some(((at + masked) as u64 + payload, buf[0] & 0x0F == 0x8))
}

/// The code and reason of a close frame's payload.
fn close_frame(payload: &[u8]) -> Result<Option<(u16, String)>, FrameError> {
    match payload.len() {
        0 => return Ok(None),
        1 => return Err(FrameError::Protocol("Close frame with a one-byte payload")),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    if !close_code_allowed(code) {
        return Err(FrameError::Protocol("Invalid close code"));
    }
    let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::Utf8)?;
    Ok(Some((code, reason.to_owned())))
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4).
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the client's masking key.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// The header of an unmasked (server) frame with FIN set: the bytes and
/// how many of them are used.
pub(crate) fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode.bits();
    let used = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, used)
}

/// The payload of a close frame: the code and the reason, cut to what a
/// control frame can carry (on a character boundary).
pub(crate) fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Decoded::Frame(f) = decoder.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn text_binary_and_control_frames() {
        let mut bytes = client_frame(true, 1, "héllo".as_bytes());
        bytes.extend(client_frame(true, 2, &[0, 1, 2, 3, 4, 5, 6]));
        bytes.extend(client_frame(true, 9, b"pi"));
        bytes.extend(client_frame(true, 0xA, b""));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']));
        bytes.extend(client_frame(true, 8, &[]));
        let frames = decode_all(&mut Decoder::new(1 << 20), &bytes).unwrap();
        assert_eq!(
            frames,
            [
                Frame::Text(Bytes::from("héllo")),
                Frame::Binary(Bytes::from_static(&[0, 1, 2, 3, 4, 5, 6])),
                Frame::Ping(Bytes::from_static(b"pi")),
                Frame::Pong,
                Frame::Close(Some((1000, "bye".into()))),
                Frame::Close(None),
            ]
        );
    }

    #[test]
    fn every_length_encoding_round_trips_byte_by_byte() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, 2, &payload);
            let mut decoder = Decoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = None;
            // Feed in odd-sized pieces to exercise every partial state.
            for piece in bytes.chunks(4093) {
                buf.extend_from_slice(piece);
                if let Decoded::Frame(f) = decoder.decode(&mut buf).unwrap() {
                    got = Some(f);
                }
            }
            assert_eq!(got, Some(Frame::Binary(payload.into())), "len {len}");
            assert!(buf.is_empty());
        }
        // A header arriving one byte at a time.
        let bytes = client_frame(true, 1, &[b'x'; 300]);
        let mut decoder = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let d = decoder.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(matches!(d, Decoded::Incomplete { .. }), "byte {i}");
            } else {
                assert!(matches!(d, Decoded::Frame(Frame::Text(_))));
            }
        }
    }

    #[test]
    fn the_frame_length_is_known_from_the_header() {
        let bytes = client_frame(true, 2, &[1; 1000]);
        let mut buf = BytesMut::from(&bytes[..20]);
        match Decoder::new(1 << 20).decode(&mut buf).unwrap() {
            Decoded::Incomplete { frame_len } => assert_eq!(frame_len, Some(bytes.len())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_are_gathered_with_control_frames_between() {
        let mut bytes = client_frame(false, 1, b"frag");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(false, 0, b"men"));
        bytes.extend(client_frame(true, 0, b"ted"));
        let mut decoder = Decoder::new(1 << 20);
        let frames = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(
            frames,
            [
                Frame::Ping(Bytes::from_static(b"p")),
                Frame::Text(Bytes::from("fragmented"))
            ]
        );
        assert_eq!(decoder.fragment_bytes(), 0);
    }

    #[test]
    fn size_limit_applies_to_frames_and_fragmented_messages() {
        let err = decode_all(&mut Decoder::new(10), &client_frame(true, 2, &[0; 11]));
        assert_eq!(
            err,
            Err(FrameError::TooLarge {
                size: 11,
                max: 10,
                frame_len: 17
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "Message is too large: 11 > 10"
        );
        // Known from the header alone, before the payload arrives.
        let frame = client_frame(true, 2, &[0; 11]);
        let mut buf = BytesMut::from(&frame[..2]);
        assert!(Decoder::new(10).decode(&mut buf).is_err());
        let mut bytes = client_frame(false, 2, &[0; 6]);
        bytes.extend(client_frame(true, 0, &[0; 5]));
        assert_eq!(
            decode_all(&mut Decoder::new(10), &bytes),
            Err(FrameError::TooLarge {
                size: 11,
                max: 10,
                frame_len: 11
            })
        );
        assert_eq!(
            decode_all(&mut Decoder::new(10), &client_frame(true, 2, &[0; 10])).unwrap(),
            [Frame::Binary(vec![0; 10].into())]
        );
    }

    #[test]
    fn protocol_violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0xff; 8], 1002),                          // reserved bits
            (vec![0x81, 0x01, b'x'], 1002),                 // unmasked
            (client_frame(true, 3, b"x"), 1002),            // reserved data opcode
            (client_frame(true, 0xB, b"x"), 1002),          // reserved control opcode
            (client_frame(false, 9, b"x"), 1002),           // fragmented ping
            (client_frame(true, 9, &[0; 126]), 1002),       // control too big
            (client_frame(true, 0, b"x"), 1002),            // nothing to continue
            (client_frame(true, 8, &[0x03]), 1002),         // one-byte close
            (client_frame(true, 8, &[0x03, 0xed]), 1002),   // close 1005 on the wire
            (client_frame(true, 8, &[0x13, 0x88]), 1002),   // close 5000
            (client_frame(true, 1, &[0xff, 0xfe]), 1007),   // text not UTF-8
            (client_frame(true, 8, &[3, 232, 0xff]), 1007), // reason not UTF-8
            (
                [client_frame(false, 1, b"a"), client_frame(true, 2, b"b")].concat(),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let err = decode_all(&mut Decoder::new(1 << 20), &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:x?}: {err}");
        }
    }

    #[test]
    fn skim_reads_lengths_of_any_frame() {
        let f = client_frame(true, 2, &[0; 300]);
        assert_eq!(skim(&f), Some((f.len() as u64, false)));
        assert_eq!(skim(&f[..3]), None);
        let c = client_frame(true, 8, &[3, 232]);
        assert_eq!(skim(&c), Some((c.len() as u64, true)));
        assert_eq!(skim(&[0x81, 0x05]), Some((7, false)));
    }

    #[test]
    fn server_headers_and_close_payloads() {
        assert_eq!(
            header(Opcode::Text, 5),
            ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        assert_eq!(header(Opcode::Binary, 300).0[..4], [0x82, 126, 1, 44]);
        assert_eq!(header(Opcode::Binary, 300).1, 4);
        assert_eq!(header(Opcode::Close, 70_000).0[..2], [0x88, 127]);
        assert_eq!(header(Opcode::Close, 70_000).1, 10);
        let p = close_payload(1001, &"é".repeat(100));
        assert!(p.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(&p[..2], &[0x03, 0xe9]);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert!(close_code_allowed(1000) && close_code_allowed(4999));
        assert!(!close_code_allowed(1005) && !close_code_allowed(1006) && !close_code_allowed(999));
    }
}
