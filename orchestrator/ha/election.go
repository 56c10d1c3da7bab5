package ha

import (
	"fmt"
	"strings"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// The own site's election: when a gateway proposes to take over (consider),
// how it warns and asks the witnesses (suspect, propose), counts their votes
// (tally) and makes the decision everyone's (commit, retransmit).

// retransmit repeats a fresh commit to the gateways that have not
// acknowledged it, 50 ms, 100 ms, 200 ms ... apart, five times at most;
// after that the periodic refresh carries it.
func (e *Engine) retransmit(now time.Time, cur bus.Claim) {
	for _, g := range sortedKeys(e.unacked) {
		r := e.unacked[g]
		if now.Before(r.next) {
			continue
		}
		r.tries++
		if r.tries > 5 {
			delete(e.unacked, g)
			continue
		}
		r.next = now.Add(50 * time.Millisecond << r.tries)
		if _, sib := e.sibs[g]; sib {
			e.sendSibling(g, Message{Kind: KindCommit, Claim: cur})
		} else {
			e.send(g, Message{Kind: KindCommit, Claim: cur})
		}
	}
}

// live reports whether sibling name's agent was heard recently: it could
// propose itself.
func (e *Engine) live(name string, now time.Time) bool {
	sb := e.sibs[name]
	return sb != nil && now.Sub(sb.heard) <= e.t.SiblingLive
}

// lanDown returns how long sibling name has not answered on the LAN, or 0
// while it answers or was never probed.
func (e *Engine) lanDown(name string, now time.Time) time.Duration {
	st, ok := e.probes.State(LANTarget(name).Name())
	if !ok || st.Up {
		return 0
	}
	since := st.LastReply
	if since.IsZero() {
		since = st.Since
	}
	if d := now.Sub(since); d >= e.t.LANDownAfter {
		return d
	}
	return 0
}

// best reports whether self is the gateway that should propose among the
// site's live gateways other than except: highest priority, then first name.
func (e *Engine) best(own *mesh.Site, except string, now time.Time) bool {
	for _, g := range own.Gateways {
		if g.Name == e.self || g.Name == except || !e.live(g.Name, now) {
			continue
		}
		if g.Priority > e.me.Priority || g.Priority == e.me.Priority && g.Name < e.self {
			return false
		}
	}
	return true
}

// evidence is what a takeover rests on, ordered weakest first: none (a
// first election, a deleted gateway, priority), the LAN alone (a
// partitioned site looks the same), the remote gateways' reports that the
// active gateway does not forward, their reports that it is unreachable.
type evidence int

const (
	evidenceNone evidence = iota
	evidenceLAN
	evidenceForwarding
	evidenceReported
)

func (ev evidence) String() string {
	return [...]string{"none", "lan", "forwarding", "reported"}[ev]
}

// consider starts a takeover when there is a reason to. After a refusal
// it waits (backoff) unless the evidence changed: the active gateway
// answers on the LAN again and nobody reports it (the backoff is
// forgotten), or the evidence is stronger than the refused proposal's.
func (e *Engine) consider(now time.Time, own *mesh.Site, cur bus.Claim) {
	if now.Sub(e.started) < e.t.Rejoin || cur.Gateway == e.self && cur.Epoch > 0 {
		return
	}
	reporters := e.reported(cur.Gateway, WhyDown, e.reachable(), time.Time{}, now)
	// Reports that the active gateway does not forward count when this
	// gateway reached it on the LAN all along the silence they report:
	// else a LAN partition explains them.
	lan, _ := e.probes.State(LANTarget(cur.Gateway).Name())
	lanUp := lan.Up
	notForwarding := e.reported(cur.Gateway, WhyForwarding, e.forwardWitnesses(), lan.Since.Add(e.t.ForwardDownAfter), now)
	if lanUp && reporters == "" && notForwarding == "" {
		e.backoff, e.retryAt = 0, time.Time{}
	}
	e.suspect(now, cur.Gateway)
	var why, reason string
	var ev evidence
	active, member := own.Gateway(cur.Gateway)
	switch {
	case cur.Epoch == 0:
		why, reason = WhyInitial, "first election of the site"
	case !member:
		why, reason = WhyDeleted, cur.Gateway+" is no longer a gateway of the site"
	case reporters != "":
		why, reason, ev = WhyDown, cur.Gateway+" unreachable through the tunnel from "+reporters, evidenceReported
	case e.lanDown(cur.Gateway, now) > 0:
		why, ev = WhyDown, evidenceLAN
		reason = fmt.Sprintf("%s unreachable on the LAN for %s", cur.Gateway, e.lanDown(cur.Gateway, now).Round(time.Millisecond))
	case notForwarding != "" && lanUp:
		// This gateway reaches the active one on the LAN, and the
		// remote gateways reach both through the tunnel: what fails is
		// the active gateway's forwarding.
		why, ev = WhyForwarding, evidenceForwarding
		reason = fmt.Sprintf("%s does not forward: probes through it to %s unanswered from %s", cur.Gateway, e.self, notForwarding)
	case e.me.Priority > active.Priority && now.Sub(e.started) >= e.t.PreemptDelay && e.healthy():
		why, reason = WhyPriority, fmt.Sprintf("priority %d above %d of %s", e.me.Priority, active.Priority, cur.Gateway)
	default:
		return
	}
	if now.Before(e.retryAt) && ev <= e.refusedOn {
		return
	}
	if !e.best(own, cur.Gateway, now) {
		return
	}
	e.evidence = ev
	e.propose(now, own, cur, why, reason)
}

// suspect warns the reachable witnesses once the active gateway has not
// answered on the LAN for LANSuspect, once per silence.
func (e *Engine) suspect(now time.Time, active string) {
	st, ok := e.probes.State(LANTarget(active).Name())
	if !ok || active == "" || active == e.self {
		return
	}
	last := st.LastReply
	if last.IsZero() {
		last = st.Since
	}
	switch {
	case now.Sub(last) < e.t.LANSuspect:
		e.suspected = ""
	case e.suspected != active && now.Sub(e.started) >= e.t.Rejoin:
		e.suspected = active
		for _, w := range e.reachable() {
			e.send(w, Message{Kind: KindSuspect, Claim: bus.Claim{Site: e.me.Site}, Prev: active})
		}
	}
}

// reported returns the remote gateways (comma-separated) that reported
// prev recently (down, or not forwarding: why), but not before after,
// when they are a majority of the witnesses of that; "" otherwise.
func (e *Engine) reported(prev, why string, witnesses []string, after, now time.Time) string {
	var from []string
	for _, k := range sortedKeys(e.notices) {
		n := e.notices[k]
		if n.prev == prev && n.why == why && now.Sub(n.at) <= e.t.NoticeTTL && !n.at.Before(after) {
			from = append(from, n.from)
		}
	}
	if len(from) == 0 || 2*len(from) <= len(witnesses) {
		return ""
	}
	return strings.Join(from, ", ")
}

// healthy reports whether this gateway reaches most remote gateways.
func (e *Engine) healthy() bool {
	all := len(e.remoteGateways())
	return all == 0 || 2*len(e.reachable()) > all
}

// propose asks the reachable remote gateways to witness a takeover.
func (e *Engine) propose(now time.Time, own *mesh.Site, cur bus.Claim, why, reason string) {
	c := bus.Claim{Site: own.Name, Gateway: e.self, Epoch: cur.Epoch + 1, Priority: e.me.Priority, Reason: reason, Time: now.UTC()}
	e.cand = &candidacy{claim: c, why: why, prev: cur.Gateway, witnesses: map[string]bool{},
		accepted: map[string]bool{}, refused: map[string]string{}, started: now}
	w := e.reachable()
	if why == WhyForwarding {
		w = e.forwardWitnesses()
	}
	switch {
	case len(w) == 0 && len(e.remoteGateways()) == 0:
		e.log.Info("claiming the site with no remote gateway to ask", "site", own.Name, "epoch", c.Epoch, "reason", reason)
		e.commit(now)
		return
	case len(w) == 0:
		e.fail(now, "no remote gateway is reachable to witness it")
		return
	}
	e.log.Info("proposing to take over", "site", own.Name, "epoch", c.Epoch, "reason", reason, "witnesses", strings.Join(w, ","))
	for _, g := range w {
		e.cand.witnesses[g] = true
		e.send(g, Message{Kind: KindClaim, Claim: c, Prev: cur.Gateway, Why: why})
	}
}

func (e *Engine) onVote(m Message, now time.Time) {
	c := e.cand
	if c == nil || m.Claim != c.claim || !c.witnesses[m.From] {
		return
	}
	if m.Accept {
		c.accepted[m.From] = true
	} else {
		c.refused[m.From] = m.Note
	}
	e.tally(now)
}

// tally commits the candidacy once a majority of the witnesses agreed, or
// at VoteWait when more agreed than refused; it gives up when that cannot
// happen any more.
func (e *Engine) tally(now time.Time) {
	c := e.cand
	n, acc, ref := len(c.witnesses), len(c.accepted), len(c.refused)
	switch {
	case 2*acc > n:
		e.commit(now)
	case acc+ref == n || now.Sub(c.started) >= e.t.VoteWait:
		if acc > ref {
			e.commit(now)
			return
		}
		var notes []string
		for _, w := range sortedKeys(c.refused) {
			notes = append(notes, w+": "+c.refused[w])
		}
		if len(notes) == 0 {
			notes = append(notes, "no witness answered")
		}
		e.fail(now, strings.Join(notes, "; "))
	}
}

// fail abandons the candidacy and waits, longer each time, before the next.
func (e *Engine) fail(now time.Time, why string) {
	e.backoff = max(e.t.Backoff, min(2*e.backoff, e.t.MaxBackoff))
	e.retryAt = now.Add(e.backoff)
	e.log.Warn("takeover refused", "site", e.cand.claim.Site, "reason", e.cand.claim.Reason, "refusals", why, "retry_in", e.backoff)
	e.cand, e.refusedOn = nil, e.evidence
}

// commit makes the candidacy the site's claim and tells every gateway.
func (e *Engine) commit(now time.Time) {
	c := e.cand.claim
	e.cand, e.backoff = nil, 0
	e.claims[c.Site] = c
	e.confirmed = true
	e.log.Info("active gateway of the site", "site", c.Site, "epoch", c.Epoch, "reason", c.Reason)
	e.unacked = map[string]*resend{}
	for _, g := range e.remoteGateways() {
		e.send(g, Message{Kind: KindCommit, Claim: c})
		e.unacked[g] = &resend{next: now.Add(50 * time.Millisecond)}
	}
	for _, g := range e.ownSite().Gateways {
		if g.Name != e.self {
			e.sendSibling(g.Name, Message{Kind: KindCommit, Claim: c})
			e.unacked[g.Name] = &resend{next: now.Add(50 * time.Millisecond)}
		}
	}
	e.lastRefresh = now
}
