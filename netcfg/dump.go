package netcfg

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The dumps whose size grows with the number of peers — routes, neighbors,
// FDB entries, ipset members — are parsed here straight from the netlink
// messages into cframe's own small types, without the general-purpose
// decoding (and allocations) of package netlink, on one socket per protocol
// that all requests of a call share: at a thousand peers that is the
// difference between a few hundred microseconds and several milliseconds
// per reconcile.

// nlDump sends a dump request of socket protocol proto and calls f with the
// payload of every reply message. A dump interrupted by concurrent changes
// returns netlink.ErrDumpInterrupted (see dump).
func (k *Kernel) nlDump(proto int, req *nl.NetlinkRequest, f func(msg []byte) error) error {
	k.count.Netlink++
	return k.roundTrip(proto, req, f)
}

// roundTrip sends req on the call's socket of protocol proto and reads the
// answer into the Kernel's reused buffer, calling f (if not nil) with the
// payload of every message until the final one (an acknowledgement, an
// error or the end of a dump).
func (k *Kernel) roundTrip(proto int, req *nl.NetlinkRequest, f func(msg []byte) error) error {
	fd, err := k.socket(proto)
	if err != nil {
		return err
	}
	k.seq++
	req.Seq = k.seq
	if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	if k.buf == nil {
		k.buf = make([]byte, 1<<16)
	}
	interrupted := false
	for {
		n, _, err := unix.Recvfrom(fd, k.buf, 0)
		if err != nil {
			return err
		}
		for b := k.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(nl.NativeEndian().Uint32(b))
			typ, flags, seq := nl.NativeEndian().Uint16(b[4:]), nl.NativeEndian().Uint16(b[6:]), nl.NativeEndian().Uint32(b[8:])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("netlink: malformed message")
			}
			payload := b[unix.NLMSG_HDRLEN:l]
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if seq != req.Seq {
				continue // the rest of an earlier, abandoned answer
			}
			interrupted = interrupted || flags&unix.NLM_F_DUMP_INTR != 0
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(payload) >= 4 {
					if errno := int32(nl.NativeEndian().Uint32(payload)); errno != 0 {
						return unix.Errno(-errno)
					}
				}
				if interrupted {
					return netlink.ErrDumpInterrupted
				}
				return nil
			}
			if f != nil {
				if err := f(payload); err != nil {
					return err
				}
			}
		}
	}
}

// socket returns the call's netlink socket of protocol proto, opening it
// in the calling thread's namespace on first use (closed by end).
func (k *Kernel) socket(proto int) (int, error) {
	if fd, ok := k.socks[proto]; ok {
		return fd, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if k.socks == nil {
		k.socks = map[int]int{}
	}
	k.socks[proto] = fd
	return fd, nil
}

// walkAttrs calls f with the type (without the nested and byte-order flags)
// and value of each netlink attribute in b.
func walkAttrs(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(nl.NativeEndian().Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		f(nl.NativeEndian().Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofRtAttr:l])
		b = b[min(len(b), (l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	}
}

// arena hands out MAC addresses from shared blocks: one allocation per
// block instead of one per entry.
type arena struct{ buf []byte }

func macArena(n int) *arena { return &arena{buf: make([]byte, 0, 6*max(n, 16))} }

// copy returns a copy of v backed by the arena.
func (a *arena) copy(v []byte) net.HardwareAddr {
	if cap(a.buf)-len(a.buf) < len(v) {
		a.buf = make([]byte, 0, max(cap(a.buf), 6*16))
	}
	a.buf = append(a.buf, v...)
	return net.HardwareAddr(a.buf[len(a.buf)-len(v) : len(a.buf) : len(a.buf)])
}

// ip4 returns a 4-byte attribute value as an address.
func ip4(v []byte) (netip.Addr, bool) {
	if len(v) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(v)), true
}

// routeMsg is the part of an IPv4 route message Read uses.
type routeMsg struct {
	Route
	table, ifindex int
}

// listRoutes returns the IPv4 routes of the main table (cloned routes
// excluded), with device names from names; about hint are expected.
func (k *Kernel) listRoutes(names map[int]string, hint int) ([]routeMsg, error) {
	return dump("routes", func() ([]routeMsg, error) {
		req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
		req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET}})
		out := make([]routeMsg, 0, hint)
		err := k.nlDump(unix.NETLINK_ROUTE, req, func(m []byte) error {
			r, ok, err := parseRoute(m, names)
			if ok {
				out = append(out, r)
			}
			return err
		})
		return out, err
	})
}

// parseRoute decodes one route message; ok is false for other families,
// other tables than main and cloned routes.
func parseRoute(m []byte, names map[int]string) (r routeMsg, ok bool, err error) {
	if len(m) < unix.SizeofRtMsg {
		return r, false, errors.New("short route message")
	}
	if m[0] != unix.AF_INET || nl.NativeEndian().Uint32(m[8:])&unix.RTM_F_CLONED != 0 {
		return r, false, nil
	}
	r.table = int(m[4])
	r.Protocol, r.OnLink = int(m[5]), nl.NativeEndian().Uint32(m[8:])&unix.RTNH_F_ONLINK != 0
	dst := netip.IPv4Unspecified()
	walkAttrs(m[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_TABLE:
			if len(v) == 4 {
				r.table = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_DST:
			if a, ok := ip4(v); ok {
				dst = a
			}
		case unix.RTA_GATEWAY:
			r.Gw, _ = ip4(v)
		case unix.RTA_PREFSRC:
			r.Src, _ = ip4(v)
		case unix.RTA_OIF:
			if len(v) == 4 {
				r.ifindex = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				r.Metric = int(nl.NativeEndian().Uint32(v))
			}
		}
	})
	if r.table != unix.RT_TABLE_MAIN {
		return r, false, nil
	}
	r.Dst = netip.PrefixFrom(dst, int(m[1]))
	r.Device = names[r.ifindex]
	return r, true, nil
}

// listNeighbors returns the permanent IPv4 neighbor entries of the device
// with index ifindex; about hint are expected.
func (k *Kernel) listNeighbors(ifindex int, dev string, hint int) ([]Neighbor, error) {
	return dump("neighbors", func() ([]Neighbor, error) {
		req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
		req.AddData(&netlink.Ndmsg{Family: unix.AF_INET})
		out := make([]Neighbor, 0, hint)
		macs := macArena(hint)
		err := k.nlDump(unix.NETLINK_ROUTE, req, func(m []byte) error {
			n, ok, err := parseNeighbor(m, ifindex, dev, macs)
			if ok {
				out = append(out, n)
			}
			return err
		})
		return out, err
	})
}

// parseNeighbor decodes one neighbor message; ok is true for a permanent
// IPv4 entry of the device with index ifindex (named dev).
func parseNeighbor(m []byte, ifindex int, dev string, macs *arena) (n Neighbor, ok bool, err error) {
	if len(m) < ndmsgLen {
		return n, false, errors.New("short neighbor message")
	}
	state := nl.NativeEndian().Uint16(m[8:])
	if m[0] != unix.AF_INET || int(nl.NativeEndian().Uint32(m[4:])) != ifindex || state&netlink.NUD_PERMANENT == 0 {
		return n, false, nil
	}
	n.Device = dev
	walkAttrs(m[ndmsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			n.IP, _ = ip4(v)
		case unix.NDA_LLADDR:
			n.MAC = macs.copy(v)
		}
	})
	return n, n.IP.IsValid(), nil
}

// listSet returns the type and members of ipset name (hash:ip members as
// /32s); ok is false when the set does not exist. About hint members are
// expected.
func (k *Kernel) listSet(name string, hint int) (set IPSet, ok bool, err error) {
	set, err = dump("ipset "+name, func() (IPSet, error) {
		req := nl.NewNetlinkRequest(nl.IPSET_CMD_LIST|unix.NFNL_SUBSYS_IPSET<<8, nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
		req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
		req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
		req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
		s := IPSet{Members: make([]netip.Prefix, 0, hint)}
		err := k.nlDump(unix.NETLINK_NETFILTER, req, func(m []byte) error {
			if len(m) < nl.SizeofNfgenmsg {
				return errors.New("short ipset message")
			}
			walkAttrs(m[nl.SizeofNfgenmsg:], func(typ uint16, v []byte) {
				switch typ {
				case nl.IPSET_ATTR_TYPENAME:
					s.Type = unix.ByteSliceToString(v)
				case nl.IPSET_ATTR_ADT:
					walkAttrs(v, func(typ uint16, v []byte) {
						if typ == nl.IPSET_ATTR_DATA {
							if p, ok := setMember(v); ok {
								s.Members = append(s.Members, p)
							}
						}
					})
				}
			})
			return nil
		})
		return s, err
	})
	if errors.Is(err, unix.ENOENT) {
		return IPSet{}, false, nil
	}
	return set, err == nil, err
}

// setMember decodes one ipset entry (IPSET_ATTR_DATA) of an IPv4 hash:ip or
// hash:net set.
func setMember(data []byte) (netip.Prefix, bool) {
	var addr netip.Addr
	bits := 32
	walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case nl.IPSET_ATTR_IP:
			walkAttrs(v, func(typ uint16, v []byte) {
				if typ == nl.IPSET_ATTR_IPADDR_IPV4 {
					addr, _ = ip4(v)
				}
			})
		case nl.IPSET_ATTR_CIDR:
			if len(v) == 1 {
				bits = int(v[0])
			}
		}
	})
	return netip.PrefixFrom(addr, bits), addr.IsValid() && bits <= 32
}

// fdbList returns the FDB entries of the device with index ifindex whose
// device dstport is devPort (used when the kernel omits NDA_PORT); about
// hint are expected.
func (k *Kernel) fdbList(ifindex int, devPort uint16, hint int) ([]FDBEntry, error) {
	return dump("fdb", func() ([]FDBEntry, error) {
		req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
		req.AddData(&netlink.Ndmsg{Family: unix.AF_BRIDGE})
		out := make([]FDBEntry, 0, hint)
		macs := macArena(hint)
		err := k.nlDump(unix.NETLINK_ROUTE, req, func(m []byte) error {
			e, idx, ok, err := parseFDB(m, devPort, macs)
			if ok && idx == ifindex {
				out = append(out, e)
			}
			return err
		})
		return out, err
	})
}

// parseFDB decodes one AF_BRIDGE neighbor message; ok is false for other
// families and for entries without a unicast IPv4 destination.
func parseFDB(m []byte, devPort uint16, macs *arena) (e FDBEntry, ifindex int, ok bool, err error) {
	if len(m) < ndmsgLen {
		return e, 0, false, errors.New("short neighbor message")
	}
	if m[0] != unix.AF_BRIDGE {
		return e, 0, false, nil
	}
	ifindex = int(nl.NativeEndian().Uint32(m[4:8]))
	e.Port = devPort
	walkAttrs(m[ndmsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				e.MAC = macs.copy(v)
			}
		case unix.NDA_DST:
			e.Dst, _ = ip4(v)
		case unix.NDA_PORT:
			if len(v) == 2 {
				e.Port = binary.BigEndian.Uint16(v)
			}
		}
	})
	return e, ifindex, e.Dst.Is4() && len(e.MAC) == 6, nil
}
