// Package probe measures the data plane: it sends ICMP echo requests to a
// set of targets — every remote gateway's link-local address through the
// tunnel, the other gateways of the own site on the LAN, remote standby
// gateways' LAN addresses routed through their site's active gateway — and
// keeps, per target, whether it answers, the round-trip time and since
// when.
//
// The targets' kernels answer the probes, not their agents: a gateway whose
// agent died or restarts still answers, a gateway whose host or path died
// does not, and a probe routed through a gateway is answered only while
// that gateway forwards. That is the health gateway HA acts on
// (orchestrator/ha), the agent reports in its status, and metrics and the
// topology view show.
//
// One Prober runs per agent, on one pair of raw sockets (ICMPv4, ICMPv6)
// with kernel filters that pass echo replies only; a probe is one small
// packet per target and interval, and the scheduler wakes every Tick —
// every RelaxedTick while no target needs more — whatever the number of
// targets, so hundreds of peers cost little CPU.
package probe

import (
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Defaults of a Target's timing.
const (
	// DefaultInterval is the time between two probes of a target.
	DefaultInterval = 100 * time.Millisecond
	// DefaultDownAfter is how long a target may leave every probe
	// unanswered before it is down: a little over three intervals.
	DefaultDownAfter = 350 * time.Millisecond
	// UrgentInterval is the time between probes of a target being
	// checked urgently (Urgent).
	UrgentInterval = 10 * time.Millisecond
	// Tick is the scheduler's resolution.
	Tick = 10 * time.Millisecond
	// RelaxedTick is the scheduler's resolution while no target is probed
	// urgently or more often than every RelaxedAbove (gateways alone in
	// their site, probed every half second, as most are): their probes
	// and down verdicts come up to RelaxedTick late, and the prober wakes
	// five times less often.
	RelaxedTick  = 50 * time.Millisecond
	RelaxedAbove = 250 * time.Millisecond
	// RelaxedBurst sizes the bursts those targets are probed in: they go
	// in one slot per RelaxedBurst of them (a hash of the name picks the
	// slot), so the prober wakes a few times per interval rather than once
	// per target, and their answers arrive in bursts a socket buffer holds.
	RelaxedBurst = 128
)

// Target is one address to probe.
type Target struct {
	// Name identifies the target (a peer's name, for example).
	Name string
	// Addr is an IPv4 address, or an IPv6 link-local address whose zone
	// names the interface ("fe80::1%cframe0").
	Addr netip.Addr
	// Interval and DownAfter override the defaults when set.
	Interval, DownAfter time.Duration
}

// State is a target's health.
type State struct {
	// Up: the target answered within DownAfter.
	Up bool
	// RTT is the round-trip time of the last answer.
	RTT time.Duration
	// Since is when Up took its value (for a target never up: when probing
	// started).
	Since time.Time
	// LastReply is when the last answer arrived (zero: none yet).
	LastReply time.Time
	// Sent and Received count probes and answers.
	Sent, Received uint64
	// Known: Up is a verdict — the target answered, or DownAfter has
	// passed since probing began. Before that a target is neither up nor
	// known to be down.
	Known bool
}

// Conn sends echo requests and receives echo replies (raw ICMP sockets in
// Open; a fake in tests).
type Conn interface {
	// Send sends one echo request per Echo.
	Send(echoes []Echo) error
	// Receive calls handle with the source, identifier and sequence
	// number of every echo reply until the Conn is closed.
	Receive(handle func(from netip.Addr, id, seq uint16))
	Close() error
}

// Echo is one echo request: to Dst, with identifier ID and sequence
// number Seq.
type Echo struct {
	Dst     netip.Addr
	ID, Seq uint16
}

// Prober probes targets over a Conn. Its methods are safe for concurrent use.
type Prober struct {
	conn Conn
	id   uint16
	now  func() time.Time
	// epoch aligns the slots of relaxed targets (the first SetTargets).
	epoch time.Time

	mu      sync.Mutex
	targets map[string]*target
	list    []*target              // the targets again, for step's scan
	byAddr  map[netip.Addr]*target // by address without zone
	sendErr error
	due     []Echo // reused by step (Run's goroutine only)
	// wake makes Run step at once and look at its resolution again (new
	// targets, an urgent one).
	wake chan struct{}
}

type target struct {
	Target
	state  State
	start  time.Time
	next   time.Time
	seq    uint16
	sent   [16]sentProbe // by seq % 16
	urgent time.Time     // probe every UrgentInterval until then
}

type sentProbe struct {
	seq uint16
	at  time.Time
}

// New returns a Prober over conn with no targets.
func New(conn Conn) *Prober {
	return &Prober{conn: conn, id: uint16(rand.N(1 << 16)), now: time.Now,
		targets: map[string]*target{}, byAddr: map[netip.Addr]*target{}, wake: make(chan struct{}, 1)}
}

// poke wakes Run.
func (p *Prober) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// SetTargets replaces the set of targets. A target whose name and address
// are unchanged keeps its state.
func (p *Prober) SetTargets(ts []Target) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := make(map[string]*target, len(ts))
	p.byAddr = make(map[netip.Addr]*target, len(ts))
	if p.epoch.IsZero() {
		p.epoch = now
	}
	relaxed := 0
	for _, t := range ts {
		if t.Interval >= RelaxedAbove {
			relaxed++
		}
	}
	for _, t := range ts {
		if t.Interval <= 0 {
			t.Interval = DefaultInterval
		}
		if t.DownAfter <= 0 {
			t.DownAfter = DefaultDownAfter
		}
		old, ok := p.targets[t.Name]
		if !ok || old.Addr != t.Addr {
			old = &target{start: now, next: p.firstProbe(t, relaxed, now), state: State{Since: now}}
		}
		old.Target = t
		keep[t.Name] = old
		p.byAddr[t.Addr.WithZone("")] = old
	}
	p.targets = keep
	p.list = p.list[:0]
	for _, t := range keep {
		p.list = append(p.list, t)
	}
	p.poke()
}

// firstProbe is when a new target is first probed: a random point of its
// first interval, so that targets spread over time — or, for a relaxed
// target (one of relaxed in the set), the next start of its slot.
func (p *Prober) firstProbe(t Target, relaxed int, now time.Time) time.Time {
	if t.Interval < RelaxedAbove {
		return now.Add(rand.N(t.Interval))
	}
	slots := uint32(max((relaxed+RelaxedBurst-1)/RelaxedBurst, 1))
	h := fnv.New32a()
	h.Write([]byte(t.Name))
	start := p.epoch.Add(t.Interval * time.Duration(h.Sum32()%slots) / time.Duration(slots))
	if start.Before(now) {
		start = start.Add((now.Sub(start) + t.Interval - 1) / t.Interval * t.Interval)
	}
	return start
}

// State returns the state of the named target.
func (p *Prober) State(name string) (State, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.targets[name]
	if !ok {
		return State{}, false
	}
	return t.state, true
}

// States returns the state of every target by name.
func (p *Prober) States() map[string]State {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]State, len(p.targets))
	for n, t := range p.targets {
		out[n] = t.state
	}
	return out
}

// Names returns the targets' names, sorted.
func (p *Prober) Names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.targets))
	for n := range p.targets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Urgent probes the named target every UrgentInterval for the duration d,
// starting with the next tick: to learn within a round trip whether a
// target still answers.
func (p *Prober) Urgent(name string, d time.Duration) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.targets[name]; ok {
		t.urgent = now.Add(d)
		t.next = now
		p.poke()
	}
}

// Run probes until done is closed: it sends the due probes every Tick (or
// RelaxedTick, see period) and at once when the targets change or one turns
// urgent, and receives answers on another goroutine. It closes the Conn on
// return.
func (p *Prober) Run(done <-chan struct{}) {
	go p.conn.Receive(func(from netip.Addr, id, seq uint16) { p.reply(from, id, seq, p.now()) })
	period := p.period(p.now())
	tick := time.NewTicker(period)
	defer tick.Stop()
	defer p.conn.Close()
	for {
		select {
		case <-done:
			return
		case <-p.wake:
		case <-tick.C:
		}
		now := p.now()
		p.step(now)
		if d := p.period(now); d != period {
			period = d
			tick.Reset(d)
		}
	}
}

// period is the scheduler's resolution for the targets at now: Tick while
// any target is urgent or probed more often than every RelaxedAbove (the
// own site's gateways on the LAN, the gateways of sites with a standby),
// else RelaxedTick.
func (p *Prober) period(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.list {
		if t.Interval < RelaxedAbove || now.Before(t.urgent) {
			return Tick
		}
	}
	return RelaxedTick
}

// Err returns the last error sending a probe, nil after a success.
func (p *Prober) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sendErr
}

// step sends the probes due at now and marks targets down whose answers
// stopped for longer than their DownAfter.
func (p *Prober) step(now time.Time) {
	p.mu.Lock()
	out := p.due[:0]
	for _, t := range p.list {
		last := t.state.LastReply
		if last.IsZero() {
			last = t.start
		}
		if t.state.Up && now.Sub(last) > t.DownAfter {
			t.state.Up, t.state.Since = false, now
		}
		if !t.state.Known && now.Sub(t.start) > t.DownAfter {
			t.state.Known = true
		}
		if now.Before(t.next) {
			continue
		}
		t.seq++
		t.sent[t.seq%16] = sentProbe{t.seq, now}
		t.state.Sent++
		out = append(out, Echo{t.Addr, p.id, t.seq})
		interval := t.Interval
		if now.Before(t.urgent) {
			interval = UrgentInterval
		}
		t.next = t.next.Add(interval)
		if t.next.Before(now) {
			t.next = now.Add(interval)
		}
	}
	p.due = out
	p.mu.Unlock()
	if len(out) == 0 {
		return
	}
	err := p.conn.Send(out)
	p.mu.Lock()
	p.sendErr = err
	p.mu.Unlock()
}

// reply records an echo reply that arrived at at.
func (p *Prober) reply(from netip.Addr, id, seq uint16, at time.Time) {

	if id != p.id {
		return // someone else's ping
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.byAddr[from.WithZone("")]
	if !ok {
		return
	}
	s := t.sent[seq%16]
	if s.seq != seq || s.at.IsZero() {
		return // older than the ring, or never sent
	}
	t.sent[seq%16].at = time.Time{} // count an answer once
	t.state.RTT = at.Sub(s.at)
	t.state.Received++
	if at.After(t.state.LastReply) {
		t.state.LastReply = at
	}
	if !t.state.Up {
		t.state.Up, t.state.Since = true, at
	}
	t.state.Known = true
}
