// SPDX-License-Identifier: GPL-2.0
/*
 * enl_hostile: a hostile guest for Enlighten's end-to-end tests.
 *
 * Built against Debian's linux-headers-6.1.0-56-cloud-amd64 (tools/enlighten_tools/hostile.py)
 * and loaded only by tests/e2e/test_hostile.py, inside the unmodified Debian guest kernel. It
 * speaks to the VMM the way a malicious guest kernel could: raw hypercalls, raw VMBus channel
 * messages (HvPostMessage), doorbells (HvSignalEvent), GPADLs, and packets written straight
 * into channel rings, with lengths, offsets, indices and page numbers that lie.
 *
 * One attack per load: insmod enl_hostile.ko attack=NAME [relid=N] [device=GUID] [shape=S]
 *
 *   Global attacks (run by insmod, the module stays loaded until rmmod):
 *     messages   every channel message type at every size, random contents (the fields that
 *                could tear down the guest's own live channels point at nothing)
 *     gpadls     GPADL headers and bodies that lie (counts, lengths, offsets, PFNs outside
 *                RAM), bodies without a header, duplicate handles, more half-built GPADLs
 *                than the VMM allows, all torn down again (relid= a live channel)
 *     doorbells  HvSignalEvent on every connection id, with bad flags, fast and slow
 *     hypercalls every hypercall code, fast and slow, rep counts, input and output GPAs
 *                outside RAM, unaligned or crossing a page
 *     flood      tens of thousands of messages that each make the VMM answer
 *
 *   Channel attacks on a device (device= its instance GUID; shape= how to shape payloads:
 *   storvsc, netvsc, ic, balloon, pipe (synthvid, synthhid) or generic):
 *     live       the device stays bound to its own driver; packets that lie are written into
 *                the ring that driver has open (its protocol state is established)
 *     own        the device is bound to this module (driver_override): fresh opens with
 *                garbage, ring indices and pending_send_sz set to nonsense, raw OPENCHANNELs
 *                with bad ring offsets, the ring's GPADL torn down while open, open/close in
 *                a loop while another CPU rings the doorbell
 *
 * Each attack prints "ENL-HOSTILE <attack> <key>=<value> ..." lines to the kernel log and to
 * the module's read-only parameter `report` (what the test reads). The
 * random stream is xorshift64 from seed=, so a failure can be replayed.
 */
#include <linux/delay.h>
#include <linux/hyperv.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <asm/desc.h>
#include <asm/mshyperv.h>

static char *attack = "";
module_param(attack, charp, 0444);
static char *device = "";
module_param(device, charp, 0444);
static char *shape = "generic";
module_param(shape, charp, 0444);
static uint relid;
module_param(relid, uint, 0444);
static ulong seed = 0x9e3779b97f4a7c15ULL;
module_param(seed, ulong, 0444);
static uint scale = 100; /* percent of the default counts */
module_param(scale, uint, 0444);

/* What the attack reports, also readable in /sys/module/enl_hostile/parameters/report until
 * rmmod: the kernel log can lose lines when the attacked drivers complain by the thousand. */
static char report[4096];
module_param_string(report, report, sizeof(report), 0444);
static DEFINE_MUTEX(report_lock);
#define LOG(fmt, ...)                                                                              \
	do {                                                                                       \
		size_t used_;                                                                      \
		pr_info("ENL-HOSTILE %s " fmt "\n", attack, ##__VA_ARGS__);                        \
		mutex_lock(&report_lock);                                                          \
		used_ = strnlen(report, sizeof(report));                                           \
		scnprintf(report + used_, sizeof(report) - used_, "ENL-HOSTILE %s " fmt "\n", attack, \
			  ##__VA_ARGS__);                                                          \
		mutex_unlock(&report_lock);                                                        \
	} while (0)
#define N(x) ((u32)max_t(u64, 1, (u64)(x) * scale / 100))

/* Page numbers no 512 MiB-4 GiB guest has: just past 4 GiB... 64 TiB, and beyond 52 bits. */
static const u64 bad_pfns[] = {0x100000, 0x140000, 0xfffffffULL, 0x1ffffffffULL, 1ULL << 40, ~0ULL};

/* --- randomness ------------------------------------------------------------------------ */
static u64 rng_state;
static u64 rnd(void)
{
	u64 x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}
static u32 rnd_below(u32 n) { return n ? (u32)(rnd() % n) : 0; }
static void rnd_fill(void *buf, size_t len)
{
	u8 *p = buf;
	size_t i;

	for (i = 0; i < len; i += 8) {
		u64 v = rnd();

		memcpy(p + i, &v, min_t(size_t, 8, len - i));
	}
}
/* A 32-bit value that parsers trip on. */
static u32 nasty32(u32 len)
{
	static const u32 v[] = {0, 1, 2, 3, 4, 7, 8, 16, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000,
				0x1001, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff};
	switch (rnd_below(4)) {
	case 0: return (u32)rnd();
	case 1: return len + rnd_below(3) - 1;
	default: return v[rnd_below(ARRAY_SIZE(v))];
	}
}

/* --- raw hypercalls -------------------------------------------------------------------- */
static u64 raw_hypercall(u64 control, u64 in_gpa, u64 out_gpa)
{
	u64 status;

	if (!hv_hypercall_pg)
		return U64_MAX;
	__asm__ __volatile__("mov %4, %%r8\n" CALL_NOSPEC
			     : "=a"(status), ASM_CALL_CONSTRAINT, "+c"(control), "+d"(in_gpa)
			     : "r"(out_gpa), THUNK_TARGET(hv_hypercall_pg)
			     : "cc", "memory", "r8", "r9", "r10", "r11");
	return status;
}

struct post_input { /* HvPostMessage's input (TLFS) */
	u32 connection_id;
	u32 reserved;
	u32 message_type;
	u32 payload_size;
	u8 payload[240];
} __packed;

static struct post_input *post_page; /* one page, ours */
static u32 msg_connection(void) { return vmbus_proto_version >= VERSION_WIN10_V5 ? 4 : 1; }

static u16 post_raw(u32 conn, u32 type, const void *payload, u32 size)
{
	memset(post_page, 0, sizeof(*post_page));
	post_page->connection_id = conn;
	post_page->message_type = type;
	post_page->payload_size = size;
	memcpy(post_page->payload, payload, min_t(u32, size, sizeof(post_page->payload)));
	return (u16)raw_hypercall(HVCALL_POST_MESSAGE, virt_to_phys(post_page), 0);
}
static u16 post(const void *msg, u32 size) { return post_raw(msg_connection(), 1, msg, size); }

/* Counts hypercall statuses by value, printed as "status_<hex>=<n>". */
struct tally {
	u32 n[32];
	u32 other;
};
static void tally_add(struct tally *t, u16 status)
{
	if (status < ARRAY_SIZE(t->n))
		t->n[status]++;
	else
		t->other++;
}
static void tally_print(const char *what, const struct tally *t)
{
	char line[256];
	int len = 0;
	u32 i;

	for (i = 0; i < ARRAY_SIZE(t->n); ++i)
		if (t->n[i])
			len += scnprintf(line + len, sizeof(line) - len, " status_%x=%u", i, t->n[i]);
	if (t->other)
		len += scnprintf(line + len, sizeof(line) - len, " status_other=%u", t->other);
	LOG("%s%s", what, line);
}

/* --- global attacks -------------------------------------------------------------------- */

/* Makes a random message harmless to the guest's own live state: whatever names a channel
 * or a GPADL names none that exists; UNLOAD, INITIATE_CONTACT and REQUESTOFFERS (which
 * would reset or re-offer the guest's VMBus) are not sent at random. */
static bool defuse(u8 *m, u32 size, u32 i)
{
	u32 type = ((struct vmbus_channel_message_header *)m)->msgtype;
	u32 nowhere_relid = 1900 + (i % 100);
	u32 nowhere_gpadl = 0xdead0000 + (i & 0xffff);

	switch (type) {
	case CHANNELMSG_UNLOAD:
	case CHANNELMSG_INITIATE_CONTACT:
	case CHANNELMSG_REQUESTOFFERS:
		return false;
	case CHANNELMSG_OPENCHANNEL:
	case CHANNELMSG_CLOSECHANNEL:
	case CHANNELMSG_RELID_RELEASED:
	case CHANNELMSG_MODIFYCHANNEL:
	case CHANNELMSG_GPADL_HEADER:
		if (size >= 12)
			memcpy(m + 8, &nowhere_relid, 4);
		if (type == CHANNELMSG_GPADL_HEADER && size >= 16)
			memcpy(m + 12, &nowhere_gpadl, 4);
		return true;
	case CHANNELMSG_GPADL_TEARDOWN:
	case CHANNELMSG_GPADL_BODY:
		if (size >= 12)
			memcpy(m + 8, type == CHANNELMSG_GPADL_BODY ? &i : &nowhere_relid, 4);
		if (size >= 16)
			memcpy(m + 12, &nowhere_gpadl, 4);
		return true;
	default:
		return true;
	}
}

static int attack_messages(void)
{
	static const u32 sizes[] = {0, 1, 4, 7, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 160, 192, 200, 239, 240};
	struct tally ok = {}, bad = {};
	u8 m[256];
	u32 type, s, rep, sent = 0, i = 0;

	for (type = 0; type < CHANNELMSG_COUNT + 8; ++type)
		for (s = 0; s < ARRAY_SIZE(sizes); ++s)
			for (rep = 0; rep < N(4); ++rep, ++i) {
				rnd_fill(m, sizeof(m));
				((struct vmbus_channel_message_header *)m)->msgtype = type;
				if (rnd_below(2))
					((struct vmbus_channel_message_header *)m)->padding = 0;
				if (!defuse(m, sizes[s], i))
					continue;
				tally_add(&ok, post(m, sizes[s]));
				++sent;
			}
	/* What the hypercall itself must refuse: oversized payloads, bad connection ids and
	 * message types. */
	for (i = 0; i < N(200); ++i) {
		u32 conn = rnd_below(3) ? msg_connection() : nasty32(4);
		u32 mtype = rnd_below(3) ? 1 : nasty32(1);
		u32 size = rnd_below(2) ? 240 + rnd_below(4096) : nasty32(240);

		rnd_fill(m, sizeof(m));
		((struct vmbus_channel_message_header *)m)->msgtype = 0x7f;
		tally_add(&bad, post_raw(conn, mtype, m, size));
	}
	/* INITIATE_CONTACT with versions and SINTs nobody supports (refused, answered). */
	for (i = 0; i < N(50); ++i) {
		struct vmbus_channel_initiate_contact c = {};

		c.header.msgtype = CHANNELMSG_INITIATE_CONTACT;
		c.vmbus_version_requested = (u32)rnd() | 0x00ff0000; /* no such version */
		c.target_vcpu = nasty32(8);
		c.interrupt_page = rnd();
		c.monitor_page1 = rnd();
		c.monitor_page2 = rnd();
		tally_add(&bad, post(&c, sizeof(c)));
	}
	LOG("sent=%u", sent);
	tally_print("valid-hypercall", &ok);
	tally_print("invalid-hypercall", &bad);
	return 0;
}

struct gpadl_hdr_msg {
	struct vmbus_channel_gpadl_header h;
	u64 pfn[26];
} __packed;

static u16 gpadl_header(u32 rel, u32 handle, u16 buflen, u16 rangecount, u32 count, u32 offset,
			const u64 *pfns, u32 npfns)
{
	struct gpadl_hdr_msg m = {};
	u32 in_msg = min_t(u32, npfns, ARRAY_SIZE(m.pfn));

	m.h.header.msgtype = CHANNELMSG_GPADL_HEADER;
	m.h.child_relid = rel;
	m.h.gpadl = handle;
	m.h.range_buflen = buflen;
	m.h.rangecount = rangecount;
	m.h.range[0].byte_count = count;
	m.h.range[0].byte_offset = offset;
	memcpy(m.pfn, pfns, in_msg * 8);
	return post(&m, sizeof(m.h) + sizeof(struct gpa_range) + in_msg * 8);
}

static u16 gpadl_body(u32 handle, const u64 *pfns, u32 npfns)
{
	struct {
		struct vmbus_channel_gpadl_body b;
		u64 pfn[28];
	} __packed m = {};
	u32 in_msg = min_t(u32, npfns, ARRAY_SIZE(m.pfn));

	m.b.header.msgtype = CHANNELMSG_GPADL_BODY;
	m.b.gpadl = handle;
	memcpy(m.pfn, pfns, in_msg * 8);
	return post(&m, sizeof(m.b) + in_msg * 8);
}

static u16 gpadl_teardown(u32 rel, u32 handle)
{
	struct vmbus_channel_gpadl_teardown m = {};

	m.header.msgtype = CHANNELMSG_GPADL_TEARDOWN;
	m.child_relid = rel;
	m.gpadl = handle;
	return post(&m, sizeof(m));
}

#define GPADL_BASE 0x7a000000u

static int attack_gpadls(void)
{
	struct tally t = {};
	u64 pfns[28], good_pfn;
	u32 h = GPADL_BASE, i, refused_shapes = 0, half_built = 0;
	void *page;

	if (!relid) {
		LOG("error=no-relid");
		return -EINVAL;
	}
	page = (void *)get_zeroed_page(GFP_KERNEL);
	if (!page)
		return -ENOMEM;
	good_pfn = virt_to_phys(page) >> PAGE_SHIFT;

	/* Headers whose shape lies: range counts, buffer lengths, byte counts and offsets. */
	for (i = 0; i < N(400); ++i, ++h) {
		u16 buflen = rnd_below(2) ? (u16)nasty32(16) : (u16)(16 + 8 * rnd_below(4));
		u16 ranges = rnd_below(3) ? 1 : (u16)nasty32(1);
		u32 count = nasty32(4096), offset = rnd_below(2) ? 0 : nasty32(4096);
		u32 j;

		for (j = 0; j < ARRAY_SIZE(pfns); ++j)
			pfns[j] = rnd_below(2) ? good_pfn : bad_pfns[rnd_below(ARRAY_SIZE(bad_pfns))];
		tally_add(&t, gpadl_header(relid, h, buflen, ranges, count, offset, pfns, rnd_below(27)));
		++refused_shapes;
	}
	/* Complete GPADLs naming pages outside RAM, one page or split over bodies. */
	for (i = 0; i < ARRAY_SIZE(bad_pfns); ++i, ++h) {
		u32 j;

		pfns[0] = bad_pfns[i];
		tally_add(&t, gpadl_header(relid, h, 16, 1, 4096, 0, pfns, 1));
		for (j = 0; j < ARRAY_SIZE(pfns); ++j)
			pfns[j] = j == 20 ? bad_pfns[i] : good_pfn;
		++h;
		tally_add(&t, gpadl_header(relid, h, 8 + 8 * 40, 1, 40 * 4096, 0, pfns, 10));
		tally_add(&t, gpadl_body(h, pfns, 28));
		tally_add(&t, gpadl_body(h, pfns, 28)); /* more PFNs than it said */
		tally_add(&t, gpadl_body(h, pfns, 28)); /* after it completed */
		tally_add(&t, gpadl_teardown(relid, h - 1));
		tally_add(&t, gpadl_teardown(relid, h));
	}
	/* Bodies for handles that were never announced. */
	for (i = 0; i < N(100); ++i)
		tally_add(&t, gpadl_body(0xbad00000 + i, pfns, rnd_below(29)));
	/* A duplicate handle: the second header must be refused, the first stays intact. */
	pfns[0] = good_pfn;
	tally_add(&t, gpadl_header(relid, h, 16, 1, 4096, 0, pfns, 1));
	tally_add(&t, gpadl_header(relid, h, 16, 1, 4096, 0, pfns, 1));
	tally_add(&t, gpadl_teardown(relid, h));
	tally_add(&t, gpadl_teardown(relid, h)); /* twice */
	tally_add(&t, gpadl_teardown(relid + 1000, h + 1)); /* the wrong channel */
	++h;
	/* More half-built GPADLs than the VMM holds (each waits for bodies that never come),
	 * then every one torn down. Each claims 2 pages, so the count limit comes first. */
	{
		u32 first = h, n = N(9000);

		for (i = 0; i < n; ++i, ++h) {
			tally_add(&t, gpadl_header(relid, h, 8 + 8 * 2, 1, 2 * 4096, 0, pfns, 0));
			++half_built;
		}
		/* and 40 claiming the most one header can (8190 pages): 1.3 GB, past the VMM's
		 * limit on pages held for a guest of 512 MiB */
		for (i = 0; i < 40; ++i, ++h)
			tally_add(&t, gpadl_header(relid, h, 8 + 8 * 8190, 1, 8190 * 4096, 0, pfns, 0));
		for (i = first; i < h; ++i)
			tally_add(&t, gpadl_teardown(relid, i));
	}
	msleep(200); /* let the VMM's answers drain before the page is freed */
	free_page((unsigned long)page);
	LOG("relid=%u shapes=%u half_built=%u handles=%u", relid, refused_shapes, half_built, h - GPADL_BASE);
	tally_print("hypercalls", &t);
	return 0;
}

static int attack_doorbells(void)
{
	struct tally fast = {}, slow = {};
	u32 i, conn;
	u64 *in = (u64 *)post_page;

	/* Every channel connection id the VMM could have, and far beyond. */
	for (conn = 0x10000 - 16; conn < 0x10000 + 2100; ++conn)
		tally_add(&fast, (u16)raw_hypercall(HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, conn, 0));
	for (i = 0; i < N(20000); ++i) {
		u64 arg = rnd_below(2) ? 0x10000 + rnd_below(64) : rnd();

		if (rnd_below(4) == 0)
			arg |= (u64)nasty32(1) << 32; /* flag number */
		tally_add(&fast, (u16)raw_hypercall(HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, arg, 0));
	}
	/* The slow form, with its input in memory (ours, or nowhere). */
	for (i = 0; i < N(2000); ++i) {
		u64 gpa = rnd_below(3) ? virt_to_phys(in) + 8 * rnd_below(4) :
					 (bad_pfns[rnd_below(ARRAY_SIZE(bad_pfns))] << PAGE_SHIFT) + rnd_below(4096);

		in[0] = rnd_below(2) ? 0x10000 + rnd_below(64) : rnd();
		tally_add(&slow, (u16)raw_hypercall(HVCALL_SIGNAL_EVENT, gpa, 0));
	}
	tally_print("fast", &fast);
	tally_print("slow", &slow);
	return 0;
}

static int attack_hypercalls(void)
{
	struct tally t = {};
	u32 code, i;
	u64 mine = virt_to_phys(post_page);

	for (code = 0; code < 0x200; ++code)
		for (i = 0; i < N(8); ++i) {
			u64 control = code;
			u64 in, out;

			if (rnd_below(2))
				control |= HV_HYPERCALL_FAST_BIT;
			if (rnd_below(3) == 0)
				control |= (u64)(rnd() & 0xfff) << 32; /* rep count */
			if (rnd_below(4) == 0)
				control |= (u64)(rnd() & 0x1ff) << 17; /* variable header size */
			if (rnd_below(4) == 0)
				control |= (u64)(rnd() & 0xfff) << 48; /* rep start index */
			switch (rnd_below(4)) {
			case 0: in = mine; break;
			case 1: in = mine + 1 + rnd_below(4095); break; /* unaligned, or crossing */
			case 2: in = bad_pfns[rnd_below(ARRAY_SIZE(bad_pfns))] << PAGE_SHIFT; break;
			default: in = rnd(); break;
			}
			out = rnd_below(2) ? in : rnd();
			rnd_fill(post_page, PAGE_SIZE);
			tally_add(&t, (u16)raw_hypercall(control, in, out));
		}
	tally_print("hypercalls", &t);
	return 0;
}

static int attack_flood(void)
{
	struct tally t = {};
	u32 i, n = N(20000);

	/* OPENCHANNEL for a channel that does not exist: each is answered with a failure. */
	for (i = 0; i < n; ++i) {
		struct vmbus_channel_open_channel m = {};

		m.header.msgtype = CHANNELMSG_OPENCHANNEL;
		m.child_relid = 1900 + (i % 100);
		m.openid = i;
		tally_add(&t, post(&m, sizeof(m)));
	}
	/* GPADL teardowns of handles that do not exist, and messages of no known type. */
	for (i = 0; i < n; ++i) {
		u32 junk[4] = {0x40 + (i & 0xff), 0, 1900, 0xdead0000 + i};

		tally_add(&t, i & 1 ? gpadl_teardown(1900, 0xdead0000 + i) : post(junk, sizeof(junk)));
	}
	LOG("messages=%u", 2 * n);
	tally_print("hypercalls", &t);
	return 0;
}

/* --- channels -------------------------------------------------------------------------- */

/* Writes one packet (len a multiple of 8) into a channel's guest->host ring as the ring
 * protocol says (the packet, then 8 bytes of the previous write index), whatever the packet
 * says about itself, and rings the doorbell. -EAGAIN when the ring has no room. */
static int ring_put(struct vmbus_channel *ch, const void *pkt, u32 len)
{
	struct hv_ring_buffer_info *rbi = &ch->outbound;
	u32 dsize = rbi->ring_datasize, w, r, avail, i;
	unsigned long flags;
	u64 trailer;
	const u8 *src = pkt;

	if (len % 8 || len + 8 >= dsize)
		return -EINVAL;
	spin_lock_irqsave(&rbi->ring_lock, flags);
	w = READ_ONCE(rbi->ring_buffer->write_index);
	r = READ_ONCE(rbi->ring_buffer->read_index);
	if (w >= dsize || r >= dsize) {
		spin_unlock_irqrestore(&rbi->ring_lock, flags);
		return -EIO;
	}
	avail = w >= r ? dsize - (w - r) : r - w;
	if (avail <= len + 8) {
		spin_unlock_irqrestore(&rbi->ring_lock, flags);
		return -EAGAIN;
	}
	for (i = 0; i < len; ++i)
		rbi->ring_buffer->buffer[(w + i) % dsize] = src[i];
	trailer = (u64)w << 32;
	for (i = 0; i < 8; ++i)
		rbi->ring_buffer->buffer[(w + len + i) % dsize] = ((u8 *)&trailer)[i];
	virt_mb();
	WRITE_ONCE(rbi->ring_buffer->write_index, (w + len + 8) % dsize);
	spin_unlock_irqrestore(&rbi->ring_lock, flags);
	vmbus_set_event(ch);
	return 0;
}

/* ring_put, waiting up to a second for room; false when the VMM stopped reading. */
static bool ring_put_wait(struct vmbus_channel *ch, const void *pkt, u32 len)
{
	int tries, ret = -EAGAIN;

	for (tries = 0; tries < 200; ++tries) {
		ret = ring_put(ch, pkt, len);
		if (ret != -EAGAIN)
			break;
		usleep_range(2000, 5000);
	}
	return ret == 0;
}

/* A transaction id that no guest driver can take for one of its own requests (storvsc's tag
 * lookup and the requestor of netvsc both reject it). */
#define FOREIGN_TRANS_ID 0xffff0001ULL

enum shape_kind { SHAPE_GENERIC, SHAPE_STORVSC, SHAPE_NETVSC, SHAPE_IC, SHAPE_BALLOON, SHAPE_PIPE };
static enum shape_kind shape_kind(void)
{
	if (!strcmp(shape, "storvsc")) return SHAPE_STORVSC;
	if (!strcmp(shape, "netvsc")) return SHAPE_NETVSC;
	if (!strcmp(shape, "ic")) return SHAPE_IC;
	if (!strcmp(shape, "balloon")) return SHAPE_BALLOON;
	if (!strcmp(shape, "pipe")) return SHAPE_PIPE;
	return SHAPE_GENERIC;
}

/* Fills a payload the way the device's protocol starts, with nasty values in its fields. */
static void shape_payload(u8 *p, u32 len)
{
	static const u8 cdbs[] = {0x00, 0x03, 0x12, 0x1a, 0x25, 0x28, 0x2a, 0x35, 0x41, 0x42, 0x5a,
				  0x88, 0x8a, 0x93, 0x9e, 0xa0, 0xff};
	u32 *w = (u32 *)p;
	u32 i;

	rnd_fill(p, len);
	if (len < 16)
		return;
	switch (shape_kind()) {
	case SHAPE_STORVSC: /* vstor_packet: operation, flags, status, vmscsi_request */
		w[0] = rnd_below(4) ? 3 /* EXECUTE_SRB */ : rnd_below(16);
		w[1] = 1;
		if (len >= 12 + 0x34) {
			u8 *srb = p + 12;

			*(u16 *)srb = rnd_below(2) ? 0x34 : (u16)nasty32(0x34); /* length */
			srb[4] = rnd_below(3);            /* port */
			srb[5] = rnd_below(2);            /* path */
			srb[6] = rnd_below(2);            /* target */
			srb[7] = rnd_below(3) ? 0 : (u8)rnd(); /* lun */
			srb[8] = rnd_below(2) ? 10 : (u8)nasty32(16); /* cdb length */
			srb[9] = (u8)nasty32(20);         /* sense length */
			srb[10] = rnd_below(4);           /* data_in */
			*(u32 *)(srb + 12) = nasty32(4096); /* data transfer length */
			srb[16] = cdbs[rnd_below(ARRAY_SIZE(cdbs))];
		}
		break;
	case SHAPE_NETVSC: /* nvsp_message: type, then the message's fields */
		w[0] = rnd_below(4) ? 100 + rnd_below(40) : nasty32(1);
		for (i = 1; i < min_t(u32, len / 4, 8); ++i)
			w[i] = nasty32(len);
		if (rnd_below(2))
			w[0] = 107; /* SEND_RNDIS_PKT */
		break;
	case SHAPE_IC: /* vmbuspipe_hdr, icmsg_hdr */
		w[0] = rnd_below(4) ? 1 : nasty32(1);
		w[1] = nasty32(len - 8);
		if (len >= 28) {
			p[12] = rnd_below(8);                             /* icmsgtype */
			*(u16 *)(p + 18) = (u16)nasty32(len - 28);        /* icmsgsize */
			p[25] = rnd_below(2) ? 3 : (u8)rnd();             /* icflags: transaction|response */
		}
		break;
	case SHAPE_PIPE: /* synthvid and synthhid: pipe_msg_hdr, then the message's own header */
		w[0] = rnd_below(4) ? 1 /* PIPE_MSG_DATA */ : nasty32(1);
		w[1] = nasty32(len - 8);
		w[2] = rnd_below(4) ? rnd_below(16) : nasty32(1);
		w[3] = nasty32(len - 16);
		break;
	case SHAPE_BALLOON: /* dm_header: type, size, trans_id */
		*(u16 *)p = rnd_below(16);
		*(u16 *)(p + 2) = (u16)nasty32(len);
		break;
	default:
		for (i = 0; i < min_t(u32, len / 4, 8); ++i)
			if (rnd_below(2))
				w[i] = nasty32(len);
		break;
	}
}

struct pkt_buf {
	u8 b[4096];
};

/* Inband packets of every size, shaped for the device, asking for completion or not. */
static u32 send_inband(struct vmbus_channel *ch, struct pkt_buf *pb, u32 count)
{
	u32 i, sent = 0;

	for (i = 0; i < count; ++i) {
		struct vmpacket_descriptor *d = (void *)pb->b;
		u32 payload = rnd_below(8) ? rnd_below(600) : rnd_below(3800);
		u32 len = ALIGN(16 + payload, 8);

		shape_payload(pb->b + 16, len - 16);
		d->type = VM_PKT_DATA_INBAND;
		d->offset8 = 2;
		d->len8 = len / 8;
		d->flags = rnd_below(2) ? VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED : 0;
		d->trans_id = FOREIGN_TRANS_ID;
		if (!ring_put_wait(ch, pb->b, len))
			break;
		++sent;
	}
	return sent;
}

/* GPA-direct packets whose ranges lie: counts, byte counts, offsets, pages outside RAM, and
 * pages inside RAM (our own) that the device may really read or write. */
static u32 send_gpa(struct vmbus_channel *ch, struct pkt_buf *pb, u32 count, u64 own_pfn)
{
	u32 i, sent = 0;

	for (i = 0; i < count; ++i) {
		struct vmdata_gpa_direct *g = (void *)pb->b;
		u32 nranges = rnd_below(4) ? 1 : rnd_below(4);
		u32 claimed = rnd_below(3) ? nranges : nasty32(nranges);
		u32 at = 24, r, payload, data_at;
		u8 *p = pb->b;

		for (r = 0; r < nranges && at + 8 + 8 * 34 < 2048; ++r) {
			struct gpa_range *gr = (void *)(p + at);
			u32 pages = rnd_below(4) ? 1 + rnd_below(4) : rnd_below(33);
			u32 k;

			gr->byte_count = rnd_below(2) ? pages * 4096 : nasty32(pages * 4096);
			gr->byte_offset = rnd_below(2) ? 0 : nasty32(4096);
			for (k = 0; k < pages; ++k)
				gr->pfn_array[k] = rnd_below(3) ? own_pfn : bad_pfns[rnd_below(ARRAY_SIZE(bad_pfns))];
			at += 8 + 8 * pages;
		}
		data_at = at; /* ranges are whole 8-byte words: the payload starts aligned */
		payload = rnd_below(2) ? 64 : rnd_below(512);
		shape_payload(p + at, payload);
		at = ALIGN(at + payload, 8);
		g->d.type = VM_PKT_DATA_USING_GPA_DIRECT;
		g->d.offset8 = rnd_below(4) ? data_at / 8 : (u16)nasty32(at / 8);
		g->d.len8 = at / 8;
		g->d.flags = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED;
		g->d.trans_id = FOREIGN_TRANS_ID;
		g->reserved = 0;
		g->range_cnt = claimed;
		if (!ring_put_wait(ch, p, at))
			break;
		++sent;
	}
	return sent;
}

/* Packets whose descriptor lies about itself: type, payload offset, flags, and with
 * `framing` its length too (longer than what was written, shorter than a descriptor). A
 * length that lies breaks the ring's framing: the VMM can only stop using the channel, and the
 * guest driver that has it open would wait forever for its requests; so only on our own. */
static u32 send_header_lies(struct vmbus_channel *ch, struct pkt_buf *pb, u32 count, bool framing)
{
	static const u16 types[] = {0, 1, 5, 6, 7, 8, 9, 10, 11, 12, 0x7fff, 0xffff};
	u32 i, sent = 0;

	for (i = 0; i < count; ++i) {
		struct vmpacket_descriptor *d = (void *)pb->b;
		u32 len = 16 + 8 * rnd_below(40);

		shape_payload(pb->b + 16, len - 16);
		d->type = types[rnd_below(ARRAY_SIZE(types))];
		d->offset8 = (u16)(rnd_below(2) ? rnd_below(4) : nasty32(len / 8));
		d->len8 = len / 8;
		if (framing && rnd_below(2))
			d->len8 = (u16)(rnd_below(2) ? len / 8 + 1 + rnd_below(64) : nasty32(len / 8));
		d->flags = (u16)rnd();
		d->trans_id = rnd_below(2) ? FOREIGN_TRANS_ID : 0;
		if (!ring_put_wait(ch, pb->b, len))
			break;
		++sent;
	}
	return sent;
}

/* Waits until the VMM has read everything we wrote (or gives up after `ms`). */
static bool ring_drained(struct vmbus_channel *ch, u32 ms)
{
	u32 waited;

	for (waited = 0; waited < ms; waited += 10) {
		if (READ_ONCE(ch->outbound.ring_buffer->read_index) ==
		    READ_ONCE(ch->outbound.ring_buffer->write_index))
			return true;
		msleep(10);
	}
	return false;
}

/* The page GPA-direct packets name is never freed: the device may still be reading or
 * writing it for requests whose completions go to the device's own driver (or nowhere), long
 * after the attack returned. One page per attack is what a hostile guest pays for this. */
static void packet_attacks(struct vmbus_channel *ch, const char *mode)
{
	struct pkt_buf *pb = kmalloc(sizeof(*pb), GFP_KERNEL);
	struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	u32 a, b, c;

	if (!pb || !page) {
		LOG("mode=%s error=nomem", mode);
		kfree(pb);
		return;
	}
	a = send_inband(ch, pb, N(1500));
	b = send_gpa(ch, pb, N(600), page_to_pfn(page));
	c = send_header_lies(ch, pb, N(300), !strcmp(mode, "own"));
	LOG("mode=%s relid=%u inband=%u gpa=%u lies=%u drained=%d", mode, ch->offermsg.child_relid, a, b, c,
	    ring_drained(ch, 3000));
	kfree(pb);
}

/* -- live: the device's own driver keeps its channel open ----------------------------- */
static struct hv_driver hostile_driver;

static int attack_live(void)
{
	struct device *dev;
	struct hv_device *hv;

	if (!hostile_driver.driver.bus) {
		LOG("error=not-registered");
		return -EINVAL;
	}
	dev = bus_find_device_by_name(hostile_driver.driver.bus, NULL, device);
	if (!dev) {
		LOG("error=no-device device=%s", device);
		return -ENODEV;
	}
	hv = container_of(dev, struct hv_device, device);
	if (!dev->driver || !hv->channel || hv->channel->state != CHANNEL_OPENED_STATE) {
		LOG("error=not-open device=%s", device);
		put_device(dev);
		return -ENODEV;
	}
	packet_attacks(hv->channel, "live");
	put_device(dev);
	return 0;
}

/* -- own: the device bound to us -------------------------------------------------------- */
static void drain_cb(void *context)
{
	struct vmbus_channel *ch = context;
	struct vmpacket_descriptor *desc;

	foreach_vmbus_pkt(desc, ch)
		;
	hv_pkt_iter_close(ch);
}
static void ignore_cb(void *context) {}

#define OWN_RING (4 * PAGE_SIZE)

static int own_open(struct vmbus_channel *ch, void (*cb)(void *))
{
	int ret = vmbus_open(ch, OWN_RING, OWN_RING, NULL, 0, cb, ch);

	if (ret)
		LOG("open=%d", ret);
	return ret;
}

struct bell_ctx {
	struct vmbus_channel *ch;
	u64 rung;
};
static int bell_thread(void *data)
{
	struct bell_ctx *b = data;

	while (!kthread_should_stop()) {
		vmbus_set_event(b->ch);
		raw_hypercall(HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, b->ch->sig_event, 0);
		++b->rung;
		if ((b->rung & 63) == 0)
			cond_resched();
	}
	return 0;
}

static void own_ring_lies(struct vmbus_channel *ch)
{
	u32 variant, done = 0;

	for (variant = 0; variant < 7; ++variant) {
		struct hv_ring_buffer *out, *in;
		u32 dsize;
		u8 pkt[64];

		if (own_open(ch, ignore_cb))
			continue;
		out = ch->outbound.ring_buffer;
		in = ch->inbound.ring_buffer;
		dsize = ch->outbound.ring_datasize;
		/* one well-formed packet first, so that the device has something to answer */
		shape_payload(pkt + 16, sizeof(pkt) - 16);
		((struct vmpacket_descriptor *)pkt)->type = VM_PKT_DATA_INBAND;
		((struct vmpacket_descriptor *)pkt)->offset8 = 2;
		((struct vmpacket_descriptor *)pkt)->len8 = sizeof(pkt) / 8;
		((struct vmpacket_descriptor *)pkt)->flags = 1;
		((struct vmpacket_descriptor *)pkt)->trans_id = FOREIGN_TRANS_ID;
		ring_put(ch, pkt, sizeof(pkt));
		switch (variant) {
		case 0: WRITE_ONCE(out->write_index, dsize + 8); break;              /* beyond the ring */
		case 1: WRITE_ONCE(out->write_index, READ_ONCE(out->write_index) + 3); break; /* unaligned */
		case 2: WRITE_ONCE(out->write_index, 0xfffffff8); break;
		case 3: WRITE_ONCE(in->read_index, dsize + 4096); break;             /* host->guest ring */
		case 4: WRITE_ONCE(in->read_index, 5); WRITE_ONCE(in->pending_send_sz, 0xffffffff); break;
		case 5: WRITE_ONCE(out->pending_send_sz, dsize * 2); WRITE_ONCE(out->interrupt_mask, 0xffffffff);
			WRITE_ONCE(out->feature_bits.value, 0xffffffff); break;
		case 6: WRITE_ONCE(out->read_index, dsize - 8); break;  /* the host's own index */
		}
		virt_mb();
		vmbus_set_event(ch);
		ring_put(ch, pkt, sizeof(pkt)); /* refused by our own checks when indices are bad */
		vmbus_set_event(ch);
		msleep(100);
		vmbus_close(ch);
		++done;
	}
	LOG("mode=own step=ring-lies variants=%u", done);
}

static void own_open_close_loop(struct vmbus_channel *ch)
{
	struct bell_ctx b = {.ch = ch};
	struct task_struct *t;
	u32 i, opened = 0, n = N(100);
	int cpu = num_online_cpus() > 1 ? (smp_processor_id() + 1) % num_online_cpus() : 0;

	t = kthread_create(bell_thread, &b, "enl-hostile-bell");
	if (IS_ERR(t)) {
		LOG("mode=own step=open-close error=kthread");
		return;
	}
	kthread_bind(t, cpu);
	wake_up_process(t);
	for (i = 0; i < n; ++i) {
		if (own_open(ch, drain_cb) == 0) {
			++opened;
			if (i & 1) {
				u8 pkt[48] = {};

				((struct vmpacket_descriptor *)pkt)->type = VM_PKT_DATA_INBAND;
				((struct vmpacket_descriptor *)pkt)->offset8 = 2;
				((struct vmpacket_descriptor *)pkt)->len8 = sizeof(pkt) / 8;
				shape_payload(pkt + 16, sizeof(pkt) - 16);
				ring_put(ch, pkt, sizeof(pkt));
			}
			vmbus_close(ch);
		}
	}
	kthread_stop(t);
	LOG("mode=own step=open-close loops=%u opened=%u doorbells=%llu", n, opened, b.rung);
}

/* OPENCHANNEL sent by hand for a channel the guest's VMBus believes closed. */
static void own_raw_opens(struct vmbus_channel *ch)
{
	struct vmbus_gpadl gpadl = {};
	void *buf = vzalloc(4 * PAGE_SIZE);
	u32 i, offsets[] = {0, 4, 5, 0xffffffff, 0x80000000, 2};
	int ret;

	if (!buf)
		return;
	ret = vmbus_establish_gpadl(ch, buf, 4 * PAGE_SIZE, &gpadl);
	if (ret) {
		LOG("mode=own step=raw-open gpadl=%d", ret);
		vfree(buf);
		return;
	}
	for (i = 0; i < ARRAY_SIZE(offsets); ++i) {
		struct vmbus_channel_open_channel m = {};
		struct vmbus_channel_close_channel c = {};

		m.header.msgtype = CHANNELMSG_OPENCHANNEL;
		m.child_relid = ch->offermsg.child_relid;
		m.openid = 0x4000 + i;
		m.ringbuffer_gpadlhandle = gpadl.gpadl_handle;
		m.downstream_ringbuffer_pageoffset = offsets[i];
		m.target_vp = i == 4 ? 4096 : 0;
		rnd_fill(m.userdata, sizeof(m.userdata));
		post(&m, sizeof(m));
		post(&m, sizeof(m)); /* twice: "not closed" or answered once the first completes */
		msleep(50);
		c.header.msgtype = CHANNELMSG_CLOSECHANNEL;
		c.child_relid = ch->offermsg.child_relid;
		post(&c, sizeof(c));
		msleep(50);
	}
	/* The guest's own teardown waits for the VMM's answer: it comes once the channel that a
	 * valid raw open started has closed. */
	ret = vmbus_teardown_gpadl(ch, &gpadl);
	vfree(buf);
	LOG("mode=own step=raw-open offsets=%zu teardown=%d", ARRAY_SIZE(offsets), ret);
}

/* The ring's GPADL torn down while the channel is open: the VMM must stop using the pages
 * (closing the channel) before it answers. */
static void own_teardown_in_use(struct vmbus_channel *ch)
{
	u16 st;

	if (own_open(ch, ignore_cb))
		return;
	st = gpadl_teardown(ch->offermsg.child_relid, ch->ringbuffer_gpadlhandle.gpadl_handle);
	msleep(1000);
	/* Our VMBus would tear the GPADL down again and wait forever for an answer to a handle
	 * the VMM no longer knows: skip that, the pages are released already. */
	ch->ringbuffer_gpadlhandle.gpadl_handle = 0;
	/* Nor does it know when the VMM let go of the ring's pages (the answer it waited for is
	 * not ours to see): leak them rather than free pages the VMM may still write, which would
	 * corrupt this guest, not test the VMM. */
	ch->ringbuffer_page = NULL;
	vmbus_close(ch);
	LOG("mode=own step=teardown-in-use status=%u", st);
}

static void __noreturn triple_fault(void);

static int hostile_probe(struct hv_device *hv, const struct hv_vmbus_device_id *id)
{
	struct vmbus_channel *ch = hv->channel;

	LOG("mode=own probe relid=%u", ch->offermsg.child_relid);
	if (own_open(ch, drain_cb) == 0) {
		packet_attacks(ch, "own");
		vmbus_close(ch);
	}
	own_ring_lies(ch);
	own_open_close_loop(ch);
	own_raw_opens(ch);
	own_teardown_in_use(ch);
	LOG("mode=own done relid=%u", ch->offermsg.child_relid);
	return 0;
}

static int hostile_remove(struct hv_device *hv)
{
	return 0;
}

static const struct hv_vmbus_device_id no_ids[] = {{}};

static struct hv_driver hostile_driver = {
	.name = "enl_hostile",
	.id_table = no_ids,
	.probe = hostile_probe,
	.remove = hostile_remove,
};

static int __init hostile_init(void)
{
	int ret = 0;

	rng_state = seed ? seed : 1;
	post_page = (void *)get_zeroed_page(GFP_KERNEL);
	if (!post_page)
		return -ENOMEM;
	ret = vmbus_driver_register(&hostile_driver);
	if (ret) {
		free_page((unsigned long)post_page);
		return ret;
	}
	LOG("start seed=%lx vmbus=%u.%u", seed, vmbus_proto_version >> 16, vmbus_proto_version & 0xffff);
	if (!strcmp(attack, "messages"))
		ret = attack_messages();
	else if (!strcmp(attack, "gpadls"))
		ret = attack_gpadls();
	else if (!strcmp(attack, "doorbells"))
		ret = attack_doorbells();
	else if (!strcmp(attack, "hypercalls"))
		ret = attack_hypercalls();
	else if (!strcmp(attack, "flood"))
		ret = attack_flood();
	else if (!strcmp(attack, "live"))
		ret = attack_live();
	else if (!strcmp(attack, "triple"))
		triple_fault();
	else if (strcmp(attack, "own"))
		LOG("error=unknown-attack");
	/* "own" waits for the test to bind a device to the driver. */
	LOG("end ret=%d", ret);
	return 0;
}

/* The guest shuts its own CPU down (an exception with an empty IDT: #UD, then #GP, then #DF
 * cannot be delivered): the test checks that the VMM reports it and that the test host's
 * trace of KVM's shutdown exit shows where the guest was. Never returns. */
static noinline void __noreturn triple_fault(void)
{
	struct desc_ptr empty = { .size = 0, .address = 0 };

	LOG("triple-fault rip=%px", triple_fault);
	local_irq_disable();
	native_load_idt(&empty);
	asm volatile("ud2");
	unreachable();
}

static void __exit hostile_exit(void)
{
	vmbus_driver_unregister(&hostile_driver);
	free_page((unsigned long)post_page);
}

module_init(hostile_init);
module_exit(hostile_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Enlighten's hostile guest: attacks on the VMM for its end-to-end tests");
