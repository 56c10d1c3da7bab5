package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Routes: a main-table route with protocol RouteProtocol per peer CIDR, via
// the peer's next hop on the VXLAN device (onlink) or on the peer's GRE
// device, from the LAN address. Foreign routes to a peer CIDR are conflicts.
//
// IPv6 CIDRs get the same routes in the IPv6 main table (route6.go says
// how they differ: their next hop, metric and source).

// route is an IPv4 or IPv6 main-table route.
type route struct {
	Dst      netip.Prefix
	Gw       netip.Addr // invalid: directly connected (GRE)
	Device   string
	Src      netip.Addr
	Protocol int
	Metric   int
	OnLink   bool
}

// String renders the route the way "ip route add" would take it.
func (r route) String() string {
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
func (r route) equal(o route) bool {
	return r.Dst == o.Dst && r.Gw == o.Gw && r.Device == o.Device && r.Src == o.Src &&
		r.Protocol == o.Protocol && r.Metric == o.Metric && r.OnLink == o.OnLink
}

// readRoutes reads cframe's main-table routes and the foreign ones that
// overlap a peer CIDR: all of them (noting the default route's device for
// the underlay), or with keys the route the kernel would use for each CIDR
// in the scope, one get each (RTM_F_FIB_MATCH: the route as it sits in the
// table, with its own prefix, protocol and metric).
func (s *session) readRoutes(r *reading) error {
	cidrs := make([]netip.Prefix, 0, 2*len(r.d.Peers))
	for _, p := range r.d.Peers {
		cidrs = append(cidrs, p.CIDRs...)
	}
	if r.keys != nil {
		cidrs = r.keys.cidrs
	}
	keep := func(rt route) {
		switch {
		case rt.Protocol == RouteProtocol:
			r.a.Routes = append(r.a.Routes, rt)
		case rt.Dst.Bits() > 0 && slices.ContainsFunc(cidrs, rt.Dst.Overlaps):
			r.a.ForeignRoutes = append(r.a.ForeignRoutes, rt)
		}
	}
	if r.keys == nil {
		defaultMetric := -1
		req := routeRequest(unix.NLM_F_DUMP, &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET}})
		r.a.Routes = make([]route, 0, len(cidrs)+16)
		restart := func() { r.a.Routes, r.a.ForeignRoutes, r.defaultDev, defaultMetric = r.a.Routes[:0], nil, 0, -1 }
		err := s.dump("routes", unix.NETLINK_ROUTE, req, restart, func(m []byte) error {
			rt, oif, ok, err := decodeRoute(m, r)
			if ok && rt.Dst.Bits() == 0 && oif != 0 && (defaultMetric < 0 || rt.Metric < defaultMetric) {
				r.defaultDev, defaultMetric = oif, rt.Metric
			}
			if ok {
				keep(rt)
			}
			return err
		})
		if err != nil {
			return err
		}
		return s.readRoutes6(r, keep)
	}
	for _, c := range cidrs {
		family, dst := unix.AF_INET, c.Addr().AsSlice()
		if c.Addr().Is6() {
			family = unix.AF_INET6
		}
		req := routeRequest(0, &nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(family), Dst_len: uint8(8 * len(dst)), Flags: unix.RTM_F_FIB_MATCH}},
			nl.NewRtAttr(unix.RTA_DST, dst))
		err := s.get(req, func(m []byte) error {
			rt, _, ok, err := decodeRoute(m, r)
			// Several CIDRs may fall under one route.
			if ok && !slices.ContainsFunc(r.a.Routes, rt.equal) && !slices.ContainsFunc(r.a.ForeignRoutes, rt.equal) {
				keep(rt)
			}
			return err
		})
		switch {
		case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.EACCES), errors.Is(err, unix.EINVAL):
			// No route, or one that only rejects (unreachable, prohibit,
			// blackhole): nothing of ours; adding ours over an exact one
			// fails and sends Update to a full reconcile.
		case err != nil:
			return fmt.Errorf("route get %s fibmatch: %w", c.Addr(), err)
		}
	}
	return nil
}

// decodeRoute decodes an IPv4 or IPv6 route message, with device names
// from r's links; ok is false for other families, other tables than main
// and cloned routes. oif is the index of the output device.
func decodeRoute(m []byte, r *reading) (rt route, oif int, ok bool, err error) {
	if len(m) < unix.SizeofRtMsg {
		return rt, 0, false, errors.New("short route message")
	}
	msg := nl.DeserializeRtMsg(m)
	if msg.Family != unix.AF_INET && msg.Family != unix.AF_INET6 || msg.Flags&unix.RTM_F_CLONED != 0 {
		return rt, 0, false, nil
	}
	table := int(msg.Table)
	rt.Protocol, rt.OnLink = int(msg.Protocol), msg.Flags&unix.RTNH_F_ONLINK != 0
	dst, addr := netip.IPv4Unspecified(), ip4
	if msg.Family == unix.AF_INET6 {
		dst, addr = netip.IPv6Unspecified(), ip6
	}
	walkAttrs(m[msg.Len():], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_TABLE:
			if len(v) == 4 {
				table = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_DST:
			if a, ok := addr(v); ok {
				dst = a
			}
		case unix.RTA_GATEWAY:
			rt.Gw, _ = addr(v)
		case unix.RTA_PREFSRC:
			rt.Src, _ = addr(v)
		case unix.RTA_OIF:
			if len(v) == 4 {
				oif = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				rt.Metric = int(nl.NativeEndian().Uint32(v))
			}
		}
	})
	if table != unix.RT_TABLE_MAIN {
		return rt, oif, false, nil
	}
	rt.Dst = netip.PrefixFrom(dst, int(msg.Dst_len))
	rt.Device = r.name(oif)
	return rt, oif, true, nil
}

// routeRequest is an RTM_GETROUTE request with flags, msg and attrs.
func routeRequest(flags int, msg *nl.RtMsg, attrs ...*nl.RtAttr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, flags)
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}

// planRoutes gives every CIDR of every peer on a usable device its route
// (added, or replaced when it differs), skips a CIDR whose exact prefix a
// foreign route holds, reports foreign routes that overlap, and removes
// cframe's stale routes.
func (p *planner) planRoutes() {
	type routeKey struct {
		dst    netip.Prefix
		metric int
	}
	// ours maps each of our routes to its position; kept marks the ones
	// still wanted. The rest is stale.
	ours := make(map[routeKey]int, len(p.a.Routes))
	for i, r := range p.a.Routes {
		if !p.fresh[r.Device] { // routes on a (re)created device are gone
			ours[routeKey{r.Dst, r.Metric}] = i
		}
	}
	kept := make([]bool, len(p.a.Routes))
	for _, peer := range p.d.Peers {
		dev := p.peerDevice(peer)
		if !p.usable[dev] {
			continue
		}
		for _, cidr := range peer.CIDRs {
			w := route{Dst: cidr, Device: dev, Src: p.lan, Protocol: RouteProtocol}
			if p.d.Mode == ModeVXLAN {
				w.Gw, w.OnLink = peer.NextHop, true
			}
			if isV6(cidr) {
				if !p.ipv6 {
					continue
				}
				w = p.route6(w, peer)
			}
			blocked := false
			for _, f := range p.a.ForeignRoutes {
				switch {
				case f.Dst == cidr && f.Metric == w.Metric:
					p.conflict(peer.Name, "route %s is not cframe's: skipped peer %s's route %s", f, peer.Name, cidr)
					blocked = true
				case f.Dst.Overlaps(cidr):
					p.conflict(peer.Name, "route %s is not cframe's and overlaps peer %s's %s: installed cframe's route anyway", f, peer.Name, cidr)
				}
			}
			if blocked {
				continue
			}
			i, ok := ours[routeKey{cidr, w.Metric}]
			switch {
			case !ok:
				p.add(stageEntriesAdd, routeAdd(w))
			case !p.a.Routes[i].equal(w):
				p.add(stageEntriesAdd, routeReplace(w))
			}
			if ok {
				kept[i] = true
			}
		}
	}
	for i, r := range p.a.Routes {
		if !kept[i] && !p.fresh[r.Device] {
			p.add(stageRoutesDel, routeDel(r))
		}
	}
}

// Route operations.

func routeAdd(r route) change {
	return change{desc: "route add " + r.String(), do: func(s *session) error { return s.routeSet(r, s.nl.RouteAdd) }}
}

func routeReplace(r route) change {
	return change{desc: "route replace " + r.String(), do: func(s *session) error { return s.routeSet(r, s.nl.RouteReplace) }}
}

// routeSet installs r with set (RouteAdd or RouteReplace).
func (s *session) routeSet(r route, set func(*netlink.Route) error) error {
	i, err := s.ifindex(r.Device)
	if err != nil {
		return err
	}
	nr := &netlink.Route{LinkIndex: i, Dst: ipNet(r.Dst), Gw: ipOrNil(r.Gw), Src: ipOrNil(r.Src),
		Protocol: netlink.RouteProtocol(r.Protocol), Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_UNIVERSE}
	if !r.Gw.IsValid() {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return set(nr)
}

// routeDel deletes one of cframe's routes; the kernel only matches routes
// with our protocol, so a foreign route with the same destination is safe.
func routeDel(r route) change {
	return change{desc: "route del " + r.String(), do: func(s *session) error {
		return ignoreGone(s.nl.RouteDel(&netlink.Route{Dst: ipNet(r.Dst), Protocol: netlink.RouteProtocol(r.Protocol),
			Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_NOWHERE}))
	}}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
