package ha

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
)

// takenOver reports whether every live agent but the old active's follows
// gw and gw holds the VIP (the old active's agent may be dead, its kernel
// still holding the VIP).
func (s *sim) takenOver(site, gw string, except string) bool {
	for _, name := range s.names {
		n := s.nodes[name]
		if name == except || !n.hostUp || !n.agentUp {
			continue
		}
		if n.e.Claims()[site].Gateway != gw {
			return false
		}
	}
	_, v := s.nodes[gw].e.VIP()
	return v == VIPHeld
}

// The active gateway stops forwarding — its host up, its kernel answering
// every probe, its agent dead (nothing repairs it) or alive (a foreign
// DROP it leaves alone): the remote gateways' probes through it to the
// standby's LAN address go unanswered, the standby takes over, and the
// site stays there.
func TestNotForwardingFailsOver(t *testing.T) {
	for _, agentDead := range []bool{true, false} {
		s := started(t, walkthroughHA(100, 100)...)
		saved := s.nodes["sz-1"].e.SavedClaims()
		if agentDead {
			s.nodes["sz-1"].agentUp = false
			s.run(2 * time.Second)
			if s.nodes["sz-2"].proposals != 0 {
				t.Fatalf("sz-2 proposed while only sz-1's agent was down: %s", s)
			}
		}
		s.nodes["sz-1"].forwards = false
		took := s.until("sz-2 takes over", 3*time.Second, func() bool { return s.takenOver("sz", "sz-2", "sz-1") })
		t.Logf("agent dead %v: failover after the active stopped forwarding: %s (simulated)", agentDead, took)
		if took > time.Second {
			t.Fatalf("took %s", took)
		}
		c := s.nodes["hk-1"].e.Claims()["sz"]
		if c.Epoch != 2 || !strings.Contains(c.Reason, "sz-1 does not forward: probes through it to sz-2 unanswered from gz-3, hk-1") {
			t.Fatalf("claim = %+v", c)
		}
		if !agentDead {
			s.until("sz-1 steps down", time.Second, func() bool { _, v := s.nodes["sz-1"].e.VIP(); return v == VIPNone })
		}
		// Still not forwarding, now a standby: nothing moves again.
		s.run(10 * time.Second)
		if !s.takenOver("sz", "sz-2", "sz-1") || s.nodes["hk-1"].e.Claims()["sz"].Epoch != 2 || s.nodes["sz-2"].proposals != 1 {
			t.Fatalf("not stable after the failover: %s", s)
		}
		// The agent returns and repairs forwarding: sz-1 stays standby.
		if agentDead {
			s.nodes["sz-1"].forwards = true
			s.startAgent("sz-1", saved)
			s.nodes["sz-1"].proposals = 0
			s.until("sz-1 steps down", time.Second, func() bool { _, v := s.nodes["sz-1"].e.VIP(); return v == VIPNone })
			s.run(10 * time.Second)
			if !s.activeEverywhere("sz", "sz-2") || s.nodes["sz-1"].proposals != 0 {
				t.Fatalf("after sz-1's agent returned: %s", s)
			}
		}
	}
}

// The standby has reports that the active gateway does not forward, but
// the witnesses' own probes through it still get answers: they refuse,
// and the standby backs off.
func TestWrongForwardingEvidenceRefused(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	report := func() {
		for _, w := range []string{"hk-1", "gz-3"} {
			s.queue = append(s.queue, delivery{at: s.now, from: w, to: "sz-2",
				m: Message{Kind: KindDown, From: w, Claim: bus.Claim{Site: "sz"}, Prev: "sz-1", Why: WhyForwarding}})
		}
	}
	report()
	s.until("sz-2 proposes", time.Second, func() bool { return s.nodes["sz-2"].proposals == 1 })
	s.until("refused", time.Second, func() bool { return s.nodes["sz-2"].e.cand == nil })
	if e := s.nodes["sz-2"].e; e.refusedOn != evidenceForwarding || e.backoff == 0 {
		t.Fatalf("sz-2 after the refusal: refused on %v, backoff %s", e.refusedOn, e.backoff)
	}
	// The same reports again: the backoff holds.
	report()
	s.run(500 * time.Millisecond)
	if p := s.nodes["sz-2"].proposals; p != 1 {
		t.Fatalf("sz-2 proposed %d times, want 1 within its backoff", p)
	}
	s.run(5 * time.Second)
	if !s.activeEverywhere("sz", "sz-1") || s.nodes["hk-1"].e.Claims()["sz"].Epoch != 1 || s.overlap > 0 {
		t.Fatalf("wrong evidence moved the site: %s (VIP held twice for %s)", s, s.overlap)
	}
}

// A standby whose LAN drops packets from the other sites arriving on the
// LAN (strict rp_filter) never answers the probes through the active
// gateway: that is no evidence, so nothing fails over when the active
// stops forwarding (undetected), and the witnesses warn about it.
func TestForwardingNeverAnsweredIsNoEvidence(t *testing.T) {
	s := newSim(t, walkthroughHA(100, 100)...)
	s.nodes["sz-2"].strictRP = true
	s.until("first election", 3*time.Second, func() bool { return s.activeEverywhere("sz", "sz-1") })
	s.run(6 * time.Second)
	if !s.nodes["hk-1"].e.silentWarned[ForwardTarget("sz-1", "sz-2").Name()] {
		t.Fatalf("hk-1 did not warn about probes through sz-1 that never answered")
	}
	s.nodes["sz-1"].forwards = false
	s.run(5 * time.Second)
	if s.nodes["sz-2"].proposals != 0 || !s.activeEverywhere("sz", "sz-1") {
		t.Fatalf("probes that never answered moved the site: %s", s)
	}
}

// The remote gateways probe a standby's LAN address only when it lies in
// the site's networks and is not the VIP, and only from an edge that is
// its own site's active gateway (a standby's answers would come back
// through another gateway).
func TestForwardTargets(t *testing.T) {
	hk1 := lone("hk-1", "172.31.0.0/16")
	hk1.Site, hk1.Priority, hk1.VIP = "hk", 100, netip.MustParseAddr("172.31.185.250")
	hk2 := hk1
	hk2.Name = "hk-2"
	s := newSim(t, gw("sz-1", "sz", 100), gw("sz-2", "sz", 100), hk1, hk2, lone("gz-3", "172.20.0.0/16"))
	fwd := func(name string) map[string]netip.Addr {
		out := map[string]netip.Addr{}
		for _, tg := range s.nodes[name].e.Targets("cframe0") {
			if strings.HasPrefix(tg.Name, "fwd:") {
				out[tg.Name] = tg.Addr
			}
		}
		return out
	}
	s.until("first elections", 3*time.Second, func() bool {
		return s.takenOver("sz", "sz-1", "") && s.takenOver("hk", "hk-1", "")
	})
	s.run(time.Second)
	want := map[string]netip.Addr{ForwardTarget("sz-1", "sz-2").Name(): s.lanAddr("sz-2"), ForwardTarget("hk-1", "hk-2").Name(): s.lanAddr("hk-2")}
	if got := fwd("gz-3"); len(got) != 2 || got[ForwardTarget("sz-1", "sz-2").Name()] != want[ForwardTarget("sz-1", "sz-2").Name()] ||
		got[ForwardTarget("hk-1", "hk-2").Name()] != want[ForwardTarget("hk-1", "hk-2").Name()] {
		t.Fatalf("gz-3's forwarding targets = %v, want %v", got, want)
	}
	if got := fwd("hk-2"); len(got) != 0 {
		t.Fatalf("hk-2, a standby, probes through other sites' gateways: %v", got)
	}
	if got := fwd("hk-1"); len(got) != 1 {
		t.Fatalf("hk-1's forwarding targets = %v", got)
	}
	// Announcements outside the site's networks, or of its VIP, are
	// ignored.
	for _, bad := range []string{"10.0.0.1", "172.18.171.250"} {
		s.nodes["gz-3"].e.Receive(Message{Kind: KindHello, From: "sz-2", LAN: netip.MustParseAddr(bad)}, s.now)
		if got := fwd("gz-3")[ForwardTarget("sz-1", "sz-2").Name()]; got != s.lanAddr("sz-2") {
			t.Fatalf("after an announcement of %s: target %s", bad, got)
		}
	}
	// sz-1 stops forwarding: hk-1 and gz-3 witness it (hk-2 does not);
	// sz-2 takes over.
	s.nodes["sz-1"].forwards = false
	s.until("sz-2 takes over", 3*time.Second, func() bool { return s.takenOver("sz", "sz-2", "") })
	if c := s.nodes["hk-2"].e.Claims()["sz"]; !strings.HasSuffix(c.Reason, "unanswered from gz-3, hk-1") {
		t.Fatalf("claim = %+v", c)
	}
}

// Three gateways: the first one's forwarding fails, one standby takes
// over, the other does not compete; a standby's death is no forwarding
// failure of the active gateway.
func TestNotForwardingThreeGateways(t *testing.T) {
	s := started(t, append(walkthroughHA(100, 100), gw("sz-3", "sz", 100))...)
	s.nodes["sz-3"].hostUp = false
	s.run(3 * time.Second)
	if !s.activeEverywhere("sz", "sz-1") || s.nodes["sz-2"].proposals != 0 {
		t.Fatalf("a standby's death moved the site: %s", s)
	}
	s.nodes["sz-3"].hostUp = true
	s.run(time.Second)
	s.nodes["sz-1"].forwards = false
	s.until("sz-2 takes over", 3*time.Second, func() bool { return s.takenOver("sz", "sz-2", "") })
	if s.nodes["sz-3"].proposals != 0 || s.overlap > 100*time.Millisecond {
		t.Fatalf("sz-3 competed (%d proposals), overlap %s", s.nodes["sz-3"].proposals, s.overlap)
	}
}
