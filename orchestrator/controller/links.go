package controller

import (
	"fmt"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// Link health: a link's state is what its ends' configuration AND their
// tunnel probes say. Both ends applying the current revision makes a link
// configured; it is up only while neither end's probes of the other fail.

// peerProbe is one edge's latest tunnel-probe result for one peer.
type peerProbe struct {
	up    bool
	rtt   time.Duration
	since time.Time // when up last changed
}

// probesOf reads the per-peer probe results an edge reports in its status.
// Agents without a probe (no CAP_NET_RAW) report none: their links' probe
// state is unknown and their state follows the configuration alone.
func probesOf(st bus.Status) map[string]peerProbe {
	if len(st.Probes) == 0 {
		return nil
	}
	out := make(map[string]peerProbe, len(st.Probes))
	for _, p := range st.Probes {
		out[p.Name] = peerProbe{up: p.Up, rtt: p.RTT, since: p.Since}
	}
	return out
}

// linkEnd is what the controller knows about one end of a link.
type linkEnd struct {
	name string
	st   *edgeStatus // nil before the first heartbeat
}

func (e linkEnd) online() bool { return e.st != nil && e.st.online }

// current reports whether the end applied rev without error.
func (e linkEnd) current(rev uint64) bool {
	return e.online() && e.st.last.AppliedRevision == rev && e.st.last.Error == ""
}

// probeOf returns the end's probe result for peer.
func (e linkEnd) probeOf(peer string) (peerProbe, bool) {
	if e.st == nil {
		return peerProbe{}, false
	}
	p, ok := e.st.probes[peer]
	return p, ok
}

// linkOf computes the link between a and b at revision rev, committed at
// revAt. Only an online end's probes count (an offline end's last report
// is stale). The data plane decides: failing probes make a link down even
// when both ends applied the revision, and passing probes keep it up while
// an end's agent is offline (a dead agent leaves the kernel forwarding).
func linkOf(a, b linkEnd, rev uint64, revAt time.Time) api.Link {
	l := api.Link{A: a.name, B: b.name, Probe: api.ProbeUnknown}
	var rtts []time.Duration
	var upSince time.Time
	for _, d := range [][2]linkEnd{{a, b}, {b, a}} {
		from, to := d[0], d[1]
		p, ok := from.probeOf(to.name)
		switch {
		case !ok || !from.online():
		case !p.up:
			if l.Probe != api.ProbeDown || p.since.Before(*l.Since) {
				since := p.since
				l.Probe, l.Since, l.Reason = api.ProbeDown, &since, fmt.Sprintf("probes from %s to %s fail", from.name, to.name)
			}
		default:
			if l.Probe == api.ProbeUnknown {
				l.Probe = api.ProbeUp
			}
			rtts = append(rtts, p.rtt)
			upSince = maxTime(upSince, p.since)
		}
	}
	if l.Probe == api.ProbeUp {
		var sum time.Duration
		for _, r := range rtts {
			sum += r
		}
		l.RTTMs = float64(sum/time.Duration(len(rtts))) / float64(time.Millisecond)
	}
	switch {
	case !a.online() || !b.online():
		l.Config = api.ConfigOffline
	case !a.current(rev) || !b.current(rev):
		l.Config = api.ConfigPending
	default:
		l.Config = api.ConfigApplied
	}
	switch {
	case l.Probe == api.ProbeDown:
		l.State = api.LinkDown
	case l.Config == api.ConfigOffline:
		off := a
		if a.online() {
			off = b
		}
		if l.Probe == api.ProbeUp {
			l.State, l.Reason = api.LinkUp, fmt.Sprintf("%s's agent is offline; the tunnel still answers", off.name)
			l.Since = &upSince
			break
		}
		l.State, l.Reason = api.LinkDown, off.name+" is offline"
		if off.st != nil {
			since := off.st.since
			l.Since = &since
		}
	case l.Config == api.ConfigPending:
		l.State, l.Reason = api.LinkPending, fmt.Sprintf("an end has not applied revision %d", rev)
		if !revAt.IsZero() {
			since := revAt
			l.Since = &since
		}
	default:
		l.State = api.LinkUp
		if !upSince.IsZero() {
			l.Since = &upSince
		}
	}
	return l
}

// incompatibleLink is the link between two edges whose underlays are of
// different families: there is no tunnel between them to configure or
// probe (mesh.ShareUnderlay).
func incompatibleLink(a, b bus.Edge) api.Link {
	return api.Link{A: a.Name, B: b.Name, State: api.LinkIncompatible, Config: api.ConfigNone, Probe: api.ProbeUnknown,
		Reason: fmt.Sprintf("no common underlay: %s's hostaddr is %s, %s's is %s", a.Name, mesh.UnderlayFamily(a), b.Name, mesh.UnderlayFamily(b))}
}
