//! A minimal NBD client over a raw socket, written from the spec independently of the
//! crate's own encoders, so the tests do not trust the code under test. It can also send
//! what no real client would.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const FLAG_FUA: u16 = 1;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;

pub const CHUNK_NONE: u16 = 0;
pub const CHUNK_OFFSET_DATA: u16 = 1;
pub const CHUNK_BLOCK_STATUS: u16 = 5;
pub const CHUNK_ERROR: u16 = 0x8001;

/// The largest reply payload this client accepts (a guard against a broken server).
const MAX_REPLY: usize = 64 << 20;

trait Stream: Read + Write + Send {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()>;
}
impl Stream for UnixStream {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}
impl Stream for TcpStream {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

pub struct Raw {
    s: Box<dyn Stream>,
    pub structured: bool,
}

/// One reply, simple or a structured chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        payload: Vec<u8>,
    },
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }

    /// The NBD error this reply carries (0 for success).
    pub fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk { kind, payload, .. } if kind & 0x8000 != 0 => {
                u32::from_be_bytes(payload[..4].try_into().expect("error chunk"))
            }
            Reply::Chunk { .. } => 0,
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

impl Raw {
    pub fn unix(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect unix");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            s: Box::new(s),
            structured: false,
        }
    }

    pub fn tcp(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect tcp");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            s: Box::new(s),
            structured: false,
        }
    }

    /// How long a read waits (20 s unless set).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.s.read_timeout(timeout).expect("set read timeout");
    }

    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    pub fn recv(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b)?;
        Ok(b)
    }

    /// Whether the server closes the connection (EOF, or reset) after sending at most
    /// 64 KiB more, which is read and dropped.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 4096];
        for _ in 0..16 {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    );
                }
            }
        }
        false
    }

    /// Read the greeting; returns the handshake flags.
    pub fn greeting(&mut self) -> u16 {
        let g = self.recv(18).expect("greeting");
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        u16::from_be_bytes([g[16], g[17]])
    }

    pub fn client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes()).expect("send flags");
    }

    pub fn option(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b)
    }

    /// Read one option reply: (option, type, data).
    pub fn option_reply(&mut self) -> io::Result<(u32, u32, Vec<u8>)> {
        let h = self.recv(20)?;
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().expect("8")),
            0x0003_e889_0455_65a9
        );
        let len = be32(&h[16..]) as usize;
        assert!(len <= MAX_REPLY, "option reply of {len} bytes");
        let data = self.recv(len)?;
        Ok((be32(&h[8..]), be32(&h[12..]), data))
    }

    pub fn go_data(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Send GO and read replies up to the final one; returns (size, transmission flags) on
    /// success, the error reply type otherwise.
    pub fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        self.option(OPT_GO, &Self::go_data(name)).expect("send GO");
        let mut export = None;
        loop {
            let (opt, kind, data) = self.option_reply().expect("GO reply");
            assert_eq!(opt, OPT_GO);
            match kind {
                REP_INFO => {
                    if u16::from_be_bytes([data[0], data[1]]) == 0 {
                        let size = u64::from_be_bytes(data[2..10].try_into().expect("8"));
                        export = Some((size, u16::from_be_bytes([data[10], data[11]])));
                    }
                }
                REP_ACK => return Ok(export.expect("NBD_INFO_EXPORT before ACK")),
                err => return Err(err),
            }
        }
    }

    /// Connect and negotiate: structured replies and `contexts` if `structured`.
    pub fn negotiate(mut self, name: &str, structured: bool, contexts: &[&str]) -> (Raw, u64, u16) {
        let flags = self.greeting();
        assert_eq!(flags & 1, 1, "fixed newstyle");
        self.client_flags(1);
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]).expect("send");
            assert_eq!(self.option_reply().expect("reply").1, REP_ACK);
            self.structured = true;
            if !contexts.is_empty() {
                self.option(OPT_SET_META_CONTEXT, &Self::meta_data(name, contexts))
                    .expect("send");
                loop {
                    let (_, kind, _) = self.option_reply().expect("reply");
                    if kind == REP_ACK {
                        break;
                    }
                    assert_eq!(kind, REP_META_CONTEXT);
                }
            }
        }
        let (size, tflags) = self.go(name).expect("GO accepted");
        (self, size, tflags)
    }

    pub fn request(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> io::Result<()> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&command.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.send(&b)
    }

    /// Read one reply. For a simple reply to a successful read, the caller reads the data.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let m = self.recv(4)?;
        match be32(&m) {
            0x6744_6698 => {
                let r = self.recv(12)?;
                Ok(Reply::Simple {
                    error: be32(&r),
                    cookie: u64::from_be_bytes(r[4..12].try_into().expect("8")),
                })
            }
            0x668e_33ef => {
                let r = self.recv(16)?;
                let len = be32(&r[12..]) as usize;
                assert!(len <= MAX_REPLY, "chunk of {len} bytes");
                Ok(Reply::Chunk {
                    flags: u16::from_be_bytes([r[0], r[1]]),
                    kind: u16::from_be_bytes([r[2], r[3]]),
                    cookie: u64::from_be_bytes(r[4..12].try_into().expect("8")),
                    payload: self.recv(len)?,
                })
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// A complete read: `Ok(data)` or `Err(nbd error)`.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, CMD_READ, cookie, offset, len)
            .expect("send read");
        self.read_reply(cookie, offset, len)
    }

    /// The reply to a read already sent.
    pub fn read_reply(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let mut data = Vec::new();
        let mut error = 0;
        loop {
            match self.reply().expect("read reply") {
                Reply::Simple {
                    error: e,
                    cookie: c,
                } => {
                    assert_eq!(c, cookie);
                    assert!(
                        !self.structured,
                        "simple reply to a read after structured replies"
                    );
                    if e != 0 {
                        return Err(e);
                    }
                    return Ok(self.recv(len as usize).expect("read data"));
                }
                Reply::Chunk {
                    flags,
                    kind,
                    cookie: c,
                    payload,
                } => {
                    assert_eq!(c, cookie);
                    match kind {
                        CHUNK_OFFSET_DATA => {
                            let at = u64::from_be_bytes(payload[..8].try_into().expect("8"));
                            assert_eq!(at, offset + data.len() as u64, "one contiguous chunk");
                            data.extend_from_slice(&payload[8..]);
                        }
                        CHUNK_NONE => {}
                        k if k & 0x8000 != 0 => error = be32(&payload),
                        k => panic!("unexpected chunk type {k}"),
                    }
                    if flags & 1 != 0 {
                        return if error != 0 {
                            Err(error)
                        } else {
                            assert_eq!(data.len(), len as usize);
                            Ok(data)
                        };
                    }
                }
            }
        }
    }

    /// The reply to any one of several successful reads of `len` bytes in flight, each
    /// answered in one piece: its cookie and data.
    pub fn read_reply_any(&mut self, len: usize) -> (u64, Vec<u8>) {
        match self.reply().expect("read reply") {
            Reply::Simple { error, cookie } => {
                assert_eq!(error, 0, "read {cookie} failed");
                (cookie, self.recv(len).expect("read data"))
            }
            Reply::Chunk {
                flags,
                kind,
                cookie,
                payload,
            } => {
                assert_eq!(kind, CHUNK_OFFSET_DATA, "read {cookie}: chunk type {kind}");
                assert_ne!(flags & 1, 0, "read {cookie} answered in one chunk");
                assert_eq!(payload.len(), 8 + len);
                (cookie, payload[8..].to_vec())
            }
        }
    }

    /// A request without payload or data, answered by one reply: its error.
    pub fn simple_command(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> u32 {
        self.request(flags, command, cookie, offset, len)
            .expect("send");
        self.final_error(cookie)
    }

    /// Read replies for `cookie` until the final one; return the error (0 on success).
    pub fn final_error(&mut self, cookie: u64) -> u32 {
        let mut error = 0;
        loop {
            let r = self.reply().expect("reply");
            assert_eq!(r.cookie(), cookie);
            if error == 0 {
                error = r.error();
            }
            match r {
                Reply::Simple { .. } => return error,
                Reply::Chunk { flags, .. } if flags & 1 != 0 => return error,
                Reply::Chunk { .. } => {}
            }
        }
    }

    pub fn write(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(flags, CMD_WRITE, cookie, offset, data.len() as u32)
            .expect("send");
        self.send(data).expect("send payload");
        self.final_error(cookie)
    }

    pub fn disconnect(mut self) {
        let _ = self.request(0, CMD_DISC, 0, 0, 0);
    }
}

/// A numeric field of `/proc/PID/status` (the number before any unit).
fn proc_status(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    proc_status(pid, "VmRSS:") * 1024
}

/// Threads of a process.
pub fn threads(pid: i32) -> u64 {
    proc_status(pid, "Threads:")
}
