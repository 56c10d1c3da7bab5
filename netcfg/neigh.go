package netcfg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Neighbors: one permanent IPv4 neighbor per peer on the VXLAN device, its
// next hop with its VTEP MAC, so that the routes via the next hop need no ARP.

// neighbor is a permanent IPv4 neighbor entry.
type neighbor struct {
	Device string
	IP     netip.Addr
	MAC    net.HardwareAddr
}

// readNeighbors reads the permanent IPv4 neighbors of the desired VXLAN
// device (when it is ours): all of them, or with keys the next hops in the
// scope, one get each.
func (s *session) readNeighbors(r *reading) error {
	return readNeighTable(s, r, neighTable[netip.Addr]{
		what: "neigh", family: unix.AF_INET,
		keys: func(sc *scope) []netip.Addr { return sc.hops },
		key: func(ip netip.Addr) *nl.RtAttr {
			a4 := ip.As4()
			return nl.NewRtAttr(unix.NDA_DST, a4[:])
		},
		start: func(n int) { r.a.Neighbors = make([]neighbor, 0, n) },
		keep: func(dev *link, hdr *netlink.Ndmsg, v neighAttrs, macs *arena) {
			if hdr.State&netlink.NUD_PERMANENT != 0 && v.dst.IsValid() {
				n := neighbor{Device: dev.Name, IP: v.dst}
				if v.lladdr != nil {
					n.MAC = macs.copy(v.lladdr)
				}
				r.a.Neighbors = append(r.a.Neighbors, n)
			}
		},
	})
}

// planNeighbors gives every peer its neighbor on the VXLAN device (added,
// or replaced when its MAC changed) and removes the stale ones.
func (p *planner) planNeighbors() {
	dev := p.d.Device
	if p.d.Mode != ModeVXLAN || !p.usable[dev] {
		return
	}
	// have maps each neighbor of ours to its position in p.a.Neighbors.
	have := make(map[netip.Addr]int, len(p.a.Neighbors))
	if !p.fresh[dev] && !p.neighGone[dev] {
		for i, n := range p.a.Neighbors {
			if n.Device == dev {
				have[n.IP] = i
			}
		}
	}
	for _, peer := range p.d.Peers {
		if !peer.NextHop.IsValid() {
			continue // a plain peer: nothing routed to it
		}
		w := neighbor{Device: dev, IP: peer.NextHop, MAC: peer.MAC}
		i, ok := have[w.IP]
		delete(have, w.IP)
		switch {
		case !ok:
			p.add(stageEntriesAdd, neighAdd(w))
		case !bytes.Equal(p.a.Neighbors[i].MAC, w.MAC):
			p.add(stageEntriesAdd, neighReplace(w))
		}
	}
	for _, n := range p.a.Neighbors {
		if _, left := have[n.IP]; left && n.Device == dev {
			p.add(stageNeighDel, neighDel(n))
		}
	}
}

// Neighbor operations.

func neighAdd(n neighbor) change     { return neighSet("add", n) }
func neighReplace(n neighbor) change { return neighSet("replace", n) }

func neighSet(verb string, n neighbor) change {
	return change{desc: fmt.Sprintf("neigh %s %s lladdr %s dev %s nud permanent", verb, n.IP, n.MAC, n.Device), do: func(s *session) error {
		i, err := s.ifindex(n.Device)
		if err != nil {
			return err
		}
		return s.nl.NeighSet(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC})
	}}
}

func neighDel(n neighbor) change {
	return change{desc: fmt.Sprintf("neigh del %s dev %s", n.IP, n.Device), do: func(s *session) error {
		i, err := s.ifindex(n.Device)
		if err == nil {
			err = s.nl.NeighDel(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V4, IP: n.IP.AsSlice()})
		}
		return ignoreGone(err)
	}}
}

// Neighbor messages — the neighbors here and the VXLAN FDB entries of
// fdb.go alike — are built and decoded in this package: package netlink
// (v1.3.1) has no NDA_PORT, which FDB entries need, and its NeighDeserialize
// allocates for every entry and may look a link up (a request of its own)
// to decode one.

// neighAttrs are the attributes of a neighbor message cframe uses.
type neighAttrs struct {
	dst    netip.Addr // NDA_DST, IPv4 or IPv6
	lladdr []byte     // NDA_LLADDR, valid until the next receive
	port   uint16     // NDA_PORT, 0 when absent
}

// ndmsgLen is sizeof(struct ndmsg).
const ndmsgLen = int(unsafe.Sizeof(netlink.Ndmsg{}))

// decodeNeigh decodes a neighbor message (struct ndmsg and attributes).
func decodeNeigh(m []byte) (*netlink.Ndmsg, neighAttrs, error) {
	var v neighAttrs
	if len(m) < ndmsgLen {
		return nil, v, errors.New("short neighbor message")
	}
	// netlink.Ndmsg has the layout of struct ndmsg (package netlink reads
	// it the same way, but keeps that function to itself).
	hdr := (*netlink.Ndmsg)(unsafe.Pointer(&m[0]))
	walkAttrs(m[ndmsgLen:], func(typ uint16, b []byte) {
		switch typ {
		case unix.NDA_DST:
			if len(b) == 16 {
				v.dst = netip.AddrFrom16([16]byte(b))
			} else {
				v.dst, _ = ip4(b)
			}
		case unix.NDA_LLADDR:
			v.lladdr = b
		case unix.NDA_PORT:
			if len(b) == 2 {
				v.port = binary.BigEndian.Uint16(b)
			}
		}
	})
	return hdr, v, nil
}

// neighTable is one table of neighbor messages cframe reads on its VXLAN
// device: the FDB (AF_BRIDGE) or the neighbors (AF_INET).
type neighTable[K fmt.Stringer] struct {
	what     string
	family   uint8
	getFlags uint8
	keys     func(*scope) []K   // what an Update reads by
	key      func(K) *nl.RtAttr // the attribute a get asks by
	start    func(n int)        // (re)starts the list, for n entries
	keep     func(dev *link, hdr *netlink.Ndmsg, v neighAttrs, macs *arena)
}

// readNeighTable reads t's entries on the desired VXLAN device when it is
// ours: all of them (a dump), or with an Update's keys one get per key.
// keep is called with every entry of the device, and an arena for its MAC.
func readNeighTable[K fmt.Stringer](s *session, r *reading, t neighTable[K]) error {
	dev := r.tunnel
	if dev == nil {
		return nil
	}
	n := len(r.d.Peers) + 8 // an Update's Desired holds the peers in its scope
	macs := macArena(n)
	t.start(n)
	each := func(m []byte) error {
		hdr, v, err := decodeNeigh(m)
		if err == nil && hdr.Family == t.family && int(hdr.Index) == dev.Index {
			t.keep(dev, hdr, v, macs)
		}
		return err
	}
	if r.keys == nil {
		req := neighRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP, &netlink.Ndmsg{Family: t.family})
		return s.dump(t.what, unix.NETLINK_ROUTE, req, func() { t.start(n) }, each)
	}
	return getEach(s, t.what+" get %s dev "+dev.Name, t.keys(r.keys), each, func(k K) *nl.NetlinkRequest {
		return neighRequest(unix.RTM_GETNEIGH, 0, &netlink.Ndmsg{Family: t.family, Index: uint32(dev.Index), Flags: t.getFlags}, t.key(k))
	})
}

// neighRequest is a neighbor request: msgType, flags, the header and attrs.
func neighRequest(msgType, flags int, hdr *netlink.Ndmsg, attrs ...*nl.RtAttr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(msgType, flags)
	req.AddData(hdr)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}
