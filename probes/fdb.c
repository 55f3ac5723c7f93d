// Bridge FDB learning, for any kernel (compiled after hops.c, whose maps,
// hop_event, output() and watched-namespace test it uses).
//
// Programs for the raw tracepoints (tp_<name>, attached by the loader)
//   br_fdb_update (a bridge learns, or moves, a MAC address on a port),
//   br_fdb_add    (an FDB entry is added through netlink).
// Emits a hop_event of kind HOP_FDB_UPDATE or HOP_FDB_ADD on the port's device,
// when its namespace is watched: data[0..5] the MAC, data[6..7] the VLAN id.
// OFF_BRPORT_DEV (struct net_bridge_port.dev) comes from BTF, the bridge module's
// when the bridge is a module.

static __always_inline int learned(void *ctx, void *dev, u8 *addr, u16 vid, u16 kind)
{
    u32 inum = 0, zero = 0;
    if (!dev || !netns_watched(dev, &inum))
        return 0;
    struct hop_event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = bpf_ktime_get_ns();
    e->netns = inum;
    e->kind = kind;
    e->caplen = 8;
    bpf_probe_read_kernel(e->data, 6, addr);
    __builtin_memcpy(e->data + 6, &vid, 2);
    LOAD(e->ifindex, dev, OFF_DEV_IFINDEX);
    bpf_probe_read_kernel_str(e->dev, sizeof(e->dev), dev + OFF_DEV_NAME);
    output(ctx, e);
    return 0;
}

TP(br_fdb_update)  // (br, source port, addr, vid, flags)
{
    void *port = (void *)ctx->args[1], *dev = 0;
    if (!port)
        return 0;
    LOAD(dev, port, OFF_BRPORT_DEV);
    return learned(ctx, dev, (u8 *)ctx->args[2], (u16)ctx->args[3], HOP_FDB_UPDATE);
}

TP(br_fdb_add)  // (ndm, dev, addr, vid, nlh_flags)
{
    return learned(ctx, (void *)ctx->args[1], (u8 *)ctx->args[2], (u16)ctx->args[3],
                   HOP_FDB_ADD);
}
