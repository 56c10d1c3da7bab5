package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if c.ListenAddr != ":58422" || c.APIAddr != ":12345" || len(c.Etcd) != 1 || c.Etcd[0] != "127.0.0.1:2379" || c.DataDir != "/var/lib/cframe" {
		t.Fatalf("controller config = %+v", c)
	}
	// The walkthrough's edge file plus the required join secret.
	e, err := LoadEdge(write(t, "controller=\"203.0.113.1:58422\"\nname = \"sz-1\"\nlisten_addr=\":58423\"\nsecret = \"s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Controller != "203.0.113.1:58422" || e.Name != "sz-1" || e.Mode != "vxlan" || e.Device != "cframe0" || e.StateDir != "/var/lib/cframe-edge" {
		t.Fatalf("edge config = %+v", e)
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
		{base + "local_addr=\"nope\"\n", "not an IPv4 address"},
		{base + "name=", "config"},
	}
	for _, tt := range tests {
		_, err := LoadEdge(write(t, tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadEdge(%q) = %v, want error containing %q", tt.body, err, tt.want)
		}
	}
}

func TestControllerErrors(t *testing.T) {
	tests := []struct{ body, want string }{
		{"api_adr=\":1\"\n", "unknown key api_adr"},
		{"api_addr=\"12345\"\n", "api_addr"},
		{"etcd=[\"\"]\n", "empty endpoint"},
		{"tls_cert=\"/etc/cframe/c.pem\"\n", "tls_cert and tls_key go together"},
		{"previous_secrets=[\"\"]\n", "previous_secrets: empty secret"},
		{"secret=\"a\"\nprevious_secrets=[\"a\"]\n", "repeats secret"},
	}
	for _, tt := range tests {
		_, err := LoadController(write(t, tt.body))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadController(%q) = %v, want error containing %q", tt.body, err, tt.want)
		}
	}
}
