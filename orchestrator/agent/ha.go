package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/atomicfile"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/probe"
)

// haTick is how often the HA engine looks at the probes and its timers;
// every lanCheck it also re-reads the host's LAN address (it may change).
const (
	haTick   = 10 * time.Millisecond
	lanCheck = 2 * time.Second
)

// haRunner runs the data-plane prober and the HA engine (package ha) on
// their own goroutines, so that detection and elections keep their timing
// while the agent's loop programs the kernel. The loop learns of new
// decisions on Changed and reads them with View.
type haRunner struct {
	self, dev string
	log       *slog.Logger
	e         *ha.Engine
	tr        *ha.Transport // nil: messages cannot be sent (see startHA)
	pr        *probe.Prober // nil: nothing is probed
	// udp probes the remote gateways by UDP for the checksum setting
	// (checksum.go); nil: not needed, or no raw sockets.
	udp      *probe.Prober
	savePath string

	edges   chan map[string]bus.Edge
	relay   chan []bus.Claim
	changed chan struct{}

	mu   sync.Mutex
	view haView
}

// haView is what the agent applies: the claims in force and what to do
// with the own site's VIP.
type haView struct {
	Claims   map[string]bus.Claim
	VIPs     []netip.Addr
	VIPState ha.VIPState
	Site     *bus.SiteStatus
}

// startHA opens the prober and the HA socket in the agent's namespace and
// restores the claims saved by an earlier run. Without raw sockets or IPv6
// it still runs, on the claims the controller relays, and says why. With
// udp it also probes the remote gateways by UDP.
func startHA(self, dev, secret, savePath string, udp bool, log *slog.Logger) *haRunner {
	h := &haRunner{self: self, dev: dev, log: log, savePath: savePath,
		edges: make(chan map[string]bus.Edge, 1), relay: make(chan []bus.Claim, 16), changed: make(chan struct{}, 1)}
	var probes ha.Probes = noProbes{}
	if pr, err := probe.Open(); err != nil {
		log.Error("data-plane probes disabled (cframe-edge needs CAP_NET_RAW): gateway failover cannot detect failures", "err", err)
	} else {
		h.pr, probes = pr, pr
	}
	if udp {
		if pr, err := probe.OpenUDP(); err != nil {
			log.Error("UDP probes disabled: the checksum setting stays as it is", "err", err)
		} else {
			h.udp = pr
		}
	}
	if tr, err := ha.Listen(dev, secret, log); err != nil {
		log.Error("HA messages through the tunnel disabled (IPv6 is needed on the tunnel device): failover follows the controller only", "err", err)
	} else {
		h.tr = tr
	}
	h.e = ha.New(self, ha.DefaultTiming(), probes, log, time.Now())
	if saved, err := loadClaims(savePath); err != nil {
		log.Warn("ignoring saved claims", "err", err)
	} else if len(saved) > 0 {
		h.e.Restore(saved)
	}
	h.publish()
	return h
}

type noProbes struct{}

func (noProbes) State(string) (probe.State, bool) { return probe.State{}, false }
func (noProbes) Urgent(string, time.Duration)     {}

// SetEdges hands the runner a new edge set (the latest wins).
func (h *haRunner) SetEdges(set map[string]bus.Edge) {
	select {
	case <-h.edges:
	default:
	}
	h.edges <- set
}

// Relay hands the runner the claims the controller relayed.
func (h *haRunner) Relay(cs []bus.Claim) {
	select {
	case h.relay <- cs:
	default:
	}
}

// Changed fires when View may have changed.
func (h *haRunner) Changed() <-chan struct{} { return h.changed }

// View returns the current decisions.
func (h *haRunner) View() haView {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.view
}

// Probes returns the data-plane health of every remote gateway with a
// verdict yet (see probe.State.Known), sorted.
func (h *haRunner) Probes() []bus.PeerProbe {
	if h.pr == nil {
		return nil
	}
	var out []bus.PeerProbe
	states := h.pr.States()
	for _, name := range h.pr.Names() {
		if st := states[name]; st.Known && ha.TargetOf(name).Kind == ha.TargetPeer {
			out = append(out, bus.PeerProbe{Name: name, Up: st.Up, RTT: st.RTT, Since: st.Since.UTC()})
		}
	}
	return out
}

// udpTargets are the remote gateways among the prober's targets, probed
// by UDP every probe.UDPInterval — in a mesh of more than
// udpAnswersPerSecond/2 gateways less often, so that the port unreachables
// a gateway sends the others (each gateway probes it) stay well under
// the kernel's global ICMP limit (net.ipv4.icmp_msgs_per_sec, 1000), which
// would otherwise drop answers and fake evidence. A target is down after
// three and a half intervals without an answer.
func udpTargets(ts []probe.Target) []probe.Target {
	var out []probe.Target
	for _, t := range ts {
		if ha.TargetOf(t.Name).Kind == ha.TargetPeer {
			out = append(out, probe.Target{Name: t.Name, Addr: t.Addr})
		}
	}
	interval := max(probe.UDPInterval, time.Duration(len(out))*time.Second/udpAnswersPerSecond)
	for i := range out {
		out[i].Interval, out[i].DownAfter = interval, interval*7/2
	}
	return out
}

// udpAnswersPerSecond bounds the port unreachables a gateway sends for
// the UDP probes of all the others.
const udpAnswersPerSecond = 250

// paths returns what both probers see of each remote gateway probed by UDP.
func (h *haRunner) paths() []pathProbes {
	if h.pr == nil || h.udp == nil {
		return nil
	}
	icmp := h.pr.States()
	var out []pathProbes
	for name, st := range h.udp.States() {
		out = append(out, pathProbes{Peer: name, ICMP: icmp[name], UDP: st})
	}
	return out
}

// run drives the engine until ctx ends.
func (h *haRunner) run(ctx context.Context) {
	if h.pr != nil {
		go h.pr.Run(ctx.Done())
	}
	if h.udp != nil {
		go h.udp.Run(ctx.Done())
	}
	if h.tr != nil {
		defer h.tr.Close()
	}
	var msgs <-chan ha.Message
	if h.tr != nil {
		msgs = h.tr.Messages()
	}
	tick := time.NewTicker(haTick)
	defer tick.Stop()
	var set map[string]bus.Edge
	var targets []probe.Target
	ticks := 0
	for {
		input := true // false when only the clock moved
		select {
		case <-ctx.Done():
			return
		case set = <-h.edges:
			h.e.SetEdges(set)
			h.e.SetLAN(lanAddr(set, h.self))
		case cs := <-h.relay:
			h.e.Relay(cs)
		case m := <-msgs:
			h.e.Receive(m, time.Now())
		case now := <-tick.C:
			input = false
			if ticks++; ticks%int(lanCheck/haTick) == 0 {
				h.e.SetLAN(lanAddr(set, h.self))
				input = true
			}
			h.e.Tick(now)
		}
		for _, env := range h.e.Outbox() {
			if h.tr == nil {
				break
			}
			if err := h.tr.Send(env); err != nil {
				h.log.Debug("HA message not sent", "to", env.To, "kind", env.Msg.Kind, "err", err)
			}
		}
		// Changes are found one way: the engine's outputs compared with
		// what was last handed on. The probe targets cost O(edges) to
		// build, and a tick changes none of their inputs but the claims,
		// so they are rebuilt after an input or a change of claims only.
		if claimsChanged := h.publish(); h.pr != nil && (input || claimsChanged) {
			if t := h.e.Targets(h.dev); !slices.Equal(t, targets) {
				targets = t
				h.pr.SetTargets(t)
				if h.udp != nil {
					h.udp.SetTargets(udpTargets(t))
				}
			}
		}
	}
}

// publish makes the engine's decisions the view, saves changed claims and
// tells the agent when anything changed. It reports whether the claims did.
func (h *haRunner) publish() bool {
	vips, state := h.e.VIP()
	v := haView{Claims: h.e.Claims(), VIPs: vips, VIPState: state, Site: h.e.Status()}
	h.mu.Lock()
	old := h.view
	claims := !maps.Equal(old.Claims, v.Claims)
	same := !claims && slices.Equal(old.VIPs, v.VIPs) && old.VIPState == v.VIPState && sameSite(old.Site, v.Site)
	if !same {
		h.view = v
	}
	h.mu.Unlock()
	if same {
		return false
	}
	if claims {
		h.save()
	}
	select {
	case h.changed <- struct{}{}:
	default:
	}
	return claims
}

func sameSite(a, b *bus.SiteStatus) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// lanAddr is this host's address inside its own networks (primary first),
// never the site's VIP.
func lanAddr(set map[string]bus.Edge, self string) netip.Addr {
	e, ok := set[self]
	if !ok {
		return netip.Addr{}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}
	}
	for _, p := range e.Prefixes() {
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if ip = ip.Unmap(); ok && p.Contains(ip) && ip != e.VIP && ip != e.VIP6 {
				return ip
			}
		}
	}
	return netip.Addr{}
}

// loadClaims reads the claims an earlier run saved at path.
func loadClaims(path string) ([]bus.Claim, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var cs []bus.Claim
	return cs, json.Unmarshal(b, &cs)
}

// save writes the claims in force, for a restart without the controller.
func (h *haRunner) save() {
	b, err := json.Marshal(h.e.SavedClaims())
	if err == nil {
		err = atomicfile.Write(h.savePath, b, 0o600)
	}
	if err != nil {
		h.log.Error("save claims", "path", h.savePath, "err", err)
	}
}

// describeRoles says what changed from old to v, for the kernel change log:
// each site's new active gateway with the claim's epoch and reason, and
// this gateway's VIP.
func describeRoles(old, v haView) string {
	var parts []string
	for _, site := range sortedSites(v.Claims) {
		c := v.Claims[site]
		if o := old.Claims[site]; o != c {
			parts = append(parts, fmt.Sprintf("site %s: %s active at epoch %d (%s)", site, c.Gateway, c.Epoch, c.Reason))
		}
	}
	if old.VIPState != v.VIPState || !slices.Equal(old.VIPs, v.VIPs) {
		parts = append(parts, fmt.Sprintf("VIP %s: %s", addrList(v.VIPs), v.VIPState))
	}
	if len(parts) == 0 {
		return "site roles unchanged"
	}
	return strings.Join(parts, "; ")
}

// addrList is addrs comma-separated ("none" for none).
func addrList(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "none"
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func sortedSites(m map[string]bus.Claim) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
