package topo

import (
	"fmt"
	"net/netip"
	"strings"
)

// Gateway is one gateway host of a VPC: its namespace, its address on the
// VPC's LAN and its underlay.
type Gateway struct {
	NS      string
	LANAddr netip.Addr
	// LANAddr6 is its IPv6 address on the LAN (AddIPv6), or invalid.
	LANAddr6 netip.Addr
	// Public is the gateway's underlay address with its /24, Router the
	// router's address in it, RouterIf the router's interface toward it.
	Public   netip.Prefix
	Router   netip.Addr
	RouterIf string
}

// Underlay returns the gateway's public (underlay) address.
func (g *Gateway) Underlay() netip.Addr { return g.Public.Addr() }

// HA is a VPC made highly available: its gateways (the site's edge first)
// and its host on one LAN segment, a bridge in namespace LAN, with the
// host routing the other VPCs through VIP — the cloud route table pointing
// at the HaVip.
type HA struct {
	Site *Site
	LAN  string
	VIP  netip.Addr
	// VIP6 is the IPv6 VIP (AddIPv6), or invalid.
	VIP6     netip.Addr
	Gateways []*Gateway
}

// haUnderlay numbers the underlay /24s of further gateways from the top of
// underlayNet's range down, clear of the sites' own.
const haUnderlay = 3 + 512

// MakeHA turns site s (built by Build, after all VPCs were added) into a
// VPC with one more gateway per address in standbys: the edge's and the
// host's LAN link is replaced by a bridge they share with the new gateways,
// each of which gets an underlay link to the router like an edge; the
// host's routes to the other VPCs' IPv4 networks go via vip.
func (t *Topology) MakeHA(s *Site, vip netip.Addr, standbys ...netip.Addr) (*HA, error) {
	n := t.Net
	if !s.CIDR.Contains(vip) {
		return nil, fmt.Errorf("topo: vip %s outside %s", vip, s.CIDR)
	}
	h := &HA{Site: s, VIP: vip}
	var err error
	if h.LAN, err = n.NS(s.Name + "-lan"); err != nil {
		return nil, err
	}
	for _, c := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "link", "set", "br0", "up"},
	} {
		if _, err := n.Exec(h.LAN, c...); err != nil {
			return nil, err
		}
	}
	// The edge's LAN link becomes a bridge port (deleting one end of a
	// veth deletes both).
	if _, err := n.Exec(s.Edge, "ip", "link", "del", EdgeLAN); err != nil {
		return nil, err
	}
	bits := s.CIDR.Bits()
	port := func(ns, ifname string, addr netip.Addr, br string) error {
		if err := n.Veth(End{NS: ns, Name: ifname, Addr: netip.PrefixFrom(addr, bits)}, End{NS: h.LAN, Name: br}); err != nil {
			return err
		}
		_, err := n.Exec(h.LAN, "ip", "link", "set", br, "master", "br0")
		return err
	}
	h.Gateways = append(h.Gateways, &Gateway{NS: s.Edge, LANAddr: s.EdgeAddr, Public: s.Public, Router: s.Gateway, RouterIf: s.RouterIf})
	if err := port(s.Edge, EdgeLAN, s.EdgeAddr, "g1"); err != nil {
		return nil, err
	}
	if err := port(s.Host, HostIf, s.HostAddr, "host"); err != nil {
		return nil, err
	}
	for i, a := range standbys {
		t.mu.Lock()
		t.extraGateways++
		k := t.extraGateways
		t.mu.Unlock()
		under, err := underlayNet(haUnderlay - k)
		if err != nil {
			return nil, err
		}
		b := under.Addr().As4()
		gw, pub := b, b
		gw[3], pub[3] = 1, 10
		g := &Gateway{LANAddr: a, Public: netip.PrefixFrom(netip.AddrFrom4(pub), 24), Router: netip.AddrFrom4(gw), RouterIf: fmt.Sprintf("%sg%d", s.RouterIf, i+2)}
		if g.NS, err = n.NS(fmt.Sprintf("%s-edge%d", s.Name, i+2)); err != nil {
			return nil, err
		}
		if err := n.Veth(End{NS: t.Router, Name: g.RouterIf, Addr: netip.PrefixFrom(g.Router, 24)}, End{NS: g.NS, Name: EdgeWAN, Addr: g.Public}); err != nil {
			return nil, err
		}
		if _, err := n.Exec(g.NS, "ip", "route", "add", "default", "via", g.Router.String()); err != nil {
			return nil, err
		}
		if err := port(g.NS, EdgeLAN, a, fmt.Sprintf("g%d", i+2)); err != nil {
			return nil, err
		}
		h.Gateways = append(h.Gateways, g)
	}
	// The route table points at the VIP.
	for _, o := range t.Sites() {
		if o == s {
			continue
		}
		for _, c := range o.CIDRs() {
			if c.Addr().Is6() {
				continue // AddIPv6's
			}
			if _, err := n.Exec(s.Host, "ip", "route", "replace", c.String(), "via", vip.String()); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

// AddIPv6 gives a dual-stack VPC's HA LAN its IPv6 block back (MakeHA
// replaced the links that held it): the site's edge and host their IPv6
// addresses again, each further gateway the one of addrs in its order; the
// host's routes to the other VPCs' IPv6 blocks go via vip6. The bridge
// floods multicast as a cloud's vSwitch does (no MLD snooping).
func (h *HA) AddIPv6(t *Topology, vip6 netip.Addr, addrs ...netip.Addr) error {
	s, n := h.Site, t.Net
	if !s.CIDR6.IsValid() || !s.CIDR6.Contains(vip6) || len(addrs) != len(h.Gateways)-1 {
		return fmt.Errorf("topo: vip6 %s and %d addresses for the IPv6 block %q of a site with %d gateways", vip6, len(addrs), s.CIDR6, len(h.Gateways))
	}
	h.VIP6 = vip6
	if _, err := n.Exec(h.LAN, "ip", "link", "set", "br0", "type", "bridge", "mcast_snooping", "0"); err != nil {
		return err
	}
	add := func(ns, dev string, a netip.Addr) error {
		_, err := n.Exec(ns, "ip", "-6", "addr", "add", netip.PrefixFrom(a, s.CIDR6.Bits()).String(), "dev", dev, "nodad")
		return err
	}
	h.Gateways[0].LANAddr6 = s.EdgeAddr6
	for i, a := range addrs {
		h.Gateways[i+1].LANAddr6 = a
	}
	for _, g := range h.Gateways {
		if err := add(g.NS, EdgeLAN, g.LANAddr6); err != nil {
			return err
		}
	}
	if err := add(s.Host, HostIf, s.HostAddr6); err != nil {
		return err
	}
	for _, o := range t.Sites() {
		if o != s && o.CIDR6.IsValid() {
			if _, err := n.Exec(s.Host, "ip", "-6", "route", "replace", o.CIDR6.String(), "via", vip6.String()); err != nil {
				return err
			}
		}
	}
	return nil
}

// SetDown takes every link of gateway g down (a dead host: nothing in or
// out) or brings them back up.
func (h *HA) SetDown(t *Topology, g *Gateway, down bool) error {
	state := "up"
	if down {
		state = "down"
	}
	for _, l := range []string{EdgeWAN, EdgeLAN} {
		if _, err := t.Net.Exec(g.NS, "ip", "link", "set", l, state); err != nil {
			return err
		}
	}
	if !down {
		// The default route went with the link.
		if _, err := t.Net.Exec(g.NS, "ip", "route", "replace", "default", "via", g.Router.String()); err != nil {
			return err
		}
	}
	return nil
}

// Isolate cuts the VPC's gateways off from each other — on the LAN (the
// bridge's isolated ports still reach the host) and on the underlay (the
// router drops what they send each other) — but from nothing else; or
// undoes it.
func (h *HA) Isolate(t *Topology, on bool) error {
	flag, op := "off", "-D"
	if on {
		flag, op = "on", "-I"
	}
	for i := range h.Gateways {
		if _, err := t.Net.Exec(h.LAN, "bridge", "link", "set", "dev", fmt.Sprintf("g%d", i+1), "isolated", flag); err != nil {
			return err
		}
	}
	for _, a := range h.Gateways {
		for _, b := range h.Gateways {
			if a == b {
				continue
			}
			args := []string{"iptables", op, "FORWARD", "-s", a.Underlay().String(), "-d", b.Underlay().String(), "-j", "DROP"}
			if out, err := t.Net.Exec(t.Router, args...); err != nil && !(op == "-D" && strings.Contains(out, "does a matching rule exist")) {
				return err
			}
		}
	}
	return nil
}

// SiteOf is h's site as gateway g sees it: g's namespace, LAN address and
// underlay in place of the first gateway's, everything else the same — for
// the programs that run one agent per site (scripts/cluster).
func (h *HA) SiteOf(g *Gateway) *Site {
	s := *h.Site
	s.Edge, s.EdgeAddr, s.Public, s.Gateway, s.RouterIf = g.NS, g.LANAddr, g.Public, g.Router, g.RouterIf
	if s.CIDR6.IsValid() {
		s.EdgeAddr6 = g.LANAddr6
	}
	return &s
}

// Holds reports whether gateway g holds address a on its LAN interface.
func (h *HA) Holds(t *Topology, g *Gateway, a netip.Addr) (bool, error) {
	out, err := t.Net.Exec(g.NS, "ip", "-o", "addr", "show", "dev", EdgeLAN)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, " "+a.String()+"/"), nil
}
