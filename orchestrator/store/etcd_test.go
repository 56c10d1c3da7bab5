package store_test

import (
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/store"
	"github.com/cframe/cframe/orchestrator/store/etcdtest"
)

func TestEtcdConformance(t *testing.T) {
	endpoint := etcdtest.Start(t)
	n := 0
	testConformance(t, func(t *testing.T) store.Store {
		n++ // a fresh prefix is a fresh, empty store
		return openEtcd(t, endpoint, fmt.Sprintf("/cframe-test/%d", n))
	})
}

// TestEtcdRestart kills etcd and restarts it on the same data directory:
// nothing is lost, revisions are unchanged and go on rising. It also checks
// the key layout under the default prefix.
func TestEtcdRestart(t *testing.T) {
	srv := etcdtest.New(t)
	s := openEtcd(t, srv.Endpoint, "")
	ctx := t.Context()
	rev := putEdge(t, s, edge("sz-1", "172.18.0.0/16"), 0)
	last := rev
	for _, e := range []bus.Edge{edge("hz-1", "172.31.0.0/16"), edge("bj-1", "172.20.0.0/16")} {
		last = putEdge(t, s, e, last)
	}
	if err := pinKey(ctx, s, "sz-1", "key-sz"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteEdge(ctx, "bj-1", last); err != nil {
		t.Fatal(err)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/cframe/v1/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, kv := range resp.Kvs {
		keys[string(kv.Key)] = string(kv.Value)
		if string(kv.Key) == "/cframe/v1/edges/sz-1" && kv.ModRevision != int64(rev) {
			t.Errorf("sz-1 at etcd revision %d, PutEdge returned %d", kv.ModRevision, rev)
		}
	}
	var got bus.Edge
	if err := json.Unmarshal([]byte(keys["/cframe/v1/edges/sz-1"]), &got); err != nil ||
		!reflect.DeepEqual(got, edge("sz-1", "172.18.0.0/16")) {
		t.Errorf("layout: %q (%v)", keys, err)
	}
	if len(keys) != 4 || keys["/cframe/v1/pins/sz-1"] != "key-sz" || keys["/cframe/v1/edges-revision"] == "" {
		t.Errorf("layout: %q", keys)
	}

	before := load(t, s)
	srv.Restart(t)
	s = openEtcd(t, srv.Endpoint, "")
	if after := load(t, s); !reflect.DeepEqual(after, before) {
		t.Fatalf("after restart:\n%+v\nbefore:\n%+v", after, before)
	}
	putEdge(t, s, edge("bj-1", "172.20.0.0/16"), before.Revision)
}

func TestEtcdUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	s, err := store.OpenEtcd(t.Context(), []string{addr}, "", 300*time.Millisecond)
	if err == nil {
		s.Close()
		t.Fatal("OpenEtcd succeeded with no etcd")
	}
	if want := "etcd " + addr + ": unreachable"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	t.Log(err)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("OpenEtcd took %v to fail", d)
	}
}

func openEtcd(t *testing.T, endpoint, prefix string) store.Store {
	t.Helper()
	s, err := store.OpenEtcd(t.Context(), []string{endpoint}, prefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
