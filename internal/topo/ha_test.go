package topo

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// An HA VPC: two gateways and the host on one bridged LAN, routes via the
// VIP, isolation between the gateways only, a dead gateway; and an EchoStream that
// measures the blackout.
func TestHAVPC(t *testing.T) {
	t.Parallel()
	SkipUnlessRoot(t, "bridge", "iptables")
	n := newNet(t)
	tp, err := Build(n, Walkthrough()[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	s := tp.Sites()[0]
	vip := netip.MustParseAddr("172.18.171.250")
	h, err := tp.MakeHA(s, vip, netip.MustParseAddr("172.18.171.246"))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Gateways) != 2 || h.Gateways[0].NS != s.Edge || h.Gateways[1].Public.String() != "198.19.255.10/24" {
		t.Fatalf("gateways: %+v %+v", h.Gateways[0], h.Gateways[1])
	}
	g1, g2 := h.Gateways[0], h.Gateways[1]
	for _, g := range h.Gateways {
		if err := n.Ping(s.Host, g.LANAddr, 1, 5*time.Second); err != nil {
			t.Errorf("host -> gateway %s: %v", g.LANAddr, err)
		}
		if err := n.Ping(g.NS, tp.Sites()[1].Underlay(), 1, 5*time.Second); err != nil {
			t.Errorf("gateway %s -> vpc2's edge over the underlay: %v", g.NS, err)
		}
	}
	if r := mustExec(t, n, s.Host, "ip", "route"); !strings.Contains(r, "172.31.0.0/16 via 172.18.171.250 dev eth0") {
		t.Errorf("host does not route via the VIP:\n%s", r)
	}

	// Isolated: the gateways lose each other, not the host or the router.
	if err := h.Isolate(tp, true); err != nil {
		t.Fatal(err)
	}
	if err := n.Ping(g1.NS, g2.LANAddr, 1, time.Second); err == nil {
		t.Error("isolated gateways still reach each other on the LAN")
	}
	if err := n.Ping(g1.NS, g2.Underlay(), 1, time.Second); err == nil {
		t.Error("isolated gateways still reach each other on the underlay")
	}
	if err := n.Ping(s.Host, g2.LANAddr, 1, 5*time.Second); err != nil {
		t.Errorf("isolation cut the host off: %v", err)
	}
	if err := h.Isolate(tp, false); err != nil {
		t.Fatal(err)
	}
	// (The neighbor entries that failed meanwhile resolve again.)
	if err := Eventually(10*time.Second, func() error { return n.Ping(g1.NS, g2.LANAddr, 1, time.Second) }); err != nil {
		t.Errorf("after isolation: %v", err)
	}

	// A flow from the host to the second gateway through its death.
	f, err := StartEchoStream(s.Host, g2.LANAddr, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // flow running before the outage
	if err := h.SetDown(tp, g2, true); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if err := n.Ping(s.Host, g2.LANAddr, 1, time.Second); err == nil {
		t.Error("a dead gateway answers")
	}
	if err := h.SetDown(tp, g2, false); err != nil {
		t.Fatal(err)
	}
	outage := time.Since(down)
	if err := Eventually(5*time.Second, func() error { return n.Ping(s.Host, g2.LANAddr, 1, time.Second) }); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("outage %s: %s", outage.Round(time.Millisecond), st)
	if st.Blackout < outage-50*time.Millisecond || st.Received == 0 || st.Received >= st.Sent {
		t.Fatalf("flow %s does not show the %s outage", st, outage)
	}
}
