package agent

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// TestWireGuardKey: generated once with mode 0600, the same key read back
// after, and a damaged file refused without quoting it.
func TestWireGuardKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", wireGuardKeyFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	k, created, err := loadWireGuardKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	again, created, err := loadWireGuardKey(path)
	if err != nil || created || again != k {
		t.Fatalf("restart: same key %v, created %v, %v", again == k, created, err)
	}
	secret := "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
	if err := os.WriteFile(path, []byte(secret+"xx"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadWireGuardKey(path); err == nil || strings.Contains(err.Error(), "c2Vj") {
		t.Errorf("damaged key file: %v", err)
	}
}

// TestFollowLinks: an encrypting edge warns once per peer whose link runs
// plaintext (not again while it stays so) and says when it is encrypted
// again; an edge that cannot encrypt at all warns of no link (it said so
// once, at start).
func TestFollowLinks(t *testing.T) {
	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	own, peer := key(), key()
	set := map[string]bus.Edge{
		"sz-1": {Name: "sz-1", HostAddr: netip.MustParseAddrPort("198.51.100.10:58423"), Mesh: netip.MustParseAddr("240.207.0.1"), WireGuardKey: own.PublicKey().String()},
		"hk-1": {Name: "hk-1", HostAddr: netip.MustParseAddrPort("203.0.113.10:58423"), Mesh: netip.MustParseAddr("240.207.0.2"), Plaintext: true},
		"gz-3": {Name: "gz-3", HostAddr: netip.MustParseAddrPort("192.0.2.10:58423"), Mesh: netip.MustParseAddr("240.207.0.3"), WireGuardKey: peer.PublicKey().String()},
	}
	var logs bytes.Buffer
	a := &Agent{log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: newAgentMetrics(nil),
		local: mesh.Local{Name: "sz-1", Mode: netcfg.ModeVXLAN, Port: 58423, Encryption: mesh.EncryptPrefer, WireGuardKey: own}}
	a.followLinks(set)
	a.followLinks(set)
	if n := strings.Count(logs.String(), `msg="link not encrypted" peer=hk-1`); n != 1 {
		t.Errorf("warned %d times of hk-1's plaintext link, want once:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "peer=gz-3") || a.links["gz-3"] != "" || !strings.HasPrefix(a.links["hk-1"], "plaintext: ") {
		t.Errorf("links %q, log:\n%s", a.links, logs.String())
	}
	hk := set["hk-1"]
	hk.Plaintext, hk.WireGuardKey = false, key().PublicKey().String()
	set["hk-1"] = hk
	a.followLinks(set)
	if !strings.Contains(logs.String(), `msg="link encrypted" peer=hk-1`) {
		t.Errorf("no word of hk-1's link encrypted again:\n%s", logs.String())
	}

	logs.Reset()
	b := &Agent{log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: newAgentMetrics(nil),
		local: mesh.Local{Name: "sz-1", Mode: netcfg.ModeVXLAN, Port: 58423, Encryption: mesh.EncryptPrefer, NoWireGuard: "no module"}}
	b.followLinks(set)
	if logs.Len() != 0 || len(b.links) != 2 {
		t.Errorf("an edge without WireGuard: links %q, logged:\n%s", b.links, logs.String())
	}
}
