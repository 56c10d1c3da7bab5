package topo

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPinger: an answered address is reported with the time of its answer,
// an unanswered one times out, and two Pingers share a namespace.
func TestPinger(t *testing.T) {
	t.Parallel()
	n := newNet(t)
	a, _ := n.NS("a")
	b, _ := n.NS("b")
	if err := n.Veth(End{NS: a, Name: "x0", Addr: netip.MustParsePrefix("10.1.0.1/30")},
		End{NS: b, Name: "y0", Addr: netip.MustParsePrefix("10.1.0.2/30")}); err != nil {
		t.Fatal(err)
	}
	p1, err := NewPinger(a)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	p2, err := NewPinger(a)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	for i, p := range []*Pinger{p1, p2, p1} {
		start := time.Now()
		at, err := p.Until(netip.MustParseAddr("10.1.0.2"), time.Millisecond, 5*time.Second)
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		if at.Before(start) || at.After(time.Now()) {
			t.Errorf("ping %d: answer time %s outside the call (started %s)", i, at, start)
		}
	}
	if _, err := p1.Until(netip.MustParseAddr("10.1.0.3"), time.Millisecond, 50*time.Millisecond); err == nil {
		t.Error("an address nobody has answered")
	}
	if _, err := p1.Until(netip.MustParseAddr("192.0.2.1"), time.Millisecond, 20*time.Millisecond); err == nil {
		t.Error("an unroutable address answered")
	}
}

// TestProcUsage reads a started program's own pid and usage.
func TestProcUsage(t *testing.T) {
	t.Parallel()
	n := newNet(t)
	a, _ := n.NS("a")
	p, err := n.Start(a, "", "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	var u Usage
	if err := Eventually(10*time.Second, func() error {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		if err != nil || strings.TrimSpace(string(comm)) != "sleep" {
			return fmt.Errorf("pid %d runs %q, not sleep", p.Pid(), comm)
		}
		u, err = ProcUsage(p.Pid())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 || u.PeakRSS < u.RSS || u.CPU <= 0 {
		t.Errorf("usage %+v", u)
	}
	if _, err := ProcUsage(-1); err == nil {
		t.Error("usage of pid -1")
	}
}
