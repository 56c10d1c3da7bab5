package netcfg

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Actual is what Read found in the kernel: every object cframe owns plus
// the foreign state the plan needs to detect conflicts and pick defaults.
// NewPlan looks at nothing else, so tests build it by hand.
type Actual struct {
	// Links are the links with an OwnerAlias alias plus any link that has
	// one of the desired device names (which may be foreign: a conflict).
	Links []Link
	// FDB holds the forwarding entries on the desired VXLAN device (when it
	// is ours).
	FDB []FDBEntry
	// Neighbors holds the permanent IPv4 neighbors on the desired VXLAN
	// device (when it is ours).
	Neighbors []Neighbor
	// Routes are the main-table routes with protocol RouteProtocol.
	Routes []Route
	// ForeignRoutes are the other main-table routes (except default routes)
	// whose destination overlaps a desired peer CIDR.
	ForeignRoutes []Route
	// LANAddr is the host address that lies inside one of the desired
	// LocalCIDRs (discovered only when Desired.LANAddr is invalid).
	LANAddr netip.Addr
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
	// Sets maps each existing ipset cframe owns (SetPeers, SetNets) to
	// its type and members. A set that does not exist has no key.
	Sets map[string]IPSet
	// Chains maps each existing iptables chain cframe owns, and each built-in
	// chain it hooks into, to its rules as "iptables -S" prints them
	// ("-A CHAIN ..."). A chain that does not exist has no key.
	Chains map[Chain][]string
}

// wantRPS reports whether the VXLAN device should steer received packets
// to other CPUs (see sysfs.go).
func (a *Actual) wantRPS() bool {
	return a.UnderlayRxQueues > 0 && a.UnderlayRxQueues < a.CPUs && !a.UnderlayRxOnSender
}

// IPSet is an ipset: its type ("hash:ip", "hash:net") and members, the
// members of a hash:ip set as /32s.
type IPSet struct {
	Type    string
	Members []netip.Prefix
}

// Link is a network device as cframe sees it.
type Link struct {
	Name  string
	Kind  string // netlink kind: "vxlan", "gre", "veth", ...
	Index int    // set by Read; unused by Plan
	Alias string
	MTU   int
	MAC   net.HardwareAddr // nil: don't care (desired) / none (GRE)
	Up    bool
	// VXLAN only.
	VNI      int
	Port     uint16
	Learning bool
	// RPS: received packets are steered to other CPUs after
	// decapsulation (a non-zero rps_cpus, see sysfs.go). Read for the
	// desired VXLAN device only; desired for it when the underlay has
	// fewer receive queues than there are CPUs.
	RPS bool
	// VXLAN and GRE: the underlay source address (invalid: kernel's choice).
	Local netip.Addr
	// GRE only: the peer's underlay address.
	Remote netip.Addr
}

// Owned reports whether the link is cframe's: its alias is exactly
// OwnerAlias or OwnerAlias followed by ":" and a peer name, or it is a
// VXLAN/GRE link still carrying the temporary name cframe creates links
// under (left behind if cframe died while creating it).
func (l Link) Owned() bool {
	return l.Alias == OwnerAlias || strings.HasPrefix(l.Alias, OwnerAlias+":") ||
		strings.HasPrefix(l.Name, tempLinkPrefix) && (l.Kind == "vxlan" || l.Kind == "gre")
}

// String renders the link the way "ip link add" would take it.
func (l Link) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s type %s", l.Name, l.Kind)
	switch l.Kind {
	case "vxlan":
		fmt.Fprintf(&b, " id %d dstport %d", l.VNI, l.Port)
		if l.Local.IsValid() {
			fmt.Fprintf(&b, " local %s", l.Local)
		}
		if l.Learning {
			b.WriteString(" learning")
		} else {
			b.WriteString(" nolearning")
		}
	case "gre":
		if l.Local.IsValid() {
			fmt.Fprintf(&b, " local %s", l.Local)
		}
		fmt.Fprintf(&b, " remote %s ttl %d", l.Remote, greTTL)
	}
	if l.MAC != nil {
		fmt.Fprintf(&b, " address %s", l.MAC)
	}
	fmt.Fprintf(&b, " mtu %d alias %q", l.MTU, l.Alias)
	return b.String()
}

// FDBEntry is a VXLAN forwarding entry: frames for MAC go to Dst:Port.
type FDBEntry struct {
	Device string
	MAC    net.HardwareAddr
	Dst    netip.Addr
	// Port is the remote UDP port; Read reports the device's dstport when
	// the kernel omits it (it does when both are equal).
	Port uint16
}

// String renders the entry the way "bridge fdb add" would take it.
func (e FDBEntry) String() string {
	return fmt.Sprintf("%s dst %s port %d dev %s", e.MAC, e.Dst, e.Port, e.Device)
}

// Neighbor is a permanent IPv4 neighbor entry.
type Neighbor struct {
	Device string
	IP     netip.Addr
	MAC    net.HardwareAddr
}

// Route is an IPv4 main-table route.
type Route struct {
	Dst      netip.Prefix
	Gw       netip.Addr // invalid: directly connected (GRE)
	Device   string
	Src      netip.Addr
	Protocol int
	Metric   int
	OnLink   bool
}

// String renders the route the way "ip route add" would take it.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if r.Gw.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.Device != "" {
		fmt.Fprintf(&b, " dev %s", r.Device)
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	fmt.Fprintf(&b, " proto %s", protoName(r.Protocol))
	return b.String()
}

// protoName names the common route protocols like iproute2 does.
func protoName(p int) string {
	switch p {
	case 2:
		return "kernel"
	case 3:
		return "boot"
	case 4:
		return "static"
	}
	return fmt.Sprint(p)
}

// equal reports whether two routes would be the same kernel route.
func (r Route) equal(o Route) bool {
	return r.Dst == o.Dst && r.Gw == o.Gw && r.Device == o.Device && r.Src == o.Src &&
		r.Protocol == o.Protocol && r.Metric == o.Metric && r.OnLink == o.OnLink
}
