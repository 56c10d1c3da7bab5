// Package cluster runs cframe's real programs on a topo.Topology: the
// controller (optionally on a real etcd) inside one edge's namespace — where
// the walkthrough runs it, on sz-1 — and one cframe-edge per site, each from
// a config file written the walkthrough's way. make demo, the end-to-end
// tests and make bench share it.
package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/topo"
)

// The walkthrough's ports.
const (
	NATSPort   = 58422
	APIPort    = 12345
	TunnelPort = 58423
	etcdClient = "127.0.0.1:2379"
)

// Options configure a Cluster.
type Options struct {
	// Bin is the directory holding cframe-controller, cframe-edge and cframectl.
	Bin string
	// Dir receives configs, logs, the controller's data and the edges' state.
	Dir string
	// Etcd runs the controller on a real etcd (started in the controller's
	// namespace) instead of its embedded store.
	Etcd bool
	// APIToken, when set, is the controller's api_token (the API off
	// loopback, over HTTPS).
	APIToken string
}

// Cluster is a controller and its edges running on a topology.
type Cluster struct {
	Topo *topo.Topology
	// Home is the site whose edge namespace runs the controller.
	Home *topo.Site
	// API calls the controller from inside Home's namespace, like the
	// walkthrough's curl to 127.0.0.1.
	API *api.Client

	opts Options
	etcd *topo.Proc

	mu         sync.Mutex
	controller *topo.Proc
	secret     string
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
// on make build having run).
func Build(dir string) error {
	out, err := exec.Command("go", "build", "-o", dir, "github.com/cframe/cframe/cmd/...").CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	return nil
}

// Start starts the controller (and etcd) in home's edge namespace and waits
// until its API answers.
func Start(t *topo.Topology, home *topo.Site, opts Options) (*Cluster, error) {
	c := &Cluster{Topo: t, Home: home, opts: opts}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	c.API = api.NewClient(fmt.Sprintf("http://127.0.0.1:%d", APIPort), "")
	c.API.HTTP.Transport = &http.Transport{DialContext: topo.Dialer{NS: home.Edge}.DialContext}
	if opts.Etcd {
		if err := c.startEtcd(); err != nil {
			return nil, err
		}
	}
	if err := c.StartController(); err != nil {
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
	return c.waitFor(p, "etcd.log", func() error {
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
func (c *Cluster) waitFor(p *topo.Proc, log string, ready func() error) error {
	return topo.Eventually(20*time.Second, func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited: %s", p, tail(c.path(log)))
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

// ControllerConfig is the controller.toml the cluster writes: the
// walkthrough's keys plus a data_dir inside Dir.
func (c *Cluster) ControllerConfig() string {
	cfg := fmt.Sprintf("listen_addr=\":%d\"\napi_addr=\":%d\"\ndata_dir = %q\n", NATSPort, APIPort, c.path("controller"))
	if c.opts.Etcd {
		cfg += fmt.Sprintf("\netcd = [\n    %q\n]\n", etcdClient)
	}
	if c.opts.APIToken != "" {
		cfg += fmt.Sprintf("api_token = %q\n", c.opts.APIToken)
	}
	return cfg
}

// ControllerDir is the controller's data_dir (its secret, its generated
// TLS key and certificate in tls/).
func (c *Cluster) ControllerDir() string { return c.path("controller") }

// APIAddr is the API's address off loopback: the home edge's public
// address, where the API answers HTTPS.
func (c *Cluster) APIAddr() string { return fmt.Sprintf("%s:%d", c.Home.Underlay(), APIPort) }

// RemoteAPI calls the API over HTTPS from namespace ns with the cluster's
// api_token, verifying the controller as t says.
func (c *Cluster) RemoteAPI(ns string, t bus.Trust) *api.Client {
	cl := api.NewClient("https://"+c.APIAddr(), c.opts.APIToken)
	cl.Trust(t, topo.Dialer{NS: ns})
	return cl
}

// StartController (re)starts the controller and waits for its API.
func (c *Cluster) StartController() error {
	cfgPath := c.path("controller.toml")
	if err := os.WriteFile(cfgPath, []byte(c.ControllerConfig()), 0o644); err != nil {
		return err
	}
	p, err := c.Topo.Net.Start(c.Home.Edge, c.path("controller.log"), filepath.Join(c.opts.Bin, "cframe-controller"), "-c", cfgPath)
	if err != nil {
		return err
	}
	if err := c.waitFor(p, "controller.log", func() error {
		_, err := c.API.List(context.Background())
		return err
	}); err != nil {
		p.Kill()
		return err
	}
	secret, err := os.ReadFile(filepath.Join(c.path("controller"), "secret"))
	if err != nil {
		p.Kill()
		return err
	}
	c.mu.Lock()
	c.controller, c.secret = p, strings.TrimSpace(string(secret))
	c.mu.Unlock()
	return nil
}

// StopController stops the controller with SIGTERM.
func (c *Cluster) StopController() {
	c.mu.Lock()
	p := c.controller
	c.mu.Unlock()
	if p != nil {
		p.Stop(5 * time.Second)
	}
}

// Controller is the running controller process, or nil.
func (c *Cluster) Controller() *topo.Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.controller
}

// Secret is the controller's join secret (from <data_dir>/secret).
func (c *Cluster) Secret() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.secret
}

// ControllerAddr is the address edges reach the controller at: the home
// edge's public address, as $CONTROLLER_PIP in the walkthrough.
func (c *Cluster) ControllerAddr() string {
	return fmt.Sprintf("%s:%d", c.Home.Underlay(), NATSPort)
}

// NewEdge writes the config of an edge agent for site (not started yet).
// extra is appended to the walkthrough's edge.toml, e.g. "masquerade = true".
func (c *Cluster) NewEdge(name string, site *topo.Site, extra ...string) (*Edge, error) {
	e := &Edge{Name: name, Site: site, c: c,
		Config: c.path(name + ".toml"), StateDir: c.path(name + "-state"), Log: c.path(name + ".log")}
	c.mu.Lock()
	secret := c.secret
	c.mu.Unlock()
	cfg := fmt.Sprintf("controller=%q\nname = %q\nlisten_addr=\":%d\"\n\nsecret = %q\nstate_dir = %q\n",
		c.ControllerAddr(), name, TunnelPort, secret, e.StateDir)
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

// Add registers e with the controller through the API.
func (e *Edge) Add(ctx context.Context) (api.ChangeResult, error) { return e.c.API.Add(ctx, e.Spec()) }

// Start runs the agent in its site's edge namespace.
func (e *Edge) Start() error {
	p, err := e.c.Topo.Net.Start(e.Site.Edge, e.Log, filepath.Join(e.c.opts.Bin, "cframe-edge"), "-c", e.Config)
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

// Ctl runs cframectl in the controller's namespace and returns its output.
func (c *Cluster) Ctl(args ...string) (string, error) {
	return c.Topo.Net.Exec(c.Home.Edge, append([]string{filepath.Join(c.opts.Bin, "cframectl")}, args...)...)
}
