//! Fixed newstyle negotiation: the greeting, the client flags, and option haggling until the
//! client picks the export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Every option the server does not implement (STARTTLS included) gets an error reply and
//! the connection stays usable. Option data is read only after its length has been checked
//! against [`MAX_OPTION_LEN`]; a longer option gets `NBD_REP_ERR_TOO_BIG` and the connection
//! is closed without reading any of its data (waiting for gigabytes a client announced is
//! how one client would hold a slot).
//!
//! The greeting is sent by the server's accept loop ([`greeting_bytes`]), which holds a new
//! connection without a thread until the client answers it.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::block_status::MetaContext;
use crate::error::{HandshakeError, ProtoError};
use crate::export::Export;
use crate::proto::{
    InfoRequest, MAX_OPTION_LEN, MetaContextRequest, OPTION_HEADER_LEN, OptionHeader, client_flags,
    greeting, handshake_flags, info, option, put_option_reply, reply,
};

/// The most options one connection may send before the server hangs up (a client that
/// haggles forever is treated as a denial of service, which the spec allows).
pub const MAX_OPTIONS: u32 = 1024;

/// What the client and the server agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub structured: bool,
    /// The selected metadata contexts (at most one of each).
    pub contexts: Vec<MetaContext>,
    /// The transmission flags sent to the client.
    pub flags: u16,
}

/// The greeting a new connection gets, before anything is read from it.
pub(crate) fn greeting_bytes() -> [u8; crate::proto::GREETING_LEN] {
    greeting(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES)
}

/// Takes a transmission slot for the connection when the client picks the export; an error
/// (no slot free) refuses the export and ends the connection.
pub(crate) type Admit<'a> = &'a mut dyn FnMut() -> Result<(), HandshakeError>;

/// Option-haggling state.
struct Haggle<'a, W> {
    out: W,
    export: &'a Export,
    admit: Admit<'a>,
    structured: bool,
    contexts: Vec<MetaContext>,
    reply: Vec<u8>,
}

impl<W: Write> Haggle<'_, W> {
    fn send(&mut self, option: u32) -> Result<(), HandshakeError> {
        let r = self.out.write_all(&self.reply);
        self.reply.clear();
        r.map_err(|source| HandshakeError::SendReply { option, source })
    }

    fn ack(&mut self, option: u32) -> Result<(), HandshakeError> {
        put_option_reply(&mut self.reply, option, reply::ACK, &[]);
        self.send(option)
    }

    fn error(&mut self, option: u32, kind: u32, message: &str) -> Result<(), HandshakeError> {
        tracing::debug!(
            option,
            kind = format_args!("{kind:#x}"),
            message,
            "option refused"
        );
        put_option_reply(&mut self.reply, option, kind, message.as_bytes());
        self.send(option)
    }

    fn refuse_malformed(&mut self, option: u32, e: &ProtoError) -> Result<(), HandshakeError> {
        let kind = match e {
            ProtoError::TooMany { .. } | ProtoError::TooLong { .. } => reply::ERR_TOO_BIG,
            _ => reply::ERR_INVALID,
        };
        self.error(option, kind, &e.to_string())
    }

    fn info_reply(&mut self, option: u32, info_type: u16, payload: &[&[u8]]) {
        let mut data = Vec::with_capacity(2 + payload.iter().map(|p| p.len()).sum::<usize>());
        data.extend_from_slice(&info_type.to_be_bytes());
        for p in payload {
            data.extend_from_slice(p);
        }
        put_option_reply(&mut self.reply, option, reply::INFO, &data);
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`. Returns whether the export was accepted.
    fn info(&mut self, option: u32, data: &[u8]) -> Result<bool, HandshakeError> {
        let request = match InfoRequest::decode(data) {
            Ok(r) => r,
            Err(e) => {
                self.refuse_malformed(option, &e)?;
                return Ok(false);
            }
        };
        if !self.export.matches(request.name) {
            let message = format!(
                "no export named {:?}; this server offers {:?}",
                String::from_utf8_lossy(request.name),
                self.export.name
            );
            self.error(option, reply::ERR_UNKNOWN, &message)?;
            return Ok(false);
        }
        let export = self.export;
        let flags = export.transmission_flags(self.structured);
        self.info_reply(
            option,
            info::EXPORT,
            &[&export.size.to_be_bytes(), &flags.to_be_bytes()],
        );
        if request.wants(info::NAME) {
            self.info_reply(option, info::NAME, &[export.name.as_bytes()]);
        }
        if request.wants(info::DESCRIPTION) && !export.description.is_empty() {
            self.info_reply(option, info::DESCRIPTION, &[export.description.as_bytes()]);
        }
        // Sent whether asked or not: clients ignore what they did not ask for, and those
        // that honour it avoid read-modify-write.
        let s = export.sizes;
        self.info_reply(
            option,
            info::BLOCK_SIZE,
            &[
                &s.minimum.to_be_bytes(),
                &s.preferred.to_be_bytes(),
                &s.maximum.to_be_bytes(),
            ],
        );
        if option == option::GO
            && let Err(e) = (self.admit)()
        {
            self.reply.clear();
            // The client may already be gone; the reply is a courtesy.
            let _ = self.error(option, reply::ERR_POLICY, &e.to_string());
            return Err(e);
        }
        put_option_reply(&mut self.reply, option, reply::ACK, &[]);
        self.send(option)?;
        Ok(true)
    }

    /// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), HandshakeError> {
        let set = option == option::SET_META_CONTEXT;
        if set {
            // SET replaces the selection even when it fails.
            self.contexts.clear();
        }
        if !self.structured {
            return self.error(
                option,
                reply::ERR_INVALID,
                "negotiate structured replies (NBD_OPT_STRUCTURED_REPLY) first",
            );
        }
        let request = match MetaContextRequest::decode(data) {
            Ok(r) => r,
            Err(e) => return self.refuse_malformed(option, &e),
        };
        if !self.export.matches(request.export) {
            let message = format!(
                "no export named {:?}",
                String::from_utf8_lossy(request.export)
            );
            return self.error(option, reply::ERR_UNKNOWN, &message);
        }
        let has_state = self.export.state.is_some();
        let mut chosen: Vec<MetaContext> = Vec::new();
        if set {
            for q in &request.queries {
                if let Some(c) = MetaContext::selected_by(q, has_state)
                    && !chosen.contains(&c)
                {
                    chosen.push(c);
                }
            }
        } else if request.queries.is_empty() {
            chosen.extend_from_slice(self.export.contexts());
        } else {
            for q in &request.queries {
                for c in MetaContext::listed_by(q, has_state) {
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
            }
        }
        for c in &chosen {
            // LIST replies carry ID 0 (reserved); SET replies carry the real ID.
            let id = if set { c.id() } else { 0 };
            let mut payload = Vec::with_capacity(4 + c.name().len());
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(c.name().as_bytes());
            put_option_reply(&mut self.reply, option, reply::META_CONTEXT, &payload);
        }
        if set {
            self.contexts = chosen;
        }
        put_option_reply(&mut self.reply, option, reply::ACK, &[]);
        self.send(option)
    }
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Negotiate on a connection that has been sent [`greeting_bytes`]. On success the
/// connection is in the transmission phase with the returned settings; on error it must be
/// closed. `admit` is called when the client picks the export, before the reply.
///
/// `shutting_down` makes every further option fail with `NBD_REP_ERR_SHUTDOWN` (the client
/// is then expected to leave).
pub(crate) fn negotiate<R: Read, W: Write>(
    input: &mut R,
    output: W,
    export: &Export,
    shutting_down: &AtomicBool,
    admit: Admit<'_>,
) -> Result<Negotiated, HandshakeError> {
    let mut h = Haggle {
        out: output,
        export,
        admit,
        structured: false,
        contexts: Vec::new(),
        reply: Vec::with_capacity(256),
    };
    let flags = read_u32(input).map_err(HandshakeError::ReadClientFlags)?;
    if flags & !client_flags::KNOWN != 0 {
        return Err(HandshakeError::UnknownClientFlags { flags });
    }
    let no_zeroes = flags & client_flags::NO_ZEROES != 0;

    let mut data = Vec::new();
    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; OPTION_HEADER_LEN];
        input
            .read_exact(&mut head)
            .map_err(HandshakeError::ReadOptionHeader)?;
        let OptionHeader { option, len } =
            OptionHeader::decode(&head).map_err(HandshakeError::DecodeOptionHeader)?;
        let read_err = |source| HandshakeError::ReadOptionData {
            option,
            len,
            source,
        };
        if len > MAX_OPTION_LEN {
            // Read none of it: the reply is a courtesy (EXPORT_NAME has no error reply), and
            // the connection ends.
            if option != option::EXPORT_NAME {
                let _ = h.error(
                    option,
                    reply::ERR_TOO_BIG,
                    &format!(
                        "option data of {len} bytes is above this server's limit of \
                         {MAX_OPTION_LEN}; closing"
                    ),
                );
            }
            return Err(HandshakeError::OptionTooLong {
                option,
                len,
                max: MAX_OPTION_LEN,
            });
        }
        // Bounded by MAX_OPTION_LEN just above.
        data.resize(len as usize, 0);
        input.read_exact(&mut data).map_err(read_err)?;

        if shutting_down.load(Ordering::SeqCst) && option != option::ABORT {
            h.error(option, reply::ERR_SHUTDOWN, "the server is shutting down")?;
            continue;
        }
        match option {
            option::EXPORT_NAME => {
                if !export.matches(&data) {
                    return Err(HandshakeError::UnknownExport {
                        name: String::from_utf8_lossy(&data).into_owned(),
                    });
                }
                // No error reply exists for EXPORT_NAME: without a slot, hang up.
                (h.admit)()?;
                let flags = export.transmission_flags(h.structured);
                let mut b = Vec::with_capacity(10 + 124);
                b.extend_from_slice(&export.size.to_be_bytes());
                b.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    b.resize(b.len() + 124, 0);
                }
                h.out
                    .write_all(&b)
                    .map_err(|source| HandshakeError::SendReply { option, source })?;
                return Ok(Negotiated {
                    structured: h.structured,
                    contexts: h.contexts,
                    flags,
                });
            }
            option::ABORT => {
                // The client may already be gone; the reply is a courtesy.
                let _ = h.ack(option);
                return Err(HandshakeError::Aborted);
            }
            option::LIST => {
                if !data.is_empty() {
                    h.error(option, reply::ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                    continue;
                }
                let name = export.name.as_bytes();
                let mut payload = Vec::with_capacity(4 + name.len() + export.description.len());
                payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
                payload.extend_from_slice(name);
                payload.extend_from_slice(export.description.as_bytes());
                put_option_reply(&mut h.reply, option, reply::SERVER, &payload);
                h.ack(option)?;
            }
            option::STARTTLS => {
                h.error(
                    option,
                    reply::ERR_POLICY,
                    "TLS is not supported by this server",
                )?;
            }
            option::INFO | option::GO => {
                if h.info(option, &data)? && option == option::GO {
                    return Ok(Negotiated {
                        structured: h.structured,
                        contexts: h.contexts,
                        flags: export.transmission_flags(h.structured),
                    });
                }
            }
            option::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    h.error(
                        option,
                        reply::ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                h.structured = true;
                h.ack(option)?;
            }
            option::LIST_META_CONTEXT | option::SET_META_CONTEXT => {
                h.meta_context(option, &data)?;
            }
            _ => {
                h.error(
                    option,
                    reply::ERR_UNSUP,
                    &format!("option {option} is not supported by this server"),
                )?;
            }
        }
    }
    Err(HandshakeError::TooManyOptions { max: MAX_OPTIONS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::BlockSizes;
    use crate::proto::{GREETING_LEN, OPTION_REPLY_MAGIC, transmission_flags as tf};
    use remap_core::MemBackend;
    use std::sync::Arc;

    fn export(state: bool) -> Export {
        let mem = Arc::new(MemBackend::new(1 << 20));
        Export {
            backend: mem,
            state: state
                .then(|| Arc::new(NoState) as Arc<dyn crate::block_status::BlockStateSource>),
            name: "disk".into(),
            description: "a test disk".into(),
            read_only: false,
            size: 1 << 20,
            sizes: BlockSizes::derive(4096, 1 << 20, 1 << 20).unwrap(),
        }
    }

    struct NoState;
    impl crate::block_status::BlockStateSource for NoState {
        fn states(&self, _: u64, _: u64, _: usize) -> Vec<crate::block_status::Extent> {
            Vec::new()
        }
    }

    fn opt(option: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OptionHeader {
            option,
            len: data.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(data);
        v
    }

    fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta_data(export: &[u8], queries: &[&str]) -> Vec<u8> {
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Option replies decoded from the server's output: (option, type, data).
    fn replies(out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = GREETING_LEN;
        while at + 20 <= out.len() {
            let magic = u64::from_be_bytes(out[at..at + 8].try_into().unwrap());
            if magic != OPTION_REPLY_MAGIC {
                break;
            }
            let o = u32::from_be_bytes(out[at + 8..at + 12].try_into().unwrap());
            let t = u32::from_be_bytes(out[at + 12..at + 16].try_into().unwrap());
            let n = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
            v.push((o, t, out[at + 20..at + 20 + n].to_vec()));
            at += 20 + n;
        }
        v
    }

    fn run(export: &Export, client: &[u8]) -> (Result<Negotiated, HandshakeError>, Vec<u8>) {
        let mut input = client;
        let mut out = greeting_bytes().to_vec();
        let r = negotiate(
            &mut input,
            &mut out,
            export,
            &AtomicBool::new(false),
            &mut || Ok(()),
        );
        (r, out)
    }

    fn client(flags: u32, options: &[Vec<u8>]) -> Vec<u8> {
        let mut c = flags.to_be_bytes().to_vec();
        for o in options {
            c.extend_from_slice(o);
        }
        c
    }

    #[test]
    fn go_after_structured_and_meta_context() {
        let e = export(true);
        let c = client(
            3,
            &[
                opt(option::STRUCTURED_REPLY, &[]),
                opt(
                    option::SET_META_CONTEXT,
                    &meta_data(b"", &["base:allocation", "remap:state", "other:x", "base:"]),
                ),
                opt(
                    option::GO,
                    &go_data(b"disk", &[info::NAME, info::DESCRIPTION, info::BLOCK_SIZE]),
                ),
            ],
        );
        let (r, out) = run(&e, &c);
        let n = r.unwrap();
        assert!(n.structured);
        assert_eq!(
            n.contexts,
            vec![MetaContext::BaseAllocation, MetaContext::RemapState]
        );
        assert_ne!(n.flags & tf::SEND_DF, 0);
        assert_eq!(&out[..8], b"NBDMAGIC");
        let r = replies(&out);
        let types: Vec<u32> = r.iter().map(|x| x.1).collect();
        assert_eq!(
            types,
            vec![
                reply::ACK,
                reply::META_CONTEXT,
                reply::META_CONTEXT,
                reply::ACK,
                reply::INFO,
                reply::INFO,
                reply::INFO,
                reply::INFO,
                reply::ACK
            ]
        );
        assert_eq!(&r[1].2[..4], &1u32.to_be_bytes());
        assert_eq!(&r[1].2[4..], b"base:allocation");
        assert_eq!(&r[2].2[4..], b"remap:state");
        // NBD_INFO_EXPORT: type, size, flags.
        assert_eq!(r[4].2.len(), 12);
        assert_eq!(&r[4].2[2..10], &(1u64 << 20).to_be_bytes());
        assert_eq!(&r[5].2[2..], b"disk");
        assert_eq!(&r[6].2[2..], b"a test disk");
        assert_eq!(r[7].2.len(), 14);
        assert_eq!(&r[7].2[2..6], &4096u32.to_be_bytes());
    }

    #[test]
    fn unknown_options_and_starttls_are_refused_and_the_connection_goes_on() {
        let e = export(false);
        let c = client(
            1,
            &[
                opt(option::STARTTLS, &[]),
                opt(0xdead, b"whatever"),
                opt(4, &[]),
                opt(option::LIST, b"x"),
                opt(option::STRUCTURED_REPLY, b"x"),
                opt(option::GO, &go_data(b"nope", &[])),
                opt(option::GO, &[1, 2, 3]),
                opt(option::LIST_META_CONTEXT, &meta_data(b"", &[])),
                opt(option::LIST, &[]),
                opt(option::GO, &go_data(b"", &[])),
            ],
        );
        let (r, out) = run(&e, &c);
        let n = r.unwrap();
        assert!(!n.structured && n.contexts.is_empty());
        let types: Vec<(u32, u32)> = replies(&out).iter().map(|x| (x.0, x.1)).collect();
        assert_eq!(
            types,
            vec![
                (option::STARTTLS, reply::ERR_POLICY),
                (0xdead, reply::ERR_UNSUP),
                (4, reply::ERR_UNSUP),
                (option::LIST, reply::ERR_INVALID),
                (option::STRUCTURED_REPLY, reply::ERR_INVALID),
                (option::GO, reply::ERR_UNKNOWN),
                (option::GO, reply::ERR_INVALID),
                (option::LIST_META_CONTEXT, reply::ERR_INVALID),
                (option::LIST, reply::SERVER),
                (option::LIST, reply::ACK),
                (option::GO, reply::INFO),
                (option::GO, reply::INFO),
                (option::GO, reply::ACK),
            ]
        );
        let list = &replies(&out)[8].2;
        assert_eq!(&list[..4], &4u32.to_be_bytes());
        assert_eq!(&list[4..8], b"disk");
        assert_eq!(&list[8..], b"a test disk");
    }

    #[test]
    fn list_meta_context_wildcards() {
        let e = export(true);
        let c = client(
            1,
            &[
                opt(option::STRUCTURED_REPLY, &[]),
                opt(option::LIST_META_CONTEXT, &meta_data(b"disk", &[])),
                opt(
                    option::LIST_META_CONTEXT,
                    &meta_data(b"disk", &["remap:", "x-y:z"]),
                ),
                opt(option::LIST_META_CONTEXT, &meta_data(b"other", &[])),
                opt(option::ABORT, &[]),
            ],
        );
        let (r, out) = run(&e, &c);
        assert!(matches!(r, Err(HandshakeError::Aborted)));
        let r = replies(&out);
        let names: Vec<_> = r
            .iter()
            .filter(|x| x.1 == reply::META_CONTEXT)
            .map(|x| {
                (
                    u32::from_be_bytes(x.2[..4].try_into().unwrap()),
                    String::from_utf8(x.2[4..].to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "base:allocation".to_string()),
                (0, "remap:state".to_string()),
                (0, "remap:state".to_string())
            ]
        );
        assert_eq!(r[r.len() - 2].1, reply::ERR_UNKNOWN);
        assert_eq!(r[r.len() - 1].1, reply::ACK, "ABORT is acknowledged");
    }

    #[test]
    fn huge_option_is_refused_and_ends_the_connection_unread() {
        let e = export(false);
        // A claimed length with no data behind it: refused at once, nothing read or
        // allocated for it, and the options after it are never looked at.
        let mut c = client(1, &[]);
        c.extend_from_slice(
            &OptionHeader {
                option: option::GO,
                len: u32::MAX,
            }
            .encode(),
        );
        c.extend_from_slice(&opt(option::GO, &go_data(b"", &[])));
        let (r, out) = run(&e, &c);
        assert!(matches!(
            r,
            Err(HandshakeError::OptionTooLong {
                option: option::GO,
                len: u32::MAX,
                max: MAX_OPTION_LEN
            })
        ));
        assert_eq!(replies(&out).len(), 1);
        assert_eq!(replies(&out)[0].1, reply::ERR_TOO_BIG);
        // At the limit it is read (and refused as malformed; the connection goes on).
        let c = client(
            1,
            &[
                opt(option::GO, &vec![7u8; MAX_OPTION_LEN as usize]),
                opt(option::GO, &go_data(b"", &[])),
            ],
        );
        let (r, out) = run(&e, &c);
        assert!(r.is_ok());
        assert_ne!(replies(&out)[0].1 & (1 << 31), 0, "an error reply");
        // EXPORT_NAME has no error reply: closed without one.
        let mut c = client(1, &[]);
        c.extend_from_slice(
            &OptionHeader {
                option: option::EXPORT_NAME,
                len: MAX_OPTION_LEN + 1,
            }
            .encode(),
        );
        let (r, out) = run(&e, &c);
        assert!(matches!(r, Err(HandshakeError::OptionTooLong { .. })));
        assert!(replies(&out).is_empty());
    }

    #[test]
    fn no_transmission_slot_refuses_go_and_export_name() {
        let e = export(false);
        let full = || Err(HandshakeError::NoSlot { max: 3 });
        for (option, data) in [
            (option::GO, go_data(b"", &[])),
            (option::EXPORT_NAME, Vec::new()),
        ] {
            let c = client(1, &[opt(option, &data)]);
            let mut input = &c[..];
            let mut out = greeting_bytes().to_vec();
            let r = negotiate(
                &mut input,
                &mut out,
                &e,
                &AtomicBool::new(false),
                &mut full.clone(),
            );
            assert!(matches!(r, Err(HandshakeError::NoSlot { max: 3 })));
            let types: Vec<u32> = replies(&out).iter().map(|x| x.1).collect();
            let expected = if option == option::GO {
                vec![reply::ERR_POLICY]
            } else {
                vec![]
            };
            assert_eq!(types, expected, "option {option}");
        }
    }

    #[test]
    fn bad_frames_end_the_handshake() {
        let e = export(false);
        let (r, _) = run(&e, &client(1 << 5, &[]));
        assert!(matches!(
            r,
            Err(HandshakeError::UnknownClientFlags { flags: 32 })
        ));
        let mut c = client(1, &[]);
        c.extend_from_slice(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
        let (r, _) = run(&e, &c);
        assert!(matches!(
            r,
            Err(HandshakeError::DecodeOptionHeader(
                ProtoError::BadMagic { .. }
            ))
        ));
        let (r, _) = run(&e, &[0, 0]);
        assert!(matches!(r, Err(HandshakeError::ReadClientFlags(_))));
        let (r, _) = run(&e, &client(1, &[opt(option::EXPORT_NAME, b"nope")]));
        assert!(matches!(r, Err(HandshakeError::UnknownExport { .. })));
        let many: Vec<Vec<u8>> = (0..MAX_OPTIONS + 1).map(|_| opt(0xdead, &[])).collect();
        let (r, _) = run(&e, &client(1, &many));
        assert!(matches!(r, Err(HandshakeError::TooManyOptions { .. })));
    }

    #[test]
    fn export_name_sends_size_flags_and_zeroes_unless_declined() {
        let e = export(false);
        let (r, out) = run(&e, &client(1, &[opt(option::EXPORT_NAME, b"disk")]));
        assert!(r.is_ok());
        assert_eq!(out.len(), GREETING_LEN + 8 + 2 + 124);
        assert_eq!(
            &out[GREETING_LEN..GREETING_LEN + 8],
            &(1u64 << 20).to_be_bytes()
        );
        let (r, out) = run(&e, &client(3, &[opt(option::EXPORT_NAME, b"")]));
        assert!(r.is_ok());
        assert_eq!(out.len(), GREETING_LEN + 10);
    }

    #[test]
    fn set_meta_context_needs_structured_replies_and_is_replaced() {
        let e = export(true);
        let c = client(
            1,
            &[
                opt(
                    option::SET_META_CONTEXT,
                    &meta_data(b"", &["base:allocation"]),
                ),
                opt(option::STRUCTURED_REPLY, &[]),
                opt(
                    option::SET_META_CONTEXT,
                    &meta_data(b"", &["base:allocation"]),
                ),
                opt(option::SET_META_CONTEXT, &meta_data(b"", &["nocolon"])),
                opt(option::GO, &go_data(b"", &[])),
            ],
        );
        let (r, out) = run(&e, &c);
        assert!(
            r.unwrap().contexts.is_empty(),
            "the failed SET cleared the selection"
        );
        let types: Vec<u32> = replies(&out).iter().map(|x| x.1).collect();
        assert_eq!(
            &types[..5],
            &[
                reply::ERR_INVALID,
                reply::ACK,
                reply::META_CONTEXT,
                reply::ACK,
                reply::ERR_INVALID
            ]
        );
    }
}
