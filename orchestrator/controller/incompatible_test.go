package controller

import (
	"net/netip"
	"testing"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

func TestIncompatibleLink(t *testing.T) {
	a := bus.Edge{Name: "sz-1", HostAddr: netip.MustParseAddrPort("198.51.100.10:58423")}
	b := bus.Edge{Name: "hk-1", HostAddr: netip.MustParseAddrPort("[2001:db8::10]:58423")}
	l := incompatibleLink(a, b)
	if l.A != "sz-1" || l.B != "hk-1" || l.State != api.LinkIncompatible || l.Config != api.ConfigNone || l.Probe != api.ProbeUnknown ||
		l.Reason != "no common underlay: sz-1's hostaddr is IPv4, hk-1's is IPv6" {
		t.Errorf("incompatibleLink = %+v", l)
	}
}
