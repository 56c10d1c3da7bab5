package embedded

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
)

// TestHandshakeGate: beyond the gate's slots a handshake is refused before
// anything is signed; a slot comes back when the handshake verifies, or
// after the gate's hold time for one that never completes.
func TestHandshakeGate(t *testing.T) {
	certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{{Secret: testSecret, Purpose: bus.PurposeController}}})
	if err != nil {
		t.Fatal(err)
	}
	g := newHandshakeGate(2, nil)
	g.hold = 50 * time.Millisecond
	cfg := g.wrap(certs.ServerTLS())
	hello := func() (*tls.Config, error) { return cfg.GetConfigForClient(&tls.ClientHelloInfo{}) }

	// Two handshakes in flight that never finish, a third refused.
	for range 2 {
		if _, err := hello(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hello(); !errors.Is(err, errBusy) {
		t.Fatalf("third handshake in flight: %v, want refused", err)
	}
	if g.refused.Load() != 1 {
		t.Fatalf("refused %d, want 1", g.refused.Load())
	}
	// Abandoned handshakes give their slots back after the hold time.
	for deadline := time.Now().Add(5 * time.Second); len(g.slots) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots still taken after the hold time", len(g.slots))
		}
	}

	// Real handshakes: each gives its slot back when it completes, so more
	// of them than slots, one after the other, all succeed.
	g.hold = time.Hour
	for i := range 5 {
		srv, cli := net.Pipe()
		errc := make(chan error, 1)
		go func() {
			conn := tls.Server(srv, cfg)
			errc <- conn.HandshakeContext(context.Background())
			srv.Close() // not conn's close_notify: nobody reads the pipe
		}()
		c := tls.Client(cli, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		if err := c.Handshake(); err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("handshake %d, server: %v", i, err)
		}
		cli.Close()
		if n := len(g.slots); n != 0 {
			t.Fatalf("handshake %d done, %d slots still taken", i, n)
		}
	}
	if !isRefusedHandshake("cid:7 - TLS handshake error: " + errBusy.Error()) {
		t.Error("the NATS server's line about a refused handshake is not recognised")
	}
}
