// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-remap-v4: keep a failing disk in service by moving its failing blocks to a
 * spare device. The C side is the kernel plumbing only: target registration, bio
 * routing as the Rust logic decides (remap-kmod/src), a work queue for the slow
 * path and metadata I/O, and synchronous block I/O helpers. Table line:
 *
 *   <start> <len> dm-remap-v4 <main_dev> <spare_dev> [<#opt_args> <opt>...]
 *
 * The fast path (map) asks Rust where the first run of a bio lives and remaps the
 * bio there, accepting only that run (device-mapper resubmits the rest). Every
 * bio mapped holds a count on the "gate". Anything that changes the table runs
 * in the work queue with the gate closed and that count drained to zero, so the
 * table is never changed under an I/O that was routed by it; bios that arrive
 * meanwhile are deferred to the work queue. Failed I/O (media errors) comes back
 * through end_io to the work queue, which redoes it synchronously, block by block,
 * through the Rust slow path: failing blocks are moved to spare blocks and
 * journaled (data flushed, journal block written PREFLUSH|FUA) before the bio
 * completes; read failures mark blocks pending and fail the bio.
 */
#include <linux/module.h>
#include <linux/version.h>
#include <linux/device-mapper.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/highmem.h>
#include <linux/workqueue.h>
#include <linux/wait.h>
#include <linux/sched/mm.h>
#include <linux/ktime.h>
#include <linux/timekeeping.h>
#include <linux/mutex.h>
#include <linux/list.h>
#include <linux/completion.h>
#include <linux/log2.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>

#include "dm-remap-rust.h"

#define DM_MSG_PREFIX "remap"

/* Table modes are fmode_t before 6.5, blk_mode_t after. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
#define RK_MODE_WRITE BLK_OPEN_WRITE
#else
#define RK_MODE_WRITE FMODE_WRITE
#endif
#define RK_TARGET_NAME "dm-remap-v4"

/* Bounce buffer of the synchronous I/O helpers (metadata pieces are <= 48 KiB). */
#define RK_BOUNCE_BYTES (256 * 1024)
#define RK_ERR_BYTES 512

/* Per-bio flags. */
#define RK_BIO_COUNTED 1	/* holds a count on the gate */
#define RK_BIO_DEFERRED 2	/* arrived while the gate was closed */
#define RK_BIO_DONE 4		/* completed by the work queue: end_io passes it through */

struct rk_bio {
	u64 start_ns;
	struct bvec_iter iter;	/* the range of this clone, for the slow path */
	u64 lba;
	u32 op;
	u8 spare;		/* routed to the spare (a remapped I/O) */
	u8 flags;
};

/* An exclusive message waiting for the work queue. */
struct rk_msg_work {
	struct list_head list;
	struct rk_msg msg;
	char *result;
	unsigned int maxlen;
	int ret;
	struct completion done;
};

struct rk_target {
	struct dm_target *ti;
	struct dm_dev *main;
	struct dm_dev *spare;
	struct mapped_device *md;
	struct rk_state *state;
	struct rk_shared *shared;
	struct rk_geometry geo;
	unsigned int spb_shift;	/* log2(sectors per block) */
	unsigned int argc;	/* optional arguments, kept for reloading in preresume */
	char **argv;

	/* The gate: see rk_enter(). */
	long __percpu *inflight;
	int gate_closed;
	wait_queue_head_t drain_wq;

	struct workqueue_struct *wq;
	struct work_struct work;
	spinlock_t lock;	/* slow_bios, msgs */
	struct bio_list slow_bios;
	struct list_head msgs;

	/* Serialises every user of state (mutably) and of bounce/scratch/err. */
	struct mutex excl;
	void *bounce;
	void *scratch;
	char *err;

	struct list_head registry;
};

/* ---- spare ownership: one mapped device per spare ---- */

static LIST_HEAD(rk_registry);
static DEFINE_MUTEX(rk_registry_lock);

/*
 * Two tables of the same mapped device (a reload) may share a spare; two
 * different devices may not: both would write its journal.
 */
static int rk_registry_add(struct rk_target *rt)
{
	struct rk_target *other;
	int r = 0;

	mutex_lock(&rk_registry_lock);
	list_for_each_entry(other, &rk_registry, registry) {
		if (other->spare->bdev->bd_dev == rt->spare->bdev->bd_dev &&
		    other->md != rt->md) {
			r = -EBUSY;
			break;
		}
	}
	if (!r)
		list_add(&rt->registry, &rk_registry);
	mutex_unlock(&rk_registry_lock);
	return r;
}

static void rk_registry_del(struct rk_target *rt)
{
	mutex_lock(&rk_registry_lock);
	list_del(&rt->registry);
	mutex_unlock(&rk_registry_lock);
}

/* ---- services for the Rust side ---- */

void *rk_c_alloc(size_t size, size_t align)
{
	might_sleep();
	if (align > PAGE_SIZE || !size)
		return NULL;
	/* kmalloc aligns power-of-two sizes naturally; bigger blocks are page aligned. */
	if (align > ARCH_KMALLOC_MINALIGN)
		size = roundup_pow_of_two(max(size, align));
	/* Small blocks cannot fail (as for any order <= 1 allocation in the kernel). */
	if (size <= 2 * PAGE_SIZE)
		return kmalloc(size, GFP_KERNEL | __GFP_NOFAIL);
	return kvmalloc(size, GFP_KERNEL);
}

void rk_c_free(void *ptr)
{
	kvfree(ptr);
}

void rk_c_panic(const u8 *msg, size_t len)
{
	panic("dm-remap-v4: Rust panic: %.*s", (int)min_t(size_t, len, 192), msg);
}

static struct block_device *rk_bdev(struct rk_target *rt, u32 dev)
{
	return dev == RK_DEV_SPARE ? rt->spare->bdev : rt->main->bdev;
}

/* One synchronous bio over the bounce buffer (page aligned, kmalloc'd or vmalloc'd). */
static int rk_sync_bio(struct block_device *bdev, blk_opf_t opf, sector_t sector,
		       void *data, unsigned int len)
{
	unsigned int nr_pages = DIV_ROUND_UP(len, PAGE_SIZE);
	bool vmalloced = is_vmalloc_addr(data);
	struct bio *bio;
	unsigned int done = 0;
	int r;

	bio = bio_alloc(bdev, nr_pages, opf, GFP_NOIO);
	bio->bi_iter.bi_sector = sector;
	while (done < len) {
		void *p = data + done;
		unsigned int n = min_t(unsigned int, len - done, PAGE_SIZE);
		struct page *page = vmalloced ? vmalloc_to_page(p) : virt_to_page(p);

		if (bio_add_page(bio, page, n, offset_in_page(p)) != n) {
			bio_put(bio);
			return -EIO;
		}
		done += n;
	}
	if (vmalloced && op_is_write(opf))
		flush_kernel_vmap_range(data, len);
	r = submit_bio_wait(bio);
	if (vmalloced && !op_is_write(opf))
		invalidate_kernel_vmap_range(data, len);
	bio_put(bio);
	return r;
}

int rk_c_read(void *io, u32 dev, u64 offset, u8 *buf, u64 len)
{
	struct rk_target *rt = io;
	struct block_device *bdev = rk_bdev(rt, dev);
	int r;

	if ((offset | len) & (SECTOR_SIZE - 1))
		return -EINVAL;
	while (len) {
		unsigned int n = min_t(u64, len, RK_BOUNCE_BYTES);

		r = rk_sync_bio(bdev, REQ_OP_READ | REQ_SYNC, offset >> SECTOR_SHIFT,
				rt->bounce, n);
		if (r)
			return r;
		memcpy(buf, rt->bounce, n);
		buf += n;
		offset += n;
		len -= n;
	}
	return 0;
}

int rk_c_write(void *io, u32 dev, u64 offset, const u8 *buf, u64 len, u32 flags)
{
	struct rk_target *rt = io;
	struct block_device *bdev = rk_bdev(rt, dev);
	blk_opf_t opf = REQ_OP_WRITE | REQ_SYNC;
	int r;

	if ((offset | len) & (SECTOR_SIZE - 1))
		return -EINVAL;
	if (flags & RK_WRITE_PREFLUSH)
		opf |= REQ_PREFLUSH;
	if (flags & RK_WRITE_FUA)
		opf |= REQ_FUA;
	while (len) {
		unsigned int n = min_t(u64, len, RK_BOUNCE_BYTES);

		memcpy(rt->bounce, buf, n);
		r = rk_sync_bio(bdev, opf, offset >> SECTOR_SHIFT, rt->bounce, n);
		if (r)
			return r;
		/* The preflush covered everything before the first piece. */
		opf &= ~REQ_PREFLUSH;
		buf += n;
		offset += n;
		len -= n;
	}
	return 0;
}

int rk_c_flush(void *io, u32 dev)
{
	struct rk_target *rt = io;

	return blkdev_issue_flush(rk_bdev(rt, dev));
}

int rk_c_discard(void *io, u32 dev, u64 offset, u64 len)
{
	struct rk_target *rt = io;
	struct block_device *bdev = rk_bdev(rt, dev);

	if (!bdev_max_discard_sectors(bdev))
		return 0;
	return blkdev_issue_discard(bdev, offset >> SECTOR_SHIFT,
				    len >> SECTOR_SHIFT, GFP_NOIO);
}

/* ---- the gate ---- */

/*
 * Take a count on the gate if it is open; every bio routed by the table holds one
 * until it completes. Closing the gate (rk_gate_close) sets gate_closed and waits
 * for an RCU grace period: after it, every rk_enter() that saw the gate open has
 * made its increment visible, and no new one can happen; then it waits for the
 * count to drain to zero. The count is per CPU, so the fast path touches no shared
 * cache line; a bio may complete on another CPU than it started on, so one CPU's
 * count can go negative and only the sum means anything.
 */
static bool rk_enter(struct rk_target *rt)
{
	bool open;

	rcu_read_lock();
	open = !READ_ONCE(rt->gate_closed);
	if (open)
		this_cpu_inc(*rt->inflight);
	rcu_read_unlock();
	return open;
}

static void rk_put_inflight(struct rk_target *rt)
{
	this_cpu_dec(*rt->inflight);
	/*
	 * Either the closer's sum sees this decrement, or this reads the gate
	 * closed and wakes it (pairs with the barriers of synchronize_rcu() and
	 * wait_event() in rk_gate_close()).
	 */
	smp_mb();
	if (READ_ONCE(rt->gate_closed))
		wake_up(&rt->drain_wq);
}

/*
 * Bios in flight. Exact once the gate is closed and a grace period has passed:
 * counts then only go down, so a sum read CPU by CPU is never below the truth.
 */
static long rk_inflight(struct rk_target *rt)
{
	long sum = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		sum += READ_ONCE(*per_cpu_ptr(rt->inflight, cpu));
	return sum;
}

/* Only the work queue closes the gate. */
static void rk_gate_close(struct rk_target *rt)
{
	WRITE_ONCE(rt->gate_closed, 1);
	synchronize_rcu();
	wait_event(rt->drain_wq, rk_inflight(rt) == 0);
}

static void rk_gate_open(struct rk_target *rt)
{
	smp_mb();
	WRITE_ONCE(rt->gate_closed, 0);
}

/* ---- bio helpers ---- */

static u32 rk_bio_op(struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return RK_OP_READ;
	case REQ_OP_WRITE:
		return RK_OP_WRITE;
	case REQ_OP_DISCARD:
		return RK_OP_DISCARD;
	case REQ_OP_WRITE_ZEROES:
		return RK_OP_WRITE_ZEROES;
	default:
		return U32_MAX;
	}
}

/* Copy between the bio's data (the range saved at map time) and a linear buffer. */
static void rk_copy_bio(struct bio *bio, struct bvec_iter iter, unsigned int skip,
			u8 *buf, unsigned int len, bool to_bio)
{
	struct bio_vec bv;
	struct bvec_iter it;

	bio_advance_iter(bio, &iter, skip);
	iter.bi_size = len;
	__bio_for_each_segment(bv, bio, it, iter) {
		if (to_bio)
			memcpy_to_bvec(&bv, buf);
		else
			memcpy_from_bvec(buf, &bv);
		buf += bv.bv_len;
	}
}

static void rk_zero_bio(struct bio *bio, struct bvec_iter iter)
{
	struct bio_vec bv;
	struct bvec_iter it;

	__bio_for_each_segment(bv, bio, it, iter)
		memzero_bvec(&bv);
}

static void rk_queue(struct rk_target *rt, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&rt->lock, flags);
	bio_list_add(&rt->slow_bios, bio);
	spin_unlock_irqrestore(&rt->lock, flags);
	queue_work(rt->wq, &rt->work);
}

static u32 rk_now_s(void)
{
	return (u32)ktime_get_real_seconds();
}

/* Complete a bio the work queue (or map) handled itself. */
static void rk_complete(struct rk_target *rt, struct bio *bio, blk_status_t status)
{
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));

	rk_account(rt->shared, pb->op, pb->iter.bi_size, ktime_get_ns() - pb->start_ns,
		   true, status == BLK_STS_OK);
	pb->flags |= RK_BIO_DONE;
	bio->bi_status = status;
	bio_endio(bio);
}

/* ---- the fast path ---- */

/*
 * Route the bio as the table says and remap it. Called with a count on the gate
 * taken and the gate open. Returns a DM_MAPIO_* value; for DM_MAPIO_REMAPPED the
 * bio keeps its count until end_io. `in_map`: device-mapper's map() may accept
 * part of the bio; the work queue may not, and defers what spans several runs.
 */
static int rk_route_bio(struct rk_target *rt, struct bio *bio, bool in_map)
{
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));
	sector_t sector = dm_target_offset(rt->ti, bio->bi_iter.bi_sector);
	u64 blocks = bio_sectors(bio) >> rt->spb_shift;
	struct rk_route r;

	pb->lba = sector >> rt->spb_shift;
	rk_route(rt->state, rt->shared, pb->lba, blocks, pb->op, &r);
	if (!r.blocks || r.blocks > blocks) {
		/* Never happens: the Rust side answers within the request. Fail it whole. */
		r.kind = RK_ROUTE_FAIL;
		r.blocks = blocks;
	}
	if (r.blocks < blocks) {
		if (!in_map) {
			rk_put_inflight(rt);
			return -1;
		}
		dm_accept_partial_bio(bio, r.blocks << rt->spb_shift);
	}
	pb->iter = bio->bi_iter;
	switch (r.kind) {
	case RK_ROUTE_MAIN:
		pb->flags |= RK_BIO_COUNTED;
		bio_set_dev(bio, rt->main->bdev);
		bio->bi_iter.bi_sector = sector;
		return DM_MAPIO_REMAPPED;
	case RK_ROUTE_SPARE:
		pb->flags |= RK_BIO_COUNTED;
		pb->spare = 1;
		bio_set_dev(bio, rt->spare->bdev);
		bio->bi_iter.bi_sector = r.sector;
		return DM_MAPIO_REMAPPED;
	case RK_ROUTE_SKIP:
		rk_put_inflight(rt);
		rk_complete(rt, bio, BLK_STS_OK);
		return DM_MAPIO_SUBMITTED;
	case RK_ROUTE_FAIL:
		rk_put_inflight(rt);
		rk_complete(rt, bio, BLK_STS_IOERR);
		return DM_MAPIO_SUBMITTED;
	default: /* RK_ROUTE_SLOW */
		rk_put_inflight(rt);
		return -1;
	}
}

static int rk_map(struct dm_target *ti, struct bio *bio)
{
	struct rk_target *rt = ti->private;
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));
	sector_t sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	unsigned int mask = (1U << rt->spb_shift) - 1;
	int r;

	pb->start_ns = ktime_get_ns();
	pb->flags = 0;
	pb->spare = 0;
	pb->iter = bio->bi_iter;
	if (bio->bi_opf & REQ_PREFLUSH && !bio_sectors(bio)) {
		/* An empty flush, sent twice (num_flush_bios): to main, then to spare. */
		pb->op = RK_OP_FLUSH;
		pb->spare = dm_bio_get_target_bio_nr(bio) == 1;
		if (rk_refuses_flush(rt->shared)) {
			/* Writes stopped after a metadata failure: nothing is durable through us. */
			if (pb->spare)
				rk_account_spare_flush(rt->shared, false);
			else
				rk_account(rt->shared, RK_OP_FLUSH, 0, 0, false, false);
			return DM_MAPIO_KILL;
		}
		bio_set_dev(bio, pb->spare ? rt->spare->bdev : rt->main->bdev);
		return DM_MAPIO_REMAPPED;
	}
	pb->op = rk_bio_op(bio);
	if (pb->op == U32_MAX || ((sector | bio_sectors(bio)) & mask) || !bio_sectors(bio)) {
		/* The logical block size keeps this from happening; never guess. */
		DMERR_LIMIT("%s: refusing op %u at sector %llu, %u sectors: not whole %u-byte blocks",
			    dm_device_name(rt->md), bio_op(bio),
			    (unsigned long long)sector, bio_sectors(bio),
			    1U << (rt->spb_shift + SECTOR_SHIFT));
		return DM_MAPIO_KILL;
	}
	if (unlikely(!rk_enter(rt))) {
		pb->flags |= RK_BIO_DEFERRED;
		rk_queue(rt, bio);
		return DM_MAPIO_SUBMITTED;
	}
	r = rk_route_bio(rt, bio, true);
	if (r < 0) {
		rk_queue(rt, bio);
		return DM_MAPIO_SUBMITTED;
	}
	return r;
}

static int rk_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	struct rk_target *rt = ti->private;
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));
	bool ok = *error == BLK_STS_OK;

	if (pb->flags & RK_BIO_DONE)
		return DM_ENDIO_DONE;
	if (pb->op == RK_OP_FLUSH) {
		if (pb->spare)
			rk_account_spare_flush(rt->shared, ok);
		else
			rk_account(rt->shared, RK_OP_FLUSH, 0,
				   ktime_get_ns() - pb->start_ns, false, ok);
		return DM_ENDIO_DONE;
	}
	if (pb->flags & RK_BIO_COUNTED) {
		pb->flags &= ~RK_BIO_COUNTED;
		rk_put_inflight(rt);
	}
	if (!ok && pb->op != RK_OP_DISCARD &&
	    rk_is_media_errno(-blk_status_to_errno(*error))) {
		/* A block failed: the work queue isolates it and moves or marks it. */
		rk_queue(rt, bio);
		return DM_ENDIO_INCOMPLETE;
	}
	rk_account(rt->shared, pb->op, pb->iter.bi_size, ktime_get_ns() - pb->start_ns,
		   pb->spare, ok);
	return DM_ENDIO_DONE;
}

/* ---- the work queue ---- */

/* Do a whole bio synchronously through the Rust slow path, then complete it. */
static void rk_slow_bio(struct rk_target *rt, struct bio *bio)
{
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));
	unsigned int total = pb->iter.bi_size;
	unsigned int block_shift = rt->spb_shift + SECTOR_SHIFT;
	unsigned int done = 0;
	blk_status_t status = BLK_STS_OK;
	int r = 0;

	if (pb->op == RK_OP_DISCARD) {
		r = rk_slow_io(rt->state, rt->shared, rt, RK_OP_DISCARD, pb->lba, NULL,
			       total, false, rk_now_s(), rt->err, RK_ERR_BYTES);
		done = total;
	}
	while (done < total) {
		unsigned int len = min_t(unsigned int, total - done, RK_MAX_SLOW_BYTES);
		u64 lba = pb->lba + (done >> block_shift);

		switch (pb->op) {
		case RK_OP_READ:
			r = rk_slow_io(rt->state, rt->shared, rt, RK_OP_READ, lba,
				       rt->scratch, len, false, rk_now_s(), rt->err,
				       RK_ERR_BYTES);
			if (!r)
				rk_copy_bio(bio, pb->iter, done, rt->scratch, len, true);
			break;
		case RK_OP_WRITE:
			rk_copy_bio(bio, pb->iter, done, rt->scratch, len, false);
			r = rk_slow_io(rt->state, rt->shared, rt, RK_OP_WRITE, lba,
				       rt->scratch, len, bio->bi_opf & REQ_FUA,
				       rk_now_s(), rt->err, RK_ERR_BYTES);
			break;
		default: /* RK_OP_WRITE_ZEROES: the write path with zeroes */
			memset(rt->scratch, 0, len);
			r = rk_slow_io(rt->state, rt->shared, rt, RK_OP_WRITE, lba,
				       rt->scratch, len, bio->bi_opf & REQ_FUA,
				       rk_now_s(), rt->err, RK_ERR_BYTES);
			break;
		}
		if (r)
			break;
		done += len;
	}
	if (r) {
		status = errno_to_blk_status(r);
		DMERR_LIMIT("%s: %s", dm_device_name(rt->md), rt->err);
		/* A failed read hands out no data, not even the part that was read. */
		if (pb->op == RK_OP_READ)
			rk_zero_bio(bio, pb->iter);
	}
	rk_complete(rt, bio, status);
}

/*
 * A deferred bio, retried on the fast path now that the gate is open. It is no
 * longer "deferred": if it fails now, end_io hands it to the slow path, which
 * works from the range saved here, never from the bio's (then unreliable) iter.
 */
static bool rk_resubmit(struct rk_target *rt, struct bio *bio)
{
	struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));
	int r;

	pb->flags &= ~RK_BIO_DEFERRED;
	if (!rk_enter(rt))
		return false;
	r = rk_route_bio(rt, bio, false);
	if (r < 0) {
		/* Several runs: the slow path does it, from where the bio starts. */
		pb->lba = dm_target_offset(rt->ti, pb->iter.bi_sector) >> rt->spb_shift;
		return false;
	}
	if (r == DM_MAPIO_REMAPPED)
		dm_submit_bio_remap(bio, NULL);
	return true;
}

static void rk_run_message(struct rk_target *rt, struct rk_msg_work *mw)
{
	mw->ret = rk_message_exclusive(rt->state, rt->shared, rt, &mw->msg, rk_now_s(),
				       mw->result, mw->maxlen);
	complete(&mw->done);
}

static void rk_work(struct work_struct *work)
{
	struct rk_target *rt = container_of(work, struct rk_target, work);
	unsigned int noio = memalloc_noio_save();
	struct bio_list bios, slow;
	struct rk_msg_work *mw, *tmp;
	struct bio *bio;
	LIST_HEAD(msgs);

	mutex_lock(&rt->excl);
	for (;;) {
		spin_lock_irq(&rt->lock);
		bios = rt->slow_bios;
		bio_list_init(&rt->slow_bios);
		list_splice_init(&rt->msgs, &msgs);
		spin_unlock_irq(&rt->lock);
		if (bio_list_empty(&bios) && list_empty(&msgs))
			break;
		bio_list_init(&slow);
		while ((bio = bio_list_pop(&bios))) {
			struct rk_bio *pb = dm_per_bio_data(bio, sizeof(struct rk_bio));

			if ((pb->flags & RK_BIO_DEFERRED) && rk_resubmit(rt, bio))
				continue;
			bio_list_add(&slow, bio);
		}
		if (bio_list_empty(&slow) && list_empty(&msgs))
			continue;
		rk_gate_close(rt);
		while ((bio = bio_list_pop(&slow)))
			rk_slow_bio(rt, bio);
		list_for_each_entry_safe(mw, tmp, &msgs, list) {
			list_del(&mw->list);
			rk_run_message(rt, mw);
		}
		rk_gate_open(rt);
	}
	mutex_unlock(&rt->excl);
	memalloc_noio_restore(noio);
}

/* ---- table load, unload, suspend, resume ---- */

static void rk_free(struct rk_target *rt)
{
	unsigned int i;

	if (rt->wq)
		destroy_workqueue(rt->wq);
	rk_close(rt->state, rt->shared);
	if (rt->main)
		dm_put_device(rt->ti, rt->main);
	if (rt->spare)
		dm_put_device(rt->ti, rt->spare);
	for (i = 0; i < rt->argc; i++)
		kfree(rt->argv[i]);
	kfree(rt->argv);
	kvfree(rt->bounce);
	kvfree(rt->scratch);
	kfree(rt->err);
	free_percpu(rt->inflight);
	kfree(rt);
}

/*
 * Recover the spare's state (reading only) and check it against the devices.
 * On failure the reason is logged and *reason set for ti->error.
 */
static int rk_load(struct rk_target *rt, struct rk_state **state,
		   struct rk_shared **shared, const char **reason)
{
	struct rk_open_args a = { 0 };
	struct mapped_device *main_md;
	char *uuid = NULL;
	unsigned int noio;
	int r;

	main_md = dm_get_md(rt->main->bdev->bd_dev);
	if (main_md) {
		uuid = kzalloc(DM_UUID_LEN, GFP_KERNEL);
		if (uuid && dm_copy_name_and_uuid(main_md, NULL, uuid))
			uuid[0] = 0;
		dm_put(main_md);
	}
	a.target_bytes = (u64)rt->ti->len << SECTOR_SHIFT;
	a.main_dev_bytes = bdev_nr_bytes(rt->main->bdev);
	a.spare_dev_bytes = bdev_nr_bytes(rt->spare->bdev);
	a.main_dm_uuid = uuid;
	a.main_dm_uuid_len = uuid ? strnlen(uuid, DM_UUID_LEN) : 0;
	a.page_size = PAGE_SIZE;
	a.main_logical_block = bdev_logical_block_size(rt->main->bdev);
	a.spare_logical_block = bdev_logical_block_size(rt->spare->bdev);
	a.now_ns = ktime_get_ns();
	a.argc = rt->argc;
	a.argv = (const char *const *)rt->argv;
	a.io = rt;
	noio = memalloc_noio_save();
	r = rk_open(&a, state, shared, &rt->geo, rt->err, RK_ERR_BYTES, reason);
	memalloc_noio_restore(noio);
	kfree(uuid);
	if (r)
		DMERR("%s: %s", dm_device_name(rt->md), rt->err);
	return r;
}

static int rk_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct rk_target *rt;
	const char *reason = NULL;
	unsigned int i;
	int r;

	if (argc < 2) {
		ti->error = "expected <main_dev> <spare_dev> [<#opt_args> <opt>...]";
		return -EINVAL;
	}
	if (!(dm_table_get_mode(ti->table) & RK_MODE_WRITE)) {
		ti->error = "dm-remap-v4 needs a writable table: it records failing blocks on the spare";
		return -EINVAL;
	}
	rt = kzalloc(sizeof(*rt), GFP_KERNEL);
	if (!rt) {
		ti->error = "out of memory";
		return -ENOMEM;
	}
	rt->ti = ti;
	rt->md = dm_table_get_md(ti->table);
	init_waitqueue_head(&rt->drain_wq);
	spin_lock_init(&rt->lock);
	bio_list_init(&rt->slow_bios);
	INIT_LIST_HEAD(&rt->msgs);
	INIT_LIST_HEAD(&rt->registry);
	mutex_init(&rt->excl);
	INIT_WORK(&rt->work, rk_work);

	r = -ENOMEM;
	ti->error = "out of memory";
	rt->argc = argc - 2;
	rt->argv = kcalloc(rt->argc + 1, sizeof(char *), GFP_KERNEL);
	rt->bounce = kvmalloc(RK_BOUNCE_BYTES, GFP_KERNEL);
	rt->scratch = kvmalloc(RK_MAX_SLOW_BYTES, GFP_KERNEL);
	rt->err = kzalloc(RK_ERR_BYTES, GFP_KERNEL);
	rt->inflight = alloc_percpu(long);
	if (!rt->argv || !rt->bounce || !rt->scratch || !rt->err || !rt->inflight)
		goto bad;
	for (i = 0; i < rt->argc; i++) {
		rt->argv[i] = kstrdup(argv[i + 2], GFP_KERNEL);
		if (!rt->argv[i])
			goto bad;
	}

	r = dm_get_device(ti, argv[0], dm_table_get_mode(ti->table), &rt->main);
	if (r) {
		ti->error = "cannot open the main device";
		goto bad;
	}
	r = dm_get_device(ti, argv[1], dm_table_get_mode(ti->table), &rt->spare);
	if (r) {
		ti->error = "cannot open the spare device";
		goto bad;
	}
	if (rt->main->bdev == rt->spare->bdev) {
		ti->error = "the main and spare devices are the same device";
		r = -EINVAL;
		goto bad;
	}
	r = rk_load(rt, &rt->state, &rt->shared, &reason);
	if (r) {
		ti->error = reason ? (char *)reason : "cannot load the spare's metadata";
		goto bad;
	}
	rt->spb_shift = rt->geo.block_shift - SECTOR_SHIFT;

	rt->wq = alloc_ordered_workqueue("kdmremap/%s", WQ_MEM_RECLAIM,
					 dm_device_name(rt->md));
	if (!rt->wq) {
		ti->error = "cannot create the work queue";
		r = -ENOMEM;
		goto bad;
	}
	r = rk_registry_add(rt);
	if (r) {
		ti->error = "the spare device is in use by another dm-remap-v4 device";
		goto bad;
	}

	ti->num_flush_bios = 2;
	ti->flush_supported = true;
	ti->num_discard_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct rk_bio);
	/* Bios returned DM_MAPIO_SUBMITTED are either completed here or handed to
	 * dm_submit_bio_remap(), which starts the accounting. */
	ti->accounts_remapped_io = true;
	ti->private = rt;
	DMINFO("%s: main %s, spare %s: %llu blocks of %u bytes, %llu spare blocks, %llu table entries (%llu pending)",
	       dm_device_name(rt->md), rt->main->name, rt->spare->name,
	       rt->geo.blocks, 1U << rt->geo.block_shift, rt->geo.pool_blocks,
	       rt->geo.table_entries, rt->geo.pending);
	return 0;
bad:
	rk_free(rt);
	return r;
}

static void rk_dtr(struct dm_target *ti)
{
	struct rk_target *rt = ti->private;

	rk_registry_del(rt);
	rk_free(rt);
}

/* Before device-mapper stops I/O: let error handling already under way finish. */
static void rk_presuspend(struct dm_target *ti)
{
	struct rk_target *rt = ti->private;

	flush_workqueue(rt->wq);
}

/*
 * After device-mapper has waited for every bio (the work queue completes the ones
 * it holds), write a checkpoint: the next table to load (a reload, or after a
 * remove) then starts from the whole state, lifetime counters included.
 */
static void rk_postsuspend(struct dm_target *ti)
{
	struct rk_target *rt = ti->private;
	unsigned int noio;
	int r;

	flush_workqueue(rt->wq);
	mutex_lock(&rt->excl);
	noio = memalloc_noio_save();
	r = rk_checkpoint(rt->state, rt->shared, rt, rt->err, RK_ERR_BYTES);
	memalloc_noio_restore(noio);
	if (r)
		DMERR("%s: checkpoint on suspend failed: %s", dm_device_name(rt->md), rt->err);
	mutex_unlock(&rt->excl);
}

/*
 * Before I/O reaches this table, load the state again: another table of this
 * device (the one a reload replaces) may have changed it since the ctr ran.
 */
static int rk_preresume(struct dm_target *ti)
{
	struct rk_target *rt = ti->private;
	struct rk_state *state = NULL;
	struct rk_shared *shared = NULL;
	const char *reason = NULL;
	int r;

	mutex_lock(&rt->excl);
	r = rk_load(rt, &state, &shared, &reason);
	if (!r) {
		rk_close(rt->state, rt->shared);
		rt->state = state;
		rt->shared = shared;
	}
	mutex_unlock(&rt->excl);
	return r;
}

static void rk_dm_status(struct dm_target *ti, status_type_t type,
			 unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct rk_target *rt = ti->private;

	switch (type) {
	case STATUSTYPE_INFO:
		rk_status(rt->shared, 0, rt->main->name, rt->spare->name, ktime_get_ns(),
			  result, maxlen);
		break;
	case STATUSTYPE_TABLE:
		rk_status(rt->shared, 1, rt->main->name, rt->spare->name, 0, result, maxlen);
		break;
	default:
		if (maxlen)
			result[0] = 0;
		break;
	}
}

static int rk_message(struct dm_target *ti, unsigned int argc, char **argv,
		      char *result, unsigned int maxlen)
{
	struct rk_target *rt = ti->private;
	struct rk_msg_work mw = { 0 };
	char verb[24];
	int r;

	/* The answer is written over the message's own buffer: keep the verb for the log. */
	strscpy(verb, argc ? argv[0] : "", sizeof(verb));
	if (argc == 1 && !strcmp(verb, "debug")) {
		unsigned int queued = 0;
		struct bio *b;

		spin_lock_irq(&rt->lock);
		for (b = rt->slow_bios.head; b; b = b->bi_next)
			queued++;
		spin_unlock_irq(&rt->lock);
		scnprintf(result, maxlen, "inflight=%ld gate_closed=%d queued=%u work_pending=%d",
			  rk_inflight(rt), READ_ONCE(rt->gate_closed), queued,
			  work_pending(&rt->work));
		return 1;
	}
	r = rk_message_parse(argc, (const char *const *)argv, &mw.msg, result, maxlen);
	if (r)
		goto refused;
	if (!mw.msg.exclusive) {
		r = rk_message_shared(rt->shared, &mw.msg, ktime_get_ns(), result, maxlen);
		if (r)
			goto refused;
		return 1;	/* 1: result holds the answer */
	}
	mw.result = result;
	mw.maxlen = maxlen;
	init_completion(&mw.done);
	spin_lock_irq(&rt->lock);
	list_add_tail(&mw.list, &rt->msgs);
	spin_unlock_irq(&rt->lock);
	queue_work(rt->wq, &rt->work);
	wait_for_completion(&mw.done);
	r = mw.ret;
	if (r)
		goto refused;
	return 1;
refused:
	DMERR("%s: message '%s' refused: %s", dm_device_name(rt->md), verb, result);
	return r;
}

static int rk_iterate_devices(struct dm_target *ti, iterate_devices_callout_fn fn,
			      void *data)
{
	struct rk_target *rt = ti->private;
	int r;

	r = fn(ti, rt->main, 0, ti->len, data);
	if (r)
		return r;
	return fn(ti, rt->spare, 0,
		  (rt->geo.pool_offset >> SECTOR_SHIFT) +
		  (rt->geo.pool_blocks << rt->spb_shift), data);
}

/* Raise the logical block size to the remap block: every bio covers whole blocks. */
static void rk_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct rk_target *rt = ti->private;
	unsigned int bs = 1U << rt->geo.block_shift;

	limits->logical_block_size = max(limits->logical_block_size, bs);
	limits->physical_block_size = max(limits->physical_block_size, bs);
	limits->io_min = max(limits->io_min, bs);
}

static struct target_type rk_target_type = {
	.name = RK_TARGET_NAME,
	.version = { 4, 0, 0 },
	.module = THIS_MODULE,
	.ctr = rk_ctr,
	.dtr = rk_dtr,
	.map = rk_map,
	.end_io = rk_end_io,
	.presuspend = rk_presuspend,
	.postsuspend = rk_postsuspend,
	.preresume = rk_preresume,
	.status = rk_dm_status,
	.message = rk_message,
	.iterate_devices = rk_iterate_devices,
	.io_hints = rk_io_hints,
};

static int __init rk_init(void)
{
	int r = dm_register_target(&rk_target_type);

	if (r)
		DMERR("cannot register target " RK_TARGET_NAME ": %d", r);
	else
		DMINFO("target " RK_TARGET_NAME " 4.0.0 registered");
	return r;
}

static void __exit rk_exit(void)
{
	dm_unregister_target(&rk_target_type);
}

module_init(rk_init);
module_exit(rk_exit);

MODULE_DESCRIPTION("dm-remap-v4: move failing blocks of a disk to a spare device");
MODULE_AUTHOR("remap developers");
MODULE_LICENSE("GPL");
