package netcfg

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// actual is what a read found in the kernel: every object cframe owns plus
// the foreign state the plan needs to detect conflicts and pick defaults.
// newPlan looks at nothing else, so tests build it by hand.
type actual struct {
	// Links are the links with an OwnerAlias alias plus any link that has
	// one of the desired device names (which may be foreign: a conflict).
	Links []link
	// FDB holds the forwarding entries on the desired VXLAN device (when it
	// is ours).
	FDB []fdbEntry
	// Neighbors and Neighbors6 hold the permanent IPv4 and IPv6 neighbors
	// on the desired VXLAN device (when it is ours).
	Neighbors, Neighbors6 []neighbor
	// TunnelIPv6 is the IPv6 state of the desired VXLAN device (lladdr.go),
	// VIP the VIP addresses and the LAN interface (vip.go); nil when not
	// read (an Update's read).
	TunnelIPv6 *tunnelIPv6
	VIP        *vipState
	// WireGuard is the desired WireGuard device's configuration (nil: not
	// desired, missing or not cframe's).
	WireGuard *wgState
	// Routes are the main-table routes with protocol RouteProtocol.
	Routes []route
	// ForeignRoutes are the other main-table routes (except default routes)
	// whose destination overlaps a desired peer CIDR.
	ForeignRoutes []route
	// LANAddr is the host address that lies inside one of the desired
	// LocalCIDRs (discovered only when Desired.LANAddr is invalid).
	LANAddr netip.Addr
	// LANAddr6 is the host address that lies inside one of the desired
	// IPv6 LocalCIDRs (route6.go).
	LANAddr6 netip.Addr
	// UnderlayMTU is the MTU of the device holding Desired.LocalAddr, else
	// of the default route's device, else 1500.
	UnderlayMTU int
	// UnderlayRxQueues is the number of active receive queues of that
	// device (0: unknown; read in VXLAN mode only), and CPUs the number of
	// CPUs: fewer queues than CPUs call for receive packet steering.
	UnderlayRxQueues, CPUs int
	// UnderlayRxOnSender: that device receives every packet on the CPU
	// that sent it (a veth without NAPI), so receive work is spread over
	// the senders' CPUs already and steering would only add a hand-off.
	UnderlayRxOnSender bool
	// UnderlaySource maps a peer's underlay address to the source address
	// the kernel would use toward it (GRE mode only).
	UnderlaySource map[netip.Addr]netip.Addr
	// IPForward is the value of net.ipv4.ip_forward.
	IPForward bool
	// IPv6: the host has IPv6 (read only when the mesh has IPv6 CIDRs),
	// and IPForward6 the value of net.ipv6.conf.all.forwarding.
	IPv6, IPForward6 bool
	// Sets maps each existing ipset cframe owns (setPeers, setNets) to its
	// type and members. A set that does not exist has no key.
	Sets map[string]ipset
	// Chains maps each existing iptables chain cframe owns, and each built-in
	// chain it hooks into, to its rules as "iptables -S" prints them
	// ("-A CHAIN ..."). A chain that does not exist has no key.
	Chains map[chain][]string
	// IP6tables: the host has ip6tables, whose chains are in Chains with
	// their tables prefixed by table6.
	IP6tables bool
}

// wantRPS reports whether the VXLAN device should steer received packets
// to other CPUs (see sysfs.go).
func (a *actual) wantRPS() bool {
	return a.UnderlayRxQueues > 0 && a.UnderlayRxQueues < a.CPUs && !a.UnderlayRxOnSender
}

// reading is one read of the kernel in progress: what it reads for, what it
// found so far, and what the objects read first tell those read after.
type reading struct {
	d *Desired
	// keys, when not nil, limits the read to the objects of an Update's
	// scope; the peer-independent facts then come from keys.facts.
	keys *scope
	a    *actual
	// From the links: every link by index, the indexes of cframe's links,
	// and the desired VXLAN device when it exists and is cframe's.
	links  map[int]netlink.Link
	ours   map[int]bool
	tunnel *link
	// From the routes (a full read): the default route's device.
	defaultDev int
	// From the addresses (a full read): the underlay device, and every
	// IPv4 address; with IPv6 CIDRs of its own every IPv6 address too.
	underlay int
	addrs    []netlink.Addr
	addrs6   []netlink.Addr
}

func newReading(d *Desired, keys *scope) *reading {
	r := &reading{d: d, keys: keys, a: &actual{UnderlayMTU: 1500}, links: map[int]netlink.Link{}, ours: map[int]bool{}}
	if keys != nil {
		facts := keys.facts
		r.a = &facts
	}
	r.a.Chains, r.a.Sets = map[chain][]string{}, map[string]ipset{}
	return r
}

// name returns the name of the link with index i ("" if there is none).
func (r *reading) name(i int) string {
	if l, ok := r.links[i]; ok {
		return l.Attrs().Name
	}
	return ""
}
