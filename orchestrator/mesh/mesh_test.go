package mesh

import (
	"bytes"
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
	d, ok := Desired(l, set)
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

	d, ok = Desired(Local{Name: "new-1", Mode: netcfg.ModeVXLAN, Device: "cframe0", Port: 1}, set)
	if ok || len(d.Peers) != 0 || len(d.LocalCIDRs) != 0 {
		t.Fatalf("unregistered edge: ok=%v desired=%+v, want no peers", ok, d)
	}
}
