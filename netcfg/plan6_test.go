package netcfg

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The dual-stack fixture: the edge of VPC3 with an IPv6 block of its own
// (2001:db8:20::/48, LAN address 2001:db8:20::9) and peers VPC1 and VPC2
// with theirs, every edge with its link-local address on the tunnel.

func dualDesired() *Desired {
	d := baseDesired()
	d.LocalCIDRs = append(d.LocalCIDRs, pfx("2001:db8:20::/48"))
	d.LinkLocal = ip("fe80::3")
	d.Peers[0].CIDRs, d.Peers[0].LinkLocal = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48")), ip("fe80::2")
	d.Peers[1].CIDRs, d.Peers[1].LinkLocal = append(d.Peers[1].CIDRs, pfx("2001:db8:18::/48")), ip("fe80::1")
	return d
}

func dualScratch() *actual {
	a := scratchActual()
	a.LANAddr6, a.IPv6, a.IP6tables = ip("2001:db8:20::9"), true, true
	a.Chains[chain{table6 + "filter", "FORWARD"}] = []string{}
	a.Chains[chain{table6 + "mangle", "FORWARD"}] = []string{}
	a.Chains[chain{table6 + "nat", "POSTROUTING"}] = []string{}
	return a
}

// The IPv6 lines of the dual-stack edge, as ip6tables -S prints them: the
// MSS is the tunnel MTU 1450 less 40 bytes of IPv6 header and 20 of TCP.
const (
	fwd6In  = "-A CFRAME-FORWARD -d 2001:db8:20::/48 -i cframe0 -j ACCEPT"
	fwd6Out = "-A CFRAME-FORWARD -s 2001:db8:20::/48 -o cframe0 -j ACCEPT"
	mss6Out = "-A CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390"
	mss6In  = "-A CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390"
)

func dualConverged() *actual {
	a := convergedActual()
	a.LANAddr6, a.IPv6, a.IP6tables, a.IPForward6 = ip("2001:db8:20::9"), true, true, true
	a.TunnelIPv6 = &tunnelIPv6{Available: true, GenNone: true, LinkLocals: []linkLocal{{Addr: ip("fe80::3")}}}
	a.Neighbors6 = []neighbor{{Device: "cframe0", IP: ip("fe80::1"), MAC: mac(1)}, {Device: "cframe0", IP: ip("fe80::2"), MAC: mac(2)}}
	ours6 := func(dst, gw string) route {
		return route{Dst: pfx(dst), Gw: ip(gw), Device: "cframe0", Src: ip("2001:db8:20::9"), Protocol: RouteProtocol, Metric: 1024}
	}
	a.Routes = append(a.Routes, ours6("2001:db8:18::/48", "fe80::1"), ours6("2001:db8:31::/48", "fe80::2"))
	a.Chains[chainForward6] = []string{fwd6In, fwd6Out}
	a.Chains[chain{table6 + "filter", "FORWARD"}] = []string{jumpFwd}
	a.Chains[chainMSS6] = []string{mss6Out, mss6In}
	a.Chains[chain{table6 + "mangle", "FORWARD"}] = []string{jumpMSS}
	a.Chains[chain{table6 + "nat", "POSTROUTING"}] = []string{}
	return a
}

// about6 tells whether a change is about IPv6.
func about6(c string) bool {
	return strings.Contains(c, "ipv6") || strings.Contains(c, "ip6tables") || strings.Contains(c, "nets6") ||
		strings.Contains(c, "fe80::") || strings.Contains(c, "2001:db8:")
}

func TestPlan6(t *testing.T) {
	tests := []struct {
		name    string
		desired func(d *Desired)
		actual  func() *actual
		// want are the changes; with only6 the IPv6 ones among them, with
		// only4 the others.
		want          []string
		only6, only4  bool
		wantConflicts []string
	}{
		{
			name:   "from scratch",
			actual: dualScratch,
			only6:  true,
			want: []string{
				"sysctl net.ipv6.conf.all.forwarding=1",
				"addr add fe80::3/64 dev cframe0 nodad",
				"ip6tables -t filter -N CFRAME-FORWARD",
				"ip6tables -t filter -I CFRAME-FORWARD 1 -s 2001:db8:20::/48 -o cframe0 -j ACCEPT",
				"ip6tables -t filter -I CFRAME-FORWARD 1 -d 2001:db8:20::/48 -i cframe0 -j ACCEPT",
				"ip6tables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
				"ip6tables -t mangle -N CFRAME-MSS",
				"ip6tables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
				"ip6tables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
				"ip6tables -t mangle -I FORWARD 1 -j CFRAME-MSS",
				"neigh add fe80::1 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add fe80::2 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 2001:db8:18::/48 via fe80::1 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
				"route add 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
			},
		},
		{
			name:   "from scratch: the IPv4 changes are the IPv4-only edge's",
			actual: dualScratch,
			only4:  true,
			want: slices.Concat(scratchChanges[:1], []string{
				`link add cframe0 type vxlan id 1 dstport 58425 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" addrgenmode none tx-checksumming off`,
			}, scratchChanges[2:]),
		},
		{
			name:   "converged: no-op",
			actual: dualConverged,
		},
		{
			name: "an IPv6 route deleted by hand",
			actual: func() *actual {
				a := dualConverged()
				a.Routes = slices.DeleteFunc(a.Routes, func(r route) bool { return r.Dst == pfx("2001:db8:31::/48") })
				return a
			},
			want: []string{"route add 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207"},
		},
		{
			name: "an ip6tables rule deleted and a foreign one added",
			actual: func() *actual {
				a := dualConverged()
				a.Chains[chainForward6] = []string{fwd6Out, "-A CFRAME-FORWARD -j ACCEPT"}
				return a
			},
			want: []string{
				"ip6tables -t filter -I CFRAME-FORWARD 1 -d 2001:db8:20::/48 -i cframe0 -j ACCEPT",
				"ip6tables -t filter -D CFRAME-FORWARD -j ACCEPT",
			},
		},
		{
			name: "an IPv6 route changed: replaced",
			actual: func() *actual {
				a := dualConverged()
				a.Routes[len(a.Routes)-1].Gw = ip("fe80::99")
				return a
			},
			want: []string{"route replace 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207"},
		},
		{
			name:    "IPv6 removed from the edge: its IPv6 objects go, the IPv4 ones stay",
			desired: func(d *Desired) { d.LocalCIDRs = d.LocalCIDRs[:1] },
			actual:  dualConverged,
			want: []string{
				"route del 2001:db8:18::/48 via fe80::1 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
				"route del 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
				"ip6tables -t filter -D FORWARD -j CFRAME-FORWARD",
				"ip6tables -t filter -F CFRAME-FORWARD",
				"ip6tables -t filter -X CFRAME-FORWARD",
				"ip6tables -t mangle -D FORWARD -j CFRAME-MSS",
				"ip6tables -t mangle -F CFRAME-MSS",
				"ip6tables -t mangle -X CFRAME-MSS",
			},
		},
		{
			name:    "an IPv4-only edge routes none of its peers' IPv6 CIDRs",
			desired: func(d *Desired) { d.LocalCIDRs = d.LocalCIDRs[:1] },
			actual: func() *actual {
				a := convergedActual()
				a.Neighbors6 = dualConverged().Neighbors6
				return a
			},
		},
		{
			name: "a peer with IPv6 CIDRs only: routed by its link-local address, no IPv4 neighbor",
			desired: func(d *Desired) {
				d.Peers = append(d.Peers, Peer{Name: "v6only", Underlay: netip.MustParseAddrPort("192.0.2.99:58423"), MAC: mac(9),
					LinkLocal: ip("fe80::9"), CIDRs: []netip.Prefix{pfx("2001:db8:99::/48")}})
			},
			actual: dualConverged,
			want: []string{
				"ipset add cframe-peers 192.0.2.99",
				"fdb add 02:cf:00:00:00:09 dst 192.0.2.99 port 58423 dev cframe0",
				"neigh add fe80::9 lladdr 02:cf:00:00:00:09 dev cframe0 nud permanent",
				"route add 2001:db8:99::/48 via fe80::9 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
			},
		},
		{
			name:    "a tunnel MTU of 1400: the IPv6 MSS is 1340",
			desired: func(d *Desired) { d.MTU = 1400 },
			actual:  dualConverged,
			only6:   true,
			want: []string{
				"ip6tables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1341:65535 -j TCPMSS --set-mss 1340",
				"ip6tables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1341:65535 -j TCPMSS --set-mss 1340",
				"ip6tables -t mangle -D CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
				"ip6tables -t mangle -D CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
			},
		},
		{
			name:    "masquerade: the peers' IPv6 networks in their own set, SNAT to the IPv6 LAN address",
			desired: func(d *Desired) { d.Masquerade = true },
			actual:  dualConverged,
			only6:   true,
			want: []string{
				"ipset create cframe-nets6 hash:net family inet6",
				"ipset add cframe-nets6 2001:db8:18::/48",
				"ipset add cframe-nets6 2001:db8:31::/48",
				"ip6tables -t nat -N CFRAME-POSTROUTING",
				"ip6tables -t nat -I CFRAME-POSTROUTING 1 -d 2001:db8:20::/48 -m set --match-set cframe-nets6 src -j SNAT --to-source 2001:db8:20::9",
				"ip6tables -t nat -I POSTROUTING 1 -j CFRAME-POSTROUTING",
			},
		},
		{
			name: "no ip6tables: a conflict, routes still installed",
			actual: func() *actual {
				a := dualScratch()
				a.IP6tables = false
				return a
			},
			only6: true,
			want: []string{
				"sysctl net.ipv6.conf.all.forwarding=1",
				"addr add fe80::3/64 dev cframe0 nodad",
				"neigh add fe80::1 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add fe80::2 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 2001:db8:18::/48 via fe80::1 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
				"route add 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
			},
			wantConflicts: []string{"ip6tables is not installed: the edge's IPv6 traffic gets no FORWARD rules, MSS clamping, masquerading or tunnel port filter"},
		},
		{
			name: "a foreign IPv6 route to a peer's CIDR: skipped",
			actual: func() *actual {
				a := dualConverged()
				a.Routes = a.Routes[:len(a.Routes)-1]
				a.ForeignRoutes = []route{{Dst: pfx("2001:db8:31::/48"), Device: "lan0", Protocol: 3, Metric: 1024}}
				return a
			},
			wantConflicts: []string{"route 2001:db8:31::/48 dev lan0 metric 1024 proto boot is not cframe's: skipped peer vpc2's route 2001:db8:31::/48"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := dualDesired()
			if tc.desired != nil {
				tc.desired(d)
			}
			n, err := prepare(d)
			if err != nil {
				t.Fatal(err)
			}
			p := newPlan(n, tc.actual())
			got := descs(p.changes)
			if tc.only6 || tc.only4 {
				got = slices.DeleteFunc(got, func(c string) bool { return about6(c) != tc.only6 })
			}
			expectLines(t, "changes", got, tc.want)
			expectLines(t, "conflicts", conflictTexts(p.notes), tc.wantConflicts)
		})
	}
}

// underlay6Desired is the dual-stack edge over an IPv6 underlay: its local
// address and every peer's underlay address are IPv6.
func underlay6Desired() *Desired {
	d := dualDesired()
	d.LocalAddr = ip("2001:db8:ff02::10")
	d.Peers[0].Underlay = netip.MustParseAddrPort("[2001:db8:ff01::10]:58424")
	d.Peers[1].Underlay = netip.MustParseAddrPort("[2001:db8:ff00::10]:58423")
	return d
}

// TestPlanUnderlay6: over an IPv6 underlay the VXLAN device has the IPv6
// local address and 70 bytes of overhead, the FDB points at IPv6 remotes
// and the tunnel port's filter is in ip6tables.
func TestPlanUnderlay6(t *testing.T) {
	n, err := prepare(underlay6Desired())
	if err != nil {
		t.Fatal(err)
	}
	p := newPlan(n, dualScratch())
	got := descs(p.changes)
	for _, want := range []string{
		`link add cframe0 type vxlan id 1 dstport 58425 local 2001:db8:ff02::10 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1430 alias "cframe" addrgenmode none tx-checksumming off`,
		"ipset create cframe-peers hash:ip family inet",
		"ipset create cframe-peers6 hash:ip family inet6",
		"ipset add cframe-peers6 2001:db8:ff00::10",
		"ipset add cframe-peers6 2001:db8:ff01::10",
		"ip6tables -t filter -N CFRAME-INPUT",
		"ip6tables -t filter -I CFRAME-INPUT 1 -p udp -m udp --dport 58425 -m set --match-set cframe-peers6 src -j ACCEPT",
		"ip6tables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
		"ip6tables -t filter -I INPUT 1 -j CFRAME-INPUT",
		"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
		// 1430 less 40 and 20: IPv4 TCP's MSS over the IPv6 underlay.
		"iptables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
		"ip6tables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1371:65535 -j TCPMSS --set-mss 1370",
		"fdb add 02:cf:00:00:00:01 dst 2001:db8:ff00::10 port 58423 dev cframe0",
		"fdb add 02:cf:00:00:00:02 dst 2001:db8:ff01::10 port 58424 dev cframe0",
		"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
		"route add 2001:db8:31::/48 via fe80::2 dev cframe0 src 2001:db8:20::9 metric 1024 proto 207",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("plan lacks %q", want)
		}
	}
	for _, c := range got {
		if strings.Contains(c, "ipset add cframe-peers ") {
			t.Errorf("an IPv6 underlay's peer in the IPv4 set: %q", c)
		}
	}
	// An IPv4-underlay edge has no IPv6 INPUT filter; one that moves to
	// IPv4 loses it and its set, and its device is recreated.
	a := dualScratch()
	a.Chains[chainInput6] = []string{"-A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP"}
	a.Chains[chain{table6 + "filter", "INPUT"}] = []string{"-A INPUT -j CFRAME-INPUT"}
	a.Sets[setPeers6] = ipset{Type: "hash:ip"}
	n, err = prepare(dualDesired())
	if err != nil {
		t.Fatal(err)
	}
	got = descs(newPlan(n, a).changes)
	for _, want := range []string{
		"ip6tables -t filter -D INPUT -j CFRAME-INPUT",
		"ip6tables -t filter -F CFRAME-INPUT",
		"ip6tables -t filter -X CFRAME-INPUT",
		"ipset destroy cframe-peers6",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("plan lacks %q:\n\t%s", want, strings.Join(got, "\n\t"))
		}
	}
}
