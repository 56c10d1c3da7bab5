package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/scripts/cluster"
)

// haFixture is the walkthrough with gateway HA in VPC1: sz-1 and sz-2 on
// one LAN with VPC1's host, which routes the other VPCs via the VIP; hk-1
// and gz-3 alone in VPC2 and VPC3. The controller runs in VPC2, so that a
// dead gateway of VPC1 does not take it along.
type haFixture struct {
	*fixture
	ha       *topo.HA
	vip      netip.Addr
	vip6     netip.Addr // dual-stack only
	gw       map[string]*topo.Gateway
	dead     map[string]bool
	eventLog string
}

var haVIP = netip.MustParseAddr("172.18.171.250")

func newHAFixture(t *testing.T) *haFixture { return newHAFixtureWith(t, false) }

// newHAFixtureWith is newHAFixture, with clustered: a cluster of three
// controllers (c1 on hk-1's edge, c2 on gz-3's, c3 on sz-1's) in place of
// the one, every agent listing all three.
func newHAFixtureWith(t *testing.T, clustered bool) *haFixture {
	return buildHAFixture(t, clustered, false)
}

// buildHAFixture is newHAFixtureWith, with dual: the dual-stack VPCs, site
// sz with a VIP per family (haVIP6 beside haVIP).
func buildHAFixture(t *testing.T, clustered, dual bool) *haFixture {
	topo.SkipUnlessRoot(t, "bridge", "iptables", "ping")
	vpcs := topo.Walkthrough()
	if dual {
		topo.SkipUnlessRoot(t, "ip6tables")
		vpcs = topo.DualStack()
	}
	n, err := topo.New(topo.UniquePrefix("cfa"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tp, err := topo.Build(n, vpcs...)
	if err != nil {
		t.Fatal(err)
	}
	sz, hk, gz := tp.Sites()[0], tp.Sites()[1], tp.Sites()[2]
	h, err := tp.MakeHA(sz, haVIP, netip.MustParseAddr("172.18.171.246"))
	if err != nil {
		t.Fatal(err)
	}
	var vip6 netip.Addr
	if dual {
		vip6 = haVIP6
		if err := h.AddIPv6(tp, vip6, netip.MustParseAddr("2001:db8:18::246")); err != nil {
			t.Fatal(err)
		}
	}
	dir := runDir(t)
	opts := cluster.Options{Bin: bin, Dir: dir}
	if clustered {
		opts.Peers = []*topo.Site{gz, sz}
	}
	c, err := cluster.Start(tp, hk, opts)
	if err != nil {
		t.Fatal(err)
	}
	f := &haFixture{fixture: &fixture{t: t, net: n, topo: tp, c: c, edges: map[string]*cluster.Edge{}, ctx: context.Background()},
		ha: h, vip: haVIP, vip6: vip6, gw: map[string]*topo.Gateway{"sz-1": h.Gateways[0], "sz-2": h.Gateways[1]}, dead: map[string]bool{}}
	t.Cleanup(func() {
		if t.Failed() {
			f.dumpLogs(dir)
		}
	})
	f.eventLog = filepath.Join(dir, "events.out")
	if _, err := n.Start(hk.Edge, f.eventLog, filepath.Join(bin, "cframectl"), "events", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	f.startEdge("sz-1", h.SiteOf(h.Gateways[0]))
	f.startEdge("sz-2", h.SiteOf(h.Gateways[1]))
	f.startEdge("hk-1", hk)
	f.startEdge("gz-3", gz)
	for _, name := range []string{"sz-1", "sz-2", "hk-1", "gz-3"} {
		f.addGateway(name)
	}
	return f
}

// addGateway adds an edge, sz-* as gateways of site sz with the VIP.
func (f *haFixture) addGateway(name string) {
	f.t.Helper()
	spec := f.edges[name].Spec()
	if strings.HasPrefix(name, "sz-") {
		spec.Site, spec.VIP = "sz", f.vip.String()
		if f.vip6.IsValid() {
			spec.VIP6 = f.vip6.String()
		}
	}
	if _, err := f.c.API.Add(f.ctx, spec); err != nil {
		f.t.Fatalf("add %s: %v", name, err)
	}
}

// roles are the roles the controller shows, by edge.
func (f *haFixture) roles() (map[string]api.EdgeView, error) {
	list, err := f.c.API.List(f.ctx)
	out := map[string]api.EdgeView{}
	for _, e := range list {
		out[e.Name] = e
	}
	return out, err
}

// activeIs checks the data plane of a failover to gw: of the gateways
// alive only gw holds the VIP, and the edges live point VPC1's next hop at
// gw's VTEP MAC.
func (f *haFixture) activeIs(gw string, live ...string) error {
	for name, g := range f.gw {
		if f.dead[name] {
			continue
		}
		for _, vip := range []netip.Addr{f.vip, f.vip6} {
			if !vip.IsValid() {
				continue
			}
			held, err := f.ha.Holds(f.topo, g, vip)
			if err != nil {
				return err
			}
			if held != (name == gw) {
				return fmt.Errorf("%s holds the VIP %s: %v", name, vip, held)
			}
		}
	}
	want := mesh.VTEPMAC(gw).String()
	for _, name := range live {
		out, err := f.net.Exec(f.edges[name].Site.Edge, "ip", "neigh", "show", "172.18.0.0", "dev", "cframe0")
		if err != nil {
			return err
		}
		if !strings.Contains(out, want) {
			return fmt.Errorf("%s sends VPC1's traffic to %q, want %s (%s's)", name, strings.TrimSpace(out), want, gw)
		}
	}
	return nil
}

// controllerShows waits until the controller shows gw as the active
// gateway of sz and the other as standby.
func (f *haFixture) controllerShows(gw string) {
	f.t.Helper()
	if err := topo.Eventually(10*time.Second, func() error {
		r, err := f.roles()
		if err != nil {
			return err
		}
		for _, n := range []string{"sz-1", "sz-2"} {
			if _, listed := r[n]; !listed && n != gw {
				continue // deleted
			}
			want := bus.RoleStandby
			if n == gw {
				want = bus.RoleActive
			}
			if r[n].Role != want {
				return fmt.Errorf("%s is %q, want %s", n, r[n].Role, want)
			}
		}
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
}

// echoTraffic is echo flows every 10 ms in both directions between VPC1 and
// VPC2, and from VPC3 to VPC1.
type echoTraffic struct {
	flows []*topo.EchoStream
	names []string
}

func (f *haFixture) startTraffic() *echoTraffic {
	f.t.Helper()
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	tr := &echoTraffic{}
	for _, p := range []struct {
		from *topo.Site
		to   netip.Addr
	}{{sz, hk.HostAddr}, {hk, sz.HostAddr}, {gz, sz.HostAddr}} {
		fl, err := topo.StartEchoStream(p.from.Host, p.to, 10*time.Millisecond)
		if err != nil {
			f.t.Fatal(err)
		}
		tr.flows = append(tr.flows, fl)
		tr.names = append(tr.names, p.from.Name+"->"+p.to.String())
	}
	return tr
}

// stop returns the longest blackout of the flows and a summary.
func (tr *echoTraffic) stop(t *testing.T) (time.Duration, int, string) {
	t.Helper()
	var worst time.Duration
	lost := 0
	var b strings.Builder
	for i, fl := range tr.flows {
		st, err := fl.Stop()
		if err != nil {
			t.Errorf("flow %s: %v", tr.names[i], err)
		}
		worst, lost = max(worst, st.Blackout), lost+st.Sent-st.Received
		fmt.Fprintf(&b, "%s: %s; ", tr.names[i], st)
	}
	return worst, lost, b.String()
}

// freeze stops an agent's process (SIGSTOP), or lets it continue.
func freeze(e *cluster.Edge, stop bool) {
	sig := syscall.SIGCONT
	if stop {
		sig = syscall.SIGSTOP
	}
	syscall.Kill(e.Proc().Pid(), sig)
}

// die kills a gateway host the way a hypervisor losing it would: its
// agent frozen, its links down. revive undoes it.
func (f *haFixture) die(name string) {
	f.t.Helper()
	freeze(f.edges[name], true)
	if err := f.ha.SetDown(f.topo, f.gw[name], true); err != nil {
		f.t.Fatal(err)
	}
	f.dead[name] = true
}

func (f *haFixture) revive(name string) {
	f.t.Helper()
	if err := f.ha.SetDown(f.topo, f.gw[name], false); err != nil {
		f.t.Fatal(err)
	}
	freeze(f.edges[name], false)
	delete(f.dead, name)
}

func (f *haFixture) failover(to string, live ...string) time.Duration {
	f.t.Helper()
	start := time.Now()
	if err := topo.Eventually(10*time.Second, func() error { return f.activeIs(to, live...) }); err != nil {
		f.t.Fatal(err)
	}
	return time.Since(start)
}

func TestGatewayHA(t *testing.T) {
	f := newHAFixture(t)
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	remotes := []string{"hk-1", "gz-3"}

	t.Run("a site of two gateways: one active holds the VIP, the remote edges route to it", func(t *testing.T) {
		f.converge("HA walkthrough", time.Now(), sz, hk, gz)
		f.controllerShows("sz-1")
		if err := topo.Eventually(5*time.Second, func() error { return f.activeIs("sz-1", remotes...) }); err != nil {
			t.Fatal(err)
		}
		out, err := f.c.Ctl("edge", "list")
		if err != nil || !strings.Contains(out, "SITE") || !regexpLine(out, `sz-2\s+sz\s+standby`) || !regexpLine(out, `sz-1\s+sz\s+active`) {
			t.Fatalf("edge list: %v\n%s", err, out)
		}
		out, err = f.c.Ctl("topology")
		if err != nil || !regexpLine(out, `sz\s+172.18.0.0/16\s+172.18.171.250\s+sz-1\s+sz-1,sz-2\s+1\s`) {
			t.Fatalf("topology: %v\n%s", err, out)
		}
		// The agents probe every remote gateway through the tunnel: hk-1
		// sees both gateways of sz answer.
		if err := topo.Eventually(10*time.Second, func() error {
			r, err := f.roles()
			if err != nil {
				return err
			}
			up := map[string]bool{}
			for _, p := range r["hk-1"].Probes {
				up[p.Name] = p.Up && p.RTT > 0
			}
			if !up["sz-1"] || !up["sz-2"] || !up["gz-3"] {
				return fmt.Errorf("hk-1's probes: %+v", r["hk-1"].Probes)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The metrics say the same: each gateway's role, hk-1's probes of
		// both gateways, the controller's view of the site.
		if err := topo.Eventually(10*time.Second, func() error { return f.siteMetrics("sz-1", "sz-2") }); err != nil {
			t.Fatal(err)
		}
		// A bad site field through cframectl: one line, nothing stored.
		out, err = f.c.Ctl("edge", "add", "--name", "sz-3", "--hostaddr", "198.18.77.10:58423", "--cidr", "172.18.0.0/16", "--site", "sz", "--vip", "172.19.0.1")
		if err == nil || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "not inside the site's primary cidr") {
			t.Fatalf("bad vip: %v %q", err, out)
		}
	})

	t.Run("the active gateway's agent killed and restarted: no failover, no loss", func(t *testing.T) {
		tr := f.startTraffic()
		e := f.edges["sz-1"]
		e.Proc().Kill()
		time.Sleep(2 * time.Second) // traffic runs through the kernel alone
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(f.currentRevision(), "sz-1")
		worst, lost, sum := tr.stop(t)
		t.Logf("agent kill -9: %s", sum)
		if lost > 0 {
			t.Fatalf("%d probes lost across an agent restart (longest blackout %s)", lost, worst)
		}
		if err := f.activeIs("sz-1", remotes...); err != nil {
			t.Fatal(err)
		}
		// The restarted agent kept the VIP all along.
		if b, _ := os.ReadFile(e.Log); strings.Contains(string(b), "addr del "+f.vip.String()) {
			t.Errorf("the restarted agent removed the VIP")
		}
		f.controllerShows("sz-1")
	})

	t.Run("the standby gateway dies: no loss", func(t *testing.T) {
		tr := f.startTraffic()
		f.die("sz-2")
		time.Sleep(2 * time.Second)
		f.revive("sz-2")
		worst, lost, sum := tr.stop(t)
		t.Logf("standby death: %s", sum)
		if lost > 0 {
			t.Fatalf("%d probes lost when the standby died (longest blackout %s)", lost, worst)
		}
		if err := f.activeIs("sz-1", remotes...); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the active host dies: traffic through the standby within a second, a TCP stream survives", func(t *testing.T) {
		tr := f.startTraffic()
		s, err := startStream(hk.Host, sz.Host, sz.HostAddr)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		f.die("sz-1")
		took := f.failover("sz-2", remotes...)
		time.Sleep(time.Second)
		worst, _, sum := tr.stop(t)
		n, gap, err := s.finish()
		t.Logf("active host death: data plane switched %s after; %s; TCP stream %d bytes, longest pause %s", took.Round(time.Millisecond), sum, n, gap.Round(time.Millisecond))
		if worst >= time.Second {
			t.Errorf("blackout %s, want under a second", worst)
		}
		if err != nil || gap > 3*time.Second {
			t.Errorf("TCP stream across the failover: %v, longest pause %s", err, gap)
		}
		f.controllerShows("sz-2")
		// On the remote edges the switch was one targeted kernel change.
		for _, name := range remotes {
			b, _ := os.ReadFile(f.edges[name].Log)
			switched := regexp.MustCompile(`kernel change.*change="neigh replace 172.18.0.0 lladdr ` + mesh.VTEPMAC("sz-2").String() +
				` dev cframe0 nud permanent" reason="site sz: sz-2 active at epoch 2 \(sz-1 unreachable on the LAN for \d+ms\)" read="changed peers"`)
			if n := len(switched.FindAll(b, -1)); n != 1 {
				t.Errorf("%s logged %d targeted switches to sz-2, want 1", name, n)
			}
			if n := strings.Count(string(b), "site sz: sz-2 active at epoch 2"); n != 1 {
				t.Errorf("%s made %d kernel changes for the switch, want 1", name, n)
			}
		}
	})

	t.Run("the old active gateway returns and stays standby, without loss", func(t *testing.T) {
		tr := f.startTraffic()
		f.revive("sz-1")
		if err := topo.Eventually(5*time.Second, func() error { return f.activeIs("sz-2", remotes...) }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		worst, lost, sum := tr.stop(t)
		t.Logf("old active returns: %s", sum)
		if lost > 0 {
			t.Errorf("%d probes lost when the old active returned (longest blackout %s)", lost, worst)
		}
		if err := f.activeIs("sz-2", remotes...); err != nil {
			t.Fatal(err)
		}
		f.controllerShows("sz-2")
	})

	t.Run("failover with the controller stopped", func(t *testing.T) {
		f.c.StopController()
		restarted := false
		defer func() {
			if !restarted {
				f.c.StartController()
			}
		}()
		tr := f.startTraffic()
		time.Sleep(300 * time.Millisecond)
		f.die("sz-2")
		took := f.failover("sz-1", remotes...)
		time.Sleep(time.Second)
		worst, _, sum := tr.stop(t)
		t.Logf("failover without controller: switched %s after; %s", took.Round(time.Millisecond), sum)
		if worst >= time.Second {
			t.Errorf("blackout %s with the controller down, want under a second", worst)
		}
		restarted = true
		if err := f.c.StartController(); err != nil {
			t.Fatal(err)
		}
		f.controllerShows("sz-1")
		// The restarted controller learned the decision from the gateways.
		if err := topo.Eventually(10*time.Second, func() error {
			tp, err := f.c.API.Topology(f.ctx)
			if s := siteOf(tp, "sz"); err != nil || s.Active != "sz-1" || !strings.Contains(s.Reason, "sz-2 unreachable") {
				return fmt.Errorf("site sz: %+v (%v)", s, err)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		f.revive("sz-2")
		if err := topo.Eventually(5*time.Second, func() error { return f.activeIs("sz-1", remotes...) }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("every role change is an audit event with its reason", func(t *testing.T) {
		if err := topo.Eventually(5*time.Second, func() error {
			b, _ := os.ReadFile(f.eventLog)
			for _, want := range []string{`"kind":"role","edge":"sz-1"`, `first election of the site`, `"kind":"role","edge":"sz-2"`, `sz-1 unreachable on the LAN`} {
				if !strings.Contains(string(b), want) {
					return fmt.Errorf("audit events lack %s:\n%s", want, b)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the active gateway deleted through the API: the standby takes over", func(t *testing.T) {
		tr := f.startTraffic()
		if _, err := f.c.API.Del(f.ctx, "sz-1"); err != nil {
			t.Fatal(err)
		}
		took := f.failover("sz-2", remotes...)
		time.Sleep(500 * time.Millisecond)
		worst, _, sum := tr.stop(t)
		t.Logf("active deleted: switched %s after; %s", took.Round(time.Millisecond), sum)
		if worst >= time.Second {
			t.Errorf("blackout %s, want under a second", worst)
		}
		f.controllerShows("sz-2")
		// Added back, it stays standby (equal priority).
		f.addGateway("sz-1")
		time.Sleep(2 * time.Second)
		if err := f.activeIs("sz-2", remotes...); err != nil {
			t.Fatal(err)
		}
		f.controllerShows("sz-2")
	})

	t.Run("a site partitioned internally never has two active gateways", func(t *testing.T) {
		tr := f.startTraffic()
		if err := f.ha.Isolate(f.topo, true); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if err := f.activeIs("sz-2", remotes...); err != nil {
				f.ha.Isolate(f.topo, false)
				t.Fatalf("while partitioned: %v", err)
			}
		}
		if err := f.ha.Isolate(f.topo, false); err != nil {
			t.Fatal(err)
		}
		worst, lost, sum := tr.stop(t)
		t.Logf("internal partition: %s", sum)
		if lost > 0 {
			t.Errorf("%d probes lost during the internal partition (longest blackout %s)", lost, worst)
		}
		b, _ := os.ReadFile(f.edges["sz-1"].Log)
		if !strings.Contains(string(b), "takeover refused") || !strings.Contains(string(b), "sz-2 answers from") {
			t.Errorf("sz-1 logged no refused takeover")
		}
		f.controllerShows("sz-2")
	})

	t.Run("the active gateway loses its path to the other sites: the standby takes over, the old one hears it on the LAN", func(t *testing.T) {
		// The internet drops everything to and from sz-2; its LAN is fine.
		cut := func(op string) error {
			for _, dir := range []string{"-s", "-d"} {
				if _, err := f.net.Exec(f.topo.Router, "iptables", op, "FORWARD", dir, f.gw["sz-2"].Underlay().String(), "-j", "DROP"); err != nil {
					return err
				}
			}
			return nil
		}
		tr := f.startTraffic()
		time.Sleep(300 * time.Millisecond)
		if err := cut("-I"); err != nil {
			t.Fatal(err)
		}
		took := f.failover("sz-1", remotes...)
		time.Sleep(500 * time.Millisecond)
		worst, _, sum := tr.stop(t)
		t.Logf("active's path lost: switched %s after; %s", took.Round(time.Millisecond), sum)
		if worst >= time.Second {
			t.Errorf("blackout %s when the active lost its path, want under a second", worst)
		}
		if err := cut("-D"); err != nil {
			t.Fatal(err)
		}
		f.controllerShows("sz-1")
		if err := topo.Eventually(5*time.Second, func() error { return f.activeIs("sz-1", remotes...) }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the active gateway stops forwarding while its agent is dead: the standby takes over", func(t *testing.T) {
		// sz-1's kernel keeps answering every probe (and holds the VIP:
		// nothing removes it), but forwards nothing; only probes through
		// it show that.
		ns, e := f.gw["sz-1"].NS, f.edges["sz-1"]
		tr := f.startTraffic()
		time.Sleep(300 * time.Millisecond)
		e.Proc().Kill()
		if _, err := f.net.Exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := topo.Eventually(10*time.Second, func() error {
			if held, err := f.ha.Holds(f.topo, f.gw["sz-2"], f.vip); err != nil || !held {
				return fmt.Errorf("sz-2 holds the VIP: %v (%v)", held, err)
			}
			dead := f.dead
			f.dead = map[string]bool{"sz-1": true} // its kernel still holds the VIP
			defer func() { f.dead = dead }()
			return f.activeIs("sz-2", remotes...)
		}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		time.Sleep(time.Second)
		worst, _, sum := tr.stop(t)
		t.Logf("active stopped forwarding: switched %s after; %s", took.Round(time.Millisecond), sum)
		if worst >= time.Second {
			t.Errorf("blackout %s when the active stopped forwarding, want under a second", worst)
		}
		for _, name := range remotes {
			if b, _ := os.ReadFile(f.edges[name].Log); !strings.Contains(string(b), "site sz: sz-2 active at epoch") ||
				!strings.Contains(string(b), "sz-1 does not forward: probes through it to sz-2 unanswered from gz-3, hk-1") {
				t.Errorf("%s did not switch for sz-1's forwarding", name)
			}
		}
		// Its agent returns: forwarding repaired, the VIP removed, standby.
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(10*time.Second, func() error { return f.activeIs("sz-2", remotes...) }); err != nil {
			t.Fatal(err)
		}
		if out, err := f.net.Exec(ns, "sysctl", "-n", "net.ipv4.ip_forward"); err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("ip_forward on sz-1 after its agent returned: %q %v", out, err)
		}
		f.controllerShows("sz-2")
	})

	t.Run("after every failover above every agent still runs fast; the underlay rewrites zero checksums: all fall back to safe, no failover", func(t *testing.T) {
		// The failovers above never passed for checksum evidence.
		for _, name := range []string{"sz-1", "sz-2", "hk-1", "gz-3"} {
			if err := f.checksumSetting(name, "fast", "default"); err != nil {
				t.Error(err)
			}
		}
		roleEvents := func() int {
			b, _ := os.ReadFile(f.eventLog)
			return strings.Count(string(b), `"kind":"role"`)
		}
		before := roleEvents()
		ifaces := []string{hk.RouterIf, gz.RouterIf}
		for _, g := range f.gw {
			ifaces = append(ifaces, g.RouterIf)
		}
		br, err := f.net.BreakZeroChecksums(f.topo.Router, []uint16{cluster.TunnelPort}, ifaces...)
		if err != nil {
			t.Fatal(err)
		}
		defer br.Remove()
		broke := time.Now()
		for _, name := range []string{"sz-1", "sz-2", "hk-1", "gz-3"} {
			if err := topo.Eventually(15*time.Second, func() error {
				return f.checksumSetting(name, "safe", "udp-fails-icmp-passes")
			}); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("every agent in the safe setting %s after the underlay broke the fast one", time.Since(broke).Round(time.Millisecond))
		if err := topo.Eventually(10*time.Second, func() error {
			return topo.TCPTransfer(hk.Host, sz.Host, sz.HostAddr, 1<<20, 2*time.Second)
		}); err != nil {
			t.Fatal(err)
		}
		if err := f.activeIs("sz-2", remotes...); err != nil {
			t.Fatal(err)
		}
		f.controllerShows("sz-2")
		if after := roleEvents(); after != before {
			t.Errorf("role events went from %d to %d: the checksum problem was taken for a failure", before, after)
		}
	})
}

func siteOf(tp api.Topology, name string) api.TopologySite {
	for _, s := range tp.Sites {
		if s.Name == name {
			return s
		}
	}
	return api.TopologySite{}
}

// currentRevision is the controller's revision.
func (f *haFixture) currentRevision() uint64 {
	f.t.Helper()
	tp, err := f.c.API.Topology(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return tp.Revision
}

// regexpLine reports whether a line of out matches expr.
func regexpLine(out, expr string) bool {
	return regexp.MustCompile(`(?m)` + expr).MatchString(out)
}
