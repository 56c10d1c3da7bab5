package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/api"
)

// Every edge gets a mesh address when it is added (kept across re-adds),
// and the WireGuard public key its heartbeats name is pinned in its record
// like its identity key: the first one seen, any other refused until the
// edge is deleted and added again or rotates from the pinned key. Both go out with the edge set. The
// writes are ordinary edge writes (c.change), so two controllers hearing
// the same heartbeat pin one key.

// errMeshFull: every address of netcfg.MeshPrefix is taken.
var errMeshFull = errors.New("no mesh address left in " + netcfg.MeshPrefix.String())

// allocateMesh returns the lowest address of netcfg.MeshPrefix no edge of
// edges holds (the network and broadcast addresses excluded).
func allocateMesh(edges map[string]bus.Edge) (netip.Addr, error) {
	used := make(map[netip.Addr]bool, len(edges))
	for _, e := range edges {
		used[e.Mesh] = true
	}
	for a := netcfg.MeshPrefix.Addr().Next(); netcfg.MeshPrefix.Contains(a.Next()); a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, errMeshFull
}

// keyState carries an edge's mesh address and WireGuard state into e (a
// new value for it, validated), from old when the edge exists, else from
// its agent's last heartbeat st (when it has one); an edge without a mesh
// address gets one.
func keyState(e *bus.Edge, old *bus.Edge, st *bus.Status, edges map[string]bus.Edge) error {
	switch {
	case old != nil:
		e.Mesh, e.WireGuardKey, e.Plaintext = old.Mesh, old.WireGuardKey, old.Plaintext
	case st != nil:
		if next, _, _ := keyUpdate(*e, *st); next != nil {
			e.WireGuardKey, e.Plaintext = next.WireGuardKey, next.Plaintext
		}
	}
	if !e.Mesh.IsValid() {
		a, err := allocateMesh(edges)
		if err != nil {
			return err
		}
		e.Mesh = a
	}
	return nil
}

// keyUpdate is what a heartbeat st says of edge e's WireGuard state: the
// edge with its new state when that must be written (nil: nothing to
// write) and the audit event the write is (bus.EventKeyPinned for a first
// key, bus.EventKeyRotated for a rotation from the pinned key, "" for
// none), or why the key st names is refused.
//
// A rotation is trusted because of where the heartbeat comes from: the
// bus server lets an edge's identity (its pinned nkey) publish only on
// bus.StatusSubject(its name) (embedded.EdgePermissions), and a body
// naming another edge than its subject is dropped (handleStatus). So
// only the edge itself can ask to move its pin, and only from the key
// pinned now: a heartbeat rotating from any other key is refused.
func keyUpdate(e bus.Edge, st bus.Status) (next *bus.Edge, event string, refused string) {
	n := e
	switch {
	case st.WireGuardKey != "":
		if _, err := wgtypes.ParseKey(st.WireGuardKey); err != nil {
			return nil, "", "malformed WireGuard key"
		}
		switch e.WireGuardKey {
		case "":
			n.WireGuardKey, n.Plaintext, event = st.WireGuardKey, false, bus.EventKeyPinned
		case st.WireGuardKey:
			n.Plaintext = false
		case st.RotatingFrom:
			n.WireGuardKey, n.Plaintext, event = st.WireGuardKey, false, bus.EventKeyRotated
		default:
			why := "delete and re-add the edge, or rotate its key with cframe-edge rotate-key, to accept a new key"
			if st.RotatingFrom != "" {
				why = "it rotates from " + st.RotatingFrom + ", which is not the pinned key"
			}
			return nil, "", fmt.Sprintf("edge %s is pinned to WireGuard key %s, not %s: %s", e.Name, e.WireGuardKey, st.WireGuardKey, why)
		}
	case st.Plaintext != "" && e.WireGuardKey != "":
		// Without a pinned key the edge counts as plaintext anyway.
		n.Plaintext = true
	}
	if !n.Mesh.IsValid() || n.WireGuardKey != e.WireGuardKey || n.Plaintext != e.Plaintext {
		return &n, event, ""
	}
	return nil, "", ""
}

// keyBook is the WireGuard pins this controller is writing and the
// refusals it has logged (once per edge and key). It owns its lock.
type keyBook struct {
	mu      sync.Mutex
	writing map[string]bool
	refused map[string]string
}

func newKeyBook() *keyBook { return &keyBook{writing: map[string]bool{}, refused: map[string]string{}} }

// start reports whether a write for name may start (none is under way).
func (b *keyBook) start(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.writing[name] {
		return false
	}
	b.writing[name] = true
	return true
}

func (b *keyBook) done(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.writing, name)
}

// refuse reports whether the refusal of key for name is new.
func (b *keyBook) refuse(name, key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.refused[name] == key {
		return false
	}
	b.refused[name] = key
	return true
}

// followWireGuard pins the WireGuard key of a heartbeat, or records that
// the edge runs plaintext, when its edge record says otherwise; the write
// runs in the background (the heartbeat's handler must not wait on the
// store) and at most one per edge at a time.
func (c *Controller) followWireGuard(st bus.Status) {
	e, ok := c.view.now().edges[st.Name]
	if !ok {
		return
	}
	next, _, refused := keyUpdate(e, st)
	if refused != "" {
		if c.keys.refuse(st.Name, st.WireGuardKey) {
			c.log.Warn("refused WireGuard key", "edge", st.Name, "reason", refused)
			if c.reporter() {
				c.event(bus.EventKeyRefused, st.Name, 0, "presented WireGuard key "+st.WireGuardKey)
			}
		}
		return
	}
	if next == nil || c.writable() != nil || !c.keys.start(st.Name) {
		return
	}
	go func() {
		defer c.keys.done(st.Name)
		event := ""
		_, err := c.change(c.ctx, func(edges map[string]bus.Edge, rev uint64) (edgeWrite, error) {
			e, ok := edges[st.Name]
			if !ok {
				return edgeWrite{done: &api.ChangeResult{Revision: rev}}, nil
			}
			next, p, _ := keyUpdate(e, st)
			if next == nil {
				return edgeWrite{done: &api.ChangeResult{Revision: rev}}, nil
			}
			if !next.Mesh.IsValid() {
				a, err := allocateMesh(edges)
				if err != nil {
					return edgeWrite{}, err
				}
				next.Mesh = a
			}
			event = p
			return edgeWrite{name: st.Name, put: next, replaces: true, own: "WireGuard state from its heartbeat"}, nil
		})
		switch {
		case err != nil:
			c.log.Warn("WireGuard state of edge not stored; next heartbeat retries", "edge", st.Name, "err", err)
		case event == bus.EventKeyPinned:
			c.log.Info("pinned WireGuard key", "edge", st.Name, "key", st.WireGuardKey)
			c.event(event, st.Name, 0, "WireGuard key "+st.WireGuardKey)
		case event == bus.EventKeyRotated:
			c.log.Info("rotated WireGuard key: the pin moved", "edge", st.Name, "from", st.RotatingFrom, "to", st.WireGuardKey)
			c.event(event, st.Name, 0, "WireGuard key "+st.RotatingFrom+" rotated to "+st.WireGuardKey)
		}
	}()
}

// heartbeatOf returns the last heartbeat of edge name, if any.
func (c *Controller) heartbeatOf(name string) *bus.Status {
	if s, ok := c.status.get(name); ok {
		return &s.last
	}
	return nil
}
