package controller

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/bus/embedded"
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
	// probes are the per-peer results of the edge's tunnel probe (a new
	// map per heartbeat, never written after).
	probes map[string]peerProbe
}

// statusBook is the status of every agent the controller hears from, and
// the bus connections of the pinned ones. It owns its lock; callers get
// copies.
type statusBook struct {
	mu     sync.Mutex
	status map[string]*edgeStatus
	// conns are the open connections (server connection names) per edge.
	conns map[string]map[string]bool
}

func newStatusBook() *statusBook {
	return &statusBook{status: map[string]*edgeStatus{}, conns: map[string]map[string]bool{}}
}

// heartbeat records st at now, reporting whether the edge was online
// before and whether what the topology shows changes.
func (b *statusBook) heartbeat(st bus.Status, now time.Time) (wasOnline, material bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.status[st.Name]
	if !ok {
		s = &edgeStatus{}
		b.status[st.Name] = s
	}
	probes := probesOf(st)
	wasOnline, material = s.online, !s.online || materialChange(s.last, s.probes, st, probes)
	if !wasOnline {
		s.since = now
	}
	s.last, s.seen, s.online, s.probes = st, now, true, probes
	return wasOnline, material
}

// sweep marks the online edges last heard of more than bus.OfflineAfter
// before now as offline, and returns them.
func (b *statusBook) sweep(now time.Time) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var gone []string
	for name, s := range b.status {
		if s.online && now.Sub(s.seen) > bus.OfflineAfter {
			s.online, s.since = false, now
			gone = append(gone, name)
		}
	}
	return gone
}

// connected records connection conn of edge name as open.
func (b *statusBook) connected(name, conn string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns[name] == nil {
		b.conns[name] = map[string]bool{}
	}
	b.conns[name][conn] = true
}

// disconnected records connection conn of edge name as closed. When it was
// the edge's last known connection, the edge was online and decisive is
// true (a close that says something of the edge), the edge is offline from
// now and disconnected reports it.
func (b *statusBook) disconnected(name, conn string, decisive bool, now time.Time) (gone bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	conns := b.conns[name]
	delete(conns, conn)
	if len(conns) == 0 {
		delete(b.conns, name)
	}
	s := b.status[name]
	if s == nil || !s.online || len(conns) > 0 || !decisive {
		return false
	}
	s.online, s.since = false, now
	return true
}

// get returns a copy of an edge's status.
func (b *statusBook) get(name string) (edgeStatus, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.status[name]
	if !ok {
		return edgeStatus{}, false
	}
	return *s, true
}

// online returns those of names whose agents are online.
func (b *statusBook) online(names []string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, name := range names {
		if s, ok := b.status[name]; ok && s.online {
			out = append(out, name)
		}
	}
	return out
}

// pending returns the online agents that are not added, sorted.
func (b *statusBook) pending() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []string{}
	for name, s := range b.status {
		if s.online && s.last.State == bus.StateNotRegistered {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
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
	now := time.Now()
	wasOnline, material := c.status.heartbeat(st, now)
	c.fanout.applied(name, st.AppliedRevision, appliedAt(st, now))
	if material {
		c.changed()
	}
	if !wasOnline {
		c.log.Info("edge online", "edge", name, "state", st.State, "applied_revision", st.AppliedRevision)
		if c.reporter() {
			c.event(bus.EventEdgeOnline, name, st.AppliedRevision, st.State)
		}
	}
	if st.Site != nil {
		c.observeClaim(st.Site.Claim)
	}
	c.followWireGuard(st)
}

// sweepOffline marks edges whose heartbeats stopped as offline. Every
// controller of a cluster follows every heartbeat, so all of them list the
// same edges online; one of them (reporter) publishes the audit events.
func (c *Controller) sweepOffline(now time.Time) {
	gone := c.status.sweep(now)
	c.fanout.expire(now)
	c.wentOffline(gone, "no heartbeat for "+bus.OfflineAfter.String())
}

// onEdgeConn follows the edges' connections to the cluster's servers: an
// online edge whose last connection closes is offline at once — an agent
// killed or stopped — without waiting for its heartbeats to be missed. A
// connection closed by its server's shutdown says nothing of the edge (it
// reconnects to another controller); and an edge connected before this
// controller started, whose connection this controller never saw open,
// goes offline only when that connection closes and no other is known.
func (c *Controller) onEdgeConn(ev embedded.EdgeConn) {
	name := ev.Name
	if name == "" || c.view.now().pins[name] != ev.Key {
		return // not pinned (yet), or a name the key does not prove: its heartbeats decide
	}
	if ev.Up {
		c.status.connected(name, ev.Conn)
		return
	}
	if c.status.disconnected(name, ev.Conn, ev.Reason != embedded.ServerShutdown, time.Now()) {
		c.wentOffline([]string{name}, "connection closed: "+ev.Reason)
	}
}

// wentOffline logs and reports edges just marked offline, and why.
func (c *Controller) wentOffline(gone []string, why string) {
	if len(gone) == 0 {
		return
	}
	report := c.reporter()
	c.changed()
	for _, name := range gone {
		c.fanout.forget(name)
		c.log.Warn("edge offline", "edge", name, "why", why)
		if report {
			c.event(bus.EventEdgeOffline, name, 0, why)
		}
	}
}

// ListEdges is the edge list with each edge's live status.
func (c *Controller) ListEdges() []api.EdgeView {
	view := c.view.now()
	edges, pins := view.sorted(), view.pins
	roles := c.roles(view.edges)
	out := make([]api.EdgeView, 0, len(edges))
	for _, e := range edges {
		v := api.EdgeView{
			Name: e.Name, Comment: e.Comment, CIDR: e.CIDR.String(), HostAddr: e.HostAddr.String(),
			State: api.StateOffline, Revision: e.Revision, Key: pins[e.Name],
			Site: e.Site, Priority: e.Priority, Role: roles[e.Name], WireGuardKey: e.WireGuardKey,
		}
		if e.Mesh.IsValid() {
			v.MeshAddr = e.Mesh.String()
		}
		if len(e.ExtraCIDRs) > 0 {
			v.ExtraCIDRs = prefixStrings(e.ExtraCIDRs)
		}
		if e.VIP.IsValid() {
			v.VIP = e.VIP.String()
		}
		if e.VIP6.IsValid() {
			v.VIP6 = e.VIP6.String()
		}
		if s, ok := c.status.get(e.Name); ok {
			if s.online {
				v.Status, v.State = 1, api.StateOnline
			}
			seen := s.seen.UTC()
			v.LastSeen = &seen
			v.AppliedRevision, v.LastError, v.Conflicts, v.Probes = s.last.AppliedRevision, s.last.Error, s.last.Conflicts, s.last.Probes
			v.Encryption, v.Plaintext = s.last.Encryption, s.last.Plaintext
		}
		out = append(out, v)
	}
	return out
}

// materialChange reports whether a heartbeat changes what the topology
// shows, beyond round-trip times (those are picked up periodically).
func materialChange(old bus.Status, oldProbes map[string]peerProbe, st bus.Status, probes map[string]peerProbe) bool {
	if old.State != st.State || old.AppliedRevision != st.AppliedRevision || old.Error != st.Error || !slices.Equal(old.Conflicts, st.Conflicts) ||
		!maps.Equal(old.Links, st.Links) || old.WireGuardKey != st.WireGuardKey || old.Plaintext != st.Plaintext ||
		len(oldProbes) != len(probes) || (old.Site == nil) != (st.Site == nil) || old.Site != nil && old.Site.Role != st.Site.Role {
		return true
	}
	for peer, p := range probes {
		if q, ok := oldProbes[peer]; !ok || q.up != p.up {
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
// state of every link (configuration and data plane), the sites with their
// active gateways, and agents waiting to be added.
func (c *Controller) Topology() api.Topology {
	t, ends, revAt := c.topology()
	for i, a := range ends {
		for _, b := range ends[i+1:] {
			t.Links = append(t.Links, linkOf(a, b, t.Revision, revAt))
		}
	}
	return t
}

// topology is the topology without its links, the ends to compute them
// from (in the order of t.Edges) and when its revision was reached.
func (c *Controller) topology() (api.Topology, []linkEnd, time.Time) {
	view := c.view.now()
	edges, rev, sites := view.sorted(), view.rev, mesh.Sites(view.edges)
	roles := c.roles(view.edges)
	t := api.Topology{Revision: rev, Edges: []api.TopologyEdge{}, Links: []api.Link{}, Pending: c.status.pending(), Sites: []api.TopologySite{}}
	ends := make([]linkEnd, len(edges))
	for i, e := range edges {
		te := api.TopologyEdge{
			Name: e.Name, HostAddr: e.HostAddr.String(), CIDRs: prefixStrings(e.Prefixes()),
			VTEPMAC: mesh.VTEPMAC(e.Name).String(), NextHop: nextHop(e), State: api.StateOffline,
			Site: e.Site, Role: roles[e.Name],
		}
		ends[i].name, ends[i].edge = e.Name, e
		if s, ok := c.status.get(e.Name); ok {
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
	for _, s := range sites {
		t.Sites = append(t.Sites, c.topologySite(s))
	}
	sort.Slice(t.Sites, func(i, j int) bool { return t.Sites[i].Name < t.Sites[j].Name })
	return t, ends, view.at
}

// topologySite is one site with its active gateway and the claim behind it.
func (c *Controller) topologySite(s *mesh.Site) api.TopologySite {
	cl := c.claims.of(s.Name)
	ts := api.TopologySite{Name: s.Name, CIDRs: prefixStrings(s.Gateways[0].Prefixes()), Active: s.Active(cl).Name}
	for _, g := range s.Gateways {
		ts.Gateways = append(ts.Gateways, g.Name)
	}
	if vip := s.VIP(); vip.IsValid() {
		ts.VIP = vip.String()
	}
	if vip := s.VIP6(); vip.IsValid() {
		ts.VIP6 = vip.String()
	}
	if cl.Gateway == ts.Active && cl.Epoch > 0 {
		ts.Epoch, ts.Reason = cl.Epoch, cl.Reason
		if !cl.Time.IsZero() {
			since := cl.Time.UTC()
			ts.Since = &since
		}
	}
	return ts
}

// nextHop is the next hop the peers route e's networks through, as the
// topology shows it: the IPv4 one, or for an edge with IPv6 CIDRs only its
// link-local address on the tunnel.
func nextHop(e bus.Edge) string {
	if h := mesh.NextHop(e); h.IsValid() {
		return h.String()
	}
	return mesh.LinkLocal(e.Name).String()
}
