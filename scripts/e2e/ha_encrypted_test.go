package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
)

// TestEncryptedGatewayHA is gateway HA with the mesh on WireGuard (the
// default where the kernels have it): every link encrypted, the active
// host dies, the standby takes over, the sites reach each other again and
// the traffic to the new active gateway rides its WireGuard peer. It
// checks behaviour, not timing (TestGatewayHA does, on the host): it runs
// under emulation in the VM (TestVMEncrypted), and this machine's kernel
// may lack WireGuard.
func TestEncryptedGatewayHA(t *testing.T) {
	f := newHAFixture(t)
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	if err := topo.Do(hk.Edge, netcfg.WireGuardSupported); err != nil {
		t.Skipf("%v (TestVMEncrypted runs this test on Debian's stock kernel)", err)
	}
	remotes := []string{"hk-1", "gz-3"}

	t.Run("every link of the HA mesh on WireGuard, sz-1 active", func(t *testing.T) {
		f.convergeWithin("HA walkthrough, encrypted", time.Now(), encryptedDeadline, sz, hk, gz)
		if err := topo.Eventually(encryptedDeadline, func() error {
			if !f.encrypted() {
				return errors.New("not every link runs on WireGuard")
			}
			return f.activeIs("sz-1", remotes...)
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the active host dies: the standby takes over, traffic resumes through its WireGuard peer", func(t *testing.T) {
		f.die("sz-1")
		if err := topo.Eventually(encryptedDeadline, func() error { return f.activeIs("sz-2", remotes...) }); err != nil {
			t.Fatal(err)
		}
		// Host to host only: sz's EdgeAddr is sz-1's, which is dead.
		if err := topo.Eventually(encryptedDeadline, func() error {
			for _, p := range []struct {
				from *topo.Site
				to   netip.Addr
			}{{sz, hk.HostAddr}, {sz, gz.HostAddr}, {hk, sz.HostAddr}, {gz, sz.HostAddr}} {
				if err := f.net.Ping(p.from.Host, p.to, 1, time.Second); err != nil {
					return fmt.Errorf("%s cannot reach %s: %w", p.from.HostAddr, p.to, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		sz2 := pinnedKey(t, f.fixture, "sz-2")
		for _, s := range []*topo.Site{hk, gz} {
			before := rxFrom(t, s.Edge, sz2)
			if err := f.net.Ping(s.Host, sz.HostAddr, 3, encryptedDeadline); err != nil {
				t.Fatalf("%s -> VPC1 after the failover: %v", s.Name, err)
			}
			if after := rxFrom(t, s.Edge, sz2); after <= before {
				t.Errorf("%s: received %d bytes from sz-2's WireGuard peer before the pings, %d after: nothing from VPC1 rode it", s.Name, before, after)
			}
		}
		f.revive("sz-1")
		if err := topo.Eventually(encryptedDeadline, func() error { return f.activeIs("sz-2", remotes...) }); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(encryptedDeadline, func() error {
			if !f.encrypted() {
				return errors.New("not every link runs on WireGuard after sz-1 came back")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// rxFrom is the bytes cframe-wg in ns received from the peer of key.
func rxFrom(t *testing.T, ns, key string) int64 {
	t.Helper()
	stats, err := wgStats(ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s.PublicKey.String() == key {
			return s.RxBytes
		}
	}
	t.Fatalf("%s: no WireGuard peer %s", ns, key)
	return 0
}
