//! The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): magic numbers, flags, option,
//! command and reply codes, the fixed-size headers, and total decoders for everything a
//! client sends.
//!
//! Every integer on the wire is big-endian. Decoders take byte slices and return
//! [`ProtoError`] for anything malformed; they never panic, and they never allocate a buffer
//! sized by a length field they have not checked against the bytes at hand or a limit.

use crate::error::ProtoError;

/// `NBDMAGIC`, the first word of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second word of the greeting, and the first word of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server → client, 16 bits).
pub mod handshake_flags {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (client → server, 32 bits).
pub mod client_flags {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
    /// Every flag this server understands; any other bit ends the connection (spec: MUST).
    pub const KNOWN: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Transmission flags (16 bits), sent with the export's size.
pub mod transmission_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes (`NBD_OPT_*`).
pub mod option {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (`NBD_REP_*`). Errors have bit 31 set.
pub mod reply {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR | 1;
    pub const ERR_POLICY: u32 = ERR | 2;
    pub const ERR_INVALID: u32 = ERR | 3;
    pub const ERR_PLATFORM: u32 = ERR | 4;
    pub const ERR_TLS_REQD: u32 = ERR | 5;
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    pub const ERR_SHUTDOWN: u32 = ERR | 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR | 8;
    pub const ERR_TOO_BIG: u32 = ERR | 9;
}

/// Information types in `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod command_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk flags and types.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) | 1;
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// NBD error values. The spec restricts replies to this set; [`nbd_error_from_errno`] maps
/// anything else onto it.
pub mod nbd_error {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// Size of the server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Size of an option header: `IHAVEOPT`, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Bytes in front of the data of a read reply sent as one `OFFSET_DATA` chunk.
pub const OFFSET_DATA_HEADER_LEN: usize = CHUNK_HEADER_LEN + 8;

/// The longest string the spec allows (export names, queries, messages).
pub const MAX_STRING_LEN: usize = 4096;
/// The longest option payload this server reads. Every option it understands fits easily
/// (a GO names one export of at most 4096 bytes); a longer one is answered with
/// `NBD_REP_ERR_TOO_BIG` and the connection is closed without reading its data.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The most queries one `LIST_META_CONTEXT` / `SET_META_CONTEXT` may carry.
pub const MAX_META_QUERIES: u32 = 128;
/// The longest message attached to an error reply (the spec allows 4096).
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), ProtoError> {
    if b.len() < n {
        return Err(ProtoError::Truncated {
            what,
            need: n as u64,
            have: b.len() as u64,
        });
    }
    Ok(())
}

/// A cursor over an option payload that refuses to read past its end.
struct Fields<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(what: &'static str, data: &'a [u8]) -> Self {
        Fields { what, rest: data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < n {
            return Err(ProtoError::Truncated {
                what: self.what,
                need: n as u64,
                have: self.rest.len() as u64,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        self.take(2).map(|b| be_u16(b, 0))
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        self.take(4).map(|b| be_u32(b, 0))
    }

    /// A string prefixed by a 32-bit length, at most [`MAX_STRING_LEN`] bytes.
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let len = self.u32()?;
        if len as usize > MAX_STRING_LEN {
            return Err(ProtoError::TooLong {
                what,
                len: len.into(),
                max: MAX_STRING_LEN as u64,
            });
        }
        self.take(len as usize)
    }

    fn finish(self) -> Result<(), ProtoError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                what: self.what,
                extra: self.rest.len() as u64,
            })
        }
    }
}

/// The header of a client option: which option and how many data bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Decode a header; the magic must be `IHAVEOPT`.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        need("option header", b, OPTION_HEADER_LEN)?;
        let magic = be_u64(b, 0);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic {
                what: "option header",
                expected: IHAVEOPT,
                found: magic,
            });
        }
        Ok(OptionHeader {
            option: be_u32(b, 8),
            len: be_u32(b, 12),
        })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the information the client
/// asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    /// The requested `NBD_INFO_*` types, two bytes each (see [`InfoRequest::requests`]).
    info_types: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, ProtoError> {
        let mut f = Fields::new("NBD_OPT_GO/INFO data", data);
        let name = f.string("export name")?;
        let count = f.u16()?;
        let info_types = f.take(usize::from(count) * 2)?;
        f.finish()?;
        Ok(InfoRequest { name, info_types })
    }

    /// The requested information types, in the client's order.
    pub fn requests(&self) -> impl Iterator<Item = u16> + '_ {
        self.info_types.chunks_exact(2).map(|c| be_u16(c, 0))
    }

    pub fn wants(&self, info_type: u16) -> bool {
        self.requests().any(|t| t == info_type)
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    pub export: &'a [u8],
    /// Each query is `namespace:leaf` in UTF-8 (checked by the decoder).
    pub queries: Vec<&'a str>,
}

impl<'a> MetaContextRequest<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, ProtoError> {
        let mut f = Fields::new("meta context data", data);
        let export = f.string("export name")?;
        let count = f.u32()?;
        if count > MAX_META_QUERIES {
            return Err(ProtoError::TooMany {
                what: "meta context queries",
                count: count.into(),
                max: MAX_META_QUERIES.into(),
            });
        }
        // `count` is bounded above, so this allocation is too.
        let mut queries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let q = f.string("meta context query")?;
            let q = std::str::from_utf8(q).map_err(|_| ProtoError::NotUtf8 {
                what: "meta context query",
            })?;
            if !q.contains(':') {
                return Err(ProtoError::Invalid {
                    what: "meta context query",
                    reason: "a query must start with a namespace and a colon",
                });
            }
            queries.push(q);
        }
        f.finish()?;
        Ok(MetaContextRequest { export, queries })
    }
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    /// The command code; see [`Command::from_code`].
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    /// Decode a header; the magic must be `NBD_REQUEST_MAGIC`. Unknown commands and flags
    /// decode fine: they are the request's problem (an `EINVAL` reply), not the frame's.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        need("request header", b, REQUEST_HEADER_LEN)?;
        let magic = be_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request header",
                expected: REQUEST_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(RequestHeader {
            flags: be_u16(b, 4),
            command: be_u16(b, 6),
            cookie: be_u64(b, 8),
            offset: be_u64(b, 16),
            len: be_u32(b, 24),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// The commands this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
}

impl Command {
    /// The command for a wire code, or `None` for a code this server does not implement.
    pub fn from_code(code: u16) -> Option<Command> {
        Some(match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            _ => return None,
        })
    }

    pub fn code(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disconnect => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
        }
    }

    /// The command flags the spec allows with this command (FUA is valid on every command
    /// once negotiated, and ignored where nothing is written).
    pub fn allowed_flags(self) -> u16 {
        use command_flags::*;
        match self {
            Command::Read => FUA | DF,
            Command::Write | Command::Trim | Command::Flush => FUA,
            Command::WriteZeroes => FUA | NO_HOLE | FAST_ZERO,
            Command::BlockStatus => FUA | REQ_ONE,
            Command::Cache | Command::Disconnect => FUA,
        }
    }
}

/// The 18-byte greeting that opens the fixed newstyle handshake.
pub fn greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Append an option reply with `payload` to `out`. The payload of an option reply is
/// bounded by what this server produces, far below `u32::MAX`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(flags: u16, chunk_type: u16, cookie: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// Write the header of a one-chunk read reply (`OFFSET_DATA`, done) for `data_len` bytes at
/// `offset` into `b`. `data_len` is bounded by the maximum request size.
pub fn offset_data_header(
    b: &mut [u8; OFFSET_DATA_HEADER_LEN],
    cookie: u64,
    offset: u64,
    data_len: u32,
) {
    b[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        chunk::FLAG_DONE,
        chunk::OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    ));
    b[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
}

/// Append a final `NBD_REPLY_TYPE_ERROR` chunk carrying `message` (cut at
/// [`MAX_ERROR_MESSAGE_LEN`] bytes, on a character boundary).
pub fn put_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    out.extend_from_slice(&chunk_header(
        chunk::FLAG_DONE,
        chunk::ERROR,
        cookie,
        6 + message.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
}

/// Map an `errno` (Linux numbering, as `remap_core::IoError::errno` gives) to the NBD error
/// the spec allows for it.
pub fn nbd_error_from_errno(errno: i32) -> u32 {
    const EROFS: i32 = 30;
    const EFBIG: i32 = 27;
    const EDQUOT: i32 = 122;
    const EOPNOTSUPP: i32 = 95;
    const ESHUTDOWN: i32 = 108;
    match errno {
        1 | EROFS => nbd_error::EPERM,
        12 => nbd_error::ENOMEM,
        22 => nbd_error::EINVAL,
        28 | EFBIG | EDQUOT => nbd_error::ENOSPC,
        75 => nbd_error::EOVERFLOW,
        EOPNOTSUPP => nbd_error::ENOTSUP,
        ESHUTDOWN => nbd_error::ESHUTDOWN,
        _ => nbd_error::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn option_data_go(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta_data(export: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    }

    #[test]
    fn option_header_round_trips_and_checks_magic() {
        let h = OptionHeader {
            option: option::GO,
            len: 77,
        };
        assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] ^= 1;
        assert!(matches!(
            OptionHeader::decode(&bad),
            Err(ProtoError::BadMagic { .. })
        ));
        assert!(matches!(
            OptionHeader::decode(&h.encode()[..15]),
            Err(ProtoError::Truncated {
                need: 16,
                have: 15,
                ..
            })
        ));
        // Unknown options and huge lengths decode: the handshake decides what to do.
        let h = OptionHeader {
            option: 0xdead_beef,
            len: u32::MAX,
        };
        assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn info_request_decodes_and_rejects_bad_lengths() {
        let d = option_data_go(b"disk", &[info::BLOCK_SIZE, info::NAME]);
        let r = InfoRequest::decode(&d).unwrap();
        assert_eq!(r.name, b"disk");
        assert_eq!(r.requests().collect::<Vec<_>>(), vec![3, 1]);
        assert!(r.wants(info::NAME) && !r.wants(info::DESCRIPTION));

        // Name length beyond the data.
        let mut d = option_data_go(b"disk", &[]);
        d[3] = 200;
        assert!(matches!(
            InfoRequest::decode(&d),
            Err(ProtoError::Truncated { .. })
        ));
        // Name length above the string limit, without the bytes behind it.
        let mut d = option_data_go(b"", &[]);
        d[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            InfoRequest::decode(&d),
            Err(ProtoError::TooLong { .. })
        ));
        // More info requests announced than present.
        let mut d = option_data_go(b"x", &[1]);
        let n = d.len();
        d[n - 4..n - 2].copy_from_slice(&5u16.to_be_bytes());
        assert!(matches!(
            InfoRequest::decode(&d),
            Err(ProtoError::Truncated { .. })
        ));
        // Trailing bytes.
        let mut d = option_data_go(b"x", &[1]);
        d.push(0);
        assert!(matches!(
            InfoRequest::decode(&d),
            Err(ProtoError::TrailingBytes { extra: 1, .. })
        ));
        // Too short for the count.
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0]).is_err());
        assert!(InfoRequest::decode(&[]).is_err());
    }

    #[test]
    fn meta_context_request_decodes_and_rejects_bad_queries() {
        let d = meta_data(b"", &[b"base:allocation", b"remap:"]);
        let r = MetaContextRequest::decode(&d).unwrap();
        assert_eq!(r.export, b"");
        assert_eq!(r.queries, vec!["base:allocation", "remap:"]);
        assert!(
            MetaContextRequest::decode(&meta_data(b"a", &[]))
                .unwrap()
                .queries
                .is_empty()
        );

        assert!(matches!(
            MetaContextRequest::decode(&meta_data(b"", &[b"nocolon"])),
            Err(ProtoError::Invalid { .. })
        ));
        assert!(matches!(
            MetaContextRequest::decode(&meta_data(b"", &[b"base:\xff"])),
            Err(ProtoError::NotUtf8 { .. })
        ));
        // A huge query count is refused before anything is allocated for it.
        let mut d = meta_data(b"", &[]);
        let n = d.len();
        d[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            MetaContextRequest::decode(&d),
            Err(ProtoError::TooMany { .. })
        ));
        // A count the data cannot hold.
        d[n - 4..].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            MetaContextRequest::decode(&d),
            Err(ProtoError::Truncated { .. })
        ));
        // Query length beyond the data.
        let mut d = meta_data(b"", &[b"base:allocation"]);
        let at = d.len() - 15 - 4;
        d[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            MetaContextRequest::decode(&d),
            Err(ProtoError::Truncated { .. })
        ));
        let mut d = meta_data(b"", &[b"base:allocation"]);
        d.extend_from_slice(b"xx");
        assert!(matches!(
            MetaContextRequest::decode(&d),
            Err(ProtoError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn request_header_round_trips_checks_magic_and_length() {
        let r = RequestHeader {
            flags: command_flags::FUA,
            command: Command::Write.code(),
            cookie: 0x0102_0304_0506_0708,
            offset: u64::MAX,
            len: u32::MAX,
        };
        assert_eq!(RequestHeader::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[3] = 0;
        assert!(matches!(
            RequestHeader::decode(&bad),
            Err(ProtoError::BadMagic {
                found: 0x2560_9500,
                ..
            })
        ));
        assert!(matches!(
            RequestHeader::decode(&r.encode()[..27]),
            Err(ProtoError::Truncated {
                need: 28,
                have: 27,
                ..
            })
        ));
        assert!(RequestHeader::decode(&[]).is_err());
        // Unknown commands decode; they are answered with EINVAL later.
        let u = RequestHeader { command: 99, ..r };
        assert_eq!(RequestHeader::decode(&u.encode()).unwrap().command, 99);
        assert_eq!(Command::from_code(99), None);
    }

    #[test]
    fn command_codes_round_trip() {
        for code in 0..=7 {
            assert_eq!(Command::from_code(code).map(Command::code), Some(code));
        }
        assert_eq!(Command::from_code(8), None);
        assert_eq!(Command::from_code(u16::MAX), None);
        assert_eq!(Command::Read.allowed_flags() & command_flags::NO_HOLE, 0);
    }

    #[test]
    fn replies_have_the_documented_layout() {
        let s = simple_reply(nbd_error::EIO, 0xAB);
        assert_eq!(&s[..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&s[4..8], &[0, 0, 0, 5]);
        assert_eq!(s[15], 0xAB);

        let mut out = Vec::new();
        put_error_chunk(&mut out, 7, nbd_error::EINVAL, &"é".repeat(2000));
        assert_eq!(&out[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(be_u16(&out, 4), chunk::FLAG_DONE);
        assert_eq!(be_u16(&out, 6), chunk::ERROR);
        let len = be_u32(&out, 16) as usize;
        assert_eq!(out.len(), CHUNK_HEADER_LEN + len);
        let msg_len = be_u16(&out, 24) as usize;
        assert_eq!(len, 6 + msg_len);
        assert!(msg_len <= MAX_ERROR_MESSAGE_LEN);
        assert!(
            std::str::from_utf8(&out[26..]).is_ok(),
            "cut on a char boundary"
        );

        let mut h = [0u8; OFFSET_DATA_HEADER_LEN];
        offset_data_header(&mut h, 1, 4096, 512);
        assert_eq!(be_u32(&h, 16), 520);
        assert_eq!(be_u64(&h, 20), 4096);

        let mut out = Vec::new();
        put_option_reply(&mut out, option::LIST, reply::ERR_UNSUP, b"no");
        assert_eq!(be_u64(&out, 0), OPTION_REPLY_MAGIC);
        assert_eq!(be_u32(&out, 12), reply::ERR_UNSUP);
        assert_eq!(be_u32(&out, 16), 2);
    }

    #[test]
    fn errno_mapping_stays_inside_the_nbd_set() {
        assert_eq!(nbd_error_from_errno(5), nbd_error::EIO);
        assert_eq!(nbd_error_from_errno(30), nbd_error::EPERM);
        assert_eq!(nbd_error_from_errno(27), nbd_error::ENOSPC);
        assert_eq!(nbd_error_from_errno(122), nbd_error::ENOSPC);
        assert_eq!(nbd_error_from_errno(95), nbd_error::ENOTSUP);
        assert_eq!(nbd_error_from_errno(61), nbd_error::EIO);
        assert_eq!(nbd_error_from_errno(-1), nbd_error::EIO);
    }

    proptest! {
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = OptionHeader::decode(&bytes);
            let _ = RequestHeader::decode(&bytes);
            let _ = InfoRequest::decode(&bytes);
            let _ = MetaContextRequest::decode(&bytes);
        }

        #[test]
        fn info_request_round_trips(name in proptest::collection::vec(any::<u8>(), 0..300),
                                    infos in proptest::collection::vec(any::<u16>(), 0..20)) {
            let d = option_data_go(&name, &infos);
            let r = InfoRequest::decode(&d).unwrap();
            prop_assert_eq!(r.name, &name[..]);
            prop_assert_eq!(r.requests().collect::<Vec<_>>(), infos);
        }
    }
}
