package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/cluster"
)

// reachable6 checks that every host of sites pings the host and the edge
// of every other site over IPv6.
func (f *fixture) reachable6(sites ...*topo.Site) error {
	for _, from := range sites {
		for _, to := range sites {
			if from == to {
				continue
			}
			for _, a := range []netip.Addr{to.HostAddr6, to.EdgeAddr6} {
				if err := f.net.Ping(from.Host, a, 1, time.Second); err != nil {
					return fmt.Errorf("%s cannot reach %s (%s): %w", from.HostAddr6, a, to.Name, err)
				}
			}
		}
	}
	return nil
}

// waitConnected waits until the agents of names wait at the controller,
// not yet added, so that the convergence measured after their adds is the
// mesh's and not the agents' start-up (slow on the emulated CPU).
func (f *fixture) waitConnected(names ...string) {
	f.t.Helper()
	if err := topo.Eventually(60*time.Second, func() error {
		tp, err := f.c.API.Topology(f.ctx)
		if err != nil {
			return err
		}
		for _, n := range names {
			if !slices.Contains(tp.Pending, n) {
				return fmt.Errorf("%s has not connected yet (pending %v)", n, tp.Pending)
			}
		}
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
}

// kernelDump6 is everything IPv6 cframe owns in an edge namespace.
func (f *fixture) kernelDump6(ns string) (string, error) {
	var b strings.Builder
	for _, cmd := range [][]string{{"ip", "-6", "route", "show", "proto", "207"}, {"ip", "-6", "neigh", "show", "dev", "cframe0", "nud", "permanent"}, {"ip6tables-save"}} {
		out, err := f.net.Exec(ns, cmd...)
		if err != nil {
			return "", err
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if cmd[0] != "ip6tables-save" || (strings.HasPrefix(l, "-A") && strings.Contains(l, "CFRAME")) {
				lines = append(lines, l)
			}
		}
		sort.Strings(lines)
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	return b.String(), nil
}

// TestDualStack: the walkthrough's three VPCs, each with an IPv6 block
// (hosts with both families), over the IPv4 underlay: the API takes the
// IPv6 blocks as extra CIDRs; both families between every pair (ping, TCP,
// UDP, DF pings at the path MTU); drift repair of an IPv6 route and an
// ip6tables rule; a deleted edge's IPv6 routes gone everywhere; cleanup.
func TestDualStack(t *testing.T) {
	topo.SkipUnlessRoot(t, "ip6tables")
	f := buildFixture(t, topo.Build, topo.DualStack(), cluster.Options{})
	names := cluster.WalkthroughNames
	for i, s := range f.topo.Sites() {
		f.startEdge(names[i], s)
	}
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	all := []*topo.Site{sz, hk, gz}

	t.Run("three adds with IPv6 blocks: every host reaches every host and edge in both families", func(t *testing.T) {
		f.waitConnected(names...)
		start := f.add(names...)
		f.converge("dual-stack walkthrough, IPv4", start, all...)
		if err := topo.Eventually(15*time.Second, func() error { return f.reachable6(all...) }); err != nil {
			t.Fatal(err)
		}
		t.Logf("convergence (dual-stack walkthrough): %s from the last add returning to both families reachable", time.Since(start).Round(time.Millisecond))
		list, err := f.c.API.List(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if e.Name == "hk-1" && !strings.Contains(strings.Join(e.ExtraCIDRs, ","), "2001:db8:31::/48") {
				t.Errorf("edge list: hk-1 = %+v, want its IPv6 block among the extra CIDRs", e)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("TCP and UDP over IPv6 between every pair", func(t *testing.T) {
		for _, from := range all {
			for _, to := range all {
				if from == to {
					continue
				}
				if err := topo.TCPTransfer(from.Host, to.Host, to.HostAddr6, 1<<20, 15*time.Second); err != nil {
					t.Error(err)
				}
				if err := topo.UDPTransfer(from.Host, to.Host, to.HostAddr6, 20, 1400, 10*time.Second); err != nil {
					t.Error(err)
				}
			}
		}
	})

	t.Run("DF pings at the IPv6 path MTU pass, one byte more is answered with packet-too-big", func(t *testing.T) {
		mtu := f.pathMTU(false)
		for _, to := range []*topo.Site{hk, gz} {
			// 40 bytes of IPv6 header and 8 of ICMPv6.
			if out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-48), "-c", "2", "-i", "0.2", "-W", "2", to.HostAddr6.String()); err != nil {
				t.Errorf("DF ping of %d bytes to %s: %v\n%s", mtu, to.HostAddr6, err, out)
			}
			out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-47), "-c", "2", "-i", "0.2", "-W", "2", to.HostAddr6.String())
			// The router's packet-too-big ("mtu=1450"), or the host's own
			// refusal once it has learned the path MTU ("mtu: 1390").
			if err == nil || !regexp.MustCompile(`mtu ?[=:] ?`+strconv.Itoa(mtu)+`\b`).MatchString(out) {
				t.Errorf("DF ping of %d bytes to %s: %v, want packet-too-big naming mtu %d:\n%s", mtu+1, to.HostAddr6, err, mtu, out)
			}
		}
	})

	t.Run("drift: a hand-deleted IPv6 route and ip6tables rule are repaired", func(t *testing.T) {
		for _, breakIt := range [][]string{
			{"ip", "-6", "route", "del", "2001:db8:18::/48", "proto", "207"},
			{"ip6tables", "-D", "CFRAME-FORWARD", "-d", "2001:db8:20::/48", "-i", "cframe0", "-j", "ACCEPT"},
		} {
			before, err := f.kernelDump6(gz.Edge)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.net.Exec(gz.Edge, "ip6tables", "-P", "FORWARD", "DROP"); err != nil {
				t.Fatal(err)
			}
			if _, err := f.net.Exec(gz.Edge, breakIt...); err != nil {
				t.Fatal(err)
			}
			broken := time.Now()
			err = topo.Eventually(5*time.Second, func() error {
				if st, err := f.kernelDump6(gz.Edge); err != nil || st != before {
					return fmt.Errorf("not repaired yet (%v):\n%s", err, st)
				}
				return f.reachable6(sz, gz)
			})
			if err != nil {
				t.Fatalf("after %v: %v", breakIt, err)
			}
			t.Logf("drift repair after %q: %s", strings.Join(breakIt, " "), time.Since(broken).Round(time.Millisecond))
		}
	})

	t.Run("delete an edge: its IPv6 routes are gone everywhere", func(t *testing.T) {
		if _, err := f.c.API.Del(f.ctx, "hk-1"); err != nil {
			t.Fatal(err)
		}
		err := topo.Eventually(5*time.Second, func() error {
			for _, s := range []*topo.Site{sz, gz} {
				st, err := f.kernelDump6(s.Edge)
				if err != nil {
					return err
				}
				if strings.Contains(st, "2001:db8:31:") {
					return fmt.Errorf("%s still routes hk-1's IPv6 block:\n%s", s.Name, st)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.net.Ping(sz.Host, hk.HostAddr6, 1, time.Second); err == nil {
			t.Error("VPC2's IPv6 block is still reachable after its edge was deleted")
		}
		if err := f.reachable6(sz, gz); err != nil {
			t.Errorf("the remaining edges lost each other over IPv6: %v", err)
		}
	})

	t.Run("cleanup removes the IPv6 routes, chains and forwarding objects", func(t *testing.T) {
		e := f.edges["gz-3"]
		e.Proc().Stop(5 * time.Second)
		out, err := e.Run("cleanup")
		if err != nil || !strings.Contains(out, "ip6tables -t filter -X CFRAME-FORWARD") {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		for _, cmd := range [][]string{{"ip", "-6", "route", "show", "proto", "207"}, {"ip6tables-save"}} {
			if out, err := f.net.Exec(gz.Edge, cmd...); err != nil || strings.Contains(out, "CFRAME") || strings.Contains(out, "proto 207") || cmd[0] == "ip" && strings.TrimSpace(out) != "" {
				t.Fatalf("cleanup left objects behind (%v):\n%s", err, out)
			}
		}
	})
}

// pathMTU is the mesh's path MTU between hosts of two VPCs, over an IPv4
// underlay or, with underlay6, an IPv6 one: the underlay's 1500 bytes
// minus VXLAN's 50 (70 over IPv6); where every link is encrypted, VXLAN
// rides WireGuard between IPv4 mesh addresses (50) and WireGuard's 60 (80
// over IPv6) go around it.
func (f *fixture) pathMTU(underlay6 bool) int {
	f.t.Helper()
	six := 0
	if underlay6 {
		six = 20 // IPv6's header over IPv4's
	}
	if f.encrypted() {
		return 1500 - 50 - 60 - six
	}
	return 1500 - 50 - six
}

// spec6 is edge name's spec with its IPv6 public address as hostaddr.
func (f *fixture) spec6(name string) edgeset.Spec {
	s := f.edges[name].Spec()
	s.HostAddr = netip.AddrPortFrom(f.site(name).Underlay6(), cluster.TunnelPort).String()
	return s
}

// TestUnderlay6: the dual-stack walkthrough over an IPv6 underlay (every
// hostaddr IPv6; the control plane stays on IPv4), in plaintext: both families between
// every pair, the VXLAN device at the IPv6 underlay's MTU; then a mixed
// mesh, hk-1 moved back to an IPv4 hostaddr: the pairs that share a family
// still meet, the others show as incompatible.
func TestUnderlay6(t *testing.T) {
	topo.SkipUnlessRoot(t, "ip6tables")
	vpcs := topo.DualStack()
	for i := range vpcs {
		vpcs[i].IPv6Underlay = true
	}
	f := buildFixture(t, topo.Build, vpcs, cluster.Options{})
	names := cluster.WalkthroughNames
	// Plaintext, on every kernel: TestEncryptedUnderlay6 is the encrypted
	// IPv6 underlay.
	for i, s := range f.topo.Sites() {
		f.startEdge(names[i], s, `encryption = "none"`)
	}
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	all := []*topo.Site{sz, hk, gz}

	t.Run("three adds with IPv6 hostaddrs: both families between every pair", func(t *testing.T) {
		f.waitConnected(names...)
		start := time.Now()
		for _, n := range names {
			if _, err := f.c.API.Add(f.ctx, f.spec6(n)); err != nil {
				t.Fatal(err)
			}
		}
		f.converge("IPv6 underlay, IPv4 overlay", start, all...)
		if err := topo.Eventually(15*time.Second, func() error { return f.reachable6(all...) }); err != nil {
			t.Fatal(err)
		}
		link, err := f.net.Exec(sz.Edge, "ip", "-d", "link", "show", "cframe0")
		if err != nil || !strings.Contains(link, "mtu 1430") || !strings.Contains(link, "local "+sz.Underlay6().String()) {
			t.Errorf("cframe0 over the IPv6 underlay (%v):\n%s", err, link)
		}
		// DF pings at the IPv6 underlay's path MTU, both families.
		mtu := f.pathMTU(true)
		for _, c := range []struct {
			to      netip.Addr
			headers int
		}{{hk.HostAddr, 28}, {hk.HostAddr6, 48}} {
			if out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-c.headers), "-c", "2", "-i", "0.2", "-W", "2", c.to.String()); err != nil {
				t.Errorf("DF ping of %d bytes to %s: %v\n%s", mtu, c.to, err, out)
			}
			if out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu+1-c.headers), "-c", "1", "-W", "2", c.to.String()); err == nil {
				t.Errorf("DF ping of %d bytes to %s passed:\n%s", mtu+1, c.to, out)
			}
		}
		if err := topo.TCPTransfer(sz.Host, gz.Host, gz.HostAddr6, 1<<20, 15*time.Second); err != nil {
			t.Error(err)
		}
		if err := topo.UDPTransfer(gz.Host, hk.Host, hk.HostAddr, 20, 1300, 10*time.Second); err != nil {
			t.Error(err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("mixed mesh: hk-1 on IPv4, the others on IPv6: incompatible links, the rest keeps working", func(t *testing.T) {
		if _, err := f.edges["hk-1"].Add(f.ctx); err != nil {
			t.Fatal(err)
		}
		err := topo.Eventually(10*time.Second, func() error {
			tp, err := f.c.API.Topology(f.ctx)
			if err != nil {
				return err
			}
			incompatible := 0
			for _, l := range tp.Links {
				involvesHK := l.A == "hk-1" || l.B == "hk-1"
				switch {
				case involvesHK && (l.State != "incompatible" || !strings.Contains(l.Reason, "no common underlay")):
					return fmt.Errorf("link %s-%s: %s (%s), want incompatible", l.A, l.B, l.State, l.Reason)
				case involvesHK:
					incompatible++
				case l.State != "up":
					return fmt.Errorf("link %s-%s: %s (%s), want up", l.A, l.B, l.State, l.Reason)
				}
			}
			if incompatible != 2 {
				return fmt.Errorf("%d incompatible links, want 2", incompatible)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.reachable(sz, gz); err != nil {
			t.Error(err)
		}
		if err := f.reachable6(sz, gz); err != nil {
			t.Error(err)
		}
		if err := f.net.Ping(sz.Host, hk.HostAddr, 1, time.Second); err == nil {
			t.Error("sz-1 reaches hk-1 without a common underlay")
		}
		if out, err := f.net.Exec(hk.Edge, "ip", "-d", "link", "show", "cframe0"); err != nil || !strings.Contains(out, "mtu 1450") || strings.Contains(out, "local ") {
			t.Errorf("hk-1's device back on the IPv4 underlay (%v):\n%s", err, out)
		}
	})
}
