package netcfg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// netlink v1.3.1's Neigh has no UDP port, so VXLAN FDB entries, whose
// remote port differs per peer, are built and parsed here directly:
// AF_BRIDGE neighbor messages with NTF_SELF, NUD_PERMANENT, NDA_LLADDR,
// NDA_DST and NDA_PORT (big-endian).

// ndmsgLen is sizeof(struct ndmsg).
const ndmsgLen = 12

// fdbRequest sends RTM_NEWNEIGH or RTM_DELNEIGH for one VXLAN FDB entry.
func fdbRequest(msgType, flags, ifindex int, e FDBEntry) error {
	req := nl.NewNetlinkRequest(msgType, flags|unix.NLM_F_ACK)
	req.AddData(&netlink.Ndmsg{
		Family: unix.AF_BRIDGE,
		Index:  uint32(ifindex),
		State:  netlink.NUD_PERMANENT,
		Flags:  netlink.NTF_SELF,
	})
	req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, []byte(e.MAC)))
	dst := e.Dst.As4()
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, dst[:]))
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, e.Port)
	req.AddData(nl.NewRtAttr(netlink.NDA_PORT, port))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// fdbList returns the FDB entries of the device with index ifindex whose
// device dstport is devPort (used when the kernel omits NDA_PORT). A dump
// interrupted by concurrent changes returns netlink.ErrDumpInterrupted.
func fdbList(ifindex int, devPort uint16) ([]FDBEntry, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
	req.AddData(&netlink.Ndmsg{Family: unix.AF_BRIDGE})
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH)
	if err != nil {
		return nil, err
	}
	var out []FDBEntry
	for _, m := range msgs {
		e, idx, ok, perr := parseFDB(m, devPort)
		if perr != nil {
			return nil, perr
		}
		if ok && idx == ifindex {
			out = append(out, e)
		}
	}
	return out, nil
}

// parseFDB decodes one AF_BRIDGE neighbor message; ok is false for other
// families and for entries without a unicast IPv4 destination.
func parseFDB(m []byte, devPort uint16) (e FDBEntry, ifindex int, ok bool, err error) {
	if len(m) < ndmsgLen {
		return e, 0, false, errors.New("short neighbor message")
	}
	if m[0] != unix.AF_BRIDGE {
		return e, 0, false, nil
	}
	ifindex = int(nl.NativeEndian().Uint32(m[4:8]))
	attrs, err := nl.ParseRouteAttr(m[ndmsgLen:])
	if err != nil {
		return e, 0, false, fmt.Errorf("parse neighbor attributes: %w", err)
	}
	e.Port = devPort
	for _, a := range attrs {
		switch a.Attr.Type {
		case netlink.NDA_LLADDR:
			e.MAC = net.HardwareAddr(append([]byte(nil), a.Value...))
		case netlink.NDA_DST:
			if addr, isIP := netip.AddrFromSlice(a.Value); isIP {
				e.Dst = addr.Unmap()
			}
		case netlink.NDA_PORT:
			if len(a.Value) == 2 {
				e.Port = binary.BigEndian.Uint16(a.Value)
			}
		}
	}
	return e, ifindex, e.Dst.Is4() && len(e.MAC) == 6, nil
}
