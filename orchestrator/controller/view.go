package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
)

// storeView is the store as this controller last saw it. It follows the
// store's change feed, so every controller of a cluster sees the writes
// made through the others, and takes this controller's own writes at once.
//
// Readers take the current state (now) without a lock: a viewState is never
// changed once published, each change builds the next one. Changes are
// serialised by mu, which guards only what the changes themselves need.
type storeView struct {
	cur atomic.Pointer[viewState]

	mu sync.Mutex
	// pinRev is the store revision of the last write seen for each pin
	// name, so a late feed entry never undoes a newer write.
	pinRev map[string]uint64
	// latest is the store revision of the last state loaded or change
	// applied from the store (own writes excluded: a pin written by
	// another controller just before may still be on its way).
	latest uint64
}

// viewState is the view at one moment. Nothing in it changes after it is
// published; hold it as long as needed.
type viewState struct {
	edges map[string]bus.Edge
	pins  map[string]string
	rev   uint64 // the edge set's revision
	// at is when rev was reached; moved is closed when a later revision is.
	at    time.Time
	moved chan struct{}
	// encoded is the Snapshot at rev, encoded once on first use, and
	// compressed the same, zstd-compressed (bus.AcceptZstd).
	encoded    func() ([]byte, error)
	compressed func() ([]byte, error)
	// recent are the deltas that led to rev, oldest first, the last one
	// reaching rev (at most 2*deltaRing of them). Its elements are never
	// written once a state holds them: the next change appends past the
	// end this state sees, or starts a new array.
	recent []bus.Delta
}

// deltaRing is how many of the latest changes a controller keeps to send
// an edge the changes since the revision it holds instead of the whole set
// (it keeps between deltaRing and twice that many).
const deltaRing = 1024

// newStoreView is an empty view at revision 0, until the store is loaded.
func newStoreView() *storeView {
	v := &storeView{pinRev: map[string]uint64{}}
	v.cur.Store(newState(map[string]bus.Edge{}, map[string]string{}, 0, nil))
	return v
}

// newState is a state at a new revision, closing prev's moved channel when
// there is one.
func newState(edges map[string]bus.Edge, pins map[string]string, rev uint64, prev *viewState) *viewState {
	s := &viewState{edges: edges, pins: pins, rev: rev, at: time.Now(), moved: make(chan struct{})}
	s.encoded = sync.OnceValues(func() ([]byte, error) {
		return json.Marshal(bus.Snapshot{Revision: s.rev, Edges: s.sorted()})
	})
	s.compressed = sync.OnceValues(func() ([]byte, error) {
		b, err := s.encoded()
		if err != nil {
			return nil, err
		}
		return bus.Compress(b), nil
	})
	if prev != nil {
		close(prev.moved)
	}
	return s
}

// withPins is s with other pins, at the same revision.
func (s *viewState) withPins(pins map[string]string) *viewState {
	n := *s
	n.pins = pins
	return &n
}

// since is the changes from revision have to rev, oldest first, when the
// state still has them all; they are shared, not to be modified.
func (s *viewState) since(have uint64) ([]bus.Delta, bool) {
	// The first change past have, which must start from it.
	i, _ := slices.BinarySearchFunc(s.recent, have+1, func(d bus.Delta, rev uint64) int { return cmp.Compare(d.Revision, rev) })
	if i >= len(s.recent) || s.recent[i].Prev != have {
		return nil, false
	}
	return s.recent[i:], true
}

// sorted is the edge set ordered by name.
func (s *viewState) sorted() []bus.Edge {
	out := make([]bus.Edge, 0, len(s.edges))
	for _, e := range s.edges {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// now is the current state.
func (v *storeView) now() *viewState { return v.cur.Load() }

// replace installs a loaded state, unless the view has already seen a
// later one (a replica a moment behind): then the feed started from the
// state brings only what the view lacks. first says whether this is the
// first load.
func (v *storeView) replace(st store.State, first bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	cur := v.now()
	if !first && st.Latest < v.latest {
		return
	}
	v.latest = st.Latest
	v.pinRev = map[string]uint64{}
	for name := range st.Pins {
		v.pinRev[name] = st.Latest
	}
	if first || st.Revision != cur.rev {
		// No deltas lead there: edges behind it get the whole set.
		v.cur.Store(newState(st.Edges, st.Pins, st.Revision, cur))
		return
	}
	n := *cur
	n.edges, n.pins = st.Edges, st.Pins
	v.cur.Store(&n)
}

// apply takes one change from the store's feed.
func (v *storeView) apply(ch store.Change) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.latest = max(v.latest, ch.Revision)
	switch ch.Kind {
	case store.KindEdge:
		if ch.Revision <= v.now().rev {
			return // this controller's own write, applied already
		}
		var e *bus.Edge
		if !ch.Deleted {
			e = &ch.Edge
		}
		v.setEdgeLocked(ch.Name, e, ch.Revision)
	case store.KindPin:
		v.pinLocked(ch.Name, ch.Key, ch.Revision)
	}
}

// wrote applies this controller's own edge write at rev (to one of name,
// e nil for a delete), unless the feed has brought it already.
func (v *storeView) wrote(name string, e *bus.Edge, rev uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if rev > v.now().rev {
		v.setEdgeLocked(name, e, rev)
	}
}

func (v *storeView) setEdgeLocked(name string, e *bus.Edge, rev uint64) {
	cur := v.now()
	edges := maps.Clone(cur.edges)
	d := bus.Delta{Revision: rev, Prev: cur.rev, Op: bus.OpDelete, Edge: bus.Edge{Name: name}}
	if e == nil {
		delete(edges, name)
	} else {
		edges[name] = *e
		d.Op, d.Edge = bus.OpPut, *e
	}
	next := newState(edges, cur.pins, rev, cur)
	next.recent = cur.recent
	if len(next.recent) >= 2*deltaRing {
		next.recent = slices.Clone(next.recent[len(next.recent)-deltaRing+1:])
	}
	next.recent = append(next.recent, d)
	v.cur.Store(next)
}

// pinned records the key pinned for name at store revision rev ("" for a
// deleted pin), unless a later write of that pin was seen.
func (v *storeView) pinned(name, key string, rev uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pinLocked(name, key, rev)
}

func (v *storeView) pinLocked(name, key string, rev uint64) {
	if rev <= v.pinRev[name] {
		return
	}
	v.pinRev[name] = rev
	cur := v.now()
	pins := maps.Clone(cur.pins)
	if key == "" {
		delete(pins, name)
	} else {
		pins[name] = key
	}
	v.cur.Store(cur.withPins(pins))
}

// awaitRevision waits until the view holds revision rev or a later one,
// and reports whether it does.
func (v *storeView) awaitRevision(ctx context.Context, rev uint64) bool {
	for {
		s := v.now()
		if s.rev >= rev {
			return true
		}
		select {
		case <-s.moved:
		case <-ctx.Done():
			return false
		}
	}
}

// feedRetry is the pause before following the store again after its change
// feed failed.
const feedRetry = time.Second

// loadAndFollow loads the whole store into the view and follows its change
// feed from there, in the background until c.ctx ends.
func (c *Controller) loadAndFollow(ctx context.Context) error {
	feed, err := c.reload(ctx, true)
	if err != nil {
		return err
	}
	go c.follow(feed)
	return nil
}

// reload loads the store into the view and starts a feed of what follows.
func (c *Controller) reload(ctx context.Context, first bool) (<-chan store.Change, error) {
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	st, err := c.store.Load(lctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("load store: %w", err)
	}
	feed, err := c.store.Watch(c.ctx, st.Latest)
	if err != nil {
		return nil, fmt.Errorf("follow store: %w", err)
	}
	c.view.replace(st, first)
	return feed, nil
}

// follow applies the feed's changes; when the feed ends before the
// controller does, it loads the store again and follows the new feed.
func (c *Controller) follow(feed <-chan store.Change) {
	for {
		for ch := range feed {
			c.view.apply(ch)
		}
		for {
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(feedRetry):
			}
			var err error
			if feed, err = c.reload(c.ctx, false); err == nil {
				break
			}
			c.log.Warn("store change feed lost; retrying", "err", err)
		}
	}
}
