package store_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
)

func TestJetStreamConformance(t *testing.T) {
	testConformance(t, func(t *testing.T) store.Store {
		_, js := runNATS(t, t.TempDir())
		return openJS(t, js)
	})
}

// TestJetStreamRestart stops the server and starts a new one on the same
// store directory: nothing is lost, revisions are unchanged and go on rising.
func TestJetStreamRestart(t *testing.T) {
	dir := t.TempDir()
	srv, js := runNATS(t, dir)
	s := openJS(t, js)
	ctx := t.Context()
	var rev uint64
	for _, e := range []bus.Edge{edge("sz-1", "172.18.0.0/16"), edge("hz-1", "172.31.0.0/16"), edge("bj-1", "172.20.0.0/16")} {
		rev = putEdge(t, s, e, rev)
	}
	if err := pinKey(ctx, s, "sz-1", "key-sz"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteEdge(ctx, "bj-1", rev); err != nil {
		t.Fatal(err)
	}
	before := load(t, s)
	srv.Shutdown()
	srv.WaitForShutdown()

	_, js = runNATS(t, dir)
	s = openJS(t, js)
	if after := load(t, s); !reflect.DeepEqual(after, before) {
		t.Fatalf("after restart:\n%+v\nbefore:\n%+v", after, before)
	}
	if _, err := s.DeleteEdge(ctx, "bj-1", before.Revision); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted edge came back: DeleteEdge = %v", err)
	}
	putEdge(t, s, edge("bj-1", "172.20.0.0/16"), before.Revision)
}

// TestJetStreamLayout checks the bucket's configuration and key layout,
// which operators see through NATS tooling.
func TestJetStreamLayout(t *testing.T) {
	_, js := runNATS(t, t.TempDir())
	s := openJS(t, js)
	ctx := t.Context()
	rev := putEdge(t, s, edge("sz-1", "172.18.0.0/16"), 0)
	if err := pinKey(ctx, s, "sz-1", "key-sz"); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, "cframe")
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := status.Config(); cfg.History != 1 || cfg.Storage != jetstream.FileStorage {
		t.Errorf("bucket history %d storage %v, want 1 and file", cfg.History, cfg.Storage)
	}
	e, err := kv.Get(ctx, "edges.sz-1")
	if err != nil {
		t.Fatal(err)
	}
	var got bus.Edge
	if err := json.Unmarshal(e.Value(), &got); err != nil || !reflect.DeepEqual(got, edge("sz-1", "172.18.0.0/16")) || e.Revision() != rev {
		t.Errorf("edges.sz-1 = %s at revision %d (%v), want the edge with revision 0 inside, at %d", e.Value(), e.Revision(), err, rev)
	}
	p, err := kv.Get(ctx, "pins.sz-1")
	if err != nil || string(p.Value()) != "key-sz" {
		t.Errorf("pins.sz-1 = %v, %v", p, err)
	}
}

// runNATS starts an in-process NATS server with JetStream storing in dir,
// as the controller runs it, and connects to it.
func runNATS(t *testing.T, dir string) (*server.Server, jetstream.JetStream) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		JetStream:  true,
		StoreDir:   dir,
		SyncAlways: true,
		DontListen: true,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready after 10s")
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return srv, js
}

func openJS(t *testing.T, js jetstream.JetStream) store.Store {
	t.Helper()
	s, err := store.OpenJetStream(t.Context(), js, "cframe", 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
