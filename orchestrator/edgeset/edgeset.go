// Package edgeset holds the rules an edge must satisfy to join the mesh: a
// well-formed name, underlay address, CIDRs and site fields (Validate), and
// no overlap with any other site, and agreement with the other gateways of
// its own site (CheckConflicts, sites.go). It is pure: no I/O, no locking,
// so a store's compare-and-swap loop can run it on every attempt.
package edgeset

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"unicode"

	"github.com/cframe/cframe/bus"
)

// Spec is an edge as posted to POST /api-service/v1/edge/add; the field
// names are the reference walkthrough's ("hostaddr", "cidr").
type Spec struct {
	Name     string `json:"name"`
	HostAddr string `json:"hostaddr"`
	CIDR     string `json:"cidr"`
	Comment  string `json:"comment,omitempty"`
	// ExtraCIDRs are further networks behind the same edge (k8s pod and
	// service ranges).
	ExtraCIDRs []string `json:"extra_cidrs,omitempty"`
	// Site, Priority, VIP and VIP6 make the edge one gateway of a site
	// (gateway HA, see sites.go); all optional. VIP is IPv4, VIP6 IPv6.
	Site     string `json:"site,omitempty"`
	Priority *int   `json:"priority,omitempty"`
	VIP      string `json:"vip,omitempty"`
	VIP6     string `json:"vip6,omitempty"`
}

// InvalidError is a malformed Spec (HTTP 400).
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

// ConflictError is a well-formed edge that clashes with another one (HTTP 409).
type ConflictError struct{ Msg string }

func (e *ConflictError) Error() string { return e.Msg }

func invalid(format string, a ...any) error { return &InvalidError{fmt.Sprintf(format, a...)} }

// MaxCommentLen bounds the free-text comment.
const MaxCommentLen = 256

// MaxCIDRs bounds the number of networks behind one edge.
const MaxCIDRs = 64

// reserved are ranges that can never be routed through the mesh.
var reserved = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\""},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::1/128"), "IPv6 loopback"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped IPv6"},
	{netip.MustParsePrefix("fe80::/10"), "IPv6 link-local"},
	{netip.MustParsePrefix("ff00::/8"), "IPv6 multicast"},
}

// Validate turns a Spec into an Edge, or explains in one sentence what is
// wrong with it. The CIDRs may be IPv4 and IPv6, mixed in any order (a
// dual-stack VPC is its IPv4 CIDR plus its IPv6 block); overlaps are
// checked within each family (networks of different families never
// overlap).
func Validate(s Spec) (bus.Edge, error) {
	if err := bus.CheckName(s.Name); err != nil {
		return bus.Edge{}, &InvalidError{err.Error()}
	}
	e := bus.Edge{Name: s.Name, Comment: s.Comment}
	if len(s.Comment) > MaxCommentLen {
		return e, invalid("comment is longer than %d bytes", MaxCommentLen)
	}
	if strings.IndexFunc(s.Comment, unicode.IsControl) >= 0 {
		return e, invalid("comment contains control characters")
	}
	hostAddr, err := parseHostAddr(s.HostAddr)
	if err != nil {
		return e, err
	}
	e.HostAddr = hostAddr
	if s.CIDR == "" {
		return e, invalid("cidr is required (the network behind the edge, like \"172.18.0.0/16\")")
	}
	if len(s.ExtraCIDRs) >= MaxCIDRs {
		return e, invalid("too many extra_cidrs (at most %d)", MaxCIDRs-1)
	}
	var all []netip.Prefix
	for i, raw := range append([]string{s.CIDR}, s.ExtraCIDRs...) {
		p, err := parseCIDR(raw)
		if err != nil {
			return e, err
		}
		for _, q := range all {
			if p.Overlaps(q) {
				return e, invalid("cidr %s overlaps %s of the same edge", p, q)
			}
		}
		if p.Contains(hostAddr.Addr()) {
			return e, invalid("hostaddr %s lies inside the edge's own cidr %s: peers would route tunnel traffic into the tunnel", hostAddr.Addr(), p)
		}
		all = append(all, p)
		if i == 0 {
			e.CIDR = p
		} else {
			e.ExtraCIDRs = append(e.ExtraCIDRs, p)
		}
	}
	return e, validateSite(s, &e)
}

func parseHostAddr(raw string) (netip.AddrPort, error) {
	if raw == "" {
		return netip.AddrPort{}, invalid("hostaddr is required (the edge's public IP and tunnel port, like \"203.0.113.10:58423\")")
	}
	ap, err := netip.ParseAddrPort(raw)
	if err != nil {
		return ap, invalid("hostaddr %q is not IP:port (like \"203.0.113.10:58423\"; host names are not accepted)", raw)
	}
	a := ap.Addr().Unmap()
	switch {
	case a.Zone() != "" || a.Is6() && a.IsLinkLocalUnicast():
		return ap, invalid("hostaddr %q: an IPv6 link-local address reaches no other network: use the edge's global IPv6 address", raw)
	case ap.Port() == 0:
		return ap, invalid("hostaddr %q: port 0 is not a tunnel port", raw)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return ap, invalid("hostaddr %q: %s is not a unicast address peers can reach", raw, a)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

func parseCIDR(raw string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(raw)
	if err != nil {
		return p, invalid("cidr %q is not a network in CIDR notation (like \"172.18.0.0/16\")", raw)
	}
	if p.Bits() == 0 {
		return p, invalid("cidr %q would route everything through the mesh", raw)
	}
	if m := p.Masked(); m != p {
		return p, invalid("cidr %q is not a network address: did you mean %s?", raw, m)
	}
	for _, r := range reserved {
		if p.Overlaps(r.p) {
			return p, invalid("cidr %q overlaps the %s range %s", raw, r.what, r.p)
		}
	}
	return p, nil
}

// CheckConflicts reports how e clashes with the other edges of set (an edge
// of the same name is the one being replaced and is ignored): CIDRs
// overlapping another site's, an underlay address inside another site's
// network, an underlay address and port already taken, or disagreement with
// the other gateways of its own site (sites.go).
func CheckConflicts(set map[string]bus.Edge, e bus.Edge) error {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	var msgs []string
	for _, n := range names {
		o := set[n]
		if o.Name == e.Name {
			continue
		}
		if msg, same := siteConflict(e, o); same || msg != "" {
			if msg != "" {
				msgs = append(msgs, msg)
			}
			if o.HostAddr == e.HostAddr {
				msgs = append(msgs, fmt.Sprintf("hostaddr %s of edge %s is already used by edge %s", e.HostAddr, e.Name, o.Name))
			}
			continue
		}
		for _, p := range e.Prefixes() {
			for _, q := range o.Prefixes() {
				if p.Overlaps(q) {
					msgs = append(msgs, fmt.Sprintf("cidr %s of edge %s overlaps cidr %s of edge %s", p, e.Name, q, o.Name))
				}
			}
			if p.Contains(o.HostAddr.Addr()) {
				msgs = append(msgs, fmt.Sprintf("cidr %s of edge %s contains hostaddr %s of edge %s", p, e.Name, o.HostAddr.Addr(), o.Name))
			}
		}
		for _, q := range o.Prefixes() {
			if q.Contains(e.HostAddr.Addr()) {
				msgs = append(msgs, fmt.Sprintf("hostaddr %s of edge %s lies inside cidr %s of edge %s", e.HostAddr.Addr(), e.Name, q, o.Name))
			}
		}
		if o.HostAddr == e.HostAddr {
			msgs = append(msgs, fmt.Sprintf("hostaddr %s of edge %s is already used by edge %s", e.HostAddr, e.Name, o.Name))
		}
	}
	if len(msgs) > 0 {
		return &ConflictError{strings.Join(msgs, "; ")}
	}
	return nil
}
