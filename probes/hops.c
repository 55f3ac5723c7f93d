// Hop tracing on tracepoints, for any kernel (no kprobes, no kernel headers).
//
// Attaches to the raw tracepoints
//   net_dev_start_xmit (a device sends: egress),
//   netif_receive_skb  (a device's packet enters the stack: ingress),
//   netif_rx           (a packet is queued to a device's backlog, e.g. from a veth peer),
//   kfree_skb          (a packet is dropped, with the kernel's drop reason).
// Emits one struct hop_event per packet seen on a device whose network namespace
// inode is in the `watched` map, to the ring buffer `events`; events that find the
// buffer full are counted in `lost`.
//
// Struct offsets are macros computed from the running kernel's BTF by the loader
// (dataplane/probes.py): OFF_SKB_*, OFF_DEV_*, OFF_NET_INUM. Nothing here includes a
// kernel header, so the program compiles fast and never sees a wrong layout.

#define SNAPLEN 128
#define MAC_UNSET 0xffff

enum hop_kind { HOP_XMIT = 1, HOP_RECEIVE = 2, HOP_NETIF_RX = 3, HOP_DROP = 4, HOP_FUNC = 5 };

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

BPF_HASH(watched, u32, u8, 4096);
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

#define LOAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

static __always_inline int emit(void *skb, void *dev, u16 kind, u32 reason)
{
    void *net = 0;
    u32 inum = 0;
    if (!dev)
        return 0;
    LOAD(net, dev, OFF_DEV_NET);
    if (!net)
        return 0;
    LOAD(inum, net, OFF_NET_INUM);
    if (!watched.lookup(&inum))
        return 0;

    struct hop_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        u32 zero = 0;
        u64 *count = lost.lookup(&zero);
        if (count)
            (*count)++;
        return 0;
    }
    e->ts = bpf_ktime_get_ns();
    e->skb = (u64)skb;
    e->netns = inum;
    e->kind = kind;
    e->reason = reason;
    LOAD(e->ifindex, dev, OFF_DEV_IFINDEX);
    bpf_probe_read_kernel_str(e->dev, sizeof(e->dev), dev + OFF_DEV_NAME);

    unsigned char *head = 0, *data = 0;
    u16 mac = 0;
    LOAD(head, skb, OFF_SKB_HEAD);
    LOAD(data, skb, OFF_SKB_DATA);
    LOAD(mac, skb, OFF_SKB_MAC_HEADER);
    LOAD(e->len, skb, OFF_SKB_LEN);
    unsigned char *start = (mac == MAC_UNSET) ? data : head + mac;
    u32 len = e->len + (u32)(data - start);  // the frame from its Ethernet header
    e->len = len;
    e->caplen = len < SNAPLEN ? len : SNAPLEN;
    if (bpf_probe_read_kernel(e->data, SNAPLEN, start) < 0)
        bpf_probe_read_kernel(e->data, 64, start);  // near the end of a page
    events.ringbuf_submit(e, 0);
    return 0;
}

static __always_inline void *skb_dev(void *skb)
{
    void *dev = 0;
    LOAD(dev, skb, OFF_SKB_DEV);
    return dev;
}

RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    return emit((void *)ctx->args[0], (void *)ctx->args[1], HOP_XMIT, 0);
}

RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    void *skb = (void *)ctx->args[0];
    return emit(skb, skb_dev(skb), HOP_RECEIVE, 0);
}

RAW_TRACEPOINT_PROBE(netif_rx)
{
    void *skb = (void *)ctx->args[0];
    return emit(skb, skb_dev(skb), HOP_NETIF_RX, 0);
}

RAW_TRACEPOINT_PROBE(kfree_skb)
{
    void *skb = (void *)ctx->args[0];
    return emit(skb, skb_dev(skb), HOP_DROP, (u32)ctx->args[2]);
}
