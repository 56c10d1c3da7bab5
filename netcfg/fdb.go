package netcfg

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// FDB entries: one per peer on the VXLAN device, sending frames for the
// peer's VTEP MAC to its underlay address and port (an encrypted peer's to
// its mesh address, through the WireGuard device). Learning is off, so
// these are the device's only remotes.

// fdbEntry is a VXLAN forwarding entry: frames for MAC go to Dst:Port.
type fdbEntry struct {
	Device string
	MAC    net.HardwareAddr
	Dst    netip.Addr
	// Port is the remote UDP port; the read reports the device's dstport
	// when the kernel omits it (it does when both are equal).
	Port uint16
}

// String renders the entry the way "bridge fdb add" would take it.
func (e fdbEntry) String() string {
	return fmt.Sprintf("%s dst %s port %d dev %s", e.MAC, e.Dst, e.Port, e.Device)
}

// readFDB reads the FDB entries of the desired VXLAN device (when it is
// ours): all of them, or with keys the entries of the MACs in the scope,
// one get each (the first remote of each).
func (s *session) readFDB(r *reading) error {
	return readNeighTable(s, r, neighTable[net.HardwareAddr]{
		what: "fdb", family: unix.AF_BRIDGE, getFlags: netlink.NTF_SELF,
		keys:  func(sc *scope) []net.HardwareAddr { return sc.macs },
		key:   func(mac net.HardwareAddr) *nl.RtAttr { return nl.NewRtAttr(unix.NDA_LLADDR, mac) },
		start: func(n int) { r.a.FDB = make([]fdbEntry, 0, n) },
		keep: func(dev *link, _ *netlink.Ndmsg, v neighAttrs, macs *arena) {
			if v.dst.IsValid() && len(v.lladdr) == 6 {
				e := fdbEntry{Device: dev.Name, MAC: macs.copy(v.lladdr), Dst: v.dst, Port: v.port}
				if e.Port == 0 {
					e.Port = dev.Port
				}
				r.a.FDB = append(r.a.FDB, e)
			}
		},
	})
}

// planFDB gives every peer exactly one entry on the VXLAN device for its
// MAC: added, or replaced in place when the MAC's entry points elsewhere;
// every other entry of ours goes.
func (p *planner) planFDB() {
	dev := p.d.Device
	if p.d.Mode != ModeVXLAN || !p.usable[dev] {
		return
	}
	// The kernel's entries for each MAC, in kernel order: first[mac] is
	// the position of the first in p.a.FDB, next[i] the one after i (or
	// -1). Keyed by raw MAC: no formatting, one allocation in all.
	fdb := p.a.FDB
	first := make(map[[6]byte]int, len(fdb))
	next := make([]int, len(fdb))
	if !p.fresh[dev] {
		for i := len(fdb) - 1; i >= 0; i-- {
			if fdb[i].Device == dev {
				key := [6]byte(fdb[i].MAC)
				if j, ok := first[key]; ok {
					next[i] = j
				} else {
					next[i] = -1
				}
				first[key] = i
			}
		}
	}
	var stale []fdbEntry
	for _, peer := range p.d.Peers {
		w := fdbEntry{Device: dev, MAC: peer.MAC, Dst: peer.Underlay.Addr(), Port: peer.Underlay.Port()}
		if peer.Encrypted() {
			w.Dst, w.Port = peer.Mesh.Addr(), peer.Mesh.Port()
		}
		key := [6]byte(w.MAC)
		i, ok := first[key]
		delete(first, key)
		kept, held := false, 0
		for ; ok && i >= 0; i = next[i] {
			held++
			if h := fdb[i]; h.Dst == w.Dst && h.Port == w.Port && !kept {
				kept = true
			} else {
				stale = append(stale, h)
			}
		}
		switch {
		case kept:
		case held > 0:
			p.add(stageEntriesAdd, fdbReplace(w))
			if held == 1 {
				// Replacing rewrites the only remote in place.
				stale = stale[:len(stale)-1]
			}
		default:
			p.add(stageEntriesAdd, fdbAdd(w))
		}
	}
	for _, e := range fdb {
		if _, left := first[[6]byte(e.MAC)]; left && e.Device == dev {
			stale = append(stale, e)
		}
	}
	for _, e := range stale {
		p.add(stageFDBDel, fdbDel(e))
	}
}

// FDB operations. netlink v1.3.1's Neigh has no UDP port, and the remote
// port differs per peer, so the requests are built here (see neigh.go):
// AF_BRIDGE neighbor messages with NTF_SELF, NUD_PERMANENT, NDA_LLADDR,
// NDA_DST and NDA_PORT (big-endian).

func fdbAdd(e fdbEntry) change     { return fdbSet("add", e) }
func fdbReplace(e fdbEntry) change { return fdbSet("replace", e) }

func fdbSet(verb string, e fdbEntry) change {
	return change{desc: "fdb " + verb + " " + e.String(), do: func(s *session) error {
		return s.fdbRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, e)
	}}
}

func fdbDel(e fdbEntry) change {
	return change{desc: "fdb del " + e.String(), do: func(s *session) error {
		return ignoreGone(s.fdbRequest(unix.RTM_DELNEIGH, 0, e))
	}}
}

// fdbRequest sends RTM_NEWNEIGH or RTM_DELNEIGH for e.
func (s *session) fdbRequest(msgType, flags int, e fdbEntry) error {
	i, err := s.ifindex(e.Device)
	if err != nil {
		return err
	}
	dst := e.Dst.AsSlice()
	port := binary.BigEndian.AppendUint16(nil, e.Port)
	req := neighRequest(msgType, flags|unix.NLM_F_ACK,
		&netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(i), State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF},
		nl.NewRtAttr(unix.NDA_LLADDR, e.MAC), nl.NewRtAttr(unix.NDA_DST, dst), nl.NewRtAttr(unix.NDA_PORT, port))
	return s.send(unix.NETLINK_ROUTE, req, nil)
}
