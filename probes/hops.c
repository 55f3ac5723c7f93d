// Hop tracing on tracepoints, for any kernel (no kprobes, no kernel headers).
//
// Attaches to the raw tracepoints
//   net_dev_start_xmit (a device sends: egress),
//   netif_receive_skb  (a device's packet enters the stack: ingress),
//   netif_rx           (a packet is queued to a device's backlog, e.g. from a veth peer),
//   kfree_skb          (a packet is dropped, with the kernel's drop reason).
// Emits one struct hop_event per packet seen on a device whose network namespace
// inode is in the `watched` map, to the ring buffer `events`; events that find the
// buffer full are counted in `lost`. The buffer is a BPF ring buffer, or a perf
// buffer where the kernel predates ring buffers (5.8) or the loader asks for one
// (USE_PERF_BUFFER). With config[CFG_ALL] = 0, only packets of the
// flows in `flows` are recorded: matched on the IPv4 header and ports/ICMP id (or on
// one end in `ends`, for NATed packets), a fragment also on its IP id (only the first
// carries ports), inside VXLAN too (on any UDP port), and inside ICMP errors;
// everything else costs one copy and a lookup.
//
// Each tracepoint's program is tp_<tracepoint>, attached by the loader one at a time
// (not bcc's RAW_TRACEPOINT_PROBE, whose autoload gives up on the first tracepoint the
// kernel refuses), so a refused one is reported as skipped and the rest still run.
//
// Struct offsets are macros computed from the running kernel's BTF by the loader
// (dataplane/probes.py): OFF_SKB_*, OFF_DEV_*, OFF_NET_INUM. Nothing here includes a
// kernel header, so the program compiles fast and never sees a wrong layout.

#define SNAPLEN 128
#define TP(event) int tp_##event(struct bpf_raw_tracepoint_args *ctx)
#define MAC_UNSET 0xffff

enum hop_kind {
    HOP_XMIT = 1, HOP_RECEIVE = 2, HOP_NETIF_RX = 3, HOP_DROP = 4,
    HOP_FUNC = 5,  // fn_hops.c
    HOP_FDB_UPDATE = 6, HOP_FDB_ADD = 7,  // fdb.c
};

struct hop_event {
    u64 ts;
    u64 skb;
    u32 netns;
    u32 ifindex;
    u32 len;
    u32 reason;  // the drop reason, or for HOP_FUNC the function's id
    u16 kind;
    u16 caplen;
    char dev[16];
    u8 data[SNAPLEN];
};

// A flow as it appears in a packet: addresses and tag (UDP/TCP port, ICMP echo id)
// in network byte order, so one direction is one key. With by_id set, the tag is the
// IP id of a fragmented datagram, and the key matches its every fragment.
struct flow_key {
    u32 saddr;
    u32 daddr;
    u16 tag;
    u8 proto;
    u8 by_id;
};

// One end of a flow (the receiver's address, the tag, the protocol): a packet whose
// other address NAT rewrote still carries it.
struct end_key {
    u32 addr;
    u16 tag;
    u8 proto;
    u8 pad;
};

enum config_slot { CFG_ALL = 0, CFG_VXLAN_PORT = 1 };  // the port in network byte order

BPF_HASH(watched, u32, u8, 4096);
BPF_HASH(flows, struct flow_key, u8, 65536);
BPF_HASH(ends, struct end_key, u8, 65536);
// Bit t of tags set when some watched flow has tag t (host order): an array lookup
// (inlined by the verifier) turns most packets away before any hash lookup.
BPF_ARRAY(tags, u64, 1024);
BPF_ARRAY(config, u32, 2);
BPF_PERCPU_ARRAY(scratch, struct hop_event, 1);
BPF_PERCPU_ARRAY(lost, u64, 1);
#ifdef USE_PERF_BUFFER
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#endif

#define ETH_LEN 14
#define IP_LEN 20  // only option-less IPv4 headers are matched
#define UDP_LEN 8
#define VXLAN_LEN 8
#define ICMP_LEN 8
#define INNER (ETH_LEN + IP_LEN + UDP_LEN + VXLAN_LEN)  // a VXLAN packet's inner frame

static __always_inline u32 config_of(u32 slot)
{
    u32 *value = config.lookup(&slot);
    return value ? *value : 0;
}

static __always_inline int is_ipv4(u8 *d, const u32 eth)
{
    return d[eth + 12] == 0x08 && d[eth + 13] == 0x00 && d[eth + ETH_LEN] == 0x45;
}

static __always_inline int tag_watched(u8 *d, const u32 at)
{
    u32 tag = ((u32)d[at] << 8) | d[at + 1];
    u32 word = tag >> 6;
    u64 *bits = tags.lookup(&word);
    return bits && (*bits >> (tag & 63)) & 1;
}

// Whether the IPv4 header at d + ip belongs to a watched flow, either way round.
static __always_inline int flow_at(u8 *d, const u32 ip)
{
    struct flow_key k = {};
    const u32 l4 = ip + IP_LEN;
    k.proto = d[ip + 9];
    __builtin_memcpy(&k.saddr, d + ip + 12, 4);
    __builtin_memcpy(&k.daddr, d + ip + 16, 4);
    if ((d[ip + 6] & 0x3f) | d[ip + 7]) {  // a fragment: more fragments, or an offset
        if (tag_watched(d, ip + 4)) {
            __builtin_memcpy(&k.tag, d + ip + 4, 2);
            k.by_id = 1;
            if (flows.lookup(&k))
                return 1;
            k.by_id = 0;
        }
        if ((d[ip + 6] & 0x1f) | d[ip + 7])  // past the first: no L4 header to match
            return 0;
    }
    if (k.proto == 1) {  // ICMP: the echo id
        if (!tag_watched(d, l4 + 4))
            return 0;
        __builtin_memcpy(&k.tag, d + l4 + 4, 2);
    } else if (k.proto == 6 || k.proto == 17) {
        if (tag_watched(d, l4))  // source port
            __builtin_memcpy(&k.tag, d + l4, 2);
        else if (tag_watched(d, l4 + 2))  // destination port
            __builtin_memcpy(&k.tag, d + l4 + 2, 2);
        else
            return 0;
    } else {
        return 0;
    }
    if (flows.lookup(&k))
        return 1;
    struct end_key e = {.addr = k.daddr, .tag = k.tag, .proto = k.proto};
    if (ends.lookup(&e))
        return 1;
    e.addr = k.saddr;
    return ends.lookup(&e) != 0;
}

// The packet, or the one an ICMP error quotes, in a frame starting at d + eth.
static __always_inline int frame_matches(u8 *d, const u32 eth)
{
    const u32 ip = eth + ETH_LEN;
    if (!is_ipv4(d, eth))
        return 0;
    if (flow_at(d, ip))
        return 1;
    u8 type = d[ip + IP_LEN];
    if (d[ip + 9] == 1 && (type == 3 || type == 11) && d[ip + IP_LEN + ICMP_LEN] == 0x45)
        return flow_at(d, ip + IP_LEN + ICMP_LEN);
    return 0;
}

// An ARP packet of a watched pair: its sender and target addresses, proto 0, tag 0.
static __always_inline int arp_watched(u8 *d)
{
    struct flow_key k = {};
    __builtin_memcpy(&k.saddr, d + ETH_LEN + 14, 4);  // sender protocol address
    __builtin_memcpy(&k.daddr, d + ETH_LEN + 24, 4);  // target protocol address
    return flows.lookup(&k) != 0;
}

static __always_inline int watched_flow(u8 *d)
{
    if (d[12] == 0x08 && d[13] == 0x06)
        return arp_watched(d);
    if (frame_matches(d, 0))
        return 1;
    u16 dport = 0;
    __builtin_memcpy(&dport, d + ETH_LEN + IP_LEN + 2, 2);
    // On the VXLAN port, or on any port with a VXLAN header's I flag: a tunnel sent to
    // the wrong port is still this flow's, and the verifier names the port.
    if (is_ipv4(d, 0) && d[ETH_LEN + 9] == 17 &&
        (dport == (u16)config_of(CFG_VXLAN_PORT) || d[ETH_LEN + IP_LEN + UDP_LEN] == 0x08))
        return frame_matches(d, INNER);
    return 0;
}

#define LOAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

// Send an event to user space, counting it in `lost` when the buffer is full.
static __always_inline void output(void *ctx, struct hop_event *e)
{
#ifdef USE_PERF_BUFFER
    int failed = events.perf_submit(ctx, e, sizeof(*e));
#else
    int failed = events.ringbuf_output(e, sizeof(*e), 0);
#endif
    if (failed < 0) {
        u32 zero = 0;
        u64 *count = lost.lookup(&zero);
        if (count)
            (*count)++;
    }
}

static __always_inline int netns_watched(void *dev, u32 *inum)
{
    void *net = 0;
    LOAD(net, dev, OFF_DEV_NET);
    if (!net)
        return 0;
    LOAD(*inum, net, OFF_NET_INUM);
    return watched.lookup(inum) != 0;
}

static __always_inline void *skb_dev(void *skb)
{
    void *dev = 0;
    LOAD(dev, skb, OFF_SKB_DEV);
    return dev;
}

// Where the frame starts: skb->head + skb->mac_header, or skb->data when no MAC
// header was set. The three fields sit within a few bytes of each other, so one read
// of the span that holds them (one helper call, not three) when it is short: every
// packet on a watched path pays this, watched or not.
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define SKB_SPAN_AT MIN2(MIN2(OFF_SKB_HEAD, OFF_SKB_DATA), OFF_SKB_MAC_HEADER)
#define SKB_SPAN_END MAX2(MAX2(OFF_SKB_HEAD, OFF_SKB_DATA) + 8, OFF_SKB_MAC_HEADER + 2)
#define SKB_SPAN_MAX 32

struct frame_at {
    unsigned char *start;
    unsigned char *data;
};

static __always_inline struct frame_at skb_frame(void *skb)
{
    struct frame_at f = {};
    unsigned char *head = 0;
    u16 mac = 0;
    if (SKB_SPAN_END - SKB_SPAN_AT <= SKB_SPAN_MAX) {
        u8 span[SKB_SPAN_MAX] = {};
        bpf_probe_read_kernel(span, SKB_SPAN_END - SKB_SPAN_AT, skb + SKB_SPAN_AT);
        __builtin_memcpy(&head, span + (OFF_SKB_HEAD - SKB_SPAN_AT), 8);
        __builtin_memcpy(&f.data, span + (OFF_SKB_DATA - SKB_SPAN_AT), 8);
        __builtin_memcpy(&mac, span + (OFF_SKB_MAC_HEADER - SKB_SPAN_AT), 2);
    } else {  // no kernel known spreads them further; kept for one that would
        LOAD(head, skb, OFF_SKB_HEAD);
        LOAD(f.data, skb, OFF_SKB_DATA);
        LOAD(mac, skb, OFF_SKB_MAC_HEADER);
    }
    f.start = (mac == MAC_UNSET) ? f.data : head + mac;
    return f;
}

// dev may be 0 for "the skb's": read only when needed, so that recording flows, a
// packet of no watched flow costs as few reads as possible.
static __always_inline int emit(void *ctx, void *skb, void *dev, u16 kind, u32 reason)
{
    u32 inum = 0, zero = 0;
    // Recording everything, the namespace test turns host traffic away first;
    // recording flows, the flow test is the one that turns most packets away.
    u32 all = config_of(CFG_ALL);
    if (all) {
        dev = dev ? dev : skb_dev(skb);
        if (!dev || !netns_watched(dev, &inum))
            return 0;
    }

    struct hop_event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    struct frame_at frame = skb_frame(skb);
    unsigned char *start = frame.start;
    if (bpf_probe_read_kernel(e->data, SNAPLEN, start) < 0) {
        __builtin_memset(e->data, 0, SNAPLEN);  // no stale bytes from the last packet
        bpf_probe_read_kernel(e->data, 64, start);  // near the end of a page
    }
    if (!all) {
        if (!watched_flow(e->data))
            return 0;
        dev = dev ? dev : skb_dev(skb);
        if (!dev || !netns_watched(dev, &inum))
            return 0;
    }

    u32 len = 0;
    LOAD(len, skb, OFF_SKB_LEN);
    len += (u32)(frame.data - start);  // the frame from its Ethernet header
    e->ts = bpf_ktime_get_ns();
    e->skb = (u64)skb;
    e->netns = inum;
    e->kind = kind;
    e->reason = reason;
    e->len = len;
    e->caplen = len < SNAPLEN ? len : SNAPLEN;
    LOAD(e->ifindex, dev, OFF_DEV_IFINDEX);
    bpf_probe_read_kernel_str(e->dev, sizeof(e->dev), dev + OFF_DEV_NAME);
    output(ctx, e);
    return 0;
}

TP(net_dev_start_xmit)
{
    return emit(ctx, (void *)ctx->args[0], (void *)ctx->args[1], HOP_XMIT, 0);
}

TP(netif_receive_skb)
{
    return emit(ctx, (void *)ctx->args[0], 0, HOP_RECEIVE, 0);
}

TP(netif_rx)
{
    // Queued to a backlog, then seen again by netif_receive_skb: a watched flow's
    // trail needs only that, so this hop is recorded when recording everything (the
    // tracer detaches this program otherwise; the check stays for a bare load).
    if (!config_of(CFG_ALL))
        return 0;
    return emit(ctx, (void *)ctx->args[0], 0, HOP_NETIF_RX, 0);
}

TP(kfree_skb)
{
#ifdef KFREE_SKB_NO_REASON  // before Linux 5.17: (skb, location), the kernel refuses args[2]
    return emit(ctx, (void *)ctx->args[0], 0, HOP_DROP, 0);
#else
    return emit(ctx, (void *)ctx->args[0], 0, HOP_DROP, (u32)ctx->args[2]);
#endif
}
