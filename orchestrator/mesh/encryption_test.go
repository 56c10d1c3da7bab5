package mesh

import (
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
)

// TestEncryption: how gz-3 runs its links to sz-1 (encrypts) and hk-1
// (encryption "none"), for each of its own settings and states, and the
// kernel state that follows.
func TestEncryption(t *testing.T) {
	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	gzKey, szKey := key(), key()
	encrypts := func(e bus.Edge, mesh string, k wgtypes.Key) bus.Edge {
		e.Mesh, e.WireGuardKey = netip.MustParseAddr(mesh), k.PublicKey().String()
		return e
	}
	hk := edge("hk-1", "203.0.113.10:58423", "172.31.0.0/16")
	hk.Mesh, hk.Plaintext = netip.MustParseAddr("240.207.0.2"), true
	set := func(self bus.Edge) map[string]bus.Edge {
		return map[string]bus.Edge{"gz-3": self, "hk-1": hk,
			"sz-1": encrypts(edge("sz-1", "198.51.100.10:58423", "172.18.0.0/16"), "240.207.0.1", szKey)}
	}
	gz := edge("gz-3", "192.0.2.10:58423", "172.20.0.0/16")
	tests := []struct {
		name       string
		local      Local
		self       bus.Edge
		sz, hk     string // Link.String: "" encrypted
		wireGuard  bool
		vxlanPort  uint16
		peersInSet int
	}{
		{"prefer: encrypted with sz-1, plaintext with hk-1", Local{Encryption: EncryptPrefer, WireGuardKey: gzKey}, encrypts(gz, "240.207.0.3", gzKey),
			"", "plaintext: hk-1 does not encrypt", true, 58424, 2},
		{"required: no path to hk-1", Local{Encryption: EncryptRequired, WireGuardKey: gzKey}, encrypts(gz, "240.207.0.3", gzKey),
			"", "no path: hk-1 does not encrypt", true, 58424, 1},
		{"none: all plaintext", Local{Encryption: EncryptNone}, gz,
			`plaintext: encryption = "none" here`, `plaintext: encryption = "none" here`, false, 58423, 2},
		{"prefer without WireGuard in the kernel", Local{Encryption: EncryptPrefer, NoWireGuard: "no module"}, gz,
			"plaintext: no WireGuard here: no module", "plaintext: no WireGuard here: no module", false, 58423, 2},
		{"key not pinned yet: plaintext until it is", Local{Encryption: EncryptPrefer, WireGuardKey: gzKey}, func() bus.Edge { e := gz; e.Mesh = netip.MustParseAddr("240.207.0.3"); return e }(),
			"plaintext: the controller has not pinned this edge's WireGuard key yet", "plaintext: the controller has not pinned this edge's WireGuard key yet", false, 58423, 2},
		{"rotating: the old key still pinned, the links stay encrypted", Local{Encryption: EncryptPrefer, WireGuardKey: key(), RotatingFrom: gzKey}, encrypts(gz, "240.207.0.3", gzKey),
			"", "plaintext: hk-1 does not encrypt", true, 58424, 2},
		{"rotating from a key that is not the pinned one: plaintext", Local{Encryption: EncryptPrefer, WireGuardKey: key(), RotatingFrom: key()}, encrypts(gz, "240.207.0.3", gzKey),
			"plaintext: the controller pinned another WireGuard key", "plaintext: the controller pinned another WireGuard key", false, 58423, 2},
		{"another key pinned: plaintext, and says what to do", Local{Encryption: EncryptPrefer, WireGuardKey: key()}, encrypts(gz, "240.207.0.3", gzKey),
			"plaintext: the controller pinned another WireGuard key", "plaintext: the controller pinned another WireGuard key", false, 58423, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.local
			l.Name, l.Mode, l.Port = "gz-3", netcfg.ModeVXLAN, 58423
			s := set(tc.self)
			links := Links(l, s)
			if got := links["sz-1"].String(); !strings.HasPrefix(got, tc.sz) || (tc.sz == "") != (got == "") {
				t.Errorf("link to sz-1: %q, want %q", got, tc.sz)
			}
			if got := links["hk-1"].String(); !strings.HasPrefix(got, tc.hk) {
				t.Errorf("link to hk-1: %q, want %q", got, tc.hk)
			}
			d, _ := Desired(l, s, nil)
			if (d.WireGuard != nil) != tc.wireGuard || d.Port != tc.vxlanPort || len(d.Peers) != tc.peersInSet {
				t.Fatalf("WireGuard %v, VXLAN port %d, %d peers", d.WireGuard != nil, d.Port, len(d.Peers))
			}
			for _, p := range d.Peers {
				switch {
				case p.Name == "hk-1" && (p.Encrypted() || p.Underlay != netip.MustParseAddrPort("203.0.113.10:58423")):
					t.Errorf("hk-1 (plaintext, VXLAN on its tunnel port): %+v", p)
				case p.Name == "sz-1" && tc.wireGuard && (!p.Encrypted() || p.Mesh != netip.MustParseAddrPort("240.207.0.1:58424") ||
					p.Underlay != netip.MustParseAddrPort("198.51.100.10:58423") || p.PublicKey != szKey.PublicKey() || p.Keepalive != Keepalive):
					t.Errorf("sz-1 (encrypted: mesh address, VXLAN on the next port, endpoint hostaddr): %+v", p)
				case p.Name == "sz-1" && !tc.wireGuard && (p.Encrypted() || p.Underlay != netip.MustParseAddrPort("198.51.100.10:58424")):
					t.Errorf("sz-1 (plaintext to an encrypting edge: VXLAN on its next port): %+v", p)
				}
			}
			if tc.wireGuard {
				wg := d.WireGuard
				if wg.ListenPort != 58423 || wg.Address != netip.MustParsePrefix("240.207.0.3/16") || wg.PrivateKey != l.WireGuardKey {
					t.Errorf("WireGuard device %+v", wg)
				}
			}
		})
	}
}
