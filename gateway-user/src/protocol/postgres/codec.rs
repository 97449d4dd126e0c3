//! PostgreSQL wire framing: every message after startup is a type byte, a big-endian length that
//! counts itself, and a body. A frame keeps the original bytes (header included) in one buffer
//! allocated once per message, so the relay forwards exactly what it read and decodes only what
//! the policy needs.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase packets (SSLRequest, StartupMessage, CancelRequest) are small; PostgreSQL itself
/// refuses anything over 10 000 bytes.
pub const MAX_STARTUP: usize = 10_000;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("message `{tag}` of {len} bytes is over the limit of {max}")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("message `{tag}` has an impossible length {len}")]
    BadLength { tag: char, len: i64 },
    #[error("malformed `{tag}` message: {what}")]
    Malformed { tag: char, what: &'static str },
}

/// One protocol message: `bytes[0]` is the type, `bytes[1..5]` the length, then the body.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: BytesMut,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// No message at all: what the relay forwards when the gateway has answered by itself.
    pub fn nothing() -> Frame {
        Frame {
            bytes: BytesMut::new(),
        }
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// A new frame of type `tag` whose body `fill` writes; the length is filled in afterwards.
    pub fn build(tag: u8, fill: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut bytes = BytesMut::with_capacity(64);
        bytes.put_u8(tag);
        bytes.put_u32(0);
        fill(&mut bytes);
        let len = (bytes.len() - 1) as u32;
        bytes[1..5].copy_from_slice(&len.to_be_bytes());
        Frame { bytes }
    }
}

/// Reads one typed message. `Ok(None)` is a clean end of stream between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>, CodecError> {
    let mut header = [0u8; 5];
    // The first byte decides between a clean close and a truncated message.
    if r.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await?;
    let tag = header[0] as char;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(CodecError::BadLength {
            tag,
            len: len.into(),
        });
    }
    let len = len as usize;
    if len > max {
        return Err(CodecError::TooLarge { tag, len, max });
    }
    let mut bytes = BytesMut::with_capacity(len + 1);
    bytes.extend_from_slice(&header);
    bytes.resize(len + 1, 0);
    r.read_exact(&mut bytes[5..]).await?;
    Ok(Some(Frame { bytes }))
}

/// Reads one untyped startup-phase packet (length, then a code and the rest). Returns the whole
/// packet after the length word.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, CodecError> {
    let len = r.read_u32().await?;
    if !(8..=MAX_STARTUP as u32).contains(&len) {
        return Err(CodecError::BadLength {
            tag: '0',
            len: len.into(),
        });
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// A cursor over a message body for the few fields the gateway decodes.
pub struct Fields<'a> {
    buf: &'a [u8],
    tag: char,
}

impl<'a> Fields<'a> {
    pub fn new(frame: &'a Frame) -> Self {
        Self {
            buf: frame.body(),
            tag: frame.tag() as char,
        }
    }

    pub fn over(buf: &'a [u8], tag: char) -> Self {
        Self { buf, tag }
    }

    fn err(&self, what: &'static str) -> CodecError {
        CodecError::Malformed {
            tag: self.tag,
            what,
        }
    }

    pub fn cstr(&mut self) -> Result<&'a str, CodecError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without terminator"))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| self.err("string is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, CodecError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, CodecError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A non-negative count, as the protocol's Int16 counts are.
    pub fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.err("negative count"))
    }
}

pub fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Fields of an ErrorResponse or NoticeResponse, by their one-byte codes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub fields: Vec<(u8, String)>,
}

impl Notice {
    pub fn parse(frame: &Frame) -> Result<Notice, CodecError> {
        let mut f = Fields::new(frame);
        let mut fields = Vec::new();
        loop {
            let code = f.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, f.cstr()?.to_string()));
        }
        Ok(Notice { fields })
    }

    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    pub fn sqlstate(&self) -> &str {
        self.get(b'C').unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.get(b'M').unwrap_or("")
    }
}

/// Whether a server setting leaves SQL text readable the way the gateway's parser reads it
/// (PostgreSQL's defaults). `standard_conforming_strings = off` turns backslashes in ordinary
/// strings into escapes, and the client-only multi-byte encodings (SJIS, BIG5, GBK, UHC,
/// GB18030, JOHAB) have characters whose second byte is a backslash or quote: under either, a
/// string the gateway reads as one literal can end early on the server and hide a statement.
pub fn lexer_safe(name: &str, value: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase()
    };
    match norm(name).as_str() {
        "STANDARDCONFORMINGSTRINGS" => value.eq_ignore_ascii_case("on"),
        "CLIENTENCODING" => !matches!(
            norm(value).as_str(),
            "SJIS"
                | "SHIFTJIS"
                | "SHIFTJIS2004"
                | "MSKANJI"
                | "WIN932"
                | "CP932"
                | "BIG5"
                | "WIN950"
                | "CP950"
                | "GBK"
                | "WIN936"
                | "CP936"
                | "UHC"
                | "WIN949"
                | "CP949"
                | "GB18030"
                | "JOHAB"
        ),
        _ => true,
    }
}

/// The name and value of a ParameterStatus (`S`) message.
pub fn parameter_status(frame: &Frame) -> Result<(String, String), CodecError> {
    let mut f = Fields::new(frame);
    Ok((f.cstr()?.to_string(), f.cstr()?.to_string()))
}

/// Messages the gateway itself sends to clients.
pub mod out {
    use bytes::BufMut;

    use super::{put_cstr, Frame};

    /// ErrorResponse (`E`) or NoticeResponse (`N`) with severity, SQLSTATE, message and an
    /// optional detail.
    pub fn notice(
        tag: u8,
        severity: &str,
        code: &str,
        message: &str,
        detail: Option<&str>,
    ) -> Frame {
        Frame::build(tag, |b| {
            for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code)] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(b'M');
            put_cstr(b, message);
            if let Some(d) = detail {
                b.put_u8(b'D');
                put_cstr(b, d);
            }
            b.put_u8(0);
        })
    }

    /// NoticeResponse with a hint (what the reader can do about it).
    pub fn notice_with_hint(severity: &str, code: &str, message: &str, hint: &str) -> Frame {
        Frame::build(b'N', |b| {
            for (field, value) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', code),
                (b'M', message),
                (b'H', hint),
            ] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(0);
        })
    }

    pub fn error(severity: &str, code: &str, message: &str, detail: Option<&str>) -> Frame {
        notice(b'E', severity, code, message, detail)
    }

    pub fn auth(code: i32) -> Frame {
        Frame::build(b'R', |b| b.put_i32(code))
    }

    pub fn backend_key(pid: i32, key: i32) -> Frame {
        Frame::build(b'K', |b| {
            b.put_i32(pid);
            b.put_i32(key);
        })
    }

    pub fn ready(status: u8) -> Frame {
        Frame::build(b'Z', |b| b.put_u8(status))
    }

    pub fn query(sql: &str) -> Frame {
        Frame::build(b'Q', |b| put_cstr(b, sql))
    }

    /// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_` options asked for.
    pub fn negotiate(minor: i32, unknown: &[String]) -> Frame {
        Frame::build(b'v', |b| {
            b.put_i32(minor);
            b.put_i32(unknown.len() as i32);
            for o in unknown {
                put_cstr(b, o);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Option<Frame>, CodecError>> {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            let x = read_frame(&mut r, max).await;
            let stop = !matches!(x, Ok(Some(_)));
            out.push(x);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_keep_original_bytes() {
        let q = out::query("SELECT 1");
        let z = out::ready(b'I');
        let mut wire = q.bytes.to_vec();
        wire.extend_from_slice(&z.bytes);
        let got = read_all(&wire, 1024).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap().bytes, q.bytes);
        assert_eq!(got[1].as_ref().unwrap().as_ref().unwrap().bytes, z.bytes);
        assert!(matches!(got[2], Ok(None)));
        let f = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(Fields::new(f).cstr().unwrap(), "SELECT 1");
    }

    #[tokio::test]
    async fn bad_lengths_and_truncation_are_errors() {
        // Length below the header's own size.
        let got = read_all(&[b'Q', 0, 0, 0, 3], 1024).await;
        assert!(matches!(got[0], Err(CodecError::BadLength { len: 3, .. })));
        // Negative length.
        let got = read_all(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1024).await;
        assert!(matches!(got[0], Err(CodecError::BadLength { len: -1, .. })));
        // Over the limit: refused before allocating.
        let got = read_all(&[b'Q', 0x7f, 0, 0, 0], 1024).await;
        assert!(matches!(got[0], Err(CodecError::TooLarge { .. })));
        // Body shorter than announced.
        let got = read_all(&[b'Q', 0, 0, 0, 10, b'x'], 1024).await;
        assert!(
            matches!(&got[0], Err(CodecError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
        // Header cut short.
        let got = read_all(&[b'Q', 0, 0], 1024).await;
        assert!(
            matches!(&got[0], Err(CodecError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
    }

    #[tokio::test]
    async fn startup_packets_are_bounded() {
        let mut r: &[u8] = &[0, 0, 0x27, 0x11, 0, 0, 0, 0];
        assert!(matches!(
            read_startup(&mut r).await,
            Err(CodecError::BadLength { .. })
        ));
        let mut r: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(
            read_startup(&mut r).await.unwrap(),
            vec![0x04, 0xd2, 0x16, 0x2f]
        );
    }

    proptest::proptest! {
        /// Any byte string splits into frames that reproduce it, or ends in an error; never a
        /// panic, never a frame over the limit.
        #[test]
        fn arbitrary_bytes_frame_or_fail(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), max in 4usize..256) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(read_all(&bytes, max));
            let mut seen = Vec::new();
            for r in &got {
                if let Ok(Some(f)) = r {
                    proptest::prop_assert!(f.bytes.len() <= max + 1);
                    let len = u32::from_be_bytes([f.bytes[1], f.bytes[2], f.bytes[3], f.bytes[4]]) as usize;
                    proptest::prop_assert_eq!(len + 1, f.bytes.len());
                    seen.extend_from_slice(&f.bytes);
                }
            }
            proptest::prop_assert_eq!(&bytes[..seen.len()], &seen[..]);
            if matches!(got.last(), Some(Ok(None))) {
                proptest::prop_assert_eq!(seen.len(), bytes.len());
            }
        }

        /// Field decoding of arbitrary bodies never panics.
        #[test]
        fn arbitrary_bodies_decode_or_fail(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let frame = Frame::build(b'E', |b| b.extend_from_slice(&body));
            let _ = Notice::parse(&frame);
            let mut f = Fields::new(&frame);
            while f.cstr().is_ok() || f.i16().is_ok() || f.count().is_ok() {}
        }
    }

    #[test]
    fn settings_that_change_the_lexer() {
        assert!(lexer_safe("standard_conforming_strings", "on"));
        assert!(!lexer_safe("standard_conforming_strings", "off"));
        assert!(lexer_safe("client_encoding", "UTF8"));
        assert!(lexer_safe("client_encoding", "LATIN1"));
        assert!(lexer_safe("client_encoding", "EUC_JP"));
        for e in [
            "SJIS",
            "shift_jis_2004",
            "Big5",
            "gbk",
            "UHC",
            "GB18030",
            "johab",
            "win932",
        ] {
            assert!(!lexer_safe("client_encoding", e), "{e}");
        }
        assert!(lexer_safe("DateStyle", "ISO, MDY"));
    }

    #[test]
    fn notice_round_trip_and_malformed_fields() {
        let e = out::error("ERROR", "42501", "no", Some("why"));
        let n = Notice::parse(&e).unwrap();
        assert_eq!(n.sqlstate(), "42501");
        assert_eq!(n.message(), "no");
        assert_eq!(n.get(b'D'), Some("why"));
        let cut = Frame {
            bytes: BytesMut::from(&e.bytes[..e.bytes.len() - 3]),
        };
        assert!(Notice::parse(&cut).is_err());
        let mut f = Fields::over(&[0xff, 0xff], 'B');
        assert!(f.count().is_err());
    }
}
