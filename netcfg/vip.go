package netcfg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The VIP: a site's virtual IP, held by its active gateway only
// (Desired.VIP) as an IPv4 /32 on the LAN interface — the one holding the
// LAN address — and announced with gratuitous ARP as it is added, so that
// the VPC router and the hosts send to this gateway at once. It carries the
// label VIPLabel: an address with that label is cframe's, and no other
// address is ever removed. Desired.KeepVIP leaves cframe's VIP addresses as
// they are (a restarting agent that has not yet confirmed its role).

// VIPLabel labels the VIP addresses cframe adds.
const VIPLabel = "cframe-vip"

// vipState is what a read found about VIPs.
type vipState struct {
	// Ours are the addresses with VIPLabel.
	Ours []vipAddr
	// Foreign names the interface holding the desired VIP without
	// cframe's label ("": none).
	Foreign string
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

// readVIP finds cframe's VIP addresses, a foreign holder of the desired
// VIP and the LAN interface in the addresses the underlay's read listed (a
// full read only: none of it depends on the peers).
func (s *session) readVIP(r *reading) error {
	if r.keys != nil {
		return nil
	}
	v := &vipState{}
	r.a.VIP = v
	lan := r.d.LANAddr
	if !lan.IsValid() {
		lan = r.a.LANAddr
	}
	for _, ad := range r.addrs {
		ip := addrFromIP(ad.IP)
		ones, _ := ad.Mask.Size()
		switch {
		case ad.Label == VIPLabel:
			v.Ours = append(v.Ours, vipAddr{Addr: ip, Bits: ones, Link: ad.LinkIndex, Device: r.name(ad.LinkIndex)})
		case r.d.VIP.IsValid() && ip == r.d.VIP:
			v.Foreign = r.name(ad.LinkIndex)
		}
		if lan.IsValid() && ip == lan {
			if l, ok := r.links[ad.LinkIndex]; ok {
				v.LAN = lanLink{Index: ad.LinkIndex, Name: l.Attrs().Name, MAC: l.Attrs().HardwareAddr}
			}
		}
	}
	return nil
}

// planVIP holds the desired VIP on the LAN interface and removes cframe's
// other VIP addresses.
func (p *planner) planVIP() {
	v := p.a.VIP
	if v == nil || p.d.KeepVIP {
		return
	}
	want, held := p.d.VIP, false
	for _, h := range v.Ours {
		if want.IsValid() && h.Addr == want && h.Bits == 32 && h.Link == v.LAN.Index {
			held = true
			continue
		}
		p.add(stageAddrs, vipDel(h))
	}
	switch {
	case !want.IsValid() || held:
	case v.Foreign != "":
		p.conflict("", "address %s on %s is not cframe's (no %q label): VIP not added", want, v.Foreign, VIPLabel)
	case v.LAN.Index == 0:
		p.conflict("", "no LAN interface (no address inside the local networks): VIP %s not added", want)
	default:
		p.add(stageAddrs, vipAdd(want, v.LAN))
	}
}

// VIP operations.

func vipAdd(vip netip.Addr, lan lanLink) change {
	return change{desc: fmt.Sprintf("addr add %s/32 dev %s label %s, gratuitous ARP", vip, lan.Name, VIPLabel), do: func(s *session) error {
		err := s.nl.AddrAdd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: lan.Index}},
			&netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Label: VIPLabel})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		return announce(lan, vip)
	}}
}

func vipDel(a vipAddr) change {
	return change{desc: fmt.Sprintf("addr del %s/%d dev %s label %s", a.Addr, a.Bits, a.Device, VIPLabel), do: func(s *session) error {
		return ignoreGone(s.nl.AddrDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.Link}},
			&netlink.Addr{IPNet: &net.IPNet{IP: a.Addr.AsSlice(), Mask: net.CIDRMask(a.Bits, 32)}, Label: VIPLabel}))
	}}
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

func htons(v uint16) uint16 { return v<<8 | v>>8 }
