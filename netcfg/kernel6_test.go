package netcfg

import (
	"fmt"
	"net"
	"net/netip"
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

	// Cleanup removes the IPv6 objects too. (With nf_tables, the netlink
	// check an IPv4-only edge reads instead of ip6tables-save sees the
	// chains before and not after.)
	ownChains6 := func() bool {
		var own bool
		m.in("vpc3", func() error {
			s, err := m.k.begin()
			if err != nil {
				return err
			}
			defer s.end()
			own, err = s.nftOwnChains6()
			return err
		})
		return own
	}
	if m.k.ipt.nft && !ownChains6() {
		t.Error("nftOwnChains6 finds none of cframe's chains on a dual-stack edge")
	}
	m.in("vpc3", func() error { _, err := m.k.Cleanup(); return err })
	if m.k.ipt.nft && ownChains6() {
		t.Error("nftOwnChains6 finds cframe's chains after Cleanup")
	}
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

// TestKernelUnderlay6: the dual-stack VPCs over an IPv6 underlay: every
// edge's VXLAN device has its IPv6 public address as local address and
// the IPv6 underlay's MTU (1500 - 70), the FDB points at the peers' IPv6
// addresses, both families flow (DF pings at 1430), and the tunnel port is
// closed over IPv6 to all but the peers.
func TestKernelUnderlay6(t *testing.T) {
	t.Parallel()
	topo.SkipUnlessRoot(t, "ip6tables")
	vpcs := topo.DualStack()
	for i := range vpcs {
		vpcs[i].IPv6Underlay = true
	}
	m := newMesh(t, vpcs...)
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		d.LinkLocal, d.LocalAddr = linkLocalOf(s), s.Underlay6()
		for i := range d.Peers {
			o := m.site(d.Peers[i].Name)
			d.Peers[i].LinkLocal, d.Peers[i].Underlay = linkLocalOf(o), netip.AddrPortFrom(o.Underlay6(), port(o))
		}
	}
	m.reconcileAll()
	m.expectNoChanges()
	m.checkAllPairs()
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	e1 := s1.Edge
	link := m.sh(e1, "ip", "-d", "link", "show", "cframe0")
	for _, want := range []string{"mtu 1430", "local 2001:db8:ff00::10", "dstport 58423 "} {
		if !strings.Contains(link, want) {
			t.Errorf("ip -d link show cframe0: missing %q in\n%s", want, link)
		}
	}
	m.expectSet("bridge fdb show dev cframe0", m.lines(e1, "bridge", "fdb", "show", "dev", "cframe0"), []string{
		"02:cf:00:00:00:02 dst 2001:db8:ff01::10 port 58433 self permanent",
		"02:cf:00:00:00:03 dst 2001:db8:ff02::10 port 58443 self permanent",
	})
	for _, c := range []struct {
		to    netip.Addr
		small string
	}{{s2.HostAddr, "1402"}, {s2.HostAddr6, "1382"}} {
		if out, err := m.net.Exec(s1.Host, "ping", "-n", "-M", "do", "-s", c.small, "-c", "2", "-i", "0.2", "-W", "2", c.to.String()); err != nil {
			t.Errorf("DF ping of 1430 bytes to %s: %v\n%s", c.to, err, out)
		}
		big, _ := strconv.Atoi(c.small)
		if out, err := m.net.Exec(s1.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(big+1), "-c", "1", "-W", "2", c.to.String()); err == nil {
			t.Errorf("DF ping of 1431 bytes to %s passed a 1430-byte tunnel:\n%s", c.to, out)
		}
	}
	if err := topo.TCPTransfer(s1.Host, s2.Host, s2.HostAddr6, 1<<20, 15*time.Second); err != nil {
		t.Error(err)
	}
	if err := topo.UDPTransfer(s1.Host, s2.Host, s2.HostAddr6, 20, 1300, 15*time.Second); err != nil {
		t.Error(err)
	}
	m.expectMembers("vpc1", setPeers6, "2001:db8:ff01::10/128", "2001:db8:ff02::10/128")
	if accepted := m.counter6(e1, "filter", "CFRAME-INPUT", "match-set cframe-peers6 src"); accepted == 0 {
		t.Error("no packet from the peers counted by the ACCEPT of their IPv6 set")
	}
	drops := m.counter6(e1, "filter", "CFRAME-INPUT", "DROP")
	if err := topo.Do(m.topo.Router, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(s1.Underlay6(), port(s1)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("not a vxlan peer")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := topo.Eventually(5*time.Second, func() error {
		if got := m.counter6(e1, "filter", "CFRAME-INPUT", "DROP"); got < drops+3 {
			return fmt.Errorf("IPv6 DROP counter %d, want >= %d", got, drops+3)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Back to the IPv4 underlay: the device is recreated with IPv4, the
	// IPv6 tunnel filter and its set go.
	m.rebuildDesired()
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		d.LinkLocal = linkLocalOf(s)
		for i := range d.Peers {
			d.Peers[i].LinkLocal = linkLocalOf(m.site(d.Peers[i].Name))
		}
	}
	m.reconcileAll()
	m.expectNoChanges()
	if err := m.ping(s1, s2.HostAddr6); err != nil {
		t.Errorf("ping6 after moving to the IPv4 underlay: %v", err)
	}
	if got := m.sh(e1, "ip6tables", "-S"); strings.Contains(got, "CFRAME-INPUT") {
		t.Errorf("the IPv6 tunnel filter stayed on an IPv4 underlay:\n%s", got)
	}
}
