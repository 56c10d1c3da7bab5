package store_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"

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
			edge func() (uint64, error)
			pin  func() error
		}{
			{name: "put edge a", edge: func() (uint64, error) { return s.PutEdge(ctx, edge("a", "10.1.0.0/16")) }},
			{name: "put edge b", edge: func() (uint64, error) { return s.PutEdge(ctx, edge("b", "10.2.0.0/16")) }},
			{name: "put pin a", pin: func() error { return s.PutPin(ctx, "a", "key-a") }},
			{name: "delete edge a", edge: func() (uint64, error) { return s.DeleteEdge(ctx, "a") }},
			{name: "put pin b", pin: func() error { return s.PutPin(ctx, "b", "key-b") }},
			{name: "delete pin a", pin: func() error { return s.DeletePin(ctx, "a") }},
			{name: "put edge b again", edge: func() (uint64, error) { return s.PutEdge(ctx, edge("b", "10.3.0.0/16")) }},
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
			rev, err := step.edge()
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
		putEdge(t, s, edge("a", "10.1.0.0/16"), 0)
		before := load(t, s).Revision
		if _, err := s.DeleteEdge(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeleteEdge(missing) = %v, want ErrNotFound", err)
		}
		if err := s.DeletePin(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeletePin(missing) = %v, want ErrNotFound", err)
		}
		// An edge named "a" exists, its pin does not.
		if err := s.DeletePin(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("DeletePin(a) with only an edge a = %v, want ErrNotFound", err)
		}
		if after := load(t, s).Revision; after != before {
			t.Errorf("failed deletes moved the revision from %d to %d", before, after)
		}
		if _, err := s.DeleteEdge(ctx, "a"); err != nil {
			t.Fatalf("DeleteEdge(a): %v", err)
		}
		if _, err := s.DeleteEdge(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second DeleteEdge(a) = %v, want ErrNotFound", err)
		}
		if st := load(t, s); len(st.Edges) != 0 {
			t.Errorf("deleted edge still loads: %+v", st.Edges)
		}
	})

	t.Run("Pins", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		for _, key := range []string{"key-1", "key-2"} {
			if err := s.PutPin(ctx, "sz-1", key); err != nil {
				t.Fatal(err)
			}
			st := load(t, s)
			if !reflect.DeepEqual(st.Pins, map[string]string{"sz-1": key}) || len(st.Edges) != 0 {
				t.Fatalf("after pinning %s: %+v", key, st)
			}
		}
		if err := s.DeletePin(ctx, "sz-1"); err != nil {
			t.Fatal(err)
		}
		if st := load(t, s); len(st.Pins) != 0 {
			t.Fatalf("deleted pin still loads: %+v", st.Pins)
		}
	})

	t.Run("ConcurrentPuts", func(t *testing.T) {
		s := open(t)
		const n = 50
		revs := make([]uint64, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				revs[i], errs[i] = s.PutEdge(t.Context(), edge(fmt.Sprintf("e%02d", i), fmt.Sprintf("10.%d.0.0/16", i)))
			})
		}
		wg.Wait()
		seen := map[uint64]int{}
		for i, rev := range revs {
			if errs[i] != nil {
				t.Fatalf("PutEdge e%02d: %v", i, errs[i])
			}
			if j, dup := seen[rev]; dup {
				t.Fatalf("e%02d and e%02d both got revision %d", j, i, rev)
			}
			seen[rev] = i
		}
		st := load(t, s)
		if len(st.Edges) != n {
			t.Fatalf("Load has %d edges, want %d", len(st.Edges), n)
		}
		for i, rev := range revs {
			if got := st.Edges[fmt.Sprintf("e%02d", i)].Revision; got != rev {
				t.Errorf("e%02d loads at revision %d, its write returned %d", i, got, rev)
			}
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

// putEdge writes e and checks the revision is above prev.
func putEdge(t *testing.T, s store.Store, e bus.Edge, prev uint64) uint64 {
	t.Helper()
	rev, err := s.PutEdge(t.Context(), e)
	if err != nil {
		t.Fatalf("PutEdge(%s): %v", e.Name, err)
	}
	if rev <= prev {
		t.Fatalf("PutEdge(%s) = revision %d, not above %d", e.Name, rev, prev)
	}
	return rev
}

func edge(name, cidr string) bus.Edge {
	return bus.Edge{
		Name:     name,
		CIDR:     netip.MustParsePrefix(cidr),
		HostAddr: netip.MustParseAddrPort("192.0.2.1:58423"),
	}
}
