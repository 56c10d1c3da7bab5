package embedded

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"github.com/cframe/cframe/bus"
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

// startClustered starts one server of a cluster whose peers are peers,
// proving the cluster secret derived from the join secret.
func startClustered(t *testing.T, name, secret, addr string, peers []string, log *syncBuffer) *Server {
	t.Helper()
	route := bus.ClusterSecret(secret)
	certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{{Secret: secret, Purpose: bus.PurposeController}, {Secret: route, Purpose: bus.PurposeRoute}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartServer(ServerConfig{
		ListenAddr: "127.0.0.1:0", Name: name, StoreDir: t.TempDir(), Secret: secret, Pins: &mapPins{pins: map[string]string{}},
		TLS:     certs.ServerTLS(),
		Cluster: &ClusterConfig{Addr: addr, Peers: peers, TLS: certs.RouteTLS(route)},
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

// Three servers holding the cluster's secret form one cluster over TLS
// routes: a message published on one reaches a subscriber on another. A
// server with another secret is refused on the cluster port, and the
// refusal is logged by both ends.
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
	if _, err := sub.ChanSubscribe(bus.SubjectDelta, got); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() error {
		if err := pub.Publish(bus.SubjectDelta, []byte("{}")); err != nil {
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
	// And one that completes the handshake whatever the controller's
	// certificate, with a certificate of its own that proves nothing.
	certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{{Secret: testSecret, Purpose: bus.PurposeController}}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", peers[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return certs.ServerTLS().GetCertificate(nil)
	}})
	if err := tc.Handshake(); err == nil {
		// TLS 1.3: the server's refusal arrives with the first read.
		_, err = tc.Read(make([]byte, 1))
	}
	waitUntil(t, 10*time.Second, func() error {
		if !strings.Contains(logs[0].String(), `msg="refused cluster connection" reason="refused a cluster peer: its certificate's proof of the cluster secret does not match`) {
			return fmt.Errorf("c1 logged no refusal of the outsider:\n%s", logs[0].String())
		}
		if !strings.Contains(outLog.String(), `msg="refused cluster connection" reason="refused a cluster peer: `) {
			return fmt.Errorf("the server with another secret refused no controller:\n%s", outLog.String())
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
