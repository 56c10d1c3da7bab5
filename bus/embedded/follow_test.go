package embedded

import (
	"github.com/cframe/cframe/bus"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// fakeController answers snapshot requests from a set it can change.
type fakeController struct {
	t     *testing.T
	nc    *nats.Conn
	mu    sync.Mutex
	snap  bus.Snapshot
	asked int
	last  bus.SnapshotRequest
	// since, when set, answers a request that accepts deltas instead of
	// snap (a reply with Since 0 falls through to snap).
	since func(bus.SnapshotRequest) bus.Snapshot
}

func newFakeController(t *testing.T, s *Server) *fakeController {
	f := &fakeController{t: t, nc: internal(t, s)}
	if _, err := f.nc.Subscribe(bus.SubjectSnapshot, func(m *nats.Msg) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.asked++
		f.last = bus.SnapshotRequest{}
		if err := bus.Decode(m, &f.last); err != nil {
			t.Error(err)
		}
		reply := f.snap
		if f.since != nil && f.last.Accepts(bus.AcceptDeltas) {
			if r := f.since(f.last); r.Since != 0 {
				reply = r
			}
		}
		if err := bus.Publish(f.nc, m.Reply, reply); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	// The server has the subscription before anyone asks.
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeController) set(rev uint64, names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = bus.Snapshot{Revision: rev}
	for _, n := range names {
		f.snap.Edges = append(f.snap.Edges, bus.Edge{Name: n, CIDR: netip.MustParsePrefix("10.0.0.0/24")})
	}
}

func (f *fakeController) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked
}

// next hands the follower its next message and returns the change it reports.
func next(t *testing.T, fl *bus.Follower) string {
	t.Helper()
	select {
	case m := <-fl.Messages():
		change, err := fl.Handle(m)
		if err != nil {
			t.Fatal(err)
		}
		return change
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
		return ""
	}
}

func names(fl *bus.Follower) string {
	set, _, _ := fl.Set()
	var out []string
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, ok := set[n]; ok {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// joined is edge a following a fake controller whose set, edges a and b at
// revision rev, it has fetched.
func joined(t *testing.T, rev uint64) (*fakeController, *bus.Follower) {
	t.Helper()
	s := startServer(t)
	ctl := newFakeController(t, s)
	ctl.set(rev, "a", "b")
	nc, _, err := connectEdge(t, s, identity(t, t.TempDir(), "a"), testSecret)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := bus.Follow(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Resync("join"); err != nil {
		t.Fatal(err)
	}
	return ctl, fl
}

func TestFollowerSnapshotThenDeltasAndGapRepair(t *testing.T) {
	// A late joiner gets the full set at the current revision.
	ctl, fl := joined(t, 5)
	if _, rev, ok := fl.Set(); !ok || rev != 5 || names(fl) != "a,b" {
		t.Fatalf("after snapshot: rev %d set %s, want 5 a,b", rev, names(fl))
	}

	// A delta that follows is applied without asking for a snapshot.
	asked := ctl.requests()
	mustPublish(t, ctl.nc, bus.SubjectDelta, bus.Delta{Revision: 7, Prev: 5, Op: bus.OpPut, Edge: bus.Edge{Name: "c"}})
	if c := next(t, fl); !strings.Contains(c, "revision 7") || names(fl) != "a,b,c" || ctl.requests() != asked {
		t.Fatalf("delta 7: change %q set %s requests %d->%d", c, names(fl), asked, ctl.requests())
	}
	// A replayed (old) delta changes nothing.
	mustPublish(t, ctl.nc, bus.SubjectDelta, bus.Delta{Revision: 7, Prev: 5, Op: bus.OpDelete, Edge: bus.Edge{Name: "c"}})
	if c := next(t, fl); c != "" || names(fl) != "a,b,c" {
		t.Fatalf("replayed delta: change %q set %s", c, names(fl))
	}
	mustPublish(t, ctl.nc, bus.SubjectDelta, bus.Delta{Revision: 8, Prev: 7, Op: bus.OpDelete, Edge: bus.Edge{Name: "b"}})
	if next(t, fl); names(fl) != "a,c" {
		t.Fatalf("delete delta: set %s", names(fl))
	}

	// Revision 9 was lost: delta 10 (prev 9) does not follow, so the
	// follower fetches the snapshot instead of applying it out of order.
	ctl.set(10, "a", "c", "d")
	mustPublish(t, ctl.nc, bus.SubjectDelta, bus.Delta{Revision: 10, Prev: 9, Op: bus.OpPut, Edge: bus.Edge{Name: "d"}})
	if c := next(t, fl); !strings.Contains(c, "missed revisions 9..9") || names(fl) != "a,c,d" {
		t.Fatalf("gap: change %q set %s", c, names(fl))
	}
	// The request named the revision held and the one heard of, which a
	// controller that has not seen it yet waits for.
	if ctl.mu.Lock(); ctl.last.Have != 8 || ctl.last.Want != 10 || !ctl.last.Accepts(bus.AcceptDeltas) || !ctl.last.Accepts(bus.AcceptZstd) {
		t.Errorf("snapshot request %+v, want have 8, want 10, accepting deltas and zstd", ctl.last)
	}
	ctl.mu.Unlock()

	// A hello at the held revision is quiet, and so is one behind it (a
	// controller of a cluster that has not seen the latest write yet); one
	// at a later revision resyncs.
	for _, rev := range []uint64{10, 9} {
		mustPublish(t, ctl.nc, bus.SubjectHello, bus.Hello{Revision: rev})
		if c := next(t, fl); c != "" {
			t.Fatalf("hello at revision %d, held 10, caused %q", rev, c)
		}
	}
	ctl.set(12, "a")
	mustPublish(t, ctl.nc, bus.SubjectHello, bus.Hello{Revision: 12})
	if c := next(t, fl); !strings.Contains(c, "snapshot revision 12") || names(fl) != "a" {
		t.Fatalf("hello 12: change %q set %s", c, names(fl))
	}
	if s := fl.Snapshot(); s.Revision != 12 || len(s.Edges) != 1 {
		t.Fatalf("Snapshot() = %+v", s)
	}
}

func mustPublish(t *testing.T, nc *nats.Conn, subj string, v any) {
	t.Helper()
	if err := bus.Publish(nc, subj, v); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A set handed out by Set stays that revision's while later deltas are
// applied: another goroutine (the agent's HA runner) reads it meanwhile.
func TestFollowerSetsAreImmutable(t *testing.T) {
	ctl, fl := joined(t, 1)
	first, _, _ := fl.Set()
	stop := make(chan struct{})
	read := make(chan int)
	go func() { // iterates the handed-out set while the follower moves on
		n := 0
		for {
			select {
			case <-stop:
				read <- n
				return
			default:
			}
			for range first {
				n++
			}
		}
	}()
	for rev := uint64(2); rev < 40; rev++ {
		op, edge := bus.OpPut, bus.Edge{Name: "c", CIDR: netip.MustParsePrefix("10.9.0.0/24")}
		if rev%2 == 1 {
			op = bus.OpDelete
		}
		if rev%5 == 0 {
			edge.Name = "b"
		}
		mustPublish(t, ctl.nc, bus.SubjectDelta, bus.Delta{Revision: rev, Prev: rev - 1, Op: op, Edge: edge})
		next(t, fl)
	}
	close(stop)
	if <-read == 0 {
		t.Fatal("the reader never iterated the set")
	}
	if len(first) != 2 || first["a"].Name != "a" || first["b"].Name != "b" {
		t.Fatalf("the set of revision 1 changed after it was handed out: %v", first)
	}
	// Revision 35 deleted b, 39 deleted c.
	if latest, rev, _ := fl.Set(); rev != 39 || len(latest) != 1 || latest["a"].Name != "a" {
		t.Fatalf("revision %d set %v, want 39 with a alone: the deltas were not applied", rev, latest)
	}
}

// A follower that holds a revision is sent the changes since it when the
// controller has them, applies them in order, and takes the whole set
// instead when they do not start from what it holds or do not chain.
func TestFollowerTakesChangesSince(t *testing.T) {
	ctl, fl := joined(t, 5) // a, b at 5
	edge := func(name string) bus.Edge { return bus.Edge{Name: name, CIDR: netip.MustParsePrefix("10.0.0.0/24")} }
	for _, tc := range []struct {
		name   string
		deltas []bus.Delta
		since  uint64
		want   string // change reported
		names  string
	}{
		{"changes since the held revision", []bus.Delta{
			{Revision: 6, Prev: 5, Op: bus.OpPut, Edge: edge("c")},
			{Revision: 8, Prev: 6, Op: bus.OpDelete, Edge: bus.Edge{Name: "b"}},
		}, 5, "2 changes since 5", "a,c"},
		{"changes from another revision", []bus.Delta{{Revision: 9, Prev: 7, Op: bus.OpPut, Edge: edge("d")}}, 7, "snapshot revision 9 (", "a,b,d"},
		{"changes that do not chain", []bus.Delta{
			{Revision: 10, Prev: 9, Op: bus.OpPut, Edge: edge("c")},
			{Revision: 12, Prev: 11, Op: bus.OpPut, Edge: edge("b")},
		}, 9, "snapshot revision 12 (", "a"},
	} {
		last := tc.deltas[len(tc.deltas)-1].Revision
		ctl.mu.Lock()
		ctl.since = func(bus.SnapshotRequest) bus.Snapshot {
			return bus.Snapshot{Revision: last, Since: tc.since, Deltas: tc.deltas}
		}
		ctl.mu.Unlock()
		// The whole set, for a follower that cannot use the changes.
		ctl.set(last, strings.Split(tc.names, ",")...)
		asked := ctl.requests()
		change, err := fl.Resync("test")
		if err != nil || !strings.Contains(change, tc.want) {
			t.Fatalf("%s: change %q, %v; want %q", tc.name, change, err, tc.want)
		}
		if _, rev, _ := fl.Set(); rev != last || names(fl) != tc.names {
			t.Fatalf("%s: revision %d set %s, want %d %s", tc.name, rev, names(fl), last, tc.names)
		}
		if n := ctl.requests() - asked; (tc.since == 5) != (n == 1) {
			t.Errorf("%s: %d requests", tc.name, n)
		}
	}
}
