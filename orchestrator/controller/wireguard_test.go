package controller

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

// TestKeyUpdate: the first WireGuard key a heartbeat names is pinned,
// the same key again changes nothing, another is refused (until delete
// and re-add) unless the heartbeat rotates from the pinned key (and a
// rollback moves the pin back), a plaintext edge is recorded as such and back when it
// names its pinned key, and an edge without a mesh address gets one.
func TestKeyUpdate(t *testing.T) {
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	k3, _ := wgtypes.GeneratePrivateKey()
	pub1, pub2, pub3 := k1.PublicKey().String(), k2.PublicKey().String(), k3.PublicKey().String()
	mesh := netip.MustParseAddr("240.207.0.1")
	base := bus.Edge{Name: "sz-1", Mesh: mesh}
	pinned := base
	pinned.WireGuardKey = pub1
	plain := pinned
	plain.Plaintext = true
	rotated := base
	rotated.WireGuardKey = pub2
	tests := []struct {
		name        string
		edge        bus.Edge
		st          bus.Status
		want        *bus.Edge
		wantEvent   string
		wantRefused string
	}{
		{"first key pinned", base, bus.Status{WireGuardKey: pub1}, &pinned, bus.EventKeyPinned, ""},
		{"same key: nothing", pinned, bus.Status{WireGuardKey: pub1}, nil, "", ""},
		{"another key refused", pinned, bus.Status{WireGuardKey: pub2}, nil, "", "delete and re-add"},
		{"malformed key refused", base, bus.Status{WireGuardKey: "not a key"}, nil, "", "malformed"},
		{"plaintext recorded, key kept", pinned, bus.Status{Plaintext: "no WireGuard"}, &plain, "", ""},
		{"plaintext without a key: nothing (it counts as plaintext)", base, bus.Status{Plaintext: "no WireGuard"}, nil, "", ""},
		{"plaintext again: nothing", plain, bus.Status{Plaintext: "no WireGuard"}, nil, "", ""},
		{"back to its pinned key", plain, bus.Status{WireGuardKey: pub1}, &pinned, "", ""},
		{"rotation from the pinned key accepted", pinned, bus.Status{WireGuardKey: pub2, RotatingFrom: pub1}, &rotated, bus.EventKeyRotated, ""},
		{"rotation of a plaintext edge from its pinned key accepted", plain, bus.Status{WireGuardKey: pub2, RotatingFrom: pub1}, &rotated, bus.EventKeyRotated, ""},
		{"rotation from another key refused", pinned, bus.Status{WireGuardKey: pub2, RotatingFrom: pub3}, nil, "", "not the pinned key"},
		{"rotation back to the pinned key (a rollback): nothing", pinned, bus.Status{WireGuardKey: pub1, RotatingFrom: pub2}, nil, "", ""},
		{"rollback after the pin moved: the pin moves back", rotated, bus.Status{WireGuardKey: pub1, RotatingFrom: pub2}, &pinned, bus.EventKeyRotated, ""},
		{"rotating with a malformed key refused", pinned, bus.Status{WireGuardKey: "not a key", RotatingFrom: pub1}, nil, "", "malformed"},
		{"an old agent says nothing: nothing", pinned, bus.Status{}, nil, "", ""},
		{"no mesh address yet: written", bus.Edge{Name: "sz-1"}, bus.Status{}, &bus.Edge{Name: "sz-1"}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.st.Name = "sz-1"
			next, p, refused := keyUpdate(tc.edge, tc.st)
			switch {
			case tc.wantRefused != "" && !strings.Contains(refused, tc.wantRefused):
				t.Errorf("refused %q, want it to say %q", refused, tc.wantRefused)
			case tc.wantRefused == "" && refused != "":
				t.Errorf("refused: %s", refused)
			case (next == nil) != (tc.want == nil) || next != nil && (next.WireGuardKey != tc.want.WireGuardKey || next.Plaintext != tc.want.Plaintext):
				t.Errorf("next = %+v, want %+v", next, tc.want)
			case p != tc.wantEvent:
				t.Errorf("event = %q, want %q", p, tc.wantEvent)
			}
		})
	}
}

func TestAllocateMesh(t *testing.T) {
	edges := map[string]bus.Edge{}
	seen := map[netip.Addr]bool{}
	for i := range 300 {
		a, err := allocateMesh(edges)
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] || a == netip.MustParseAddr("240.207.0.0") || !strings.HasPrefix(a.String(), "240.207.") {
			t.Fatalf("allocation %d: %s (taken, the network address or outside the mesh)", i, a)
		}
		seen[a] = true
		edges[a.String()] = bus.Edge{Mesh: a}
	}
	if a, _ := allocateMesh(map[string]bus.Edge{"x": {Mesh: netip.MustParseAddr("240.207.0.2")}}); a != netip.MustParseAddr("240.207.0.1") {
		t.Errorf("lowest free address: %s", a)
	}
	full := map[string]bus.Edge{}
	for a := netip.MustParseAddr("240.207.0.1"); a != netip.MustParseAddr("240.207.255.255"); a = a.Next() {
		full[a.String()] = bus.Edge{Mesh: a}
	}
	if a, err := allocateMesh(full); err == nil {
		t.Errorf("a full mesh gave %s", a)
	}
}

// TestLinkEncryption: a link is WireGuard when both ends encrypt and say
// nothing else of it, plaintext or no path (down) when an end says so.
func TestLinkEncryption(t *testing.T) {
	end := func(name string, st bus.Status) linkEnd {
		st.Name = name
		return linkEnd{name: name, st: &edgeStatus{last: st, online: true}}
	}
	enc := bus.Status{WireGuardKey: "k"}
	tests := []struct {
		name       string
		a, b       linkEnd
		want, why  string
		wantState  string
		wantReason string
	}{
		{"both encrypt", end("a", enc), end("b", enc), api.EncryptionWireGuard, "", "", ""},
		{"b has no WireGuard", end("a", bus.Status{WireGuardKey: "k", Links: map[string]string{"b": "plaintext: b does not encrypt"}}),
			end("b", bus.Status{Plaintext: "no WireGuard in this kernel"}), api.EncryptionPlaintext, "a: b does not encrypt", "", ""},
		{"a requires it", end("a", bus.Status{WireGuardKey: "k", Links: map[string]string{"b": "no path: b does not encrypt"}}),
			end("b", bus.Status{Plaintext: "none"}), api.EncryptionNoPath, "a: b does not encrypt", api.LinkDown, "a: b does not encrypt"},
		{"an end not heard from", end("a", enc), linkEnd{name: "b"}, "", "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := linkOf(tc.a, tc.b, 0, time.Time{})
			if l.Encryption != tc.want || l.EncryptionReason != tc.why {
				t.Errorf("encryption %q (%q), want %q (%q)", l.Encryption, l.EncryptionReason, tc.want, tc.why)
			}
			if tc.wantState != "" && (l.State != tc.wantState || l.Reason != tc.wantReason) {
				t.Errorf("state %s (%s), want %s (%s)", l.State, l.Reason, tc.wantState, tc.wantReason)
			}
		})
	}
}

// TestLinkStaleHandshake: an end that saw no handshake for minutes makes
// an encrypted link down, saying so.
func TestLinkStaleHandshake(t *testing.T) {
	a := linkEnd{name: "a", st: &edgeStatus{online: true, last: bus.Status{Name: "a", WireGuardKey: "k", Links: map[string]string{"b": "down: no WireGuard handshake for 3m5s"}}}}
	b := linkEnd{name: "b", st: &edgeStatus{online: true, last: bus.Status{Name: "b", WireGuardKey: "k"}}}
	l := linkOf(a, b, 0, time.Time{})
	if l.Encryption != api.EncryptionWireGuard || l.State != api.LinkDown || l.Reason != "a: no WireGuard handshake for 3m5s" {
		t.Errorf("link %+v, want WireGuard, down, saying a saw no handshake", l)
	}
}
