package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/store/etcdtest"
)

// clusterConfigs are the configs of n controllers c1..cn on loopback, one
// cluster sharing a join secret (and etcd, if given).
func clusterConfigs(t *testing.T, n int, etcd string) []config.Controller {
	t.Helper()
	var peers []string
	for range n {
		peers = append(peers, freeAddr(t))
	}
	cfgs := make([]config.Controller, n)
	for i := range cfgs {
		cfgs[i] = config.Controller{
			ListenAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DataDir: t.TempDir(), Secret: "cluster-test-secret",
			ServerName: fmt.Sprintf("c%d", i+1), ClusterAddr: peers[i], ClusterPeers: peers,
		}
		if etcd != "" {
			cfgs[i].Etcd = []string{etcd}
		}
	}
	return cfgs
}

// startAll starts controllers at once (each waits for the others to hold
// the store) and returns them in order.
func startAll(t *testing.T, cfgs ...config.Controller) []*running {
	t.Helper()
	rs := make([]*running, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() { rs[i], errs[i] = tryStart(t, cfg) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return rs
}

// tryStart starts a controller, returning New's error.
func tryStart(t *testing.T, cfg config.Controller) (*running, error) {
	var w io.Writer = io.Discard
	if os.Getenv("CFRAME_TEST_LOG") != "" {
		w = os.Stderr
	}
	c, err := New(cfg, slog.New(slog.NewTextHandler(w, nil)).With("c", cfg.ServerName))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Controller: c, cancel: cancel, done: make(chan error, 1)}
	r.base = "http://" + c.APIAddr().String()
	r.api = api.NewClient(r.base, "")
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(r.stop)
	return r, nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// everywhere waits until every controller's view passes check.
func everywhere(t *testing.T, rs []*running, check func(r *running) error) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		for _, r := range rs {
			if r == nil {
				continue
			}
			if err := check(r); err != nil {
				return fmt.Errorf("%s: %w", r.cfg.ServerName, err)
			}
		}
		return nil
	})
}

func names(list []api.EdgeView) []string {
	var out []string
	for _, e := range list {
		out = append(out, e.Name)
	}
	return out
}

// Three controllers share one edge set, pinned keys and audit events: an
// add through one is listed by all, an edge pinned by one is refused
// another key by all, a delete through a third is gone everywhere, and an
// audit subscriber on one sees the events of all.
func TestClusterSharesEverything(t *testing.T) {
	rs := startAll(t, clusterConfigs(t, 3, "")...)
	ctx := context.Background()
	if cl := rs[0].Cluster(); cl.Controllers != 3 || len(cl.Reachable) != 3 || !cl.Quorum || cl.Store != "embedded" {
		t.Fatalf("cluster = %+v", cl)
	}
	waitFor(t, 10*time.Second, func() error {
		if cl := rs[1].Cluster(); cl.MetaLeader == "" || cl.StoreLeader == "" {
			return fmt.Errorf("no leaders yet: %+v", cl)
		}
		return nil
	})

	audit, err := nats.Connect("nats://"+rs[0].NATSAddr().String(),
		append(bus.ClientOptions(bus.Trust{Secret: rs[0].Secret()}, nil), nats.UserInfo(bus.AuditUser, bus.AuditPassword(rs[0].Secret())))...)
	if err != nil {
		t.Fatal(err)
	}
	defer audit.Close()
	events := make(chan *nats.Msg, 64)
	if _, err := audit.ChanSubscribe(bus.SubjectEventsAll, events); err != nil {
		t.Fatal(err)
	}
	if err := audit.Flush(); err != nil {
		t.Fatal(err)
	}

	for i, s := range walkthrough {
		if _, err := rs[i].api.Add(ctx, s); err != nil {
			t.Fatalf("add %s through c%d: %v", s.Name, i+1, err)
		}
	}
	var rev uint64
	everywhere(t, rs, func(r *running) error {
		tp := r.Topology()
		if got := names(r.ListEdges()); !slices.Equal(got, []string{"gz-3", "hk-1", "sz-1"}) {
			return fmt.Errorf("edges %v", got)
		}
		if rev == 0 {
			rev = tp.Revision
		}
		if tp.Revision != rev {
			return fmt.Errorf("revision %d, another controller is at %d", tp.Revision, rev)
		}
		return nil
	})

	// sz-1 connects to c2 and is pinned; c3 refuses it another key.
	nc, f := followEdge(t, rs[1], "sz-1", t.TempDir())
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	if _, got, _ := f.Set(); got != rev {
		t.Fatalf("snapshot from c2 at revision %d, want %d", got, rev)
	}
	everywhere(t, rs, func(r *running) error {
		if e := r.ListEdges()[2]; e.Name != "sz-1" || e.Key == "" {
			return fmt.Errorf("sz-1 = %+v, want its key pinned", e)
		}
		return nil
	})
	id, _ := bus.LoadIdentity(filepath.Join(t.TempDir(), "other.nk"), "sz-1")
	if other, err := nats.Connect("nats://"+rs[2].NATSAddr().String(), append(id.EdgeOptions(rs[2].Secret()), nats.MaxReconnects(0))...); err == nil {
		other.Close()
		t.Fatal("c3 accepted a second key for sz-1, pinned through c2")
	}
	// Its heartbeat, published to c2, makes it online on every controller.
	if err := bus.Publish(nc, bus.StatusSubject("sz-1"), bus.Status{Name: "sz-1", State: bus.StateReady, AppliedRevision: rev}); err != nil {
		t.Fatal(err)
	}
	everywhere(t, rs, func(r *running) error {
		if e := r.ListEdges()[2]; e.State != api.StateOnline || e.AppliedRevision != rev {
			return fmt.Errorf("sz-1 = %+v, want online at %d", e, rev)
		}
		return nil
	})

	// A delete through c3 reaches the follower on c2 as a delta.
	res, err := rs[2].api.Del(ctx, "hk-1")
	if err != nil {
		t.Fatal(err)
	}
	if change := handleNext(t, f); !strings.Contains(change, "delete edge hk-1") {
		t.Fatalf("follower on c2 got %q", change)
	}
	everywhere(t, rs, func(r *running) error {
		if got := names(r.ListEdges()); !slices.Equal(got, []string{"gz-3", "sz-1"}) || r.Topology().Revision != res.Revision {
			return fmt.Errorf("edges %v at %d, want gz-3, sz-1 at %d", got, r.Topology().Revision, res.Revision)
		}
		return nil
	})

	// Every change was announced once, whichever controller made it, to the
	// subscriber on c1; sz-1 going online too (by one controller). The
	// refused key is announced for each attempt the client made.
	want := map[string]int{"added.sz-1": 1, "added.hk-1": 1, "added.gz-3": 1, "key-pinned.sz-1": 1, "online.sz-1": 1, "deleted.hk-1": 1}
	got := map[string]int{}
	refused := 0
	deadline := time.After(5 * time.Second)
	for !mapsEqual(got, want) || refused == 0 {
		select {
		case m := <-events:
			if kind := strings.TrimPrefix(m.Subject, "cframe.v1.events."); kind == "key-refused.sz-1" {
				refused++
			} else {
				got[kind]++
			}
		case <-deadline:
			t.Fatalf("events = %v and %d refusals, want %v and some", got, refused, want)
		}
	}
	select {
	case m := <-events:
		if m.Subject != bus.EventSubject(bus.EventKeyRefused, "sz-1") {
			t.Fatalf("an event too many: %s %s", m.Subject, m.Data)
		}
	case <-time.After(300 * time.Millisecond):
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Fifty concurrent adds of overlapping networks, spread over the three
// controllers: exactly one is stored, whichever store holds the set.
func TestClusterConflictingAdds(t *testing.T) {
	for _, tt := range []struct {
		name string
		etcd func(t *testing.T) string
	}{
		{"embedded", func(*testing.T) string { return "" }},
		{"etcd", func(t *testing.T) string { return etcdtest.Start(t) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs := startAll(t, clusterConfigs(t, 3, tt.etcd(t))...)
			var wg sync.WaitGroup
			codes := make([]int, 50)
			for i := range codes {
				wg.Go(func() {
					_, err := rs[i%3].api.Add(context.Background(), edgeset.Spec{
						Name:     fmt.Sprintf("e-%d", i),
						HostAddr: fmt.Sprintf("198.51.100.%d:58423", i+1),
						CIDR:     []string{"10.0.0.0/16", "10.0.0.0/8", "10.0.0.0/24"}[i%3],
					})
					var se *api.StatusError
					switch {
					case err == nil:
						codes[i] = http.StatusOK
					case errors.As(err, &se):
						codes[i] = se.Code
					default:
						t.Errorf("add e-%d: %v", i, err)
					}
				})
			}
			wg.Wait()
			var ok, conflict []int
			for i, c := range codes {
				switch c {
				case http.StatusOK:
					ok = append(ok, i)
				case http.StatusConflict:
					conflict = append(conflict, i)
				default:
					t.Errorf("add e-%d: HTTP %d", i, c)
				}
			}
			if len(ok) != 1 || len(conflict) != 49 {
				t.Fatalf("%d accepted (%v), %d conflicts; want 1 and 49", len(ok), ok, len(conflict))
			}
			winner := fmt.Sprintf("e-%d", ok[0])
			everywhere(t, rs, func(r *running) error {
				if got := names(r.ListEdges()); !slices.Equal(got, []string{winner}) {
					return fmt.Errorf("edges %v, want only %s", got, winner)
				}
				return nil
			})
		})
	}
}

// Two controllers of three stopped: writes are refused at once with 503,
// reads still answer; one back, writes work again and the returning
// controller catches up.
func TestClusterQuorum(t *testing.T) {
	cfgs := clusterConfigs(t, 3, "")
	rs := startAll(t, cfgs...)
	ctx := context.Background()
	addAll(t, rs[0], walkthrough...)
	everywhere(t, rs, func(r *running) error {
		if n := len(r.ListEdges()); n != 3 {
			return fmt.Errorf("%d edges", n)
		}
		return nil
	})
	natsAddr := rs[1].NATSAddr().String()
	rs[1].stop()
	rs[2].stop()
	waitFor(t, 5*time.Second, func() error {
		if cl := rs[0].Cluster(); cl.Quorum {
			return fmt.Errorf("still a quorum: %+v", cl)
		}
		return nil
	})
	start := time.Now()
	_, err := rs[0].api.Add(ctx, edgeset.Spec{Name: "bj-4", HostAddr: "198.51.100.20:58423", CIDR: "10.60.6.0/24"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Msg, "no quorum: this controller reaches 1 of 3 controllers (c1)") {
		t.Fatalf("add without a quorum: %v, want 503 naming the quorum", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the refusal took %s", d)
	}
	if _, err := rs[0].api.Del(ctx, "sz-1"); !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("del without a quorum: %v, want 503", err)
	}
	if list, err := rs[0].api.List(ctx); err != nil || len(list) != 3 {
		t.Fatalf("list without a quorum: %d edges, %v", len(list), err)
	}

	// c2 comes back: a quorum again; it catches up with a write made
	// through c1 after its return.
	cfgs[1].ListenAddr = natsAddr
	r2, err := tryStart(t, cfgs[1])
	if err != nil {
		t.Fatal(err)
	}
	var res api.ChangeResult
	waitFor(t, 10*time.Second, func() (err error) {
		res, err = rs[0].api.Add(ctx, edgeset.Spec{Name: "bj-4", HostAddr: "198.51.100.20:58423", CIDR: "10.60.6.0/24"})
		return err
	})
	everywhere(t, []*running{rs[0], r2}, func(r *running) error {
		if n, rev := len(r.ListEdges()), r.Topology().Revision; n != 4 || rev != res.Revision {
			return fmt.Errorf("%d edges at %d, want 4 at %d", n, rev, res.Revision)
		}
		return nil
	})
}

// A lone controller's store is carried into the cluster it joins: edges,
// revisions' order and pinned keys, on every controller.
func TestClusterImportsStandalone(t *testing.T) {
	cfgs := clusterConfigs(t, 3, "")
	lone := cfgs[0]
	lone.ClusterAddr, lone.ClusterPeers = "", nil
	r := start(t, lone)
	addAll(t, r, walkthrough...)
	_, f := followEdge(t, r, "gz-3", t.TempDir())
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	before := r.ListEdges()
	r.stop()

	rs := startAll(t, cfgs...)
	everywhere(t, rs, func(r *running) error {
		after := r.ListEdges()
		if len(after) != len(before) {
			return fmt.Errorf("%d edges, want %d", len(after), len(before))
		}
		for i := range before {
			if b, a := before[i], after[i]; a.Name != b.Name || a.CIDR != b.CIDR || a.HostAddr != b.HostAddr || a.Key != b.Key {
				return fmt.Errorf("%+v, was %+v", a, b)
			}
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(cfgs[0].DataDir, "jetstream.imported")); err != nil {
		t.Fatalf("the standalone store was not set aside: %v", err)
	}
	// Restarting does not import again.
	cfgs[0].ListenAddr = rs[0].NATSAddr().String()
	rs[0].stop()
	r1, err := tryStart(t, cfgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := names(r1.ListEdges()); len(got) != 3 {
		t.Fatalf("after restart: %v", got)
	}
}

// A controller whose server_name another controller of the cluster uses
// refuses to start, in one line: c3's host comes back with c1's name.
func TestClusterDuplicateServerName(t *testing.T) {
	cfgs := clusterConfigs(t, 3, "")
	rs := startAll(t, cfgs...)
	rs[2].stop()
	dup := cfgs[2]
	dup.ServerName, dup.DataDir = "c1", t.TempDir()
	done := make(chan error, 1)
	go func() {
		r, err := tryStart(t, dup)
		if err == nil {
			r.stop()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), `server_name "c1" is already used by the controller at 127.0.0.1: give`) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("New with a duplicate server_name = %v, want one line naming it", err)
		}
		t.Log(err)
	case <-time.After(15 * time.Second):
		t.Fatal("a controller with a duplicate server_name is still starting after 15s")
	}
}
