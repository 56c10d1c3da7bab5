package topo

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// Interface names used by the VPC topology, the same in every site.
const (
	// EdgeWAN is the edge's underlay interface (toward the internet router).
	EdgeWAN = "wan0"
	// EdgeLAN is the edge's interface into its VPC.
	EdgeLAN = "lan0"
	// EdgeExtra is the edge's interface toward the extra network (pod range).
	EdgeExtra = "pod0"
	// HostIf is the only interface of a host or extra host.
	HostIf = "eth0"
)

// VPC describes one network to build: an edge gateway and a host inside CIDR.
type VPC struct {
	// Name is a short role name ("vpc1"); namespaces are
	// "<prefix>-<name>-edge", "-host" and "-pod".
	Name     string
	CIDR     netip.Prefix
	EdgeAddr netip.Addr
	HostAddr netip.Addr
	// NoRouteBack leaves the VPC's route table without routes to the other
	// VPCs, like a cloud route table that cannot point at the edge: only
	// masquerading edges make such a VPC reachable.
	NoRouteBack bool
	// Extra optionally puts a second network behind the edge (the k8s pod
	// range case) with one host in it.
	Extra *Extra
	// CIDR6, EdgeAddr6 and HostAddr6 optionally give the VPC an IPv6 block
	// (dual stack, the plain shape only): the edge's LAN interface and the
	// host hold the addresses beside their IPv4 ones, and the host routes
	// the other VPCs' IPv6 blocks via the edge.
	CIDR6                netip.Prefix
	EdgeAddr6, HostAddr6 netip.Addr
	// IPv6Underlay gives the edge an IPv6 public address too (Site.Public6;
	// the plain shape only), beside its IPv4 one.
	IPv6Underlay bool
}

// Extra is a further network behind an edge, on its own veth.
type Extra struct {
	CIDR     netip.Prefix
	EdgeAddr netip.Addr
	HostAddr netip.Addr
}

// Walkthrough returns the three VPCs of the reference walkthrough.
func Walkthrough() []VPC {
	return []VPC{
		{Name: "vpc1", CIDR: netip.MustParsePrefix("172.18.0.0/16"),
			EdgeAddr: netip.MustParseAddr("172.18.171.245"), HostAddr: netip.MustParseAddr("172.18.171.247")},
		{Name: "vpc2", CIDR: netip.MustParsePrefix("172.31.0.0/16"),
			EdgeAddr: netip.MustParseAddr("172.31.185.158"), HostAddr: netip.MustParseAddr("172.31.185.159")},
		{Name: "vpc3", CIDR: netip.MustParsePrefix("172.20.0.0/16"),
			EdgeAddr: netip.MustParseAddr("172.20.0.9"), HostAddr: netip.MustParseAddr("172.20.0.13")},
	}
}

// DualStack returns the walkthrough's VPCs, each with an IPv6 block of
// the documentation range (2001:db8:18::/48 for 172.18.0.0/16, and so on)
// whose edge and host addresses end like their IPv4 ones.
func DualStack() []VPC {
	vpcs := Walkthrough()
	for i, six := range []struct{ cidr, edge, host string }{
		{"2001:db8:18::/48", "2001:db8:18::245", "2001:db8:18::247"},
		{"2001:db8:31::/48", "2001:db8:31::158", "2001:db8:31::159"},
		{"2001:db8:20::/48", "2001:db8:20::9", "2001:db8:20::13"},
	} {
		vpcs[i].CIDR6 = netip.MustParsePrefix(six.cidr)
		vpcs[i].EdgeAddr6, vpcs[i].HostAddr6 = netip.MustParseAddr(six.edge), netip.MustParseAddr(six.host)
	}
	return vpcs
}

// Topology is an "internet" router namespace plus one Site per VPC, all
// in one shape: Build's (edges with two NICs) or BuildCloud's (see cloud.go).
type Topology struct {
	Net *Net
	// Router is the namespace of the underlay router.
	Router string

	cloud bool
	mu    sync.Mutex
	sites []*Site
	// extraGateways counts the gateways MakeHA added (ha.go).
	extraGateways int
}

// Site is one built VPC: its namespaces and underlay addressing.
type Site struct {
	VPC
	// Index is the site's position in the topology (0 for the first).
	Index int
	// Edge, Host and ExtraHost are namespace names (ExtraHost is empty
	// without Extra).
	Edge, Host, ExtraHost string
	// EdgeIf is the edge's underlay interface: EdgeWAN, or in the cloud
	// shape its only NIC (HostIf), which is its LAN interface too.
	EdgeIf string
	// Public6, with IPv6Underlay, is the edge's IPv6 public address with its
	// /64, 2001:db8:ffNN::10/64 for site NN (hex), the router being ::1.
	Public6 netip.Prefix
	// Public is the edge's public address with its /24, e.g.
	// 198.51.100.10/24: an address of the edge itself, or in the cloud
	// shape its EIP, held by the VPC router and mapped 1:1 onto EdgeAddr.
	Public netip.Prefix
	// Gateway is the router's address in Public's /24.
	Gateway netip.Addr
	// RouterIf is the router's interface toward this site.
	RouterIf string
	// RouteTable is the namespace whose routes stand in for the VPC's
	// route table (the walkthrough's step 5): the host's, or in the cloud
	// shape the VPC router's.
	RouteTable string
	// The cloud shape only (see cloud.go): VPCRouter is the VPC router's
	// namespace, LANGateway its address in CIDR (every host's and the
	// edge's default gateway) and SNAT the public address the rest of the
	// VPC leaves by.
	VPCRouter        string
	LANGateway, SNAT netip.Addr
}

// Underlay returns the edge's public (underlay) address: the address the
// other edges reach it at.
func (s *Site) Underlay() netip.Addr { return s.Public.Addr() }

// Underlay6 returns the edge's IPv6 public address (invalid without
// IPv6Underlay).
func (s *Site) Underlay6() netip.Addr { return s.Public6.Addr() }

// CIDRs returns every network behind the site's edge, primary first and
// the IPv6 block, if any, last.
func (s *Site) CIDRs() []netip.Prefix {
	out := []netip.Prefix{s.CIDR}
	if s.Extra != nil {
		out = append(out, s.Extra.CIDR)
	}
	if s.CIDR6.IsValid() {
		out = append(out, s.CIDR6)
	}
	return out
}

// underlayNet returns the /24 of site i: the three TEST-NETs first, then
// /24s of the benchmarking range 198.18.0.0/15.
func underlayNet(i int) (netip.Prefix, error) {
	switch {
	case i == 0:
		return netip.MustParsePrefix("198.51.100.0/24"), nil
	case i == 1:
		return netip.MustParsePrefix("203.0.113.0/24"), nil
	case i == 2:
		return netip.MustParsePrefix("192.0.2.0/24"), nil
	case i < 3+512:
		j := i - 3
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(j/256), byte(j % 256), 0}), 24), nil
	}
	return netip.Prefix{}, fmt.Errorf("topo: too many sites (%d)", i+1)
}

// Build creates the router namespace and one site per VPC on n: each edge
// has a WAN interface holding its public address and a LAN interface, and
// each host routes the other VPCs via its edge.
func Build(n *Net, vpcs ...VPC) (*Topology, error) { return build(n, false, vpcs) }

func build(n *Net, cloud bool, vpcs []VPC) (*Topology, error) {
	r, err := n.NS("inet")
	if err != nil {
		return nil, err
	}
	if err := forwarding(n, r); err != nil {
		return nil, err
	}
	t := &Topology{Net: n, Router: r, cloud: cloud}
	for _, v := range vpcs {
		if _, err := t.AddVPC(v); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Sites returns the built sites in the order they were added.
func (t *Topology) Sites() []*Site {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Site(nil), t.sites...)
}

// Site returns the site named name, or nil.
func (t *Topology) Site(name string) *Site {
	for _, s := range t.Sites() {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// AddVPC builds one more site, in the topology's shape, and adds routes to
// its networks to the route tables of the existing sites (the cloud route
// tables' part), so a VPC can join while traffic between the others keeps
// running.
func (t *Topology) AddVPC(v VPC) (*Site, error) {
	if v.Name == "" || !v.CIDR.IsValid() || !v.CIDR.Contains(v.EdgeAddr) || !v.CIDR.Contains(v.HostAddr) {
		return nil, fmt.Errorf("topo: bad VPC %+v", v)
	}
	if v.Extra != nil && (!v.Extra.CIDR.Contains(v.Extra.EdgeAddr) || !v.Extra.CIDR.Contains(v.Extra.HostAddr)) {
		return nil, fmt.Errorf("topo: bad extra network %+v", *v.Extra)
	}
	if v.IPv6Underlay && t.cloud {
		return nil, fmt.Errorf("topo: an IPv6 underlay in the plain shape only")
	}
	if v.CIDR6.IsValid() && (t.cloud || !v.CIDR6.Addr().Is6() || !v.CIDR6.Contains(v.EdgeAddr6) || !v.CIDR6.Contains(v.HostAddr6)) {
		return nil, fmt.Errorf("topo: bad IPv6 block %s (edge %s, host %s; the plain shape only)", v.CIDR6, v.EdgeAddr6, v.HostAddr6)
	}
	t.mu.Lock()
	idx := len(t.sites)
	for _, s := range t.sites {
		if s.Name == v.Name {
			t.mu.Unlock()
			return nil, fmt.Errorf("topo: VPC %s exists", v.Name)
		}
	}
	t.mu.Unlock()

	under, err := underlayNet(idx)
	if err != nil {
		return nil, err
	}
	base := under.Addr().As4()
	gw, pub := base, base
	gw[3], pub[3] = 1, 10
	s := &Site{
		VPC:      v,
		Index:    idx,
		Public:   netip.PrefixFrom(netip.AddrFrom4(pub), 24),
		Gateway:  netip.AddrFrom4(gw),
		RouterIf: fmt.Sprintf("s%d", idx),
	}
	n := t.Net
	if s.Edge, err = n.NS(v.Name + "-edge"); err != nil {
		return nil, err
	}
	if s.Host, err = n.NS(v.Name + "-host"); err != nil {
		return nil, err
	}
	if t.cloud {
		err = t.wireCloud(s)
	} else {
		err = t.wirePlain(s)
	}
	if err != nil {
		return nil, err
	}
	if v.Extra != nil {
		if s.ExtraHost, err = n.NS(v.Name + "-pod"); err != nil {
			return nil, err
		}
		if err := n.Veth(End{NS: s.Edge, Name: EdgeExtra, Addr: netip.PrefixFrom(v.Extra.EdgeAddr, v.Extra.CIDR.Bits())},
			End{NS: s.ExtraHost, Name: HostIf, Addr: netip.PrefixFrom(v.Extra.HostAddr, v.Extra.CIDR.Bits())}); err != nil {
			return nil, err
		}
		// The pod network's only way out is its node: a default route.
		if _, err := n.Exec(s.ExtraHost, "ip", "route", "add", "default", "via", v.Extra.EdgeAddr.String()); err != nil {
			return nil, err
		}
	}

	t.mu.Lock()
	others := append([]*Site(nil), t.sites...)
	t.sites = append(t.sites, s)
	t.mu.Unlock()

	var errs []error
	for _, o := range others {
		errs = append(errs, t.routeVia(s, o), t.routeVia(o, s))
	}
	return s, errors.Join(errs...)
}

// wirePlain connects s's edge to the router by its WAN interface (holding
// the public address) and its host by its LAN interface; the host's route
// table is its own.
func (t *Topology) wirePlain(s *Site) error {
	n := t.Net
	s.EdgeIf, s.RouteTable = EdgeWAN, s.Host
	if err := n.Veth(End{NS: t.Router, Name: s.RouterIf, Addr: netip.PrefixFrom(s.Gateway, 24)},
		End{NS: s.Edge, Name: EdgeWAN, Addr: s.Public}); err != nil {
		return err
	}
	if _, err := n.Exec(s.Edge, "ip", "route", "add", "default", "via", s.Gateway.String()); err != nil {
		return err
	}
	if s.IPv6Underlay {
		net6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, byte(s.Index)}), 64)
		gw6 := net6.Addr().As16()
		pub6 := gw6
		gw6[15], pub6[15] = 1, 0x10
		s.Public6 = netip.PrefixFrom(netip.AddrFrom16(pub6), 64)
		for _, cmd := range []struct {
			ns   string
			args []string
		}{
			{t.Router, []string{"ip", "-6", "addr", "add", netip.PrefixFrom(netip.AddrFrom16(gw6), 64).String(), "dev", s.RouterIf, "nodad"}},
			{s.Edge, []string{"ip", "-6", "addr", "add", s.Public6.String(), "dev", EdgeWAN, "nodad"}},
			{s.Edge, []string{"ip", "-6", "route", "add", "default", "via", netip.AddrFrom16(gw6).String()}},
		} {
			if _, err := n.Exec(cmd.ns, cmd.args...); err != nil {
				return err
			}
		}
	}
	if err := n.Veth(End{NS: s.Edge, Name: EdgeLAN, Addr: netip.PrefixFrom(s.EdgeAddr, s.CIDR.Bits())},
		End{NS: s.Host, Name: HostIf, Addr: netip.PrefixFrom(s.HostAddr, s.CIDR.Bits())}); err != nil {
		return err
	}
	if !s.CIDR6.IsValid() {
		return nil
	}
	// No duplicate address detection: the addresses work at once.
	for _, a := range []struct {
		ns, dev string
		addr    netip.Addr
	}{{s.Edge, EdgeLAN, s.EdgeAddr6}, {s.Host, HostIf, s.HostAddr6}} {
		if _, err := n.Exec(a.ns, "ip", "-6", "addr", "add", netip.PrefixFrom(a.addr, s.CIDR6.Bits()).String(), "dev", a.dev, "nodad"); err != nil {
			return err
		}
	}
	return nil
}

// forwarding turns on IPv4 and IPv6 forwarding in namespace ns.
func forwarding(n *Net, ns string) error {
	_, err := n.Exec(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return err
}

// routeVia points the route table of host's VPC at host's edge for every
// network of dst, unless host's VPC is marked NoRouteBack.
func (t *Topology) routeVia(host, dst *Site) error {
	if host.NoRouteBack {
		return nil
	}
	for _, c := range dst.CIDRs() {
		via := host.EdgeAddr
		if c.Addr().Is6() {
			if via = host.EdgeAddr6; !via.IsValid() {
				continue // a VPC without IPv6
			}
		}
		if _, err := t.Net.Exec(host.RouteTable, "ip", "route", "replace", c.String(), "via", via.String()); err != nil {
			return err
		}
	}
	return nil
}
