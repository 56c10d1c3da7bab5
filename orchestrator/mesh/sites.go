package mesh

import (
	"net/netip"
	"sort"

	"github.com/cframe/cframe/bus"
)

// Site is one network and its gateways: the edges that share a site name
// (an edge without one is a site of its own).
type Site struct {
	Name string
	// Gateways are the site's edges, sorted by name.
	Gateways []bus.Edge
}

// Sites groups the edge set by site.
func Sites(set map[string]bus.Edge) map[string]*Site {
	out := map[string]*Site{}
	for _, e := range set {
		s := out[e.SiteName()]
		if s == nil {
			s = &Site{Name: e.SiteName()}
			out[s.Name] = s
		}
		s.Gateways = append(s.Gateways, e)
	}
	for _, s := range out {
		sort.Slice(s.Gateways, func(i, j int) bool { return s.Gateways[i].Name < s.Gateways[j].Name })
	}
	return out
}

// Gateway returns the site's gateway called name.
func (s *Site) Gateway(name string) (bus.Edge, bool) {
	for _, g := range s.Gateways {
		if g.Name == name {
			return g, true
		}
	}
	return bus.Edge{}, false
}

// Explicit reports whether the site was named (by the edges' "site"
// field), which is what gives it elections, claims and a VIP.
func (s *Site) Explicit() bool { return s.Gateways[0].Site != "" }

// VIP is the site's virtual IP (the gateways agree on it), or invalid.
func (s *Site) VIP() netip.Addr { return s.Gateways[0].VIP }

// VIP6 is the site's IPv6 virtual IP, or invalid.
func (s *Site) VIP6() netip.Addr { return s.Gateways[0].VIP6 }

// VIPs are the site's virtual IPs, IPv4 first (none, one or one per
// family).
func (s *Site) VIPs() []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{s.VIP(), s.VIP6()} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// Preferred is the gateway a site starts with when no claim is known: the
// highest priority, then the first name.
func (s *Site) Preferred() bus.Edge {
	best := s.Gateways[0]
	for _, g := range s.Gateways[1:] {
		if g.Priority > best.Priority {
			best = g
		}
	}
	return best
}

// Active is the gateway that carries the site's traffic given the claim in
// force for it (the zero Claim when none is known): the claimed gateway
// while it is one of the site's, else the preferred one. Every edge and the
// controller compute it the same way from the same inputs.
func (s *Site) Active(c bus.Claim) bus.Edge {
	if g, ok := s.Gateway(c.Gateway); ok && c.Site == s.Name {
		return g
	}
	return s.Preferred()
}

// LinkLocal is an edge's IPv6 link-local address on its tunnel device:
// fe80::/64 with the modified EUI-64 interface identifier of its VTEP MAC.
// Every edge derives every other edge's, so probes and HA messages reach one
// particular gateway through the tunnel without any address to allocate,
// and it can never collide with an IPv4 network of the mesh or a cloud's
// link-local services (169.254.0.0/16).
func LinkLocal(name string) netip.Addr {
	m := VTEPMAC(name)
	return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80,
		8: m[0] ^ 0x02, 9: m[1], 10: m[2], 11: 0xff, 12: 0xfe, 13: m[3], 14: m[4], 15: m[5]})
}
