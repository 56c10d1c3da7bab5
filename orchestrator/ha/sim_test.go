package ha

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/probe"
)

// sim runs the engines of a whole mesh on a simulated clock: hosts whose
// kernels answer probes, agents that tick and exchange messages, a network
// that delivers after a latency unless a pair is cut.
type sim struct {
	t       *testing.T
	now     time.Time
	step    time.Duration
	latency time.Duration
	set     map[string]bus.Edge
	nodes   map[string]*node
	names   []string
	queue   []delivery
	cut     map[[2]string]bool
	// tunnelCut cuts a pair's tunnel only (messages and probes through it),
	// not their LAN.
	tunnelCut map[[2]string]bool
	// overlap is the longest time two live gateways of a site held its
	// VIP at once; since tracks the current one.
	overlap time.Duration
	since   time.Time
	log     *slog.Logger
}

type node struct {
	name    string
	e       *Engine
	probes  *simProbes
	hostUp  bool
	agentUp bool
	// forwards: the kernel forwards between the tunnel and the LAN;
	// strictRP: it drops what arrives on the LAN from a network it
	// routes through the tunnel (rp_filter=1).
	forwards, strictRP bool
	// proposals counts the takeovers the node proposed.
	proposals int
}

type delivery struct {
	at       time.Time
	from, to string
	lan      bool
	m        Message
}

// simProbes is a prober whose answers come from the simulated network.
type simProbes struct {
	states map[string]probe.State
	next   map[string]time.Time
	urgent map[string]time.Time
}

func (p *simProbes) State(name string) (probe.State, bool) { s, ok := p.states[name]; return s, ok }
func (p *simProbes) Urgent(name string, d time.Duration)   { p.urgent[name] = p.next[name].Add(d) }

func gw(name, site string, prio int) bus.Edge {
	return bus.Edge{Name: name, Site: site, Priority: prio, CIDR: netip.MustParsePrefix("172.18.0.0/16"),
		VIP: netip.MustParseAddr("172.18.171.250")}
}

func lone(name, cidr string) bus.Edge {
	return bus.Edge{Name: name, CIDR: netip.MustParsePrefix(cidr)}
}

func newSim(t *testing.T, edges ...bus.Edge) *sim {
	s := &sim{t: t, now: time.Unix(1_000_000, 0), step: 5 * time.Millisecond, latency: 10 * time.Millisecond,
		set: map[string]bus.Edge{}, nodes: map[string]*node{}, cut: map[[2]string]bool{}, tunnelCut: map[[2]string]bool{}}
	s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		s.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	for _, e := range edges {
		s.set[e.Name] = e
		s.names = append(s.names, e.Name)
	}
	sort.Strings(s.names)
	for _, n := range s.names {
		s.nodes[n] = &node{name: n, hostUp: true, forwards: true}
		s.startAgent(n, nil)
	}
	return s
}

// startAgent starts (or restarts) the agent of a node with saved claims.
func (s *sim) startAgent(name string, saved []bus.Claim) {
	n := s.nodes[name]
	n.probes = &simProbes{states: map[string]probe.State{}, next: map[string]time.Time{}, urgent: map[string]time.Time{}}
	n.e = New(name, DefaultTiming(), n.probes, s.log.With("edge", name), s.now)
	if saved != nil {
		n.e.Restore(saved)
	}
	n.e.SetEdges(s.set)
	n.e.SetLAN(s.lanAddr(name))
	n.agentUp = true
}

// lanAddr is a node's LAN address: in its primary CIDR, numbered by name.
func (s *sim) lanAddr(name string) netip.Addr {
	a := s.set[name].CIDR.Addr().As4()
	a[3] = byte(sort.SearchStrings(s.names, name) + 1)
	return netip.AddrFrom4(a)
}

func (s *sim) setEdges(set map[string]bus.Edge) {
	s.set = set
	for _, n := range s.nodes {
		if n.agentUp {
			n.e.SetEdges(set)
		}
	}
}

// talks reports whether a and b's hosts can exchange packets.
func (s *sim) talks(a, b string) bool {
	na, nb := s.nodes[a], s.nodes[b]
	return na != nil && nb != nil && na.hostUp && nb.hostUp && !s.cut[[2]string{a, b}] && !s.cut[[2]string{b, a}]
}

func (s *sim) partition(a, b string, cut bool) {
	s.cut[[2]string{a, b}] = cut
}

// through reports whether a and b's hosts can exchange packets on the
// path named (the LAN, or the tunnel).
func (s *sim) through(a, b string, lan bool) bool {
	return s.talks(a, b) && (lan || !s.tunnelCut[[2]string{a, b}] && !s.tunnelCut[[2]string{b, a}])
}

// tick advances the clock by one step.
func (s *sim) tick() {
	s.now = s.now.Add(s.step)
	var later []delivery
	for _, d := range s.queue {
		if d.at.After(s.now) {
			later = append(later, d)
			continue
		}
		if n := s.nodes[d.to]; s.through(d.from, d.to, d.lan) && n.agentUp {
			n.e.Receive(d.m, s.now)
		}
	}
	s.queue = later
	for _, name := range s.names {
		n := s.nodes[name]
		if !n.hostUp || !n.agentUp {
			continue
		}
		s.probe(n)
		claims, targets := n.e.Claims(), n.e.Targets("cframe0")
		n.e.Tick(s.now)
		// The agent rebuilds probe targets after a tick only when the
		// claims changed (agent/ha.go): hold the engine to that.
		if maps.Equal(claims, n.e.Claims()) && !slices.Equal(targets, n.e.Targets("cframe0")) {
			s.t.Fatalf("%s: a tick changed the probe targets but not the claims", name)
		}
		counted := false
		for _, env := range n.e.Outbox() {
			if env.Msg.Kind == KindClaim && !counted {
				n.proposals++
				counted = true
			}
			s.queue = append(s.queue, delivery{at: s.now.Add(s.latency), from: name, to: env.To, lan: env.LAN.IsValid(), m: env.Msg})
		}
	}
	s.checkVIP()
}

// probe refreshes a node's probe states like the prober would: every
// interval (10 ms while urgent) a target answers when its host is up and
// reachable.
func (s *sim) probe(n *node) {
	p := n.probes
	for _, tg := range n.e.Targets("cframe0") {
		interval, down := probe.DefaultInterval, probe.DefaultDownAfter
		if tg.Interval > 0 {
			interval, down = tg.Interval, tg.DownAfter
		}
		st, ok := p.states[tg.Name]
		if !ok {
			st = probe.State{Since: s.now}
			p.next[tg.Name] = s.now
		}
		if !s.now.Before(p.next[tg.Name]) {
			if s.now.Before(p.urgent[tg.Name]) {
				interval = probe.UrgentInterval
			}
			p.next[tg.Name] = s.now.Add(interval)
			st.Sent++
			if s.answers(n.name, tg.Name) {
				st.Received++
				st.LastReply, st.RTT = s.now, 2*s.latency
				if !st.Up {
					st.Up, st.Since = true, s.now
				}
			}
		}
		last := st.LastReply
		if last.IsZero() {
			last = st.Since
		}
		if st.Up && s.now.Sub(last) > down {
			st.Up, st.Since = false, s.now
		}
		p.states[tg.Name] = st
	}
}

// answers reports whether target's probe from node from is answered: a
// sibling's LAN address over the LAN, a remote standby's LAN address
// through its site's active gateway (which must forward it into its LAN;
// the answer comes back through the standby's own tunnel), a remote
// gateway through the tunnel.
func (s *sim) answers(from, target string) bool {
	switch {
	case strings.HasPrefix(target, "lan:"):
		return s.through(from, strings.TrimPrefix(target, "lan:"), true)
	case strings.HasPrefix(target, "fwd:"):
		via, to, _ := strings.Cut(strings.TrimPrefix(target, "fwd:"), ":")
		return s.through(from, via, false) && s.nodes[via].forwards && s.through(via, to, true) &&
			!s.nodes[to].strictRP && s.through(to, from, false)
	}
	return s.through(from, target, false)
}

// holders are the live gateways that hold their site's VIP.
func (s *sim) holders() []string {
	var out []string
	for _, name := range s.names {
		n := s.nodes[name]
		if _, v := n.e.VIP(); n.hostUp && v == VIPHeld {
			out = append(out, name)
		}
	}
	return out
}

func (s *sim) checkVIP() {
	if len(s.holders()) > 1 {
		if s.since.IsZero() {
			s.since = s.now
		}
		s.overlap = max(s.overlap, s.now.Sub(s.since))
	} else {
		s.since = time.Time{}
	}
}

func (s *sim) run(d time.Duration) {
	for end := s.now.Add(d); s.now.Before(end); {
		s.tick()
	}
}

// until runs until cond holds and returns how long that took.
func (s *sim) until(what string, limit time.Duration, cond func() bool) time.Duration {
	s.t.Helper()
	start := s.now
	for !cond() {
		if s.now.Sub(start) > limit {
			s.t.Fatalf("%s: not within %s; %s", what, limit, s)
		}
		s.tick()
	}
	return s.now.Sub(start)
}

// activeEverywhere: every live agent routes site to gw and gw holds the VIP.
func (s *sim) activeEverywhere(site, gw string) bool {
	for _, name := range s.names {
		n := s.nodes[name]
		if _, registered := s.set[name]; !n.hostUp || !n.agentUp || !registered {
			continue
		}
		if c := n.e.Claims()[site]; c.Gateway != gw {
			return false
		}
	}
	h := s.holders()
	return len(h) == 1 && h[0] == gw
}

func (s *sim) String() string {
	var b strings.Builder
	for _, name := range s.names {
		n := s.nodes[name]
		_, v := n.e.VIP()
		c := n.e.Claims()["sz"]
		fmt.Fprintf(&b, "\n  %s host=%v agent=%v claim=%s@%d vip=%s proposals=%d", name, n.hostUp, n.agentUp, c.Gateway, c.Epoch, v, n.proposals)
	}
	return b.String()
}

func walkthroughHA(prio1, prio2 int) []bus.Edge {
	return []bus.Edge{gw("sz-1", "sz", prio1), gw("sz-2", "sz", prio2),
		lone("hk-1", "172.31.0.0/16"), lone("gz-3", "172.20.0.0/16")}
}

// started is a mesh after its first election: sz-1 active everywhere.
func started(t *testing.T, edges ...bus.Edge) *sim {
	s := newSim(t, edges...)
	s.until("first election", 3*time.Second, func() bool { return s.activeEverywhere("sz", "sz-1") })
	if c := s.nodes["hk-1"].e.Claims()["sz"]; c.Epoch != 1 || c.Reason == "" {
		t.Fatalf("first claim = %+v", c)
	}
	s.run(time.Second)
	return s
}

func TestFirstElection(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	if st := s.nodes["sz-2"].e.Status(); st.Role != bus.RoleStandby || st.VIP || st.Claim.Gateway != "sz-1" {
		t.Fatalf("sz-2 status = %+v", st)
	}
	if st := s.nodes["sz-1"].e.Status(); st.Role != bus.RoleActive || !st.VIP {
		t.Fatalf("sz-1 status = %+v", st)
	}
	if st := s.nodes["hk-1"].e.Status(); st != nil {
		t.Fatalf("an edge without a site has a site status: %+v", st)
	}
	// The higher priority wins the first election.
	s = started(t, walkthroughHA(200, 100)...)
	s2 := newSim(t, walkthroughHA(100, 200)...)
	s2.until("first election, sz-2 preferred", 3*time.Second, func() bool { return s2.activeEverywhere("sz", "sz-2") })
}

func TestHostDeathFailsOver(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	s.nodes["sz-1"].hostUp = false
	took := s.until("sz-2 takes over", 2*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") })
	t.Logf("failover after the active host's death: %s (simulated, 10 ms one-way latency)", took)
	if took > 400*time.Millisecond {
		t.Fatalf("failover took %s, want about 200ms", took)
	}
	c := s.nodes["hk-1"].e.Claims()["sz"]
	if c.Epoch != 2 || !strings.Contains(c.Reason, "sz-1 unreachable on the LAN") {
		t.Fatalf("claim after failover = %+v", c)
	}
	// It stays that way.
	s.run(10 * time.Second)
	if !s.activeEverywhere("sz", "sz-2") || s.nodes["hk-1"].e.Claims()["sz"].Epoch != 2 {
		t.Fatalf("not stable after failover: %s", s)
	}
}

func TestAgentDeathIsNotAFailure(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	saved := s.nodes["sz-1"].e.SavedClaims()
	s.nodes["sz-1"].agentUp = false // killed: its kernel keeps the VIP and answers
	s.run(10 * time.Second)
	for _, name := range []string{"sz-2", "hk-1", "gz-3"} {
		if c := s.nodes[name].e.Claims()["sz"]; c.Gateway != "sz-1" || c.Epoch != 1 {
			t.Fatalf("%s moved to %+v while only sz-1's agent was down", name, c)
		}
	}
	if s.nodes["sz-2"].proposals != 0 {
		t.Fatalf("sz-2 proposed %d takeovers while sz-1's kernel answered", s.nodes["sz-2"].proposals)
	}
	// The restarted agent keeps the VIP as it is, never drops it, and
	// confirms its role.
	s.startAgent("sz-1", saved)
	if _, v := s.nodes["sz-1"].e.VIP(); v != VIPKeep {
		t.Fatalf("restarted active agent: VIP %s, want keep", v)
	}
	s.until("sz-1 confirmed", time.Second, func() bool { _, v := s.nodes["sz-1"].e.VIP(); return v == VIPHeld })
	if !s.activeEverywhere("sz", "sz-1") || s.nodes["hk-1"].e.Claims()["sz"].Epoch != 1 {
		t.Fatalf("roles changed across an agent restart: %s", s)
	}
}

func TestStandbyDeathChangesNothing(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	s.nodes["sz-2"].hostUp = false
	s.run(5 * time.Second)
	if !s.activeEverywhere("sz", "sz-1") || s.nodes["gz-3"].e.Claims()["sz"].Epoch != 1 {
		t.Fatalf("a standby's death moved the site: %s", s)
	}
}

// The two gateways of a site lose each other, not the rest: the standby's
// takeover is refused by every witness, again and again but less and less
// often, and there is never a second active gateway.
func TestInternalPartitionNeverTwoActive(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	s.partition("sz-1", "sz-2", true)
	s.run(20 * time.Second)
	if !s.activeEverywhere("sz", "sz-1") || s.overlap > 0 {
		t.Fatalf("partitioned site: %s; VIP held twice for %s", s, s.overlap)
	}
	// Backoff 1s, 2s, 4s, 8s: at most five attempts in 20 s.
	if p := s.nodes["sz-2"].proposals; p == 0 || p > 5 {
		t.Fatalf("sz-2 proposed %d times in 20s, want a few (backing off)", p)
	}
	s.partition("sz-1", "sz-2", false)
	s.run(5 * time.Second)
	if !s.activeEverywhere("sz", "sz-1") || s.nodes["hk-1"].e.Claims()["sz"].Epoch != 1 {
		t.Fatalf("after healing: %s", s)
	}
	// Healed, the backoff is forgotten: a host death fails over as fast
	// as ever.
	s.nodes["sz-1"].hostUp = false
	if took := s.until("failover after healing", 2*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") }); took > 400*time.Millisecond {
		t.Fatalf("failover after a healed partition took %s", took)
	}
}

// Still partitioned, deep in its backoff, the standby takes over as soon
// as the remote gateways report the active gateway's real death.
func TestPartitionThenDeath(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	s.partition("sz-1", "sz-2", true)
	s.run(20 * time.Second)
	s.nodes["sz-1"].hostUp = false
	took := s.until("failover", 3*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") })
	t.Logf("failover of a partitioned site: %s", took)
	if took > time.Second {
		t.Fatalf("took %s", took)
	}
}

// A frozen host comes back with its agent believing it is active: it steps
// down at once, and stays standby (equal priority).
func TestReturningGatewayStaysStandby(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	s.nodes["sz-1"].hostUp = false
	s.until("failover", 2*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") })
	s.run(2 * time.Second)
	s.nodes["sz-1"].hostUp = true
	s.nodes["sz-1"].proposals = 0
	stepped := s.until("old active steps down", time.Second, func() bool { _, v := s.nodes["sz-1"].e.VIP(); return v == VIPNone })
	s.run(20 * time.Second)
	if !s.activeEverywhere("sz", "sz-2") || s.nodes["sz-1"].proposals != 0 {
		t.Fatalf("the returning gateway did not stay standby: %s", s)
	}
	if s.overlap > stepped+s.step {
		t.Fatalf("VIP held twice for %s", s.overlap)
	}
	t.Logf("returning gateway stepped down after %s", stepped)

	// A rebooted one (its kernel state gone, an old claim saved) never
	// takes the VIP.
	saved := []bus.Claim{{Site: "sz", Gateway: "sz-1", Epoch: 1, Priority: 100}}
	s.nodes["sz-1"].hostUp = false
	s.run(time.Second)
	s.nodes["sz-1"].hostUp = true
	s.startAgent("sz-1", saved)
	for end := s.now.Add(5 * time.Second); s.now.Before(end); s.tick() {
		if _, v := s.nodes["sz-1"].e.VIP(); v == VIPHeld {
			t.Fatalf("rebooted sz-1 took the VIP with its stale claim: %s", s)
		}
	}
	if !s.activeEverywhere("sz", "sz-2") {
		t.Fatalf("after sz-1's reboot: %s", s)
	}
}

// A gateway with a higher priority takes over when it returns, but only
// after it has answered for PreemptDelay, longer for each recent failure.
func TestPreemptionAndFlapDamping(t *testing.T) {
	s := started(t, walkthroughHA(200, 100)...)
	var holds []time.Duration
	for i := range 3 {
		s.nodes["sz-1"].hostUp = false
		s.until(fmt.Sprintf("failover %d", i), 2*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") })
		s.run(time.Second)
		s.nodes["sz-1"].hostUp = true
		back := s.until(fmt.Sprintf("preemption %d", i), 5*time.Minute, func() bool { return s.activeEverywhere("sz", "sz-1") })
		holds = append(holds, back)
	}
	t.Logf("preemption after the return: %v", holds)
	if holds[0] < 3*time.Second || holds[1] < 2*holds[0]-time.Second || holds[2] < 2*holds[1]-2*time.Second {
		t.Fatalf("preemption after %v, want >= 3s and doubling with each failure", holds)
	}
	if s.overlap > 50*time.Millisecond {
		t.Fatalf("VIP held twice for %s during a planned handover", s.overlap)
	}
}

func TestDeletedActiveIsReplaced(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	set := map[string]bus.Edge{}
	for k, v := range s.set {
		if k != "sz-1" {
			set[k] = v
		}
	}
	s.setEdges(set)
	took := s.until("sz-2 takes over from deleted sz-1", 2*time.Second, func() bool {
		_, v := s.nodes["sz-1"].e.VIP()
		return v == VIPNone && s.activeEverywhere("sz", "sz-2")
	})
	t.Logf("takeover after the delete: %s", took)
}

// The active gateway loses its path to the other sites — its tunnel to
// every gateway, the other one of its site included — while its LAN is
// fine: the remote gateways report it, the standby takes over, and the old
// active hears of it over the LAN.
func TestPathLossFailsOver(t *testing.T) {
	s := started(t, walkthroughHA(100, 100)...)
	for _, o := range []string{"hk-1", "gz-3", "sz-2"} {
		s.tunnelCut[[2]string{"sz-1", o}] = true
	}
	took := s.until("sz-2 takes over", 3*time.Second, func() bool {
		for _, n := range []string{"sz-2", "hk-1", "gz-3"} {
			if s.nodes[n].e.Claims()["sz"].Gateway != "sz-2" {
				return false
			}
		}
		_, v := s.nodes["sz-2"].e.VIP()
		return v == VIPHeld
	})
	t.Logf("failover after the active's path loss: %s", took)
	if took > time.Second {
		t.Fatalf("path-loss failover took %s", took)
	}
	s.until("sz-1 steps down", time.Second, func() bool { _, v := s.nodes["sz-1"].e.VIP(); return v == VIPNone })
	if s.overlap > 100*time.Millisecond {
		t.Fatalf("VIP held twice for %s", s.overlap)
	}
}

func TestThreeGatewaysOneTakesOver(t *testing.T) {
	edges := append(walkthroughHA(100, 100), gw("sz-3", "sz", 100))
	s := started(t, edges...)
	s.nodes["sz-1"].hostUp = false
	s.until("sz-2 takes over", 2*time.Second, func() bool { return s.activeEverywhere("sz", "sz-2") })
	if s.nodes["sz-3"].proposals != 0 || s.overlap > 0 {
		t.Fatalf("sz-3 competed (%d proposals), overlap %s", s.nodes["sz-3"].proposals, s.overlap)
	}
}
