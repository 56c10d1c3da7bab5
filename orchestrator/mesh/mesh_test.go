package mesh

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
)

func TestVTEPMAC(t *testing.T) {
	a, b := VTEPMAC("sz-1"), VTEPMAC("hk-1")
	if !bytes.Equal(a, VTEPMAC("sz-1")) {
		t.Fatal("VTEPMAC is not stable")
	}
	if bytes.Equal(a, b) {
		t.Fatal("different edges got the same VTEP MAC")
	}
	for _, m := range []([]byte){a, b} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("%x is not a locally administered unicast MAC", m)
		}
	}
}

func edge(name, host, cidr string, extra ...string) bus.Edge {
	e := bus.Edge{Name: name, HostAddr: netip.MustParseAddrPort(host), CIDR: netip.MustParsePrefix(cidr)}
	for _, x := range extra {
		e.ExtraCIDRs = append(e.ExtraCIDRs, netip.MustParsePrefix(x))
	}
	return e
}

func TestDesired(t *testing.T) {
	set := map[string]bus.Edge{
		"sz-1": edge("sz-1", "198.51.100.10:58423", "172.18.0.0/16"),
		"hk-1": edge("hk-1", "203.0.113.10:58424", "172.31.0.0/16", "10.244.0.0/16"),
		"gz-3": edge("gz-3", "192.0.2.10:58423", "172.20.0.0/16"),
	}
	l := Local{Name: "gz-3", Mode: netcfg.ModeVXLAN, Device: "cframe0", Port: 58423, Masquerade: true}
	d, ok := Desired(l, set, nil)
	if !ok {
		t.Fatal("gz-3 is in the set but Desired says unregistered")
	}
	if d.Device != "cframe0" || d.Port != 58423 || d.VNI != VNI || !d.Masquerade || !bytes.Equal(d.DeviceMAC, VTEPMAC("gz-3")) {
		t.Fatalf("local fields wrong: %+v", d)
	}
	if len(d.LocalCIDRs) != 1 || d.LocalCIDRs[0] != netip.MustParsePrefix("172.20.0.0/16") {
		t.Fatalf("LocalCIDRs = %v", d.LocalCIDRs)
	}
	if len(d.Peers) != 2 || d.Peers[0].Name != "hk-1" || d.Peers[1].Name != "sz-1" {
		t.Fatalf("peers = %+v, want hk-1 then sz-1", d.Peers)
	}
	hk := d.Peers[0]
	if hk.Underlay.Port() != 58424 || hk.NextHop != netip.MustParseAddr("172.31.0.0") || len(hk.CIDRs) != 2 ||
		hk.CIDRs[1] != netip.MustParsePrefix("10.244.0.0/16") || !bytes.Equal(hk.MAC, VTEPMAC("hk-1")) {
		t.Fatalf("hk-1 peer = %+v", hk)
	}

	d, ok = Desired(Local{Name: "new-1", Mode: netcfg.ModeVXLAN, Device: "cframe0", Port: 1}, set, nil)
	if ok || len(d.Peers) != 0 || len(d.LocalCIDRs) != 0 {
		t.Fatalf("unregistered edge: ok=%v desired=%+v, want no peers", ok, d)
	}
}

func gateway(name, host, site string, priority int) bus.Edge {
	e := edge(name, host, "172.18.0.0/16", "10.244.0.0/16")
	e.Site, e.Priority = site, priority
	return e
}

func TestDesiredSites(t *testing.T) {
	set := map[string]bus.Edge{
		"sz-1": gateway("sz-1", "198.51.100.10:58423", "sz", 100),
		"sz-2": gateway("sz-2", "198.51.100.11:58423", "sz", 100),
		"hk-1": edge("hk-1", "203.0.113.10:58423", "172.31.0.0/16"),
	}
	routed := func(d netcfg.Desired) map[string]bool {
		out := map[string]bool{}
		for _, p := range d.Peers {
			if !bytes.Equal(p.MAC, VTEPMAC(p.Name)) {
				t.Fatalf("peer %s has MAC %s", p.Name, p.MAC)
			}
			if p.NextHop.IsValid() != (len(p.CIDRs) > 0) {
				t.Fatalf("peer %s: next hop %s with cidrs %v", p.Name, p.NextHop, p.CIDRs)
			}
			out[p.Name] = len(p.CIDRs) > 0
		}
		return out
	}
	hk := Local{Name: "hk-1", Mode: netcfg.ModeVXLAN}
	// No claim known: the preferred gateway (equal priorities: first name).
	d, _ := Desired(hk, set, nil)
	if r := routed(d); len(r) != 2 || !r["sz-1"] || r["sz-2"] {
		t.Fatalf("no claim: routed = %v, want sz-1 only (both gateways peers)", r)
	}
	// A claim moves the site's next hop and routes, and nothing else.
	claims := map[string]bus.Claim{"sz": {Site: "sz", Gateway: "sz-2", Epoch: 3}}
	d2, _ := Desired(hk, set, claims)
	if r := routed(d2); !r["sz-2"] || r["sz-1"] {
		t.Fatalf("claim for sz-2: routed = %v", r)
	}
	if d2.Peers[1].NextHop != NextHop(set["sz-1"]) || len(d2.Peers[1].CIDRs) != 2 {
		t.Fatalf("sz-2 as active: %+v", d2.Peers[1])
	}
	// A claim for a gateway that is gone falls back to the preferred one.
	delete(set, "sz-1")
	if r := routed(must(Desired(hk, set, map[string]bus.Claim{"sz": {Site: "sz", Gateway: "sz-1", Epoch: 4}}))); !r["sz-2"] {
		t.Fatalf("claim for a deleted gateway: routed = %v", r)
	}
	set["sz-1"] = gateway("sz-1", "198.51.100.10:58423", "sz", 100)
	// A gateway routes the remote sites, never its own site's other gateways.
	d3, _ := Desired(Local{Name: "sz-2", Mode: netcfg.ModeVXLAN}, set, claims)
	if r := routed(d3); len(r) != 2 || !r["hk-1"] || r["sz-1"] {
		t.Fatalf("from sz-2: routed = %v, want hk-1 routed and sz-1 a plain peer", r)
	}
	if len(d3.LocalCIDRs) != 2 {
		t.Fatalf("sz-2's local cidrs = %v", d3.LocalCIDRs)
	}
}

func must(d netcfg.Desired, _ bool) netcfg.Desired { return d }

func TestSiteActive(t *testing.T) {
	s := Sites(map[string]bus.Edge{
		"a-1": gateway("a-1", "198.51.100.10:58423", "a", 100),
		"a-2": gateway("a-2", "198.51.100.11:58423", "a", 200),
		"a-3": gateway("a-3", "198.51.100.12:58423", "a", 200),
	})["a"]
	if !s.Explicit() || len(s.Gateways) != 3 {
		t.Fatalf("site = %+v", s)
	}
	for _, tt := range []struct {
		claim bus.Claim
		want  string
	}{
		{bus.Claim{}, "a-2"}, // highest priority, first name
		{bus.Claim{Site: "a", Gateway: "a-1", Epoch: 7}, "a-1"},
		{bus.Claim{Site: "a", Gateway: "gone", Epoch: 8}, "a-2"},
		{bus.Claim{Site: "b", Gateway: "a-3", Epoch: 8}, "a-2"}, // another site's claim
	} {
		if got := s.Active(tt.claim).Name; got != tt.want {
			t.Errorf("Active(%+v) = %s, want %s", tt.claim, got, tt.want)
		}
	}
}

func TestLinkLocal(t *testing.T) {
	a, b := LinkLocal("sz-1"), LinkLocal("sz-2")
	if a == b || !a.IsLinkLocalUnicast() || !a.Is6() {
		t.Fatalf("LinkLocal = %s, %s", a, b)
	}
	// RFC 4291 appendix A: flip the universal/local bit, insert ff:fe.
	m := VTEPMAC("sz-1")
	want := netip.MustParseAddr(fmt.Sprintf("fe80::%02x%02x:%02xff:fe%02x:%02x%02x", m[0]^2, m[1], m[2], m[3], m[4], m[5]))
	if a != want {
		t.Fatalf("LinkLocal(sz-1) = %s, want the EUI-64 of %s: %s", a, m, want)
	}
}

// TestDesiredDualStack: IPv6 CIDRs in any position; the IPv4 next hop is
// the first IPv4 CIDR's network address, and an edge with IPv6 CIDRs only
// has none (its networks are routed via its link-local address).
func TestDesiredDualStack(t *testing.T) {
	set := map[string]bus.Edge{
		"sz-1": edge("sz-1", "198.51.100.10:58423", "172.18.0.0/16", "2001:db8:18::/48"),
		"hk-1": edge("hk-1", "203.0.113.10:58423", "2001:db8:31::/48", "172.31.0.0/16"),
		"v6-1": edge("v6-1", "192.0.2.20:58423", "2001:db8:99::/48"),
	}
	d, ok := Desired(Local{Name: "sz-1", Mode: netcfg.ModeVXLAN}, set, nil)
	if !ok || len(d.Peers) != 2 {
		t.Fatalf("Desired = %+v, %v", d, ok)
	}
	if hk := d.Peers[0]; hk.NextHop != netip.MustParseAddr("172.31.0.0") || hk.LinkLocal != LinkLocal("hk-1") || len(hk.CIDRs) != 2 {
		t.Errorf("hk-1 peer = %+v, want next hop 172.31.0.0 (its IPv4 CIDR's) and both CIDRs", hk)
	}
	if v6 := d.Peers[1]; v6.NextHop.IsValid() || v6.LinkLocal != LinkLocal("v6-1") || len(v6.CIDRs) != 1 {
		t.Errorf("v6-1 peer = %+v, want no IPv4 next hop, its link-local address and its CIDR", v6)
	}
}

// TestDesiredUnderlayFamilies: an edge's peers are the edges of its own
// underlay family; an IPv6 underlay's local address defaults to the
// hostaddr, and edge.toml's local_addr wins.
func TestDesiredUnderlayFamilies(t *testing.T) {
	set := map[string]bus.Edge{
		"sz-1": edge("sz-1", "198.51.100.10:58423", "172.18.0.0/16", "2001:db8:18::/48"),
		"hk-1": edge("hk-1", "[2001:db8:ff01::10]:58423", "172.31.0.0/16", "2001:db8:31::/48"),
		"gz-3": edge("gz-3", "[2001:db8:ff02::10]:58423", "172.20.0.0/16"),
	}
	if !ShareUnderlay(set["hk-1"], set["gz-3"]) || ShareUnderlay(set["sz-1"], set["hk-1"]) {
		t.Error("ShareUnderlay wrong")
	}
	d, _ := Desired(Local{Name: "sz-1", Mode: netcfg.ModeVXLAN}, set, nil)
	if len(d.Peers) != 0 || d.LocalAddr.IsValid() {
		t.Errorf("IPv4-underlay sz-1: peers %+v, local %s; want none and the kernel's choice", d.Peers, d.LocalAddr)
	}
	d, _ = Desired(Local{Name: "hk-1", Mode: netcfg.ModeVXLAN}, set, nil)
	if len(d.Peers) != 1 || d.Peers[0].Name != "gz-3" || d.LocalAddr != netip.MustParseAddr("2001:db8:ff01::10") {
		t.Errorf("IPv6-underlay hk-1: peers %+v, local %s; want gz-3 and its hostaddr", d.Peers, d.LocalAddr)
	}
	d, _ = Desired(Local{Name: "hk-1", Mode: netcfg.ModeVXLAN, LocalAddr: netip.MustParseAddr("2001:db8:aa::1")}, set, nil)
	if d.LocalAddr != netip.MustParseAddr("2001:db8:aa::1") {
		t.Errorf("local_addr not kept: %s", d.LocalAddr)
	}
}
