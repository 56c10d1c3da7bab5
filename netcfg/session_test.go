package netcfg

import (
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/cframe/cframe/internal/topo"
)

// TestRequestCounting: a session counts every netlink request once, whether
// it went out on the session's own socket or on package netlink's handle —
// including the ones package netlink makes on its own, like the lookup
// after creating a link —, and every program it runs.
func TestRequestCounting(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	_, ns := oneNS(t, "nq", "count")
	k, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Do(ns, func() error {
		s, err := k.begin()
		if err != nil {
			return err
		}
		defer s.end()
		var want Requests
		step := func(what string, more Requests, f func() error) {
			t.Helper()
			if err := f(); err != nil {
				t.Errorf("%s: %v", what, err)
			}
			if want = want.plus(more); s.requests() != want {
				t.Errorf("after %s: counted %+v, want %+v", what, s.requests(), want)
			}
		}
		r := newReading(&Desired{}, nil)
		step("the links dump (package netlink)", Requests{Netlink: 1}, func() error { return s.readLinks(r) })
		step("the routes dumps, IPv4 and IPv6 (the session's socket)", Requests{Netlink: 2}, func() error { return s.readRoutes(r) })
		step("lo up (package netlink)", Requests{Netlink: 1}, func() error {
			return s.nl.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}})
		})
		step("a neighbor get of nothing (the session's socket)", Requests{Netlink: 1}, func() error {
			return s.get(neighRequest(unix.RTM_GETNEIGH, 0, &netlink.Ndmsg{Family: unix.AF_INET, Index: 1},
				nl.NewRtAttr(unix.NDA_DST, []byte{192, 0, 2, 99})), nil)
		})
		// Created under a temporary name (add, and package netlink's lookup
		// of the new link), given its alias and name, then up.
		l := link{Name: "cfcount0", Kind: "vxlan", Alias: OwnerAlias, MTU: 1450, VNI: 7, Port: 4789}
		step("a link created", Requests{Netlink: 5}, func() error { return linkAdd(l).do(s) })
		step("a program run", Requests{Exec: 1}, func() error { _, err := s.execute("", "true"); return err })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
