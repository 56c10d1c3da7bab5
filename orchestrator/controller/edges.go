package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

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
	return c.change(ctx, func(edges map[string]bus.Edge, rev uint64) (edgeWrite, error) {
		if err := edgeset.CheckConflicts(edges, e); err != nil {
			return edgeWrite{}, err
		}
		old, exists := edges[e.Name]
		if exists && sameEdge(old, e) && old.Mesh.IsValid() {
			return edgeWrite{done: &api.ChangeResult{Revision: rev, Message: fmt.Sprintf("edge %s unchanged", e.Name)}}, nil
		}
		var prev *bus.Edge
		if exists {
			prev = &old
		}
		put := e
		if err := keyState(&put, prev, c.heartbeatOf(e.Name), edges); err != nil {
			return edgeWrite{}, err
		}
		return edgeWrite{name: e.Name, put: &put, replaces: exists}, nil
	})
}

// DeleteEdge removes an edge and then the key pinned for it, so the next
// key that connects under that name is pinned afresh. (In that order: a
// store failure in between leaves a pin without an edge, which refuses
// keys as before and goes with the next delete — never an edge whose key
// anyone could pin.)
func (c *Controller) DeleteEdge(ctx context.Context, name string) (api.ChangeResult, error) {
	if err := bus.CheckName(name); err != nil {
		return api.ChangeResult{}, &edgeset.InvalidError{Msg: err.Error()}
	}
	deleted := true
	res, err := c.change(ctx, func(edges map[string]bus.Edge, rev uint64) (edgeWrite, error) {
		if _, ok := edges[name]; ok {
			return edgeWrite{name: name}, nil
		}
		deleted = false
		return edgeWrite{done: &api.ChangeResult{Revision: rev}}, nil
	})
	if err != nil {
		return res, err
	}
	unpinned, err := c.unpin(ctx, name)
	switch {
	case err != nil && deleted:
		return api.ChangeResult{}, fmt.Errorf("edge %s deleted, but its pinned key is still there (delete again to remove it): %w", name, err)
	case err != nil:
		return api.ChangeResult{}, err
	case !deleted && unpinned:
		res.Message = fmt.Sprintf("edge %s was not added; removed its pinned key", name)
	case !deleted:
		return api.ChangeResult{}, fmt.Errorf("edge %s: %w", name, api.ErrNotFound)
	}
	return res, nil
}

// edgeWrite is what a write plans after validating against the view: put
// an edge (replacing one or not), delete the edge name, or nothing (done).
type edgeWrite struct {
	name     string
	put      *bus.Edge
	replaces bool
	done     *api.ChangeResult
	// own, when set, is why the controller writes the edge itself (no API
	// client asked): logged, and no "updated" audit event (the writer
	// records its own).
	own string
}

// storeRetry is the pause before retrying a write the store could not
// take (a replicated store electing a leader); storeAttempt bounds one
// attempt, so a write whose store leader died on the way is retried on the
// next leader well within storeTimeout.
const (
	storeRetry   = 100 * time.Millisecond
	storeAttempt = time.Second
)

// change runs one edge write: plan validates against the view at some
// revision and says what to write; the write is conditional on that
// revision. When another write came first — through this controller or
// another one — the view catches up and plan runs again, so what is stored
// was validated against exactly the set it joins. A store that cannot take
// the write now (electing a leader) is retried within storeTimeout.
func (c *Controller) change(ctx context.Context, plan func(edges map[string]bus.Edge, rev uint64) (edgeWrite, error)) (api.ChangeResult, error) {
	if err := c.writable(); err != nil {
		return api.ChangeResult{}, err
	}
	c.write.Lock()
	defer c.write.Unlock()
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	for {
		view := c.view.now()
		rev := view.rev
		w, err := plan(view.edges, rev)
		if err != nil || w.done != nil {
			return deref(w.done), err
		}
		var at uint64
		actx, acancel := context.WithTimeout(ctx, storeAttempt)
		if w.put != nil {
			at, err = c.store.PutEdge(actx, *w.put, rev)
		} else {
			at, err = c.store.DeleteEdge(actx, w.name, rev)
		}
		acancel()
		switch {
		case err == nil:
			return c.committed(ctx, w, rev, at), nil
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			c.catchUp(ctx, rev)
		default:
			if werr := c.writable(); werr != nil {
				return api.ChangeResult{}, werr
			}
			select {
			case <-ctx.Done():
				return api.ChangeResult{}, fmt.Errorf("%w: %v", api.ErrUnavailable, err)
			case <-time.After(storeRetry):
			}
		}
	}
}

// catchUp waits (within ctx) for the view to move past rev after a write
// conditional on rev was refused. The feed usually brings the write that
// came first at once; when it does not within storeAttempt (its consumer lived on a controller that died and is being
// recreated, which waits for a new metadata leader), a fresh load of the
// store runs beside it, and whichever comes first moves the view. The
// caller's loop tries again either way.
func (c *Controller) catchUp(ctx context.Context, rev uint64) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		select {
		case <-time.After(storeAttempt):
		case <-ctx.Done():
			return
		}
		if st, err := c.store.Load(ctx); err == nil {
			c.view.replace(st, false)
		}
	}()
	c.view.awaitRevision(ctx, rev+1)
	cancel()
	<-loaded
}

// committed applies a stored write to the view, publishes the delta
// (linked to the revision the write was conditional on) and the audit
// event naming the API client of ctx, starts timing the delta's fan-out,
// and describes the change.
func (c *Controller) committed(ctx context.Context, w edgeWrite, prev, rev uint64) api.ChangeResult {
	c.fanout.begin(rev, time.Now(), c.onlineEdges())
	if w.put == nil {
		c.view.wrote(w.name, nil, rev)
		c.publish(bus.SubjectDelta, bus.Delta{Revision: rev, Prev: prev, Op: bus.OpDelete, Edge: bus.Edge{Name: w.name}})
		c.log.Info("edge deleted", "edge", w.name, "revision", rev)
		c.apiEvent(ctx, bus.EventEdgeDeleted, w.name, rev, "")
		return api.ChangeResult{Revision: rev, Message: fmt.Sprintf("edge %s deleted", w.name)}
	}
	e := *w.put
	e.Revision = rev
	c.view.wrote(e.Name, &e, rev)
	c.publish(bus.SubjectDelta, bus.Delta{Revision: rev, Prev: prev, Op: bus.OpPut, Edge: e})
	kind, verb := bus.EventEdgeAdded, "added"
	if w.replaces {
		kind, verb = bus.EventEdgeUpdated, "updated"
	}
	detail := describe(e)
	if w.own != "" {
		c.log.Info("edge "+verb, "edge", e.Name, "revision", rev, "detail", detail, "why", w.own)
		return api.ChangeResult{Revision: rev, Updated: w.replaces, Message: fmt.Sprintf("edge %s %s", e.Name, verb)}
	}
	c.log.Info("edge "+verb, "edge", e.Name, "revision", rev, "detail", detail)
	c.apiEvent(ctx, kind, e.Name, rev, detail)
	return api.ChangeResult{Revision: rev, Updated: w.replaces, Message: fmt.Sprintf("edge %s %s", e.Name, verb)}
}

func deref(r *api.ChangeResult) api.ChangeResult {
	if r == nil {
		return api.ChangeResult{}
	}
	return *r
}

func sameEdge(a, b bus.Edge) bool {
	return a.Name == b.Name && a.Comment == b.Comment && a.CIDR == b.CIDR && a.HostAddr == b.HostAddr &&
		slices.Equal(a.ExtraCIDRs, b.ExtraCIDRs) && a.Site == b.Site && a.Priority == b.Priority && a.VIP == b.VIP &&
		a.VIP6 == b.VIP6
}

func describe(e bus.Edge) string {
	d := fmt.Sprintf("hostaddr %s cidr %s", e.HostAddr, strings.Join(prefixStrings(e.Prefixes()), ","))
	if e.Site != "" {
		d += fmt.Sprintf(" site %s priority %d", e.Site, e.Priority)
	}
	if e.VIP.IsValid() {
		d += " vip " + e.VIP.String()
	}
	if e.VIP6.IsValid() {
		d += " vip6 " + e.VIP6.String()
	}
	return d
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// snapshotCatchUp bounds how long a controller that has not yet seen the
// revision a requester heard of waits before answering with what it has.
const snapshotCatchUp = time.Second

// onSnapshotRequest answers an edge's request for the whole set, or says
// that the revision the edge holds is current. A controller behind the
// revision the edge heard of (another controller's write on its way here)
// waits for it first, so the edge is not sent back to an older set.
func (c *Controller) onSnapshotRequest(m *nats.Msg) {
	var req bus.SnapshotRequest
	if len(m.Data) > 0 {
		if err := bus.Decode(m, &req); err != nil {
			c.log.Warn("ignored malformed snapshot request", "err", err)
			return
		}
	}
	if req.Want <= c.view.now().rev {
		c.answerSnapshot(m, req)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(c.ctx, snapshotCatchUp)
		defer cancel()
		c.view.awaitRevision(ctx, req.Want)
		c.answerSnapshot(m, req)
	}()
}

// answerSnapshot replies with what brings the requester to the current
// revision: "unchanged", the changes since the revision it holds (when it
// accepts them, this controller still has them all and they weigh less
// than the set), or the whole set, compressed when it accepts that. The
// whole set is encoded and compressed once per revision, whoever asks.
func (c *Controller) answerSnapshot(m *nats.Msg, req bus.SnapshotRequest) {
	view := c.view.now()
	kind, reply, err := replyFor(view, req)
	if err != nil {
		c.log.Error("encode snapshot", "err", err)
		return
	}
	c.metrics.snapshots.WithLabelValues(kind).Inc()
	c.metrics.snapshotBytes.WithLabelValues(kind).Add(float64(len(reply.Data)))
	if err := m.RespondMsg(reply); err != nil {
		c.log.Warn("snapshot reply failed", "err", err)
	}
}

// compressAbove is the size from which a reply other than the whole set
// (which always is when accepted) is compressed.
const compressAbove = 4 << 10

// replyFor is the reply to req at view, and its kind (metrics.go).
func replyFor(view *viewState, req bus.SnapshotRequest) (string, *nats.Msg, error) {
	reply := &nats.Msg{}
	zstd := req.Accepts(bus.AcceptZstd)
	if req.Have != 0 && req.Have == view.rev {
		b, err := json.Marshal(bus.Snapshot{Revision: view.rev, Unchanged: true})
		reply.Data = b
		return replyUnchanged, reply, err
	}
	if ds, ok := view.since(req.Have); ok && req.Have != 0 && req.Accepts(bus.AcceptDeltas) && len(ds) < len(view.edges) {
		b, err := json.Marshal(bus.Snapshot{Revision: view.rev, Since: req.Have, Deltas: ds})
		if err != nil {
			return "", nil, err
		}
		reply.Data = b
		if zstd && len(b) >= compressAbove {
			reply.Data, reply.Header = bus.Compress(b), zstdHeader()
		}
		return replyDeltas, reply, nil
	}
	if zstd {
		b, err := view.compressed()
		reply.Data, reply.Header = b, zstdHeader()
		return replyFullZstd, reply, err
	}
	b, err := view.encoded()
	reply.Data = b
	return replyFull, reply, err
}

func zstdHeader() nats.Header { return nats.Header{bus.EncodingHeader: []string{bus.AcceptZstd}} }

// EventCredentials are the audit subscriber's NATS credentials.
func (c *Controller) EventCredentials() api.Credentials {
	port := 0
	if a, ok := c.srv.Addr().(interface{ AddrPort() netip.AddrPort }); ok {
		port = int(a.AddrPort().Port())
	}
	return api.Credentials{User: bus.AuditUser, Password: bus.AuditPassword(c.secret), Port: port, Subject: bus.SubjectEventsAll,
		Fingerprint: bus.Fingerprint(c.certs.Current()), Replay: bus.SubjectAuditReplay, InboxPrefix: bus.AuditInboxPrefix}
}
