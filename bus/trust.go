package bus

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Purpose says what a certificate's proof vouches for; the same secret
// proves nothing for another purpose.
type Purpose string

const (
	// PurposeController: edges, cframectl and audit subscribers accept the
	// certificate as the controller's (proof of the join secret).
	PurposeController Purpose = "controller"
	// PurposeRoute: controllers accept the certificate as a cluster peer's
	// (proof of the cluster's secret).
	PurposeRoute Purpose = "route"
)

// Proof is one thing a certificate proves: knowledge of Secret, for Purpose.
type Proof struct {
	Secret  string
	Purpose Purpose
}

// proofURIPrefix starts each proof in a certificate: one subjectAltName
// URI "urn:cframe:proof:v1:<base64url MAC>" per MAC (a standard field every
// TLS stack parses, as SPIFFE carries its identities).
const proofURIPrefix = "urn:cframe:proof:v1:"

// proofMAC is the MAC a certificate with this public key and validity
// carries for p.
func proofMAC(p Proof, spki []byte, notBefore, notAfter time.Time) []byte {
	kdf := hmac.New(sha256.New, []byte(p.Secret))
	kdf.Write([]byte("cframe.v1 certificate proof key"))
	h := hmac.New(sha256.New, kdf.Sum(nil))
	h.Write([]byte("cframe.v1 certificate proof\x00" + string(p.Purpose) + "\x00"))
	var validity [16]byte
	binary.BigEndian.PutUint64(validity[:8], uint64(notBefore.Unix()))
	binary.BigEndian.PutUint64(validity[8:], uint64(notAfter.Unix()))
	h.Write(validity[:])
	h.Write(spki)
	return h.Sum(nil)
}

// IssueCertificate makes a self-signed certificate (DER) for key, valid
// from notBefore (truncated to the second) for lifetime, carrying a proof
// for each of proofs. Its names are the host's name, "cframe-controller"
// and loopback, for clients that check names (the proof does not).
func IssueCertificate(key crypto.Signer, notBefore time.Time, lifetime time.Duration, proofs ...Proof) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	notBefore = notBefore.UTC().Truncate(time.Second)
	notAfter := notBefore.Add(lifetime)
	var uris []*url.URL
	for _, p := range proofs {
		u, err := url.Parse(proofURIPrefix + base64.RawURLEncoding.EncodeToString(proofMAC(p, spki, notBefore, notAfter)))
		if err != nil {
			return nil, err
		}
		uris = append(uris, u)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	names := []string{"cframe-controller", "localhost"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append(names, h)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "cframe-controller"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:                  uris,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
}

// secretName names the secret a purpose's proof is made with, for messages.
func (p Purpose) secretName() string {
	if p == PurposeRoute {
		return "cluster secret"
	}
	return "join secret"
}

// VerifyProof checks that cert is valid at now and proves knowledge of one
// of secrets for purpose. Its error says why not, in words for a log line.
func VerifyProof(cert *x509.Certificate, purpose Purpose, now time.Time, secrets ...string) error {
	switch {
	case now.Before(cert.NotBefore):
		return fmt.Errorf("its certificate is not valid before %s (is this host's clock right?)", cert.NotBefore.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return fmt.Errorf("its certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	macs, err := certProofs(cert)
	if err != nil {
		return err
	}
	if len(macs) == 0 {
		hint := ""
		if purpose == PurposeController {
			hint = "; a CA-issued certificate needs controller_ca"
		}
		return fmt.Errorf("its certificate carries no proof of the %s (made without it%s)", purpose.secretName(), hint)
	}
	for _, s := range secrets {
		want := proofMAC(Proof{Secret: s, Purpose: purpose}, cert.RawSubjectPublicKeyInfo, cert.NotBefore, cert.NotAfter)
		for _, m := range macs {
			if hmac.Equal(m, want) {
				return nil
			}
		}
	}
	return fmt.Errorf("its certificate's proof of the %s does not match (made with another secret, or copied from another certificate)", purpose.secretName())
}

// certProofs returns the MACs of cert's proofs (none without any).
func certProofs(cert *x509.Certificate) ([][]byte, error) {
	var macs [][]byte
	for _, u := range cert.URIs {
		enc, ok := strings.CutPrefix(u.String(), proofURIPrefix)
		if !ok {
			continue
		}
		m, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil || len(m) != sha256.Size {
			return nil, fmt.Errorf("its certificate carries a malformed proof")
		}
		macs = append(macs, m)
	}
	return macs, nil
}

// HasExactProofs reports whether cert carries exactly the proofs given (in
// any order): a certificate that still proves a dropped secret is reissued.
func HasExactProofs(cert *x509.Certificate, proofs []Proof) bool {
	macs, err := certProofs(cert)
	if err != nil || len(macs) != len(proofs) {
		return false
	}
	for _, p := range proofs {
		want := proofMAC(p, cert.RawSubjectPublicKeyInfo, cert.NotBefore, cert.NotAfter)
		found := false
		for _, m := range macs {
			found = found || hmac.Equal(m, want)
		}
		if !found {
			return false
		}
	}
	return true
}

// Fingerprint is the SHA-256 of cert's public key (its SubjectPublicKeyInfo)
// as "sha256:<hex>": it stays the same when a certificate is reissued for the
// same key. `openssl x509 -pubkey -noout -in cert.pem | openssl pkey -pubin
// -outform der | sha256sum` prints the same hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseFingerprint accepts a fingerprint as Fingerprint prints it, with or
// without the "sha256:" prefix, colons or upper case.
func ParseFingerprint(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(s), "sha256:"), ":", ""))
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q is not a SHA-256 (64 hex digits, as `cframe-controller fingerprint` prints)", s)
	}
	return "sha256:" + h, nil
}

// LoadCA reads a PEM file of one or more CA certificates.
func LoadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// Trust is how a client decides that the TLS server it reached is the
// controller. The first of Fingerprint, CA and Secret that is set decides;
// with none set, the system's roots and the host name do (a controller with
// a publicly issued certificate).
//
// Every connection to the controller — an edge's bus connection, an audit
// subscriber's, cframectl's HTTPS calls, and a peer controller's cluster
// route — is TLS, and the client decides whether the server it reached is
// the controller in one of three ways (Trust):
//
//   - Join-secret proof (the default; the walkthrough's edge.toml needs
//     nothing but the secret it already has). The controller's certificate
//     is self-signed and carries, as subjectAltName URIs, for each
//     secret the controller holds, MAC = HMAC-SHA256(K, label ‖ purpose ‖
//     notBefore ‖ notAfter ‖ SubjectPublicKeyInfo) with K = HMAC-SHA256(secret,
//     key label). The client recomputes the MAC for its own secret over the
//     certificate it received and accepts the server only if it matches and
//     the certificate is within its validity. TLS itself (the server's
//     CertificateVerify in TLS 1.3, its signed key exchange in TLS 1.2) proves
//     that the server holds the private key of that public key.
//   - A pinned CA (edge.toml controller_ca, cframectl --ca): the ordinary
//     chain and host-name checks, for operators with their own PKI.
//   - A pinned key fingerprint (cframectl --fingerprint, printed by
//     `cframe-controller fingerprint`).
//
// Review of the join-secret proof against an attacker on the path who does
// NOT know the secret (can read, drop, inject and rewrite packets, answer at
// the controller's address, and connect to the real controller):
//
//   - Replaying the controller's certificate fails: the handshake needs the
//     matching private key, which never leaves the controller's data_dir.
//   - Presenting its own certificate fails: without the secret it cannot
//     compute K, so it cannot make a MAC for its own public key (HMAC-SHA256
//     is a PRF); a MAC copied from the real certificate is bound to the real
//     key's SubjectPublicKeyInfo and does not match its key.
//   - A certificate made with another secret (another deployment's
//     controller) carries MACs under another K and does not match.
//   - A stolen but expired or superseded private key cannot be given a fresh
//     certificate: the validity period is inside the MAC, so only the
//     certificate issued with it (and its notAfter) can be used.
//   - Learning the secret from what it sees: the certificate is public (an
//     attacker can fetch it by connecting), but a MAC reveals nothing about
//     its key; guessing the secret offline needs a guessable secret. The
//     generated secret has 192 random bits; an operator-chosen one must be as
//     strong (it also guards the join proof).
//   - Downgrade: clients require TLS and start the handshake before the
//     server says anything (NATS "TLS first"), so there is no plaintext
//     greeting to tamper with; a server that does not speak TLS is refused.
//   - Everything after the handshake (edge set, deltas, heartbeats, the join
//     proof, the audit password, the API's bearer token off loopback) is
//     inside TLS: read, rewritten or injected records fail TLS's integrity
//     check and end the connection. What remains is denial of service:
//     dropping traffic, which the edges survive by keeping the kernel state
//     they applied.
//
// What the proof does not protect against: anyone who holds the join secret
// — every edge has it — can make a certificate that edges accept, so a
// compromised edge host that is also on the path to another edge could pose
// as the controller to it. Where that matters, pin a CA (controller_ca):
// then the secret only admits edges and no longer vouches for the
// controller. The cluster routes between controllers use the same proof
// under the cluster's own secret (PurposeRoute), so an edge cannot join them
// unless that secret is the join secret.
type Trust struct {
	// Secret: the certificate must prove the join secret (the default).
	Secret string
	// CA: the certificate must chain to CA and name the host dialled.
	CA *x509.CertPool
	// Fingerprint: the certificate's public key must have this Fingerprint.
	Fingerprint string
	// Refused, when set, hears of every refused server: the address
	// dialled and why (for one clear log line).
	Refused func(server string, err error)
}

// RefusedError is a server that failed verification.
type RefusedError struct {
	// Server is the address dialled.
	Server string
	Err    error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused the controller at %s: %v", e.Server, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Dialer opens the TCP connections TLS runs over (a *net.Dialer, or a
// dialer into a test's network namespace).
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialTLS connects to addr through d (nil: a plain net.Dialer) and
// completes a TLS handshake that trusts the server as t says. A server that
// fails verification is a *RefusedError naming addr, and t.Refused hears of
// it.
func (t Trust) DialTLS(ctx context.Context, d Dialer, network, addr string) (*tls.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	ctx, cancel := context.WithTimeout(ctx, TLSTimeout)
	defer cancel()
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	var refused error
	conn := tls.Client(raw, &tls.Config{
		ServerName: host,
		MinVersion: tls.VersionTLS12,
		// Verification is VerifyConnection's: one place for all three
		// ways, so every refusal has the same shape.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			refused = t.verify(cs.PeerCertificates, host, time.Now())
			return refused
		},
	})
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if refused != nil {
			err = &RefusedError{Server: addr, Err: refused}
			if t.Refused != nil {
				t.Refused(addr, refused)
			}
		}
		return nil, err
	}
	return conn, nil
}

// natsDialer makes nats.go's connections TLS with DialTLS: nats.go passes
// the address of the server it tries, so a refusal names it.
type natsDialer struct {
	t Trust
	d Dialer
}

func (n natsDialer) Dial(network, addr string) (net.Conn, error) {
	conn, err := n.t.DialTLS(context.Background(), n.d, network, addr)
	if err != nil {
		// A nil *tls.Conn in a net.Conn is not nil: nats.go would close it.
		return nil, err
	}
	return conn, nil
}

// SkipTLSHandshake tells nats.go that the connection is TLS already.
func (natsDialer) SkipTLSHandshake() bool { return true }

// ClientOptions make a NATS connection TLS from its first byte, dialled
// through d (nil: a plain net.Dialer) and trusting the server as t says.
func ClientOptions(t Trust, d Dialer) []nats.Option {
	return []nats.Option{
		nats.Secure(), nats.TLSHandshakeFirst(),
		nats.SetCustomDialer(natsDialer{t, d}),
		// The dialer gets the host name, not addresses nats.go resolved,
		// so a pinned CA's name check sees the name in the URL.
		nats.SkipHostLookup(),
	}
}

func (t Trust) verify(certs []*x509.Certificate, host string, now time.Time) error {
	if len(certs) == 0 {
		return errors.New("it presented no certificate")
	}
	leaf := certs[0]
	chain := func(roots *x509.CertPool) error {
		opts := x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: now, Intermediates: x509.NewCertPool()}
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
		_, err := leaf.Verify(opts)
		return err
	}
	switch {
	case t.Fingerprint != "":
		want, err := ParseFingerprint(t.Fingerprint)
		if err != nil {
			return err
		}
		if got := Fingerprint(leaf); got != want {
			return fmt.Errorf("its key's fingerprint is %s, not the pinned %s", got, want)
		}
		return nil
	case t.CA != nil:
		if err := chain(t.CA); err != nil {
			return fmt.Errorf("its certificate does not verify against the pinned CA: %w", err)
		}
		return nil
	case t.Secret != "":
		return VerifyProof(leaf, PurposeController, now, t.Secret)
	}
	if err := chain(nil); err != nil {
		return fmt.Errorf("its certificate does not verify against the system's CAs (give the join secret, a CA or a fingerprint): %w", err)
	}
	return nil
}
