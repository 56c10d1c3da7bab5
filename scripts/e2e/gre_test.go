package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/scripts/cluster"
)

// TestGREWalkthrough runs the walkthrough's three VPCs with mode = "gre"
// on every edge: every host reaches every host and edge, TCP and UDP
// cross every pair, a GRE device deleted by hand is repaired, and cleanup
// leaves nothing of cframe's while ip_gre's fallback devices (gre0, ...)
// stay as they were. It needs ip_gre: TestVMStockKernel runs it on Debian's
// stock kernel.
func TestGREWalkthrough(t *testing.T) {
	f := buildFixture(t, topo.Build, topo.Walkthrough(), cluster.Options{})
	f.gre = true
	sites := f.topo.Sites()
	sz, gz := sites[0], sites[2]
	if err := topo.Do(sz.Edge, func() error { return netcfg.Supported(netcfg.ModeGRE) }); err != nil {
		t.Skipf("%v (TestVMStockKernel runs this test on Debian's stock kernel)", err)
	}
	// The probe loaded ip_gre: its fallback devices are in every namespace.
	fallback := func(t *testing.T, ns string) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(f.sh(t, ns, "ip", "-d", "-o", "link", "show")), "\n") {
			if name, _, _ := strings.Cut(strings.TrimSuffix(strings.Fields(l)[1], ":"), "@"); netcfg.FallbackDevice(name) {
				out = append(out, l)
			}
		}
		return out
	}
	before := fallback(t, gz.Edge)
	if len(before) == 0 {
		t.Fatal("no fallback device with ip_gre loaded")
	}
	for i, s := range sites {
		f.startEdge(cluster.WalkthroughNames[i], s, `mode = "gre"`)
	}
	start := f.add(cluster.WalkthroughNames...)
	f.converge("GRE walkthrough, 3 edges", start, sites...)

	t.Run("TCP and UDP between every pair", func(t *testing.T) {
		for _, from := range sites {
			for _, to := range sites {
				if from == to {
					continue
				}
				if err := topo.TCPTransfer(from.Host, to.Host, to.HostAddr, 256<<10, 20*time.Second); err != nil {
					t.Error(err)
				}
				if err := topo.UDPTransfer(from.Host, to.Host, to.HostAddr, 10, 1400, 20*time.Second); err != nil {
					t.Errorf("UDP %s -> %s: %v", from.Name, to.Name, err)
				}
			}
		}
	})

	t.Run("a GRE device deleted by hand is repaired", func(t *testing.T) {
		before := f.kernelState(gz.Edge)
		devs := f.sh(t, gz.Edge, "ip", "-o", "link", "show", "type", "gre")
		var dev string
		for _, l := range strings.Split(devs, "\n") {
			if strings.Contains(l, "alias cframe:") {
				dev, _, _ = strings.Cut(strings.Fields(l)[1], "@")
				break
			}
		}
		if dev == "" {
			t.Fatalf("no cframe GRE device on gz-3:\n%s", devs)
		}
		f.sh(t, gz.Edge, "ip", "link", "del", dev)
		broken := time.Now()
		if err := topo.Eventually(20*time.Second, func() error {
			if st, err := f.kernelDump(gz.Edge); err != nil || st != before {
				return fmt.Errorf("not repaired yet (%v):\n%s", err, st)
			}
			return f.reachable(sz, gz)
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("drift repair after deleting %s: %s", dev, time.Since(broken).Round(time.Millisecond))
	})

	t.Run("cleanup leaves nothing and the fallback devices as they were", func(t *testing.T) {
		e := f.edges["gz-3"]
		e.Proc().Stop(5 * time.Second)
		out, err := e.Run("cleanup")
		if err != nil || !strings.Contains(out, "link del cframe0-") {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		for _, cmd := range [][]string{{"ip", "link"}, {"ip", "route", "show", "proto", "207"}, {"iptables-save"}} {
			if out := f.sh(t, gz.Edge, cmd...); strings.Contains(out, "cframe") || strings.Contains(out, "CFRAME") || strings.Contains(out, "proto 207") {
				t.Errorf("cleanup left objects behind:\n%s", out)
			}
		}
		if after := fallback(t, gz.Edge); strings.Join(after, "\n") != strings.Join(before, "\n") {
			t.Errorf("fallback devices changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
		}
	})
}

// sh runs a command in namespace ns and returns its output, failing the
// test when it fails.
func (f *fixture) sh(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := f.net.Exec(ns, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
