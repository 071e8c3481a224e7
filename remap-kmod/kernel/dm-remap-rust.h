/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * The C ABI between the dm-remap-v4 glue (dm-remap.c) and its Rust logic
 * (remap-kmod/src/ffi.rs, which must declare exactly the same). The Rust side
 * never allocates or sleeps in rk_route/rk_account (map and end_io paths).
 *
 * Concurrency contract: rk_route reads the state while the glue's gate is open
 * (any CPU, concurrently); rk_slow_io, rk_checkpoint and rk_message_exclusive
 * change it only from the target's work queue (or suspend/resume, under the same
 * mutex) with the gate closed and every bio mapped through the old table
 * completed. struct rk_shared is atomics and constants: any context.
 */
#ifndef DM_REMAP_RUST_H
#define DM_REMAP_RUST_H

#include <linux/types.h>

struct rk_state;
struct rk_shared;

/* Request kinds (Rust: target::Op). */
#define RK_OP_READ 0
#define RK_OP_WRITE 1
#define RK_OP_DISCARD 2
#define RK_OP_WRITE_ZEROES 3
#define RK_OP_FLUSH 4

/* rk_route answers (Rust: ffi::RK_ROUTE_*). */
#define RK_ROUTE_MAIN 0
#define RK_ROUTE_SPARE 1
#define RK_ROUTE_FAIL 2
#define RK_ROUTE_SKIP 3
#define RK_ROUTE_SLOW 4

/* rk_c_write flags. */
#define RK_WRITE_PREFLUSH 1
#define RK_WRITE_FUA 2

/* Devices of rk_c_* I/O. */
#define RK_DEV_MAIN 0
#define RK_DEV_SPARE 1

/* Largest slow-path request (Rust: target::MAX_SLOW_BYTES). */
#define RK_MAX_SLOW_BYTES (256 * 1024)

struct rk_open_args {
	u64 target_bytes;
	u64 main_dev_bytes;
	u64 spare_dev_bytes;
	const u8 *main_dm_uuid;
	u32 main_dm_uuid_len;
	u32 page_size;
	u32 main_logical_block;
	u32 spare_logical_block;
	u64 now_ns;
	u32 argc;
	const char *const *argv;
	void *io;
};

struct rk_geometry {
	u32 block_shift;
	u32 read_retries;
	u64 blocks;
	u64 pool_offset;
	u64 pool_blocks;
	u64 table_entries;
	u64 pending;
	u8 uuid[16];
};

struct rk_route {
	u32 kind;
	u32 pad;
	u64 blocks;
	u64 sector;
};

struct rk_msg {
	u32 kind;
	u32 exclusive;
	u64 block;
};

/* Implemented in Rust. */
bool rk_is_media_errno(int errno_value);
int rk_open(const struct rk_open_args *a, struct rk_state **state,
	    struct rk_shared **shared, struct rk_geometry *geo, char *err,
	    u32 errlen, const char **reason);
void rk_close(struct rk_state *state, struct rk_shared *shared);
void rk_route(const struct rk_state *state, const struct rk_shared *shared,
	      u64 lba, u64 blocks, u32 op, struct rk_route *out);
void rk_account(const struct rk_shared *shared, u32 op, u64 bytes,
		u64 latency_ns, bool remapped, bool ok);
void rk_account_spare_flush(const struct rk_shared *shared, bool ok);
bool rk_refuses_flush(const struct rk_shared *shared);
int rk_slow_io(struct rk_state *state, const struct rk_shared *shared, void *io,
	       u32 op, u64 lba, u8 *buf, u64 len, bool fua, u32 now_s,
	       char *err, u32 errlen);
int rk_checkpoint(struct rk_state *state, const struct rk_shared *shared,
		  void *io, char *err, u32 errlen);
u32 rk_journal_live(const struct rk_state *state);
void rk_status(const struct rk_shared *shared, u32 kind, const char *main_name,
	       const char *spare_name, u64 now_ns, char *out, u32 maxlen);
int rk_message_parse(u32 argc, const char *const *argv, struct rk_msg *out,
		     char *result, u32 maxlen);
int rk_message_shared(const struct rk_shared *shared, const struct rk_msg *msg,
		      u64 now_ns, char *result, u32 maxlen);
int rk_message_exclusive(struct rk_state *state, const struct rk_shared *shared,
			 void *io, const struct rk_msg *msg, u32 now_s,
			 char *result, u32 maxlen);

/* Implemented in C for Rust. */
int rk_c_read(void *io, u32 dev, u64 offset, u8 *buf, u64 len);
int rk_c_write(void *io, u32 dev, u64 offset, const u8 *buf, u64 len, u32 flags);
int rk_c_flush(void *io, u32 dev);
int rk_c_discard(void *io, u32 dev, u64 offset, u64 len);
void *rk_c_alloc(size_t size, size_t align);
void rk_c_free(void *ptr);
void rk_c_panic(const u8 *msg, size_t len);

#endif
