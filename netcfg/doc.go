// Package netcfg makes the kernel match a desired mesh: it reads the tunnel
// devices, FDB and neighbor entries, routes, ip_forward, ipsets and iptables
// chains that cframe owns, computes the difference to a Desired state, and
// applies it through netlink and iptables. It knows nothing about
// controllers, NATS or edge sets; the orchestrator hands it a Desired value
// and gets back the list of changes it made.
//
// # Entry points
//
// New returns a Kernel; Supported tells whether the kernel can create the
// devices of a mode. Then:
//
//   - Kernel.Reconcile reads everything cframe owns (and the foreign state
//     around it), plans and applies. Reconciling twice changes nothing the
//     second time.
//   - Kernel.Update does the same for a change of the peers, reading only
//     the changed peers' objects, and falls back to Reconcile otherwise.
//   - Kernel.Watch reports netlink events that call for a Reconcile.
//   - Kernel.Cleanup removes everything cframe created.
//   - Kernel.TunnelStats reads the traffic counters of cframe's tunnel
//     devices (for the agent's metrics); Result.Kinds counts what a
//     Reconcile or Update changed by kind of object.
//
// Ownership: cframe only ever touches objects it can recognise as its own —
// links whose alias starts with OwnerAlias, routes (IPv4 and IPv6) with
// protocol RouteProtocol, entries on its own links, the iptables and
// ip6tables chains named in chains.go and chains6.go and the ipsets named
// in ipset.go.
//
// Dual stack: CIDRs may be IPv4 or IPv6. An edge with IPv6 CIDRs of its
// own routes its peers' IPv6 CIDRs through the same tunnel (over the IPv4
// underlay) and gets the IPv6 counterparts of the IPv4 objects; an edge
// without has no IPv6 object at all. Everything else is read (to
// report conflicts) but never changed.
//
// # Files
//
// Read kernel.go first: the entry points and the one pipeline behind them,
// read → plan → apply, in a session (session.go) that one call opens and
// closes. The desired state is desired.go (validated in validate.go); what a
// read finds is actual.go; plan.go holds the plan, its make-before-break
// stages and the planner; update.go what Update builds on and the scope of
// its read; watch.go the netlink events.
//
// Each kind of kernel object has one file with its type, its read (one
// function for the full read and an Update's read by key), its plan step
// and its operations (linkAdd, fdbDel, ruleInsert, ...):
//
//   - link.go: the tunnel devices (and Supported, TunnelStats)
//   - fdb.go: the VXLAN FDB entries, one per peer
//   - neigh.go: the permanent neighbors, one per peer, and the neighbor
//     messages of both
//   - neigh6.go: the permanent IPv6 neighbors of the peers' link-local
//     addresses on the tunnel
//   - lladdr.go: the tunnel device's own IPv6 link-local address
//   - vip.go: a site's VIPs on the LAN interface (one per family), with
//     gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6)
//   - route.go: the routes to the peers' networks, and route6.go how
//     the IPv6 ones differ (next hop: the peer's link-local address)
//   - ipset.go: the sets of peer addresses and networks the rules match
//   - chains.go: the iptables chains and rules, chains6.go their
//     ip6tables counterparts, and iptables.go the iptables and ip6tables
//     programs that read and write them
//   - sysctl.go: net.ipv4.ip_forward and, on an edge with IPv6 CIDRs,
//     net.ipv6.conf.all.forwarding
//   - sysfs.go: receive packet steering of the tunnel device
//   - ethtool.go: the ethtool ioctl (for the underlay's GRO state) and the
//     VXLAN device's transmit checksum offload, with the outer UDP
//     checksum the two checksum settings (fast, safe) of Desired.Checksum
//   - underlay.go: the foreign facts the plan takes defaults from — the
//     underlay device and its MTU, the LAN address; underlay6.go what
//     differs over an IPv6 underlay (MTU -70, the tunnel port's filter in
//     ip6tables)
//
// A new kind of object is a new file with those four parts, plus its read
// step in Kernel's pipeline (session.read) and its plan step in newPlan.
package netcfg
