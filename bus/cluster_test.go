package bus

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// syncBuffer collects a logger's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
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

// startClustered starts one server of a cluster whose peers are peers.
func startClustered(t *testing.T, name, secret, addr string, peers []string, log *syncBuffer) *Server {
	t.Helper()
	s, err := StartServer(ServerConfig{
		ListenAddr: "127.0.0.1:0", Name: name, StoreDir: t.TempDir(), Secret: secret, Pins: &mapPins{pins: map[string]string{}},
		Cluster: &ClusterConfig{Addr: addr, Peers: peers},
		Log:     slog.New(slog.NewTextHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Three servers holding the join secret form one cluster: a message
// published on one reaches a subscriber on another. A server with another
// secret is refused on the cluster port, and the refusal is logged.
func TestClusterRoutes(t *testing.T) {
	peers := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	logs := make([]*syncBuffer, 3)
	srvs := make([]*Server, 3)
	for i := range srvs {
		logs[i] = &syncBuffer{}
		srvs[i] = startClustered(t, fmt.Sprintf("c%d", i+1), testSecret, peers[i], peers, logs[i])
	}
	for _, s := range srvs {
		waitUntil(t, 10*time.Second, func() error {
			if reach, total := s.Controllers(); !slices.Equal(reach, []string{"c1", "c2", "c3"}) || total != 3 {
				return fmt.Errorf("%s reaches %v of %d", s.ns.Name(), reach, total)
			}
			return nil
		})
	}
	sub, pub := internal(t, srvs[2]), internal(t, srvs[0])
	got := make(chan *nats.Msg, 1)
	if _, err := sub.ChanSubscribe(SubjectDelta, got); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() error {
		if err := pub.Publish(SubjectDelta, []byte("{}")); err != nil {
			return err
		}
		select {
		case <-got:
			return nil
		case <-time.After(100 * time.Millisecond):
			return fmt.Errorf("a delta published on c1 did not reach c3")
		}
	})

	// An outsider: a server with the right addresses but another secret.
	outLog := &syncBuffer{}
	outAddr := freeAddr(t)
	outsider := startClustered(t, "outsider", "another-secret", outAddr, append(slices.Clone(peers), outAddr), outLog)
	waitUntil(t, 10*time.Second, func() error {
		for _, l := range logs {
			if !strings.Contains(l.String(), "refused cluster connection: it does not hold this cluster's secret") {
				return fmt.Errorf("no refusal logged by every controller")
			}
		}
		return nil
	})
	if reach, _ := outsider.Controllers(); !slices.Equal(reach, []string{"outsider"}) {
		t.Fatalf("the outsider reaches %v", reach)
	}
	for _, s := range srvs {
		if reach, _ := s.Controllers(); slices.Contains(reach, "outsider") {
			t.Fatalf("%s admitted the outsider: %v", s.ns.Name(), reach)
		}
	}
}

// Quorum is a majority.
func TestQuorum(t *testing.T) {
	for n, want := range map[int]int{1: 1, 3: 2, 4: 3, 5: 3} {
		if got := Quorum(n); got != want {
			t.Errorf("Quorum(%d) = %d, want %d", n, got, want)
		}
	}
}
