package netcfg

import (
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// linkLocalOf is the link-local tunnel address the tests give a site.
func linkLocalOf(s *topo.Site) netip.Addr {
	return netip.MustParseAddr("fe80::cf:" + string(rune('0'+s.Index+1)))
}

// The objects of gateway HA on a real mesh: every edge's one link-local
// address on the tunnel and its peers' permanent IPv6 neighbors (a probe
// through the tunnel is answered by the peer's kernel); a standby gateway
// as a plain peer, and the switch of a site's active gateway as one
// targeted neighbor change.
func TestKernelTunnelIdentity(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()...)
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		d.LinkLocal = linkLocalOf(s)
		for i := range d.Peers {
			d.Peers[i].LinkLocal = linkLocalOf(m.site(d.Peers[i].Name))
		}
	}
	m.reconcileAll()
	m.expectNoChanges()
	for _, s := range m.topo.Sites() {
		m.expectSet(s.Name+"'s tunnel addresses", m.tunnelAddrs(s), []string{"inet6 " + linkLocalOf(s).String() + "/64 scope link nodad"})
	}
	m.expectSet("vpc1's IPv6 neighbors", m.lines(s1.Edge, "ip", "-6", "neigh", "show", "dev", "cframe0"), []string{
		linkLocalOf(s2).String() + " lladdr 02:cf:00:00:00:02 PERMANENT",
		linkLocalOf(m.site("vpc3")).String() + " lladdr 02:cf:00:00:00:03 PERMANENT",
	})
	// The peer's kernel answers through the tunnel, link-local to link-local.
	if err := m.net.Ping(s1.Edge, linkLocalOf(s2).WithZone("cframe0"), 2, 5*time.Second); err != nil {
		t.Fatalf("vpc1 cannot reach vpc2's link-local address through the tunnel: %v", err)
	}

	// Drift: ours goes, another appears, and the device generates its own
	// (the EUI-64 one of its MAC 02:cf:00:00:00:01): repaired, and the
	// device generates nothing again.
	m.sh(s1.Edge, "ip", "-6", "addr", "del", linkLocalOf(s1).String()+"/64", "dev", "cframe0")
	m.sh(s1.Edge, "ip", "-6", "addr", "add", "fe80::1234/64", "dev", "cframe0", "nodad")
	m.sh(s1.Edge, "sysctl", "-qw", "net.ipv6.conf.cframe0.addr_gen_mode=0")
	expectLines(t, "repair of the tunnel's address", m.reconcile("vpc1").Changes, []string{
		"sysctl net.ipv6.conf.cframe0.addr_gen_mode=1 (no kernel-generated addresses)",
		"addr del fe80::cf:ff:fe00:1/64 dev cframe0",
		"addr del fe80::1234/64 dev cframe0",
		"addr add " + linkLocalOf(s1).String() + "/64 dev cframe0 nodad",
	})
	m.expectNoChanges()
	m.expectSet("vpc1's tunnel addresses after the repair", m.tunnelAddrs(s1), []string{"inet6 " + linkLocalOf(s1).String() + "/64 scope link nodad"})

	// vpc1's network gets a second gateway, "vpc1b": a plain peer of
	// vpc2 (FDB entry, IPv6 neighbor, set member; no next hop, no route).
	k, err := New()
	if err != nil {
		t.Fatal(err)
	}
	d := *m.desired["vpc2"]
	d.Peers = slices.Clone(d.Peers)
	standby := Peer{Name: "vpc1b", Underlay: netip.MustParseAddrPort("198.18.9.10:58423"), MAC: net.HardwareAddr{2, 0xcf, 0, 0, 0, 0x1b},
		LinkLocal: netip.MustParseAddr("fe80::cf:1b")}
	d.Peers = append(d.Peers, standby)
	var res Result
	m.in("vpc2", func() (err error) { res, err = k.Reconcile(&d); return err })
	expectLines(t, "vpc2 gets a standby peer", res.Changes, []string{
		"ipset add cframe-peers 198.18.9.10",
		"fdb add 02:cf:00:00:00:1b dst 198.18.9.10 port 58423 dev cframe0",
		"neigh add fe80::cf:1b lladdr 02:cf:00:00:00:1b dev cframe0 nud permanent",
	})
	// vpc1b becomes active: the site's next hop and routes move to it,
	// which is one neighbor change, read and applied in a targeted Update.
	var active int
	for i, p := range d.Peers {
		if p.Name == "vpc1" {
			active = i
		}
	}
	d.Peers = slices.Clone(d.Peers)
	last := len(d.Peers) - 1
	d.Peers[last].NextHop, d.Peers[last].CIDRs = d.Peers[active].NextHop, d.Peers[active].CIDRs
	d.Peers[active].NextHop, d.Peers[active].CIDRs = netip.Addr{}, nil
	m.in("vpc2", func() (err error) { res, err = k.Update(&d); return err })
	if !res.Targeted {
		t.Errorf("the switch was no targeted update: %s", res.FallbackReason)
	}
	expectLines(t, "the switch", res.Changes, []string{"neigh replace 172.18.0.0 lladdr 02:cf:00:00:00:1b dev cframe0 nud permanent"})
	m.expectSet("vpc2's route to vpc1", m.lines(s2.Edge, "ip", "route", "show", "172.18.0.0/16"),
		[]string{"172.18.0.0/16 via 172.18.0.0 dev cframe0 proto 207 src 172.31.185.158 onlink"})
}

// A site's VIP on the LAN interface: added with gratuitous ARP, repaired,
// kept as it is on request, released, never touching an address that is
// not cframe's.
func TestKernelVIP(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()[:2]...)
	s1 := m.site("vpc1")
	vip := netip.MustParseAddr("172.18.171.250")
	m.reconcileAll()
	// The host has an old idea of who holds the VIP.
	m.sh(s1.Host, "ip", "neigh", "replace", vip.String(), "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "stale")
	lanMAC := m.sh(s1.Edge, "cat", "/sys/class/net/lan0/address")

	d := m.desired["vpc1"]
	d.VIP = vip
	expectLines(t, "VIP taken", m.reconcile("vpc1").Changes, []string{"addr add 172.18.171.250/32 dev lan0 label cframe-vip, gratuitous ARP"})
	if got := m.sh(s1.Host, "ip", "neigh", "show", vip.String()); !strings.Contains(got, lanMAC) {
		t.Errorf("the gratuitous ARP did not reach the host: %q, want lladdr %s", got, lanMAC)
	}
	if err := m.net.Ping(s1.Host, vip, 1, 5*time.Second); err != nil {
		t.Errorf("host -> VIP: %v", err)
	}
	m.expectNoChanges()

	// Deleted by hand: repaired.
	m.sh(s1.Edge, "ip", "addr", "del", "172.18.171.250/32", "dev", "lan0")
	expectLines(t, "VIP repaired", m.reconcile("vpc1").Changes, []string{"addr add 172.18.171.250/32 dev lan0 label cframe-vip, gratuitous ARP"})

	// Kept as it is: neither removed nor, once gone, added.
	d.KeepVIP, d.VIP = true, netip.Addr{}
	expectLines(t, "VIP kept", m.reconcile("vpc1").Changes, nil)
	d.KeepVIP = false
	expectLines(t, "VIP released", m.reconcile("vpc1").Changes, []string{"addr del 172.18.171.250/32 dev lan0 label cframe-vip"})
	d.KeepVIP, d.VIP = true, vip
	expectLines(t, "absent VIP kept absent", m.reconcile("vpc1").Changes, nil)
	d.KeepVIP = false

	// Someone else's address, and someone else holding the VIP: left alone.
	m.sh(s1.Edge, "ip", "addr", "add", "172.18.171.251/32", "dev", "lan0")
	d.VIP = netip.MustParseAddr("172.18.171.251")
	res := m.reconcile("vpc1")
	expectLines(t, "foreign VIP", res.Changes, nil)
	expectLines(t, "foreign VIP conflict", res.Conflicts, []string{`address 172.18.171.251 on lan0 is not cframe's (no "cframe-vip" label): VIP not added`})
	d.VIP = vip
	m.reconcile("vpc1")
	d.VIP = netip.Addr{}
	m.reconcile("vpc1")
	if got := m.sh(s1.Edge, "ip", "-o", "addr", "show", "dev", "lan0"); !strings.Contains(got, "172.18.171.251/32") || strings.Contains(got, "172.18.171.250") {
		t.Errorf("after releasing the VIP:\n%s", got)
	}

	// Cleanup removes cframe's VIP and nothing else.
	d.VIP = vip
	m.reconcile("vpc1")
	var removed []string
	m.in("vpc1", func() (err error) { removed, err = m.k.Cleanup(); return err })
	if !slices.Contains(removed, "addr del 172.18.171.250/32 dev lan0 label cframe-vip") {
		t.Errorf("cleanup removed %q", removed)
	}
	if got := m.sh(s1.Edge, "ip", "-o", "addr", "show", "dev", "lan0"); !strings.Contains(got, "172.18.171.251/32") || !strings.Contains(got, "172.18.171.245/16") || strings.Contains(got, "172.18.171.250") {
		t.Errorf("after cleanup:\n%s", got)
	}
}

// tunnelAddrs lists the IPv6 addresses of s's tunnel device with their flags.
func (m *mesh) tunnelAddrs(s *topo.Site) []string {
	var out []string
	for _, l := range m.lines(s.Edge, "ip", "-6", "addr", "show", "dev", "cframe0") {
		if strings.HasPrefix(l, "inet6 ") {
			out = append(out, l)
		}
	}
	return out
}

// A site's IPv6 VIP on the LAN interface of a dual-stack edge: a /128
// nodad, noprefixroute, deprecated, announced by unsolicited neighbour
// advertisement (the host's stale entry moves), never the routes' source,
// reconciled to no-op, released, someone else's /128 left alone, and
// removed by cleanup.
func TestKernelVIP6(t *testing.T) {
	t.Parallel()
	m := newDualMesh(t)
	s1 := m.site("vpc1")
	vip := netip.MustParseAddr("2001:db8:18::250")
	m.reconcileAll()
	m.sh(s1.Host, "ip", "-6", "neigh", "replace", vip.String(), "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "stale")
	lanMAC := m.sh(s1.Edge, "cat", "/sys/class/net/lan0/address")

	d := m.desired["vpc1"]
	d.VIP6 = vip
	expectLines(t, "VIP6 taken", m.reconcile("vpc1").Changes, []string{"addr add 2001:db8:18::250/128 dev lan0 nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement"})
	if got := m.sh(s1.Host, "ip", "-6", "neigh", "show", vip.String()); !strings.Contains(got, lanMAC) {
		t.Errorf("the neighbour advertisement did not reach the host: %q, want lladdr %s", got, lanMAC)
	}
	if got := m.sh(s1.Edge, "ip", "-6", "-o", "addr", "show", "dev", "lan0"); !regexp.MustCompile(`2001:db8:18::250/128 .*nodad .*deprecated noprefixroute`).MatchString(got) {
		t.Errorf("the VIP6 on lan0:\n%s", got)
	}
	if err := m.net.Ping(s1.Host, vip, 1, 5*time.Second); err != nil {
		t.Errorf("host -> VIP6: %v", err)
	}
	m.expectNoChanges()
	if got := m.sh(s1.Edge, "ip", "-6", "route", "show", "proto", "207"); strings.Contains(got, "src "+vip.String()) {
		t.Errorf("a route has the VIP6 as its source:\n%s", got)
	}

	// Someone else's /128 in the site's block, nodad and deprecated but
	// without cframe's mark: left alone, and a VIP6 there is a conflict.
	m.sh(s1.Edge, "ip", "-6", "addr", "add", "2001:db8:18::251/128", "dev", "lan0", "nodad", "preferred_lft", "0")
	d.VIP6 = netip.MustParseAddr("2001:db8:18::251")
	res := m.reconcile("vpc1")
	expectLines(t, "foreign VIP6", res.Changes, []string{"addr del 2001:db8:18::250/128 dev lan0"})
	expectLines(t, "foreign VIP6 conflict", res.Conflicts, []string{"address 2001:db8:18::251 on lan0 is not cframe's (not a /128 that is nodad, noprefixroute, deprecated and valid forever): VIP not added"})

	// Released by a standby, taken again, then removed by cleanup only.
	d.VIP6 = vip
	m.reconcile("vpc1")
	d.VIP6 = netip.Addr{}
	expectLines(t, "VIP6 released", m.reconcile("vpc1").Changes, []string{"addr del 2001:db8:18::250/128 dev lan0"})
	d.VIP6 = vip
	m.reconcile("vpc1")
	var removed []string
	m.in("vpc1", func() (err error) { removed, err = m.k.Cleanup(); return err })
	if !slices.Contains(removed, "addr del 2001:db8:18::250/128 dev lan0") {
		t.Errorf("cleanup removed %q", removed)
	}
	if got := m.sh(s1.Edge, "ip", "-6", "-o", "addr", "show", "dev", "lan0"); !strings.Contains(got, "2001:db8:18::251/128") || !strings.Contains(got, "2001:db8:18::245/48") || strings.Contains(got, "2001:db8:18::250") {
		t.Errorf("after cleanup:\n%s", got)
	}
}
