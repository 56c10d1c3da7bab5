package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
)

// testConformance checks the Store contract; open returns a new, empty store.
func testConformance(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("RoundTrip", func(t *testing.T) {
		s := open(t)
		if st := load(t, s); len(st.Edges) != 0 || len(st.Pins) != 0 {
			t.Fatalf("new store not empty: %+v", st)
		}
		e := edge("sz-1", "172.18.0.0/16")
		e.Comment = "shenzhen"
		e.ExtraCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
		e.Revision = 999 // ignored on write
		rev := putEdge(t, s, e, 0)
		e.Revision = rev
		if st := load(t, s); st.Latest != rev {
			t.Fatalf("Load latest = %d, want the only write's %d", st.Latest, rev)
		}
		if st := load(t, s); !reflect.DeepEqual(st.Edges, map[string]bus.Edge{"sz-1": e}) {
			t.Fatalf("Load edges = %+v, want %+v", st.Edges, e)
		}
	})

	t.Run("Update", func(t *testing.T) {
		s := open(t)
		rev1 := putEdge(t, s, edge("sz-1", "172.18.0.0/16"), 0)
		e := edge("sz-1", "172.19.0.0/16")
		e.Comment = "moved"
		e.Revision = putEdge(t, s, e, rev1)
		if st := load(t, s); !reflect.DeepEqual(st.Edges, map[string]bus.Edge{"sz-1": e}) {
			t.Fatalf("Load edges = %+v, want only %+v", st.Edges, e)
		}
	})

	t.Run("Revisions", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		// Edge writes move the edge set's revision; pin writes do not.
		steps := []struct {
			name string
			edge func(at uint64) (uint64, error)
			pin  func() error
		}{
			{name: "put edge a", edge: func(at uint64) (uint64, error) { return s.PutEdge(ctx, edge("a", "10.1.0.0/16"), at) }},
			{name: "put edge b", edge: func(at uint64) (uint64, error) { return s.PutEdge(ctx, edge("b", "10.2.0.0/16"), at) }},
			{name: "put pin a", pin: func() error { return pinKey(ctx, s, "a", "key-a") }},
			{name: "delete edge a", edge: func(at uint64) (uint64, error) { return s.DeleteEdge(ctx, "a", at) }},
			{name: "put pin b", pin: func() error { return pinKey(ctx, s, "b", "key-b") }},
			{name: "delete pin a", pin: func() error { _, err := s.DeletePin(ctx, "a"); return err }},
			{name: "put edge b again", edge: func(at uint64) (uint64, error) { return s.PutEdge(ctx, edge("b", "10.3.0.0/16"), at) }},
		}
		var last uint64
		for _, step := range steps {
			if step.pin != nil {
				if err := step.pin(); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				if st := load(t, s); st.Revision != last {
					t.Fatalf("%s moved the edge set's revision from %d to %d", step.name, last, st.Revision)
				}
				continue
			}
			rev, err := step.edge(last)
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if rev <= last {
				t.Fatalf("%s: revision %d, not above the previous %d", step.name, rev, last)
			}
			last = rev
			if st := load(t, s); st.Revision != rev {
				t.Fatalf("after %s: Load revision %d, want the write's %d", step.name, st.Revision, rev)
			}
		}
		st := load(t, s)
		want := edge("b", "10.3.0.0/16")
		want.Revision = last
		if !reflect.DeepEqual(st.Edges, map[string]bus.Edge{"b": want}) ||
			!reflect.DeepEqual(st.Pins, map[string]string{"b": "key-b"}) {
			t.Fatalf("final state %+v", st)
		}
	})

	t.Run("DeleteMissing", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		before := putEdge(t, s, edge("a", "10.1.0.0/16"), 0)
		if _, err := s.DeleteEdge(ctx, "nope", before); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeleteEdge(missing) = %v, want ErrNotFound", err)
		}
		if _, err := s.DeletePin(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeletePin(missing) = %v, want ErrNotFound", err)
		}
		// An edge named "a" exists, its pin does not.
		if _, err := s.DeletePin(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeletePin(a) with only an edge a = %v, want ErrNotFound", err)
		}
		if after := load(t, s).Revision; after != before {
			t.Errorf("failed deletes moved the revision from %d to %d", before, after)
		}
		rev, err := s.DeleteEdge(ctx, "a", before)
		if err != nil {
			t.Fatalf("DeleteEdge(a): %v", err)
		}
		if _, err := s.DeleteEdge(ctx, "a", rev); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second DeleteEdge(a) = %v, want ErrNotFound", err)
		}
		if st := load(t, s); len(st.Edges) != 0 {
			t.Errorf("deleted edge still loads: %+v", st.Edges)
		}
	})

	t.Run("Pins", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		p, err := s.PinKey(ctx, "sz-1", "key-1")
		if err != nil || p != (store.Pin{Key: "key-1", Created: true, Revision: p.Revision}) || p.Revision == 0 {
			t.Fatalf("first PinKey = %+v, %v; want key-1 created", p, err)
		}
		// A second key does not replace the first.
		again, err := s.PinKey(ctx, "sz-1", "key-2")
		if err != nil || again != (store.Pin{Key: "key-1", Revision: p.Revision}) {
			t.Fatalf("PinKey with another key = %+v, %v; want key-1 from revision %d, not created", again, err, p.Revision)
		}
		if st := load(t, s); !reflect.DeepEqual(st.Pins, map[string]string{"sz-1": "key-1"}) || len(st.Edges) != 0 || st.Revision != 0 {
			t.Fatalf("after pinning: %+v", st)
		}
		if _, err := s.DeletePin(ctx, "sz-1"); err != nil {
			t.Fatal(err)
		}
		if st := load(t, s); len(st.Pins) != 0 {
			t.Fatalf("deleted pin still loads: %+v", st.Pins)
		}
		if p, err := s.PinKey(ctx, "sz-1", "key-2"); err != nil || !p.Created || p.Key != "key-2" {
			t.Fatalf("PinKey after delete = %+v, %v; want key-2 created", p, err)
		}
	})

	t.Run("Conditional", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		rev := putEdge(t, s, edge("a", "10.1.0.0/16"), 0)
		// A pin write does not move the edge set: a write validated
		// before it still succeeds.
		if err := pinKey(ctx, s, "a", "key-a"); err != nil {
			t.Fatal(err)
		}
		for _, stale := range []uint64{0, rev - 1, rev + 1} {
			if _, err := s.PutEdge(ctx, edge("b", "10.2.0.0/16"), stale); !errors.Is(err, store.ErrConflict) {
				t.Errorf("PutEdge expecting revision %d at %d = %v, want ErrConflict", stale, rev, err)
			}
			if _, err := s.DeleteEdge(ctx, "a", stale); !errors.Is(err, store.ErrConflict) {
				t.Errorf("DeleteEdge expecting revision %d at %d = %v, want ErrConflict", stale, rev, err)
			}
		}
		if st := load(t, s); st.Revision != rev || len(st.Edges) != 1 {
			t.Fatalf("refused writes changed the store: %+v", st)
		}
		rev = putEdge(t, s, edge("b", "10.2.0.0/16"), rev)
		if _, err := s.DeleteEdge(ctx, "a", rev); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ConcurrentConditionalPuts", func(t *testing.T) {
		// Fifty writers validated against the same revision: exactly one
		// may write, the others are told the set changed.
		s := open(t)
		base := putEdge(t, s, edge("base", "10.200.0.0/16"), 0)
		const n = 50
		revs := make([]uint64, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				revs[i], errs[i] = s.PutEdge(t.Context(), edge(fmt.Sprintf("e%02d", i), fmt.Sprintf("10.%d.0.0/16", i)), base)
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("e%02d and e%02d both written against revision %d", winner, i, base)
			case err == nil:
				winner = i
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("PutEdge e%02d: %v, want ErrConflict", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no writer succeeded")
		}
		st := load(t, s)
		if len(st.Edges) != 2 || st.Edges[fmt.Sprintf("e%02d", winner)].Revision != revs[winner] || st.Revision != revs[winner] {
			t.Fatalf("after the race: %+v, winner e%02d at %d", st, winner, revs[winner])
		}
	})

	t.Run("Watch", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		putEdge(t, s, edge("old", "10.9.0.0/16"), 0)
		st := load(t, s)
		feed, err := s.Watch(ctx, st.Latest)
		if err != nil {
			t.Fatal(err)
		}
		a := edge("a", "10.1.0.0/16")
		a.Revision = putEdge(t, s, a, st.Revision)
		pin, err := s.PinKey(ctx, "a", "key-a")
		if err != nil {
			t.Fatal(err)
		}
		del, err := s.DeleteEdge(ctx, "old", a.Revision)
		if err != nil {
			t.Fatal(err)
		}
		unpin, err := s.DeletePin(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		want := []store.Change{
			{Revision: a.Revision, Kind: store.KindEdge, Name: "a", Edge: a},
			{Revision: pin.Revision, Kind: store.KindPin, Name: "a", Key: "key-a"},
			{Revision: del, Kind: store.KindEdge, Name: "old", Deleted: true},
			{Revision: unpin, Kind: store.KindPin, Name: "a", Deleted: true},
		}
		for i, w := range want {
			select {
			case got := <-feed:
				if !reflect.DeepEqual(got, w) {
					t.Fatalf("change %d = %+v, want %+v", i, got, w)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("change %d (%+v) not delivered", i, w)
			}
		}
		// A feed started at the latest state delivers nothing older.
		later, err := s.Watch(ctx, unpin)
		if err != nil {
			t.Fatal(err)
		}
		b := edge("b", "10.2.0.0/16")
		b.Revision = putEdge(t, s, b, del)
		select {
		case got := <-later:
			if want := (store.Change{Revision: b.Revision, Kind: store.KindEdge, Name: "b", Edge: b}); !reflect.DeepEqual(got, want) {
				t.Fatalf("later feed delivered %+v first, want %+v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("later feed delivered nothing")
		}
	})
}

// load loads s and checks what holds for every State.
func load(t *testing.T, s store.Store) store.State {
	t.Helper()
	st, err := s.Load(t.Context())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for name, e := range st.Edges {
		if e.Name != name || e.Revision == 0 || e.Revision > st.Revision {
			t.Fatalf("edge %q = %+v in a state at revision %d", name, e, st.Revision)
		}
	}
	return st
}

// putEdge writes e, conditional on the edge set being at prev, and checks
// the revision is above prev.
func putEdge(t *testing.T, s store.Store, e bus.Edge, prev uint64) uint64 {
	t.Helper()
	rev, err := s.PutEdge(t.Context(), e, prev)
	if err != nil {
		t.Fatalf("PutEdge(%s): %v", e.Name, err)
	}
	if rev <= prev {
		t.Fatalf("PutEdge(%s) = revision %d, not above %d", e.Name, rev, prev)
	}
	return rev
}

// pinKey pins key for name and checks it was pinned.
func pinKey(ctx context.Context, s store.Store, name, key string) error {
	p, err := s.PinKey(ctx, name, key)
	if err == nil && (!p.Created || p.Key != key) {
		err = fmt.Errorf("PinKey(%s, %s) = %+v, want it created", name, key, p)
	}
	return err
}

func edge(name, cidr string) bus.Edge {
	return bus.Edge{
		Name:     name,
		CIDR:     netip.MustParsePrefix(cidr),
		HostAddr: netip.MustParseAddrPort("192.0.2.1:58423"),
	}
}
