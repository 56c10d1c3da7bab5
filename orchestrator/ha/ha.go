// Package ha decides which gateway of each site is active, and makes every
// agent follow each decision — through the tunnel, so it works while the
// controller is down.
//
// A decision is a bus.Claim: gateway G is active from epoch E on. Every
// agent keeps the newest claim per site it has seen (bus.Claim.Newer) and
// ignores older ones, so an old active gateway can never win the remote
// ends back: that is the fencing. Remote edges point the site's next hop at
// the claimed gateway (mesh.Desired); only the claimed gateway holds the
// site's VIP.
//
// Who decides: a standby gateway that sees a reason to take over proposes a
// claim with the next epoch to the witnesses — the remote gateways it
// reaches through the tunnel — and commits it when a majority agrees. A
// witness agrees with "the active gateway is down" only when its own probes
// of that gateway go unanswered: a standby cut off from the active
// gateway on the LAN, while the rest of the mesh still reaches it, is
// refused, so a site partitioned internally never gets two active
// gateways, and nothing flaps. Liveness is the kernel's (ICMP echo to the
// LAN address, and to the link-local tunnel address, see package probe): a
// gateway whose agent died, restarts or is upgraded still answers, and
// nothing fails over.
//
// Forwarding is the kernel's too, and is probed through the data path: a
// remote gateway that is its own site's active gateway (its probes' answers
// come back to it through no other gateway) probes, for every site with
// several gateways, each standby's LAN address — which the standbys
// announce in hellos — with the echo requests routed through the site's
// active gateway, which must forward them from the tunnel into its LAN.
// When those stop being answered while the active gateway and the standby
// both still answer through the tunnel, the active gateway is up but not
// forwarding (ip_forward off, a DROP in FORWARD, ...): the remote gateway
// tells that standby, which, if it still reaches the active gateway on its
// LAN, proposes to take over; each witness agrees only when its own probes
// through the active gateway to the candidate go unanswered. A probe that
// never was answered (a standby with strict rp_filter, say) is no
// evidence: it is warned about, never acted on.
//
// Reasons to take over: the active gateway does not answer on the LAN
// (host death: fastest), the remote gateways report that it stopped
// answering through the tunnel (lost its path to the other sites) or that
// it stopped forwarding into its LAN, it was deleted, the site has no claim
// yet, or the candidate has a higher priority and has been stable for long
// enough (a returning gateway with equal priority stays standby; one that
// keeps failing waits longer each time).
//
// The Engine is a state machine driven by its caller: messages in
// (Receive, Relay), time in (Tick), messages out (Outbox), decisions out
// (Claims, VIP, Status). It does no I/O and reads the clock only through its
// arguments, so tests run whole sites on a simulated clock.
package ha

import (
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/orchestrator/probe"
)

// Timing are the engine's intervals and thresholds.
type Timing struct {
	// Hello is the interval of hellos between the gateways of a site;
	// a gateway heard within SiblingLive is live.
	Hello, SiblingLive time.Duration
	// LANInterval and LANDownAfter time the LAN probes of the other
	// gateways of the own site: the host-death detector. After
	// LANSuspect without an answer from the active gateway the witnesses
	// are warned (KindSuspect).
	LANInterval, LANDownAfter, LANSuspect time.Duration
	// PeerInterval and PeerDownAfter time the probes of the remote edges
	// that are the only gateway of their site: their health is only
	// reported. The gateways of sites with several, whose failures this
	// agent may have to report or witness, get the prober's defaults.
	PeerInterval, PeerDownAfter time.Duration
	// ForwardInterval and ForwardDownAfter time the probes through a
	// remote site's active gateway to its standbys' LAN addresses.
	ForwardInterval, ForwardDownAfter time.Duration
	// WitnessAge: a witness agrees that a gateway is down when it has not
	// answered for this long, nor to the urgent probes the witness sent
	// for at least ConfirmWait (and two round trips) since it was asked.
	WitnessAge, ConfirmWait time.Duration
	// VoteWait is how long a candidate waits for the witnesses' votes.
	VoteWait time.Duration
	// Refresh is the interval at which the active gateway repeats its
	// claim to every remote gateway.
	Refresh time.Duration
	// Backoff is the first wait after a refused takeover, doubling up to
	// MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// PreemptDelay is how long a gateway with a higher priority must have
	// been up before it takes over from a healthy one; it doubles for
	// every time the gateway went down in the last FlapWindow, up to
	// MaxHold.
	PreemptDelay, MaxHold, FlapWindow time.Duration
	// Rejoin is how long a starting agent listens before it may propose.
	Rejoin time.Duration
	// NoticeTTL is how long a remote gateway's "down" report counts;
	// NoticeRepeat how often a remote gateway repeats it.
	NoticeTTL, NoticeRepeat time.Duration
}

// DefaultTiming aims at a failover in about 150 ms after a host's death.
func DefaultTiming() Timing {
	return Timing{
		Hello: 100 * time.Millisecond, SiblingLive: 350 * time.Millisecond,
		LANInterval: 20 * time.Millisecond, LANDownAfter: 100 * time.Millisecond, LANSuspect: 50 * time.Millisecond,
		PeerInterval: 500 * time.Millisecond, PeerDownAfter: 1750 * time.Millisecond,
		ForwardInterval: probe.DefaultInterval, ForwardDownAfter: probe.DefaultDownAfter,
		WitnessAge: 100 * time.Millisecond, ConfirmWait: 20 * time.Millisecond, VoteWait: 300 * time.Millisecond,
		Refresh: time.Second, Backoff: time.Second, MaxBackoff: 30 * time.Second,
		PreemptDelay: 3 * time.Second, MaxHold: 5 * time.Minute, FlapWindow: 10 * time.Minute,
		Rejoin: time.Second, NoticeTTL: 3 * time.Second, NoticeRepeat: time.Second,
	}
}

// Probes is what the engine reads of the data plane (a *probe.Prober).
type Probes interface {
	State(name string) (probe.State, bool)
	Urgent(name string, d time.Duration)
}

// TargetKind is the path a probe target is checked over.
type TargetKind int

const (
	// TargetPeer: a remote gateway's link-local address through the tunnel.
	TargetPeer TargetKind = iota
	// TargetLAN: a sibling gateway's LAN address.
	TargetLAN
	// TargetForward: a remote standby gateway's LAN address, probed
	// through its site's active gateway (Via).
	TargetForward
)

// Target is one of the engine's probe targets: what it checks, over which
// path. The prober knows it by Name.
type Target struct {
	Kind    TargetKind
	Gateway string
	Via     string // TargetForward only
}

// LANTarget is the target of a sibling gateway's LAN address.
func LANTarget(gateway string) Target { return Target{Kind: TargetLAN, Gateway: gateway} }

// ForwardTarget is the target of a remote standby gateway's LAN address
// probed through its site's active gateway via.
func ForwardTarget(via, gateway string) Target {
	return Target{Kind: TargetForward, Gateway: gateway, Via: via}
}

// Name is the target's probe name: a remote gateway's is its edge name,
// the others carry a prefix with a colon, which edge names never contain.
func (t Target) Name() string {
	switch t.Kind {
	case TargetLAN:
		return "lan:" + t.Gateway
	case TargetForward:
		return "fwd:" + t.Via + ":" + t.Gateway
	}
	return t.Gateway
}

// TargetOf is the target a probe name stands for (the inverse of Name).
func TargetOf(name string) Target {
	if gw, ok := strings.CutPrefix(name, "lan:"); ok {
		return LANTarget(gw)
	}
	if rest, ok := strings.CutPrefix(name, "fwd:"); ok {
		via, gw, _ := strings.Cut(rest, ":")
		return ForwardTarget(via, gw)
	}
	return Target{Kind: TargetPeer, Gateway: name}
}

// VIPState is what this gateway does with its site's VIP.
type VIPState int

const (
	// VIPNone: this gateway must not hold the VIP (remove ours).
	VIPNone VIPState = iota
	// VIPKeep: leave the VIP as it is — a restarted agent that was
	// active keeps holding it (agent death is not a failure) but does not
	// add it before another agent confirmed that its claim still stands.
	VIPKeep
	// VIPHeld: hold the VIP.
	VIPHeld
)

func (v VIPState) String() string {
	return [...]string{"none", "keep", "held"}[v]
}

// Engine is one agent's share of every site's election. Not safe for
// concurrent use: drive it from one goroutine.
type Engine struct {
	self    string
	t       Timing
	log     *slog.Logger
	probes  Probes
	started time.Time

	sites   map[string]*mesh.Site
	siteOf  map[string]string // edge name -> site name
	me      bus.Edge
	known   bool // self is in the edge set
	haveSet bool // SetEdges was called
	lan     netip.Addr

	claims    map[string]bus.Claim
	confirmed bool

	// Own site.
	sibs    map[string]*sibling
	cand    *candidacy
	backoff time.Duration
	retryAt time.Time
	// evidence is what the current proposal rests on, refusedOn that of
	// the last refused one.
	evidence, refusedOn evidence
	// suspected is the active gateway the witnesses were warned about
	// (until it answers on the LAN again).
	suspected   string
	notices     map[string]notice // by reporting remote gateway and why
	lastHello   time.Time
	lastRefresh time.Time
	unacked     map[string]*resend

	// Witness and follower.
	checks   []*check
	wasUp    map[string]bool
	flaps    map[string][]time.Time
	noticed  map[string]time.Time
	suspects map[string]time.Time // gateway -> when a standby warned about it
	// remoteLAN are the LAN addresses the gateways of remote sites with
	// several announced (forwarding targets); silentWarned the forwarding
	// targets warned about as never answered.
	remoteLAN    map[string]netip.Addr
	silentWarned map[string]bool
	lastAnnounce time.Time

	out []Envelope
}

type sibling struct {
	lan      netip.Addr
	heard    time.Time
	priority int
}

type candidacy struct {
	claim     bus.Claim
	why, prev string
	witnesses map[string]bool
	accepted  map[string]bool
	refused   map[string]string
	started   time.Time
}

// notice is a remote gateway's report (KindDown) about the active
// gateway prev.
type notice struct {
	from, prev, why string
	at              time.Time
}

type resend struct {
	next  time.Time
	tries int
}

type check struct {
	from   string
	claim  bus.Claim
	target string
	// what names the target in a refusal ("sz-1", "sz-2 through sz-1").
	what  string
	asked time.Time
}

// New returns the engine of edge self, started at now.
func New(self string, t Timing, probes Probes, log *slog.Logger, now time.Time) *Engine {
	return &Engine{self: self, t: t, probes: probes, log: log, started: now,
		sites: map[string]*mesh.Site{}, claims: map[string]bus.Claim{}, sibs: map[string]*sibling{},
		notices: map[string]notice{}, unacked: map[string]*resend{}, wasUp: map[string]bool{},
		flaps: map[string][]time.Time{}, noticed: map[string]time.Time{}, suspects: map[string]time.Time{},
		remoteLAN: map[string]netip.Addr{}, silentWarned: map[string]bool{}}
}

// Restore seeds the engine with the claims an earlier run saved. A claim
// naming this gateway is unconfirmed until another agent repeats it
// (VIPKeep until then).
func (e *Engine) Restore(claims []bus.Claim) {
	for _, c := range claims {
		if c.Newer(e.claims[c.Site]) {
			e.claims[c.Site] = c
		}
	}
	e.confirmed = false
}

// SetEdges hands the engine the edge set.
func (e *Engine) SetEdges(set map[string]bus.Edge) {
	e.sites = mesh.Sites(set)
	e.siteOf = make(map[string]string, len(set))
	for _, edge := range set {
		e.siteOf[edge.Name] = edge.SiteName()
	}
	e.me, e.known = set[e.self]
	e.haveSet = true
	for name := range e.claims {
		if s, ok := e.sites[name]; !ok || !s.Explicit() {
			delete(e.claims, name)
		}
	}
	own := e.ownSite()
	for name := range e.sibs {
		if own == nil || !isGateway(own, name) {
			delete(e.sibs, name)
		}
	}
	for name, a := range e.remoteLAN {
		if !e.forwardTarget(name, a) {
			delete(e.remoteLAN, name)
		}
	}
}

// SetLAN tells the engine this gateway's LAN address (sent in hellos).
func (e *Engine) SetLAN(a netip.Addr) {
	e.lan = a
}

// Claims returns the claim in force per site (a copy).
func (e *Engine) Claims() map[string]bus.Claim { return maps.Clone(e.claims) }

// SavedClaims returns the claims to save for a restart, sorted by site.
func (e *Engine) SavedClaims() []bus.Claim {
	out := make([]bus.Claim, 0, len(e.claims))
	for _, c := range e.claims {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// VIP returns the own site's VIPs (none, or one per family, IPv4 first)
// and what to do with them: VIPKeep until the engine has an edge set.
func (e *Engine) VIP() ([]netip.Addr, VIPState) {
	if !e.haveSet {
		return nil, VIPKeep
	}
	s := e.ownSite()
	if s == nil || len(s.VIPs()) == 0 {
		return nil, VIPNone
	}
	if e.claims[s.Name].Gateway != e.self {
		return s.VIPs(), VIPNone
	}
	if e.confirmed {
		return s.VIPs(), VIPHeld
	}
	return s.VIPs(), VIPKeep
}

// Status is this gateway's view of its site, nil without an own site.
func (e *Engine) Status() *bus.SiteStatus {
	s := e.ownSite()
	if s == nil {
		return nil
	}
	c := e.claims[s.Name]
	st := &bus.SiteStatus{Name: s.Name, Role: bus.RoleStandby, Claim: c, LANAddr: e.lan}
	if c.Gateway == e.self {
		st.Role = bus.RoleActive
	}
	_, vip := e.VIP()
	st.VIP = vip == VIPHeld
	return st
}

// Targets are the probe targets the engine needs: every remote gateway's
// link-local address on the tunnel device dev (gateways of sites with
// several at the prober's default interval, the others every
// PeerInterval), the LAN address of every other gateway of the own site
// that announced it (every LANInterval) and, when this gateway witnesses
// forwarding, the LAN address of every standby of a remote site with
// several gateways that announced it, routed through that site's active
// gateway (every ForwardInterval).
func (e *Engine) Targets(dev string) []probe.Target {
	var out []probe.Target
	own := e.ownSite()
	for _, name := range e.remoteGateways() {
		t := probe.Target{Name: name, Addr: mesh.LinkLocal(name).WithZone(dev)}
		if s := e.sites[e.siteOf[name]]; s == nil || len(s.Gateways) < 2 {
			t.Interval, t.DownAfter = e.t.PeerInterval, e.t.PeerDownAfter
		}
		out = append(out, t)
	}
	for _, f := range e.forwardTargets() {
		out = append(out, probe.Target{Name: f.name, Addr: f.addr, Interval: e.t.ForwardInterval, DownAfter: e.t.ForwardDownAfter})
	}
	if own != nil {
		for _, g := range own.Gateways {
			if sb := e.sibs[g.Name]; sb != nil && g.Name != e.self && sb.lan.IsValid() {
				out = append(out, probe.Target{Name: LANTarget(g.Name).Name(), Addr: sb.lan, Interval: e.t.LANInterval, DownAfter: e.t.LANDownAfter})
			}
		}
	}
	return out
}

// Outbox returns the messages to send and empties it.
func (e *Engine) Outbox() []Envelope {
	out := e.out
	e.out = nil
	return out
}

func (e *Engine) send(to string, m Message) {
	m.From = e.self
	e.out = append(e.out, Envelope{To: to, Msg: m})
}

// sendSibling sends m to another gateway of the own site through the
// tunnel and, once its LAN address is known, over the LAN too.
func (e *Engine) sendSibling(to string, m Message) {
	e.send(to, m)
	if sb := e.sibs[to]; sb != nil && sb.lan.IsValid() {
		m.From = e.self
		e.out = append(e.out, Envelope{To: to, LAN: sb.lan, Msg: m})
	}
}

// ownSite is the explicit site this edge is a gateway of, or nil.
func (e *Engine) ownSite() *mesh.Site {
	if !e.known || e.me.Site == "" {
		return nil
	}
	return e.sites[e.me.Site]
}

func isGateway(s *mesh.Site, name string) bool {
	_, ok := s.Gateway(name)
	return ok
}

// remoteGateways are the gateways of every other site, sorted.
func (e *Engine) remoteGateways() []string {
	if !e.known {
		return nil
	}
	var out []string
	for _, s := range e.sites {
		if s.Name == e.me.SiteName() {
			continue
		}
		for _, g := range s.Gateways {
			out = append(out, g.Name)
		}
	}
	sort.Strings(out)
	return out
}

// reachable are the remote gateways this gateway's probes reach.
func (e *Engine) reachable() []string {
	var out []string
	for _, g := range e.remoteGateways() {
		if st, ok := e.probes.State(g); ok && st.Up {
			out = append(out, g)
		}
	}
	return out
}

// adopt makes c the claim in force of its site when it is newer.
func (e *Engine) adopt(c bus.Claim, from string) bool {
	s, ok := e.sites[c.Site]
	if !ok || !s.Explicit() || !c.Newer(e.claims[c.Site]) {
		return false
	}
	old := e.claims[c.Site]
	e.claims[c.Site] = c
	if own := e.ownSite(); own != nil && own.Name == c.Site {
		switch {
		case old.Gateway == e.self && c.Gateway != e.self:
			e.log.Warn("stepping down: another gateway's claim is newer", "site", c.Site, "active", c.Gateway, "epoch", c.Epoch, "reason", c.Reason, "via", from)
		case c.Gateway == e.self:
			e.confirmed = true
		}
		if e.cand != nil && !e.cand.claim.Newer(c) {
			e.log.Info("takeover abandoned: a newer claim arrived", "site", c.Site, "active", c.Gateway, "epoch", c.Epoch)
			e.cand = nil
		}
	}
	return true
}

// confirm marks an own claim as confirmed when another agent holds the
// same one.
func (e *Engine) confirm(c bus.Claim) {
	own := e.ownSite()
	if own != nil && c.Site == own.Name && c.Gateway == e.self && c == e.claims[c.Site] && !e.confirmed {
		e.confirmed = true
		e.log.Info("active role confirmed", "site", c.Site, "epoch", c.Epoch)
	}
}

// Relay takes the claims the controller relays on the bus. They never
// confirm this gateway's own claim: the controller may be relaying just
// what this gateway reported after a restart.
func (e *Engine) Relay(cs []bus.Claim) {
	for _, c := range cs {
		e.adopt(c, "controller")
	}
}

// Receive handles one message from another agent.
func (e *Engine) Receive(m Message, now time.Time) {
	if m.From == e.self {
		return
	}
	switch m.Kind {
	case KindHello:
		e.onHello(m, now)
	case KindCommit:
		e.adopt(m.Claim, m.From)
		e.confirm(m.Claim)
		if cur, ok := e.claims[m.Claim.Site]; ok {
			e.send(m.From, Message{Kind: KindCurrent, Claim: cur})
		}
	case KindCurrent:
		e.adopt(m.Claim, m.From)
		e.confirm(m.Claim)
		if m.Claim == e.claims[m.Claim.Site] {
			delete(e.unacked, m.From)
		}
	case KindClaim:
		e.onClaim(m, now)
	case KindVote:
		e.onVote(m, now)
	case KindDown:
		if own := e.ownSite(); own != nil && m.Claim.Site == own.Name && !isGateway(own, m.From) {
			why := m.Why
			if why != WhyForwarding {
				why = WhyDown
			}
			e.notices[m.From+" "+why] = notice{from: m.From, prev: m.Prev, why: why, at: now}
		}
	case KindSuspect:
		e.onSuspect(m, now)
	}
}

func (e *Engine) onHello(m Message, now time.Time) {
	own := e.ownSite()
	if own == nil || !isGateway(own, m.From) {
		e.onAnnounce(m)
		return
	}
	sb := e.sibs[m.From]
	if sb == nil {
		sb = &sibling{}
		e.sibs[m.From] = sb
	}
	sb.lan, sb.heard, sb.priority = m.LAN, now, m.Priority
	if m.Claim.Site == own.Name {
		e.adopt(m.Claim, m.From)
		e.confirm(m.Claim)
	}
}

// Tick does what is due at now: hellos, refreshes, retransmissions, the
// witness's pending checks and down reports, and the own site's election.
// Of what Targets depends on, a tick changes the claims only (the agent
// relies on it; the simulation checks it).
func (e *Engine) Tick(now time.Time) {
	e.observe(now)
	own := e.ownSite()
	if own == nil {
		e.cand = nil
		return
	}
	cur := e.claims[own.Name]
	if now.Sub(e.lastHello) >= e.t.Hello {
		e.lastHello = now
		for _, g := range own.Gateways {
			if g.Name != e.self {
				e.sendSibling(g.Name, Message{Kind: KindHello, Claim: cur, LAN: e.lan, Priority: e.me.Priority})
			}
		}
	}
	e.announce(now, own)
	if cur.Gateway == e.self {
		if now.Sub(e.lastRefresh) >= e.t.Refresh {
			e.lastRefresh = now
			for _, g := range e.remoteGateways() {
				e.send(g, Message{Kind: KindCommit, Claim: cur})
			}
		}
		e.retransmit(now, cur)
		if !e.confirmed && len(own.Gateways) == 1 && len(e.remoteGateways()) == 0 && now.Sub(e.started) >= e.t.Rejoin {
			e.confirmed = true // nobody to ask
		}
	}
	if e.cand != nil {
		e.tally(now)
		return
	}
	e.consider(now, own, cur)
}

// sortedKeys returns m's keys, sorted (so that messages go out in a
// deterministic order).
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
