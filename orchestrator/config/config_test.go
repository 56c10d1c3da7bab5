package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The walkthrough's files, verbatim, must load.
func TestWalkthroughConfigs(t *testing.T) {
	c, err := LoadController(write(t, "\nlisten_addr=\":58422\"\napi_addr=\":12345\"\n\netcd = [\n    \"127.0.0.1:2379\"\n]\n"))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	host = defaultServerName(host)
	if c.ListenAddr != ":58422" || c.APIAddr != ":12345" || len(c.Etcd) != 1 || c.Etcd[0] != "127.0.0.1:2379" || c.DataDir != "/var/lib/cframe" ||
		c.ServerName != host || c.Clustered() {
		t.Fatalf("controller config = %+v", c)
	}
	// The walkthrough's edge file plus the required join secret.
	e, err := LoadEdge(write(t, "controller=\"203.0.113.1:58422\"\nname = \"sz-1\"\nlisten_addr=\":58423\"\nsecret = \"s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(e.Controller, Addrs{"203.0.113.1:58422"}) || e.Name != "sz-1" || e.Mode != "vxlan" || e.Device != "cframe0" || e.StateDir != "/var/lib/cframe-edge" ||
		e.ChecksumOffload != ChecksumAuto {
		t.Fatalf("edge config = %+v", e)
	}
}

// A host name that is not a valid server_name — never set ("(none)"), or
// with characters server_name does not allow — must not stop the
// walkthrough's controller.toml (no server_name) from loading.
func TestServerNameDefault(t *testing.T) {
	walkthrough := write(t, "listen_addr=\":58422\"\napi_addr=\":12345\"\n")
	defer func(h func() (string, error)) { hostname = h }(hostname)
	for host, want := range map[string]string{
		"(none)":                DefaultServerName,
		"":                      DefaultServerName,
		"gw-1.example.com":      "gw-1.example.com",
		"gw 1 (sz)":             "gw-1--sz-",
		"-édge_1":               "dge_1",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
		"...":                   DefaultServerName,
	} {
		hostname = func() (string, error) { return host, nil }
		c, err := LoadController(walkthrough)
		if err != nil || c.ServerName != want {
			t.Errorf("host name %q: server_name %q (%v), want %q", host, c.ServerName, err, want)
		}
	}
}

func TestSamplesLoad(t *testing.T) {
	if _, err := LoadController(write(t, SampleController)); err != nil {
		t.Fatalf("sample controller.toml: %v", err)
	}
	// The sample leaves secret empty on purpose; fill it as an operator would.
	if _, err := LoadEdge(write(t, strings.Replace(SampleEdge, `secret = ""`, `secret = "x"`, 1))); err != nil {
		t.Fatalf("sample edge.toml: %v", err)
	}
}

func TestEdgeErrors(t *testing.T) {
	base := "controller=\"1.2.3.4:58422\"\nname=\"sz-1\"\nsecret=\"s\"\n"
	tests := []struct{ body, want string }{
		{base + "lisen_addr=\":1\"\n", "unknown key lisen_addr"},
		{"name=\"sz-1\"\nsecret=\"s\"\n", "controller is required"},
		{"controller=\"1.2.3.4:58422\"\nname=\"sz-1\"\n", "secret is required"},
		{"controller=\"1.2.3.4:58422\"\nname=\"SZ\"\nsecret=\"s\"\n", "lowercase"},
		{base + "listen_addr=\"58423\"\n", "not host:port"},
		{base + "listen_addr=\":0\"\n", "port must be"},
		{base + "mode=\"ipip\"\n", "mode \"ipip\" is unknown"},
		{base + "device=\"averyveryverylongname\"\n", "not a valid interface name"},
		{base + "mtu=100\n", "out of range"},
		{base + "local_addr=\"nope\"\n", "not an IPv4 or global IPv6 address"},
		{base + "local_addr=\"fe80::1\"\n", "not an IPv4 or global IPv6 address"},
		{base + "name=", "config"},
		{base + "metrics_addr=\"9474\"\n", "metrics_addr"},
		{"controller=[]\nname=\"sz-1\"\nsecret=\"s\"\n", "controller is required"},
		{"controller=[\"1.2.3.4:58422\", \"1.2.3.4:58422\"]\nname=\"sz-1\"\nsecret=\"s\"\n", "controller lists 1.2.3.4:58422 twice"},
		{"controller=58422\nname=\"sz-1\"\nsecret=\"s\"\n", "want an address"},
		{base + "checksum_offload=\"fast\"\n", `want "auto", "on" or "off"`},
		{base + "checksum_offload=1\n", `want "auto", "on" or "off"`},
	}
	for _, tt := range tests {
		_, err := LoadEdge(write(t, tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadEdge(%q) = %v, want error containing %q", tt.body, err, tt.want)
		}
	}
}

// checksum_offload takes auto, on and off, and the booleans of earlier
// versions as on and off.
func TestEdgeChecksumOffload(t *testing.T) {
	base := "controller=\"1.2.3.4:58422\"\nname=\"sz-1\"\nsecret=\"s\"\n"
	for value, want := range map[string]Checksum{`"auto"`: ChecksumAuto, `"on"`: ChecksumOn, `"off"`: ChecksumOff, `"Off"`: ChecksumOff, "true": ChecksumOn, "false": ChecksumOff} {
		e, err := LoadEdge(write(t, base+"checksum_offload = "+value+"\n"))
		if err != nil || e.ChecksumOffload != want {
			t.Errorf("checksum_offload = %s: %q (%v), want %q", value, e.ChecksumOffload, err, want)
		}
	}
}

// An edge names one controller (the walkthrough) or several.
func TestEdgeControllerList(t *testing.T) {
	e, err := LoadEdge(write(t, "controller=[\"198.51.100.10:58422\", \"203.0.113.10:58422\", \"192.0.2.10:58422\"]\nname=\"sz-1\"\nsecret=\"s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Addrs{"198.51.100.10:58422", "203.0.113.10:58422", "192.0.2.10:58422"}); !slices.Equal(e.Controller, want) {
		t.Fatalf("controller = %q, want %q", e.Controller, want)
	}
}

// A three-controller cluster on this host's loopback loads; cluster_addr's
// explicit host or an interface address identifies the controller itself.
func TestControllerCluster(t *testing.T) {
	r := remotes(t)
	for _, body := range []string{
		"server_name=\"c1\"\ncluster_addr=\":58424\"\ncluster_peers=[\"127.0.0.1:58424\", \"REMOTE2:58424\", \"REMOTE3:58424\"]\n",
		"server_name=\"c2\"\ncluster_addr=\"REMOTE2:58424\"\ncluster_peers=[\"REMOTE1:58424\", \"REMOTE2:58424\", \"REMOTE3:58424\"]\n",
	} {
		c, err := LoadController(write(t, r.Replace(body)))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if !c.Clustered() || len(c.ClusterPeers) != 3 || !strings.HasPrefix(c.ServerName, "c") {
			t.Fatalf("config = %+v", c)
		}
	}
}

// The validation table of the cluster keys: each mistake is one line naming the key.
func TestControllerErrors(t *testing.T) {
	peers := func(p ...string) string { return "cluster_peers=[\"" + strings.Join(p, "\", \"") + "\"]\n" }
	cluster := "cluster_addr=\":58424\"\n"
	tests := []struct{ body, want string }{
		{"api_adr=\":1\"\n", "unknown key api_adr"},
		{"api_addr=\"12345\"\n", "api_addr"},
		{"etcd=[\"\"]\n", "empty endpoint"},
		{"audit_retention=\"forever\"\n", "invalid duration"},
		{"audit_retention=\"10s\"\n", "too short"},
		{"audit_max_bytes=1000\n", "too small"},
		{cluster + peers("127.0.0.1:58424", "REMOTE2:58424", "REMOTE3:58424") + "cluster_port=1\n", "unknown key cluster_port"},
		{cluster + peers("127.0.0.1:58424", "REMOTE2:58424"), "cluster_peers lists 2 controller(s): a cluster needs at least 3"},
		{cluster + peers("127.0.0.1:58424"), "a cluster needs at least 3"},
		{cluster + peers("REMOTE1:58424", "REMOTE2:58424", "REMOTE3:58424"), "does not contain this controller"},
		{cluster + peers("127.0.0.1:58425", "REMOTE2:58424", "REMOTE3:58424"), "does not contain this controller"},
		{cluster + peers("127.0.0.1:58424", "REMOTE2:58424", "REMOTE2:58424"), "lists REMOTE2:58424 twice"},
		{cluster + peers("127.0.0.1:58424", "REMOTE2", "REMOTE3:58424"), "\"REMOTE2\" is not host:port"},
		{cluster, "cluster_addr needs cluster_peers"},
		{peers("127.0.0.1:58424", "REMOTE2:58424", "REMOTE3:58424"), "cluster_peers needs cluster_addr"},
		{"cluster_addr=\":58422\"\n" + peers("127.0.0.1:58422", "REMOTE2:58422", "REMOTE3:58422"), "uses listen_addr's port"},
		{"server_name=\"my controller\"\n", "server_name \"my controller\" is invalid"},
		{"secret=\"s\"\ncluster_secret=\"s\"\n" + cluster + peers("127.0.0.1:58424", "REMOTE2:58424", "REMOTE3:58424"), "cluster_secret is the join secret"},
		{"cluster_secret=\"c\"\n", "cluster_secret needs cluster_addr and cluster_peers"},
		{"tls_cert=\"/etc/cframe/c.pem\"\n", "tls_cert and tls_key go together"},
		{"previous_secrets=[\"\"]\n", "previous_secrets: empty secret"},
		{"secret=\"a\"\nprevious_secrets=[\"a\"]\n", "repeats secret"},
	}
	r := remotes(t)
	for _, tt := range tests {
		tt.body, tt.want = r.Replace(tt.body), r.Replace(tt.want)
		_, err := LoadController(write(t, tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("LoadController(%q) = %v, want one line containing %q", tt.body, err, tt.want)
		}
	}
}

// remotes replaces REMOTE1..3 with addresses no interface of this host holds
// (the controller's peers on other hosts).
func remotes(t *testing.T) *strings.Replacer {
	t.Helper()
	local := map[string]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			local[n.IP.String()] = true
		}
	}
	var pairs []string
	for i := 1; len(pairs) < 6 && i < 255; i++ {
		if ip := fmt.Sprintf("203.0.113.%d", i); !local[ip] {
			pairs = append(pairs, fmt.Sprintf("REMOTE%d", len(pairs)/2+1), ip)
		}
	}
	return strings.NewReplacer(pairs...)
}

func TestAuditDefaultsAndDays(t *testing.T) {
	c, err := LoadController(write(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if c.AuditRetention.Duration != 30*24*time.Hour || c.AuditMaxBytes != 256<<20 {
		t.Fatalf("audit defaults = %v, %d", c.AuditRetention, c.AuditMaxBytes)
	}
	c, err = LoadController(write(t, "audit_retention = \"7d12h\"\naudit_max_bytes = 1048576\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.AuditRetention.Duration != 7*24*time.Hour+12*time.Hour || c.AuditMaxBytes != 1<<20 {
		t.Fatalf("audit settings = %v, %d", c.AuditRetention, c.AuditMaxBytes)
	}
}
