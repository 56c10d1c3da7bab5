package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// scaleEdge is the i-th of a large mesh's edges.
func scaleEdge(i int) edgeset.Spec {
	return edgeset.Spec{
		Name:     fmt.Sprintf("sc-%04d", i),
		HostAddr: fmt.Sprintf("198.18.%d.%d:58423", i/250, i%250+1),
		CIDR:     fmt.Sprintf("10.%d.%d.0/24", i/256, i%256),
	}
}

// With a few thousand edges in the set, what the controller sends a joining
// edge is the compressed set, the same number of bytes for the first join
// as for the thousandth, and for a burst of joins as for one at a time
// (the set is encoded and compressed once per revision, not per request);
// an edge a few changes behind gets those changes only, a current one a
// few bytes.
func TestJoinBytesStayFlat(t *testing.T) {
	const edges, joins = 2000, 2000
	r := start(t, testConfig(t))
	ctx := context.Background()
	t0 := time.Now()
	for i := range edges {
		if _, err := r.AddEdge(ctx, scaleEdge(i)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("added in %s", time.Since(t0))
	nc, f := followEdge(t, r, "sc-0000", t.TempDir())
	sent := func(kind string) (replies, bytes float64) {
		return testutil.ToFloat64(r.metrics.snapshots.WithLabelValues(kind)), testutil.ToFloat64(r.metrics.snapshotBytes.WithLabelValues(kind))
	}
	view := r.view.now()
	plain, err := view.encoded()
	if err != nil {
		t.Fatal(err)
	}
	compressed, err := view.compressed()
	if err != nil {
		t.Fatal(err)
	}
	if len(compressed)*3 > len(plain) {
		t.Errorf("the set of %d edges compresses from %d to %d bytes, want a third or less", edges, len(plain), len(compressed))
	}
	t.Logf("%d edges: %d bytes of JSON, %d compressed", edges, len(plain), len(compressed))

	// Joins in waves of growing size, each wave's requests all at once.
	body, err := json.Marshal(bus.SnapshotRequest{Accept: []string{bus.AcceptZstd, bus.AcceptDeltas}})
	if err != nil {
		t.Fatal(err)
	}
	// (The test decodes one reply per wave: decoding them all would load
	// this process, not the controller.)
	done := 0
	for _, wave := range []int{1, 10, 100, joins - 111} {
		n0, b0 := sent(replyFullZstd)
		var wg sync.WaitGroup
		errs := make(chan error, wave)
		for i := range wave {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := nc.Request(bus.SubjectSnapshot, body, 30*time.Second)
				if err != nil {
					errs <- err
					return
				}
				if i > 0 {
					return
				}
				var s bus.Snapshot
				if err := bus.Decode(m, &s); err != nil {
					errs <- err
				} else if len(s.Edges) != edges {
					errs <- fmt.Errorf("joined with %d edges, want %d", len(s.Edges), edges)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		n1, b1 := sent(replyFullZstd)
		if n1-n0 != float64(wave) || b1-b0 != float64(wave*len(compressed)) {
			t.Fatalf("after %d joins, a wave of %d: %v replies of %v bytes in all, want %d of %d bytes each (the compressed set)",
				done, wave, n1-n0, b1-b0, wave, len(compressed))
		}
		done += wave
	}
	if n, _ := sent(replyFull); n != 0 {
		t.Errorf("%v plain whole sets sent to edges that accept zstd", n)
	}

	// An edge three changes behind gets the three changes.
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s := scaleEdge(edges + i)
		if _, err := r.AddEdge(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	_, b0 := sent(replyDeltas)
	change, err := f.Resync("reconnected")
	if err != nil || !strings.Contains(change, "3 changes since") {
		t.Fatalf("resync three changes behind: %q, %v", change, err)
	}
	set, rev, _ := f.Set()
	if len(set) != edges+3 || rev != r.view.now().rev {
		t.Fatalf("after the changes: %d edges at revision %d, want %d at %d", len(set), rev, edges+3, r.view.now().rev)
	}
	if _, b1 := sent(replyDeltas); b1-b0 > float64(len(compressed))/20 {
		t.Errorf("three changes took %v bytes, the whole set %d compressed", b1-b0, len(compressed))
	}
	// A current edge is told so.
	if change, err := f.Resync("reconnected"); err != nil || change != "" {
		t.Fatalf("resync when current: %q, %v", change, err)
	}
	if n, _ := sent(replyUnchanged); n != 1 {
		t.Errorf("%v unchanged replies, want 1", n)
	}
}

// An agent older than compression and deltas (a request that accepts
// nothing) gets the plain whole set.
func TestOldAgentGetsPlainSet(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough...)
	nc, _ := followEdge(t, r, "sz-1", t.TempDir())
	rev := r.view.now().rev
	for _, req := range []string{``, `{}`, fmt.Sprintf(`{"have":%d}`, rev-1)} {
		m, err := nc.Request(bus.SubjectSnapshot, []byte(req), bus.SnapshotTimeout)
		if err != nil {
			t.Fatal(err)
		}
		var s bus.Snapshot
		if enc := m.Header.Get(bus.EncodingHeader); enc != "" {
			t.Fatalf("request %q: reply encoded %q", req, enc)
		}
		if err := json.Unmarshal(m.Data, &s); err != nil || len(s.Edges) != 3 || s.Revision != rev || s.Since != 0 {
			t.Fatalf("request %q: %d edges at revision %d (since %d), %v; want the 3 at %d", req, len(s.Edges), s.Revision, s.Since, err, rev)
		}
	}
}
