// Package controller is cframe's control plane: the store of record for the
// edge set, the HTTP API, and the embedded NATS server edges connect to. It
// publishes every accepted change as a revisioned delta and an audit event,
// answers snapshot requests, pins edge keys, and turns edge heartbeats into
// online/offline status.
//
// Several controllers form one control plane (a cluster): their NATS
// servers are one NATS cluster, the store is shared (replicated JetStream
// or etcd), and each serves the whole API from its view of the store,
// which follows every controller's writes. Writes are conditional on the
// revision they were validated against, so validation holds across
// controllers.
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
	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/internal/atomicfile"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/store"
	"github.com/cframe/cframe/orchestrator/ui"
)

// storeTimeout bounds one store operation, and a write with its retries.
const storeTimeout = 5 * time.Second

// bucket is the embedded store's key-value bucket.
const bucket = "cframe_v1"

// Controller is a running control plane.
type Controller struct {
	cfg     config.Controller
	log     *slog.Logger
	secret  string
	started time.Time

	certs *embedded.Certs
	srv   *embedded.Server
	nc    *nats.Conn
	store store.Store
	apiLn net.Listener
	http  *http.Server
	ready atomic.Bool
	// ctx ends when the controller closes (stop): it bounds background work.
	ctx  context.Context
	stop context.CancelFunc

	// write serialises this controller's edge writes (edges.go; other
	// controllers' are kept apart by the store's conditional writes);
	// pinWrite its pin writes, by name, pinSlots how many are in flight
	// (pins.go).
	write    sync.Mutex
	pinWrite nameLocks
	pinSlots slots

	// view is the store as this controller last saw it (view.go).
	view *storeView
	// status is what the agents report (status.go); claims the newest
	// claim per site (sites.go).
	status *statusBook
	claims *claimBook
	// keys is the WireGuard pins under way and the refusals logged
	// (wireguard.go).
	keys *keyBook
	// sysConn delivers the servers' connection events (bus.WatchEdges).
	sysConn *nats.Conn

	metrics *controllerMetrics
	fanout  *fanout
	audit   audit
	// page streams the topology to the topology page.
	page *ui.Hub
}

// New opens the store, starts the embedded NATS server and binds the API
// listener. Run serves until its context ends.
func New(cfg config.Controller, log *slog.Logger) (*Controller, error) {
	c := &Controller{cfg: cfg, log: log, started: time.Now(), view: newStoreView(), status: newStatusBook(), claims: newClaimBook(), keys: newKeyBook(),
		pinSlots: make(slots, maxPinWrites)}
	c.metrics = newControllerMetrics(c)
	c.fanout = &fanout{m: c.metrics}
	c.page = ui.NewHub("topology", func() any { return c.Topology() }, log)
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
	routes := clusterSecrets(cfg, c.secret)
	for _, s := range routes {
		proofs = append(proofs, bus.Proof{Secret: s, Purpose: bus.PurposeRoute})
	}
	if c.certs, err = embedded.LoadCerts(certSource(cfg, proofs, log)); err != nil {
		return nil, err
	}
	scfg := embedded.ServerConfig{
		ListenAddr:      cfg.ListenAddr,
		Name:            cfg.ServerName,
		StoreDir:        filepath.Join(cfg.DataDir, "jetstream"),
		Secret:          c.secret,
		PreviousSecrets: cfg.PreviousSecrets,
		TLS:             c.certs.ServerTLS(),
		Pins:            c,
		Log:             log,
	}
	if cfg.Clustered() {
		// A cluster's JetStream files live apart from a lone controller's,
		// which importStandalone carries over.
		scfg.StoreDir = filepath.Join(cfg.DataDir, "cluster")
		scfg.Cluster = &embedded.ClusterConfig{Addr: cfg.ClusterAddr, Peers: cfg.ClusterPeers, TLS: c.certs.RouteTLS(routes...)}
	}
	if c.srv, err = embedded.StartServer(scfg); err != nil {
		return nil, err
	}
	if c.nc, err = c.srv.Connect(); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	c.ctx, c.stop = context.WithCancel(context.Background())
	if err := c.openStore(); err != nil {
		return nil, err
	}
	c.store = timedStore{c.store, c.metrics.storeWrite}
	if err := c.openAudit(); err != nil {
		return nil, err
	}
	if err := c.loadAndFollow(c.ctx); err != nil {
		return nil, err
	}
	if err := c.importStandalone(); err != nil {
		return nil, err
	}
	// One controller answers each snapshot request, the edge's own first.
	if _, err := c.nc.QueueSubscribe(bus.SubjectSnapshot, bus.QueueControllers, c.onSnapshotRequest); err != nil {
		return nil, err
	}
	if _, err := c.nc.Subscribe(bus.SubjectStatusAll, c.onStatus); err != nil {
		return nil, err
	}
	if c.sysConn, err = c.srv.WatchEdges(c.onEdgeConn); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("api_addr: %w", err)
	}
	c.apiLn = api.Listen(ln, c.certs.ServerTLS())
	c.http = &http.Server{Handler: c.metrics.instrument(api.Handler(c, cfg.APIToken, log, c.mounts()...)), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "api").Handler(), slog.LevelWarn)}
	c.http.RegisterOnShutdown(c.page.Close)
	ok = true
	c.ready.Store(true)
	view := c.view.now()
	rev, edges := view.rev, len(view.edges)
	log.Info("controller ready", "name", cfg.ServerName, "nats", c.srv.Addr(), "api", c.apiLn.Addr(), "store", c.storeName(), "revision", rev, "edges", edges,
		"fingerprint", bus.Fingerprint(c.certs.Current()))
	return c, nil
}

// certSource is where the controller's certificate comes from: the
// operator's files, or generated into data_dir/tls proving proofs.
func certSource(cfg config.Controller, proofs []bus.Proof, log *slog.Logger) embedded.CertSource {
	return embedded.CertSource{Dir: filepath.Join(cfg.DataDir, "tls"), CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey, Proofs: proofs, Log: log}
}

// clusterSecrets are the secrets a controller of a cluster proves to its
// peers, and accepts from them, on the cluster port: cluster_secret, or the
// one derived from the join secret (and from the previous join secrets,
// while they are rotated). None for a lone controller.
func clusterSecrets(cfg config.Controller, secret string) []string {
	switch {
	case !cfg.Clustered():
		return nil
	case cfg.ClusterSecret != "":
		return []string{cfg.ClusterSecret}
	}
	out := []string{bus.ClusterSecret(secret)}
	for _, p := range cfg.PreviousSecrets {
		out = append(out, bus.ClusterSecret(p))
	}
	return out
}

// Fingerprint is the key fingerprint of the certificate a controller with
// cfg serves (or would serve), for pinning it in cframectl --fingerprint.
func Fingerprint(cfg config.Controller) (string, error) {
	cert, err := embedded.ReadCertificate(certSource(cfg, nil, nil))
	if err != nil {
		return "", err
	}
	return bus.Fingerprint(cert), nil
}

// ReloadTLS re-reads the certificate files (on SIGHUP; also hourly, which
// renews a generated certificate in time). New connections get the new
// certificate; established ones keep theirs.
func (c *Controller) ReloadTLS() error { return c.certs.Reload() }

// openStore opens etcd, or the embedded bucket — in a cluster once enough
// controllers are up to hold its replicas, however long that takes.
func (c *Controller) openStore() error {
	if len(c.cfg.Etcd) > 0 {
		ctx, cancel := context.WithTimeout(c.ctx, 15*time.Second)
		defer cancel()
		var err error
		if c.store, err = store.OpenEtcd(ctx, c.cfg.Etcd, "", storeTimeout); err != nil {
			return fmt.Errorf("store %s: %w", c.storeName(), err)
		}
		return nil
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		return err
	}
	open := func(timeout time.Duration) (store.Store, error) {
		ctx, cancel := context.WithTimeout(c.ctx, timeout)
		defer cancel()
		return store.OpenJetStream(ctx, js, bucket, replicas(c.cfg))
	}
	if c.cfg.Clustered() {
		c.store, err = c.awaitCluster(open)
		return err
	}
	if c.store, err = open(15 * time.Second); err != nil {
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

// loadSecret returns the configured join secret, or the one in
// <data_dir>/secret, generating it on first start of a lone controller.
// The controllers of a cluster share one secret, so there it must be given.
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
	if cfg.Clustered() {
		return "", fmt.Errorf("the controllers of a cluster share one join secret: set secret in controller.toml (the same on every controller), or copy %s from the first controller", path)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	s := hex.EncodeToString(raw)
	if err := atomicfile.Write(path, []byte(s+"\n"), 0o600); err != nil {
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
	go c.page.Run(ctx)
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
			c.publishClaims()
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
	if c.stop != nil {
		c.closeAudit()
		c.stop() // ends the store's change feed
	}
	if c.apiLn != nil {
		c.apiLn.Close()
	}
	if c.page != nil {
		c.page.Close()
	}
	if c.sysConn != nil {
		c.sysConn.Close()
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
	h := bus.Hello{Revision: c.view.now().rev, Started: c.started}
	c.publish(bus.SubjectHello, h)
}

func (c *Controller) publish(subject string, v any) {
	if err := bus.Publish(c.nc, subject, v); err != nil {
		c.log.Error("publish failed", "subject", subject, "err", err)
	}
}
