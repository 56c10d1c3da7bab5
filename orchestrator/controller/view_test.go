package controller

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
)

// TestStoreView: a state once handed out never changes, however the view
// moves on; a feed entry older than the pin write already seen is ignored;
// an own write the feed brings again is applied once; waiters wake when
// the revision they wait for arrives.
func TestStoreView(t *testing.T) {
	v := newStoreView()
	v.replace(store.State{Revision: 3, Latest: 4, Edges: map[string]bus.Edge{"a": {Name: "a", Revision: 3}}, Pins: map[string]string{"a": "ka"}}, true)
	held := v.now()
	heldSnap, err := held.encoded()
	if err != nil {
		t.Fatal(err)
	}

	woke := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		woke <- v.awaitRevision(ctx, 5)
	}()

	v.wrote("b", &bus.Edge{Name: "b", Revision: 5}, 5)
	v.apply(store.Change{Revision: 5, Kind: store.KindEdge, Name: "b", Edge: bus.Edge{Name: "b", Revision: 5}}) // own write, again
	v.apply(store.Change{Revision: 6, Kind: store.KindPin, Name: "b", Key: "kb"})
	v.apply(store.Change{Revision: 2, Kind: store.KindPin, Name: "a", Key: "old"}) // older than the load
	v.pinned("a", "", 7)

	if !<-woke {
		t.Fatal("a waiter for revision 5 was not woken")
	}
	if len(held.edges) != 1 || held.pins["a"] != "ka" || len(held.pins) != 1 || held.rev != 3 {
		t.Errorf("a held state changed: rev %d edges %v pins %v", held.rev, held.edges, held.pins)
	}
	if b, _ := held.encoded(); string(b) != string(heldSnap) {
		t.Errorf("a held state's snapshot changed")
	}
	now := v.now()
	if now.rev != 5 || len(now.edges) != 2 || now.pins["b"] != "kb" || len(now.pins) != 1 {
		t.Errorf("now: rev %d edges %v pins %v; want rev 5, a and b, b pinned to kb only", now.rev, now.edges, now.pins)
	}
	var snap bus.Snapshot
	b, err := now.encoded()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &snap); err != nil || snap.Revision != 5 || len(snap.Edges) != 2 || snap.Edges[0].Name != "a" {
		t.Errorf("snapshot %s (%v): want revision 5 with a, b in order", b, err)
	}

	// A reload from a replica behind what the view saw is ignored.
	v.replace(store.State{Revision: 3, Latest: 4, Edges: map[string]bus.Edge{}, Pins: map[string]string{}}, false)
	if v.now().rev != 5 {
		t.Errorf("a stale reload moved the view back to revision %d", v.now().rev)
	}
}

// loadStore is a store whose Load returns a fixed state, or with hang
// says it started and blocks until its context ends. Each call's outcome
// goes to loads. Nothing else is used by catchUp.
type loadStore struct {
	store.Store
	st      store.State
	hang    bool
	started chan struct{}
	loads   chan error
}

func (s *loadStore) Load(ctx context.Context) (store.State, error) {
	if s.hang {
		close(s.started)
		<-ctx.Done()
		s.loads <- ctx.Err()
		return store.State{}, ctx.Err()
	}
	s.loads <- nil
	return s.st, nil
}

// TestCatchUp: after a refused write, the view catches up from the feed
// when the feed brings the write that came first, without loading the
// store; when the feed is silent (its consumer is being recreated after a
// controller died), a load of the store moves the view instead; and a load
// that hangs (it too needs a consumer) is abandoned as soon as the feed is
// back, rather than holding the write until its own deadline.
func TestCatchUp(t *testing.T) {
	at6 := store.State{Revision: 6, Latest: 6, Edges: map[string]bus.Edge{"a": {Name: "a", Revision: 6}}, Pins: map[string]string{}}
	write6 := store.Change{Revision: 6, Kind: store.KindEdge, Name: "a", Edge: bus.Edge{Name: "a"}}
	newCtl := func(hang bool) (*Controller, *loadStore) {
		s := &loadStore{st: at6, hang: hang, started: make(chan struct{}), loads: make(chan error, 10)}
		c := &Controller{view: newStoreView(), store: s}
		c.view.replace(store.State{Revision: 5, Latest: 5, Edges: map[string]bus.Edge{}, Pins: map[string]string{}}, true)
		return c, s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	atRev6 := func(t *testing.T, c *Controller) {
		t.Helper()
		if rev := c.view.now().rev; rev != 6 {
			t.Fatalf("view at %d after catching up, want 6", rev)
		}
	}

	t.Run("the feed brings it", func(t *testing.T) {
		c, s := newCtl(false)
		go c.view.apply(write6)
		c.catchUp(ctx, 5)
		atRev6(t, c)
		if len(s.loads) != 0 {
			t.Errorf("the store was loaded %d time(s) though the feed brought the write", len(s.loads))
		}
	})
	t.Run("the feed is silent", func(t *testing.T) {
		c, s := newCtl(false)
		c.catchUp(ctx, 5)
		atRev6(t, c)
		if len(s.loads) != 1 {
			t.Errorf("the store was loaded %d time(s), want 1", len(s.loads))
		}
	})
	t.Run("the load hangs, the feed comes back", func(t *testing.T) {
		c, s := newCtl(true)
		done := make(chan struct{})
		go func() { c.catchUp(ctx, 5); close(done) }()
		select {
		case <-s.started:
		case <-ctx.Done():
			t.Fatal("no load started")
		}
		c.view.apply(write6)
		<-done
		atRev6(t, c)
		if err := <-s.loads; !errors.Is(err, context.Canceled) {
			t.Errorf("the hanging load ended with %v, want it abandoned (context canceled) when the feed came back", err)
		}
	})
}
