package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

var haVIP6 = netip.MustParseAddr("2001:db8:18::250")

// TestGatewayHA6: gateway HA in a dual-stack site — VPC1's two gateways
// with a VIP per family, the host routing the other VPCs' IPv4 and IPv6
// blocks via the VIPs. The active gateway holds both (the IPv6 one
// nodad and deprecated); when it dies the standby takes both, and IPv6
// traffic from VPC1's host across the mesh resumes, in both directions.
func TestGatewayHA6(t *testing.T) {
	f := buildHAFixture(t, false, true)
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	remotes := []string{"hk-1", "gz-3"}
	reach6 := func() error {
		for _, p := range []struct {
			ns string
			to netip.Addr
		}{{sz.Host, hk.HostAddr6}, {sz.Host, gz.HostAddr6}, {hk.Host, sz.HostAddr6}} {
			if err := f.net.Ping(p.ns, p.to, 1, time.Second); err != nil {
				return fmt.Errorf("%s -> %s: %w", p.ns, p.to, err)
			}
		}
		return nil
	}

	t.Run("the active gateway holds both VIPs, IPv6 flows through it", func(t *testing.T) {
		f.converge("dual-stack HA", time.Now(), sz, hk, gz)
		f.controllerShows("sz-1")
		// Deadlines for the stock-kernel VM's emulated CPU: a stall still
		// fails, slowness does not.
		if err := topo.Eventually(time.Minute, func() error { return f.activeIs("sz-1", remotes...) }); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(time.Minute, reach6); err != nil {
			t.Fatal(err)
		}
		out, err := f.net.Exec(f.gw["sz-1"].NS, "ip", "-6", "-o", "addr", "show", "dev", topo.EdgeLAN)
		if err != nil || !regexpLine(out, haVIP6.String()+`/128 .*nodad deprecated`) {
			t.Fatalf("sz-1's IPv6 VIP is not a /128, nodad, deprecated: %v\n%s", err, out)
		}
		// The host resolved the VIP to sz-1's LAN MAC.
		if out, err := f.net.Exec(sz.Host, "ip", "-6", "neigh", "show", haVIP6.String()); err != nil || !strings.Contains(out, "lladdr") {
			t.Fatalf("VPC1's host has no neighbour entry for the VIP6: %v\n%s", err, out)
		}
		tp, err := f.c.API.Topology(f.ctx)
		if err != nil || siteOf(tp, "sz").VIP6 != haVIP6.String() {
			t.Fatalf("topology site sz = %+v (%v), want vip6 %s", siteOf(tp, "sz"), err, haVIP6)
		}
	})

	t.Run("the active gateway dies: the standby holds both VIPs, IPv6 traffic resumes", func(t *testing.T) {
		start := time.Now()
		f.die("sz-1")
		t.Cleanup(func() { f.revive("sz-1") })
		took := f.failover("sz-2", remotes...)
		// The host sends nothing meanwhile: its neighbour entry for the
		// VIP6 can only move by the new holder's unsolicited advertisement.
		mac, err := f.net.Exec(f.gw["sz-2"].NS, "cat", "/sys/class/net/"+topo.EdgeLAN+"/address")
		if err != nil {
			t.Fatal(err)
		}
		mac = strings.TrimSpace(mac)
		if err := topo.Eventually(30*time.Second, func() error {
			out, err := f.net.Exec(sz.Host, "ip", "-6", "neigh", "show", haVIP6.String())
			if err != nil || !strings.Contains(out, mac) {
				return fmt.Errorf("VPC1's host resolves the VIP6 to %q, want sz-2's %s (%v)", strings.TrimSpace(out), mac, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(time.Minute, reach6); err != nil {
			t.Fatalf("IPv6 after the failover: %v", err)
		}
		t.Logf("failover to sz-2: both VIPs moved after %s; IPv6 between VPC1's host and VPC2/VPC3 again after %s (ping-polled; make bench times failovers)",
			took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	})
}
