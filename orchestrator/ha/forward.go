package ha

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// Forwarding through the data path: is a remote site's active gateway
// forwarding from the tunnel into its LAN? Its standbys announce their LAN
// addresses to the remote gateways (announce, onAnnounce); a remote gateway
// that witnesses forwarding probes each of them with echo requests that its
// kernel routes, like the site's traffic, to the active gateway
// (forwardTargets), tells a standby when its address stops answering while
// both gateways still answer through the tunnel (observeForwarding), and
// checks those same probes when that standby proposes to take over
// (checkForwarding in onClaim).

// silentAfter is how many probes through a gateway may go unanswered,
// none ever answered, before the target is warned about.
const silentAfter = 50

// announce sends this gateway's LAN address to every remote gateway every
// Refresh, when its site has several gateways.
func (e *Engine) announce(now time.Time, own *mesh.Site) {
	if len(own.Gateways) < 2 || !e.lan.IsValid() || now.Sub(e.lastAnnounce) < e.t.Refresh {
		return
	}
	e.lastAnnounce = now
	for _, g := range e.remoteGateways() {
		e.send(g, Message{Kind: KindHello, LAN: e.lan})
	}
}

// onAnnounce keeps the LAN address a remote gateway announced.
func (e *Engine) onAnnounce(m Message) {
	if !e.forwardTarget(m.From, m.LAN) || e.remoteLAN[m.From] == m.LAN {
		return
	}
	e.remoteLAN[m.From] = m.LAN
}

// forwardTarget reports whether addr may be probed as gateway name's LAN
// address: name is a gateway of a remote site with several, and addr lies
// in the site's networks and is not its VIP.
func (e *Engine) forwardTarget(name string, addr netip.Addr) bool {
	s := e.sites[e.siteOf[name]]
	if !addr.IsValid() || s == nil || !s.Explicit() || len(s.Gateways) < 2 || s.Name == e.me.SiteName() || slices.Contains(s.VIPs(), addr) {
		return false
	}
	g, _ := s.Gateway(name)
	for _, p := range g.Prefixes() {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// witnessesForwarding reports whether this edge's probes through a remote
// active gateway are evidence: it has a LAN address (the source of its
// routes to the other sites) and is its own site's active gateway, so the
// answers come back to it through no other gateway.
func (e *Engine) witnessesForwarding() bool {
	if !e.known || !e.lan.IsValid() {
		return false
	}
	s := e.sites[e.me.SiteName()]
	return s != nil && s.Active(e.claims[s.Name]).Name == e.self
}

type fwdTarget struct {
	name, via, gateway, site string
	addr                     netip.Addr
}

// forwardTargets are the standbys' LAN addresses to probe through their
// site's active gateway, sorted by name.
func (e *Engine) forwardTargets() []fwdTarget {
	if !e.witnessesForwarding() {
		return nil
	}
	var out []fwdTarget
	for _, s := range e.sites {
		if !s.Explicit() || len(s.Gateways) < 2 || s.Name == e.me.SiteName() {
			continue
		}
		active := s.Active(e.claims[s.Name]).Name
		for _, g := range s.Gateways {
			if a, ok := e.remoteLAN[g.Name]; ok && g.Name != active {
				out = append(out, fwdTarget{name: ForwardTarget(active, g.Name).Name(), via: active, gateway: g.Name, site: s.Name, addr: a})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// forwardWitnesses are the reachable remote gateways that witness
// forwarding, as far as this gateway knows the claims.
func (e *Engine) forwardWitnesses() []string {
	var out []string
	for _, g := range e.reachable() {
		if s := e.sites[e.siteOf[g]]; s != nil && s.Active(e.claims[s.Name]).Name == g {
			out = append(out, g)
		}
	}
	return out
}

// up reports whether the named target answers.
func (e *Engine) up(name string) bool {
	st, ok := e.probes.State(name)
	return ok && st.Up
}

// observeForwarding tells each standby whose LAN address stopped answering
// through its site's active gateway — after it had answered, while both
// gateways answer through the tunnel — and again every NoticeRepeat while
// that lasts. It counts each such failure as one of the active gateway's
// flaps, and warns once about a target that never answered.
func (e *Engine) observeForwarding(now time.Time) {
	for _, f := range e.forwardTargets() {
		st, ok := e.probes.State(f.name)
		if !ok {
			continue
		}
		if st.Received == 0 && st.Sent >= silentAfter && !e.silentWarned[f.name] {
			e.silentWarned[f.name] = true
			e.log.Warn("probes through a gateway to another's LAN address never answered: its forwarding is not checked (strict rp_filter on that gateway's LAN interface?)",
				"site", f.site, "through", f.via, "to", f.gateway, "addr", f.addr)
		}
		failing := !st.Up && st.Received > 0 && e.up(f.via) && e.up(f.gateway)
		was := e.wasUp[f.name]
		e.wasUp[f.name] = st.Up
		if !failing {
			delete(e.noticed, f.name)
			continue
		}
		if was {
			e.flap(f.via, now)
		}
		last, reported := e.noticed[f.name]
		if reported && now.Sub(last) < e.t.NoticeRepeat {
			continue
		}
		if !reported {
			e.log.Warn("a remote gateway does not forward into its LAN: probes through it go unanswered while it answers through the tunnel",
				"site", f.site, "gateway", f.via, "to", f.gateway, "addr", f.addr, "silent", e.silentFor(f.name, now).Round(time.Millisecond))
		}
		e.noticed[f.name] = now
		e.send(f.gateway, Message{Kind: KindDown, Claim: bus.Claim{Site: f.site}, Prev: f.via, Why: WhyForwarding})
	}
}

// checkForwarding starts the witness's check of a WhyForwarding proposal
// by candidate against the active gateway, or returns why it refuses.
func (e *Engine) checkForwarding(from string, p bus.Claim, active string, now time.Time) string {
	name := ForwardTarget(active, p.Gateway).Name()
	st, ok := e.probes.State(name)
	switch {
	case !ok:
		return fmt.Sprintf("%s does not probe %s through %s", e.self, p.Gateway, active)
	case st.Received == 0:
		return fmt.Sprintf("%s's probes through %s to %s never answered", e.self, active, p.Gateway)
	case !e.up(p.Gateway):
		return fmt.Sprintf("%s does not reach %s through the tunnel", e.self, p.Gateway)
	}
	e.probes.Urgent(name, e.t.WitnessAge)
	e.checks = append(e.checks, &check{from: from, claim: p, target: name, what: p.Gateway + " through " + active, asked: now})
	return ""
}
