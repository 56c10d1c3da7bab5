package netcfg

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Sysctls: net.ipv4.ip_forward, which an edge needs on (it routes between
// the tunnel and its LAN). cframe only ever turns it on.

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// readIPForward reads net.ipv4.ip_forward.
func (s *session) readIPForward(r *reading) error {
	fw, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("netcfg: read ip_forward: %w", err)
	}
	r.a.IPForward = strings.TrimSpace(string(fw)) == "1"
	return s.readIPForward6(r)
}

// planIPForward turns forwarding on, first of all.
func (p *planner) planIPForward() {
	if !p.a.IPForward {
		p.add(stageSysctl, ipForwardOn())
	}
	p.planIPForward6()
}

func ipForwardOn() change {
	return change{desc: "sysctl net.ipv4.ip_forward=1", do: func(*session) error {
		return os.WriteFile(ipForwardPath, []byte("1\n"), 0o644)
	}}
}

// net.ipv6.conf.all.forwarding, which an edge with IPv6 CIDRs of its own
// needs on (wantsIPv6), and which cframe leaves alone otherwise: forwarding
// makes the kernel ignore router advertisements on interfaces with
// accept_ra=1, so a host that gets its IPv6 default route from them (by
// SLAAC) must set accept_ra=2 on its LAN interface before it carries IPv6
// CIDRs — the operator's choice, never cframe's.

const ip6ForwardPath = "/proc/sys/net/ipv6/conf/all/forwarding"

// readIPForward6 reads net.ipv6.conf.all.forwarding when the edge has IPv6
// CIDRs (a host without IPv6 has none: actual.IPv6 stays false).
func (s *session) readIPForward6(r *reading) error {
	if !wantsIPv6(r.d) {
		return nil
	}
	fw, err := os.ReadFile(ip6ForwardPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netcfg: read ipv6 forwarding: %w", err)
	}
	r.a.IPv6, r.a.IPForward6 = true, strings.TrimSpace(string(fw)) == "1"
	return nil
}

// planIPForward6 turns IPv6 forwarding on when the edge has IPv6 CIDRs.
func (p *planner) planIPForward6() {
	switch {
	case !wantsIPv6(&p.d):
	case !p.a.IPv6:
		p.conflict("", "IPv6 is not available on this host: its IPv6 CIDRs are not forwarded")
	case !p.a.IPForward6:
		p.add(stageSysctl, change{desc: "sysctl net.ipv6.conf.all.forwarding=1", do: func(*session) error {
			return os.WriteFile(ip6ForwardPath, []byte("1\n"), 0o644)
		}})
	}
}

// wantsIPv6 reports whether the edge of d takes part in IPv6: whether it
// has IPv6 CIDRs of its own. Only then does it forward IPv6 and route the
// peers' IPv6 CIDRs (an edge without IPv6 networks has no one to route
// them for), so that it depends on nothing an Update may change.
func wantsIPv6(d *Desired) bool { return slices.ContainsFunc(d.LocalCIDRs, isV6) }

func isV6(p netip.Prefix) bool { return p.Addr().Is6() }
