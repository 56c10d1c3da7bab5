package netcfg

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// The underlay: foreign state cframe reads but never changes, from which the
// plan takes defaults — the device that carries the tunnel (its MTU sets
// the tunnel's), the LAN address (the source of the routes to the peers)
// and, in GRE mode, the source address toward each peer.

// readUnderlay finds the underlay device — the one holding
// Desired.LocalAddr (an error when no device holds it), else the default
// route's — and its MTU, the LAN address when Desired.LANAddr does not give
// it, and in GRE mode the source address toward each peer. None of it
// depends on the peers: an Update takes it from its baseline.
func (s *session) readUnderlay(r *reading) error {
	if r.keys != nil {
		return nil
	}
	var addrs []netlink.Addr
	if err := retryDump("addresses", func() (err error) { addrs, err = s.nl.AddrList(nil, netlink.FAMILY_V4); return err }); err != nil {
		return err
	}
	r.addrs, r.underlay = addrs, r.defaultDev
	held := false
	local := addrs
	if r.d.underlay6() {
		var err error
		if local, err = s.localAddrs6(); err != nil {
			return err
		}
	}
	for _, ad := range local {
		if ip := addrFromIP(ad.IP); r.d.LocalAddr.IsValid() && ip == r.d.LocalAddr {
			r.underlay, held = ad.LinkIndex, true
		}
	}
	if r.d.LocalAddr.IsValid() && !held {
		// The kernel would drop every tunnel packet sent from it.
		return fmt.Errorf("netcfg: local address %s is not an address of this host (behind 1:1 NAT the public address is hostaddr; the local address, if set, is the private one)", r.d.LocalAddr)
	}
	if l, ok := r.links[r.underlay]; ok && l.Attrs().MTU > 0 {
		r.a.UnderlayMTU = l.Attrs().MTU
	}
	if !r.d.LANAddr.IsValid() {
		r.a.LANAddr = findLANAddr(addrs, r.d.LocalCIDRs, r.ours)
	}
	if err := s.readLANAddr6(r); err != nil {
		return err
	}
	if r.d.Mode == ModeGRE {
		r.a.UnderlaySource = map[netip.Addr]netip.Addr{}
		for _, p := range r.d.Peers {
			rs, err := s.nl.RouteGet(p.Underlay.Addr().AsSlice())
			if err != nil || len(rs) == 0 {
				continue // unreachable now: the tunnel gets no fixed local address
			}
			if src := addrFromIP(rs[0].Src); src.IsValid() {
				r.a.UnderlaySource[p.Underlay.Addr()] = src
			}
		}
	}
	return nil
}

// findLANAddr returns the first address (in LocalCIDRs order) that lies in
// one of cidrs and is not on one of cframe's links.
func findLANAddr(addrs []netlink.Addr, cidrs []netip.Prefix, ours map[int]bool) netip.Addr {
	for _, c := range cidrs {
		for _, ad := range addrs {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if ok && !ours[ad.LinkIndex] && c.Contains(ip.Unmap()) {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}
