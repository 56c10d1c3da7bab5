package netcfg

import (
	"encoding/binary"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// netlink v1.3.1's Neigh has no UDP port, so VXLAN FDB entries, whose
// remote port differs per peer, are built here (and parsed in dump.go)
// directly: AF_BRIDGE neighbor messages with NTF_SELF, NUD_PERMANENT,
// NDA_LLADDR, NDA_DST and NDA_PORT (big-endian).

// ndmsgLen is sizeof(struct ndmsg).
const ndmsgLen = 12

// fdbRequest sends RTM_NEWNEIGH or RTM_DELNEIGH for one VXLAN FDB entry.
func (k *Kernel) fdbRequest(msgType, flags, ifindex int, e FDBEntry) error {
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
	return k.roundTrip(unix.NETLINK_ROUTE, req, nil)
}
