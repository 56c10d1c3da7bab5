// Package controller is cframe's control plane: the store of record for the
// edge set, the HTTP API, and the embedded NATS server edges connect to. It
// publishes every accepted change as a revisioned delta and an audit event,
// answers snapshot requests, pins edge keys, and turns edge heartbeats into
// online/offline status.
package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/store"
)

// storeTimeout bounds one store operation.
const storeTimeout = 5 * time.Second

// Controller is a running control plane.
type Controller struct {
	cfg     config.Controller
	log     *slog.Logger
	secret  string
	started time.Time

	certs *bus.Certs
	srv   *bus.Server
	nc    *nats.Conn
	store store.Store
	apiLn net.Listener
	http  *http.Server
	ready atomic.Bool

	// mu serialises changes to the edge set: validation, store write and
	// publication happen as one step, so concurrent adds cannot both pass
	// the overlap check.
	mu       sync.RWMutex
	edges    map[string]bus.Edge
	rev      uint64 // revision of the published edge set
	snapshot []byte // cached encoded Snapshot at rev, nil when stale

	pinMu sync.Mutex
	pins  map[string]string

	statusMu sync.Mutex
	status   map[string]*edgeStatus
}

// New opens the store, starts the embedded NATS server and binds the API
// listener. Run serves until its context ends.
func New(cfg config.Controller, log *slog.Logger) (*Controller, error) {
	c := &Controller{cfg: cfg, log: log, started: time.Now(), status: map[string]*edgeStatus{}}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	var err error
	if c.secret, err = loadSecret(cfg, log); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	var proofs []bus.Proof
	for _, s := range append([]string{c.secret}, cfg.PreviousSecrets...) {
		proofs = append(proofs, bus.Proof{Secret: s, Purpose: bus.PurposeController})
	}
	if c.certs, err = bus.LoadCerts(certSource(cfg, proofs, log)); err != nil {
		return nil, err
	}
	c.srv, err = bus.StartServer(bus.ServerConfig{
		ListenAddr:      cfg.ListenAddr,
		StoreDir:        filepath.Join(cfg.DataDir, "jetstream"),
		Secret:          c.secret,
		PreviousSecrets: cfg.PreviousSecrets,
		TLS:             c.certs.ServerTLS(),
		Pins:            c,
		Log:             log,
	})
	if err != nil {
		return nil, err
	}
	if c.nc, err = c.srv.Connect(); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	if err := c.openStore(); err != nil {
		return nil, err
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	if _, err := c.nc.Subscribe(bus.SubjectSnapshot, c.onSnapshotRequest); err != nil {
		return nil, err
	}
	if _, err := c.nc.Subscribe(bus.SubjectStatusAll, c.onStatus); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("api_addr: %w", err)
	}
	c.apiLn = api.Listen(ln, c.certs.ServerTLS())
	c.http = &http.Server{Handler: api.Handler(c, cfg.APIToken, log), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "api").Handler(), slog.LevelWarn)}
	ok = true
	c.ready.Store(true)
	log.Info("controller ready", "nats", c.srv.Addr(), "api", c.apiLn.Addr(), "store", c.storeName(), "revision", c.rev, "edges", len(c.edges),
		"fingerprint", bus.Fingerprint(c.certs.Current()))
	return c, nil
}

// certSource is where the controller's certificate comes from: the
// operator's files, or generated into data_dir/tls proving proofs.
func certSource(cfg config.Controller, proofs []bus.Proof, log *slog.Logger) bus.CertSource {
	return bus.CertSource{Dir: filepath.Join(cfg.DataDir, "tls"), CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey, Proofs: proofs, Log: log}
}

// Fingerprint is the key fingerprint of the certificate a controller with
// cfg serves (or would serve), for pinning it in cframectl --fingerprint.
func Fingerprint(cfg config.Controller) (string, error) {
	cert, err := bus.ReadCertificate(certSource(cfg, nil, nil))
	if err != nil {
		return "", err
	}
	return bus.Fingerprint(cert), nil
}

// ReloadTLS re-reads the certificate files (on SIGHUP; also hourly, which
// renews a generated certificate in time). New connections get the new
// certificate; established ones keep theirs.
func (c *Controller) ReloadTLS() error { return c.certs.Reload() }

func (c *Controller) openStore() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var err error
	if len(c.cfg.Etcd) > 0 {
		c.store, err = store.OpenEtcd(ctx, c.cfg.Etcd, "", storeTimeout)
	} else {
		var js jetstream.JetStream
		if js, err = jetstream.New(c.nc); err == nil {
			c.store, err = store.OpenJetStream(ctx, js, "cframe_v1")
		}
	}
	if err != nil {
		return fmt.Errorf("store %s: %w", c.storeName(), err)
	}
	return nil
}

func (c *Controller) storeName() string {
	if len(c.cfg.Etcd) > 0 {
		return "etcd " + strings.Join(c.cfg.Etcd, ",")
	}
	return "embedded " + c.cfg.DataDir
}

func (c *Controller) load() error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	st, err := c.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("load store: %w", err)
	}
	c.edges, c.pins, c.rev = st.Edges, st.Pins, st.Revision
	return nil
}

// loadSecret returns the configured join secret, or the one in
// <data_dir>/secret, generating it on first start.
func loadSecret(cfg config.Controller, log *slog.Logger) (string, error) {
	if cfg.Secret != "" {
		return cfg.Secret, nil
	}
	path := filepath.Join(cfg.DataDir, "secret")
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			log.Info("using join secret", "path", path)
			return s, nil
		}
		return "", fmt.Errorf("join secret file %s is empty", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("join secret: %w", err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	s := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("join secret: %w", err)
	}
	log.Info("generated join secret: copy it into every edge.toml as secret", "path", path)
	return s, nil
}

// NATSAddr is the address edges connect to.
func (c *Controller) NATSAddr() net.Addr { return c.srv.Addr() }

// APIAddr is the address the HTTP API listens on.
func (c *Controller) APIAddr() net.Addr { return c.apiLn.Addr() }

// Secret is the join secret in use.
func (c *Controller) Secret() string { return c.secret }

// Run serves the API, announces the revision and tracks edge liveness until
// ctx ends, then shuts everything down.
func (c *Controller) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- c.http.Serve(c.apiLn) }()
	hello := time.NewTicker(bus.HelloInterval)
	defer hello.Stop()
	sweep := time.NewTicker(time.Second)
	defer sweep.Stop()
	renew := time.NewTicker(time.Hour)
	defer renew.Stop()
	c.publishHello()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-errc:
			break loop
		case <-hello.C:
			c.publishHello()
		case now := <-sweep.C:
			c.sweepOffline(now)
		case <-renew.C:
			if err := c.ReloadTLS(); err != nil {
				c.log.Error("TLS certificate not reloaded; the one in use stays", "err", err)
			}
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.http.Shutdown(shutdown)
	c.close()
	c.log.Info("controller stopped")
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (c *Controller) close() {
	c.ready.Store(false)
	if c.apiLn != nil {
		c.apiLn.Close()
	}
	if c.nc != nil {
		_ = c.nc.FlushTimeout(time.Second)
		c.nc.Close()
	}
	if c.store != nil {
		c.store.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
	}
}

func (c *Controller) publishHello() {
	c.mu.RLock()
	h := bus.Hello{Revision: c.rev, Started: c.started}
	c.mu.RUnlock()
	c.publish(bus.SubjectHello, h)
}

func (c *Controller) publish(subject string, v any) {
	if err := bus.Publish(c.nc, subject, v); err != nil {
		c.log.Error("publish failed", "subject", subject, "err", err)
	}
}

func (c *Controller) event(kind, edge string, rev uint64, detail string) {
	c.publish(bus.EventSubject(kind, edge), bus.Event{Time: time.Now().UTC(), Kind: kind, Edge: edge, Revision: rev, Detail: detail})
}
