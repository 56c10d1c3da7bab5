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
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cframe/cframe/bus"
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
	// PreviousSecrets are join secrets still accepted while the secret is
	// rotated (edges are moved to the new one, then the list is emptied).
	PreviousSecrets []string `toml:"previous_secrets"`
	// TLSCert and TLSKey name the operator's certificate for the bus and
	// the HTTPS API; without them one is generated into data_dir/tls.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
}

// Edge is edge.toml.
type Edge struct {
	Controller string `toml:"controller"`
	Name       string `toml:"name"`
	ListenAddr string `toml:"listen_addr"`
	Secret     string `toml:"secret"`
	StateDir   string `toml:"state_dir"`
	Mode       string `toml:"mode"`
	Device     string `toml:"device"`
	MTU        int    `toml:"mtu"`
	Masquerade bool   `toml:"masquerade"`
	LocalAddr  string `toml:"local_addr"`
	// ControllerCA pins the CA the controller's certificate must chain to
	// (with its host name checked) instead of the join-secret proof.
	ControllerCA string `toml:"controller_ca"`
}

// LoadController reads and checks a controller config, filling defaults.
func LoadController(path string) (Controller, error) {
	c := Controller{ListenAddr: ":58422", APIAddr: ":12345", DataDir: "/var/lib/cframe"}
	if err := decode(path, &c); err != nil {
		return c, err
	}
	return c, c.check(path)
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
	return nil
}

// LoadEdge reads and checks an edge config, filling defaults.
func LoadEdge(path string) (Edge, error) {
	e := Edge{ListenAddr: ":58423", StateDir: "/var/lib/cframe-edge", Mode: "vxlan", Device: "cframe0"}
	if err := decode(path, &e); err != nil {
		return e, err
	}
	return e, e.check(path)
}

func (e Edge) check(path string) error {
	fail := func(format string, a ...any) error { return fmt.Errorf("%s: "+format, append([]any{path}, a...)...) }
	if e.Controller == "" {
		return fail("controller is required (the controller's address, like \"203.0.113.1:58422\")")
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
	if e.Device == "" || len(e.Device) > 15 || strings.ContainsAny(e.Device, "/ \t:") {
		return fail("device %q is not a valid interface name (1-15 characters)", e.Device)
	}
	if e.MTU != 0 && (e.MTU < 576 || e.MTU > 9000) {
		return fail("mtu %d is out of range (576-9000, or 0 for automatic)", e.MTU)
	}
	if e.LocalAddr != "" {
		if a, err := netip.ParseAddr(e.LocalAddr); err != nil || !a.Is4() {
			return fail("local_addr %q is not an IPv4 address", e.LocalAddr)
		}
	}
	if e.StateDir == "" {
		return fail("state_dir is empty")
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
