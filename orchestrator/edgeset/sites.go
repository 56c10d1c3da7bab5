package edgeset

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cframe/cframe/bus"
)

// Priorities of a site's gateways: higher wins a takeover from a healthy
// active gateway; equal keeps the active one.
const (
	DefaultPriority = 100
	MinPriority     = 1
	MaxPriority     = 255
)

// validateSite checks the site fields of s and carries them into e (whose
// CIDRs are already validated).
func validateSite(s Spec, e *bus.Edge) error {
	if s.Site == "" {
		switch {
		case s.Priority != nil:
			return invalid("priority needs a site: it ranks the gateways of one site (add \"site\")")
		case s.VIP != "" || s.VIP6 != "":
			return invalid("vip needs a site: it is the address the site's active gateway holds (add \"site\")")
		}
		return nil
	}
	if err := bus.CheckSite(s.Site); err != nil {
		return &InvalidError{err.Error()}
	}
	e.Site, e.Priority = s.Site, DefaultPriority
	if s.Priority != nil {
		if p := *s.Priority; p < MinPriority || p > MaxPriority {
			return invalid("priority %d is out of range (%d-%d; higher wins, default %d)", p, MinPriority, MaxPriority, DefaultPriority)
		}
		e.Priority = *s.Priority
	}
	if s.VIP != "" {
		vip, err := netip.ParseAddr(s.VIP)
		if err != nil || !vip.Is4() {
			hint := ""
			if err == nil && vip.Is6() {
				hint = "; an IPv6 VIP is vip6"
			}
			return invalid("vip %q is not an IPv4 address (like \"172.18.171.250\")%s", s.VIP, hint)
		}
		c := e.CIDR
		if !c.Contains(vip) {
			return invalid("vip %s is not inside the site's primary cidr %s", vip, c)
		}
		if c.Bits() <= 30 && (vip == c.Addr() || vip == lastAddr(c)) {
			return invalid("vip %s is the network or broadcast address of %s", vip, c)
		}
		e.VIP = vip
	}
	if s.VIP6 != "" {
		vip, err := validateVIP6(s.VIP6, e.Prefixes())
		if err != nil {
			return err
		}
		e.VIP6 = vip
	}
	return nil
}

// validateVIP6 checks an IPv6 VIP: inside one of the site's IPv6 CIDRs,
// and not its subnet-router anycast address (the prefix's first).
func validateVIP6(s string, cidrs []netip.Prefix) (netip.Addr, error) {
	vip, err := netip.ParseAddr(s)
	if err != nil || !vip.Is6() || vip.Is4In6() || vip.Zone() != "" {
		return netip.Addr{}, invalid("vip6 %q is not an IPv6 address (like \"2001:db8:18::fa\")", s)
	}
	var six []string
	for _, c := range cidrs {
		if !c.Addr().Is6() {
			continue
		}
		six = append(six, c.String())
		if !c.Contains(vip) {
			continue
		}
		if c.Bits() < 128 && vip == c.Masked().Addr() {
			return netip.Addr{}, invalid("vip6 %s is the subnet-router anycast address of %s", vip, c)
		}
		return vip, nil
	}
	if len(six) == 0 {
		return netip.Addr{}, invalid("vip6 %s needs an IPv6 cidr of the site to lie in (it has none)", vip)
	}
	return netip.Addr{}, invalid("vip6 %s is not inside the site's IPv6 cidrs %s", vip, strings.Join(six, ","))
}

// lastAddr is the highest address of p (its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// siteConflict compares e with another edge o. same reports that both
// are gateways of one site, which is one owner of its networks: then msg
// says how e disagrees with o (CIDRs, VIP), if it does. For edges of
// different sites msg says whether a site name clashes with the name of an
// edge that is a site of its own.
func siteConflict(e, o bus.Edge) (msg string, same bool) {
	switch {
	case e.Site != "" && o.Site == "" && e.Site == o.Name:
		return fmt.Sprintf("site %s of edge %s is the name of edge %s, which is a site of its own: pick another site name", e.Site, e.Name, o.Name), false
	case e.Site == "" && o.Site != "" && o.Site == e.Name:
		return fmt.Sprintf("edge name %s is the site of edge %s: pick another name", e.Name, o.Name), false
	case e.Site == "" || e.Site != o.Site:
		return "", false
	}
	var diff []string
	if e.CIDR != o.CIDR {
		diff = append(diff, fmt.Sprintf("its primary cidr is %s, not %s", e.CIDR, o.CIDR))
	}
	if lacks := missing(o.ExtraCIDRs, e.ExtraCIDRs); len(lacks) > 0 {
		diff = append(diff, "it lacks "+strings.Join(lacks, ","))
	}
	if extra := missing(e.ExtraCIDRs, o.ExtraCIDRs); len(extra) > 0 {
		diff = append(diff, "it has "+strings.Join(extra, ",")+", which "+o.Name+" has not")
	}
	if len(diff) > 0 {
		return fmt.Sprintf("site %s: edge %s must carry the same cidrs as gateway %s (%s): %s",
			e.Site, e.Name, o.Name, prefixList(o.Prefixes()), strings.Join(diff, ", ")), true
	}
	if e.VIP != o.VIP {
		return fmt.Sprintf("site %s: edge %s gives vip %s but gateway %s has %s: the gateways of a site share one vip",
			e.Site, e.Name, addrOrNone(e.VIP), o.Name, addrOrNone(o.VIP)), true
	}
	if e.VIP6 != o.VIP6 {
		return fmt.Sprintf("site %s: edge %s gives vip6 %s but gateway %s has %s: the gateways of a site share one vip6",
			e.Site, e.Name, addrOrNone(e.VIP6), o.Name, addrOrNone(o.VIP6)), true
	}
	return "", true
}

// missing returns the prefixes of want that have does not hold.
func missing(want, have []netip.Prefix) []string {
	var out []string
	for _, p := range want {
		if !slices.Contains(have, p) {
			out = append(out, p.String())
		}
	}
	return out
}

func prefixList(ps []netip.Prefix) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ",")
}

func addrOrNone(a netip.Addr) string {
	if a.IsValid() {
		return a.String()
	}
	return "none"
}
