package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// fakeConn records the probes sent.
type fakeConn struct{ sent []Echo }

func (f *fakeConn) Send(echoes []Echo) error {
	f.sent = append(f.sent, echoes...)
	return nil
}
func (f *fakeConn) Receive(func(netip.Addr, uint16, uint16)) {}
func (f *fakeConn) Close() error                             { return nil }

// clocked is a Prober driven by hand: step and reply at chosen times.
func clocked(t0 time.Time) (*Prober, *fakeConn, *time.Time) {
	c := &fakeConn{}
	p := New(c)
	now := t0
	p.now = func() time.Time { return now }
	return p, c, &now
}

// run steps the prober every Tick from *now to until, answering every probe
// to an address in answer after rtt.
func run(p *Prober, c *fakeConn, now *time.Time, until time.Time, rtt time.Duration, answer ...netip.Addr) {
	type pending struct {
		s  Echo
		at time.Time
	}
	var q []pending
	for ; !now.After(until); *now = now.Add(Tick) {
		for len(q) > 0 && !q[0].at.After(*now) {
			p.reply(q[0].s.Dst, q[0].s.ID, q[0].s.Seq, q[0].at)
			q = q[1:]
		}
		c.sent = c.sent[:0]
		p.step(*now)
		for _, s := range c.sent {
			for _, a := range answer {
				if s.Dst == a {
					q = append(q, pending{s, now.Add(rtt)})
				}
			}
		}
	}
}

func TestProberStates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p, c, now := clocked(t0)
	peer := netip.MustParseAddr("fe80::1%cframe0")
	lan := netip.MustParseAddr("172.18.171.246")
	dead := netip.MustParseAddr("fe80::2%cframe0")
	p.SetTargets([]Target{
		{Name: "hk-1", Addr: peer},
		{Name: "sz-2", Addr: lan, Interval: 25 * time.Millisecond, DownAfter: 150 * time.Millisecond},
		{Name: "gz-3", Addr: dead},
	})
	run(p, c, now, t0.Add(time.Second), 3*time.Millisecond, peer, lan)
	st := p.States()
	if hk := st["hk-1"]; !hk.Up || hk.RTT != 3*time.Millisecond || hk.Sent < 9 || hk.Sent > 11 || hk.Received+1 < hk.Sent {
		t.Fatalf("hk-1 = %+v, want up with rtt 3ms and ~10 probes in a second", hk)
	}
	if lanSt := st["sz-2"]; !lanSt.Up || lanSt.Sent < 38 || lanSt.Sent > 41 {
		t.Fatalf("sz-2 = %+v, want up with ~40 probes in a second", lanSt)
	}
	if gz := st["gz-3"]; gz.Up || gz.Received != 0 || !gz.Since.Equal(t0) {
		t.Fatalf("gz-3 = %+v, want down since the start", gz)
	}

	// hk-1 stops answering: down a little after DownAfter, not before.
	last := st["hk-1"].LastReply
	run(p, c, now, last.Add(DefaultDownAfter-2*Tick), 0, lan)
	if hk, _ := p.State("hk-1"); !hk.Up {
		t.Fatalf("hk-1 down %s after its last answer, before DownAfter", now.Sub(hk.LastReply))
	}
	run(p, c, now, last.Add(DefaultDownAfter+2*Tick), 0, lan)
	hk, _ := p.State("hk-1")
	if hk.Up || hk.Since.Sub(hk.LastReply) < DefaultDownAfter || hk.Since.Sub(hk.LastReply) > DefaultDownAfter+2*Tick {
		t.Fatalf("hk-1 = %+v, want down DownAfter after its last answer", hk)
	}
	// And up again with its first answer.
	back := *now
	run(p, c, now, back.Add(200*time.Millisecond), time.Millisecond, peer, lan)
	if hk, _ := p.State("hk-1"); !hk.Up || hk.Since.Before(back) {
		t.Fatalf("hk-1 = %+v, want up again since %s", hk, back)
	}

	// Urgent: probes every UrgentInterval for a while.
	c.sent = nil
	p.Urgent("gz-3", 100*time.Millisecond)
	n := 0
	for end := now.Add(100 * time.Millisecond); now.Before(end); *now = now.Add(Tick) {
		c.sent = c.sent[:0]
		p.step(*now)
		for _, s := range c.sent {
			if s.Dst == dead {
				n++
			}
		}
	}
	if n < 9 || n > 11 {
		t.Fatalf("%d urgent probes in 100ms, want 10", n)
	}

	// Answers that are not ours change nothing: another identifier, an
	// unknown address, a sequence number never sent.
	before := p.States()["gz-3"]
	p.reply(dead, p.id+1, 1, *now)
	p.reply(netip.MustParseAddr("fe80::99%cframe0"), p.id, 1, *now)
	p.reply(dead, p.id, 60000, *now)
	if after := p.States()["gz-3"]; after.Up || after.Received != before.Received {
		t.Fatalf("foreign replies counted: %+v", after)
	}

	// Replacing the targets keeps the state of unchanged ones.
	p.SetTargets([]Target{{Name: "hk-1", Addr: peer}, {Name: "gz-3", Addr: netip.MustParseAddr("fe80::3%cframe0")}})
	if names := p.Names(); len(names) != 2 || names[0] != "gz-3" || names[1] != "hk-1" {
		t.Fatalf("names = %v", names)
	}
	if hk, _ := p.State("hk-1"); !hk.Up {
		t.Fatal("hk-1 lost its state when the targets were replaced")
	}
	if gz, _ := p.State("gz-3"); gz.Sent != 0 || !gz.Since.Equal(*now) {
		t.Fatalf("gz-3 with a new address kept its old state: %+v", gz)
	}
}

func TestProberSendError(t *testing.T) {
	p := New(&failConn{})
	p.SetTargets([]Target{{Name: "x", Addr: netip.MustParseAddr("192.0.2.1")}})
	p.step(time.Now().Add(time.Second))
	if p.Err() == nil {
		t.Fatal("a failing send was not reported")
	}
}

type failConn struct{ fakeConn }

func (*failConn) Send([]Echo) error { return errors.New("network is unreachable") }

// The prober wakes every Tick only while a target needs it: targets probed
// every half second relax it to RelaxedTick; a LAN target or an urgent one
// brings Tick back, and an urgent one wakes Run at once.
func TestProberPeriod(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p, _, now := clocked(t0)
	peers := []Target{
		{Name: "hk-1", Addr: netip.MustParseAddr("fe80::1%cframe0"), Interval: 500 * time.Millisecond},
		{Name: "gz-3", Addr: netip.MustParseAddr("fe80::2%cframe0"), Interval: 500 * time.Millisecond},
	}
	p.SetTargets(peers)
	if d := p.period(*now); d != RelaxedTick {
		t.Fatalf("half-second peers: period %s, want %s", d, RelaxedTick)
	}
	<-p.wake // SetTargets woke Run
	p.Urgent("hk-1", 100*time.Millisecond)
	select {
	case <-p.wake:
	default:
		t.Fatal("Urgent did not wake Run")
	}
	if d := p.period(*now); d != Tick {
		t.Fatalf("urgent target: period %s, want %s", d, Tick)
	}
	if d := p.period(now.Add(101 * time.Millisecond)); d != RelaxedTick {
		t.Fatalf("after the urgency: period %s, want %s", d, RelaxedTick)
	}
	p.SetTargets(append(peers, Target{Name: "lan:sz-2", Addr: netip.MustParseAddr("172.18.171.246"), Interval: 20 * time.Millisecond}))
	if d := p.period(*now); d != Tick {
		t.Fatalf("with a LAN target: period %s, want %s", d, Tick)
	}
}

// Targets probed every half second go in slots, one per RelaxedBurst of
// them: 300 are probed in three bursts per interval, each exactly once.
func TestProberRelaxedSlots(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p, c, now := clocked(t0)
	var ts []Target
	for i := range 300 {
		ts = append(ts, Target{Name: fmt.Sprintf("peer-%03d", i), Addr: netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)}), Interval: 500 * time.Millisecond})
	}
	p.SetTargets(ts)
	bursts, probed := 0, map[netip.Addr]int{}
	for end := t0.Add(500 * time.Millisecond); now.Before(end); *now = now.Add(Tick) {
		c.sent = c.sent[:0]
		p.step(*now)
		if len(c.sent) > 0 {
			bursts++
		}
		for _, e := range c.sent {
			probed[e.Dst]++
		}
	}
	if bursts != 3 || len(probed) != 300 {
		t.Fatalf("%d bursts probing %d targets in one interval, want 3 and 300", bursts, len(probed))
	}
	for a, n := range probed {
		if n != 1 {
			t.Fatalf("%s probed %d times in one interval", a, n)
		}
	}
}

// A target has no verdict until it answers or DownAfter passes unanswered.
func TestProberKnown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p, c, now := clocked(t0)
	up, silent := netip.MustParseAddr("fe80::1%cframe0"), netip.MustParseAddr("fe80::2%cframe0")
	p.SetTargets([]Target{{Name: "up", Addr: up}, {Name: "silent", Addr: silent}})
	run(p, c, now, t0.Add(DefaultDownAfter/2), time.Millisecond, up)
	if st, _ := p.State("up"); !st.Known || !st.Up {
		t.Fatalf("answering target: %+v, want known and up", st)
	}
	if st, _ := p.State("silent"); st.Known {
		t.Fatalf("silent target before DownAfter: %+v, want no verdict", st)
	}
	run(p, c, now, t0.Add(DefaultDownAfter+2*Tick), time.Millisecond, up)
	if st, _ := p.State("silent"); !st.Known || st.Up {
		t.Fatalf("silent target after DownAfter: %+v, want known and down", st)
	}
}
