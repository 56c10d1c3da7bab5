// Package cluster runs cframe's real programs on a topo.Topology: the
// controller (optionally on a real etcd) inside one edge's namespace — where
// the walkthrough runs it, on sz-1 — or a cluster of controllers, one on
// each of several edges, and one cframe-edge per site, each from a config
// file written the walkthrough's way. make demo, the end-to-end tests and
// make bench share it.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// The walkthrough's ports, the controllers' cluster port, and where every
// agent serves its metrics (on its namespace's loopback).
const (
	NATSPort    = 58422
	APIPort     = 12345
	TunnelPort  = 58423
	ClusterPort = 58424
	MetricsPort = 9474
	etcdClient  = "127.0.0.1:2379"
)

// Options configure a Cluster.
type Options struct {
	// Bin is the directory holding cframe-controller, cframe-edge and cframectl.
	Bin string
	// Dir receives configs, logs, the controllers' data and the edges' state.
	Dir string
	// Etcd runs the controllers on a real etcd (started in the home
	// controller's namespace) instead of their embedded store.
	Etcd bool
	// Peers are further sites that run a controller each: with them, the
	// controllers form one cluster (named c1, c2, ... from home on).
	Peers []*topo.Site
	// APIToken, when set, is the controllers' api_token (the API off
	// loopback, over HTTPS).
	APIToken string
	// EdgeWrap, when set, is a command the agents run under (its arguments
	// followed by cframe-edge's), e.g. setpriv granting only the
	// capabilities the edge's systemd unit does.
	EdgeWrap []string
}

// Cluster is the controllers and their edges running on a topology.
type Cluster struct {
	Topo *topo.Topology
	// Home is the site whose edge namespace runs the (first) controller.
	Home *topo.Site
	// API calls the first controller from inside Home's namespace, like the
	// walkthrough's curl to 127.0.0.1.
	API *api.Client
	// Controllers are the controllers, Home's first.
	Controllers []*Controller

	opts Options
	etcd *topo.Proc

	mu     sync.Mutex
	secret string
}

// Controller is one cframe-controller process.
type Controller struct {
	// Name is its server_name ("c1"; "controller" when alone).
	Name string
	Site *topo.Site
	// API calls it from inside its own namespace, on loopback.
	API *api.Client
	// Config, DataDir and Log are its files.
	Config, DataDir, Log string

	c    *Cluster
	mu   sync.Mutex
	proc *topo.Proc
}

// Edge is one cframe-edge agent.
type Edge struct {
	Name string
	Site *topo.Site
	// Config, StateDir and Log are the agent's files.
	Config, StateDir, Log string

	c    *Cluster
	mu   sync.Mutex
	proc *topo.Proc
}

// WalkthroughNames are the walkthrough's edge names for topo.Walkthrough's sites.
var WalkthroughNames = []string{"sz-1", "hk-1", "gz-3"}

// Build compiles the three programs into dir (for tests that cannot rely
// on make build having run) — with the race detector when the caller runs
// with it (go test -race), so that the controllers and agents a test starts
// are checked too: see RaceReports.
func Build(dir string) error {
	args := []string{"build", "-o", dir}
	if raceBuild {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "github.com/cframe/cframe/cmd/...")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	return nil
}

// raceMark starts every report of the race detector.
const raceMark = "WARNING: DATA RACE"

// RaceReports returns the race detector's reports found in the logs (*.log)
// under dir, each with its log's name: empty when the programs were built
// without the detector or it found nothing.
func RaceReports(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".log" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, r := range strings.Split(string(b), raceMark)[1:] {
			// A report ends with a line of "=" signs.
			r, _, _ = strings.Cut(r, "\n==================")
			out = append(out, filepath.Base(path)+": "+raceMark+r)
		}
		return nil
	})
	return out, err
}

// Start starts the controller (and etcd) in home's edge namespace — or the
// cluster of controllers on home and opts.Peers — and waits until every
// controller's API answers.
func Start(t *topo.Topology, home *topo.Site, opts Options) (*Cluster, error) {
	c := &Cluster{Topo: t, Home: home, opts: opts}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	for i, s := range append([]*topo.Site{home}, opts.Peers...) {
		name := "controller"
		if len(opts.Peers) > 0 {
			name = fmt.Sprintf("c%d", i+1)
		}
		ct := &Controller{Name: name, Site: s, c: c,
			Config: c.path(name + ".toml"), DataDir: c.path(name), Log: c.path(name + ".log")}
		ct.API = api.NewClient(fmt.Sprintf("http://127.0.0.1:%d", APIPort), "")
		ct.API.HTTP.Transport = &http.Transport{DialContext: topo.Dialer{NS: s.Edge}.DialContext}
		c.Controllers = append(c.Controllers, ct)
	}
	c.API = c.Controllers[0].API
	if len(opts.Peers) > 0 {
		raw := make([]byte, 24)
		rand.Read(raw)
		c.secret = hex.EncodeToString(raw)
	}
	if opts.Etcd {
		if err := c.startEtcd(); err != nil {
			return nil, err
		}
	}
	// The walkthrough's ports lie in Linux's ephemeral range: keep outgoing
	// connections (the routes between controllers, the agents') from taking
	// them, or a restarting controller may find its port in use.
	for _, ct := range c.Controllers {
		if _, err := t.Net.Exec(ct.Site.Edge, "sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.ip_local_reserved_ports=%d-%d", NATSPort, ClusterPort)); err != nil {
			return nil, err
		}
	}
	// A controller of a cluster waits for the others: start all, then wait.
	for _, ct := range c.Controllers {
		if err := ct.launch(); err != nil {
			return nil, err
		}
	}
	var errs []error
	for _, ct := range c.Controllers {
		errs = append(errs, ct.await())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.opts.Dir, name) }

func (c *Cluster) startEtcd() error {
	p, err := c.Topo.Net.Start(c.Home.Edge, c.path("etcd.log"), "etcd",
		"--name", "cframe", "--data-dir", c.path("etcd"),
		"--listen-client-urls", "http://"+etcdClient, "--advertise-client-urls", "http://"+etcdClient,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "cframe=http://127.0.0.1:2380")
	if err != nil {
		return err
	}
	c.etcd = p
	hc := &http.Client{Transport: c.API.HTTP.Transport, Timeout: time.Second}
	return waitFor(p, c.path("etcd.log"), func() error {
		resp, err := hc.Get("http://" + etcdClient + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd health: %s", resp.Status)
		}
		return nil
	})
}

// waitFor polls ready until it succeeds, failing early with the log's tail
// if the process exits.
func waitFor(p *topo.Proc, log string, ready func() error) error {
	return topo.Eventually(30*time.Second, func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited: %s", p, tail(log))
		default:
		}
		return ready()
	})
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

// clustered reports whether the controllers form a cluster.
func (c *Cluster) clustered() bool { return len(c.Controllers) > 1 }

// ConfigText is the controller.toml the cluster writes: the walkthrough's
// keys plus a data_dir inside Dir — and for a cluster the server name, the
// cluster port, every controller's cluster address and the shared secret.
func (ct *Controller) ConfigText() string {
	c := ct.c
	cfg := fmt.Sprintf("listen_addr=\":%d\"\napi_addr=\":%d\"\ndata_dir = %q\n", NATSPort, APIPort, ct.DataDir)
	if c.opts.Etcd {
		cfg += fmt.Sprintf("\netcd = [\n    %q\n]\n", etcdClient)
	}
	if c.opts.APIToken != "" {
		cfg += fmt.Sprintf("api_token = %q\n", c.opts.APIToken)
	}
	if c.clustered() {
		var peers []string
		for _, o := range c.Controllers {
			peers = append(peers, fmt.Sprintf("%q", fmt.Sprintf("%s:%d", o.Site.Underlay(), ClusterPort)))
		}
		cfg += fmt.Sprintf("\nserver_name = %q\ncluster_addr = \":%d\"\ncluster_peers = [%s]\nsecret = %q\n",
			ct.Name, ClusterPort, strings.Join(peers, ", "), c.secret)
	}
	return cfg
}

// ControllerDir is the first controller's data_dir (its secret, its
// generated TLS key and certificate in tls/).
func (c *Cluster) ControllerDir() string { return c.Controllers[0].DataDir }

// APIAddr is the first controller's API address off loopback: the home
// edge's public address, where the API answers HTTPS.
func (c *Cluster) APIAddr() string { return fmt.Sprintf("%s:%d", c.Home.Underlay(), APIPort) }

// RemoteAPI calls the first controller's API over HTTPS from namespace ns
// with the cluster's api_token, verifying the controller as t says.
func (c *Cluster) RemoteAPI(ns string, t bus.Trust) *api.Client {
	cl := api.NewClient("https://"+c.APIAddr(), c.opts.APIToken)
	cl.Trust(t, topo.Dialer{NS: ns})
	return cl
}

// Start (re)starts the controller and waits for its API.
func (ct *Controller) Start() error {
	if err := ct.launch(); err != nil {
		return err
	}
	return ct.await()
}

// launch writes the config and starts the process.
func (ct *Controller) launch() error {
	if err := os.WriteFile(ct.Config, []byte(ct.ConfigText()), 0o644); err != nil {
		return err
	}
	p, err := ct.c.Topo.Net.Start(ct.Site.Edge, ct.Log, filepath.Join(ct.c.opts.Bin, "cframe-controller"), "-c", ct.Config)
	if err != nil {
		return err
	}
	ct.mu.Lock()
	ct.proc = p
	ct.mu.Unlock()
	return nil
}

// await waits until the launched controller's API answers, and reads the
// join secret a lone controller generated.
func (ct *Controller) await() error {
	p := ct.Proc()
	if err := waitFor(p, ct.Log, func() error {
		_, err := ct.API.List(context.Background())
		return err
	}); err != nil {
		p.Kill()
		return err
	}
	if ct.c.clustered() {
		return nil
	}
	secret, err := os.ReadFile(filepath.Join(ct.DataDir, "secret"))
	if err != nil {
		p.Kill()
		return err
	}
	ct.c.mu.Lock()
	ct.c.secret = strings.TrimSpace(string(secret))
	ct.c.mu.Unlock()
	return nil
}

// Stop stops the controller with SIGTERM.
func (ct *Controller) Stop() {
	if p := ct.Proc(); p != nil {
		p.Stop(5 * time.Second)
	}
}

// Kill kills the controller with SIGKILL, as a crash would.
func (ct *Controller) Kill() {
	if p := ct.Proc(); p != nil {
		p.Kill()
	}
}

// Proc is the controller's process (running or exited), or nil.
func (ct *Controller) Proc() *topo.Proc {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.proc
}

// BusAddr is the address edges reach the controller at: its edge's public
// address, as $CONTROLLER_PIP in the walkthrough.
func (ct *Controller) BusAddr() string {
	return fmt.Sprintf("%s:%d", ct.Site.Underlay(), NATSPort)
}

// StartController (re)starts the first controller and waits for its API.
func (c *Cluster) StartController() error { return c.Controllers[0].Start() }

// StopController stops the first controller with SIGTERM.
func (c *Cluster) StopController() { c.Controllers[0].Stop() }

// Controller is the first controller's process, or nil.
func (c *Cluster) Controller() *topo.Proc { return c.Controllers[0].Proc() }

// Secret is the join secret (from a lone controller's <data_dir>/secret).
func (c *Cluster) Secret() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.secret
}

// ControllerAddr is the address edges reach the first controller at.
func (c *Cluster) ControllerAddr() string { return c.Controllers[0].BusAddr() }

// ControllerTOML is the controller key of edge.toml: the walkthrough's
// single address, or the list of a cluster's controllers.
func (c *Cluster) ControllerTOML() string {
	if !c.clustered() {
		return fmt.Sprintf("%q", c.ControllerAddr())
	}
	var addrs []string
	for _, ct := range c.Controllers {
		addrs = append(addrs, fmt.Sprintf("%q", ct.BusAddr()))
	}
	return "[" + strings.Join(addrs, ", ") + "]"
}

// NewEdge writes the config of an edge agent for site (not started yet).
// extra is appended to the walkthrough's edge.toml, e.g. "masquerade = true".
func (c *Cluster) NewEdge(name string, site *topo.Site, extra ...string) (*Edge, error) {
	e := &Edge{Name: name, Site: site, c: c,
		Config: c.path(name + ".toml"), StateDir: c.path(name + "-state"), Log: c.path(name + ".log")}
	c.mu.Lock()
	secret := c.secret
	c.mu.Unlock()
	cfg := fmt.Sprintf("controller=%s\nname = %q\nlisten_addr=\":%d\"\n\nsecret = %q\nstate_dir = %q\nmetrics_addr = \"127.0.0.1:%d\"\n",
		c.ControllerTOML(), name, TunnelPort, secret, e.StateDir, MetricsPort)
	for _, x := range extra {
		cfg += x + "\n"
	}
	if err := os.WriteFile(e.Config, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return e, nil
}

// Spec is the edge add request for e: its site's public address, tunnel
// port and networks.
func (e *Edge) Spec() edgeset.Spec {
	s := edgeset.Spec{Name: e.Name, HostAddr: fmt.Sprintf("%s:%d", e.Site.Underlay(), TunnelPort), CIDR: e.Site.CIDR.String()}
	for _, p := range e.Site.CIDRs()[1:] {
		s.ExtraCIDRs = append(s.ExtraCIDRs, p.String())
	}
	return s
}

// MetricsURL is the agent's metrics endpoint, inside its site's edge
// namespace (reach it with HTTP from that namespace).
func (e *Edge) MetricsURL() string { return fmt.Sprintf("http://127.0.0.1:%d/metrics", MetricsPort) }

// HTTP is a client whose connections start in e's edge namespace.
func (e *Edge) HTTP() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: topo.Dialer{NS: e.Site.Edge}.DialContext}}
}

// Add registers e with the controller through the API.
func (e *Edge) Add(ctx context.Context) (api.ChangeResult, error) { return e.c.API.Add(ctx, e.Spec()) }

// Start runs the agent in its site's edge namespace.
func (e *Edge) Start() error {
	args := append(append([]string{}, e.c.opts.EdgeWrap...), filepath.Join(e.c.opts.Bin, "cframe-edge"), "-c", e.Config)
	p, err := e.c.Topo.Net.Start(e.Site.Edge, e.Log, args...)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.proc = p
	e.mu.Unlock()
	return nil
}

// Proc is the running agent process, or nil.
func (e *Edge) Proc() *topo.Proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proc
}

// Run runs a cframe-edge subcommand ("reconcile", "cleanup") in the edge's
// namespace and returns its output.
func (e *Edge) Run(sub string) (string, error) {
	return e.c.Topo.Net.Exec(e.Site.Edge, filepath.Join(e.c.opts.Bin, "cframe-edge"), sub, "-c", e.Config)
}

// Ctl runs cframectl in the (first) controller's namespace and returns its output.
func (c *Cluster) Ctl(args ...string) (string, error) {
	return c.Topo.Net.Exec(c.Home.Edge, append([]string{filepath.Join(c.opts.Bin, "cframectl")}, args...)...)
}
