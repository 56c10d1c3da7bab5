package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/scripts/cluster"
)

// encryptedDeadline bounds what the encrypted walkthrough waits for: the
// stock kernel runs under TCG, tens of times slower than the host.
const encryptedDeadline = 60 * time.Second

// TestEncryptedWalkthrough is the walkthrough verbatim — its edge.toml
// unchanged, so encryption is "prefer" — on a kernel with WireGuard: every
// link runs on WireGuard, hosts exchange TCP and UDP while the underlay
// shows none of it, a plaintext VXLAN packet from a peer's address is
// dropped, an agent killed with -9 loses no ping, rotate-key loses none
// and leaves no peer holding the old key, a deleted edge's
// WireGuard peer is gone everywhere, and against a peer running encryption
// "none" a "prefer" edge runs plaintext (and says so) while a "required"
// one gives it no path. This machine's kernel may lack WireGuard:
// TestVMEncrypted runs the test on Debian's stock kernel.
func TestEncryptedWalkthrough(t *testing.T) {
	f := newFixture(t)
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	if err := topo.Do(sz.Edge, netcfg.WireGuardSupported); err != nil {
		t.Skipf("%v (TestVMEncrypted runs this test on Debian's stock kernel)", err)
	}
	all := []*topo.Site{sz, hk, gz}
	names := cluster.WalkthroughNames
	wgPort := uint16(cluster.TunnelPort)
	vxlanPort := wgPort + 1

	t.Run("three adds: every link on WireGuard", func(t *testing.T) {
		start := f.add(names...)
		f.links(map[string]string{"sz-1|hk-1": api.EncryptionWireGuard, "sz-1|gz-3": api.EncryptionWireGuard, "hk-1|gz-3": api.EncryptionWireGuard})
		f.convergeWithin("walkthrough, encrypted", start, encryptedDeadline, all...)
		for _, s := range all {
			wg, err := f.net.Exec(s.Edge, "ip", "-d", "link", "show", "cframe-wg")
			if err != nil || !strings.Contains(wg, "wireguard") || !strings.Contains(wg, "mtu 1440") {
				t.Errorf("%s: cframe-wg: %v\n%s", s.Name, err, wg)
			}
			fdb, _ := f.net.Exec(s.Edge, "bridge", "fdb", "show", "dev", "cframe0")
			if strings.Count(fdb, " dst 240.207.") != 2 {
				t.Errorf("%s: the FDB does not send both peers' frames to their mesh addresses:\n%s", s.Name, fdb)
			}
		}
		b, err := os.ReadFile(f.edges["sz-1"].Log)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "data plane encryption: encrypting with kernel WireGuard"); n != 1 {
			t.Errorf("sz-1 logged how it encrypts %d times, want once", n)
		}
		// Until a peer's key is pinned its link runs plaintext, and says
		// so; no peer may be said not to encrypt.
		if strings.Contains(string(b), "does not encrypt") {
			t.Error("sz-1 warned that a peer does not encrypt")
		}
	})

	t.Run("TCP and UDP cross, the underlay shows none of it", func(t *testing.T) {
		capture, err := topo.StartCapture(sz.Edge, topo.EdgeWAN)
		if err != nil {
			t.Fatal(err)
		}
		secret := []byte("cframe-e2e-known-payload-that-must-never-be-seen-on-the-underlay")
		for range 5 {
			if err := topo.Do(sz.Host, func() error {
				c, err := net.Dial("udp", netip.AddrPortFrom(hk.HostAddr, 9).String())
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write(secret)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := topo.TCPTransfer(sz.Host, hk.Host, hk.HostAddr, 256<<10, encryptedDeadline); err != nil {
			t.Error(err)
		}
		if err := topo.UDPTransfer(sz.Host, gz.Host, gz.HostAddr, 20, 1200, encryptedDeadline); err != nil {
			t.Error(err)
		}
		flows, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		for fl := range flows {
			if inVPC(fl.Src.Addr(), all) || inVPC(fl.Dst.Addr(), all) {
				t.Errorf("the underlay carried a VPC's TCP in the clear: %s", fl)
			}
		}
		wg := 0
		for _, pkt := range capture.Packets() {
			if bytes.Contains(pkt, secret) {
				t.Fatalf("the underlay carried the known payload in the clear")
			}
			for _, pair := range [][2]*topo.Site{{sz, hk}, {hk, sz}, {sz, gz}, {gz, sz}} {
				if bytes.Contains(pkt[20:], append(pair[0].HostAddr.AsSlice(), pair[1].HostAddr.AsSlice()...)) {
					t.Fatalf("the underlay carried an inner IPv4 header %s -> %s in the clear", pair[0].HostAddr, pair[1].HostAddr)
				}
			}
			if len(pkt) >= 28 && pkt[9] == 17 && (port(pkt[22:]) == wgPort || port(pkt[20:]) == wgPort) {
				wg++
			}
		}
		if wg < 100 {
			t.Errorf("%d WireGuard packets on the underlay, want the transfers'", wg)
		}
		t.Logf("underlay capture: %d packets, %d of them WireGuard, none in the clear", len(capture.Packets()), wg)
	})

	t.Run("a plaintext VXLAN packet forged with a peer's address is dropped", func(t *testing.T) {
		drops := f.counter(sz.Edge, "DROP")
		if err := topo.Do(hk.Edge, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(sz.Underlay(), vxlanPort).String())
			if err != nil {
				return err
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Write(forgedVXLAN(hk.HostAddr, sz.HostAddr)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(encryptedDeadline, func() error {
			if got := f.counter(sz.Edge, "DROP"); got < drops+3 {
				return fmt.Errorf("CFRAME-INPUT DROP counted %d, want at least %d", got, drops+3)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("kill -9 an agent: no ping lost", func(t *testing.T) {
		e := f.edges["gz-3"]
		ping := topo.StartPing(sz.Host, gz.HostAddr, 30, 100*time.Millisecond)
		e.Proc().Kill()
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		sent, received, err := ping.Wait()
		if err != nil || sent != received {
			t.Fatalf("ping across the restart: %d sent, %d received (%v)", sent, received, err)
		}
	})

	t.Run("rotate-key: no ping lost either way, afterwards no peer holds the old key (twice)", func(t *testing.T) {
		hk1 := f.edges["hk-1"]
		for round := 1; round <= 2; round++ {
			old := pinnedKey(t, f, "hk-1")
			// 10 pings a second each way across the whole rotation.
			pings := map[string]*topo.Ping{
				"sz-1 -> hk-1": topo.StartPing(sz.Host, hk.HostAddr, 200, 100*time.Millisecond),
				"hk-1 -> sz-1": topo.StartPing(hk.Host, sz.HostAddr, 200, 100*time.Millisecond),
				"hk-1 -> gz-3": topo.StartPing(hk.Host, gz.HostAddr, 200, 100*time.Millisecond),
			}
			began := time.Now()
			out, err := hk1.Run("rotate-key")
			if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "new public key ") {
				t.Fatalf("round %d: cframe-edge rotate-key: %v: %q (want one line naming the new key)", round, err, out)
			}
			took := time.Since(began)
			fields := strings.Fields(out)
			newKey := fields[len(fields)-1]
			if newKey == old {
				t.Fatalf("round %d: rotated to the pinned key %s", round, old)
			}
			if got := pinnedKey(t, f, "hk-1"); got != newKey {
				t.Errorf("round %d: the controller pins %s, want the new key %s", round, got, newKey)
			}
			saved, err := readKey(filepath.Join(hk1.StateDir, "wireguard.key"))
			if err != nil || saved != newKey {
				t.Errorf("round %d: state_dir/wireguard.key is the key of %s (%v), want %s", round, saved, err, newKey)
			}
			if err := topo.Eventually(encryptedDeadline, func() error {
				for _, s := range []*topo.Site{sz, gz} {
					keys, err := wgPeerKeys(s.Edge)
					if err != nil {
						return err
					}
					if slices.Contains(keys, old) || !slices.Contains(keys, newKey) || len(keys) != 2 {
						return fmt.Errorf("%s: WireGuard peers %v, want hk-1's new key %s and not its old %s", s.Name, keys, newKey, old)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			for what, p := range pings {
				sent, received, err := p.Wait()
				if err != nil || sent != received || sent == 0 {
					t.Errorf("round %d: ping %s across the rotation: %d sent, %d received (%v)", round, what, sent, received, err)
				}
			}
			t.Logf("round %d: rotated hk-1 from %s to %s in %s (under TCG)", round, old, newKey, took.Round(time.Millisecond))
		}
		b, err := os.ReadFile(hk1.Log)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := os.ReadFile(filepath.Join(hk1.StateDir, "wireguard.key"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), strings.TrimSpace(string(priv))) {
			t.Error("the agent's log holds its private WireGuard key")
		}
	})

	t.Run("drift: a WireGuard peer removed by hand comes back", func(t *testing.T) {
		var key string
		for _, e := range mustList(t, f) {
			if e.Name == "sz-1" {
				key = e.WireGuardKey
			}
		}
		pub, err := wgtypes.ParseKey(key)
		if err != nil {
			t.Fatalf("sz-1's pinned WireGuard key %q: %v", key, err)
		}
		if err := topo.Do(gz.Edge, func() error {
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.ConfigureDevice("cframe-wg", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: pub, Remove: true}}})
		}); err != nil {
			t.Fatal(err)
		}
		removed := time.Now()
		if err := topo.Eventually(encryptedDeadline, func() error {
			if n, err := wgPeers(gz.Edge); err != nil || n != 2 {
				return fmt.Errorf("gz-3: %d WireGuard peers (%v), want 2", n, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("a WireGuard peer removed by hand was back after %s (under TCG)", time.Since(removed).Round(time.Millisecond))
		if err := topo.Eventually(encryptedDeadline, func() error { return f.reachable(sz, gz) }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("delete: the WireGuard peer is gone everywhere, add it back", func(t *testing.T) {
		if _, err := f.c.API.Del(f.ctx, "hk-1"); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		if err := topo.Eventually(encryptedDeadline, func() error {
			for _, s := range []*topo.Site{sz, gz} {
				if n, err := wgPeers(s.Edge); err != nil || n != 1 {
					return fmt.Errorf("%s: %d WireGuard peers (%v), want 1", s.Name, n, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("delete hk-1: its WireGuard peer gone everywhere after %s (under TCG)", time.Since(deleted).Round(time.Millisecond))
		f.convergeWithin("hk-1 added back", f.add("hk-1"), encryptedDeadline, all...)
	})

	t.Run(`against a peer running encryption "none": prefer runs plaintext and says so, required gives it no path`, func(t *testing.T) {
		restart := func(name string, extra ...string) {
			e := f.edges[name]
			e.Proc().Stop(5 * time.Second)
			f.startEdge(name, e.Site, extra...)
		}
		restart("gz-3", `encryption = "none"`)
		f.links(map[string]string{"sz-1|hk-1": api.EncryptionWireGuard, "sz-1|gz-3": api.EncryptionPlaintext, "hk-1|gz-3": api.EncryptionPlaintext})
		f.convergeWithin("gz-3 plaintext", time.Now(), encryptedDeadline, all...)
		if err := topo.TCPTransfer(hk.Host, gz.Host, gz.HostAddr, 64<<10, encryptedDeadline); err != nil {
			t.Error(err)
		}
		b, err := os.ReadFile(f.edges["hk-1"].Log)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `msg="link not encrypted" edge=hk-1 peer=gz-3`) {
			t.Error("hk-1 did not warn that its link to gz-3 runs plaintext")
		}
		restart("sz-1", `encryption = "required"`)
		f.links(map[string]string{"sz-1|hk-1": api.EncryptionWireGuard, "sz-1|gz-3": api.EncryptionNoPath, "hk-1|gz-3": api.EncryptionPlaintext})
		if err := topo.Eventually(encryptedDeadline, func() error { return f.reachable(sz, hk) }); err != nil {
			t.Fatal(err)
		}
		if err := f.net.Ping(sz.Host, gz.HostAddr, 1, 2*time.Second); err == nil {
			t.Error(`sz-1 (encryption "required") still reaches gz-3 (encryption "none")`)
		}
		tp, err := f.c.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range tp.Links {
			if key(l.A, l.B) == "sz-1|gz-3" && (l.State != api.LinkDown || !strings.Contains(l.Reason, "does not encrypt")) {
				t.Errorf("link sz-1 <-> gz-3: %s (%s), want down saying gz-3 does not encrypt", l.State, l.Reason)
			}
		}
		out, err := f.c.Ctl("topology")
		if err != nil || !strings.Contains(out, "no-path") || !strings.Contains(out, "plaintext") {
			t.Errorf("cframectl topology does not show the plaintext and no-path links (%v):\n%s", err, out)
		}
	})
}

// encrypted reports whether the topology shows every link on WireGuard
// (where the kernels have it: the default is "prefer").
func (f *fixture) encrypted() bool {
	f.t.Helper()
	tp, err := f.c.API.Topology(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, l := range tp.Links {
		if l.Encryption != api.EncryptionWireGuard {
			return false
		}
	}
	return len(tp.Links) > 0
}

func mustList(t *testing.T, f *fixture) []api.EdgeView {
	t.Helper()
	list, err := f.c.API.List(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// links waits until the topology shows each link ("a|b" in any order) with
// the given encryption.
func (f *fixture) links(want map[string]string) {
	f.t.Helper()
	if err := topo.Eventually(encryptedDeadline, func() error {
		tp, err := f.c.API.Topology(f.ctx)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, l := range tp.Links {
			got[key(l.A, l.B)] = l.Encryption + " (" + l.EncryptionReason + ")"
		}
		for k, w := range want {
			a, b, _ := strings.Cut(k, "|")
			if g := got[key(a, b)]; !strings.HasPrefix(g, w+" (") {
				return fmt.Errorf("link %s: encryption %s, want %s", k, g, w)
			}
		}
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
}

// key names the link between a and b in the order the topology lists it
// or the other: both map to the same key.
func key(a, b string) string {
	order := map[string]int{}
	for i, n := range cluster.WalkthroughNames {
		order[n] = i
	}
	if order[a] > order[b] {
		a, b = b, a
	}
	return a + "|" + b
}

// convergeWithin is converge with a deadline of its own.
func (f *fixture) convergeWithin(what string, start time.Time, within time.Duration, sites ...*topo.Site) {
	f.t.Helper()
	if err := topo.Eventually(within, func() error { return f.reachable(sites...) }); err != nil {
		f.t.Fatalf("%s: %v", what, err)
	}
	f.t.Logf("convergence (%s): %s", what, time.Since(start).Round(time.Millisecond))
}

// counter is the packet count of the first CFRAME-INPUT rule whose line
// holds match.
func (f *fixture) counter(ns, match string) int {
	f.t.Helper()
	out, err := f.net.Exec(ns, "iptables", "-L", "CFRAME-INPUT", "-v", "-x", "-n")
	if err != nil {
		f.t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if fields := strings.Fields(l); len(fields) > 2 && strings.Contains(l, match) {
			if n, err := strconv.Atoi(fields[0]); err == nil {
				return n
			}
		}
	}
	f.t.Fatalf("no CFRAME-INPUT rule with %q:\n%s", match, out)
	return 0
}

// wgStats returns the peers of cframe-wg in namespace ns.
func wgStats(ns string) ([]netcfg.WireGuardPeerStats, error) {
	var stats []netcfg.WireGuardPeerStats
	err := topo.Do(ns, func() (err error) {
		k, err := netcfg.New()
		if err != nil {
			return err
		}
		stats, err = k.WireGuardStats("")
		return err
	})
	return stats, err
}

// wgPeers counts the peers of cframe-wg in namespace ns.
func wgPeers(ns string) (int, error) {
	stats, err := wgStats(ns)
	return len(stats), err
}

// wgPeerKeys lists the public keys of cframe-wg's peers in namespace ns.
func wgPeerKeys(ns string) ([]string, error) {
	stats, err := wgStats(ns)
	var keys []string
	for _, s := range stats {
		keys = append(keys, s.PublicKey.String())
	}
	return keys, err
}

// pinnedKey is the WireGuard key the controller pins for name.
func pinnedKey(t *testing.T, f *fixture, name string) string {
	t.Helper()
	for _, e := range mustList(t, f) {
		if e.Name == name {
			return e.WireGuardKey
		}
	}
	t.Fatalf("%s is not listed", name)
	return ""
}

// readKey returns the public key of the private key in file path.
func readKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return "", err
	}
	return k.PublicKey().String(), nil
}

func inVPC(a netip.Addr, sites []*topo.Site) bool {
	for _, s := range sites {
		if s.CIDR.Contains(a) {
			return true
		}
	}
	return false
}

func port(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// forgedVXLAN is a VXLAN packet (VNI 1) carrying an ICMP echo request
// from src to dst, as an attacker who knows the mesh would send it.
func forgedVXLAN(src, dst netip.Addr) []byte {
	b := []byte{0x08, 0, 0, 0, 0, 0, 1, 0}
	b = append(b, 0x02, 0xcf, 0, 0, 0, 1, 0x02, 0xcf, 0, 0, 0, 2, 0x08, 0x00)
	ip := append([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0}, src.AsSlice()...)
	return append(append(append(b, ip...), dst.AsSlice()...), 8, 0, 0xf7, 0xff, 0, 0, 0, 0)
}
