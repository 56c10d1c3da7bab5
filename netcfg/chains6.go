package netcfg

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ip6tables chains: the IPv6 counterparts of the iptables chains
// (chains.go), with the same names, rules and hooks, for the mesh's IPv6
// CIDRs: FORWARD accepts between the tunnel and the local IPv6 networks,
// the MSS clamp (IPv6's header is 20 bytes longer than IPv4's, so the MSS
// is the tunnel MTU minus 60), and under Masquerade the SNAT of the peers'
// IPv6 networks (setNets6) into the local ones. They exist only while the
// edge has IPv6 CIDRs of its own (wantsIPv6); an edge without has none of
// them (and stale ones go). On an edge whose underlay is IPv6 the tunnel
// port's INPUT filter joins them (underlay6.go).
//
// In actual.Chains and in changes an ip6tables table is its name with the
// table6 prefix ("ip6:filter"), so that the chains of both programs share
// one map and the planner's chain and hook steps work on either.

// table6 prefixes the name of an ip6tables table.
const table6 = "ip6:"

// cutTable6 returns an ip6tables table's name without table6, and whether
// it is one.
func cutTable6(table string) (string, bool) { return strings.CutPrefix(table, table6) }

// The ip6tables chains cframe owns.
var (
	chainForward6 = chain{table6 + "filter", "CFRAME-FORWARD"}
	chainMSS6     = chain{table6 + "mangle", "CFRAME-MSS"}
	chainNAT6     = chain{table6 + "nat", "CFRAME-POSTROUTING"}
)

// hooks6 maps each owned ip6tables chain to the built-in chain that jumps
// to it.
var hooks6 = []struct{ own, from chain }{
	{chainForward6, chain{table6 + "filter", "FORWARD"}},
	{chainInput6, chain{table6 + "filter", "INPUT"}},
	{chainMSS6, chain{table6 + "mangle", "FORWARD"}},
	{chainNAT6, chain{table6 + "nat", "POSTROUTING"}},
}

// ipv6Overhead is how much longer IPv6's header is than IPv4's: the MSS
// clamp of IPv6 connections is that much lower.
const ipv6Overhead = 20

// readChains6 adds the ip6tables chains to chains, with one
// ip6tables-save. A host without ip6tables has none; a failing
// ip6tables-save is an error only when the edge wants IPv6 chains (it has
// IPv6 CIDRs or an IPv6 underlay). An edge that wants none reads them only
// until a read finds none of cframe's (the Kernel's quiet6): cframe creates
// them only when wanted, so until then there is nothing to remove, and an
// IPv4-only edge runs no ip6tables at all in its steady state. With the
// nf_tables flavour not even its first read does: one netlink dump of the
// ip6 family's chains tells that none of cframe's exists (ip6tables is
// taken to be of iptables' flavour, as distributions switch them).
func (s *session) readChains6(r *reading, chains map[chain][]string) error {
	want := wantsIPv6(r.d) || r.d.underlay6()
	ns, nsErr := threadNS()
	if !want && nsErr == nil && s.k.quiet6[ns] {
		return nil
	}
	if !want && nsErr == nil && s.k.ipt.nft {
		if own, err := s.nftOwnChains6(); err == nil && !own {
			if s.k.quiet6 == nil {
				s.k.quiet6 = map[nsID]bool{}
			}
			s.k.quiet6[ns] = true
			return nil
		}
	}
	ipt6 := s.k.ip6tables()
	if ipt6 == nil {
		return nil
	}
	out, err := s.execute("", ipt6.save)
	switch {
	case err != nil && want:
		return fmt.Errorf("netcfg: %w", err)
	case err != nil:
		return nil
	}
	found := parseSave(string(out), table6)
	quiet := nsErr == nil
	for _, h := range hooks6 {
		if _, ok := found[h.own]; ok || slices.Contains(found[h.from], jumpRule(h.from, h.own).line()) {
			quiet = false
		}
	}
	if s.k.quiet6 == nil {
		s.k.quiet6 = map[nsID]bool{}
	}
	s.k.quiet6[ns] = quiet
	maps.Copy(chains, found)
	return nil
}

// planChains6 makes cframe's ip6tables chains hold exactly the rules for
// the usable tunnel devices and the local IPv6 networks while the edge has
// IPv6 CIDRs, and the tunnel port's filter while its underlay is IPv6; the
// chains not wanted go.
func (p *planner) planChains6() {
	overlay, underlay := wantsIPv6(&p.d), p.d.underlay6()
	if (overlay || underlay) && !p.a.IP6tables {
		p.conflict("", "ip6tables is not installed: the edge's IPv6 traffic gets no FORWARD rules, MSS clamping, masquerading or tunnel port filter")
		return
	}
	want := map[chain][]rule{}
	if overlay {
		for _, dev := range p.tunnels {
			for _, local := range p.d.LocalCIDRs {
				if isV6(local) {
					for _, r := range forwardRules(dev, local) {
						want[chainForward6] = append(want[chainForward6], rule{chainForward6, r.args})
					}
				}
			}
			want[chainMSS6] = append(want[chainMSS6], clampRules(chainMSS6, dev, p.mtu-40-ipv6Overhead)...)
		}
	}
	masquerade := overlay && p.d.Masquerade && p.setReady[setNets6]
	if masquerade {
		for _, local := range p.d.LocalCIDRs {
			if isV6(local) {
				want[chainNAT6] = append(want[chainNAT6], snatRule(chainNAT6, setNets6, local, p.lan6))
			}
		}
	}
	if underlay {
		want[chainInput6] = input6Rules(p.d.Port, p.setReady[setPeers6])
	}
	for _, h := range hooks6 {
		wanted := overlay
		switch h.own {
		case chainNAT6:
			wanted = masquerade
		case chainInput6:
			wanted = underlay
		}
		if !wanted {
			p.removeChain(h.own, h.from)
			continue
		}
		p.syncChain(h.own, want[h.own], h.own == chainInput6)
		p.syncHook(h.from, h.own)
	}
}

// nftOwnChains6 reports whether the nftables ruleset of the ip6 family has
// a chain named like one of cframe's (NFT_MSG_GETCHAIN, one dump).
func (s *session) nftOwnChains6() (bool, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETCHAIN, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.NFPROTO_IPV6, Version: nl.NFNETLINK_V0})
	own := false
	err := s.send(unix.NETLINK_NETFILTER, req, func(m []byte) error {
		if len(m) >= nl.SizeofNfgenmsg {
			walkAttrs(m[nl.SizeofNfgenmsg:], func(typ uint16, v []byte) {
				if typ == unix.NFTA_CHAIN_NAME {
					name := unix.ByteSliceToString(v)
					own = own || slices.ContainsFunc(hooks6, func(h struct{ own, from chain }) bool { return h.own.Name == name })
				}
			})
		}
		return nil
	})
	return own, err
}
