package main

import (
	"errors"

	"github.com/cframe/cframe/internal/topo"
)

// The IPv6-underlay rows: the same two VPCs and the same IPv4 traffic, the
// tunnel between the edges' IPv6 public addresses — cframe with IPv6
// hostaddrs, and the kernel's VXLAN over IPv6 configured by hand with the
// same checksum setting, the reference for it.

const (
	// cframeUnderlay6 names cframe over the IPv6 underlay.
	cframeUnderlay6 = "cframe-v6underlay"
	// kernelVXLAN6Csum names the hand-configured VXLAN over IPv6.
	kernelVXLAN6Csum = "kernel-vxlan6+csum"
)

func prepareCframe6(o Options) (string, error) {
	about, err := prepareCframe(o)
	if err != nil {
		return "", err
	}
	return "as cframe, with the edges added by their IPv6 public addresses: the VXLAN device over IPv6, MTU 1430 (the IPv6 underlay's 70 bytes). " + about, nil
}

func prepareKernelVXLAN6Csum(Options) (string, error) {
	return "kernel-vxlan+csum over the IPv6 underlay: the VXLAN device with the edge's IPv6 public address as local address, MTU 1430, " +
		"one all-zeros FDB entry toward the other edge's IPv6 address; the reference for cframe-v6underlay", nil
}

// upKernelVXLAN6 is upKernelVXLAN(kernelVXLANCsum) over the IPv6 underlay.
func upKernelVXLAN6(b *bed) (func() error, error) {
	var made []string
	down := func() error {
		var errs []error
		for _, ns := range made {
			_, err := b.t.Net.Exec(ns, "ip", "link", "del", kernelVXLANDevice)
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	addr := func(s *topo.Site) string {
		if s == b.a {
			return "10.97.0.1"
		}
		return "10.97.0.2"
	}
	for _, s := range b.sites() {
		p := b.peer(s)
		for i, args := range [][]string{
			{"ip", "link", "add", kernelVXLANDevice, "type", "vxlan", "id", "97", "dstport", "4797", "nolearning", "local", s.Underlay6().String()},
			{"ip", "addr", "add", addr(s) + "/24", "dev", kernelVXLANDevice},
			{"ip", "link", "set", kernelVXLANDevice, "mtu", "1430", "up"},
			{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", kernelVXLANDevice, "dst", p.Underlay6().String()},
			{"ip", "route", "add", p.CIDR.String(), "via", addr(p), "dev", kernelVXLANDevice},
			{"ethtool", "-K", kernelVXLANDevice, "tx", "off"},
		} {
			if _, err := b.t.Net.Exec(s.Edge, args...); err != nil {
				return nil, errors.Join(err, down())
			}
			if i == 0 {
				made = append(made, s.Edge)
			}
		}
	}
	return down, nil
}
