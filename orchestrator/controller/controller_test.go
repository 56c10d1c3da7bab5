package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
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

// running is a controller serving in the background.
type running struct {
	*Controller
	api    *api.Client
	base   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func testConfig(t *testing.T) config.Controller {
	return config.Controller{ListenAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DataDir: t.TempDir()}
}

func start(t *testing.T, cfg config.Controller) *running {
	t.Helper()
	c, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Controller: c, cancel: cancel, done: make(chan error, 1)}
	r.base = "http://" + c.APIAddr().String()
	r.api = api.NewClient(r.base, "")
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// stop shuts the controller down and waits for it (idempotent).
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			panic(err)
		}
	})
}

var walkthrough = []edgeset.Spec{
	{Name: "sz-1", HostAddr: "198.51.100.10:58423", CIDR: "172.18.0.0/16"},
	{Name: "hk-1", HostAddr: "203.0.113.10:58423", CIDR: "172.31.0.0/16"},
	{Name: "gz-3", HostAddr: "192.0.2.10:58423", CIDR: "172.20.0.0/16"},
}

func addAll(t *testing.T, r *running, specs ...edgeset.Spec) {
	t.Helper()
	for _, s := range specs {
		if _, err := r.api.Add(context.Background(), s); err != nil {
			t.Fatalf("add %s: %v", s.Name, err)
		}
	}
}

// post sends a raw body the way the walkthrough's curl does.
func post(t *testing.T, r *running, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(r.base+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestWalkthroughAPI(t *testing.T) {
	r := start(t, testConfig(t))
	// The walkthrough's three curl bodies, verbatim apart from the addresses.
	for _, body := range []string{
		`{"name": "sz-1", "hostaddr": "198.51.100.10:58423", "cidr": "172.18.0.0/16"}`,
		`{"name": "hk-1", "hostaddr": "203.0.113.10:58423", "cidr": "172.31.0.0/16"}`,
		`{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.0/16", "comment": "tencent gz"}`,
	} {
		code, resp := post(t, r, api.PathAdd, body)
		if code != http.StatusOK || !strings.Contains(resp, "added") {
			t.Fatalf("add %s: %d %s", body, code, resp)
		}
	}
	resp, err := http.Get(r.base + api.PathList)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, field := range []string{`"name": "gz-3"`, `"comment": "tencent gz"`, `"cidr": "172.20.0.0/16"`, `"host_addr": "192.0.2.10:58423"`, `"status": 0`, `"state": "offline"`} {
		if !strings.Contains(string(raw), field) {
			t.Errorf("edge list lacks %s:\n%s", field, raw)
		}
	}
	list, err := r.api.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Name != "gz-3" || list[1].Name != "hk-1" || list[2].Name != "sz-1" {
		t.Fatalf("list = %+v, want gz-3, hk-1, sz-1", list)
	}
	if !(list[2].Revision < list[1].Revision && list[1].Revision < list[0].Revision) {
		t.Fatalf("revisions not increasing in add order: %+v", list)
	}

	topo, err := r.api.Topology(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if topo.Revision != list[0].Revision || len(topo.Edges) != 3 || len(topo.Links) != 3 {
		t.Fatalf("topology = %+v", topo)
	}
	if e := topo.Edges[1]; e.Name != "hk-1" || e.NextHop != "172.31.0.0" || !strings.HasPrefix(e.VTEPMAC, "02:") || e.State != api.StateOffline {
		t.Fatalf("topology edge = %+v", e)
	}
	for _, l := range topo.Links {
		if l.State != api.LinkDown {
			t.Fatalf("link %+v should be down with no agents", l)
		}
	}

	// Re-adding a name updates it and says so.
	res, err := r.api.Add(context.Background(), edgeset.Spec{Name: "hk-1", HostAddr: "203.0.113.10:58424", CIDR: "172.31.0.0/16"})
	if err != nil || !res.Updated || !strings.Contains(res.Message, "updated") || res.Revision <= topo.Revision {
		t.Fatalf("update = %+v, %v", res, err)
	}
	// Re-adding it unchanged is a no-op at the same revision.
	same, err := r.api.Add(context.Background(), edgeset.Spec{Name: "hk-1", HostAddr: "203.0.113.10:58424", CIDR: "172.31.0.0/16"})
	if err != nil || same.Revision != res.Revision || !strings.Contains(same.Message, "unchanged") {
		t.Fatalf("unchanged re-add = %+v, %v", same, err)
	}
	del, err := r.api.Del(context.Background(), "hk-1")
	if err != nil || del.Revision <= res.Revision {
		t.Fatalf("del = %+v, %v", del, err)
	}
	if list, _ := r.api.List(context.Background()); len(list) != 2 {
		t.Fatalf("after del: %+v", list)
	}
}

// Every refused request gets a 4xx JSON error and changes nothing.
func TestAPIRefusals(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough[:2]...)
	before, _ := r.api.Topology(context.Background())
	tests := []struct {
		path, body string
		code       int
		want       string
	}{
		{api.PathAdd, `{"name": "gz-3", "hostaddr": `, 400, "malformed JSON"},
		{api.PathAdd, `not json`, 400, "malformed JSON"},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.0/16", "cidrs": []}`, 400, "unknown field \"cidrs\""},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.0/16"}{}`, 400, "more than one"},
		{api.PathAdd, `{"name": "", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.0/16"}`, 400, "name is empty"},
		{api.PathAdd, `{"name": "gz.3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.0/16"}`, 400, "invalid"},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10", "cidr": "172.20.0.0/16"}`, 400, "not IP:port"},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.300/16"}`, 400, "not a network"},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.20.0.9/16"}`, 400, "did you mean 172.20.0.0/16"},
		{api.PathAdd, `{"name": "gz-3", "hostaddr": "192.0.2.10:58423", "cidr": "172.31.128.0/17"}`, 409,
			"cidr 172.31.128.0/17 of edge gz-3 overlaps cidr 172.31.0.0/16 of edge hk-1"},
		{api.PathDel, `{"name": "nope"}`, 404, "edge nope: not found"},
		{api.PathDel, `{}`, 400, "name is required"},
		{api.PathDel, `{"name": "sz-1", "force": true}`, 400, "unknown field"},
		{"/api-service/v1/nothing", `{}`, 404, "no such API path"},
	}
	for _, tt := range tests {
		code, body := post(t, r, tt.path, tt.body)
		var e api.ErrorBody
		if err := json.Unmarshal([]byte(body), &e); err != nil || code != tt.code || !strings.Contains(e.Error, tt.want) {
			t.Errorf("POST %s %s = %d %s, want %d with error %q", tt.path, tt.body, code, body, tt.code, tt.want)
		}
	}
	resp, err := http.Get(r.base + api.PathAdd)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET %s = %d, want 405", api.PathAdd, resp.StatusCode)
	}
	after, _ := r.api.Topology(context.Background())
	if after.Revision != before.Revision || len(after.Edges) != 2 {
		t.Fatalf("refused requests changed the state: revision %d -> %d, %d edges", before.Revision, after.Revision, len(after.Edges))
	}
}

// 50 parallel adds of mutually overlapping CIDRs under different names:
// exactly one wins.
func TestConcurrentConflictingAdds(t *testing.T) {
	r := start(t, testConfig(t))
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, conflicts := 0, 0
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.api.Add(context.Background(), edgeset.Spec{
				Name:     fmt.Sprintf("e-%d", i),
				HostAddr: fmt.Sprintf("198.51.100.%d:58423", i+1),
				CIDR:     []string{"10.0.0.0/16", "10.0.0.0/8", "10.0.0.0/24"}[i%3],
			})
			mu.Lock()
			defer mu.Unlock()
			var se *api.StatusError
			switch {
			case err == nil:
				ok++
			case errors.As(err, &se) && se.Code == http.StatusConflict:
				conflicts++
			default:
				t.Errorf("add e-%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 || conflicts != 49 {
		t.Fatalf("%d accepted, %d conflicts; want 1 and 49", ok, conflicts)
	}
	list, _ := r.api.List(context.Background())
	if len(list) != 1 {
		t.Fatalf("%d edges stored, want 1", len(list))
	}
}

// followEdge connects as an edge agent would and follows the set.
func followEdge(t *testing.T, r *running, name, stateDir string) (*nats.Conn, *bus.Follower) {
	t.Helper()
	id, err := bus.LoadIdentity(filepath.Join(stateDir, name+".nk"), name)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect("nats://"+r.NATSAddr().String(), id.EdgeOptions(r.Secret())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f, err := bus.Follow(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc, f
}

// A late joiner gets the full set at the current revision, then each change.
func TestLateJoinerGetsSetThenChanges(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough...)
	_, f := followEdge(t, r, "gz-3", t.TempDir())
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	set, rev, _ := f.Set()
	topo, _ := r.api.Topology(context.Background())
	if len(set) != 3 || rev != topo.Revision {
		t.Fatalf("joined at rev %d with %d edges, want rev %d with 3", rev, len(set), topo.Revision)
	}
	res, err := r.api.Add(context.Background(), edgeset.Spec{Name: "bj-4", HostAddr: "198.51.100.20:58423", CIDR: "10.60.6.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	change := handleNext(t, f)
	set, rev, _ = f.Set()
	if rev != res.Revision || len(set) != 4 || !strings.Contains(change, "put edge bj-4") {
		t.Fatalf("after add: change %q rev %d (want %d) %d edges", change, rev, res.Revision, len(set))
	}
}

func handleNext(t *testing.T, f *bus.Follower) string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-f.Messages():
			change, err := f.Handle(m)
			if err != nil {
				t.Fatal(err)
			}
			if change != "" {
				return change
			}
		case <-deadline:
			t.Fatal("no change arrived")
		}
	}
}

// Heartbeats make an edge online with its applied revision; silence makes it offline.
func TestStatusFromHeartbeats(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough...)
	nc, _ := followEdge(t, r, "sz-1", t.TempDir())
	topo, _ := r.api.Topology(context.Background())
	st := bus.Status{Name: "sz-1", State: bus.StateReady, AppliedRevision: topo.Revision, Error: "", Conflicts: []string{"route 172.31.0.0/16 proto static"}}
	if err := bus.Publish(nc, bus.StatusSubject("sz-1"), st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		for _, e := range r.ListEdges() {
			if e.Name == "sz-1" {
				if e.Status != 1 || e.State != api.StateOnline || e.AppliedRevision != topo.Revision || len(e.Conflicts) != 1 || e.Key == "" {
					return fmt.Errorf("sz-1 = %+v", e)
				}
				return nil
			}
		}
		return errors.New("sz-1 missing")
	})
	// A not-yet-added edge shows up as pending.
	pnc, _ := followEdge(t, r, "bj-4", t.TempDir())
	if err := bus.Publish(pnc, bus.StatusSubject("bj-4"), bus.Status{Name: "bj-4", State: bus.StateNotRegistered}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		if p := r.Topology().Pending; len(p) != 1 || p[0] != "bj-4" {
			return fmt.Errorf("pending = %v", p)
		}
		return nil
	})
	// Silence: offline after bus.OfflineAfter.
	waitFor(t, bus.OfflineAfter+5*time.Second, func() error {
		if e := r.ListEdges()[2]; e.Name != "sz-1" || e.State != api.StateOffline || e.Status != 0 {
			return fmt.Errorf("sz-1 = %+v", e)
		}
		return nil
	})
}

func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A restart loses nothing: edges, revisions, pinned keys; followers resume.
func TestRestartLosesNothing(t *testing.T) {
	testRestart(t, testConfig(t))
}

// The same with the edge set in a real etcd.
func TestEtcdStore(t *testing.T) {
	cfg := testConfig(t)
	cfg.Etcd = []string{etcdtest.Start(t)}
	testRestart(t, cfg)
}

func testRestart(t *testing.T, cfg config.Controller) {
	r := start(t, cfg)
	addAll(t, r, walkthrough...)
	stateDir := t.TempDir()
	_, f := followEdge(t, r, "sz-1", stateDir)
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	before := r.ListEdges()
	topoBefore := r.Topology()
	natsAddr := r.NATSAddr().String()
	r.stop()

	// Same data dir and NATS port: the follower reconnects by itself.
	cfg.ListenAddr = natsAddr
	r2 := start(t, cfg)
	after := r2.ListEdges()
	if len(after) != len(before) {
		t.Fatalf("after restart %d edges, want %d", len(after), len(before))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.Name != b.Name || a.CIDR != b.CIDR || a.HostAddr != b.HostAddr || a.Revision != b.Revision || a.Key != b.Key {
			t.Fatalf("edge changed across restart: %+v -> %+v", b, a)
		}
	}
	// Key pins are writes too, but they do not move the edge set's revision:
	// the restarted controller publishes the revision its edges hold.
	if r2.Topology().Revision != topoBefore.Revision {
		t.Fatalf("revision %d -> %d across restart", topoBefore.Revision, r2.Topology().Revision)
	}
	// The pinned key survived: another key for sz-1 is refused.
	id, _ := bus.LoadIdentity(filepath.Join(t.TempDir(), "other.nk"), "sz-1")
	if nc, err := nats.Connect("nats://"+r2.NATSAddr().String(), append(id.EdgeOptions(r2.Secret()), nats.MaxReconnects(0))...); err == nil {
		nc.Close()
		t.Fatal("a second key for sz-1 was accepted after restart")
	}
	// A follower holding the current revision is told so, without the set.
	if change, err := f.Resync("reconnected"); err != nil || change != "" {
		t.Fatalf("resync at the current revision: change %q, %v; want no change", change, err)
	}
	if _, rev, _ := f.Set(); rev != topoBefore.Revision {
		t.Fatalf("follower moved to revision %d on an unchanged resync", rev)
	}
	// The follower resumes at the right revision: the next change follows on.
	res, err := r2.api.Add(context.Background(), edgeset.Spec{Name: "bj-4", HostAddr: "198.51.100.20:58423", CIDR: "10.60.6.0/24"})
	if err != nil || res.Revision <= topoBefore.Revision {
		t.Fatalf("add after restart: %+v %v", res, err)
	}
	waitFor(t, 10*time.Second, func() error {
		select {
		case m := <-f.Messages():
			if _, err := f.Handle(m); err != nil {
				return err
			}
		default:
		}
		if set, rev, _ := f.Set(); rev != res.Revision || len(set) != 4 {
			return fmt.Errorf("follower at rev %d with %d edges, want %d with 4", rev, len(set), res.Revision)
		}
		return nil
	})
}

// Deleting an edge forgets its pinned key, also for an edge that connected
// but was never added: the next key is pinned afresh.
func TestDeleteForgetsPinnedKey(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough[0])
	connect := func(name string) error {
		id, err := bus.LoadIdentity(filepath.Join(t.TempDir(), name+".nk"), name)
		if err != nil {
			return err
		}
		nc, err := nats.Connect("nats://"+r.NATSAddr().String(), append(id.EdgeOptions(r.Secret()), nats.MaxReconnects(0))...)
		if err == nil {
			nc.Close()
		}
		return err
	}
	ctx := context.Background()
	for _, name := range []string{"sz-1", "bj-4"} { // added, and only connected
		if err := connect(name); err != nil {
			t.Fatalf("first key for %s: %v", name, err)
		}
		if err := connect(name); err == nil {
			t.Fatalf("a second key for %s was accepted", name)
		}
	}
	if res, err := r.api.Del(ctx, "bj-4"); err != nil || res.Message != "edge bj-4 was not added; removed its pinned key" {
		t.Fatalf("del bj-4 = %+v, %v", res, err)
	}
	if res, err := r.api.Del(ctx, "sz-1"); err != nil || res.Message != "edge sz-1 deleted" {
		t.Fatalf("del sz-1 = %+v, %v", res, err)
	}
	for _, name := range []string{"sz-1", "bj-4"} {
		if err := connect(name); err != nil {
			t.Fatalf("a new key for %s after the delete: %v", name, err)
		}
	}
	var se *api.StatusError
	if _, err := r.api.Del(ctx, "gz-3"); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("del of an unknown edge = %v, want not found", err)
	}
}

// An edge whose last bus connection closes is offline at once, without
// waiting for bus.OfflineAfter; while another of its connections is open
// it stays online.
func TestOfflineWhenConnectionCloses(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough...)
	dir := t.TempDir()
	first, _ := followEdge(t, r, "sz-1", dir)
	second, _ := followEdge(t, r, "sz-1", dir) // the same key: a reconnect elsewhere, say
	marker, _ := followEdge(t, r, "hk-1", t.TempDir())
	for name, nc := range map[string]*nats.Conn{"sz-1": first, "hk-1": marker} {
		if err := bus.Publish(nc, bus.StatusSubject(name), bus.Status{Name: name, State: bus.StateReady}); err != nil {
			t.Fatal(err)
		}
	}
	state := func(name string) string {
		for _, e := range r.ListEdges() {
			if e.Name == name {
				return e.State
			}
		}
		return "missing"
	}
	is := func(name, want string) func() error {
		return func() error {
			if s := state(name); s != want {
				return fmt.Errorf("%s is %s, want %s", name, s, want)
			}
			return nil
		}
	}
	waitFor(t, 5*time.Second, is("sz-1", api.StateOnline))
	waitFor(t, 5*time.Second, is("hk-1", api.StateOnline))
	// The server reports closes in order: once hk-1's shows, sz-1's first
	// connection's close has been handled too.
	first.Close()
	marker.Close()
	waitFor(t, bus.HeartbeatInterval, is("hk-1", api.StateOffline))
	if s := state("sz-1"); s != api.StateOnline {
		t.Fatalf("sz-1 is %s with one of its two connections open, want online", s)
	}
	second.Close()
	waitFor(t, bus.HeartbeatInterval, is("sz-1", api.StateOffline))
}
