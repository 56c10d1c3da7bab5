package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/store"
)

// AddEdge validates an edge, checks it against the others, stores it and
// publishes the change. Re-adding an existing name replaces that edge.
func (c *Controller) AddEdge(ctx context.Context, s edgeset.Spec) (api.ChangeResult, error) {
	e, err := edgeset.Validate(s)
	if err != nil {
		return api.ChangeResult{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := edgeset.CheckConflicts(c.edges, e); err != nil {
		return api.ChangeResult{}, err
	}
	old, exists := c.edges[e.Name]
	if exists && sameEdge(old, e) {
		return api.ChangeResult{Revision: c.rev, Updated: false, Message: fmt.Sprintf("edge %s unchanged", e.Name)}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	rev, err := c.store.PutEdge(ctx, e)
	if err != nil {
		return api.ChangeResult{}, fmt.Errorf("store edge %s: %w", e.Name, err)
	}
	e.Revision = rev
	c.edges[e.Name] = e
	c.commit(bus.Delta{Revision: rev, Op: bus.OpPut, Edge: e})

	kind, verb := bus.EventEdgeAdded, "added"
	if exists {
		kind, verb = bus.EventEdgeUpdated, "updated"
	}
	detail := describe(e)
	c.log.Info("edge "+verb, "edge", e.Name, "revision", rev, "detail", detail)
	c.event(kind, e.Name, rev, detail)
	return api.ChangeResult{Revision: rev, Updated: exists, Message: fmt.Sprintf("edge %s %s", e.Name, verb)}, nil
}

// DeleteEdge removes an edge and the key pinned for it, so the next key
// that connects under that name is pinned afresh.
func (c *Controller) DeleteEdge(ctx context.Context, name string) (api.ChangeResult, error) {
	if err := bus.CheckName(name); err != nil {
		return api.ChangeResult{}, &edgeset.InvalidError{Msg: err.Error()}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	unpinned, err := c.unpin(ctx, name)
	if err != nil {
		return api.ChangeResult{}, err
	}
	if _, ok := c.edges[name]; !ok {
		if unpinned {
			return api.ChangeResult{Revision: c.rev, Message: fmt.Sprintf("edge %s was not added; removed its pinned key", name)}, nil
		}
		return api.ChangeResult{}, fmt.Errorf("edge %s: %w", name, api.ErrNotFound)
	}
	rev, err := c.store.DeleteEdge(ctx, name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.ChangeResult{}, fmt.Errorf("delete edge %s: %w", name, err)
	}
	delete(c.edges, name)
	c.commit(bus.Delta{Revision: rev, Op: bus.OpDelete, Edge: bus.Edge{Name: name}})
	c.log.Info("edge deleted", "edge", name, "revision", rev)
	c.event(bus.EventEdgeDeleted, name, rev, "")
	return api.ChangeResult{Revision: rev, Message: fmt.Sprintf("edge %s deleted", name)}, nil
}

// commit publishes a delta linked to the previous revision and moves the
// published revision forward. Callers hold c.mu, so deltas leave in order.
func (c *Controller) commit(d bus.Delta) {
	d.Prev = c.rev
	c.rev = d.Revision
	c.snapshot = nil
	c.publish(bus.SubjectDelta, d)
}

func sameEdge(a, b bus.Edge) bool {
	return a.Name == b.Name && a.Comment == b.Comment && a.CIDR == b.CIDR && a.HostAddr == b.HostAddr &&
		slices.Equal(a.ExtraCIDRs, b.ExtraCIDRs)
}

func describe(e bus.Edge) string {
	return fmt.Sprintf("hostaddr %s cidr %s", e.HostAddr, strings.Join(prefixStrings(e.Prefixes()), ","))
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// onSnapshotRequest answers an edge's request for the whole set, or says
// that the revision the edge holds is current.
func (c *Controller) onSnapshotRequest(m *nats.Msg) {
	var req bus.SnapshotRequest
	if len(m.Data) > 0 {
		if err := bus.Decode(m, &req); err != nil {
			c.log.Warn("ignored malformed snapshot request", "err", err)
			return
		}
	}
	c.mu.RLock()
	rev := c.rev
	c.mu.RUnlock()
	if req.Have != 0 && req.Have == rev {
		if err := bus.Publish(c.nc, m.Reply, bus.Snapshot{Revision: rev, Unchanged: true}); err != nil {
			c.log.Warn("snapshot reply failed", "err", err)
		}
		return
	}
	b, err := c.snapshotBytes()
	if err != nil {
		c.log.Error("encode snapshot", "err", err)
		return
	}
	if err := m.Respond(b); err != nil {
		c.log.Warn("snapshot reply failed", "err", err)
	}
}

// snapshotBytes returns the encoded current set, encoding it once per revision.
func (c *Controller) snapshotBytes() ([]byte, error) {
	c.mu.RLock()
	b := c.snapshot
	c.mu.RUnlock()
	if b != nil {
		return b, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snapshot == nil {
		s := bus.Snapshot{Revision: c.rev, Edges: sortedEdges(c.edges)}
		var err error
		if c.snapshot, err = json.Marshal(s); err != nil {
			return nil, err
		}
	}
	return c.snapshot, nil
}

func sortedEdges(m map[string]bus.Edge) []bus.Edge {
	out := make([]bus.Edge, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Pin implements bus.Pinner: the first key an edge name connects with is
// stored; any other key is refused until the edge is deleted.
func (c *Controller) Pin(name, key string) error {
	if !c.ready.Load() {
		return errors.New("controller is starting")
	}
	c.pinMu.Lock()
	defer c.pinMu.Unlock()
	if pinned, ok := c.pins[name]; ok {
		if pinned == key {
			return nil
		}
		c.event(bus.EventKeyRefused, name, 0, "presented key "+key)
		return fmt.Errorf("edge %s is pinned to key %s, not %s: delete and re-add the edge to accept a new key", name, pinned, key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := c.store.PutPin(ctx, name, key); err != nil {
		return fmt.Errorf("store key pin: %w", err)
	}
	c.pins[name] = key
	c.log.Info("pinned edge key", "edge", name, "key", key)
	c.event(bus.EventKeyPinned, name, 0, key)
	return nil
}

// unpin removes an edge's pinned key, reporting whether there was one.
func (c *Controller) unpin(ctx context.Context, name string) (bool, error) {
	c.pinMu.Lock()
	defer c.pinMu.Unlock()
	if _, ok := c.pins[name]; !ok {
		return false, nil
	}
	if err := c.store.DeletePin(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("delete key pin of %s: %w", name, err)
	}
	delete(c.pins, name)
	return true, nil
}

// EventCredentials are the audit subscriber's NATS credentials.
func (c *Controller) EventCredentials() api.Credentials {
	port := 0
	if a, ok := c.srv.Addr().(interface{ AddrPort() netip.AddrPort }); ok {
		port = int(a.AddrPort().Port())
	}
	return api.Credentials{User: bus.AuditUser, Password: bus.AuditPassword(c.secret), Port: port, Subject: bus.SubjectEventsAll,
		Fingerprint: bus.Fingerprint(c.certs.Current())}
}
