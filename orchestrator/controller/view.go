package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
)

// view is the store as this controller last saw it. It follows the store's
// change feed, so every controller of a cluster sees the writes made
// through the others, and takes this controller's own writes at once.
type view struct {
	edges map[string]bus.Edge
	rev   uint64 // the edge set's revision
	pins  map[string]string
	// pinRev is the store revision of the last write seen for each pin
	// name, so a late feed entry never undoes a newer write.
	pinRev map[string]uint64
	// latest is the store revision of the last state loaded or change
	// applied from the store (own writes excluded: a pin written by
	// another controller just before may still be on its way).
	latest uint64
	// moved is closed, and replaced, whenever rev moves; revAt is when.
	moved chan struct{}
	revAt time.Time
}

// feedRetry is the pause before following the store again after its change
// feed failed.
const feedRetry = time.Second

// loadAndFollow loads the whole store into the view and follows its change feed
// from there, in the background until c.ctx ends.
func (c *Controller) loadAndFollow(ctx context.Context) error {
	feed, err := c.reload(ctx)
	if err != nil {
		return err
	}
	go c.follow(feed)
	return nil
}

// reload loads the store into the view and starts a feed of what follows.
func (c *Controller) reload(ctx context.Context) (<-chan store.Change, error) {
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
	c.replace(st)
	return feed, nil
}

// follow applies the feed's changes; when the feed ends before the
// controller does, it loads the store again and follows the new feed.
func (c *Controller) follow(feed <-chan store.Change) {
	for {
		for ch := range feed {
			c.apply(ch)
		}
		for {
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(feedRetry):
			}
			var err error
			if feed, err = c.reload(c.ctx); err == nil {
				break
			}
			c.log.Warn("store change feed lost; retrying", "err", err)
		}
	}
}

// replace installs a loaded state, unless the view has already seen a
// later one (a replica a moment behind): then the feed started from the
// state brings only what the view lacks.
func (c *Controller) replace(st store.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := &c.view
	if v.edges != nil && st.Latest < v.latest {
		return
	}
	if v.edges == nil || st.Revision != v.rev {
		c.snapshot = nil
		defer c.movedLocked()
	}
	v.edges, v.rev, v.pins, v.latest = st.Edges, st.Revision, st.Pins, st.Latest
	v.pinRev = map[string]uint64{}
	for name := range st.Pins {
		v.pinRev[name] = st.Latest
	}
}

// apply takes one change from the store's feed.
func (c *Controller) apply(ch store.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := &c.view
	v.latest = max(v.latest, ch.Revision)
	switch ch.Kind {
	case store.KindEdge:
		if ch.Revision <= v.rev {
			return // this controller's own write, applied already
		}
		if ch.Deleted {
			delete(v.edges, ch.Name)
		} else {
			v.edges[ch.Name] = ch.Edge
		}
		v.rev = ch.Revision
		c.snapshot = nil
		c.movedLocked()
	case store.KindPin:
		c.pinLocked(ch.Name, ch.Key, ch.Revision)
	}
}

// wrote applies this controller's own edge write at rev (to one of name,
// e nil for a delete), unless the feed has brought it already.
func (c *Controller) wrote(name string, e *bus.Edge, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := &c.view
	if rev <= v.rev {
		return
	}
	if e == nil {
		delete(v.edges, name)
	} else {
		v.edges[name] = *e
	}
	v.rev = rev
	c.snapshot = nil
	c.movedLocked()
}

// pinLocked records the key pinned for name at store revision rev ("" for
// a deleted pin), unless a later write of that pin was seen. Callers hold mu.
func (c *Controller) pinLocked(name, key string, rev uint64) {
	v := &c.view
	if rev <= v.pinRev[name] {
		return
	}
	v.pinRev[name] = rev
	if key == "" {
		delete(v.pins, name)
	} else {
		v.pins[name] = key
	}
}

func (c *Controller) movedLocked() {
	if c.view.moved != nil {
		close(c.view.moved)
	}
	c.view.moved, c.view.revAt = make(chan struct{}), time.Now()
}

// awaitRevision waits until the view holds revision rev or a later one,
// and reports whether it does.
func (c *Controller) awaitRevision(ctx context.Context, rev uint64) bool {
	for {
		c.mu.RLock()
		at, moved := c.view.rev, c.view.moved
		c.mu.RUnlock()
		if at >= rev {
			return true
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return false
		}
	}
}
