// Package e2e runs the reference walkthrough end to end: the real
// cframe-controller, cframe-edge and cframectl processes on a namespace
// topology (package topo), driven through the HTTP API, with traffic
// checked between the hosts behind the edges.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/scripts/cluster"
)

// bin holds the cframe binaries: built by TestMain, or named by binEnv
// (TestVMStockKernel passes the host's to the VM, where building is slow).
var bin string

const binEnv = "CFRAME_E2E_BIN"

func TestMain(m *testing.M) {
	code := 0
	if dir := os.Getenv(binEnv); dir != "" {
		bin = dir
		code = m.Run()
	} else if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "cframe-e2e-bin-")
		if err == nil {
			err = cluster.Build(dir)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bin = dir
		code = m.Run()
		os.RemoveAll(dir)
	} else {
		code = m.Run()
	}
	os.Exit(code)
}

// fixture is the walkthrough's mesh, with a k8s pod range behind gz-3.
type fixture struct {
	t     *testing.T
	net   *topo.Net
	topo  *topo.Topology
	c     *cluster.Cluster
	edges map[string]*cluster.Edge
	ctx   context.Context
	// gre: the edges run mode = "gre" (one GRE device per peer).
	gre bool
}

var podRange = topo.Extra{CIDR: netip.MustParsePrefix("10.244.3.0/24"), EdgeAddr: netip.MustParseAddr("10.244.3.1"), HostAddr: netip.MustParseAddr("10.244.3.2")}

func newFixture(t *testing.T) *fixture { return newFixtureWith(t, cluster.Options{}) }

// newFixtureWith is newFixture with further cluster options.
func newFixtureWith(t *testing.T, opts cluster.Options) *fixture {
	vpcs := topo.Walkthrough()
	vpcs[2].Extra = &podRange
	f := buildFixture(t, topo.Build, vpcs, opts)
	for i, s := range f.topo.Sites() {
		f.startEdge(cluster.WalkthroughNames[i], s)
	}
	return f
}

// buildFixture builds vpcs in namespaces with build (topo.Build or
// topo.BuildCloud) and starts the controller with opts on the first site's
// edge; no edge runs yet.
func buildFixture(t *testing.T, build func(*topo.Net, ...topo.VPC) (*topo.Topology, error), vpcs []topo.VPC, opts cluster.Options) *fixture {
	topo.SkipUnlessRoot(t, "bridge", "iptables", "ping")
	n, err := topo.New(topo.UniquePrefix("cfe"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tp, err := build(n, vpcs...)
	if err != nil {
		t.Fatal(err)
	}
	dir := runDir(t)
	opts.Bin, opts.Dir = bin, dir
	c, err := cluster.Start(tp, tp.Sites()[0], opts)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, net: n, topo: tp, c: c, edges: map[string]*cluster.Edge{}, ctx: context.Background()}
	t.Cleanup(func() {
		if t.Failed() {
			f.dumpLogs(dir)
		}
	})
	return f
}

// runDir is a test's directory for the cluster's configs and logs. When
// the test ends, any race detector report in those logs fails it (go test
// -race builds the programs with the detector: see cluster.Build).
func runDir(t *testing.T) string {
	dir := t.TempDir()
	t.Cleanup(func() {
		reports, err := cluster.RaceReports(dir)
		if err != nil {
			t.Error(err)
		}
		for _, r := range reports {
			t.Errorf("race detector report from a program the test ran:\n%s", r)
		}
	})
	return dir
}

// dumpLogs shows the last lines of every program's log after a failure,
// without the NATS server's once-a-second route reconnection errors (a
// dead controller's peers log them until it is back, and they would
// crowd out everything else), and keeps the whole logs in the test's
// artifact directory (go test -artifacts).
func (f *fixture) dumpLogs(dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		_ = os.WriteFile(filepath.Join(f.t.ArtifactDir(), filepath.Base(l)), b, 0o644)
		var lines []string
		skipped := 0
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if strings.Contains(line, "Error trying to connect to route") {
				skipped++
				continue
			}
			lines = append(lines, line)
		}
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		f.t.Logf("---- %s (last lines; %d route reconnection errors left out) ----\n%s", filepath.Base(l), skipped, strings.Join(lines, "\n"))
	}
}

func (f *fixture) startEdge(name string, s *topo.Site, extra ...string) *cluster.Edge {
	f.t.Helper()
	e, err := f.c.NewEdge(name, s, extra...)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.edges[name] = e
	return e
}

// add registers edges and returns when the last API call returned.
func (f *fixture) add(names ...string) time.Time {
	f.t.Helper()
	for _, name := range names {
		if _, err := f.edges[name].Add(f.ctx); err != nil {
			f.t.Fatalf("add %s: %v", name, err)
		}
	}
	return time.Now()
}

// targets are the addresses behind a site: host, edge and extra host.
func targets(s *topo.Site) []netip.Addr {
	out := []netip.Addr{s.HostAddr, s.EdgeAddr}
	if s.Extra != nil {
		out = append(out, s.Extra.HostAddr)
	}
	return out
}

// reachable checks that every host of sites pings every target of the
// other sites.
func (f *fixture) reachable(sites ...*topo.Site) error {
	for _, from := range sites {
		for _, to := range sites {
			if from == to {
				continue
			}
			for _, a := range targets(to) {
				if err := f.net.Ping(from.Host, a, 1, time.Second); err != nil {
					return fmt.Errorf("%s cannot reach %s (%s): %w", from.HostAddr, a, to.Name, err)
				}
			}
		}
	}
	return nil
}

// converge waits until sites reach each other and logs how long it took
// since start (an API call returning).
func (f *fixture) converge(what string, start time.Time, sites ...*topo.Site) {
	f.t.Helper()
	// A minute: in the stock-kernel VM, on an emulated CPU shared with
	// other work, the walkthrough took over 15 s to converge (and 30 s in
	// GRE mode); a stall still fails. The figure is logged, and measured
	// for real in make bench.
	if err := topo.Eventually(time.Minute, func() error { return f.reachable(sites...) }); err != nil {
		f.t.Fatalf("%s: %v", what, err)
	}
	f.t.Logf("convergence (%s): %s from the API call returning to every peer reachable", what, time.Since(start).Round(time.Millisecond))
}

// ifindex matches the interface index "ip link" prints first: a recreated
// device gets a new one.
var ifindex = regexp.MustCompile(`^\d+: `)

// kernelState is everything cframe owns in an edge namespace, as the
// operator's tools print it.
func (f *fixture) kernelState(ns string) string {
	f.t.Helper()
	st, err := f.kernelDump(ns)
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

func (f *fixture) kernelDump(ns string) (string, error) {
	var b strings.Builder
	cmds := [][]string{
		{"ip", "-d", "link", "show", "cframe0"},
		{"bridge", "fdb", "show", "dev", "cframe0"},
		{"ip", "neigh", "show", "dev", "cframe0", "nud", "permanent"},
	}
	if f.gre {
		cmds = [][]string{{"ip", "-d", "link", "show", "type", "gre"}}
	}
	for _, cmd := range append(cmds, []string{"ip", "route", "show", "proto", "207"}, []string{"iptables-save"}) {
		out, err := f.net.Exec(ns, cmd...)
		if err != nil {
			return "", err
		}
		// Sorted: the kernel lists entries in creation order, which differs
		// after a repair; the order of iptables accepts is not significant
		// (netcfg's tests check that the INPUT drop stays last).
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if cmd[0] != "iptables-save" || (strings.HasPrefix(l, "-A") && strings.Contains(l, "CFRAME")) {
				lines = append(lines, ifindex.ReplaceAllString(l, ""))
			}
		}
		sort.Strings(lines)
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	return b.String(), nil
}

func (f *fixture) site(name string) *topo.Site { return f.edges[name].Site }

// appliedEverywhere waits until every listed edge is online and has applied rev.
func (f *fixture) appliedEverywhere(rev uint64, names ...string) {
	f.t.Helper()
	err := topo.Eventually(10*time.Second, func() error {
		list, err := f.c.API.List(f.ctx)
		if err != nil {
			return err
		}
		at := map[string]api.EdgeView{}
		for _, e := range list {
			at[e.Name] = e
		}
		for _, n := range names {
			if e := at[n]; e.Status != 1 || e.AppliedRevision < rev {
				return fmt.Errorf("edge %s: %+v, want online at revision %d", n, e, rev)
			}
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

func TestWalkthrough(t *testing.T) {
	f := newFixture(t)
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	all := []*topo.Site{sz, hk, gz}
	names := cluster.WalkthroughNames

	t.Run("three adds, every host reaches every host and edge", func(t *testing.T) {
		start := f.add(names...)
		f.converge("walkthrough, 3 edges", start, all...)
		for _, from := range all {
			for _, to := range all {
				if from != to {
					if err := topo.TCPTransfer(from.Host, to.Host, to.HostAddr, 256<<10, 10*time.Second); err != nil {
						t.Error(err)
					}
				}
			}
		}
		// The k8s pod range behind gz-3 (an extra CIDR) is reachable too.
		if err := topo.TCPTransfer(sz.Host, gz.ExtraHost, podRange.HostAddr, 64<<10, 10*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("bad adds are refused and change nothing", func(t *testing.T) {
		before := map[string]string{}
		for _, s := range all {
			before[s.Name] = f.kernelState(s.Edge)
		}
		topoBefore, err := f.c.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.c.API.Add(f.ctx, edgeset.Spec{Name: "bj-9", HostAddr: "198.18.9.10:58423", CIDR: "172.18.5.0/24"})
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.Contains(se.Msg, "edge sz-1") {
			t.Fatalf("overlapping add: %v, want 409 naming sz-1", err)
		}
		for _, body := range []string{`{"name": "bj-9", "hostaddr": `, `{"name": "bj-9", "hostaddr": "198.18.9.10:58423", "cidr": "10.9.0.0/16", "vni": 5}`} {
			resp, err := f.c.API.HTTP.Post(f.c.API.Base+api.PathAdd, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("malformed add %s: %d, want 400", body, resp.StatusCode)
			}
		}
		if topoAfter, err := f.c.API.Topology(f.ctx); err != nil || topoAfter.Revision != topoBefore.Revision || len(topoAfter.Edges) != 3 {
			t.Fatalf("refusals changed the edge set: revision %d -> %d (%v)", topoBefore.Revision, topoAfter.Revision, err)
		}
		// A harmless change after the refusals is a barrier: once every
		// edge applied it, anything a refused request had leaked would have
		// been applied too.
		spec := f.edges["gz-3"].Spec()
		spec.Comment = "tencent guangzhou"
		res, err := f.c.API.Add(f.ctx, spec)
		if err != nil || !res.Updated {
			t.Fatalf("comment update: %+v %v", res, err)
		}
		f.appliedEverywhere(res.Revision, names...)
		for _, s := range all {
			if after := f.kernelState(s.Edge); after != before[s.Name] {
				t.Errorf("%s's kernel changed:\nbefore:\n%s\nafter:\n%s", s.Name, before[s.Name], after)
			}
		}
	})

	t.Run("delete an edge: gone everywhere within a second, add it back", func(t *testing.T) {
		if _, err := f.c.API.Del(f.ctx, "hk-1"); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		mac := mesh.VTEPMAC("hk-1").String()
		err := topo.Eventually(time.Second, func() error {
			for _, s := range []*topo.Site{sz, gz} {
				st, err := f.kernelDump(s.Edge)
				if err != nil {
					return err
				}
				for _, trace := range []string{"172.31.0.0", mac, hk.Underlay().String()} {
					if strings.Contains(st, trace) {
						return fmt.Errorf("%s still has %s:\n%s", s.Name, trace, st)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("convergence (delete hk-1): %s until no edge has a route, neighbor, FDB entry or INPUT rule for it", time.Since(deleted).Round(time.Millisecond))
		if err := f.net.Ping(sz.Host, hk.HostAddr, 1, time.Second); err == nil {
			t.Fatal("VPC2 is still reachable after its edge was deleted")
		}
		if err := f.reachable(sz, gz); err != nil {
			t.Fatalf("the remaining edges lost each other: %v", err)
		}
		f.converge("hk-1 added back", f.add("hk-1"), all...)
		// The other edges took both as deltas: updates that read only
		// hk-1's objects, not the whole kernel state.
		for _, name := range []string{"sz-1", "gz-3"} {
			b, err := os.ReadFile(f.edges[name].Log)
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range []string{"delete", "put"} {
				if want := op + ` edge hk-1" read="changed peers"`; !strings.Contains(string(b), want) {
					t.Errorf("%s logged no kernel change with %s", name, want)
				}
			}
		}
	})

	t.Run("drift: hand-deleted route, device and flushed chains are repaired", func(t *testing.T) {
		for _, breakIt := range [][]string{
			{"ip", "route", "del", "172.18.0.0/16", "proto", "207"},
			{"ip", "link", "del", "cframe0"},
			{"iptables", "-F", "CFRAME-FORWARD"},
		} {
			before := f.kernelState(gz.Edge)
			if _, err := f.net.Exec(gz.Edge, "iptables", "-P", "FORWARD", "DROP"); err != nil {
				t.Fatal(err)
			}
			if _, err := f.net.Exec(gz.Edge, breakIt...); err != nil {
				t.Fatal(err)
			}
			broken := time.Now()
			err := topo.Eventually(5*time.Second, func() error {
				if st, err := f.kernelDump(gz.Edge); err != nil || st != before {
					return fmt.Errorf("not repaired yet: %v", err)
				}
				return f.reachable(sz, gz)
			})
			if err != nil {
				t.Fatalf("after %v: %v", breakIt, err)
			}
			t.Logf("drift repair after %q: %s", strings.Join(breakIt, " "), time.Since(broken).Round(time.Millisecond))
		}
	})

	t.Run("kill -9 an agent and restart it: traffic uninterrupted, kernel unchanged", func(t *testing.T) {
		e := f.edges["gz-3"]
		before := f.kernelState(gz.Edge)
		ping := topo.StartPing(sz.Host, gz.HostAddr, 40, 100*time.Millisecond)
		e.Proc().Kill()
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		sent, received, err := ping.Wait()
		if err != nil || sent != received {
			t.Fatalf("ping across the restart: %d sent, %d received (%v)", sent, received, err)
		}
		topoNow, _ := f.c.API.Topology(f.ctx)
		f.appliedEverywhere(topoNow.Revision, "gz-3")
		if after := f.kernelState(gz.Edge); after != before {
			t.Fatalf("kernel state changed across the restart:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})

	t.Run("SIGTERM keeps the kernel state; cleanup removes it; one-shot reconcile restores it", func(t *testing.T) {
		e := f.edges["gz-3"]
		before := f.kernelState(gz.Edge)
		e.Proc().Stop(5 * time.Second)
		defer func() {
			if err := e.Start(); err != nil {
				t.Fatal(err)
			}
		}()
		if after := f.kernelState(gz.Edge); after != before {
			t.Fatalf("SIGTERM changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if err := f.reachable(sz, gz); err != nil {
			t.Fatalf("traffic stopped with the agent: %v", err)
		}
		out, err := e.Run("cleanup")
		if err != nil || !strings.Contains(out, "link del cframe0") || !strings.Contains(out, "-X CFRAME-INPUT") {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		for _, cmd := range [][]string{{"ip", "link"}, {"ip", "route", "show", "proto", "207"}, {"iptables-save"}} {
			if out, err := f.net.Exec(gz.Edge, cmd...); err != nil || strings.Contains(out, "cframe") || strings.Contains(out, "CFRAME") || strings.Contains(out, "proto 207") {
				t.Fatalf("cleanup left objects behind (%v):\n%s", err, out)
			}
		}
		out, err = e.Run("reconcile")
		if err != nil || !strings.Contains(out, "route add 172.18.0.0/16") || !strings.Contains(out, "applied") {
			t.Fatalf("reconcile: %v\n%s", err, out)
		}
		if err := f.reachable(sz, gz); err != nil {
			t.Fatalf("after one-shot reconcile: %v", err)
		}
		if out, err = e.Run("reconcile"); err != nil || !strings.Contains(out, ": 0 change(s)") {
			t.Fatalf("second reconcile should change nothing: %v\n%s", err, out)
		}
		if after := f.kernelState(gz.Edge); after != before {
			t.Fatalf("reconcile built a different state:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})

	t.Run("cframectl: list, topology, events, one-line errors", func(t *testing.T) {
		evLog := filepath.Join(t.TempDir(), "events.log")
		events, err := f.net.Start(sz.Edge, evLog, filepath.Join(bin, "cframectl"), "events", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		defer events.Stop(time.Second)
		logHas := func(want ...string) func() error {
			return func() error {
				b, _ := os.ReadFile(evLog)
				for _, w := range want {
					if !strings.Contains(string(b), w) {
						return fmt.Errorf("events log lacks %s:\n%s", w, b)
					}
				}
				return nil
			}
		}
		if err := topo.Eventually(10*time.Second, logHas("following cframe.v1.events.>")); err != nil {
			t.Fatal(err)
		}
		out, err := f.c.Ctl("edge", "list")
		if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "gz-3") || !strings.Contains(out, "online") {
			t.Fatalf("edge list: %v\n%s", err, out)
		}
		out, err = f.c.Ctl("topology")
		if err != nil || !strings.Contains(out, "gz-3 <-> sz-1") || !strings.Contains(out, mesh.VTEPMAC("gz-3").String()) {
			t.Fatalf("topology: %v\n%s", err, out)
		}
		for _, bad := range [][]string{
			{"edge", "add", "--name", "x-1", "--hostaddr", "198.18.7.10:58423", "--cidr", "172.18.0.0/24"},
			{"edge", "add", "--name", "x-1", "--hostaddr", "nope", "--cidr", "10.7.0.0/24"},
			{"edge", "del", "--name", "nope"},
			{"edge", "add", "--name", "x-1"},
			{"--api", "http://127.0.0.1:1", "edge", "list"},
		} {
			out, err := f.c.Ctl(bad...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if err == nil || !strings.Contains(err.Error(), "exit status 1") || len(lines) != 1 || !strings.HasPrefix(lines[0], "cframectl: ") {
				t.Errorf("cframectl %v: %v, want exit 1 and one line:\n%s", bad, err, out)
			}
		}
		// Audit events arrive live: an add and a delete.
		if out, err := f.c.Ctl("edge", "add", "--name", "x-1", "--hostaddr", "198.18.7.10:58423", "--cidr", "10.7.0.0/24", "--comment", "temp"); err != nil {
			t.Fatalf("add: %v %s", err, out)
		}
		if out, err := f.c.Ctl("edge", "del", "--name", "x-1"); err != nil {
			t.Fatalf("del: %v %s", err, out)
		}
		if err := topo.Eventually(10*time.Second, logHas(`"kind":"added","edge":"x-1"`, `"kind":"deleted","edge":"x-1"`)); err != nil {
			t.Fatal(err)
		}
		topoNow, _ := f.c.API.Topology(f.ctx)
		f.appliedEverywhere(topoNow.Revision, names...)
	})

	t.Run("controller down: no loss for 10 seconds, a rebooted edge restores its saved set", func(t *testing.T) {
		ping := topo.StartPing(sz.Host, hk.HostAddr, 100, 100*time.Millisecond)
		s, err := startStream(hk.Host, sz.Host, sz.HostAddr)
		if err != nil {
			t.Fatal(err)
		}
		listBefore, _ := f.c.API.List(f.ctx)
		f.c.StopController()
		restarted := false
		defer func() {
			if !restarted {
				f.c.StartController()
			}
		}()

		// Reboot gz-3 while the controller is away: agent gone, kernel state wiped.
		e := f.edges["gz-3"]
		before := f.kernelState(gz.Edge)
		e.Proc().Kill()
		if out, err := e.Run("cleanup"); err != nil {
			t.Fatalf("cleanup: %v: %s", err, out)
		}
		if err := f.net.Ping(sz.Host, gz.HostAddr, 1, time.Second); err == nil {
			t.Fatal("gz-3 still reachable after its kernel state was wiped")
		}
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(5*time.Second, func() error { return f.reachable(sz, gz) }); err != nil {
			t.Fatalf("gz-3 did not restore the mesh from its saved edge set: %v", err)
		}
		if after := f.kernelState(gz.Edge); after != before {
			t.Fatalf("gz-3 restored a different state:\nbefore:\n%s\nafter:\n%s", before, after)
		}

		sent, received, err := ping.Wait()
		if err != nil || sent != received || sent < 100 {
			t.Fatalf("ping with the controller down: %d sent, %d received (%v)", sent, received, err)
		}
		n, gap, err := s.finish()
		if err != nil || gap > time.Second {
			t.Fatalf("stream with the controller down: %d bytes, longest pause %s (%v)", n, gap, err)
		}
		t.Logf("controller down 10s: ping %d/%d, stream %d bytes, longest pause %s", received, sent, n, gap.Round(time.Millisecond))

		restarted = true
		if err := f.c.StartController(); err != nil {
			t.Fatal(err)
		}
		listAfter, err := f.c.API.List(f.ctx)
		if err != nil || len(listAfter) != len(listBefore) {
			t.Fatalf("after restart: %d edges (%v), want %d", len(listAfter), err, len(listBefore))
		}
		for i := range listBefore {
			if a, b := listAfter[i], listBefore[i]; a.Name != b.Name || a.CIDR != b.CIDR || a.HostAddr != b.HostAddr || a.Revision != b.Revision {
				t.Fatalf("edge changed across the controller restart: %+v -> %+v", b, a)
			}
		}
		topoNow, _ := f.c.API.Topology(f.ctx)
		f.appliedEverywhere(topoNow.Revision, names...)
	})

	t.Run("a fourth VPC joins while traffic runs", func(t *testing.T) {
		ping := topo.StartPing(sz.Host, hk.HostAddr, 30, 100*time.Millisecond)
		s, err := startStream(gz.Host, sz.Host, sz.HostAddr)
		if err != nil {
			t.Fatal(err)
		}
		bj, err := f.topo.AddVPC(topo.VPC{Name: "vpc4", CIDR: netip.MustParsePrefix("10.60.6.0/24"),
			EdgeAddr: netip.MustParseAddr("10.60.6.1"), HostAddr: netip.MustParseAddr("10.60.6.10")})
		if err != nil {
			t.Fatal(err)
		}
		f.startEdge("bj-4", bj)
		// Started before it is added, it waits as "pending".
		if err := topo.Eventually(10*time.Second, func() error {
			tp, err := f.c.API.Topology(f.ctx)
			if err != nil || len(tp.Pending) != 1 || tp.Pending[0] != "bj-4" {
				return fmt.Errorf("pending = %v (%v), want [bj-4]", tp.Pending, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		f.converge("branch office bj-4 joins", f.add("bj-4"), sz, hk, gz, bj)
		sent, received, err := ping.Wait()
		if err != nil || sent != received {
			t.Fatalf("existing ping disturbed: %d sent, %d received (%v)", sent, received, err)
		}
		if n, gap, err := s.finish(); err != nil || gap > time.Second {
			t.Fatalf("existing stream disturbed: %d bytes, longest pause %s (%v)", n, gap, err)
		}
	})

	t.Run("a foreign route overlapping a peer is left alone and reported", func(t *testing.T) {
		// Someone else's more specific route into bj-4's branch network.
		foreign := []string{"ip", "route", "add", "10.60.6.128/25", "via", sz.Gateway.String(), "proto", "static"}
		if _, err := f.net.Exec(sz.Edge, foreign...); err != nil {
			t.Fatal(err)
		}
		err := topo.Eventually(10*time.Second, func() error {
			list, err := f.c.API.List(f.ctx)
			if err != nil {
				return err
			}
			for _, e := range list {
				if e.Name == "sz-1" {
					for _, c := range e.Conflicts {
						if strings.Contains(c, "10.60.6.128/25") {
							return nil
						}
					}
					return fmt.Errorf("sz-1 conflicts = %v", e.Conflicts)
				}
			}
			return errors.New("sz-1 not listed")
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := f.net.Exec(sz.Edge, "ip", "route", "show", "10.60.6.128/25")
		if err != nil || !strings.Contains(out, "proto static") {
			t.Fatalf("foreign route was touched: %v %q", err, out)
		}
		if _, err := f.net.Exec(sz.Edge, "ip", "route", "del", "10.60.6.128/25"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("masquerade: a VPC without routes back is reachable", func(t *testing.T) {
		lone, err := f.topo.AddVPC(topo.VPC{Name: "vpc5", CIDR: netip.MustParsePrefix("10.70.0.0/24"),
			EdgeAddr: netip.MustParseAddr("10.70.0.1"), HostAddr: netip.MustParseAddr("10.70.0.10"), NoRouteBack: true})
		if err != nil {
			t.Fatal(err)
		}
		f.startEdge("sh-5", lone, "masquerade = true")
		start := f.add("sh-5")
		err = topo.Eventually(15*time.Second, func() error { return f.net.Ping(sz.Host, lone.HostAddr, 1, time.Second) })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("convergence (masquerading sh-5): %s", time.Since(start).Round(time.Millisecond))
		// The host sees the edge's LAN address as the peer: the SNAT at work.
		var ln net.Listener
		if err := topo.Do(lone.Host, func() (err error) { ln, err = net.Listen("tcp", "10.70.0.10:0"); return err }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		seen := make(chan net.Addr, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				seen <- c.RemoteAddr()
				c.Close()
			}
		}()
		c, err := topo.Dialer{NS: hk.Host}.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		select {
		case a := <-seen:
			if ip := a.(*net.TCPAddr).IP.String(); ip != "10.70.0.1" {
				t.Fatalf("connection from %s arrived from %s, want the edge's LAN address 10.70.0.1", hk.HostAddr, ip)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("connection never accepted")
		}
	})
}

// An edge configured for a mode the kernel cannot do refuses to start, in one line.
func TestEdgeRefusesUnsupportedMode(t *testing.T) {
	topo.SkipUnlessRoot(t)
	n, err := topo.New(topo.UniquePrefix("cfm"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ns, err := n.NS("edge")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Exec(ns, "ip", "link", "add", "cfprobe", "type", "gre", "remote", "192.0.2.1", "local", "192.0.2.2"); err == nil {
		t.Skip("this kernel has gre: nothing to refuse")
	}
	cfg := filepath.Join(t.TempDir(), "edge.toml")
	body := fmt.Sprintf("controller=\"192.0.2.1:58422\"\nname = \"sz-1\"\nlisten_addr=\":58423\"\nsecret = \"x\"\nstate_dir = %q\nmode = \"gre\"\n", t.TempDir())
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := n.Exec(ns, filepath.Join(bin, "cframe-edge"), "-c", cfg)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err == nil || len(lines) != 1 || !strings.Contains(lines[0], "gre") {
		t.Fatalf("cframe-edge with mode gre: %v, want exit 1 and one line naming gre:\n%s", err, out)
	}
	t.Logf("refused: %s", lines[0])
}
