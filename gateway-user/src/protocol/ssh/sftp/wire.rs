//! SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02, as OpenSSH speaks it): packets
//! (`uint32 length, byte type, …`) cut out of a channel's byte stream, the requests the gateway
//! judges read from them, and the status packet it answers a refused request with.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest packet either side may send (OpenSSH's `SFTP_MAX_MSG_LENGTH`, 256 KiB, the
/// length field not counted): sftp-server and the sftp client both end the session over it.
pub const MAX_PACKET: usize = 256 * 1024;

pub const FXP_INIT: u8 = 1;
pub const FXP_VERSION: u8 = 2;
pub const FXP_OPEN: u8 = 3;
pub const FXP_CLOSE: u8 = 4;
pub const FXP_READ: u8 = 5;
pub const FXP_WRITE: u8 = 6;
pub const FXP_LSTAT: u8 = 7;
pub const FXP_FSTAT: u8 = 8;
pub const FXP_SETSTAT: u8 = 9;
pub const FXP_FSETSTAT: u8 = 10;
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_REMOVE: u8 = 13;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_RMDIR: u8 = 15;
pub const FXP_REALPATH: u8 = 16;
pub const FXP_STAT: u8 = 17;
pub const FXP_RENAME: u8 = 18;
pub const FXP_READLINK: u8 = 19;
pub const FXP_SYMLINK: u8 = 20;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_DATA: u8 = 103;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;

pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_FAILURE: u32 = 4;

/// `pflags` of an open that may change the file.
pub const FXF_WRITE: u32 = 0x02;
pub const FXF_APPEND: u32 = 0x04;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("an sftp packet of {0} bytes (at most {MAX_PACKET})")]
    TooLong(usize),
    #[error("an empty sftp packet")]
    Empty,
    #[error("a malformed sftp packet (type {0})")]
    Malformed(u8),
}

/// Cuts whole packets out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, length field included; `Ok(None)` until one has arrived. A length
    /// over [`MAX_PACKET`] is an error as soon as it is read (nothing more is buffered).
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_PACKET {
            return Err(WireError::TooLong(len));
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }

    /// Bytes of a packet not yet complete.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads the fields of one packet (after its length).
pub struct Reader {
    typ: u8,
    rest: Bytes,
}

impl Reader {
    /// `packet` as [`Framer::next_packet`] returns it.
    pub fn new(packet: &Bytes) -> Result<Reader, WireError> {
        let mut rest = packet.slice(4..);
        if rest.is_empty() {
            return Err(WireError::Empty);
        }
        let typ = rest.get_u8();
        Ok(Reader { typ, rest })
    }

    pub fn typ(&self) -> u8 {
        self.typ
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        if self.rest.len() < 4 {
            return Err(WireError::Malformed(self.typ));
        }
        Ok(self.rest.get_u32())
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        if self.rest.len() < 8 {
            return Err(WireError::Malformed(self.typ));
        }
        Ok(self.rest.get_u64())
    }

    pub fn string(&mut self) -> Result<Bytes, WireError> {
        let len = self.u32()? as usize;
        if self.rest.len() < len {
            return Err(WireError::Malformed(self.typ));
        }
        Ok(self.rest.split_to(len))
    }

    /// The length of the next string, skipping its bytes.
    pub fn string_len(&mut self) -> Result<usize, WireError> {
        self.string().map(|s| s.len())
    }
}

/// SSH_FXP_STATUS for request `id`.
pub fn status(id: u32, code: u32, message: &str) -> Bytes {
    let body_len = 1 + 4 + 4 + 4 + message.len() + 4 + 2;
    let mut b = BytesMut::with_capacity(4 + body_len);
    b.put_u32(body_len as u32);
    b.put_u8(FXP_STATUS);
    b.put_u32(id);
    b.put_u32(code);
    b.put_u32(message.len() as u32);
    b.put_slice(message.as_bytes());
    b.put_u32(2);
    b.put_slice(b"en");
    b.freeze()
}

/// SSH_FXP_DATA for request `id`.
pub fn data(id: u32, data: &[u8]) -> Bytes {
    let body_len = 1 + 4 + 4 + data.len();
    let mut b = BytesMut::with_capacity(4 + body_len);
    b.put_u32(body_len as u32);
    b.put_u8(FXP_DATA);
    b.put_u32(id);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

/// The INIT packet with its version lowered to 3: the gateway reads version 3 only (later
/// versions change what packets mean), so the target is never asked for more.
pub fn init_v3(packet: &Bytes) -> Result<Bytes, WireError> {
    let mut r = Reader::new(packet)?;
    let version = r.u32()?;
    if version < 3 {
        // Versions 1 and 2 are not spoken by any client still in use; not modelled.
        return Err(WireError::Malformed(FXP_INIT));
    }
    let mut b = BytesMut::from(&packet[..]);
    b[5..9].copy_from_slice(&3u32.to_be_bytes());
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(typ);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn framer_cuts_packets_across_pieces() {
        let mut f = Framer::default();
        let mut stream = packet(FXP_REMOVE, b"\0\0\0\x07\0\0\0\x02/x");
        stream.extend(packet(FXP_INIT, b"\0\0\0\x03"));
        f.push(&stream[..3]);
        assert!(f.next_packet().unwrap().is_none());
        f.push(&stream[3..10]);
        assert!(f.next_packet().unwrap().is_none());
        f.push(&stream[10..]);
        let p = f.next_packet().unwrap().unwrap();
        let mut r = Reader::new(&p).unwrap();
        assert_eq!(r.typ(), FXP_REMOVE);
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(&r.string().unwrap()[..], b"/x");
        assert!(r.string().is_err());
        let p = f.next_packet().unwrap().unwrap();
        assert_eq!(Reader::new(&p).unwrap().typ(), FXP_INIT);
        assert!(f.next_packet().unwrap().is_none());
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn framer_refuses_a_packet_over_the_cap_at_once() {
        let mut f = Framer::default();
        f.push(&((MAX_PACKET + 1) as u32).to_be_bytes());
        assert!(matches!(f.next_packet(), Err(WireError::TooLong(_))));
        let mut f = Framer::default();
        f.push(&[0, 0, 0, 0]);
        assert!(f.next_packet().is_err());
    }

    #[test]
    fn status_and_init() {
        let s = status(9, FX_PERMISSION_DENIED, "no");
        let mut r = Reader::new(&s).unwrap();
        assert_eq!(r.typ(), FXP_STATUS);
        assert_eq!(r.u32().unwrap(), 9);
        assert_eq!(r.u32().unwrap(), FX_PERMISSION_DENIED);
        assert_eq!(&r.string().unwrap()[..], b"no");
        assert_eq!(&r.string().unwrap()[..], b"en");
        assert_eq!(
            u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize,
            s.len() - 4
        );
        let init = Bytes::from(packet(FXP_INIT, &6u32.to_be_bytes()));
        let v3 = init_v3(&init).unwrap();
        assert_eq!(Reader::new(&v3).unwrap().u32().unwrap(), 3);
        let v2 = Bytes::from(packet(FXP_INIT, &2u32.to_be_bytes()));
        assert!(init_v3(&v2).is_err());
    }
}
