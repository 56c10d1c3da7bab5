package controller

import (
	"fmt"
	"iter"
	"strings"
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
	edge bus.Edge
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

// encryptionOf is how the link between a and b is encrypted, as its ends
// report it: no path or plaintext when either end says so (with its
// words), WireGuard when both encrypt and neither says otherwise — stale
// when an end saw no handshake for minutes —, unknown while an end has not
// reported.
func encryptionOf(a, b linkEnd) (enc, why string, stale bool) {
	encrypted := true
	var plaintext, down string
	for _, d := range [][2]linkEnd{{a, b}, {b, a}} {
		from, to := d[0], d[1]
		if from.st == nil {
			encrypted = false
			continue
		}
		st := from.st.last
		why := st.Links[to.name]
		switch {
		case strings.HasPrefix(why, "no path: "):
			return api.EncryptionNoPath, fmt.Sprintf("%s: %s", from.name, strings.TrimPrefix(why, "no path: ")), false
		case strings.HasPrefix(why, "down: ") && down == "":
			down = fmt.Sprintf("%s: %s", from.name, strings.TrimPrefix(why, "down: "))
		case strings.HasPrefix(why, "plaintext: ") && plaintext == "":
			plaintext = fmt.Sprintf("%s: %s", from.name, strings.TrimPrefix(why, "plaintext: "))
		case st.WireGuardKey == "":
			if st.Plaintext != "" && plaintext == "" {
				plaintext = fmt.Sprintf("%s: %s", from.name, st.Plaintext)
			}
			encrypted = false
		}
	}
	switch {
	case plaintext != "":
		return api.EncryptionPlaintext, plaintext, false
	case encrypted:
		return api.EncryptionWireGuard, down, down != ""
	}
	return "", "", false
}

// linkOf computes the link between a and b at revision rev, committed at
// revAt. Only an online end's probes count (an offline end's last report
// is stale). The data plane decides: failing probes make a link down even
// when both ends applied the revision, and passing probes keep it up while
// an end's agent is offline (a dead agent leaves the kernel forwarding).
func linkOf(a, b linkEnd, rev uint64, revAt time.Time) api.Link {
	if !mesh.ShareUnderlay(a.edge, b.edge) {
		return incompatibleLink(a.edge, b.edge)
	}
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
	var stale bool
	l.Encryption, l.EncryptionReason, stale = encryptionOf(a, b)
	switch {
	case l.Encryption == api.EncryptionNoPath || stale:
		l.State, l.Reason = api.LinkDown, l.EncryptionReason
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

// linkCounts counts the links between ends by state without building
// them: O(ends + per-peer reports), not O(ends²), so that a scrape of a
// controller with thousands of edges stays cheap. A link neither end
// reports on per peer (probes, or a link state such as "no path: ...")
// has the state of its ends' classes (offline, current, behind; by
// underlay family), which linkOf decides once per pair of classes; the
// links some end reports on are computed one by one.
func linkCounts(ends []linkEnd, rev uint64) map[string]int {
	counts := map[string]int{api.LinkUp: 0, api.LinkPending: 0, api.LinkDown: 0}
	const classes = 6
	classOf := func(e linkEnd) int {
		c := 2
		switch {
		case !e.online():
			c = 0
		case e.current(rev):
			c = 1
		}
		if e.edge.HostAddr.Addr().Is6() {
			c += 3
		}
		return c
	}
	// A representative of each class, stripped of its probes.
	var reps [classes]*linkEnd
	var n [classes]int
	index := make(map[string]int, len(ends))
	for i, e := range ends {
		index[e.name] = i
		c := classOf(e)
		n[c]++
		if reps[c] == nil {
			r := linkEnd{name: e.name, edge: e.edge}
			if e.st != nil {
				st := *e.st
				st.probes, st.last.Links = nil, nil
				r.st = &st
			}
			reps[c] = &r
		}
	}
	var state [classes][classes]string
	for a := range classes {
		for b := a; b < classes; b++ {
			if reps[a] == nil || reps[b] == nil {
				continue
			}
			state[a][b] = linkOf(*reps[a], *reps[b], rev, time.Time{}).State
			pairs := n[a] * n[b]
			if a == b {
				pairs = n[a] * (n[a] - 1) / 2
			}
			counts[state[a][b]] += pairs
		}
	}
	seen := map[[2]int]bool{}
	for i, a := range ends {
		if a.st == nil {
			continue
		}
		for peer := range peersReported(a.st) {
			j, ok := index[peer]
			if !ok || j == i {
				continue
			}
			lo, hi := min(i, j), max(i, j)
			if seen[[2]int{lo, hi}] {
				continue
			}
			seen[[2]int{lo, hi}] = true
			ca, cb := classOf(ends[lo]), classOf(ends[hi])
			counts[state[min(ca, cb)][max(ca, cb)]]--
			counts[linkOf(ends[lo], ends[hi], rev, time.Time{}).State]++
		}
	}
	return counts
}

// peersReported are the peers an end reports on one by one: probes and
// link states.
func peersReported(st *edgeStatus) iter.Seq[string] {
	return func(yield func(string) bool) {
		for peer := range st.probes {
			if !yield(peer) {
				return
			}
		}
		for peer := range st.last.Links {
			if _, ok := st.probes[peer]; !ok && !yield(peer) {
				return
			}
		}
	}
}

// incompatibleLink is the link between two edges whose underlays are of
// different families: there is no tunnel between them to configure or
// probe (mesh.ShareUnderlay).
func incompatibleLink(a, b bus.Edge) api.Link {
	return api.Link{A: a.Name, B: b.Name, State: api.LinkIncompatible, Config: api.ConfigNone, Probe: api.ProbeUnknown,
		Reason: fmt.Sprintf("no common underlay: %s's hostaddr is %s, %s's is %s", a.Name, mesh.UnderlayFamily(a), b.Name, mesh.UnderlayFamily(b))}
}
