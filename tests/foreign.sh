#!/usr/bin/env bash
# A flannel-style pod network built by hand, not by dataplane: 3 nodes (P-n1..P-n3) of 3 pods
# each (P-n1-web, P-n1-api, P-n1-db, ...), pod bridge podbr, VXLAN device vx42 (VNI 42, UDP
# 4789) on each node's ens4, nodes joined by bridge sw0 in P-net. Usage: foreign.sh P
set -euo pipefail
P=$1
NODES=(1 2 3)
PODS=(web api db)
vtep_mac() { printf '0e:42:00:00:00:%02x' "$1"; }

ip -batch - <<EOF
netns add $P-net
$(for n in "${NODES[@]}"; do echo "netns add $P-n$n"; for p in "${PODS[@]}"; do echo "netns add $P-n$n-$p"; done; done)
EOF

# The underlay: a bridge with a veth per node, the node's end named ens4.
ip -n "$P-net" -batch - <<EOF
link add sw0 type bridge
link set sw0 up
$(for n in "${NODES[@]}"; do
  echo "link add n$n type veth peer name ens4 netns $P-n$n"
  echo "link set n$n master sw0 up"
done)
EOF

for n in "${NODES[@]}"; do
  # What flanneld and the CNI bridge plugin make on node n: podCIDR 10.42.n.0/24.
  ip -n "$P-n$n" -batch - <<EOF
link set lo up
addr add 192.168.77.1$n/24 dev ens4
link set ens4 up
link add podbr mtu 1450 type bridge
addr add 10.42.$n.1/24 dev podbr
link set podbr up
link add vx42 address $(vtep_mac "$n") type vxlan id 42 local 192.168.77.1$n dev ens4 dstport 4789 nolearning
addr add 10.42.$n.0/32 dev vx42
link set vx42 up
$(for m in "${NODES[@]}"; do [ "$m" = "$n" ] && continue
  echo "neigh add 10.42.$m.0 lladdr $(vtep_mac "$m") dev vx42 nud permanent"
  echo "route add 10.42.$m.0/24 via 10.42.$m.0 dev vx42 onlink"
done)
$(for p in "${PODS[@]}"; do
  echo "link add veth-n$n-$p mtu 1450 type veth peer name eth0 mtu 1450 netns $P-n$n-$p"
  echo "link set veth-n$n-$p master podbr up"
done)
EOF
  bridge -n "$P-n$n" -batch - <<EOF
$(for m in "${NODES[@]}"; do [ "$m" = "$n" ] || echo "fdb append $(vtep_mac "$m") dev vx42 dst 192.168.77.1$m"; done)
EOF
  ip netns exec "$P-n$n" sysctl -qw net.ipv4.ip_forward=1
  i=2
  for p in "${PODS[@]}"; do
    ip -n "$P-n$n-$p" -batch - <<EOF
link set lo up
link set eth0 up
addr add 10.42.$n.$i/24 dev eth0
route add default via 10.42.$n.1
EOF
    # ICMP echoes from ping sockets, as verify sends them (a pod sysctl Kubernetes allows)
    ip netns exec "$P-n$n-$p" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
    i=$((i + 1))
  done
done
