package netcfg

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// IPv6 routes: a peer's IPv6 CIDRs are routed like its IPv4 ones (route.go),
// in the IPv6 main table, with three differences.
//
//   - The next hop is the peer's link-local address on the tunnel
//     (Peer.LinkLocal, derived from its VTEP MAC), which already has its
//     permanent IPv6 neighbor (neigh6.go) beside the peer's FDB entry: an
//     IPv6 route needs nothing the tunnel does not hold already. The
//     alternatives were worse: an IPv4 next hop through RTA_VIA ties IPv6
//     to the IPv4 next hop's neighbor entry and needs Linux 5.2, and a
//     global IPv6 address per edge on the tunnel would be one more address
//     to allocate and to keep off every VPC's networks. A link-local next
//     hop is on-link by definition, so the route carries no onlink flag.
//   - The metric is 1024: the kernel stores an IPv6 route added without
//     one at 1024 (IP6_RT_PRIO_USER), so cframe asks for that explicitly
//     and compares against what the kernel holds.
//   - The source is the LAN's IPv6 address (actual.LANAddr6), the host
//     address inside one of the edge's own IPv6 CIDRs, when there is one.
//
// In GRE mode an IPv6 CIDR is routed onto the peer's GRE device directly,
// as its IPv4 CIDRs are.

// ipv6RouteMetric is the metric the kernel gives an IPv6 route added
// without one.
const ipv6RouteMetric = 1024

// readRoutes6 dumps the IPv6 main table (a full read), handing every route
// to keep as readRoutes does for IPv4.
func (s *session) readRoutes6(r *reading, keep func(route)) error {
	req := routeRequest(unix.NLM_F_DUMP, &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET6}})
	// The IPv4 dump ran first: restarting drops only what this dump added.
	routes, foreign := len(r.a.Routes), len(r.a.ForeignRoutes)
	restart := func() { r.a.Routes, r.a.ForeignRoutes = r.a.Routes[:routes], r.a.ForeignRoutes[:foreign] }
	return s.dump("ipv6 routes", unix.NETLINK_ROUTE, req, restart, func(m []byte) error {
		rt, _, ok, err := decodeRoute(m, r)
		if ok {
			keep(rt)
		}
		return err
	})
}

// route6 turns the IPv4-shaped route w to one of peer's IPv6 CIDRs into
// its IPv6 form (see above).
func (p *planner) route6(w route, peer Peer) route {
	w.Src, w.Metric, w.OnLink = p.lan6, ipv6RouteMetric, false
	if p.d.Mode == ModeVXLAN {
		w.Gw = peer.LinkLocal
	}
	return w
}

// ip6 returns a 16-byte attribute value as an address.
func ip6(v []byte) (netip.Addr, bool) {
	if len(v) != 16 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16([16]byte(v)), true
}

// readLANAddr6 finds the LAN's IPv6 address when the edge has IPv6 CIDRs
// of its own (a full read; an Update takes it from its baseline). Until
// there is one the IPv6 routes go without a source address; the next full
// reconcile gives them the one that appeared.
func (s *session) readLANAddr6(r *reading) error {
	var cidrs []netip.Prefix
	for _, c := range r.d.LocalCIDRs {
		if c.Addr().Is6() {
			cidrs = append(cidrs, c)
		}
	}
	if len(cidrs) == 0 {
		return nil
	}
	var addrs []netlink.Addr
	if err := retryDump("ipv6 addresses", func() (err error) { addrs, err = s.nl.AddrList(nil, netlink.FAMILY_V6); return err }); err != nil {
		return err
	}
	r.addrs6 = addrs
	// An address still in (or failed) duplicate address detection cannot
	// be a route's source yet: the kernel refuses it; a deprecated one
	// (the site's VIP6 among them, vip.go) should not be one.
	var usable []netlink.Addr
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED|unix.IFA_F_DEPRECATED) == 0 {
			usable = append(usable, a)
		}
	}
	r.a.LANAddr6 = findLANAddr(usable, cidrs, r.ours)
	return nil
}
