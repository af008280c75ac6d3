//! Tolerating the `:authority` that etcdctl 3.4 sends to a single endpoint.
//!
//! For commands that dial one endpoint at a time (`endpoint status`, `endpoint hashkv`, ...),
//! etcdctl 3.4's gRPC client sends the endpoint as given, scheme included
//! (`:authority: http://10.0.0.1:2379`). etcd's Go server ignores it; the `h2` crate refuses the
//! request as malformed (RST_STREAM PROTOCOL_ERROR) before any of our code sees it.
//!
//! [`FixAuthority`] sits between the socket and the HTTP/2 server and renames such a header
//! field to `x-endpoint` (a regular header of the same length, so both HPACK dynamic tables keep
//! the same sizes and indices). Nothing else is changed: HTTP/1 connections, other frames and
//! well-formed authorities pass through untouched.
//!
//! Only the first [`EXAMINED_HEADERS`] requests of a connection are looked at; after them the
//! stream passes straight through, so a busy connection pays nothing. That covers etcdctl: Go's
//! HPACK encoder adds the authority to the dynamic table with the first request, and later
//! requests refer to that (renamed) entry by index.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE: a rewritten frame must still fit the default.
const MAX_FRAME: usize = 16_384;
/// HEADERS frames examined on a connection before it passes straight through.
pub const EXAMINED_HEADERS: u32 = 16;
/// Bytes read from the socket at a time (hyper's own read buffer starts at 8 KiB).
const READ_CHUNK: usize = 16_384;
/// Payload left in a frame from which reads bypass the buffers.
const DIRECT_READ: usize = 4096;
/// Same length as ":authority" (HPACK counts name and value octets in the table size).
const RENAMED: &[u8] = b"x-endpoint";

#[derive(Debug, PartialEq)]
enum State {
    /// Reading the client preface: HTTP/2 or not.
    Preface,
    /// At a frame boundary.
    Frames,
    /// Inside a frame that passes through: this many payload bytes to go.
    Skip(usize),
    /// Not HTTP/2 (or given up): bytes pass through.
    Passthrough,
}

/// A server-side stream that renames a malformed `:authority` in HTTP/2 requests.
pub struct FixAuthority<S> {
    inner: S,
    state: State,
    /// Bytes read from `inner`: `buf[start..decided]` are final (the reader gets them next),
    /// `buf[decided..end]` are not examined yet, `buf[end..]` is room (kept initialized, so
    /// reads need no zeroing).
    buf: Vec<u8>,
    start: usize,
    decided: usize,
    end: usize,
    eof: bool,
    /// HEADERS frames examined so far.
    headers_seen: u32,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            state: State::Preface,
            buf: Vec::new(),
            start: 0,
            decided: 0,
            end: 0,
            eof: false,
            headers_seen: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Decides as much of `buf[decided..end]` as can be: frames that pass unchanged stay where
    /// they are; a HEADERS frame that needs its `:authority` renamed is replaced in place.
    fn process(&mut self) {
        loop {
            let rest = &self.buf[self.decided..self.end];
            match self.state {
                State::Passthrough => {
                    self.decided = self.end;
                    return;
                }
                State::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                    } else if n == PREFACE.len() {
                        self.decided += n;
                        self.state = State::Frames;
                    } else if self.eof {
                        self.state = State::Passthrough;
                    } else {
                        return;
                    }
                }
                State::Skip(left) => {
                    let n = left.min(rest.len());
                    self.decided += n;
                    if n == left {
                        self.state = State::Frames;
                    } else {
                        self.state = State::Skip(left - n);
                        return;
                    }
                }
                State::Frames => {
                    if rest.len() < 9 {
                        if self.eof {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    }
                    let len = (usize::from(rest[0]) << 16)
                        | (usize::from(rest[1]) << 8)
                        | usize::from(rest[2]);
                    let (typ, flags) = (rest[3], rest[4]);
                    if typ != FRAME_HEADERS || len > MAX_FRAME {
                        self.decided += 9;
                        self.state = State::Skip(len);
                        continue;
                    }
                    if rest.len() < 9 + len {
                        if self.eof {
                            self.state = State::Passthrough;
                            continue;
                        }
                        return;
                    }
                    match fix_headers(flags, &rest[9..9 + len]) {
                        Some(payload) if payload.len() <= MAX_FRAME => {
                            let n = payload.len();
                            let mut frame = Vec::with_capacity(9 + n);
                            frame.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                            frame.extend_from_slice(&rest[3..9]);
                            frame.extend_from_slice(&payload);
                            let at = self.decided;
                            self.buf.splice(at..at + 9 + len, frame);
                            self.end += n - len;
                            self.decided += 9 + n;
                            tracing::debug!("renamed a malformed :authority to x-endpoint");
                        }
                        _ => self.decided += 9 + len,
                    }
                    self.headers_seen += 1;
                    if self.headers_seen >= EXAMINED_HEADERS {
                        self.state = State::Passthrough;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.decided > this.start {
                let n = (this.decided - this.start).min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                if this.start == this.end {
                    (this.start, this.decided, this.end) = (0, 0, 0);
                    if this.state == State::Passthrough {
                        // Nothing is examined any more: the buffer is not needed again.
                        this.buf = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Large payloads and non-HTTP/2 streams go straight to the reader. (Small payloads
            // do not: a read bounded by a small frame's end would cost a system call per frame.)
            if this.start == this.end {
                let direct = match this.state {
                    State::Passthrough => true,
                    State::Skip(left) => left >= DIRECT_READ.max(out.remaining()),
                    _ => false,
                };
                if direct {
                    // Into the reader's own buffer: no copy, no zeroing.
                    let before = out.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                    let n = out.filled().len() - before;
                    if let State::Skip(left) = this.state {
                        this.state = if n == left {
                            State::Frames
                        } else {
                            State::Skip(left - n)
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            // Room for the next read: move what is left to the front, grow if still short.
            if this.buf.len() - this.end < READ_CHUNK / 2 {
                if this.start > 0 {
                    this.buf.copy_within(this.start..this.end, 0);
                    this.decided -= this.start;
                    this.end -= this.start;
                    this.start = 0;
                }
                if this.buf.len() - this.end < READ_CHUNK / 2 {
                    this.buf.resize(this.end + READ_CHUNK, 0);
                }
            }
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
            }
            this.end += n;
            this.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HPACK integer with an `n`-bit prefix at `b[*pos]` (RFC 7541 §5.1).
fn int(b: &[u8], pos: &mut usize, n: u8) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*b.get(*pos)?) & max;
    *pos += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v = v.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string literal at `b[*pos]`: its decoded octets.
fn string(b: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let huffman = *b.get(*pos)? & 0x80 != 0;
    let len = int(b, pos, 7)?;
    let raw = b.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    if huffman {
        hpack::huffman::HuffmanDecoder::new().decode(raw).ok()
    } else {
        Some(raw.to_vec())
    }
}

/// Whether an authority value carries a URL (`h2` refuses those; an authority has no '/').
fn is_url(v: &[u8]) -> bool {
    v.contains(&b'/')
}

/// A HEADERS payload with a URL-valued `:authority` renamed, or `None` to pass it unchanged.
fn fix_headers(flags: u8, payload: &[u8]) -> Option<Vec<u8>> {
    if flags & FLAG_END_HEADERS == 0 {
        return None; // CONTINUATION frames follow: left alone
    }
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    let end = payload.len().checked_sub(pad)?;
    let block = payload.get(start..end)?;
    let mut pos = 0;
    while pos < block.len() {
        let at = pos;
        let first = block[pos];
        let prefix = match first {
            b if b & 0x80 != 0 => {
                int(block, &mut pos, 7)?; // indexed field
                continue;
            }
            b if b & 0xc0 == 0x40 => 6, // literal, incremental indexing
            b if b & 0xe0 == 0x20 => {
                int(block, &mut pos, 5)?; // table size update
                continue;
            }
            _ => 4, // literal without indexing / never indexed
        };
        let index = int(block, &mut pos, prefix)?;
        if index == 0 {
            string(block, &mut pos)?;
        }
        let value_at = pos;
        let value = string(block, &mut pos)?;
        if index == 1 && is_url(&value) {
            let kind = first & !((1u8 << prefix) - 1);
            let mut out = Vec::with_capacity(payload.len() + RENAMED.len() + 1);
            out.extend_from_slice(&payload[..start]);
            out.extend_from_slice(&block[..at]);
            out.push(kind);
            out.push(RENAMED.len() as u8);
            out.extend_from_slice(RENAMED);
            out.extend_from_slice(&block[value_at..]);
            out.extend_from_slice(&payload[end..]);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A literal with incremental indexing and an indexed name, raw value.
    fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x40 | name_index, value.len() as u8];
        v.extend_from_slice(value);
        v
    }

    fn frame(typ: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            typ,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        hpack::Decoder::new()
            .decode(block)
            .expect("a valid block")
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(&n).into(),
                    String::from_utf8_lossy(&v).into(),
                )
            })
            .collect()
    }

    #[test]
    fn url_authority_is_renamed_and_the_rest_kept() {
        // :method POST (indexed 3), :scheme http (indexed 6), :path, :authority as a URL.
        let mut block = vec![0x83, 0x86];
        block.extend(literal(4, b"/etcdserverpb.Maintenance/Status"));
        block.extend(literal(1, b"http://127.0.0.1:2379"));
        block.extend(literal(31, b"application/grpc"));
        let fixed = fix_headers(FLAG_END_HEADERS, &block).expect("rewritten");
        let headers = decode(&fixed);
        assert_eq!(
            headers[3],
            ("x-endpoint".into(), "http://127.0.0.1:2379".into())
        );
        assert_eq!(headers[2].0, ":path");
        assert_eq!(
            headers[4],
            ("content-type".into(), "application/grpc".into())
        );
        assert!(!headers.iter().any(|h| h.0 == ":authority"));
        // A valid authority is left alone, as is a block that continues.
        let mut ok = vec![0x83];
        ok.extend(literal(1, b"127.0.0.1:2379"));
        assert_eq!(fix_headers(FLAG_END_HEADERS, &ok), None);
        assert_eq!(fix_headers(0, &block), None);
    }

    #[test]
    fn padding_and_priority_are_kept() {
        let mut payload = vec![3]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(literal(1, b"http://h:1"));
        payload.extend([0, 0, 0]);
        let fixed =
            fix_headers(FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY, &payload).expect("fixed");
        assert_eq!(&fixed[..6], &payload[..6]);
        assert_eq!(&fixed[fixed.len() - 3..], &[0, 0, 0]);
        let headers = decode(&fixed[6..fixed.len() - 3]);
        assert_eq!(headers, vec![("x-endpoint".into(), "http://h:1".into())]);
    }

    #[test]
    fn truncated_or_garbage_blocks_pass_unchanged() {
        for bad in [
            &[0x41u8, 0x7f][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x40],
        ] {
            assert_eq!(fix_headers(FLAG_END_HEADERS, bad), None);
        }
    }

    /// Hands out its bytes a few at a time, as a socket may.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let n = this.1.min(this.0.len()).min(buf.remaining());
            buf.put_slice(&this.0[..n]);
            this.0.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_split_across_reads_stay_aligned() {
        let mut block = vec![0x83];
        block.extend(literal(1, b"http://127.0.0.1:2379"));
        let mut input = PREFACE.to_vec();
        for payload_len in [3000, 5000, 1, 0, 9000] {
            input.extend(frame(0x0, 0, &vec![9u8; payload_len])); // DATA
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, &block));
        }
        for step in [1, 5, 9, 4000, 10_000, 100_000] {
            let mut out = Vec::new();
            FixAuthority::new(Trickle(input.clone(), step))
                .read_to_end(&mut out)
                .await
                .expect("reading");
            // Every HEADERS frame was found and rewritten: five times the added bytes.
            assert_eq!(
                out.len(),
                input.len() + 5 * (RENAMED.len() + 1),
                "chunks of {step}"
            );
            assert_eq!(
                out.windows(RENAMED.len()).filter(|w| *w == RENAMED).count(),
                5,
                "chunks of {step}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_passes_through_after_its_first_requests() {
        let mut block = vec![0x83];
        block.extend(literal(1, b"http://127.0.0.1:2379"));
        let mut input = PREFACE.to_vec();
        for _ in 0..EXAMINED_HEADERS + 3 {
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, &block));
        }
        let mut out = Vec::new();
        FixAuthority::new(Trickle(input.clone(), 7))
            .read_to_end(&mut out)
            .await
            .expect("reading");
        let renamed = out.windows(RENAMED.len()).filter(|w| *w == RENAMED).count();
        assert_eq!(renamed, EXAMINED_HEADERS as usize);
        assert_eq!(out.len(), input.len() + renamed * (RENAMED.len() + 1));
    }

    #[tokio::test]
    async fn streams_are_rewritten_only_where_needed() {
        let mut block = vec![0x83];
        block.extend(literal(1, b"http://127.0.0.1:2379"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, &[])); // SETTINGS
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, &block));
        input.extend(frame(0x0, 0x1, &[7u8; 20_000])); // a DATA frame larger than MAX_FRAME
        let mut out = Vec::new();
        FixAuthority::new(&input[..])
            .read_to_end(&mut out)
            .await
            .expect("reading");
        assert_eq!(out.len(), input.len() + RENAMED.len() + 1);
        assert_eq!(&out[..24 + 9], &input[..24 + 9]);
        let h = &out[33..];
        let n = (usize::from(h[1]) << 8) | usize::from(h[2]);
        assert_eq!(decode(&h[9..9 + n])[1].0, "x-endpoint");
        assert!(out.ends_with(&[7u8; 20_000]));
        // HTTP/1 passes through byte for byte.
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut out = Vec::new();
        FixAuthority::new(&http1[..])
            .read_to_end(&mut out)
            .await
            .expect("reading");
        assert_eq!(out, http1);
    }
}
