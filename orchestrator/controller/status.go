package controller

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// edgeStatus is what the controller knows about an edge agent from its
// heartbeats. Agents that are connected but not added are tracked too
// (shown as pending in the topology).
type edgeStatus struct {
	last   bus.Status
	seen   time.Time
	online bool
	// since is when online last changed.
	since time.Time
	// probes are the per-peer results of the edge's tunnel probe.
	probes map[string]probe
}

// onStatus records a heartbeat. The bus only lets an edge publish on its own
// subject; a body naming another edge is ignored.
func (c *Controller) onStatus(m *nats.Msg) {
	name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	var st bus.Status
	if err := bus.Decode(m, &st); err != nil || st.Name != name {
		c.log.Warn("ignored malformed status", "subject", m.Subject, "err", err)
		return
	}
	c.statusMu.Lock()
	s, ok := c.status[name]
	if !ok {
		s = &edgeStatus{}
		c.status[name] = s
	}
	now := time.Now()
	wasOnline, material := s.online, !s.online || materialChange(s.last, st)
	if !wasOnline {
		s.since = now
	}
	s.last, s.seen, s.online, s.probes = st, now, true, probesOf(st)
	c.statusMu.Unlock()
	c.fanout.applied(name, st.AppliedRevision, appliedAt(st, now))
	if material {
		c.changed()
	}
	if !wasOnline {
		c.log.Info("edge online", "edge", name, "state", st.State, "applied_revision", st.AppliedRevision)
		c.event(bus.EventEdgeOnline, name, st.AppliedRevision, st.State)
	}
}

// sweepOffline marks edges whose heartbeats stopped as offline.
func (c *Controller) sweepOffline(now time.Time) {
	var gone []string
	c.statusMu.Lock()
	for name, s := range c.status {
		if s.online && now.Sub(s.seen) > bus.OfflineAfter {
			s.online, s.since = false, now
			gone = append(gone, name)
		}
	}
	c.statusMu.Unlock()
	c.fanout.expire(now)
	for _, name := range gone {
		c.fanout.forget(name)
		c.log.Warn("edge offline: no heartbeat", "edge", name, "after", bus.OfflineAfter)
		c.event(bus.EventEdgeOffline, name, 0, "no heartbeat for "+bus.OfflineAfter.String())
	}
}

// statusOf returns a copy of an edge's status.
func (c *Controller) statusOf(name string) (edgeStatus, bool) {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	s, ok := c.status[name]
	if !ok {
		return edgeStatus{}, false
	}
	return *s, true
}

// ListEdges is the edge list with each edge's live status.
func (c *Controller) ListEdges() []api.EdgeView {
	c.mu.RLock()
	edges := sortedEdges(c.edges)
	c.mu.RUnlock()
	c.pinMu.Lock()
	pins := make(map[string]string, len(c.pins))
	for k, v := range c.pins {
		pins[k] = v
	}
	c.pinMu.Unlock()
	out := make([]api.EdgeView, 0, len(edges))
	for _, e := range edges {
		v := api.EdgeView{
			Name: e.Name, Comment: e.Comment, CIDR: e.CIDR.String(), HostAddr: e.HostAddr.String(),
			State: api.StateOffline, Revision: e.Revision, Key: pins[e.Name],
		}
		if len(e.ExtraCIDRs) > 0 {
			v.ExtraCIDRs = prefixStrings(e.ExtraCIDRs)
		}
		if s, ok := c.statusOf(e.Name); ok {
			if s.online {
				v.Status, v.State = 1, api.StateOnline
			}
			seen := s.seen.UTC()
			v.LastSeen = &seen
			v.AppliedRevision, v.LastError, v.Conflicts = s.last.AppliedRevision, s.last.Error, s.last.Conflicts
		}
		out = append(out, v)
	}
	return out
}

// materialChange reports whether a heartbeat changes what the topology
// shows, beyond round-trip times (those are picked up periodically).
func materialChange(old, st bus.Status) bool {
	if old.State != st.State || old.AppliedRevision != st.AppliedRevision || old.Error != st.Error || !slices.Equal(old.Conflicts, st.Conflicts) {
		return true
	}
	po, pn := probesOf(old), probesOf(st)
	if len(po) != len(pn) {
		return true
	}
	for peer, p := range pn {
		if q, ok := po[peer]; !ok || q.up != p.up {
			return true
		}
	}
	return false
}

// appliedAt is when, by the controller's clock, the edge applied the
// revision it reports: its own clock's difference between applying and
// reporting, taken from the arrival.
func appliedAt(st bus.Status, arrived time.Time) time.Time {
	if st.AppliedAt.IsZero() || st.Time.Before(st.AppliedAt) {
		return arrived
	}
	return arrived.Add(-st.Time.Sub(st.AppliedAt))
}

// Topology is the mesh: every edge with what its peers program for it, the
// state of every link (configuration and data plane), and agents waiting
// to be added.
func (c *Controller) Topology() api.Topology {
	c.mu.RLock()
	edges, rev, revAt := sortedEdges(c.edges), c.rev, c.revAt
	c.mu.RUnlock()
	t := api.Topology{Revision: rev, Edges: []api.TopologyEdge{}, Links: []api.Link{}, Pending: []string{}}
	ends := make([]linkEnd, len(edges))
	for i, e := range edges {
		te := api.TopologyEdge{
			Name: e.Name, HostAddr: e.HostAddr.String(), CIDRs: prefixStrings(e.Prefixes()),
			VTEPMAC: mesh.VTEPMAC(e.Name).String(), NextHop: mesh.NextHop(e).String(), State: api.StateOffline,
		}
		ends[i].name = e.Name
		if s, ok := c.statusOf(e.Name); ok {
			ends[i].st = &s
			te.AppliedRevision, te.LastError, te.Conflicts = s.last.AppliedRevision, s.last.Error, s.last.Conflicts
			since := s.since.UTC()
			te.Since = &since
			if s.online {
				te.State = api.StateOnline
			}
		}
		t.Edges = append(t.Edges, te)
	}
	for i, a := range ends {
		for _, b := range ends[i+1:] {
			t.Links = append(t.Links, linkOf(a, b, rev, revAt))
		}
	}
	c.statusMu.Lock()
	for name, s := range c.status {
		if s.online && s.last.State == bus.StateNotRegistered {
			t.Pending = append(t.Pending, name)
		}
	}
	c.statusMu.Unlock()
	sort.Strings(t.Pending)
	return t
}
