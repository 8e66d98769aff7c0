//! The `:authority` that gRPC C-core clients send over a unix socket. grpc-core (Python's
//! `grpcio`, so py-spiffe; C++, Ruby, PHP) names a `unix:` target's authority by the
//! percent-encoded socket path (`tmp%2Fagentd%2Fspiffe.sock`), which the HTTP/2 server under
//! tonic refuses as a malformed authority (`RST_STREAM`, `PROTOCOL_ERROR`), so those clients could
//! not use the Workload API at all. On a unix socket the authority means nothing: this reads
//! the client's HTTP/2 frames as they arrive and hands the server every header block with
//! `:authority: localhost`, re-encoded as literals (no dynamic table on the server's side);
//! every other frame passes unchanged. The caller's identity is the socket's peer, never a
//! header.

use loona_hpack::{Decoder, encoder::encode_integer_into};

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame this side writes or reads: the protocol's default, which the server
/// under tonic keeps (a larger frame is a connection error there anyway), so that nothing
/// larger is ever buffered.
const MAX_WRITTEN_FRAME: usize = 16_384;
/// A header block (HEADERS and its CONTINUATIONs) larger than this ends the connection.
const MAX_BLOCK: usize = 64 * 1024;
/// The largest dynamic table a client may ask the decoder to keep.
const MAX_TABLE: usize = 64 * 1024;
/// What every header block's `:authority` becomes.
const AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("a HEADERS frame is malformed (padding or priority past its end)")]
    Malformed,
    #[error("a frame of type {0} came between a HEADERS frame and its CONTINUATION")]
    Interleaved(u8),
    #[error("a CONTINUATION frame without a header block to continue")]
    Continuation,
    #[error("a header block of more than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("a frame of {0} bytes; at most {MAX_WRITTEN_FRAME}")]
    FrameTooLarge(usize),
    #[error("decoding a header block: {0}")]
    Hpack(String),
}

/// A header block being collected.
struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

/// Rewrites one connection's client-to-server bytes (see the module's documentation).
pub struct AuthorityRewriter {
    preface_left: usize,
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Self {
            preface_left: PREFACE.len(),
            pending: Vec::new(),
            block: None,
            decoder,
        }
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).expect("frames written are at most 16 KiB");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// `value` as an HPACK string literal, not Huffman-coded.
fn literal(out: &mut Vec<u8>, value: &[u8]) {
    encode_integer_into(value.len(), 7, 0, out).expect("writing to a Vec");
    out.extend_from_slice(value);
}

impl AuthorityRewriter {
    /// Takes the next bytes from the client and appends what the server is to read to `out`.
    /// A partial frame waits for the rest.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut input = input;
        if self.preface_left > 0 {
            // Passed on as it is: the server judges the preface.
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        while let Some(header) = self.pending.get(at..at + FRAME_HEADER) {
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            if len > MAX_WRITTEN_FRAME {
                return Err(AuthorityError::FrameTooLarge(len));
            }
            let end = at + FRAME_HEADER + len;
            if self.pending.len() < end {
                break;
            }
            let payload = &self.pending[at + FRAME_HEADER..end];
            match kind {
                HEADERS => {
                    if self.block.is_some() {
                        return Err(AuthorityError::Interleaved(kind));
                    }
                    let fragment = headers_fragment(payload, flags)?;
                    self.block = Some(Block {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        fragment: fragment.to_vec(),
                    });
                }
                CONTINUATION => {
                    let block = self
                        .block
                        .as_mut()
                        .filter(|block| block.stream == stream)
                        .ok_or(AuthorityError::Continuation)?;
                    block.fragment.extend_from_slice(payload);
                }
                _ if self.block.is_some() => return Err(AuthorityError::Interleaved(kind)),
                _ => out.extend_from_slice(&self.pending[at..end]),
            }
            if self
                .block
                .as_ref()
                .is_some_and(|block| block.fragment.len() > MAX_BLOCK)
            {
                return Err(AuthorityError::TooLarge);
            }
            if (kind == HEADERS || kind == CONTINUATION) && flags & END_HEADERS != 0 {
                let block = self.block.take().expect("collected above");
                self.emit(&block, out)?;
            }
            at = end;
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// The block decoded, its `:authority` replaced, written as HEADERS (and CONTINUATION)
    /// frames of literal fields.
    fn emit(&mut self, block: &Block, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                let value: &[u8] = if name.as_ref() == b":authority" {
                    AUTHORITY
                } else {
                    value.as_ref()
                };
                // A literal header field without indexing, with a literal name.
                encoded.push(0x00);
                literal(&mut encoded, &name);
                literal(&mut encoded, value);
            })
            .map_err(|err| AuthorityError::Hpack(err.to_string()))?;
        let mut chunks = encoded.chunks(MAX_WRITTEN_FRAME).peekable();
        let mut first = true;
        // An empty block is still one HEADERS frame.
        let empty: &[u8] = &[];
        let mut next = chunks.next().unwrap_or(empty);
        loop {
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (HEADERS, if block.end_stream { END_STREAM } else { 0 })
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            frame_header(out, next.len(), kind, flags, block.stream);
            out.extend_from_slice(next);
            if last {
                return Ok(());
            }
            first = false;
            next = chunks.next().expect("peeked");
        }
    }
}

/// A HEADERS payload's header block fragment, without padding and priority.
fn headers_fragment(payload: &[u8], flags: u8) -> Result<&[u8], AuthorityError> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = body.split_first().ok_or(AuthorityError::Malformed)?;
        padding = usize::from(pad);
        body = rest;
    }
    if flags & PRIORITY != 0 {
        body = body.get(5..).ok_or(AuthorityError::Malformed)?;
    }
    body.get(
        ..body
            .len()
            .checked_sub(padding)
            .ok_or(AuthorityError::Malformed)?,
    )
    .ok_or(AuthorityError::Malformed)
}

#[cfg(test)]
mod tests {
    use loona_hpack::Encoder;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// Every frame in `bytes` (after the preface): kind, flags, stream, payload.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = &bytes[PREFACE.len()..];
        let mut all = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            all.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        all
    }

    #[test]
    fn a_percent_encoded_authority_becomes_localhost_and_the_rest_passes_unchanged() {
        let mut encoder = Encoder::new();
        let request: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"tmp%2Fagentd%2Fspiffe.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let first = encoder.encode(request.clone());
        // The second request reuses the dynamic table the first one filled.
        let second = encoder.encode(request.clone());
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        // The first block split over HEADERS (padded, with priority) and a CONTINUATION.
        let mut padded = vec![2u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(&first[..5]);
        padded.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &first[5..]));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        // Fed a byte at a time, as a slow client's bytes may arrive.
        let mut rewriter = AuthorityRewriter::default();
        let mut out = Vec::new();
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let got = frames(&out);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(
            (got[0].0, got[0].3.clone()),
            (0x4, vec![0, 3, 0, 0, 0, 100])
        );
        assert_eq!(got[2], (0x0, END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
        let mut server = Decoder::new();
        for (index, stream, end_stream) in [(1, 1, false), (3, 3, true)] {
            let (kind, flags, id, block) = &got[index];
            assert_eq!((*kind, *id), (HEADERS, stream));
            assert_eq!(flags & END_HEADERS, END_HEADERS);
            assert_eq!(flags & END_STREAM != 0, end_stream);
            let headers = server.decode(block).unwrap();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = request
                .iter()
                .map(|(name, value)| {
                    let value = if *name == b":authority" {
                        AUTHORITY
                    } else {
                        value
                    };
                    (name.to_vec(), value.to_vec())
                })
                .collect();
            assert_eq!(headers, expected);
        }
    }

    #[test]
    fn a_large_block_is_split_into_continuations_and_bad_framing_is_refused() {
        let big = vec![b'x'; 40_000];
        let block =
            Encoder::new().encode(vec![(&b":authority"[..], &b"a%2Fb"[..]), (b"x-big", &big)]);
        let mut input = PREFACE.to_vec();
        let mut pieces = block.chunks(MAX_WRITTEN_FRAME).peekable();
        input.extend(frame(HEADERS, 0, 5, pieces.next().unwrap()));
        while let Some(piece) = pieces.next() {
            let flags = if pieces.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            input.extend(frame(CONTINUATION, flags, 5, piece));
        }
        let mut out = Vec::new();
        AuthorityRewriter::default().feed(&input, &mut out).unwrap();
        let got = frames(&out);
        assert!(got.len() >= 3, "{}", got.len());
        assert!(
            got.iter()
                .all(|(_, _, _, payload)| payload.len() <= MAX_WRITTEN_FRAME)
        );
        assert_eq!(got.last().unwrap().1 & END_HEADERS, END_HEADERS);
        assert!(got[1..].iter().all(|(kind, ..)| *kind == CONTINUATION));

        let mut orphan = PREFACE.to_vec();
        orphan.extend(frame(CONTINUATION, END_HEADERS, 1, b""));
        assert_eq!(
            AuthorityRewriter::default().feed(&orphan, &mut Vec::new()),
            Err(AuthorityError::Continuation)
        );
        let mut interleaved = PREFACE.to_vec();
        interleaved.extend(frame(HEADERS, 0, 1, b""));
        interleaved.extend(frame(0x0, 0, 1, b""));
        assert_eq!(
            AuthorityRewriter::default().feed(&interleaved, &mut Vec::new()),
            Err(AuthorityError::Interleaved(0))
        );
        let mut bad_padding = PREFACE.to_vec();
        bad_padding.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1]));
        assert_eq!(
            AuthorityRewriter::default().feed(&bad_padding, &mut Vec::new()),
            Err(AuthorityError::Malformed)
        );
        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&[0x01, 0x00, 0x00, 0x0, 0, 0, 0, 0, 1]);
        assert_eq!(
            AuthorityRewriter::default().feed(&huge, &mut Vec::new()),
            Err(AuthorityError::FrameTooLarge(65_536)),
            "refused from its frame header, before anything is buffered"
        );
        let mut endless = PREFACE.to_vec();
        endless.extend(frame(HEADERS, 0, 1, &[0; 16_384]));
        for _ in 0..4 {
            endless.extend(frame(CONTINUATION, 0, 1, &[0; 16_384]));
        }
        assert_eq!(
            AuthorityRewriter::default().feed(&endless, &mut Vec::new()),
            Err(AuthorityError::TooLarge)
        );
    }
}
