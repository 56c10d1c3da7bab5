// Package config reads controller.toml and edge.toml. The reference
// walkthrough's keys keep working unchanged; every further key is optional
// with a default, and an unknown key is an error (a typo must not silently
// fall back to a default on a gateway).
package config

import (
	_ "embed"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
)

// SampleController and SampleEdge are the commented sample files `make
// build` puts into dist/.
var (
	//go:embed samples/controller.toml
	SampleController string
	//go:embed samples/edge.toml
	SampleEdge string
)

// Controller is controller.toml.
type Controller struct {
	ListenAddr string   `toml:"listen_addr"`
	APIAddr    string   `toml:"api_addr"`
	Etcd       []string `toml:"etcd"`
	DataDir    string   `toml:"data_dir"`
	Secret     string   `toml:"secret"`
	APIToken   string   `toml:"api_token"`
	// AuditRetention is how long audit events are kept; AuditMaxBytes
	// caps their total size (the oldest go first).
	AuditRetention Duration `toml:"audit_retention"`
	AuditMaxBytes  int64    `toml:"audit_max_bytes"`
	// PreviousSecrets are join secrets still accepted while the secret is
	// rotated (edges are moved to the new one, then the list is emptied).
	PreviousSecrets []string `toml:"previous_secrets"`
	// TLSCert and TLSKey name the operator's certificate for the bus and
	// the HTTPS API; without them one is generated into data_dir/tls.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// ServerName names this controller in its cluster (default: the host
	// name); ClusterAddr is its cluster port and ClusterPeers every
	// controller's cluster address, its own included. Without them the
	// controller runs alone.
	ServerName   string   `toml:"server_name"`
	ClusterAddr  string   `toml:"cluster_addr"`
	ClusterPeers []string `toml:"cluster_peers"`
	// ClusterSecret is what the controllers of a cluster prove to each
	// other on the cluster port (default: derived from the join secret,
	// which every edge holds too).
	ClusterSecret string `toml:"cluster_secret"`
}

// Clustered reports whether the controller is one of a cluster.
func (c Controller) Clustered() bool { return len(c.ClusterPeers) > 0 }

// Audit trail defaults.
const (
	DefaultAuditRetention = 30 * 24 * time.Hour
	DefaultAuditMaxBytes  = 256 << 20
)

// Duration is a duration in a config file: Go's syntax ("90m", "12h") or
// days ("30d").
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := bus.ParseDuration(string(b))
	d.Duration = v
	return err
}

// Edge is edge.toml.
type Edge struct {
	// Controller is the controllers' bus addresses: one string as in the
	// walkthrough, or a list.
	Controller Addrs  `toml:"controller"`
	Name       string `toml:"name"`
	ListenAddr string `toml:"listen_addr"`
	Secret     string `toml:"secret"`
	StateDir   string `toml:"state_dir"`
	Mode       string `toml:"mode"`
	Device     string `toml:"device"`
	MTU        int    `toml:"mtu"`
	Masquerade bool   `toml:"masquerade"`
	LocalAddr  string `toml:"local_addr"`
	// ChecksumOffload is the VXLAN device's checksum setting: "auto" (the
	// default: the agent chooses), "on" or "off" (see Checksum).
	ChecksumOffload Checksum `toml:"checksum_offload"`
	// Encryption is how the tunnel is encrypted (kernel WireGuard):
	// "prefer" (the default) encrypts with every peer that can and runs
	// plaintext, loudly, with the others; "required" gives a peer that
	// cannot encrypt no path; "none" runs plaintext (private links).
	Encryption string `toml:"encryption"`
	// MetricsAddr is where the agent serves Prometheus metrics; empty: off.
	MetricsAddr string `toml:"metrics_addr"`
	// ControllerCA pins the CA the controller's certificate must chain to
	// (with its host name checked) instead of the join-secret proof.
	ControllerCA string `toml:"controller_ca"`
}

// Checksum is edge.toml's checksum_offload: ChecksumAuto, ChecksumOn or
// ChecksumOff. The booleans of earlier versions load as on (true) and off
// (false).
type Checksum string

const (
	// ChecksumAuto: the agent runs the fast setting (transmit checksum
	// offload on, zero outer UDP checksum) and falls back to the safe one
	// when its probes prove a path breaks it (orchestrator/agent).
	ChecksumAuto Checksum = "auto"
	// ChecksumOn: always the fast setting.
	ChecksumOn Checksum = "on"
	// ChecksumOff: always the safe setting (offload off, outer checksum on).
	ChecksumOff Checksum = "off"
)

// UnmarshalTOML implements toml.Unmarshaler.
func (c *Checksum) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case bool:
		*c = ChecksumOff
		if v {
			*c = ChecksumOn
		}
		return nil
	case string:
		switch x := Checksum(strings.ToLower(v)); x {
		case ChecksumAuto, ChecksumOn, ChecksumOff:
			*c = x
			return nil
		}
	}
	return fmt.Errorf("checksum_offload = %#v: want \"auto\", \"on\" or \"off\"", v)
}

// Addrs is a list of addresses that TOML may give as one string or as an
// array of strings.
type Addrs []string

// UnmarshalTOML implements toml.Unmarshaler.
func (a *Addrs) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*a = Addrs{v}
		return nil
	case []any:
		out := make(Addrs, 0, len(v))
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				return fmt.Errorf("want addresses as strings, got %v", x)
			}
			out = append(out, s)
		}
		*a = out
		return nil
	}
	return fmt.Errorf("want an address or a list of addresses, got %v", v)
}

// LoadController reads and checks a controller config, filling defaults.
func LoadController(path string) (Controller, error) {
	c := Controller{ListenAddr: ":58422", APIAddr: ":12345", DataDir: "/var/lib/cframe",
		AuditRetention: Duration{DefaultAuditRetention}, AuditMaxBytes: DefaultAuditMaxBytes}
	if err := decode(path, &c); err != nil {
		return c, err
	}
	if c.ServerName == "" {
		host, _ := hostname()
		c.ServerName = defaultServerName(host)
	}
	return c, c.check(path)
}

// hostname is os.Hostname (a variable for the tests).
var hostname = os.Hostname

// DefaultServerName is server_name where the host has no usable name.
const DefaultServerName = "cframe-controller"

// defaultServerName derives a valid server_name from the host name: the
// characters server_name does not allow become hyphens, leading
// punctuation goes, the rest is cut at 64. A host name that was never set
// (the kernel's "(none)") or leaves nothing is DefaultServerName.
func defaultServerName(host string) string {
	if host == "(none)" {
		return DefaultServerName
	}
	name := strings.TrimLeft(strings.Map(func(r rune) rune {
		if r < 128 && (r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return r
		}
		return '-'
	}, host), "._-")
	if len(name) > 64 {
		name = name[:64]
	}
	if name == "" {
		return DefaultServerName
	}
	return name
}

func (c Controller) check(path string) error {
	for key, addr := range map[string]string{"listen_addr": c.ListenAddr, "api_addr": c.APIAddr} {
		if _, err := ListenPort(addr); err != nil {
			return fmt.Errorf("%s: %s: %w", path, key, err)
		}
	}
	for _, ep := range c.Etcd {
		if strings.TrimSpace(ep) == "" {
			return fmt.Errorf("%s: etcd: empty endpoint", path)
		}
	}
	if c.DataDir == "" {
		return fmt.Errorf("%s: data_dir is empty", path)
	}
	if c.AuditRetention.Duration < time.Minute {
		return fmt.Errorf("%s: audit_retention %s is too short (at least 1m; default 30d)", path, c.AuditRetention.Duration)
	}
	if c.AuditMaxBytes < 1<<20 {
		return fmt.Errorf("%s: audit_max_bytes %d is too small (at least 1048576; default %d)", path, c.AuditMaxBytes, DefaultAuditMaxBytes)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%s: tls_cert and tls_key go together (the certificate and its private key, PEM)", path)
	}
	for _, p := range c.PreviousSecrets {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("%s: previous_secrets: empty secret", path)
		}
		if p == c.Secret {
			return fmt.Errorf("%s: previous_secrets repeats secret", path)
		}
	}
	if !serverNameRE.MatchString(c.ServerName) {
		return fmt.Errorf("%s: server_name %q is invalid: use 1-64 letters, digits, dots, hyphens and underscores", path, c.ServerName)
	}
	if err := c.checkCluster(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

var serverNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// MinClusterSize is the smallest cluster of controllers: with two, losing
// either one stops every write, which is worse than one controller.
const MinClusterSize = 3

// checkCluster checks cluster_addr and cluster_peers: both or neither, at
// least MinClusterSize distinct peers, and this controller among them.
func (c Controller) checkCluster() error {
	switch {
	case c.ClusterAddr == "" && len(c.ClusterPeers) == 0 && c.ClusterSecret != "":
		return fmt.Errorf("cluster_secret needs cluster_addr and cluster_peers")
	case c.ClusterAddr == "" && len(c.ClusterPeers) == 0:
		return nil
	case c.ClusterSecret != "" && c.ClusterSecret == c.Secret:
		return fmt.Errorf("cluster_secret is the join secret, which every edge holds: leave it out, or make it another")
	case c.ClusterAddr == "":
		return fmt.Errorf("cluster_peers needs cluster_addr (this controller's cluster port, like \":58424\")")
	case len(c.ClusterPeers) == 0:
		return fmt.Errorf("cluster_addr needs cluster_peers (every controller's cluster address, this one's included)")
	}
	port, err := ListenPort(c.ClusterAddr)
	if err != nil {
		return fmt.Errorf("cluster_addr: %w", err)
	}
	if p, _ := ListenPort(c.ListenAddr); p == port {
		return fmt.Errorf("cluster_addr %q uses listen_addr's port", c.ClusterAddr)
	}
	if n := len(c.ClusterPeers); n < MinClusterSize {
		return fmt.Errorf("cluster_peers lists %d controller(s): a cluster needs at least %d (with two, losing either one stops every write)", n, MinClusterSize)
	}
	self := false
	seen := map[string]bool{}
	for _, p := range c.ClusterPeers {
		host, ps, err := net.SplitHostPort(p)
		if n, perr := strconv.ParseUint(ps, 10, 16); err != nil || perr != nil || n == 0 || host == "" {
			return fmt.Errorf("cluster_peers: %q is not host:port (like \"172.18.171.245:58424\")", p)
		}
		if seen[p] {
			return fmt.Errorf("cluster_peers lists %s twice", p)
		}
		seen[p] = true
		if ps == strconv.Itoa(int(port)) && isSelf(host, c.ClusterAddr) {
			self = true
		}
	}
	if !self {
		return fmt.Errorf("cluster_peers %s does not contain this controller: list its own cluster address too (an address of this host with port %d)",
			strings.Join(c.ClusterPeers, ", "), port)
	}
	return nil
}

// isSelf reports whether host names this machine: cluster_addr's own
// host, or an address of one of its interfaces.
func isSelf(host, clusterAddr string) bool {
	if h, _, _ := net.SplitHostPort(clusterAddr); h != "" && h == host {
		return true
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			for _, ip := range ips {
				if n.IP.Equal(ip) {
					return true
				}
			}
		}
	}
	return false
}

// LoadEdge reads and checks an edge config, filling defaults.
func LoadEdge(path string) (Edge, error) {
	e := Edge{ListenAddr: ":58423", StateDir: "/var/lib/cframe-edge", Mode: "vxlan", Device: "cframe0", ChecksumOffload: ChecksumAuto, Encryption: "prefer"}
	if err := decode(path, &e); err != nil {
		return e, err
	}
	return e, e.check(path)
}

func (e Edge) check(path string) error {
	fail := func(format string, a ...any) error { return fmt.Errorf("%s: "+format, append([]any{path}, a...)...) }
	if len(e.Controller) == 0 {
		return fail("controller is required (the controller's address, like \"203.0.113.1:58422\", or a list of them)")
	}
	for i, a := range e.Controller {
		if strings.TrimSpace(a) == "" {
			return fail("controller: empty address")
		}
		if slices.Contains(e.Controller[:i], a) {
			return fail("controller lists %s twice", a)
		}
	}
	if err := bus.CheckName(e.Name); err != nil {
		return fail("%v", err)
	}
	if e.Secret == "" {
		return fail("secret is required: copy it from the controller's <data_dir>/secret")
	}
	if _, err := ListenPort(e.ListenAddr); err != nil {
		return fail("listen_addr: %v", err)
	}
	if e.Mode != "vxlan" && e.Mode != "gre" {
		return fail("mode %q is unknown: use \"vxlan\" or \"gre\"", e.Mode)
	}
	if err := netcfg.CheckDevice(e.Device); err != nil {
		return fail("%v", err)
	}
	switch e.Encryption {
	case "prefer", "required", "none":
	default:
		return fail("encryption %q is unknown: use \"prefer\" (the default), \"required\" or \"none\"", e.Encryption)
	}
	if err := netcfg.CheckMTU(e.MTU); err != nil {
		return fail("%v", err)
	}
	if e.LocalAddr != "" {
		if a, err := netip.ParseAddr(e.LocalAddr); err != nil || a.Zone() != "" || a.Is4In6() || a.Is6() && !a.IsGlobalUnicast() {
			return fail("local_addr %q is not an IPv4 or global IPv6 address", e.LocalAddr)
		}
	}
	if e.StateDir == "" {
		return fail("state_dir is empty")
	}
	if e.MetricsAddr != "" {
		if _, err := ListenPort(e.MetricsAddr); err != nil {
			return fail("metrics_addr: %v", err)
		}
	}
	return nil
}

// ListenPort returns the port of a listen address like ":58423".
func ListenPort(addr string) (uint16, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%q is not host:port (like \":58423\")", addr)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q: port must be 1-65535", addr)
	}
	return uint16(n), nil
}

func decode(path string, v any) error {
	md, err := toml.DecodeFile(path, v)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
	}
	return nil
}
