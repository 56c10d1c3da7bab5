package netcfg

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// IPv6 neighbors: one permanent IPv6 neighbor per peer with a link-local
// address (Peer.LinkLocal) on the VXLAN device, that address with the
// peer's VTEP MAC, so that probes and HA messages reach one particular peer
// through the tunnel with no neighbor discovery (which has no multicast to
// travel by on a VXLAN device without learning). Together with the FDB
// entry it is the peer's identity in the tunnel; nothing is routed by it.

// readNeighbors6 reads the permanent IPv6 neighbors of the desired VXLAN
// device (when it is ours): all of them, or with keys the link-local
// addresses in the scope, one get each.
func (s *session) readNeighbors6(r *reading) error {
	return readNeighTable(s, r, neighTable[netip.Addr]{
		what: "neigh6", family: unix.AF_INET6,
		keys: func(sc *scope) []netip.Addr { return sc.lls },
		key: func(ip netip.Addr) *nl.RtAttr {
			a16 := ip.As16()
			return nl.NewRtAttr(unix.NDA_DST, a16[:])
		},
		start: func(n int) { r.a.Neighbors6 = make([]neighbor, 0, n) },
		keep: func(dev *link, hdr *netlink.Ndmsg, v neighAttrs, macs *arena) {
			if hdr.State&netlink.NUD_PERMANENT != 0 && v.dst.Is6() {
				n := neighbor{Device: dev.Name, IP: v.dst}
				if v.lladdr != nil {
					n.MAC = macs.copy(v.lladdr)
				}
				r.a.Neighbors6 = append(r.a.Neighbors6, n)
			}
		},
	})
}

// planNeighbors6 gives every peer with a link-local address its IPv6
// neighbor on the VXLAN device and removes the stale ones.
func (p *planner) planNeighbors6() {
	dev := p.d.Device
	if p.d.Mode != ModeVXLAN || !p.usable[dev] {
		return
	}
	have := make(map[netip.Addr]int, len(p.a.Neighbors6))
	if !p.fresh[dev] && !p.neighGone[dev] {
		for i, n := range p.a.Neighbors6 {
			if n.Device == dev {
				have[n.IP] = i
			}
		}
	}
	for _, peer := range p.d.Peers {
		if !peer.LinkLocal.IsValid() {
			continue
		}
		w := neighbor{Device: dev, IP: peer.LinkLocal, MAC: peer.MAC}
		i, ok := have[w.IP]
		delete(have, w.IP)
		switch {
		case !ok:
			p.add(stageEntriesAdd, neigh6Set("add", w))
		case !bytes.Equal(p.a.Neighbors6[i].MAC, w.MAC):
			p.add(stageEntriesAdd, neigh6Set("replace", w))
		}
	}
	for _, n := range p.a.Neighbors6 {
		if _, left := have[n.IP]; left && n.Device == dev {
			p.add(stageNeighDel, neigh6Del(n))
		}
	}
}

// IPv6 neighbor operations.

func neigh6Set(verb string, n neighbor) change {
	return change{desc: fmt.Sprintf("neigh %s %s lladdr %s dev %s nud permanent", verb, n.IP, n.MAC, n.Device), do: func(s *session) error {
		i, err := s.ifindex(n.Device)
		if err != nil {
			return err
		}
		return s.nl.NeighSet(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V6,
			State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC})
	}}
}

func neigh6Del(n neighbor) change {
	return change{desc: fmt.Sprintf("neigh del %s dev %s", n.IP, n.Device), do: func(s *session) error {
		i, err := s.ifindex(n.Device)
		if err == nil {
			err = s.nl.NeighDel(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V6, IP: n.IP.AsSlice()})
		}
		return ignoreGone(err)
	}}
}
