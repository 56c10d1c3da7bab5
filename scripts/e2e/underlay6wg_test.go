package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/scripts/cluster"
)

// TestEncryptedUnderlay6: WireGuard over an IPv6 underlay — the
// dual-stack walkthrough with every hostaddr IPv6, on a kernel with
// WireGuard: every link encrypted, cframe-wg at the IPv6 underlay's MTU
// less WireGuard's 80 bytes (1420) and cframe0 inside it at 1370, both
// families between every pair, TCP over IPv6, DF pings passing at exactly
// the path MTU and failing one byte above. This machine's kernel may lack
// WireGuard: TestVMEncrypted runs the test on Debian's stock kernel.
func TestEncryptedUnderlay6(t *testing.T) {
	topo.SkipUnlessRoot(t, "ip6tables")
	vpcs := topo.DualStack()
	for i := range vpcs {
		vpcs[i].IPv6Underlay = true
	}
	f := buildFixture(t, topo.Build, vpcs, cluster.Options{})
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	if err := topo.Do(sz.Edge, netcfg.WireGuardSupported); err != nil {
		t.Skipf("%v (TestVMEncrypted runs this test on Debian's stock kernel)", err)
	}
	names := cluster.WalkthroughNames
	for i, s := range f.topo.Sites() {
		f.startEdge(names[i], s)
	}
	all := []*topo.Site{sz, hk, gz}
	f.waitConnected(names...)
	start := time.Now()
	for _, n := range names {
		if _, err := f.c.API.Add(f.ctx, f.spec6(n)); err != nil {
			t.Fatalf("add %s: %v", n, err)
		}
	}
	f.links(map[string]string{"sz-1|hk-1": api.EncryptionWireGuard, "sz-1|gz-3": api.EncryptionWireGuard, "hk-1|gz-3": api.EncryptionWireGuard})
	f.convergeWithin("IPv6 underlay, encrypted", start, encryptedDeadline, all...)
	if err := topo.Eventually(encryptedDeadline, func() error { return f.reachable6(all...) }); err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		for dev, mtu := range map[string]string{"cframe-wg": "mtu 1420", "cframe0": "mtu 1370"} {
			if out, err := f.net.Exec(s.Edge, "ip", "-d", "link", "show", dev); err != nil || !strings.Contains(out, mtu) {
				t.Errorf("%s: %s not at %s: %v\n%s", s.Name, dev, mtu, err, out)
			}
		}
	}
	mtu := f.pathMTU(true)
	if mtu != 1370 {
		t.Errorf("path MTU %d over the encrypted IPv6 underlay, want 1370", mtu)
	}
	for _, c := range []struct {
		to      string
		headers int
	}{{hk.HostAddr.String(), 28}, {hk.HostAddr6.String(), 48}} {
		if out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-c.headers), "-c", "2", "-i", "0.2", "-W", "5", c.to); err != nil {
			t.Errorf("DF ping of %d bytes to %s: %v\n%s", mtu, c.to, err, out)
		}
		if out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu+1-c.headers), "-c", "1", "-W", "5", c.to); err == nil {
			t.Errorf("DF ping of %d bytes to %s passed:\n%s", mtu+1, c.to, out)
		}
	}
	if err := topo.TCPTransfer(sz.Host, gz.Host, gz.HostAddr6, 256<<10, encryptedDeadline); err != nil {
		t.Error(err)
	}
}
