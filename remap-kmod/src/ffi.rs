//! The C ABI of the kernel module: what `kernel/dm-remap.c` calls (`rk_*`), what it provides
//! (`rk_c_*`), the global allocator and the panic handler. Compiled only into the kernel
//! staticlib (`--features kernel --cfg remap_kernel`). `kernel/dm-remap-rust.h` declares the
//! same functions for C; the two must agree.
//!
//! Every function here is a thin, checked translation: raw pointers become references or
//! slices after a null check, and all decisions are made by the safe code in the other
//! modules. Concurrency is the C side's contract, restated at each entry point:
//! `State` is read through `*const` only while the glue's gate is open (any number of CPUs),
//! and mutated through `*mut` only from the target's work queue with the gate closed and
//! every bio mapped through the old table completed (one thread, no readers). `Shared` is
//! atomics and constants and may be used from any context.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{CStr, c_char, c_void};
use core::fmt::{self, Write};

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::io::{BlockIo, Dev, EINVAL, EIO, IoFailure, WriteFlags};
use crate::message::{self, Message};
use crate::status;
use crate::target::{self, Op, OpenError, OpenParams, Route, Shared, SlowError, State};
use remap_meta::table_options::Options;

// Provided by the C glue.
unsafe extern "C" {
    fn rk_c_read(io: *mut c_void, dev: u32, offset: u64, buf: *mut u8, len: u64) -> i32;
    fn rk_c_write(
        io: *mut c_void,
        dev: u32,
        offset: u64,
        buf: *const u8,
        len: u64,
        flags: u32,
    ) -> i32;
    fn rk_c_flush(io: *mut c_void, dev: u32) -> i32;
    fn rk_c_discard(io: *mut c_void, dev: u32, offset: u64, len: u64) -> i32;
    fn rk_c_alloc(size: usize, align: usize) -> *mut c_void;
    fn rk_c_free(ptr: *mut c_void);
    /// Does not return in practice (it calls the kernel's `panic()`); declared as returning
    /// so that the call is followed by an explicit trap objtool can see.
    fn rk_c_panic(msg: *const u8, len: usize);
}

/// `rk_c_write` flag: `REQ_PREFLUSH`.
pub const RK_WRITE_PREFLUSH: u32 = 1;
/// `rk_c_write` flag: `REQ_FUA`.
pub const RK_WRITE_FUA: u32 = 2;

/// Errnos that mean the medium failed the block (`blk_status_to_errno` of
/// `BLK_STS_IOERR`, `BLK_STS_MEDIUM`, `BLK_STS_PROTECTION`, `BLK_STS_TIMEOUT`). Anything else
/// (transport, no memory, not supported, ...) is not the block's fault and is passed through.
pub fn is_media_errno(errno: i32) -> bool {
    const ENODATA: i32 = 61;
    const EILSEQ: i32 = 84;
    const ETIMEDOUT: i32 = 110;
    matches!(errno, EIO | ENODATA | EILSEQ | ETIMEDOUT)
}

/// C entry: the classification above, so C and Rust agree.
#[unsafe(no_mangle)]
pub extern "C" fn rk_is_media_errno(errno: i32) -> bool {
    is_media_errno(errno)
}

// ----- memory -----

/// Kernel memory for every Rust allocation (see `rk_c_alloc` for the GFP policy).
struct KernelAlloc;

// SAFETY: `rk_c_alloc` returns null or a block of at least `size` bytes aligned to `align`
// (the C side rounds sizes so kmalloc's natural alignment covers it, and refuses alignments
// above a page), and `rk_c_free` (kvfree) accepts exactly what it returned.
unsafe impl GlobalAlloc for KernelAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain call into C; the contract is stated on the impl.
        unsafe { rk_c_alloc(layout.size(), layout.align()) as *mut u8 }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above (GlobalAlloc's contract).
        unsafe { rk_c_free(ptr as *mut c_void) }
    }
}

#[global_allocator]
static ALLOCATOR: KernelAlloc = KernelAlloc;

/// A Rust panic in the kernel is a bug; stop loudly with its message rather than run on
/// with broken state. (The code is written so that no input reaches a panic.)
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut buf = [0u8; 192];
    let mut w = CBuf::new(&mut buf);
    let _ = write!(w, "{info}");
    let len = w.len;
    // SAFETY: `buf[..len]` is initialised; `rk_c_panic` only reads it. The trap after it is
    // unreachable because the kernel's panic() does not return.
    unsafe {
        rk_c_panic(buf.as_ptr(), len);
        core::arch::asm!("ud2", options(noreturn))
    }
}

// ----- text into C buffers -----

/// A `fmt::Write` into a C buffer: truncates silently, always leaves room for the NUL.
struct CBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> CBuf<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        CBuf { buf, len: 0 }
    }

    /// NUL-terminate (an empty buffer stays untouched).
    fn finish(self) {
        if let Some(last) = self.buf.len().checked_sub(1) {
            self.buf[self.len.min(last)] = 0;
        }
    }
}

impl Write for CBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(1).saturating_sub(self.len);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// # Safety
/// `ptr` is null or points to `len` writable bytes not otherwise in use for the call.
unsafe fn c_buf<'a>(ptr: *mut c_char, len: u32) -> CBuf<'a> {
    if ptr.is_null() {
        return CBuf::new(&mut []);
    }
    // SAFETY: the caller's contract.
    CBuf::new(unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len as usize) })
}

/// # Safety
/// `argv` is null (with `argc == 0`) or holds `argc` valid NUL-terminated strings that live
/// for `'a`.
unsafe fn args<'a>(argc: u32, argv: *const *const c_char) -> Vec<&'a [u8]> {
    let mut v = Vec::with_capacity(argc as usize);
    if argv.is_null() {
        return v;
    }
    for i in 0..argc as usize {
        // SAFETY: the caller's contract: argv[i] is a valid C string for 'a.
        let s = unsafe { *argv.add(i) };
        if s.is_null() {
            break;
        }
        // SAFETY: as above.
        v.push(unsafe { CStr::from_ptr(s) }.to_bytes());
    }
    v
}

/// # Safety
/// `s` is null or a valid NUL-terminated string for `'a`.
unsafe fn c_str<'a>(s: *const c_char) -> &'a str {
    if s.is_null() {
        return "-";
    }
    // SAFETY: the caller's contract.
    core::str::from_utf8(unsafe { CStr::from_ptr(s) }.to_bytes()).unwrap_or("?")
}

// ----- block I/O through the C glue -----

/// [`BlockIo`] over the glue's synchronous helpers. `ctx` is the glue's per-target context;
/// the helpers bounce every buffer through their own pages, so any Rust memory (heap or
/// stack) may be passed.
struct CIo {
    ctx: *mut c_void,
}

fn failure(dev: Dev, offset: u64, ret: i32) -> Result<(), IoFailure> {
    if ret >= 0 {
        return Ok(());
    }
    let errno = ret.saturating_neg();
    Err(IoFailure {
        dev,
        offset,
        errno,
        media: is_media_errno(errno),
    })
}

impl BlockIo for CIo {
    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let r = unsafe {
            rk_c_read(
                self.ctx,
                dev as u32,
                offset,
                buf.as_mut_ptr(),
                buf.len() as u64,
            )
        };
        failure(dev, offset, r)
    }

    fn write(
        &mut self,
        dev: Dev,
        offset: u64,
        buf: &[u8],
        flags: WriteFlags,
    ) -> Result<(), IoFailure> {
        let f = if flags.preflush { RK_WRITE_PREFLUSH } else { 0 }
            | if flags.fua { RK_WRITE_FUA } else { 0 };
        // SAFETY: `buf` is valid for reads of its length for the duration of the call.
        let r = unsafe {
            rk_c_write(
                self.ctx,
                dev as u32,
                offset,
                buf.as_ptr(),
                buf.len() as u64,
                f,
            )
        };
        failure(dev, offset, r)
    }

    fn flush(&mut self, dev: Dev) -> Result<(), IoFailure> {
        // SAFETY: plain call; `ctx` is the glue's own pointer.
        let r = unsafe { rk_c_flush(self.ctx, dev as u32) };
        failure(dev, 0, r)
    }

    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure> {
        // SAFETY: plain call; `ctx` is the glue's own pointer.
        let r = unsafe { rk_c_discard(self.ctx, dev as u32, offset, len) };
        failure(dev, offset, r)
    }
}

// ----- table load and unload -----

/// What `rk_open` needs (see `struct rk_open_args` in `dm-remap-rust.h`).
#[repr(C)]
#[derive(Debug)]
pub struct RkOpenArgs {
    pub target_bytes: u64,
    pub main_dev_bytes: u64,
    pub spare_dev_bytes: u64,
    pub main_dm_uuid: *const u8,
    pub main_dm_uuid_len: u32,
    pub page_size: u32,
    pub main_logical_block: u32,
    pub spare_logical_block: u32,
    pub now_ns: u64,
    /// The optional arguments (everything after the two devices).
    pub argc: u32,
    pub argv: *const *const c_char,
    pub io: *mut c_void,
}

/// Geometry the glue needs on the I/O path.
#[repr(C)]
#[derive(Debug)]
pub struct RkGeometry {
    pub block_shift: u32,
    pub read_retries: u32,
    pub blocks: u64,
    pub pool_offset: u64,
    pub pool_blocks: u64,
    pub table_entries: u64,
    pub pending: u64,
    pub uuid: [u8; 16],
}

fn open_errno(e: &OpenError) -> i32 {
    match e {
        OpenError::Recover(remap_meta::recovery::RecoverError::Read { source, .. }) => source.errno,
        _ => EINVAL,
    }
}

/// Load a table: parse the optional arguments, recover the spare's metadata (reading only)
/// and check it belongs to this main device. On success `*state`/`*shared` own the target
/// and `*geo` is filled; on failure `err` holds the whole reason and `*reason` a short static
/// one for `ti->error`.
///
/// # Safety
/// Every pointer is valid as `dm-remap-rust.h` describes; called from the ctr (process
/// context), before any I/O can reach the target.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_open(
    a: *const RkOpenArgs,
    state_out: *mut *mut State,
    shared_out: *mut *mut Shared,
    geo: *mut RkGeometry,
    err: *mut c_char,
    errlen: u32,
    reason: *mut *const c_char,
) -> i32 {
    // SAFETY: the caller's contract (valid, initialised argument block).
    let Some(a) = (unsafe { a.as_ref() }) else {
        return -EINVAL;
    };
    if state_out.is_null() || shared_out.is_null() || geo.is_null() || reason.is_null() {
        return -EINVAL;
    }
    // SAFETY: the caller's contract for err/errlen.
    let mut out = unsafe { c_buf(err, errlen) };
    // SAFETY: the caller's contract for argv.
    let argv = unsafe { args(a.argc, a.argv) };
    let options = match Options::parse(&argv) {
        Ok(o) => o,
        Err(e) => {
            let _ = write!(out, "{e}");
            out.finish();
            // SAFETY: `reason` checked non-null above.
            unsafe { *reason = c"invalid optional arguments".as_ptr() };
            return -EINVAL;
        }
    };
    let uuid = if a.main_dm_uuid.is_null() || a.main_dm_uuid_len == 0 {
        None
    } else {
        // SAFETY: the caller's contract: main_dm_uuid_len readable bytes.
        Some(unsafe { core::slice::from_raw_parts(a.main_dm_uuid, a.main_dm_uuid_len as usize) })
    };
    let params = OpenParams {
        target_bytes: a.target_bytes,
        main_dev_bytes: a.main_dev_bytes,
        spare_dev_bytes: a.spare_dev_bytes,
        main_dm_uuid: uuid,
        page_size: a.page_size,
        main_logical_block: a.main_logical_block,
        spare_logical_block: a.spare_logical_block,
        now_ns: a.now_ns,
    };
    let mut io = CIo { ctx: a.io };
    match target::open(&mut io, &params, options) {
        Ok((state, shared)) => {
            let g = RkGeometry {
                block_shift: shared.block_shift,
                read_retries: shared.read_retries,
                blocks: shared.blocks,
                pool_offset: shared.pool_offset,
                pool_blocks: shared.pool_blocks,
                table_entries: state.table().len() as u64,
                pending: state.table().pending_count() as u64,
                uuid: shared.uuid,
            };
            // SAFETY: out-pointers checked non-null above; the glue owns the boxes until
            // `rk_close`.
            unsafe {
                geo.write(g);
                *state_out = Box::into_raw(Box::new(state));
                *shared_out = Box::into_raw(Box::new(shared));
            }
            out.finish();
            0
        }
        Err(e) => {
            let _ = write!(out, "{e}");
            out.finish();
            // SAFETY: `reason` checked non-null above; the string is static.
            unsafe { *reason = e.summary().as_ptr() };
            -open_errno(&e)
        }
    }
}

/// Free what `rk_open` returned.
///
/// # Safety
/// The pointers came from `rk_open` and nothing uses them any more (the dtr, after the work
/// queue is destroyed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_close(state: *mut State, shared: *mut Shared) {
    if !state.is_null() {
        // SAFETY: from Box::into_raw in rk_open; no other user remains.
        drop(unsafe { Box::from_raw(state) });
    }
    if !shared.is_null() {
        // SAFETY: as above.
        drop(unsafe { Box::from_raw(shared) });
    }
}

// ----- the fast path -----

/// `rk_route` answer kinds.
pub const RK_ROUTE_MAIN: u32 = 0;
pub const RK_ROUTE_SPARE: u32 = 1;
pub const RK_ROUTE_FAIL: u32 = 2;
pub const RK_ROUTE_SKIP: u32 = 3;
pub const RK_ROUTE_SLOW: u32 = 4;

/// Where the first run of a request goes.
#[repr(C)]
#[derive(Debug)]
pub struct RkRoute {
    pub kind: u32,
    pub pad: u32,
    pub blocks: u64,
    /// For `RK_ROUTE_SPARE`: the 512-byte sector on the spare device.
    pub sector: u64,
}

/// The map() decision for `[lba, lba + blocks)`.
///
/// # Safety
/// `state` is the target's state and the glue's gate is open (no writer); `shared` is its
/// shared part; `out` is valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_route(
    state: *const State,
    shared: *const Shared,
    lba: u64,
    blocks: u64,
    op: u32,
    out: *mut RkRoute,
) {
    // SAFETY: the caller's contract: shared access while the gate is open.
    let (Some(state), Some(sh), Some(out)) = (
        unsafe { state.as_ref() },
        unsafe { shared.as_ref() },
        unsafe { out.as_mut() },
    ) else {
        return;
    };
    let op = Op::from_u32(op).unwrap_or(Op::Read);
    let (kind, blocks, sector) = match state.route(sh, lba, blocks, op) {
        Route::Main { blocks } => (RK_ROUTE_MAIN, blocks, 0),
        Route::Spare { blocks, offset } => (RK_ROUTE_SPARE, blocks, offset >> 9),
        Route::Fail { blocks } => (RK_ROUTE_FAIL, blocks, 0),
        Route::Skip { blocks } => (RK_ROUTE_SKIP, blocks, 0),
        Route::Slow { blocks } => (RK_ROUTE_SLOW, blocks, 0),
    };
    *out = RkRoute {
        kind,
        pad: 0,
        blocks,
        sector,
    };
}

/// Count a completed request. Any context (bio completion runs in interrupt context).
///
/// # Safety
/// `shared` is the target's shared part.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_account(
    shared: *const Shared,
    op: u32,
    bytes: u64,
    latency_ns: u64,
    remapped: bool,
    ok: bool,
) {
    // SAFETY: the caller's contract; Shared is only atomics and constants.
    let (Some(sh), Some(op)) = (unsafe { shared.as_ref() }, Op::from_u32(op)) else {
        return;
    };
    sh.account(op, bytes, latency_ns, remapped, ok);
}

/// Whether an empty flush is refused (`Shared::refuses_flush`: writes stopped after a
/// metadata failure). Any context.
///
/// # Safety
/// `shared` is the target's shared part.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_refuses_flush(shared: *const Shared) -> bool {
    // SAFETY: the caller's contract; Shared is only atomics and constants.
    unsafe { shared.as_ref() }.is_some_and(Shared::refuses_flush)
}

/// Count the spare's half of a flush (see `Shared::account_spare_flush`).
///
/// # Safety
/// `shared` is the target's shared part.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_account_spare_flush(shared: *const Shared, ok: bool) {
    // SAFETY: the caller's contract; Shared is only atomics and constants.
    if let Some(sh) = unsafe { shared.as_ref() } {
        sh.account_spare_flush(ok);
    }
}

// ----- the slow path -----

/// Do a request synchronously in the work queue: `op` Read/Write/WriteZeroes over `len`
/// bytes of `buf` (WriteZeroes: the glue passes a zeroed buffer), or Discard of `len` bytes
/// (`buf` unused). Returns 0 or `-errno`; on failure `err` says why (for the kernel log).
///
/// # Safety
/// Called from the work queue with the gate closed and the I/O drained: exclusive access to
/// `state`. `buf` holds `len` bytes (for reads: writable) unless `op` is Discard.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_slow_io(
    state: *mut State,
    shared: *const Shared,
    io: *mut c_void,
    op: u32,
    lba: u64,
    buf: *mut u8,
    len: u64,
    fua: bool,
    now_s: u32,
    err: *mut c_char,
    errlen: u32,
) -> i32 {
    // SAFETY: the caller's contract (exclusive access in the work queue).
    let (Some(state), Some(sh)) = (unsafe { state.as_mut() }, unsafe { shared.as_ref() }) else {
        return -EINVAL;
    };
    let mut io = CIo { ctx: io };
    let op = Op::from_u32(op);
    let r = match op {
        Some(Op::Discard) => state.serve_discard(&mut io, lba, len >> sh.block_shift),
        Some(o @ (Op::Read | Op::Write | Op::WriteZeroes)) => {
            if buf.is_null() || len > target::MAX_SLOW_BYTES {
                Err(SlowError::BadRequest { lba, len })
            } else if o == Op::Read {
                // SAFETY: the caller's contract: `len` writable bytes.
                let b = unsafe { core::slice::from_raw_parts_mut(buf, len as usize) };
                state.serve_read(sh, &mut io, lba, b, now_s)
            } else {
                // SAFETY: the caller's contract: `len` readable bytes.
                let b = unsafe { core::slice::from_raw_parts(buf as *const u8, len as usize) };
                state.serve_write(sh, &mut io, lba, b, fua, now_s)
            }
        }
        _ => Err(SlowError::BadRequest { lba, len }),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: the caller's contract for err/errlen.
            let mut out = unsafe { c_buf(err, errlen) };
            let _ = write!(out, "{e}");
            out.finish();
            -e.errno()
        }
    }
}

/// Write a checkpoint (on suspend). Returns 0 or `-errno` with the reason in `err`.
///
/// # Safety
/// As for `rk_slow_io`: exclusive access to `state`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_checkpoint(
    state: *mut State,
    shared: *const Shared,
    io: *mut c_void,
    err: *mut c_char,
    errlen: u32,
) -> i32 {
    // SAFETY: the caller's contract.
    let (Some(state), Some(sh)) = (unsafe { state.as_mut() }, unsafe { shared.as_ref() }) else {
        return -EINVAL;
    };
    let mut io = CIo { ctx: io };
    match state.serve_checkpoint(sh, &mut io, 0) {
        Ok(_) => 0,
        Err(e) => {
            // SAFETY: the caller's contract for err/errlen.
            let mut out = unsafe { c_buf(err, errlen) };
            let _ = write!(out, "{e}");
            out.finish();
            -e.errno()
        }
    }
}

/// Journal blocks written since the last checkpoint (0: a checkpoint would add nothing).
///
/// # Safety
/// Exclusive or shared access to `state` as for `rk_route`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_journal_live(state: *const State) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { state.as_ref() }.map_or(0, State::journal_live_blocks)
}

// ----- status and messages -----

/// `dmsetup status` (`kind` 0) or `dmsetup table` (`kind` 1) text, after device-mapper's own
/// fields. Always NUL-terminated; truncated if `maxlen` is short.
///
/// # Safety
/// `shared` valid; `main`/`spare` NUL-terminated device names; `out` holds `maxlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_status(
    shared: *const Shared,
    kind: u32,
    main: *const c_char,
    spare: *const c_char,
    now_ns: u64,
    out: *mut c_char,
    maxlen: u32,
) {
    // SAFETY: the caller's contract for out/maxlen.
    let mut w = unsafe { c_buf(out, maxlen) };
    // SAFETY: the caller's contract.
    if let Some(sh) = unsafe { shared.as_ref() } {
        // SAFETY: the caller's contract: valid C strings.
        let (main, spare) = unsafe { (c_str(main), c_str(spare)) };
        let _ = match kind {
            0 => status::write_status(&mut w, sh, main, spare, now_ns),
            1 => status::write_table(&mut w, sh, main, spare),
            _ => Ok(()),
        };
    }
    w.finish();
}

/// A parsed message, as the glue carries it to the work queue.
#[repr(C)]
#[derive(Debug)]
pub struct RkMsg {
    pub kind: u32,
    pub exclusive: u32,
    pub block: u64,
}

fn msg_to_c(m: &Message) -> RkMsg {
    let (kind, block) = match *m {
        Message::Help => (0, 0),
        Message::Map { block } => (1, block),
        Message::Lookup { block } => (2, block),
        Message::Stats => (3, 0),
        Message::ClearStats => (4, 0),
        Message::Health => (5, 0),
        Message::Checkpoint => (6, 0),
    };
    RkMsg {
        kind,
        exclusive: u32::from(m.is_exclusive()),
        block,
    }
}

fn msg_from_c(m: &RkMsg) -> Option<Message> {
    Some(match m.kind {
        0 => Message::Help,
        1 => Message::Map { block: m.block },
        2 => Message::Lookup { block: m.block },
        3 => Message::Stats,
        4 => Message::ClearStats,
        5 => Message::Health,
        6 => Message::Checkpoint,
        _ => return None,
    })
}

/// Parse a message. 0 and `*out` filled, or `-EINVAL` with the reason in `result`.
///
/// # Safety
/// `argv` holds `argc` C strings; `out` valid; `result` holds `maxlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_message_parse(
    argc: u32,
    argv: *const *const c_char,
    out: *mut RkMsg,
    result: *mut c_char,
    maxlen: u32,
) -> i32 {
    // SAFETY: the caller's contract.
    let argv = unsafe { args(argc, argv) };
    // SAFETY: the caller's contract.
    let mut w = unsafe { c_buf(result, maxlen) };
    // SAFETY: the caller's contract: `out` is null or valid for writes.
    let out = unsafe { out.as_mut() };
    let r = match (Message::parse(&argv), out) {
        (Ok(m), Some(out)) => {
            *out = msg_to_c(&m);
            0
        }
        (Ok(_), None) => -EINVAL,
        (Err(e), _) => {
            let _ = write!(w, "{e}");
            -EINVAL
        }
    };
    w.finish();
    r
}

/// Answer a message that needs only the counters.
///
/// # Safety
/// `shared`/`msg` valid; `result` holds `maxlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_message_shared(
    shared: *const Shared,
    msg: *const RkMsg,
    now_ns: u64,
    result: *mut c_char,
    maxlen: u32,
) -> i32 {
    // SAFETY: the caller's contract.
    let mut w = unsafe { c_buf(result, maxlen) };
    // SAFETY: the caller's contract.
    let r = match (
        unsafe { shared.as_ref() },
        unsafe { msg.as_ref() }.and_then(msg_from_c),
    ) {
        (Some(sh), Some(m)) => match message::run_shared(&m, sh, now_ns, &mut w) {
            Ok(()) => 0,
            Err(errno) => -errno,
        },
        _ => -EINVAL,
    };
    w.finish();
    r
}

/// Run a message that needs the table, in the work queue with I/O quiesced.
///
/// # Safety
/// As for `rk_slow_io` (exclusive access to `state`); `result` holds `maxlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rk_message_exclusive(
    state: *mut State,
    shared: *const Shared,
    io: *mut c_void,
    msg: *const RkMsg,
    now_s: u32,
    result: *mut c_char,
    maxlen: u32,
) -> i32 {
    // SAFETY: the caller's contract.
    let mut w = unsafe { c_buf(result, maxlen) };
    let mut cio = CIo { ctx: io };
    // SAFETY: the caller's contract (exclusive access).
    let r = match (
        unsafe { state.as_mut() },
        unsafe { shared.as_ref() },
        unsafe { msg.as_ref() }.and_then(msg_from_c),
    ) {
        (Some(state), Some(sh), Some(m)) => {
            match message::run_exclusive(&m, state, sh, &mut cio, now_s, &mut w) {
                Ok(()) => 0,
                Err((errno, e)) => {
                    let _ = write!(w, "{e}");
                    -errno
                }
            }
        }
        _ => -EINVAL,
    };
    w.finish();
    r
}
