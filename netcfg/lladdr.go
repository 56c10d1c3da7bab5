package netcfg

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The tunnel's link-local address: the VXLAN device's one IPv6 address,
// Desired.LinkLocal, which the peers hold a permanent neighbor for
// (neigh6.go). The device generates no address of its own (addr_gen_mode
// none), so that this edge's probes and HA messages leave from the address
// the peers know; the address is added without duplicate detection (there
// is nothing to detect: every edge derives its address from its unique
// VTEP MAC). Everything here is on cframe's own device.

// tunnelIPv6 is the IPv6 state of the VXLAN device.
type tunnelIPv6 struct {
	// Available: the host has IPv6 at all.
	Available bool
	// Disabled: disable_ipv6 is set on the device.
	Disabled bool
	// GenNone: addr_gen_mode is 1 (none).
	GenNone bool
	// LinkLocals are the device's link-local addresses.
	LinkLocals []linkLocal
}

// linkLocal is one link-local address of the device.
type linkLocal struct {
	Addr netip.Addr
	// Failed: duplicate address detection failed (it is unusable).
	Failed bool
}

func ipv6Conf(dev, key string) string { return "/proc/sys/net/ipv6/conf/" + dev + "/" + key }

// readLinkLocal reads the IPv6 state of the desired VXLAN device when it is
// ours and a link-local address is desired (a full read only: it does not
// depend on the peers).
func (s *session) readLinkLocal(r *reading) error {
	dev := r.tunnel
	if r.keys != nil || dev == nil || !r.d.LinkLocal.IsValid() {
		return nil
	}
	t := &tunnelIPv6{}
	r.a.TunnelIPv6 = t
	disabled, err := os.ReadFile(ipv6Conf(dev.Name, "disable_ipv6"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no IPv6 on this host
	}
	if err != nil {
		return fmt.Errorf("netcfg: read %s: %w", ipv6Conf(dev.Name, "disable_ipv6"), err)
	}
	gen, err := os.ReadFile(ipv6Conf(dev.Name, "addr_gen_mode"))
	if err != nil {
		return fmt.Errorf("netcfg: read %s: %w", ipv6Conf(dev.Name, "addr_gen_mode"), err)
	}
	t.Available = true
	t.Disabled = strings.TrimSpace(string(disabled)) != "0"
	t.GenNone = strings.TrimSpace(string(gen)) == "1"
	var addrs []netlink.Addr
	if err := retryDump("ipv6 addresses", func() (err error) {
		addrs, err = s.nl.AddrList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: dev.Index}}, netlink.FAMILY_V6)
		return err
	}); err != nil {
		return err
	}
	for _, a := range addrs {
		if ip := addrFromIP(a.IP); ip.IsLinkLocalUnicast() {
			t.LinkLocals = append(t.LinkLocals, linkLocal{ip, a.Flags&unix.IFA_F_DADFAILED != 0})
		}
	}
	return nil
}

// planLinkLocal gives the VXLAN device its link-local address, and nothing
// but it.
func (p *planner) planLinkLocal() {
	dev, want := p.d.Device, p.d.LinkLocal
	if p.d.Mode != ModeVXLAN || !want.IsValid() || !p.usable[dev] {
		return
	}
	if p.fresh[dev] {
		// Created by this plan, with IPv6 prepared before it came up.
		p.add(stageAddrs, linkLocalAdd(dev, want))
		return
	}
	t := p.a.TunnelIPv6
	switch {
	case t == nil:
		return // not read (an Update): nothing of it depends on the peers
	case !t.Available:
		p.conflict("", "IPv6 is not available on this host: %s gets no link-local address, so its peers cannot probe it through the tunnel and gateway HA messages cannot reach it", dev)
		return
	}
	if !t.GenNone {
		p.add(stageAddrs, ipv6Sysctl(dev, "addr_gen_mode", "1", "no kernel-generated addresses"))
	}
	if t.Disabled {
		p.add(stageAddrs, ipv6Sysctl(dev, "disable_ipv6", "0", ""))
	}
	have := false
	for _, a := range t.LinkLocals {
		if a.Addr == want && !a.Failed {
			have = true
		} else {
			p.add(stageAddrs, linkLocalDel(dev, a.Addr))
		}
	}
	if !have {
		p.add(stageAddrs, linkLocalAdd(dev, want))
	}
}

// Link-local address operations.

func linkLocalNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(64, 128)}
}

func linkLocalAdd(dev string, a netip.Addr) change {
	return change{desc: fmt.Sprintf("addr add %s/64 dev %s nodad", a, dev), do: func(s *session) error {
		return s.onLink(dev, func(l netlink.Link) error {
			err := s.nl.AddrAdd(l, &netlink.Addr{IPNet: linkLocalNet(a), Flags: unix.IFA_F_NODAD, Scope: int(netlink.SCOPE_LINK)})
			if errors.Is(err, unix.EEXIST) {
				return nil
			}
			return err
		})
	}}
}

func linkLocalDel(dev string, a netip.Addr) change {
	return change{desc: fmt.Sprintf("addr del %s/64 dev %s", a, dev), do: func(s *session) error {
		return ignoreGone(s.onLink(dev, func(l netlink.Link) error { return s.nl.AddrDel(l, &netlink.Addr{IPNet: linkLocalNet(a)}) }))
	}}
}

func ipv6Sysctl(dev, key, value, why string) change {
	desc := fmt.Sprintf("sysctl net.ipv6.conf.%s.%s=%s", dev, key, value)
	if why != "" {
		desc += " (" + why + ")"
	}
	return change{desc: desc, do: func(*session) error {
		return os.WriteFile(ipv6Conf(dev, key), []byte(value+"\n"), 0o644)
	}}
}

// prepareIPv6 readies VXLAN device name being created, before it comes
// up: no kernel-generated addresses, IPv6 on (linkAdd calls it). A host
// without IPv6 is left as it is: planLinkLocal reports it.
func prepareIPv6(s *session, dev netlink.Link, name string) error {
	err := s.nl.LinkSetIP6AddrGenMode(dev, 1)
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("addrgenmode none: %w", err)
	}
	err = os.WriteFile(ipv6Conf(name, "disable_ipv6"), []byte("0\n"), 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
