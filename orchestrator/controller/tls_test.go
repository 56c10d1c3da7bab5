package controller

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

// connect joins the bus as edge name with join secret joinSecret, trusting
// the controller by trustSecret.
func connect(r *running, dir, name, joinSecret, trustSecret string) (*nats.Conn, error) {
	id, err := bus.LoadIdentity(filepath.Join(dir, name+".nk"), name)
	if err != nil {
		return nil, err
	}
	opts := append(id.EdgeOptions(joinSecret), bus.ClientOptions(bus.Trust{Secret: trustSecret}, nil)...)
	return nats.Connect("nats://"+r.NATSAddr().String(), append(opts, nats.MaxReconnects(0))...)
}

// The API answers HTTPS on api_addr with the bus's certificate, and the
// audit credentials carry its fingerprint; `cframe-controller fingerprint`
// reads the same.
func TestAPIOverHTTPS(t *testing.T) {
	cfg := testConfig(t)
	r := start(t, cfg)
	addAll(t, r, walkthrough...)
	c := api.NewClient("https://"+r.APIAddr().String(), "")
	c.Trust(bus.Trust{Secret: r.Secret()}, nil)
	list, err := c.List(context.Background())
	if err != nil || len(list) != 3 {
		t.Fatalf("list over HTTPS: %d edges, %v", len(list), err)
	}
	fp, err := Fingerprint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := c.Credentials(context.Background())
	if err != nil || creds.Fingerprint != fp {
		t.Fatalf("credentials fingerprint %q (%v), want %s", creds.Fingerprint, err, fp)
	}
	c.Trust(bus.Trust{Fingerprint: fp}, nil)
	if _, err := c.List(context.Background()); err != nil {
		t.Fatalf("pinned fingerprint: %v", err)
	}
	c.Trust(bus.Trust{Secret: "another"}, nil)
	var refused *bus.RefusedError
	if _, err := c.List(context.Background()); !errors.As(err, &refused) {
		t.Fatalf("another secret: %v, want a refusal", err)
	}
}

// A new certificate (files removed, reload) needs no edge touched: new
// connections verify it with the join secret alone, established ones stay.
func TestCertificateRotation(t *testing.T) {
	cfg := testConfig(t)
	r := start(t, cfg)
	addAll(t, r, walkthrough...)
	dir := t.TempDir()
	old, err := connect(r, dir, "sz-1", r.Secret(), r.Secret())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	before, _ := Fingerprint(cfg)
	for _, f := range []string{"key.pem", "cert.pem"} {
		if err := os.Remove(filepath.Join(cfg.DataDir, "tls", f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	after, _ := Fingerprint(cfg)
	if after == before {
		t.Fatal("reload kept the old key")
	}
	nc, err := connect(r, dir, "hk-1", r.Secret(), r.Secret())
	if err != nil {
		t.Fatalf("new certificate refused by an edge with the join secret: %v", err)
	}
	defer nc.Close()
	cs, err := nc.TLSConnectionState()
	if err != nil {
		t.Fatal(err)
	}
	if got := bus.Fingerprint(cs.PeerCertificates[0]); got != after {
		t.Fatalf("new connection saw %s, want the new certificate %s", got, after)
	}
	if err := old.Flush(); err != nil || !old.IsConnected() {
		t.Fatalf("established connection dropped by the reload: %v", err)
	}
}

// Rotating the join secret: with the old one in previous_secrets both are
// accepted both ways (an edge still on the old secret reconnects, one on the
// new joins); once it is dropped, the old secret gets nothing.
func TestJoinSecretRotation(t *testing.T) {
	cfg := testConfig(t)
	cfg.Secret = "old-secret-0123456789"
	r := start(t, cfg)
	addAll(t, r, walkthrough...)
	dir := t.TempDir()
	_, f := followEdge(t, r, "sz-1", dir)
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	cfg.ListenAddr = r.NATSAddr().String()
	r.stop()

	cfg.Secret, cfg.PreviousSecrets = "new-secret-0123456789", []string{"old-secret-0123456789"}
	r2 := start(t, cfg)
	// The edge on the old secret reconnects by itself and follows.
	waitFor(t, 10*time.Second, func() error {
		_, err := f.Resync("reconnected")
		return err
	})
	nc, err := connect(r2, dir, "hk-1", "new-secret-0123456789", "new-secret-0123456789")
	if err != nil {
		t.Fatalf("edge on the new secret during rotation: %v", err)
	}
	nc.Close()
	r2.stop()

	cfg.PreviousSecrets = nil
	r3 := start(t, cfg)
	_, err = connect(r3, dir, "sz-1", "old-secret-0123456789", "old-secret-0123456789")
	var refused *bus.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "proof of the join secret does not match") {
		t.Fatalf("edge on the dropped secret: %v, want it to refuse the controller", err)
	}
	_, err = connect(r3, dir, "sz-1", "old-secret-0123456789", "new-secret-0123456789")
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("join proof of the dropped secret: %v, want an authorization error", err)
	}
	if nc, err := connect(r3, dir, "sz-1", "new-secret-0123456789", "new-secret-0123456789"); err != nil {
		t.Fatalf("edge moved to the new secret: %v", err)
	} else {
		nc.Close()
	}
}
