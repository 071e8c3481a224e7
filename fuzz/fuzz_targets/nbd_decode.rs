//! The NBD decoders on any bytes: option headers, INFO and META_CONTEXT payloads, request
//! headers and command codes. Never a panic; what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remap_nbd::proto::{Command, InfoRequest, MetaContextRequest, OptionHeader, RequestHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = OptionHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..h.encode().len()]);
    }
    if let Ok(r) = RequestHeader::decode(data) {
        assert_eq!(&r.encode()[..], &data[..r.encode().len()]);
        if let Some(c) = Command::from_code(r.command) {
            assert_eq!(c.code(), r.command);
            let _ = c.allowed_flags();
        }
    }
    if let Ok(info) = InfoRequest::decode(data) {
        for t in info.requests() {
            assert!(info.wants(t));
        }
    }
    let _ = MetaContextRequest::decode(data);
});
