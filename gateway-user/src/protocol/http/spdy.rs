//! The SPDY/3.1 frames of a Kubernetes port-forward, read as they pass from the agent to the
//! API server: kubectl sends SPDY (since 1.31 tunnelled in WebSocket binary messages, before
//! that over an `Upgrade: SPDY/3.1`), and it names the pod's port only in the headers of each
//! stream it opens (`port: 8080` in a `SYN_STREAM`), never in the request's URL. The gateway
//! reads those headers to judge every port before the stream's frame reaches the API server
//! (portforward.rs); the bytes themselves are relayed untouched.
//!
//! Strict: whatever this reader does not understand is an error (the forward is ended), since
//! a frame it skipped could open a stream to a port nobody judged. Header blocks are one zlib
//! stream per direction with SPDY/3's preset dictionary (the spec's §2.6.10.1).

use flate2::{Decompress, FlushDecompress};

/// A control frame larger than this is refused (kubectl's are well under 1 KiB).
const MAX_CONTROL: usize = 64 << 10;
/// A header block that inflates to more than this is refused.
const MAX_HEADERS: usize = 64 << 10;
/// More header pairs than this in one block is refused.
const MAX_PAIRS: u32 = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("not SPDY/3 (a control frame of version {0})")]
    Version(u16),
    #[error("a SPDY control frame of type {0}, which a port-forward's client does not send")]
    FrameType(u16),
    #[error("a SPDY control frame of {0} bytes (at most {MAX_CONTROL})")]
    TooLarge(usize),
    #[error("a malformed SPDY {0} frame")]
    Malformed(&'static str),
    #[error("a SPDY header block that does not inflate: {0}")]
    Inflate(String),
    #[error("a SPDY header block larger than {MAX_HEADERS} bytes")]
    HeadersTooLarge,
    #[error("a malformed SPDY header block")]
    Headers,
    #[error("a new stream without a `port` header")]
    NoPort,
    #[error("a new stream that names {0} ports")]
    ManyPorts(usize),
    #[error("`{0}` is not a port (1-65535)")]
    BadPort(String),
}

/// A stream the agent opened, and the pod's port it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewStream {
    pub id: u32,
    pub port: u16,
}

/// The agent's direction of one SPDY session.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes of a data frame's payload still to pass (not kept).
    skipping: usize,
    inflate: Option<Decompress>,
}

impl Reader {
    /// The streams opened in what was seen so far; `Err` when it is not what a port-forward
    /// client sends (the caller ends the forward: nothing after it can be judged).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<NewStream>, SpdyError> {
        let mut data = data;
        if self.skipping > 0 {
            let n = self.skipping.min(data.len());
            self.skipping -= n;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
        let mut opened = Vec::new();
        loop {
            if self.buf.len() < 8 {
                return Ok(opened);
            }
            let len = usize::from(self.buf[5]) << 16
                | usize::from(self.buf[6]) << 8
                | usize::from(self.buf[7]);
            if self.buf[0] & 0x80 == 0 {
                // A data frame: its payload is the stream's bytes, relayed and not kept.
                let here = self.buf.len() - 8;
                if here >= len {
                    self.buf.drain(..8 + len);
                } else {
                    self.skipping = len - here;
                    self.buf.clear();
                }
                continue;
            }
            let version = u16::from_be_bytes([self.buf[0] & 0x7f, self.buf[1]]);
            let kind = u16::from_be_bytes([self.buf[2], self.buf[3]]);
            if version != 3 {
                return Err(SpdyError::Version(version));
            }
            if len > MAX_CONTROL {
                return Err(SpdyError::TooLarge(len));
            }
            if self.buf.len() < 8 + len {
                return Ok(opened);
            }
            let frame: Vec<u8> = self.buf.drain(..8 + len).skip(8).collect();
            match kind {
                1 => opened.push(self.syn_stream(&frame)?),
                // RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE: nothing to judge.
                3 | 7 | 9 if frame.len() == 8 => {}
                6 if frame.len() == 4 => {}
                4 if frame.len() >= 4 => {}
                3 => return Err(SpdyError::Malformed("RST_STREAM")),
                7 => return Err(SpdyError::Malformed("GOAWAY")),
                9 => return Err(SpdyError::Malformed("WINDOW_UPDATE")),
                6 => return Err(SpdyError::Malformed("PING")),
                4 => return Err(SpdyError::Malformed("SETTINGS")),
                // SYN_REPLY and HEADERS would be headers the gateway does not judge (HEADERS
                // could add a port to a stream); anything else is unknown.
                k => return Err(SpdyError::FrameType(k)),
            }
        }
    }

    fn syn_stream(&mut self, frame: &[u8]) -> Result<NewStream, SpdyError> {
        if frame.len() < 10 {
            return Err(SpdyError::Malformed("SYN_STREAM"));
        }
        let id = u32::from_be_bytes([frame[0] & 0x7f, frame[1], frame[2], frame[3]]);
        let block = self.inflate(&frame[10..])?;
        let port = port_of(&block)?;
        Ok(NewStream { id, port })
    }

    /// One header block through the session's zlib stream (each block ends at a sync flush).
    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let z = self.inflate.get_or_insert_with(|| Decompress::new(true));
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            let (before_in, before_out) = (z.total_in(), z.total_out());
            if out.capacity() - out.len() < 512 {
                out.reserve(4096);
            }
            let r = z.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (z.total_in() - before_in) as usize;
            let made = (z.total_out() - before_out) as usize;
            input = &input[used.min(input.len())..];
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    z.set_dictionary(&dictionary())
                        .map_err(|e| SpdyError::Inflate(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Inflate(e.to_string())),
            }
            if out.len() > MAX_HEADERS {
                return Err(SpdyError::HeadersTooLarge);
            }
            // All input taken and room left over: the block is all out.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if used == 0 && made == 0 {
                return Err(SpdyError::Inflate("no progress".into()));
            }
        }
    }
}

/// The one `port` of an inflated SPDY/3 header block (pairs of 32-bit length-prefixed name and
/// value; a value may hold several, NUL-separated). Names are matched without case, as Go's
/// `http.Header` (which the kubelet reads them into) canonicalises them.
fn port_of(block: &[u8]) -> Result<u16, SpdyError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let end = at.checked_add(n).ok_or(SpdyError::Headers)?;
        let s = block.get(at..end).ok_or(SpdyError::Headers)?;
        at = end;
        Ok(s)
    };
    let u32_at = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let pairs = u32_at(take(4)?);
    if pairs > MAX_PAIRS {
        return Err(SpdyError::Headers);
    }
    let mut ports: Vec<Vec<u8>> = Vec::new();
    for _ in 0..pairs {
        let n = u32_at(take(4)?) as usize;
        let name = take(n)?.to_vec();
        let n = u32_at(take(4)?) as usize;
        let value = take(n)?;
        if name.eq_ignore_ascii_case(b"port") {
            ports.extend(value.split(|&b| b == 0).map(<[u8]>::to_vec));
        }
    }
    if at != block.len() {
        return Err(SpdyError::Headers);
    }
    match ports.as_slice() {
        [] => Err(SpdyError::NoPort),
        [one] => parse_port(one),
        many => Err(SpdyError::ManyPorts(many.len())),
    }
}

/// A port as the kubelet parses it (`strconv.ParseUint(p, 10, 16)`, not 0), but digits only.
pub fn parse_port(text: &[u8]) -> Result<u16, SpdyError> {
    let bad = || SpdyError::BadPort(String::from_utf8_lossy(text).into_owned());
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let s = std::str::from_utf8(text).map_err(|_| bad())?;
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => u16::try_from(p).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): each word
/// 32-bit length-prefixed, then one run of text.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1424);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A client's compressor: one zlib stream with the dictionary, a sync flush per block.
    struct Writer(Compress);

    impl Writer {
        fn new() -> Self {
            let mut c = Compress::new(Compression::default(), true);
            c.set_dictionary(&dictionary()).unwrap();
            Self(c)
        }

        fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
            for (k, v) in headers {
                raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
                raw.extend_from_slice(k.as_bytes());
                raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
                raw.extend_from_slice(v.as_bytes());
            }
            let mut out = Vec::with_capacity(raw.len() + 64);
            self.0
                .compress_vec(&raw, &mut out, FlushCompress::Sync)
                .unwrap();
            out
        }

        fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
            let block = self.block(headers);
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            payload.extend_from_slice(&block);
            control(1, &payload)
        }
    }

    fn control(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80, 3];
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(0);
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        f
    }

    fn data(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = id.to_be_bytes().to_vec();
        f.push(0);
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        f
    }

    fn pf(kind: &str, port: &str, id: &str) -> Vec<(&'static str, String)> {
        vec![
            ("streamtype", kind.to_string()),
            ("port", port.to_string()),
            ("requestid", id.to_string()),
        ]
    }

    fn syn(w: &mut Writer, id: u32, h: &[(&'static str, String)]) -> Vec<u8> {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.syn_stream(id, &h)
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        // Its Adler-32 is the DICTID every SPDY/3 header stream starts with.
        let d = dictionary();
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(c.set_dictionary(&d).unwrap(), 0xe3c6_a7c2);
        assert_eq!(d.len(), 1423);
    }

    #[test]
    fn ports_of_new_streams_are_read_however_the_bytes_are_split() {
        let mut w = Writer::new();
        let mut stream = syn(&mut w, 1, &pf("error", "8080", "0"));
        stream.extend(data(1, b""));
        stream.extend(syn(&mut w, 3, &pf("data", "8080", "0")));
        stream.extend(data(3, &vec![7u8; 70_000]));
        stream.extend(control(6, &1u32.to_be_bytes()));
        stream.extend(syn(&mut w, 5, &pf("error", "5432", "1")));
        for step in [1, 5, 64, 4096, stream.len()] {
            let mut r = Reader::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                got.extend(r.feed(chunk).unwrap());
            }
            let want = [(1, 8080), (3, 8080), (5, 5432)]
                .map(|(id, port)| NewStream { id, port })
                .to_vec();
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn what_a_client_must_not_send_is_an_error() {
        let mut w = Writer::new();
        let h = [("streamtype", "data"), ("requestid", "0")];
        let no_port = w.syn_stream(1, &h);
        assert_eq!(Reader::default().feed(&no_port), Err(SpdyError::NoPort));
        for (port, want) in [
            ("0", SpdyError::BadPort("0".into())),
            ("65536", SpdyError::BadPort("65536".into())),
            ("+80", SpdyError::BadPort("+80".into())),
            ("80\u{0}22", SpdyError::ManyPorts(2)),
        ] {
            let mut w = Writer::new();
            let f = w.syn_stream(1, &[("PORT", port)]);
            assert_eq!(Reader::default().feed(&f), Err(want), "{port:?}");
        }
        // Two `port` headers (any case): not one port.
        let mut w = Writer::new();
        let f = w.syn_stream(1, &[("port", "80"), ("Port", "22")]);
        assert_eq!(Reader::default().feed(&f), Err(SpdyError::ManyPorts(2)));
        // HEADERS could add a port to an open stream; SYN_REPLY is the server's.
        for kind in [2u16, 8, 10] {
            let f = control(kind, &[0, 0, 0, 1, 0, 0, 0, 0]);
            assert_eq!(Reader::default().feed(&f), Err(SpdyError::FrameType(kind)));
        }
        let mut v2 = control(6, &[0, 0, 0, 1]);
        v2[1] = 2;
        assert_eq!(Reader::default().feed(&v2), Err(SpdyError::Version(2)));
        // A header block that is not the session's zlib stream.
        let mut f = control(1, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(b"not zlib");
        f[7] += 8;
        assert!(matches!(
            Reader::default().feed(&f),
            Err(SpdyError::Inflate(_))
        ));
    }
}
