package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/orchestrator/store"
)

// allowAll pins every key (the store tests connect in-process only).
type allowAll struct{}

func (allowAll) Pin(string, string) error { return nil }

// runCluster starts three clustered servers, as three controllers run
// them, and returns a JetStream context on each.
func runCluster(t *testing.T) []jetstream.JetStream {
	t.Helper()
	const secret = "store-cluster-test"
	var peers []string
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, l.Addr().String())
		l.Close()
	}
	route := bus.ClusterSecret(secret)
	var out []jetstream.JetStream
	for i, addr := range peers {
		certs, err := embedded.LoadCerts(embedded.CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{{Secret: secret, Purpose: bus.PurposeController}, {Secret: route, Purpose: bus.PurposeRoute}}})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := embedded.StartServer(embedded.ServerConfig{
			ListenAddr: "127.0.0.1:0", Name: fmt.Sprintf("c%d", i+1), StoreDir: t.TempDir(), Secret: secret,
			TLS: certs.ServerTLS(), Pins: allowAll{},
			Cluster: &embedded.ClusterConfig{Addr: addr, Peers: peers, TLS: certs.RouteTLS(route)},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		nc, err := srv.Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, js)
	}
	return out
}

// openReplicated opens a bucket replicated on the three servers, waiting
// for the cluster to form.
func openReplicated(t *testing.T, js jetstream.JetStream, bucket string) store.Store {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		s, err := store.OpenJetStream(ctx, js, bucket, 3)
		cancel()
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The Store contract holds for a bucket replicated on three servers, where
// conditional writes are checked by the stream's leader before the write
// is proposed to the replicas.
func TestJetStreamClusterConformance(t *testing.T) {
	js := runCluster(t)
	n := 0
	testConformance(t, func(t *testing.T) store.Store {
		n++
		return openReplicated(t, js[n%3], fmt.Sprintf("conformance-%d", n))
	})
}

// In a replicated stream, a write retried with the same content at the
// same expected revision — its acknowledgement lost when its leader died —
// is acknowledged with the revision it was stored at; another write at
// that revision is still a conflict.
func TestJetStreamClusterRetriedWrite(t *testing.T) {
	js := runCluster(t)
	s := openReplicated(t, js[0], "retry")
	ctx := t.Context()
	base := putEdge(t, s, edge("a", "10.1.0.0/16"), 0)
	rev := putEdge(t, s, edge("b", "10.2.0.0/16"), base)
	other := openReplicated(t, js[1], "retry")
	if again, err := other.PutEdge(ctx, edge("b", "10.2.0.0/16"), base); err != nil || again != rev {
		t.Fatalf("retried put = %d, %v; want the first's revision %d", again, err, rev)
	}
	if _, err := other.PutEdge(ctx, edge("b", "10.3.0.0/16"), base); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("another put at the old revision = %v, want ErrConflict", err)
	}
	if st := load(t, s); st.Revision != rev || len(st.Edges) != 2 {
		t.Fatalf("after the retries: %+v", st)
	}
}
