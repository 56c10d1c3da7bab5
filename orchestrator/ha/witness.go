package ha

import (
	"fmt"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/probe"
)

// The witness's side: every agent answers the takeover proposals of other
// sites' gateways from what its own probes see, and reports when the
// active gateway of a site it routes to stops answering (or forwarding:
// forward.go).

// onClaim answers a proposal, at once or after probing the gateway the
// proposal would replace (a pending check).
func (e *Engine) onClaim(m Message, now time.Time) {
	p := m.Claim
	refuse := func(format string, a ...any) {
		e.send(m.From, Message{Kind: KindVote, Claim: p, Note: fmt.Sprintf(format, a...)})
		if cur := e.claims[p.Site]; cur.Epoch > 0 {
			e.send(m.From, Message{Kind: KindCurrent, Claim: cur}) // news for a candidate that is behind
		}
	}
	s, ok := e.sites[p.Site]
	switch {
	case !e.known:
		refuse("%s is not registered", e.self)
		return
	case !ok || !s.Explicit() || s.Name == e.me.SiteName():
		refuse("site %s is not a remote site here", p.Site)
		return
	case p.Gateway != m.From || !isGateway(s, p.Gateway):
		refuse("%s is not a gateway of site %s here", p.Gateway, p.Site)
		return
	}
	cur := e.claims[p.Site]
	if !p.Newer(cur) {
		refuse("site %s is at epoch %d (%s)", p.Site, cur.Epoch, cur.Gateway)
		return
	}
	active := s.Active(cur)
	switch m.Why {
	case WhyInitial:
		if cur.Epoch != 0 && isGateway(s, cur.Gateway) {
			refuse("site %s already has %s active at epoch %d", p.Site, cur.Gateway, cur.Epoch)
			return
		}
	case WhyDeleted:
		// The edge set says so, and reaches every agent (this one's may
		// lag the candidate's by a moment): nothing to check.
	case WhyPriority:
		if p.Priority <= active.Priority && active.Name != p.Gateway {
			refuse("priority %d is not above %d of %s", p.Priority, active.Priority, active.Name)
			return
		}
		st, _ := e.probes.State(p.Gateway)
		hold := e.hold(p.Gateway, now)
		if !st.Up || now.Sub(st.Since) < hold {
			refuse("%s has answered for %s only, %s needed (%d recent failures)", p.Gateway,
				upFor(st, now).Round(time.Millisecond), hold, e.recentFlaps(p.Gateway, now))
			return
		}
	case WhyDown:
		if _, probed := e.probes.State(active.Name); !probed && active.Name != p.Gateway {
			refuse("%s does not probe %s", e.self, active.Name)
			return
		}
		if active.Name != p.Gateway {
			// Probe it urgently and decide in Tick: down when it has not
			// answered for WitnessAge, nor since the question — or the
			// warning before it — for a few round trips.
			asked := now
			if t, ok := e.suspects[active.Name]; ok && now.Sub(t) < time.Second {
				asked = t
			}
			e.probes.Urgent(active.Name, e.t.WitnessAge)
			e.checks = append(e.checks, &check{from: m.From, claim: p, target: active.Name, what: active.Name, asked: asked})
			return
		}
	case WhyForwarding:
		if active.Name != p.Gateway {
			// Probe through it urgently and decide in Tick, like a
			// WhyDown; refuse at once what this witness cannot check.
			if why := e.checkForwarding(m.From, p, active.Name, now); why != "" {
				refuse("%s", why)
			}
			return
		}
	default:
		refuse("unknown reason %q", m.Why)
		return
	}
	e.send(m.From, Message{Kind: KindVote, Claim: p, Accept: true})
}

// onSuspect takes a standby's warning that its site's active gateway went
// quiet: probe it urgently from now on.
func (e *Engine) onSuspect(m Message, now time.Time) {
	s, ok := e.sites[m.Claim.Site]
	if !ok || s.Name == e.me.SiteName() || !isGateway(s, m.From) || s.Active(e.claims[s.Name]).Name != m.Prev {
		return
	}
	e.suspects[m.Prev] = now
	e.probes.Urgent(m.Prev, 2*e.t.WitnessAge)
}

// silentFor is how long the named gateway has not answered this agent's
// probes (0 when it is not probed).
func (e *Engine) silentFor(name string, now time.Time) time.Duration {
	st, ok := e.probes.State(name)
	if !ok {
		return 0
	}
	if st.LastReply.IsZero() {
		return now.Sub(st.Since)
	}
	return now.Sub(st.LastReply)
}

func upFor(st probe.State, now time.Time) time.Duration {
	if !st.Up {
		return 0
	}
	return now.Sub(st.Since)
}

// recentFlaps is how often the gateway went down within FlapWindow.
func (e *Engine) recentFlaps(name string, now time.Time) int {
	n := 0
	for _, t := range e.flaps[name] {
		if now.Sub(t) <= e.t.FlapWindow {
			n++
		}
	}
	return n
}

// hold is how long a gateway must have answered before it may preempt:
// PreemptDelay, doubled for each recent failure, at most MaxHold.
func (e *Engine) hold(name string, now time.Time) time.Duration {
	h := e.t.PreemptDelay
	for range e.recentFlaps(name, now) {
		if h *= 2; h >= e.t.MaxHold {
			return e.t.MaxHold
		}
	}
	return h
}

// flap counts a failure of the named gateway (the last 32 are kept).
func (e *Engine) flap(name string, now time.Time) {
	e.flaps[name] = append(e.flaps[name], now)
	if n := len(e.flaps[name]); n > 32 {
		e.flaps[name] = e.flaps[name][n-32:]
	}
}

// observe follows the probes: pending checks are decided, down
// transitions of remote gateways are counted (flaps) and, for the active
// gateway of a site with standbys, reported to the standbys, and so are
// its failures to forward (observeForwarding).
func (e *Engine) observe(now time.Time) {
	kept := e.checks[:0]
	for _, c := range e.checks {
		st, _ := e.probes.State(c.target)
		// Two round trips of urgent probes, however old the last answer.
		confirm := max(e.t.ConfirmWait, 2*st.RTT)
		switch {
		case st.LastReply.After(c.asked):
			e.send(c.from, Message{Kind: KindVote, Claim: c.claim, Note: fmt.Sprintf("%s answers from %s (rtt %s)", c.what, e.self, st.RTT.Round(time.Microsecond))})
		case now.Sub(c.asked) >= confirm && e.silentFor(c.target, now) >= e.t.WitnessAge:
			e.send(c.from, Message{Kind: KindVote, Claim: c.claim, Accept: true})
		default:
			kept = append(kept, c)
		}
	}
	e.checks = kept
	e.observeForwarding(now)

	for _, s := range e.sites {
		if !s.Explicit() || s.Name == e.me.SiteName() || !e.known {
			continue
		}
		active := s.Active(e.claims[s.Name]).Name
		for _, g := range s.Gateways {
			st, ok := e.probes.State(g.Name)
			if !ok {
				continue
			}
			was := e.wasUp[g.Name]
			e.wasUp[g.Name] = st.Up
			if was && !st.Up {
				e.flap(g.Name, now)
			}
			// Report the active gateway going down, and again every
			// NoticeRepeat while it stays down.
			last, reported := e.noticed[g.Name]
			switch {
			case st.Up || g.Name != active || len(s.Gateways) < 2:
				delete(e.noticed, g.Name)
				continue
			case !was && !reported, reported && now.Sub(last) < e.t.NoticeRepeat:
				continue
			}
			e.noticed[g.Name] = now
			for _, other := range s.Gateways {
				if other.Name != g.Name {
					e.send(other.Name, Message{Kind: KindDown, Claim: bus.Claim{Site: s.Name}, Prev: g.Name})
				}
			}
		}
	}
}
