package controller

import (
	"context"
	"encoding/json"
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
