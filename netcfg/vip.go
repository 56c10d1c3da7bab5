package netcfg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The VIPs: a site's virtual IPs, held by its active gateway only, on the
// LAN interface — the one holding the LAN address — one per family
// (Desired.VIP, Desired.VIP6), each announced as it is added so that the
// VPC router and the hosts send to this gateway at once. Desired.KeepVIP
// leaves cframe's VIP addresses as they are (a restarting agent that has
// not yet confirmed its role).
//
//   - IPv4: a /32 with the label VIPLabel, announced by gratuitous ARP. An
//     address with that label is cframe's; no other address is removed.
//   - IPv6: a /128 without duplicate address detection (nodad: the VIP
//     moves, and a standby that still answered would only delay the new
//     holder), deprecated (preferred lifetime 0, valid forever: never the
//     source of the gateway's own traffic, as a secondary IPv4 address is
//     not), announced by unsolicited neighbour advertisements with the
//     router and override flags (RFC 4861 7.2.6) to all nodes. IPv6 addresses carry
//     no label, and the address protocol (IFA_PROTO) came with Linux 6.0,
//     above the 5.10 cframe supports: a /128 that is nodad, noprefixroute
//     (which means nothing for a /128: a mark, not a setting), deprecated
//     and valid forever is cframe's — a shape nothing else gives an
//     address by accident. Cleanup, which knows no CIDRs, finds it too.

// VIPLabel labels the IPv4 VIP addresses cframe adds.
const VIPLabel = "cframe-vip"

// lifeForever is an address lifetime without end (INFINITY_LIFE_TIME).
const lifeForever = 0xffffffff

// vipState is what a read found about VIPs.
type vipState struct {
	// Ours are cframe's VIP addresses (both families).
	Ours []vipAddr
	// Foreign names, per desired VIP, the interface holding it that is not
	// one of cframe's VIP addresses.
	Foreign map[netip.Addr]string
	// LAN is the interface holding the LAN address (Index 0: none).
	LAN lanLink
}

// vipAddr is one of cframe's VIP addresses.
type vipAddr struct {
	Addr   netip.Addr
	Bits   int
	Link   int
	Device string
}

// lanLink is the LAN interface.
type lanLink struct {
	Index int
	Name  string
	MAC   net.HardwareAddr
}

// vip6Flags are the flags that mark cframe's IPv6 VIP.
const vip6Flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE

// isVIP6 reports whether ad has the shape of cframe's IPv6 VIP.
func isVIP6(ad netlink.Addr) bool {
	ones, _ := ad.Mask.Size()
	return ones == 128 && addrFromIP(ad.IP).Is6() && ad.Flags&vip6Flags == vip6Flags && ad.PreferedLft == 0 && ad.ValidLft == lifeForever
}

// readVIP finds cframe's VIP addresses, foreign holders of the desired
// VIPs and the LAN interface in the addresses the underlay's read listed
// (a full read only: none of it depends on the peers).
func (s *session) readVIP(r *reading) error {
	if r.keys != nil {
		return nil
	}
	v := &vipState{Foreign: map[netip.Addr]string{}}
	r.a.VIP = v
	lan := r.d.LANAddr
	if !lan.IsValid() {
		lan = r.a.LANAddr
	}
	if !lan.IsValid() {
		lan = r.a.LANAddr6 // an IPv6-only site
	}
	if r.addrs6 == nil {
		// No IPv6 CIDRs of its own (or a cleanup): still one look for a
		// VIP6 left behind.
		if err := retryDump("ipv6 addresses", func() (err error) { r.addrs6, err = s.nl.AddrList(nil, netlink.FAMILY_V6); return err }); err != nil {
			return err
		}
	}
	all := slices.Clip(r.addrs)
	for _, ad := range r.addrs6 {
		if addrFromIP(ad.IP).Is6() {
			all = append(all, ad)
		}
	}
	for _, ad := range all {
		ip := addrFromIP(ad.IP)
		ones, _ := ad.Mask.Size()
		switch {
		case ip.Is4() && ad.Label == VIPLabel, ip.Is6() && isVIP6(ad):
			v.Ours = append(v.Ours, vipAddr{Addr: ip, Bits: ones, Link: ad.LinkIndex, Device: r.name(ad.LinkIndex)})
		case ip.IsValid() && (ip == r.d.VIP || ip == r.d.VIP6):
			v.Foreign[ip] = r.name(ad.LinkIndex)
		}
		if lan.IsValid() && ip == lan {
			if l, ok := r.links[ad.LinkIndex]; ok {
				v.LAN = lanLink{Index: ad.LinkIndex, Name: l.Attrs().Name, MAC: l.Attrs().HardwareAddr}
			}
		}
	}
	return nil
}

// planVIP holds the desired VIPs on the LAN interface and removes
// cframe's other VIP addresses.
func (p *planner) planVIP() {
	v := p.a.VIP
	if v == nil || p.d.KeepVIP {
		return
	}
	held := map[netip.Addr]bool{}
	for _, h := range v.Ours {
		if (h.Addr == p.d.VIP || h.Addr == p.d.VIP6) && h.Bits == h.Addr.BitLen() && h.Link == v.LAN.Index {
			held[h.Addr] = true
			continue
		}
		p.add(stageAddrs, vipDel(h))
	}
	for _, want := range []netip.Addr{p.d.VIP, p.d.VIP6} {
		switch {
		case !want.IsValid() || held[want]:
		case v.Foreign[want] != "":
			p.conflict("", "address %s on %s is not cframe's (%s): VIP not added", want, v.Foreign[want], foreignWhy(want))
		case v.LAN.Index == 0:
			p.conflict("", "no LAN interface (no address inside the local networks): VIP %s not added", want)
		default:
			p.add(stageAddrs, vipAdd(want, v.LAN))
		}
	}
}

// foreignWhy says what an address lacks to be cframe's VIP.
func foreignWhy(a netip.Addr) string {
	if a.Is4() {
		return fmt.Sprintf("no %q label", VIPLabel)
	}
	return "not a /128 that is nodad, noprefixroute, deprecated and valid forever"
}

// VIP operations.

func vipAdd(vip netip.Addr, lan lanLink) change {
	if vip.Is6() {
		return change{desc: fmt.Sprintf("addr add %s/128 dev %s nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement", vip, lan.Name), do: func(s *session) error {
			err := s.nl.AddrAdd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: lan.Index}}, vipNetlinkAddr(vip, 128))
			if err != nil && !errors.Is(err, unix.EEXIST) {
				return err
			}
			return advertise(lan, vip)
		}}
	}
	return change{desc: fmt.Sprintf("addr add %s/32 dev %s label %s, gratuitous ARP", vip, lan.Name, VIPLabel), do: func(s *session) error {
		err := s.nl.AddrAdd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: lan.Index}}, vipNetlinkAddr(vip, 32))
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		return announce(lan, vip)
	}}
}

func vipDel(a vipAddr) change {
	desc := fmt.Sprintf("addr del %s/%d dev %s label %s", a.Addr, a.Bits, a.Device, VIPLabel)
	if a.Addr.Is6() {
		desc = fmt.Sprintf("addr del %s/%d dev %s", a.Addr, a.Bits, a.Device)
	}
	return change{desc: desc, do: func(s *session) error {
		return ignoreGone(s.nl.AddrDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.Link}}, vipNetlinkAddr(a.Addr, a.Bits)))
	}}
}

// vipNetlinkAddr is VIP address a/bits as cframe adds it: labelled for
// IPv4; nodad, noprefixroute, deprecated and valid forever for IPv6.
func vipNetlinkAddr(a netip.Addr, bits int) *netlink.Addr {
	ad := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
	if a.Is4() {
		ad.Label = VIPLabel
	} else {
		ad.Flags, ad.PreferedLft, ad.ValidLft = vip6Flags, 0, lifeForever
	}
	return ad
}

// announce broadcasts gratuitous ARP for vip on lan — two requests and a
// reply, which Linux hosts and cloud vSwitches alike take as "vip moved" —
// from a packet socket of the calling thread's namespace.
func announce(lan lanLink, vip netip.Addr) error {
	if len(lan.MAC) != 6 {
		return fmt.Errorf("gratuitous ARP on %s: no Ethernet address", lan.Name)
	}
	proto := int(htons(unix.ETH_P_ARP))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("gratuitous ARP: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: lan.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	for _, op := range []uint16{1, 2, 1} {
		if err := unix.Sendto(fd, garp(op, lan.MAC, vip), 0, to); err != nil {
			return fmt.Errorf("gratuitous ARP on %s: %w", lan.Name, err)
		}
	}
	return nil
}

// garp is a gratuitous ARP packet: sender and target protocol address are
// both vip (RFC 5227); a request's target hardware address is zero, a
// reply's the broadcast address.
func garp(op uint16, mac net.HardwareAddr, vip netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], op)
	a := vip.As4()
	copy(b[8:], mac)
	copy(b[14:], a[:])
	if op == 2 {
		copy(b[18:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	copy(b[24:], a[:])
	return b
}

// advertise sends unsolicited neighbour advertisements for vip on lan to
// all nodes (ff02::1), from vip, three times: the IPv6 counterpart of
// announce. Hosts and routers holding a neighbour entry for vip take the
// new link-layer address (the override flag); the kernel fills in the
// ICMPv6 checksum. A raw socket of the calling thread's namespace.
func advertise(lan lanLink, vip netip.Addr) error {
	if len(lan.MAC) != 6 {
		return fmt.Errorf("neighbour advertisement on %s: no Ethernet address", lan.Name)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("neighbour advertisement: %w", err)
	}
	defer unix.Close(fd)
	// RFC 4861: neighbour discovery goes with hop limit 255, which
	// receivers check.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		return fmt.Errorf("neighbour advertisement: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, lan.Index); err != nil {
		return fmt.Errorf("neighbour advertisement on %s: %w", lan.Name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: vip.As16(), ZoneId: uint32(lan.Index)}); err != nil {
		return fmt.Errorf("neighbour advertisement from %s: %w", vip, err)
	}
	to := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(lan.Index)}
	for range 3 {
		if err := unix.Sendto(fd, unsolicitedNA(lan.MAC, vip), 0, to); err != nil {
			return fmt.Errorf("neighbour advertisement on %s: %w", lan.Name, err)
		}
	}
	return nil
}

// unsolicitedNA is an ICMPv6 neighbour advertisement of vip at mac with
// the router flag (the gateway forwards: a host's entry for its next hop
// keeps saying router) and the override flag, not solicited, and the
// target link-layer address option; the checksum is left to the kernel.
func unsolicitedNA(mac net.HardwareAddr, vip netip.Addr) []byte {
	b := make([]byte, 32)
	b[0] = 136                                    // neighbour advertisement
	binary.BigEndian.PutUint32(b[4:], 0xa0000000) // router, override
	a := vip.As16()
	copy(b[8:], a[:])
	b[24], b[25] = 2, 1 // target link-layer address, 8 bytes
	copy(b[26:], mac)
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
