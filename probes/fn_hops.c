// Function hops on kprobes, for kernels that have them (compiled after hops.c,
// whose emit() it uses, into the same program and maps).
//
// Each fn_<name> is attached by the loader (dataplane/probes.py) to the kernel
// function <name> when that symbol exists: bridge (br_handle_frame, br_forward,
// br_flood, br_pass_frame_up, br_dev_xmit) and VXLAN (vxlan_xmit, vxlan_xmit_one,
// udp_tunnel_xmit_skb, vxlan_rcv). Emits a hop_event of kind HOP_FUNC whose
// `reason` is FNID_<name>, the function's index in the loader's list.
// Arguments are read from the registers saved in struct pt_regs, at offsets the
// loader takes from BTF (OFF_REGS_ARG1..3): no header is included.

#define ARG(ctx, n) (*(u64 *)((char *)(ctx) + OFF_REGS_ARG##n))

#define FN(name, n)                                             \
    int fn_##name(void *ctx)                                    \
    {                                                           \
        void *skb = (void *)ARG(ctx, n);                        \
        return emit(ctx, skb, 0, HOP_FUNC, FNID_##name);  \
    }

FN(br_forward, 2)           // (to, skb, local_rcv, local_orig)
FN(br_flood, 2)             // (br, skb, pkt_type, local_rcv, local_orig, vid)
FN(br_pass_frame_up, 1)     // (skb, promisc)
FN(br_dev_xmit, 1)          // (skb, dev)
FN(vxlan_xmit, 1)           // (skb, dev)
FN(vxlan_xmit_one, 1)       // (skb, dev, vni, rdst, did_rsc)
FN(udp_tunnel_xmit_skb, 3)  // (rt, sk, skb, ...)
FN(vxlan_rcv, 2)            // (sk, skb)

int fn_br_handle_frame(void *ctx)  // (struct sk_buff **pskb)
{
    void *skb = 0;
    bpf_probe_read_kernel(&skb, sizeof(skb), (void *)ARG(ctx, 1));
    return emit(ctx, skb, 0, HOP_FUNC, FNID_br_handle_frame);
}
