//! SPDY/3.1 framing for the port-forward stand-in (portforward.rs): frames read and written,
//! header blocks through one zlib stream per direction with SPDY/3's preset dictionary.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A control frame larger than this ends the session (kubectl's are well under 1 KiB).
const MAX_CONTROL: usize = 64 << 10;

pub enum Frame {
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
}

/// The next frame; `Err` at EOF or on a frame the stand-in does not accept (not version 3, too
/// large).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut h = [0u8; 8];
    r.read_exact(&mut h).await?;
    let len = usize::from(h[5]) << 16 | usize::from(h[6]) << 8 | usize::from(h[7]);
    if h[0] & 0x80 == 0 {
        if len > 16 << 20 {
            return Err(bad("a data frame over 16 MiB"));
        }
        let mut data = vec![0u8; len];
        r.read_exact(&mut data).await?;
        let id = u32::from_be_bytes([h[0] & 0x7f, h[1], h[2], h[3]]);
        return Ok(Frame::Data {
            id,
            fin: h[4] & 1 != 0,
            data,
        });
    }
    if u16::from_be_bytes([h[0] & 0x7f, h[1]]) != 3 {
        return Err(bad("not SPDY/3"));
    }
    if len > MAX_CONTROL {
        return Err(bad("a control frame too large"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Frame::Control {
        kind: u16::from_be_bytes([h[2], h[3]]),
        flags: h[4],
        payload,
    })
}

pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 3];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn data(id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = (id & 0x7fff_ffff).to_be_bytes().to_vec();
    f.push(u8::from(fin));
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// The client's header blocks, inflated.
#[derive(Default)]
pub struct HeaderReader(Option<Decompress>);

impl HeaderReader {
    fn inflate(&mut self, block: &[u8]) -> Option<Vec<u8>> {
        let z = self.0.get_or_insert_with(|| Decompress::new(true));
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let mut input = block;
        for _ in 0..1024 {
            let before = z.total_in();
            if out.capacity() - out.len() < 512 {
                out.reserve(4096);
            }
            let r = z.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (z.total_in() - before) as usize;
            input = &input[used.min(input.len())..];
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    z.set_dictionary(&dictionary()).ok()?;
                    continue;
                }
                Err(_) => return None,
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Some(out);
            }
            if out.len() > 64 << 10 {
                return None;
            }
        }
        None
    }
}

/// The stand-in's header blocks, deflated.
pub struct HeaderWriter(Compress);

impl HeaderWriter {
    pub fn new() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        // Cannot fail for a fresh stream.
        let _ = c.set_dictionary(&dictionary());
        Self(c)
    }

    /// A `SYN_REPLY` for stream `id`, with no headers (as the kubelet answers).
    pub fn syn_reply(&mut self, id: u32) -> Vec<u8> {
        let raw = 0u32.to_be_bytes();
        let mut block = Vec::with_capacity(64);
        let _ = self.0.compress_vec(&raw, &mut block, FlushCompress::Sync);
        let mut payload = (id & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend_from_slice(&block);
        control(2, 0, &payload)
    }
}

impl Default for HeaderWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// A `SYN_STREAM`'s stream id and headers (name, each value); `None` if malformed.
pub fn syn_stream(payload: &[u8], r: &mut HeaderReader) -> Option<(u32, Vec<(String, String)>)> {
    if payload.len() < 10 {
        return None;
    }
    let id = u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
    let block = r.inflate(&payload[10..])?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = block.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let n32 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let pairs = n32(take(4)?);
    let mut headers = Vec::new();
    for _ in 0..pairs.min(256) {
        let n = n32(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = n32(take(4)?);
        let value = take(n)?;
        for v in value.split(|&b| b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Some((id, headers))
}

/// SPDY/3's header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1).
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
