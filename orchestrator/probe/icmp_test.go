package probe

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// Real raw sockets in namespaces: a peer's kernel answers over IPv4 and
// over an IPv6 link-local address, and a peer whose link dies goes down.
func TestICMPInNamespaces(t *testing.T) {
	topo.SkipUnlessRoot(t)
	n, err := topo.New(topo.UniquePrefix("cfp"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	a, err := n.NS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.NS("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Veth(topo.End{NS: a, Name: "va", Addr: netip.MustParsePrefix("10.77.0.1/24")},
		topo.End{NS: b, Name: "vb", Addr: netip.MustParsePrefix("10.77.0.2/24")}); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{a, "fe80::a/64", "va"}, {b, "fe80::b/64", "vb"}} {
		if _, err := n.Exec(c[0], "ip", "-6", "addr", "add", c[1], "dev", c[2], "nodad"); err != nil {
			t.Skipf("no IPv6 here: %v", err)
		}
	}

	var p *Prober
	if err := topo.Do(a, func() (err error) { p, err = Open(); return err }); err != nil {
		t.Fatal(err)
	}
	p.SetTargets([]Target{
		{Name: "b4", Addr: netip.MustParseAddr("10.77.0.2")},
		{Name: "b6", Addr: netip.MustParseAddr("fe80::b%va")},
		{Name: "nobody", Addr: netip.MustParseAddr("10.77.0.9")},
	})
	done := make(chan struct{})
	defer close(done)
	go p.Run(done)
	wait := func(want map[string]bool) {
		t.Helper()
		if err := topo.Eventually(5*time.Second, func() error {
			for name, up := range want {
				if st, _ := p.State(name); st.Up != up {
					return fmt.Errorf("%s = %+v (send error %v), want up=%v", name, st, p.Err(), up)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	wait(map[string]bool{"b4": true, "b6": true})
	for _, name := range []string{"b4", "b6"} {
		if st, _ := p.State(name); st.RTT <= 0 || st.RTT > time.Second || st.Received == 0 {
			t.Fatalf("%s = %+v", name, st)
		}
	}
	if err := topo.Eventually(5*time.Second, func() error {
		if st, _ := p.State("nobody"); st.Sent < 3 {
			return fmt.Errorf("nobody probed %d times", st.Sent)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.State("nobody"); st.Up || st.Received != 0 {
		t.Fatalf("nobody = %+v, want down", st)
	}
	// A host's death: its link goes down, its kernel answers no more.
	if _, err := n.Exec(b, "ip", "link", "set", "vb", "down"); err != nil {
		t.Fatal(err)
	}
	wait(map[string]bool{"b4": false, "b6": false})
	// Back up (IPv6 addresses went with the link).
	if _, err := n.Exec(b, "ip", "link", "set", "vb", "up"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Exec(b, "ip", "-6", "addr", "add", "fe80::b/64", "dev", "vb", "nodad"); err != nil {
		t.Fatal(err)
	}
	wait(map[string]bool{"b4": true, "b6": true})
}
