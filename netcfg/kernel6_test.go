package netcfg

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// newDualMesh is the walkthrough with an IPv6 block in every VPC, every
// edge with its link-local address on the tunnel.
func newDualMesh(t *testing.T) *mesh {
	topo.SkipUnlessRoot(t, "ip6tables")
	m := newMesh(t, topo.DualStack()...)
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		d.LinkLocal = linkLocalOf(s)
		for i := range d.Peers {
			d.Peers[i].LinkLocal = linkLocalOf(m.site(d.Peers[i].Name))
		}
	}
	return m
}

// TestKernelDualStack: three dual-stack VPCs over the IPv4 underlay: both
// families between every pair (ping, TCP, UDP, DF pings at the tunnel MTU),
// the exact IPv6 objects, idempotence, drift repair of an IPv6 route and
// an ip6tables rule, IPv6 taken off one edge, and Cleanup.
func TestKernelDualStack(t *testing.T) {
	t.Parallel()
	m := newDualMesh(t)
	for _, s := range m.topo.Sites() {
		m.sh(s.Edge, "iptables", "-P", "FORWARD", "DROP")
		m.sh(s.Edge, "ip6tables", "-P", "FORWARD", "DROP")
	}
	m.reconcileAll()
	m.expectNoChanges()
	m.checkAllPairs()
	for _, a := range m.topo.Sites() {
		for _, b := range m.topo.Sites() {
			if a == b {
				continue
			}
			if err := m.ping(a, b.HostAddr6); err != nil {
				t.Errorf("ping %s -> %s: %v", a.Name, b.HostAddr6, err)
			}
			if err := topo.TCPTransfer(a.Host, b.Host, b.HostAddr6, 1<<20, 15*time.Second); err != nil {
				t.Errorf("tcp6 %s -> %s: %v", a.Name, b.Name, err)
			}
			if err := topo.UDPTransfer(a.Host, b.Host, b.HostAddr6, 20, 1200, 15*time.Second); err != nil {
				t.Errorf("udp6 %s -> %s: %v", a.Name, b.Name, err)
			}
		}
	}
	// The path MTU is the tunnel's 1450: an IPv6 ping of 1450 bytes (1402
	// of payload, 40 of IPv6 and 8 of ICMPv6 header) passes unfragmented,
	// one byte more does not.
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	if out, err := m.net.Exec(s1.Host, "ping", "-n", "-M", "do", "-s", "1402", "-c", "2", "-i", "0.2", "-W", "2", s2.HostAddr6.String()); err != nil {
		t.Errorf("DF ping of 1450 bytes: %v\n%s", err, out)
	}
	if out, err := m.net.Exec(s1.Host, "ping", "-n", "-M", "do", "-s", "1403", "-c", "2", "-i", "0.2", "-W", "2", s2.HostAddr6.String()); err == nil {
		t.Errorf("DF ping of 1451 bytes passed a 1450-byte tunnel:\n%s", out)
	}

	e1 := s1.Edge
	m.expectSet("ip -6 route show proto 207", m.lines(e1, "ip", "-6", "route", "show", "proto", "207"), []string{
		"2001:db8:31::/48 via " + linkLocalOf(s2).String() + " dev cframe0 src 2001:db8:18::245 metric 1024 pref medium",
		"2001:db8:20::/48 via " + linkLocalOf(m.site("vpc3")).String() + " dev cframe0 src 2001:db8:18::245 metric 1024 pref medium",
	})
	expectLines(t, "ip6tables -S CFRAME-FORWARD", m.lines(e1, "ip6tables", "-S", "CFRAME-FORWARD"), []string{
		"-N CFRAME-FORWARD",
		"-A CFRAME-FORWARD -d 2001:db8:18::/48 -i cframe0 -j ACCEPT",
		"-A CFRAME-FORWARD -s 2001:db8:18::/48 -o cframe0 -j ACCEPT",
	})
	expectLines(t, "ip6tables -t mangle -S CFRAME-MSS", m.lines(e1, "ip6tables", "-t", "mangle", "-S", "CFRAME-MSS"), []string{
		"-N CFRAME-MSS",
		"-A CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
		"-A CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1391:65535 -j TCPMSS --set-mss 1390",
	})
	// The IPv4 rules hold no IPv6 network, and vice versa.
	expectLines(t, "iptables -S", m.lines(e1, "iptables", "-S"), vpc1FilterRules)
	if got := m.sh(e1, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"); got != "1" {
		t.Errorf("ipv6 forwarding = %s", got)
	}

	// Drift: an IPv6 route and an ip6tables rule deleted by hand come back.
	m.sh(e1, "ip", "-6", "route", "del", "2001:db8:31::/48")
	m.sh(e1, "ip6tables", "-D", "CFRAME-FORWARD", "-d", "2001:db8:18::/48", "-i", "cframe0", "-j", "ACCEPT")
	if err := m.ping(s1, s2.HostAddr6); err == nil {
		t.Error("ping over IPv6 works without the route")
	}
	res := m.reconcile("vpc1")
	expectLines(t, "repair", res.Changes, []string{
		"ip6tables -t filter -I CFRAME-FORWARD 1 -d 2001:db8:18::/48 -i cframe0 -j ACCEPT",
		"route add 2001:db8:31::/48 via " + linkLocalOf(s2).String() + " dev cframe0 src 2001:db8:18::245 metric 1024 proto 207",
	})
	m.expectNoChanges()
	if err := m.ping(s1, s2.HostAddr6); err != nil {
		t.Errorf("ping after the repair: %v", err)
	}

	// A peer leaves and comes back by Update: targeted reads of its IPv6
	// route too (the Kernel's baseline is vpc1's after a reconcile there).
	m.reconcile("vpc1")
	d := m.desired["vpc1"]
	s3 := m.site("vpc3")
	all := d.Peers
	d.Peers = slices.DeleteFunc(slices.Clone(all), func(p Peer) bool { return p.Name == "vpc3" })
	update := func(want ...string) {
		t.Helper()
		var res Result
		m.in("vpc1", func() (err error) { res, err = m.k.Update(d); return err })
		if !res.Targeted {
			t.Errorf("update fell back: %s", res.FallbackReason)
		}
		for _, w := range want {
			if !slices.Contains(res.Changes, w) {
				t.Errorf("update lacks %q:\n\t%s", w, strings.Join(res.Changes, "\n\t"))
			}
		}
	}
	route3 := "2001:db8:20::/48 via " + linkLocalOf(s3).String() + " dev cframe0 src 2001:db8:18::245 metric 1024 proto 207"
	update("route del " + route3)
	d.Peers = all
	update("route add " + route3)
	m.expectNoChanges()
	if err := m.ping(s1, s3.HostAddr6); err != nil {
		t.Errorf("ping after the peer came back: %v", err)
	}

	// IPv6 taken off vpc1's edge: its IPv6 routes and chains go, IPv4
	// keeps working.
	d.LocalCIDRs = d.LocalCIDRs[:1]
	m.reconcile("vpc1")
	if got := m.lines(e1, "ip", "-6", "route", "show", "proto", "207"); len(got) != 0 {
		t.Errorf("IPv6 routes left on an IPv4-only edge: %q", got)
	}
	if got := m.sh(e1, "ip6tables-save"); strings.Contains(got, "CFRAME") {
		t.Errorf("ip6tables chains left on an IPv4-only edge:\n%s", got)
	}
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Errorf("IPv4 after IPv6 went: %v", err)
	}
	m.expectNoChanges()

	// Cleanup removes the IPv6 objects too.
	m.in("vpc3", func() error { _, err := m.k.Cleanup(); return err })
	if got := m.lines(s3.Edge, "ip", "-6", "route", "show", "proto", "207"); len(got) != 0 {
		t.Errorf("IPv6 routes after Cleanup: %q", got)
	}
	if got := m.sh(s3.Edge, "ip6tables-save"); strings.Contains(got, "CFRAME") {
		t.Errorf("ip6tables chains after Cleanup:\n%s", got)
	}
	m.in("vpc3", func() error {
		s, err := m.k.begin()
		if err != nil {
			return err
		}
		defer s.end()
		r := newReading(&Desired{}, nil)
		if err := s.readSets(r); err != nil {
			return err
		}
		if len(r.a.Sets) != 0 {
			t.Errorf("ipsets after Cleanup: %v", r.a.Sets)
		}
		return nil
	})
}

// TestKernelDualStackMasquerade: with masquerade, a host whose VPC routes
// nothing back still answers over IPv6, seeing the edge's IPv6 LAN address
// as the source.
func TestKernelDualStackMasquerade(t *testing.T) {
	t.Parallel()
	m := newDualMesh(t)
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	// vpc2's host forgets its routes to the other VPCs' IPv6 blocks.
	for _, o := range []*topo.Site{s1, m.site("vpc3")} {
		m.sh(s2.Host, "ip", "-6", "route", "del", o.CIDR6.String())
	}
	m.desired["vpc2"].Masquerade = true
	m.reconcileAll()
	m.expectNoChanges()
	if err := m.ping(s1, s2.HostAddr6); err != nil {
		t.Errorf("ping6 into a masquerading VPC: %v", err)
	}
	m.expectMembers("vpc2", setNets6, "2001:db8:18::/48", "2001:db8:20::/48")
	if n := m.counter6(s2.Edge, "nat", "CFRAME-POSTROUTING", "SNAT"); n == 0 {
		t.Error("no packet counted by the IPv6 SNAT rule")
	}
}

// counter6 is counter for ip6tables.
func (m *mesh) counter6(ns, table, chain, match string) int {
	m.t.Helper()
	for _, l := range m.lines(ns, "ip6tables", "-t", table, "-L", chain, "-v", "-x", "-n") {
		if strings.Contains(l, match) {
			n, err := strconv.Atoi(strings.Fields(l)[0])
			if err != nil {
				m.t.Fatalf("counter in %q: %v", l, err)
			}
			return n
		}
	}
	m.t.Fatalf("no rule matching %q in ip6tables %s %s", match, table, chain)
	return 0
}
