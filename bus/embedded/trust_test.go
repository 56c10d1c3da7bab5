package embedded

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/cframe/cframe/bus"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func newTestKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func issue(t *testing.T, key crypto.Signer, notBefore time.Time, lifetime time.Duration, proofs ...bus.Proof) *x509.Certificate {
	t.Helper()
	der, err := bus.IssueCertificate(key, notBefore, lifetime, proofs...)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// replay makes a certificate for key that carries orig's proofs and
// validity: what an attacker without the secret can do with a captured one.
func replay(t *testing.T, orig *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "cframe-controller"},
		NotBefore: orig.NotBefore, NotAfter: orig.NotAfter, URIs: orig.URIs, DNSNames: orig.DNSNames}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func controllerProof(secret string) bus.Proof {
	return bus.Proof{Secret: secret, Purpose: bus.PurposeController}
}

// The join-secret proof accepts the real controller's certificate and
// refuses every certificate an attacker without the secret can present.
func TestProof(t *testing.T) {
	now := time.Now()
	real := newTestKey(t)
	good := issue(t, real, now.Add(-time.Hour), CertLifetime, controllerProof("the-secret"), controllerProof("previous-secret"))
	for _, secret := range []string{"the-secret", "previous-secret"} {
		if err := bus.VerifyProof(good, bus.PurposeController, now, secret); err != nil {
			t.Fatalf("the real controller's certificate, secret %s: %v", secret, err)
		}
	}
	if err := bus.VerifyProof(good, bus.PurposeController, now, "wrong", "the-secret"); err != nil {
		t.Fatalf("one matching secret of several: %v", err)
	}
	attacker := newTestKey(t)
	for _, tt := range []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{"made without the secret", issue(t, attacker, now.Add(-time.Hour), CertLifetime), "carries no proof of the join secret"},
		{"made with another secret", issue(t, attacker, now.Add(-time.Hour), CertLifetime, controllerProof("another-secret")), "does not match"},
		{"expired", issue(t, real, now.Add(-2*CertLifetime), CertLifetime, controllerProof("the-secret")), "expired at"},
		{"not valid yet", issue(t, real, now.Add(time.Hour), CertLifetime, controllerProof("the-secret")), "not valid before"},
		{"valid one replayed for another key", replay(t, good, attacker), "does not match"},
		{"proof for another purpose", issue(t, real, now.Add(-time.Hour), CertLifetime, bus.Proof{Secret: "the-secret", Purpose: bus.PurposeRoute}), "does not match"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := bus.VerifyProof(tt.cert, bus.PurposeController, now, "the-secret")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want a refusal containing %q", err, tt.want)
			}
		})
	}
	// Only the validity inside the MAC counts: the same key with its
	// validity extended (a stolen old key made new) does not verify.
	stretched := replay(t, good, real)
	tmpl := *stretched
	tmpl.NotAfter = good.NotAfter.Add(CertLifetime)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, real.Public(), real)
	if err != nil {
		t.Fatal(err)
	}
	ext, _ := x509.ParseCertificate(der)
	if err := bus.VerifyProof(ext, bus.PurposeController, now, "the-secret"); err == nil {
		t.Fatal("a certificate with its validity extended still verified")
	}
}

// tlsServer answers TLS on loopback with cert, completing handshakes until
// the test ends; it returns its address.
func tlsServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

func tlsCert(t *testing.T, leaf *x509.Certificate, key crypto.Signer) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// Over a real handshake: the real certificate passes; the real certificate
// without its private key (replayed as is) fails in TLS itself; a refusal
// names the address and reaches Refused.
func TestDialTLS(t *testing.T) {
	now := time.Now()
	real, attacker := newTestKey(t), newTestKey(t)
	good := issue(t, real, now.Add(-time.Hour), CertLifetime, controllerProof("the-secret"))
	ctx := context.Background()
	var heard []string
	trust := bus.Trust{Secret: "the-secret", Refused: func(addr string, err error) { heard = append(heard, addr+": "+err.Error()) }}

	addr := tlsServer(t, tlsCert(t, good, real))
	c, err := trust.DialTLS(ctx, nil, "tcp", addr)
	if err != nil {
		t.Fatalf("real controller refused: %v", err)
	}
	c.Close()

	replayed := tlsServer(t, tlsCert(t, good, attacker))
	if _, err := trust.DialTLS(ctx, nil, "tcp", replayed); err == nil {
		t.Fatal("a server without the certificate's private key was accepted")
	}

	rogue := tlsServer(t, tlsCert(t, issue(t, attacker, now.Add(-time.Hour), CertLifetime), attacker))
	_, err = trust.DialTLS(ctx, nil, "tcp", rogue)
	var refused *bus.RefusedError
	if !errors.As(err, &refused) || refused.Server != rogue || !strings.Contains(err.Error(), "refused the controller at "+rogue+": its certificate carries no proof") {
		t.Fatalf("rogue: %v, want a bus.RefusedError naming %s", err, rogue)
	}
	if len(heard) != 1 || !strings.HasPrefix(heard[0], rogue+": ") {
		t.Fatalf("Refused heard %q, want one refusal of %s", heard, rogue)
	}
}

// A pinned CA applies the chain and the name; a pinned fingerprint the key.
func TestTrustCAAndFingerprint(t *testing.T) {
	now := time.Now()
	caKey, leafKey := newTestKey(t), newTestKey(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ops CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	addr := tlsServer(t, tlsCert(t, leaf, leafKey))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	otherPool := x509.NewCertPool()
	otherPool.AddCert(issue(t, newTestKey(t), now.Add(-time.Hour), CertLifetime))
	_, port, _ := net.SplitHostPort(addr)
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		trust bus.Trust
		addr  string
		want  string // "" = accepted
	}{
		{"pinned CA", bus.Trust{CA: pool, Secret: "ignored"}, addr, ""},
		{"pinned CA, another name", bus.Trust{CA: pool}, "localhost:" + port, "not valid for"},
		{"another CA", bus.Trust{CA: otherPool}, addr, "does not verify against the pinned CA"},
		{"the proof needs the extension", bus.Trust{Secret: "s"}, addr, "carries no proof"},
		{"pinned fingerprint", bus.Trust{Fingerprint: strings.ToUpper(strings.TrimPrefix(bus.Fingerprint(leaf), "sha256:"))}, addr, ""},
		{"another fingerprint", bus.Trust{Fingerprint: bus.Fingerprint(ca)}, addr, "not the pinned"},
		{"system roots", bus.Trust{}, addr, "system's CAs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.trust.DialTLS(ctx, nil, "tcp", tt.addr)
			if c != nil {
				c.Close()
			}
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	// The generated certificate as its own CA (nats --tlsca cert.pem): it
	// names loopback.
	certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{controllerProof("s")}})
	if err != nil {
		t.Fatal(err)
	}
	self := x509.NewCertPool()
	self.AddCert(certs.Current())
	gen := tlsServer(t, *certs.served.Load())
	if c, err := (bus.Trust{CA: self}).DialTLS(ctx, nil, "tcp", gen); err != nil {
		t.Fatalf("generated certificate pinned as a CA, dialled on loopback: %v", err)
	} else {
		c.Close()
	}
	if _, err := bus.ParseFingerprint("sha256:12ab"); err == nil {
		t.Fatal("a short fingerprint was accepted")
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// The generated key and certificate: 0600, stable across loads, reissued
// (same key) when the secrets change, a new key once the files are removed;
// an operator's named certificate is served instead.
func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	src := CertSource{Dir: dir, Proofs: []bus.Proof{controllerProof("a")}}
	c, err := LoadCerts(src)
	if err != nil {
		t.Fatal(err)
	}
	key, cert := generatedPaths(dir)
	for _, p := range []string{key, cert} {
		if m := mode(t, p); m != 0o600 {
			t.Fatalf("%s has mode %o, want 600", p, m)
		}
	}
	first := c.Current()
	if err := bus.VerifyProof(first, bus.PurposeController, time.Now(), "a"); err != nil {
		t.Fatal(err)
	}
	if again, err := LoadCerts(src); err != nil || !again.Current().Equal(first) {
		t.Fatalf("a second load issued another certificate (%v)", err)
	}
	if got, err := ReadCertificate(src); err != nil || !got.Equal(first) {
		t.Fatalf("ReadCertificate: %v", err)
	}

	// Rotation of the secret: both proved, then only the new one.
	src.Proofs = []bus.Proof{controllerProof("b"), controllerProof("a")}
	c2, err := LoadCerts(src)
	if err != nil {
		t.Fatal(err)
	}
	both := c2.Current()
	if both.Equal(first) || bus.Fingerprint(both) != bus.Fingerprint(first) {
		t.Fatal("changed secrets: want a new certificate for the same key")
	}
	for _, s := range []string{"a", "b"} {
		if err := bus.VerifyProof(both, bus.PurposeController, time.Now(), s); err != nil {
			t.Fatalf("during rotation, secret %s: %v", s, err)
		}
	}
	src.Proofs = []bus.Proof{controllerProof("b")}
	c3, err := LoadCerts(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.VerifyProof(c3.Current(), bus.PurposeController, time.Now(), "a"); err == nil {
		t.Fatal("the dropped secret still verifies")
	}

	// A new certificate and key: remove the files and reload.
	for _, p := range []string{key, cert} {
		os.Remove(p)
	}
	if err := c3.Reload(); err != nil {
		t.Fatal(err)
	}
	if bus.Fingerprint(c3.Current()) == bus.Fingerprint(first) {
		t.Fatal("removed key: reload kept the old key")
	}
	if err := bus.VerifyProof(c3.Current(), bus.PurposeController, time.Now(), "b"); err != nil {
		t.Fatal(err)
	}

	// The operator's certificate is what clients see.
	opKey := newTestKey(t)
	op := issue(t, opKey, time.Now().Add(-time.Hour), time.Hour*24*90)
	opDir := t.TempDir()
	certFile, keyFile := filepath.Join(opDir, "c.pem"), filepath.Join(opDir, "k.pem")
	writePEM(t, certFile, "CERTIFICATE", op.Raw)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(opKey)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	unused := filepath.Join(t.TempDir(), "unused")
	named, err := LoadCerts(CertSource{Dir: unused, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if !named.Current().Equal(op) {
		t.Fatal("named certificate not served")
	}
	if _, err := os.Stat(unused); err == nil {
		t.Fatal("a certificate was generated although one is named")
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Cluster routes admit a peer whose certificate proves the cluster's
// secret and refuse one that proves another.
func TestRouteTLS(t *testing.T) {
	// Either end may refuse first (in TLS 1.3 the dialler checks the
	// acceptor's certificate before sending its own).
	refused := make(chan error, 1)
	start := func(secret string, routes []*url.URL) *server.Server {
		certs, err := LoadCerts(CertSource{Dir: t.TempDir(), Proofs: []bus.Proof{controllerProof("join"), {Secret: secret, Purpose: bus.PurposeRoute}}})
		if err != nil {
			t.Fatal(err)
		}
		cfg := certs.RouteTLS(secret)
		verify := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				select {
				case refused <- err:
				default:
				}
			}
			return err
		}
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, Routes: routes,
			Cluster: server.ClusterOpts{Name: "cframe", Host: "127.0.0.1", Port: -1, TLSConfig: cfg, TLSTimeout: 5}})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("server did not start")
		}
		return s
	}
	a := start("cluster-secret", nil)
	seed, err := url.Parse(fmt.Sprintf("nats://%s", a.ClusterAddr()))
	if err != nil {
		t.Fatal(err)
	}
	b := start("cluster-secret", []*url.URL{seed})
	start("another-secret", []*url.URL{seed})
	select {
	case err := <-refused:
		if !strings.Contains(err.Error(), "proof of the cluster secret does not match") {
			t.Fatalf("refusal: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the peer with another secret was never refused")
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.NumRoutes() == 0 || b.NumRoutes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("peers with the cluster's secret formed no route")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := a.NumRoutes(); n != b.NumRoutes() {
		t.Fatalf("routes: a has %d, b %d; the refused peer must have none", n, b.NumRoutes())
	}
}
