package embedded

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cframe/cframe/bus"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

const testSecret = "test-join-secret"

// mapPins pins the first key per name, like the controller does.
type mapPins struct {
	mu   sync.Mutex
	pins map[string]string
}

func (p *mapPins) Pin(name, key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k, ok := p.pins[name]; ok && k != key {
		return fmt.Errorf("edge %s is pinned to another key", name)
	}
	p.pins[name] = key
	return nil
}

func startServer(t *testing.T) *Server {
	t.Helper()
	return startServerWith(t, ServerConfig{Secret: testSecret})
}

// startServerWith starts a server on loopback with cfg's secrets and a
// generated certificate proving them.
func startServerWith(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	var proofs []bus.Proof
	for _, s := range append([]string{cfg.Secret}, cfg.PreviousSecrets...) {
		proofs = append(proofs, bus.Proof{Secret: s, Purpose: bus.PurposeController})
	}
	certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: proofs})
	if err != nil {
		t.Fatal(err)
	}
	cfg.ListenAddr, cfg.StoreDir, cfg.TLS, cfg.Pins = "127.0.0.1:0", t.TempDir(), certs.ServerTLS(), &mapPins{pins: map[string]string{}}
	s, err := StartServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func identity(t *testing.T, dir, name string) *bus.Identity {
	t.Helper()
	id, err := bus.LoadIdentity(filepath.Join(dir, name+".nk"), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// connectEdge connects as an edge; errs receives asynchronous errors such
// as permission violations.
func connectEdge(t *testing.T, s *Server, id *bus.Identity, secret string) (*nats.Conn, chan error, error) {
	t.Helper()
	errs := make(chan error, 16)
	opts := append(id.EdgeOptions(secret), nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	nc, err := nats.Connect(s.URL(), opts...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, errs, err
}

func internal(t *testing.T, s *Server) *nats.Conn {
	t.Helper()
	nc, err := s.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func wantAuthError(t *testing.T, err error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: connected, want an authorization error", what)
	}
	if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("%s: %v, want an authorization error", what, err)
	}
}

func TestRefusesUnauthenticatedAndWrongCredentials(t *testing.T) {
	s := startServer(t)
	tlsOK := bus.ClientOptions(bus.Trust{Secret: testSecret}, nil)
	_, err := nats.Connect(s.URL(), append(tlsOK, nats.MaxReconnects(0))...)
	wantAuthError(t, err, "no credentials")
	_, err = nats.Connect(s.URL(), append(tlsOK, nats.UserInfo("sz-1", "guess"), nats.MaxReconnects(0))...)
	wantAuthError(t, err, "user and password without a key")
	_, err = nats.Connect(s.URL(), append(tlsOK, nats.Token("guess"), nats.MaxReconnects(0))...)
	wantAuthError(t, err, "wrong token")
	_, err = nats.Connect(s.URL(), append(tlsOK, nats.UserInfo(bus.AuditUser, "guess"), nats.MaxReconnects(0))...)
	wantAuthError(t, err, "wrong audit password")

	dir := t.TempDir()
	// With another secret the edge refuses the server first; trusting the
	// server anyway, its join proof is refused.
	_, _, err = connectEdge(t, s, identity(t, dir, "sz-1"), "wrong-secret")
	var refused *bus.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("edge with another secret: %v, want it to refuse the server", err)
	}
	_, err = nats.Connect(s.URL(), append(identity(t, dir, "sz-1").EdgeOptions("wrong-secret"), append(tlsOK, nats.MaxReconnects(0))...)...)
	wantAuthError(t, err, "wrong join secret")
	_, _, err = connectEdge(t, s, identity(t, dir, "Bad.Name"), testSecret)
	wantAuthError(t, err, "invalid edge name")
	if _, _, err := connectEdge(t, s, identity(t, dir, "sz-1"), testSecret); err != nil {
		t.Fatalf("valid edge refused: %v", err)
	}
}

func TestPinnedKeyRefusesAnotherKey(t *testing.T) {
	s := startServer(t)
	first := identity(t, t.TempDir(), "sz-1")
	if _, _, err := connectEdge(t, s, first, testSecret); err != nil {
		t.Fatal(err)
	}
	_, _, err := connectEdge(t, s, identity(t, t.TempDir(), "sz-1"), testSecret)
	wantAuthError(t, err, "second key for a pinned name")
	// The pinned key itself keeps working (an agent restart reconnects).
	if _, _, err := connectEdge(t, s, first, testSecret); err != nil {
		t.Fatalf("pinned key refused on reconnect: %v", err)
	}
}

func TestLoadIdentityIsStable(t *testing.T) {
	dir := t.TempDir()
	a, b := identity(t, dir, "sz-1"), identity(t, dir, "sz-1")
	if a.Public != b.Public || !strings.HasPrefix(a.Public, "U") {
		t.Fatalf("identity not stable across loads: %s vs %s", a.Public, b.Public)
	}
}

// An edge may publish only its own status; everything else is refused and
// never reaches a subscriber.
func TestEdgePermissions(t *testing.T) {
	s := startServer(t)
	ctl := internal(t, s)
	statuses := make(chan *nats.Msg, 16)
	if _, err := ctl.ChanSubscribe(bus.SubjectStatusAll, statuses); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, errs, err := connectEdge(t, s, identity(t, t.TempDir(), "sz-1"), testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(nc, bus.StatusSubject("hk-1"), bus.Status{Name: "hk-1"}); err != nil {
		t.Fatal(err)
	}
	waitPermissionError(t, errs, bus.StatusSubject("hk-1"))
	for _, subj := range []string{bus.SubjectDelta, bus.SubjectEventsAll + "x", "$JS.API.>"} {
		_ = nc.Publish(subj, []byte("{}"))
		waitPermissionError(t, errs, subj)
	}
	if _, err := nc.SubscribeSync(bus.SubjectEventsAll); err != nil {
		t.Fatal(err)
	}
	waitPermissionError(t, errs, bus.SubjectEventsAll)
	if _, err := nc.SubscribeSync(bus.StatusSubject("hk-1")); err != nil {
		t.Fatal(err)
	}
	waitPermissionError(t, errs, bus.StatusSubject("hk-1"))

	// Its own status goes through, and is the only one that arrives.
	if err := bus.Publish(nc, bus.StatusSubject("sz-1"), bus.Status{Name: "sz-1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-statuses:
		if m.Subject != bus.StatusSubject("sz-1") {
			t.Fatalf("controller received %s, want only sz-1's own status", m.Subject)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("own status never arrived")
	}
	select {
	case m := <-statuses:
		t.Fatalf("unexpected message on %s", m.Subject)
	default:
	}
}

func waitPermissionError(t *testing.T, errs chan error, subject string) {
	t.Helper()
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") || !strings.Contains(err.Error(), subject) {
			t.Fatalf("got %v, want a permissions violation for %s", err, subject)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no permissions violation for %s", subject)
	}
}

func TestAuditUserReadsEventsOnly(t *testing.T) {
	s := startServer(t)
	errs := make(chan error, 4)
	nc, err := nats.Connect(s.URL(), append(bus.ClientOptions(bus.Trust{Secret: testSecret}, nil), nats.UserInfo(bus.AuditUser, bus.AuditPassword(testSecret)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(bus.SubjectEventsAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(internal(t, s), bus.EventSubject(bus.EventEdgeAdded, "sz-1"), bus.Event{Kind: bus.EventEdgeAdded, Edge: "sz-1"}); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var e bus.Event
	if err := json.Unmarshal(m.Data, &e); err != nil || e.Edge != "sz-1" {
		t.Fatalf("event = %s (%v)", m.Data, err)
	}
	_ = nc.Publish(bus.EventSubject(bus.EventEdgeAdded, "x"), []byte("{}"))
	waitPermissionError(t, errs, bus.EventSubject(bus.EventEdgeAdded, "x"))
	if _, err := nc.SubscribeSync(bus.SubjectDelta); err != nil {
		t.Fatal(err)
	}
	waitPermissionError(t, errs, bus.SubjectDelta)
}

func TestJoinProofBindsNameAndKey(t *testing.T) {
	p := bus.JoinProof("s", "sz-1", "UKEY")
	for _, other := range []string{bus.JoinProof("t", "sz-1", "UKEY"), bus.JoinProof("s", "hk-1", "UKEY"), bus.JoinProof("s", "sz-1", "UOTHER")} {
		if other == p {
			t.Fatal("join proof does not depend on secret, name and key")
		}
	}
	if strings.Contains(p, "s") {
		t.Fatalf("join proof %q is not hex: it may leak the secret", p)
	}
}
