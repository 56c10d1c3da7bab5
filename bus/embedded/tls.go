package embedded

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/cframe/cframe/bus"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cframe/cframe/internal/atomicfile"
)

// Lifetime of a generated certificate; it is reissued (same key) once less
// than certRenewBefore of it is left, at a reload.
const (
	CertLifetime    = 365 * 24 * time.Hour
	certRenewBefore = 120 * 24 * time.Hour
	// certBackdate covers clients whose clock is behind the controller's.
	certBackdate = time.Hour
)

// CertSource says where the controller's certificate comes from.
type CertSource struct {
	// Dir holds the generated key and certificate (key.pem, cert.pem, mode
	// 0600), created at first start.
	Dir string
	// CertFile and KeyFile name the operator's own certificate (PEM). When
	// set, clients see it instead of the generated one.
	CertFile, KeyFile string
	// Proofs are what the generated certificate proves: the join secrets
	// (bus.PurposeController) and, for cluster routes, the cluster's secrets
	// (bus.PurposeRoute).
	Proofs []bus.Proof
	Log    *slog.Logger
}

// Certs holds the controller's TLS certificates and swaps them on Reload
// without dropping a connection: clients see the operator's certificate if
// one is named, else the generated one; cluster routes always use the
// generated one (it carries the route proofs).
type Certs struct {
	src CertSource
	mu  sync.Mutex // serialises Reload
	// served is what clients see; proof is the generated certificate
	// (nil when an operator certificate is named and no route proof is
	// wanted).
	served, proof atomic.Pointer[tls.Certificate]
}

// LoadCerts loads the certificates, generating the key and certificate in
// src.Dir on first start.
func LoadCerts(src CertSource) (*Certs, error) {
	if src.Log == nil {
		src.Log = slog.New(slog.DiscardHandler)
	}
	c := &Certs{src: src}
	return c, c.Reload()
}

// Paths of the generated key and certificate in dir.
func generatedPaths(dir string) (key, cert string) {
	return filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
}

// Reload re-reads the certificate files (SIGHUP): a replaced operator
// certificate, or a removed generated key or certificate (generated anew),
// takes effect for every new connection. A generated certificate is also
// reissued when it nears its end or its proofs differ from src.Proofs.
// On error the certificates in use stay.
func (c *Certs) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	wantProof := c.src.CertFile == ""
	for _, p := range c.src.Proofs {
		wantProof = wantProof || p.Purpose == bus.PurposeRoute
	}
	if wantProof {
		cert, err := c.loadGenerated()
		if err != nil {
			return err
		}
		c.swap(&c.proof, cert, filepath.Join(c.src.Dir, "cert.pem"))
	}
	if c.src.CertFile == "" {
		c.served.Store(c.proof.Load())
		return nil
	}
	cert, err := tls.LoadX509KeyPair(c.src.CertFile, c.src.KeyFile)
	if err != nil {
		return fmt.Errorf("tls_cert/tls_key: %w", err)
	}
	if left := time.Until(cert.Leaf.NotAfter); left < 30*24*time.Hour {
		c.src.Log.Warn("the TLS certificate expires soon: replace it and send SIGHUP", "path", c.src.CertFile, "not_after", cert.Leaf.NotAfter)
	}
	c.swap(&c.served, &cert, c.src.CertFile)
	return nil
}

// swap installs cert in slot and logs it when it changed.
func (c *Certs) swap(slot *atomic.Pointer[tls.Certificate], cert *tls.Certificate, path string) {
	if old := slot.Load(); old != nil && bytes.Equal(old.Certificate[0], cert.Certificate[0]) {
		return
	}
	slot.Store(cert)
	c.src.Log.Info("TLS certificate in use", "path", path, "fingerprint", bus.Fingerprint(cert.Leaf), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// loadGenerated returns the generated certificate, creating the key and
// (re)issuing the certificate as needed.
func (c *Certs) loadGenerated() (*tls.Certificate, error) {
	keyPath, certPath := generatedPaths(c.src.Dir)
	if err := os.MkdirAll(c.src.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	key, err := readKey(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		if key, err = newKey(keyPath); err == nil {
			c.src.Log.Info("generated a TLS key", "path", keyPath)
		}
	}
	if err != nil {
		return nil, err
	}
	cert, why := readCert(certPath, key)
	if why == "" && !bus.HasExactProofs(cert.Leaf, c.src.Proofs) {
		why = "the secrets it proves changed"
	}
	if why == "" && time.Until(cert.Leaf.NotAfter) < certRenewBefore {
		why = "it nears its end"
	}
	if why == "" {
		return cert, nil
	}
	der, err := bus.IssueCertificate(key, time.Now().Add(-certBackdate), CertLifetime, c.src.Proofs...)
	if err != nil {
		return nil, fmt.Errorf("tls: issue certificate: %w", err)
	}
	if err := atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	c.src.Log.Info("issued a TLS certificate", "path", certPath, "why", why)
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("tls key %s: not PEM", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tls key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("tls key %s: not a signing key", path)
	}
	return s, nil
}

func newKey(path string) (crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return k, nil
}

// readCert reads the generated certificate; why says what is wrong with
// it ("" when it is usable with key).
func readCert(path string, key crypto.Signer) (cert *tls.Certificate, why string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "there is none"
	}
	if err != nil {
		return nil, err.Error()
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, "it is not PEM"
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, err.Error()
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil || !bytes.Equal(spki, leaf.RawSubjectPublicKeyInfo) {
		return nil, "it is for another key"
	}
	return &tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key, Leaf: leaf}, ""
}

// ReadCertificate returns the certificate clients of src see, without
// generating anything (for `cframe-controller fingerprint`).
func ReadCertificate(src CertSource) (*x509.Certificate, error) {
	path := src.CertFile
	if path == "" {
		_, path = generatedPaths(src.Dir)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && src.CertFile == "" {
		return nil, fmt.Errorf("no certificate in %s yet: the controller generates it at its first start", src.Dir)
	}
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Current is the certificate clients see now.
func (c *Certs) Current() *x509.Certificate { return c.served.Load().Leaf }

// ServerTLS is the configuration of the controller's TLS servers (the NATS
// client port, the HTTPS API): the current certificate, swapped by Reload.
func (c *Certs) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.served.Load(), nil },
	}
}

// RouteTLS is the configuration of the NATS cluster routes between
// controllers, both ways (a route's dialler is a TLS client, its acceptor a
// server): mutual TLS with the generated certificate, and the peer admitted
// only if its certificate proves one of secrets for bus.PurposeRoute. src.Proofs
// must include those secrets with bus.PurposeRoute, so the peers admit us too.
func (c *Certs) RouteTLS(secrets ...string) *tls.Config {
	secrets = slices.Clone(secrets)
	cert := func() (*tls.Certificate, error) {
		if p := c.proof.Load(); p != nil {
			return p, nil
		}
		return nil, errors.New("no generated certificate for cluster routes")
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert() },
		ClientAuth:           tls.RequireAnyClientCert,
		// Verification is the proof's, both ways, in VerifyConnection.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("refused a cluster peer: it presented no certificate")
			}
			if err := bus.VerifyProof(cs.PeerCertificates[0], bus.PurposeRoute, time.Now(), secrets...); err != nil {
				return fmt.Errorf("refused a cluster peer: %w", err)
			}
			return nil
		},
	}
}
