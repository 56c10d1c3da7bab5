package embedded

import (
	"cmp"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"github.com/cframe/cframe/bus"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Pinner decides whether a public key may act as an edge name. It pins the
// first key seen for a name and refuses any other key until the operator
// deletes the edge.
type Pinner interface {
	Pin(name, publicKey string) error
}

// ServerConfig configures the controller's embedded NATS server.
type ServerConfig struct {
	// ListenAddr is where edges connect (":58422"); port 0 picks a free one.
	ListenAddr string
	// Name is the server's name, unique in a cluster ("cframe-controller"
	// if empty).
	Name string
	// Cluster, when set, joins the other controllers' servers.
	Cluster *ClusterConfig
	// StoreDir holds JetStream's files.
	StoreDir string
	// Secret is the join secret edges prove knowledge of; PreviousSecrets
	// are accepted too, while the secret is being rotated.
	Secret          string
	PreviousSecrets []string
	// TLS serves the client port (required). Clients start the handshake
	// before the server says anything (NATS "TLS first"), so nothing crosses
	// in plaintext; a plaintext client is never answered.
	TLS *tls.Config
	// Pins vets each edge's key (required).
	Pins Pinner
	Log  *slog.Logger
}

// Server is the embedded NATS server with cframe's authentication: the
// controller connects in-process with a per-run token, audit subscribers as
// bus.AuditUser, and each edge as its name with a join proof and a pinned key.
// Unauthenticated clients are refused.
type Server struct {
	ns    *server.Server
	token string
	// sysToken is the in-process connection of WatchEdges, in the system
	// account (where the servers publish connection events).
	sysToken string
	cfg      ServerConfig
	dup      chan string
}

// StartServer starts the embedded NATS server with JetStream and waits until
// it accepts connections.
func StartServer(cfg ServerConfig) (*Server, error) {
	host, port, err := splitPort(cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen_addr %q: %w", cfg.ListenAddr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if cfg.Pins == nil {
		return nil, fmt.Errorf("nats server: no Pinner")
	}
	if cfg.TLS == nil {
		return nil, fmt.Errorf("nats server: no TLS configuration")
	}
	tok := make([]byte, 64)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	s := &Server{token: hex.EncodeToString(tok[:32]), sysToken: hex.EncodeToString(tok[32:]), cfg: cfg, dup: make(chan string, 1)}
	opts := &server.Options{
		ServerName:                 cmp.Or(cfg.Name, "cframe-controller"),
		Host:                       host,
		Port:                       port,
		JetStream:                  true,
		StoreDir:                   cfg.StoreDir,
		SyncAlways:                 true,
		MaxPayload:                 8 << 20,
		AlwaysEnableNonce:          true,
		CustomClientAuthentication: s,
		NoSigs:                     true,
		DisableJetStreamBanner:     true,
		TLSConfig:                  newHandshakeGate(MaxHandshakes, cfg.Log).wrap(cfg.TLS),
		TLSTimeout:                 bus.TLSTimeout.Seconds(),
		TLSHandshakeFirst:          true,
	}
	if host == "" {
		opts.Host = "0.0.0.0"
	}
	if cfg.Cluster != nil {
		if err := s.joinCluster(opts); err != nil {
			return nil, err
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	if cfg.Log != nil {
		ns.SetLoggerV2(natsLogger{cfg.Log.With("component", "nats"), s}, false, false, false)
	}
	s.ns = ns
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats server on %s did not start", cfg.ListenAddr)
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// URL is a nats:// URL for the listening address.
func (s *Server) URL() string { return s.ns.ClientURL() }

// Connect opens the controller's own in-process connection, which may
// publish and subscribe anywhere.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{
		nats.Name("cframe-controller"),
		nats.Token(s.token),
		nats.InProcessServer(s.ns),
	}, opts...)
	return nats.Connect("", opts...)
}

// Shutdown stops the server and disconnects every client.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Check implements server.Authentication.
func (s *Server) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	switch {
	case o.Token != "" && equal(o.Token, s.sysToken):
		c.RegisterUser(&server.User{Username: systemUser, Account: s.ns.SystemAccount()})
		return true
	case o.Token != "":
		if !equal(o.Token, s.token) {
			return s.refuse(c, "", "bad token")
		}
		c.RegisterUser(&server.User{Username: controllerUser})
		return true
	case o.Username == bus.AuditUser:
		if !s.anySecret(bus.AuditPassword, o.Password) {
			return s.refuse(c, bus.AuditUser, "bad audit password")
		}
		c.RegisterUser(&server.User{Username: bus.AuditUser, Permissions: AuditPermissions()})
		return true
	}
	name := o.Username
	if err := bus.CheckName(name); err != nil {
		return s.refuse(c, name, err.Error())
	}
	if err := verifyNonce(o.Nkey, o.Sig, c.GetNonce()); err != nil {
		return s.refuse(c, name, err.Error())
	}
	if !s.anySecret(func(secret string) string { return bus.JoinProof(secret, name, o.Nkey) }, o.Password) {
		return s.refuse(c, name, "wrong join secret")
	}
	if err := s.cfg.Pins.Pin(name, o.Nkey); err != nil {
		return s.refuse(c, name, err.Error())
	}
	c.RegisterUser(&server.User{Username: name, Permissions: EdgePermissions(name)})
	return true
}

// EdgePermissions lets an edge fetch snapshots, follow deltas, hellos and
// the sites' claims, receive replies in its own inbox, and publish its own
// status — nothing else.
func EdgePermissions(name string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{bus.StatusSubject(name), bus.SubjectSnapshot}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			bus.SubjectDelta, bus.SubjectHello, bus.SubjectClaims, bus.InboxPrefix(name) + ".>",
		}},
	}
}

// AuditPermissions let an audit reader follow live events, ask the
// controller for kept ones and receive the answers in its own inbox —
// nothing else: it cannot publish an event or touch the stream.
func AuditPermissions() *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{bus.SubjectAuditReplay}},
		Subscribe: &server.SubjectPermission{Allow: []string{bus.SubjectEventsAll, bus.AuditInboxPrefix + ".>"}},
	}
}

func (s *Server) refuse(c server.ClientAuthentication, name, why string) bool {
	if s.cfg.Log != nil {
		s.cfg.Log.Warn("refused bus connection", "remote", c.RemoteAddress(), "user", name, "reason", why)
	}
	return false
}

// anySecret reports whether got is what derive makes of the join secret or
// of a previous one.
func (s *Server) anySecret(derive func(secret string) string, got string) bool {
	ok := equal(got, derive(s.cfg.Secret))
	for _, p := range s.cfg.PreviousSecrets {
		ok = equal(got, derive(p)) || ok
	}
	return ok
}

func verifyNonce(pub, sig string, nonce []byte) error {
	if pub == "" || sig == "" {
		return fmt.Errorf("no edge key presented")
	}
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return fmt.Errorf("invalid edge key")
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("malformed nonce signature")
	}
	if kp.Verify(nonce, raw) != nil {
		return fmt.Errorf("nonce signature does not match the edge key")
	}
	return nil
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// natsLogger forwards the NATS server's warnings and errors to slog.
type natsLogger struct {
	l *slog.Logger
	s *Server
}

func (n natsLogger) Noticef(string, ...any) {}
func (n natsLogger) Debugf(string, ...any)  {}
func (n natsLogger) Tracef(string, ...any)  {}
func (n natsLogger) Warnf(f string, v ...any) {
	if strings.HasPrefix(f, "TLS certificate chain and hostname of solicited routes will not be verified") {
		return // they are verified by their proof of the cluster's secret (Certs.RouteTLS)
	}
	n.l.Warn(fmt.Sprintf(f, v...))
}
func (n natsLogger) Errorf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	if isRefusedHandshake(msg) {
		return // the handshake gate logs these in sum
	}
	n.s.noteError(msg)
	n.l.Error(msg)
}
func (n natsLogger) Fatalf(f string, v ...any) { n.l.Error(fmt.Sprintf(f, v...)) }
