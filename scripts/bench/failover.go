package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/orchestrator/probe"
	"github.com/cframe/cframe/scripts/cluster"
)

// The failover part: a gateway host of VPC1 dies (its links go down, its
// agent freezes), over and over, and the traffic's blackout is measured —
// from the last packet answered through the dead gateway to the first
// answered through the new one, by echo probes every flowInterval. Beside
// it, in the same run, keepalived moves the same VIP between two hosts on
// the same kind of LAN with its fastest advertisement interval: the local
// half only, the floor cframe must approach while it also moves the remote
// ends. Then, a few times, the active gateway stops forwarding
// (ip_forward off, its agent frozen so that nothing repairs it) while its
// host answers every probe: detected only by the probes through it. The
// per-peer prober's CPU cost is measured here too.

// flowInterval is the probes' resolution.
const flowInterval = 5 * time.Millisecond

// keepalivedAdvert is keepalived's fastest advertisement interval (VRRPv3
// counts it in centiseconds).
const keepalivedAdvert = 10 * time.Millisecond

var (
	foVIP     = netip.MustParseAddr("172.18.171.250")
	foStandby = netip.MustParseAddr("172.18.171.246")
)

type failoverFigures struct {
	Reps int `json:"reps"`
	// CframeEndToEnd: the longest blackout of the flows between VPC1's and
	// VPC2's hosts, both directions; CframeVIP: VPC1's host to the VIP.
	CframeEndToEnd Summary `json:"cframe_end_to_end_ms"`
	CframeVIP      Summary `json:"cframe_vip_ms"`
	// CframeForwarding: the end-to-end blackout when the active gateway
	// stops forwarding, over ForwardingReps rounds.
	ForwardingReps   int     `json:"forwarding_reps"`
	CframeForwarding Summary `json:"cframe_forwarding_ms"`
	// KeepalivedVIP: a host to the VIP keepalived moves.
	KeepalivedVIP      Summary `json:"keepalived_vip_ms"`
	KeepalivedAdvertMs float64 `json:"keepalived_advert_ms"`
	FlowIntervalMs     float64 `json:"flow_interval_ms"`
	// The prober with ProbeTargets targets at each interval: the CPU it
	// used, in percent of one CPU, in user and system time.
	ProbeTargets int         `json:"probe_targets"`
	ProbeCost    []probeLoad `json:"probe_cost"`
}

// probeLoad is the prober's CPU use at one probe interval.
type probeLoad struct {
	IntervalMs float64 `json:"interval_ms"`
	UserPct    float64 `json:"user_percent"`
	SystemPct  float64 `json:"system_percent"`
}

func failover(o Options) (Section, error) {
	reps, fwdReps := 15, 5
	if o.Quick {
		reps, fwdReps = 4, 2
	}
	f := failoverFigures{Reps: reps, ForwardingReps: fwdReps, KeepalivedAdvertMs: ms(keepalivedAdvert), FlowIntervalMs: ms(flowInterval), ProbeTargets: 300}
	e2e, local, fwd, err := cframeFailovers(o, reps, fwdReps)
	if err != nil {
		return Section{Figures: f}, fmt.Errorf("cframe: %w", err)
	}
	f.CframeEndToEnd, f.CframeVIP, f.CframeForwarding = Millis(e2e).Summarize(), Millis(local).Summarize(), Millis(fwd).Summarize()
	ka, err := keepalivedFailovers(o, reps)
	if err != nil {
		return Section{Figures: f}, fmt.Errorf("keepalived: %w", err)
	}
	f.KeepalivedVIP = Millis(ka).Summarize()
	window := 10 * time.Second
	if o.Quick {
		window = 3 * time.Second
	}
	// The interval of gateways of sites with several (which failovers
	// depend on), and of the only gateway of a site (reported only).
	for _, iv := range []time.Duration{probe.DefaultInterval, ha.DefaultTiming().PeerInterval} {
		l, err := probeCost(f.ProbeTargets, iv, window)
		if err != nil {
			return Section{Figures: f}, fmt.Errorf("probe cost: %w", err)
		}
		f.ProbeCost = append(f.ProbeCost, l)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "A gateway host dies (links down, agent frozen) %d times for each; blackout = the longest time between two answered echo probes, sent every %s. cframe: VPC1's two gateways and host on one LAN, the host routing via the VIP, VPC2 across the tunnel. keepalived %s: two hosts moving the same VIP on the same LAN (VRRPv3, advert_int %s, nopreempt) — the local half only.\n\n",
		reps, flowInterval, keepalivedVersion(), keepalivedAdvert)
	b.WriteString("| blackout (ms) | p50 | p99 | spread |\n|---|---|---|---|\n")
	for _, r := range []struct {
		name string
		s    Summary
	}{{"cframe, VPC1 host <-> VPC2 host (both ends move)", f.CframeEndToEnd}, {"cframe, VPC1 host -> VIP (local half)", f.CframeVIP}, {"keepalived, host -> VIP (local half)", f.KeepalivedVIP}} {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f |\n", r.name, r.s.Median, r.s.P99, r.s.Spread)
	}
	fmt.Fprintf(&b, "\nThe active gateway stops forwarding (ip_forward=0, its agent frozen), its host answering every probe, %d times: VPC1 host <-> VPC2 host blackout p50 %.0f ms, p99 %.0f ms (detected by VPC2's gateway's probes through it to the standby's LAN address: %s without an answer).\n",
		fwdReps, f.CframeForwarding.Median, f.CframeForwarding.P99, ha.DefaultTiming().ForwardDownAfter)
	fmt.Fprintf(&b, "\nThe prober, %d targets (another namespace's kernel answering over a veth), in %% of one CPU:\n\n| interval | user | system | total |\n|---|---|---|---|\n", f.ProbeTargets)
	for _, l := range f.ProbeCost {
		fmt.Fprintf(&b, "| %.0f ms | %.2f | %.2f | %.2f |\n", l.IntervalMs, l.UserPct, l.SystemPct, l.UserPct+l.SystemPct)
	}
	b.WriteString("\n100 ms is the interval of the gateways of sites with several (their failures are reported and witnessed), 500 ms that of a site's only gateway. On a veth the system time includes the targets' kernels answering, which in a mesh is the peers' work: the prober's own share lies between the user time and the total.\n")
	s := Section{Title: "Gateway failover", Markdown: b.String(), Figures: f}
	s.Verdicts = append(s.Verdicts,
		fmt.Sprintf("local half (VIP moved): cframe/keepalived p50 %s, p99 %s: %s", Ratio(f.CframeVIP.Median, f.KeepalivedVIP.Median), Ratio(f.CframeVIP.P99, f.KeepalivedVIP.P99),
			Better("cframe", f.CframeVIP.Median, "keepalived", f.KeepalivedVIP.Median, false)),
		fmt.Sprintf("end to end (cframe also moves the remote ends) against keepalived's local floor: p50 %s, p99 %s; under the 1 s contract: %v, under the 300 ms aim: %v",
			Ratio(f.CframeEndToEnd.Median, f.KeepalivedVIP.Median), Ratio(f.CframeEndToEnd.P99, f.KeepalivedVIP.P99), f.CframeEndToEnd.P99 < 1000, f.CframeEndToEnd.P99 < 300),
		fmt.Sprintf("an active gateway that stops forwarding: end to end p50 %.0f ms, p99 %.0f ms; under 1 s: %v", f.CframeForwarding.Median, f.CframeForwarding.P99, f.CframeForwarding.P99 < 1000),
		fmt.Sprintf("prober cost for %d peers: %.2f%% of a CPU (user %.2f%%) at 100 ms, %.2f%% at 500 ms (target: a few %%)", f.ProbeTargets,
			f.ProbeCost[0].UserPct+f.ProbeCost[0].SystemPct, f.ProbeCost[0].UserPct, f.ProbeCost[1].UserPct+f.ProbeCost[1].SystemPct))
	return s, nil
}

func keepalivedVersion() string {
	out, _ := runCmd("keepalived", "--version")
	if f := strings.Fields(out); len(f) >= 2 {
		return f[1]
	}
	return "(version unknown)"
}

// cframeFailovers runs VPC1 with two gateways (sz-1, sz-2) and VPC2 with
// one, and kills the active gateway's host reps times, the other one each
// time; then, fwdReps times, turns the active gateway's forwarding off.
func cframeFailovers(o Options, reps, fwdReps int) (e2e, local, fwd []time.Duration, err error) {
	n, err := topo.New(nsPrefix + "fo")
	if err != nil {
		return nil, nil, nil, err
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()[:2]...)
	if err != nil {
		return nil, nil, nil, err
	}
	sz, hk := tp.Sites()[0], tp.Sites()[1]
	h, err := tp.MakeHA(sz, foVIP, foStandby)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := cluster.Start(tp, hk, cluster.Options{Bin: o.Bin, Dir: filepath.Join(o.Work, "failover")})
	if err != nil {
		return nil, nil, nil, err
	}
	ctx := context.Background()
	agents := map[*topo.Gateway]*cluster.Edge{}
	for i, site := range []*topo.Site{h.SiteOf(h.Gateways[0]), h.SiteOf(h.Gateways[1]), hk} {
		e, err := c.NewEdge([]string{"sz-1", "sz-2", "hk-1"}[i], site)
		if err != nil {
			return nil, nil, nil, err
		}
		if err := e.Start(); err != nil {
			return nil, nil, nil, err
		}
		spec := e.Spec()
		if i < 2 {
			spec.Site, spec.VIP = "sz", foVIP.String()
			agents[h.Gateways[i]] = e
		}
		if _, err := c.API.Add(ctx, spec); err != nil {
			return nil, nil, nil, err
		}
	}
	holder := func() *topo.Gateway {
		for _, g := range h.Gateways {
			if held, _ := h.Holds(tp, g, foVIP); held {
				return g
			}
		}
		return nil
	}
	if err := topo.Eventually(30*time.Second, func() error {
		if holder() == nil {
			return fmt.Errorf("no gateway holds the VIP")
		}
		return n.Ping(sz.Host, hk.HostAddr, 1, time.Second)
	}); err != nil {
		return nil, nil, nil, fmt.Errorf("the HA mesh did not converge: %w", err)
	}
	time.Sleep(2 * time.Second) // the standby's hellos and probes settle
	o.Logf("HA mesh up; %d host deaths, %d forwarding failures", reps, fwdReps)
	// A failure of the active gateway: its agent frozen, and its host
	// dead (links down) or its forwarding off; and the repair.
	hostDeath := func(g *topo.Gateway, down bool) error { return h.SetDown(tp, g, down) }
	noForwarding := func(g *topo.Gateway, off bool) error {
		_, err := n.Exec(g.NS, "sysctl", "-qw", fmt.Sprintf("net.ipv4.ip_forward=%d", map[bool]int{true: 0, false: 1}[off]))
		return err
	}
	round := func(rep int, what string, fail func(*topo.Gateway, bool) error) (e2e, local time.Duration, err error) {
		var dead *topo.Gateway
		if err := topo.Eventually(10*time.Second, func() error {
			if dead = holder(); dead == nil {
				return fmt.Errorf("no gateway holds the VIP")
			}
			return nil
		}); err != nil {
			return 0, 0, err
		}
		var next *topo.Gateway
		for _, g := range h.Gateways {
			if g != dead {
				next = g
			}
		}
		flows, err := startFlows([][2]any{{sz.Host, hk.HostAddr}, {hk.Host, sz.HostAddr}, {sz.Host, foVIP}})
		if err != nil {
			return 0, 0, err
		}
		time.Sleep(300 * time.Millisecond)
		pid := agents[dead].Proc().Pid()
		syscall.Kill(pid, syscall.SIGSTOP)
		if err := fail(dead, true); err != nil {
			return 0, 0, err
		}
		want := mesh.VTEPMAC(agents[next].Name).String()
		err = topo.Eventually(10*time.Second, func() error {
			held, err := h.Holds(tp, next, foVIP)
			out, _ := n.Exec(hk.Edge, "ip", "neigh", "show", "172.18.0.0", "dev", "cframe0")
			if err != nil || !held || !strings.Contains(out, want) {
				return fmt.Errorf("%s holds the VIP: %v, hk-1 routes to %q (%v)", agents[next].Name, held, strings.TrimSpace(out), err)
			}
			return nil
		})
		time.Sleep(500 * time.Millisecond)
		st := stopFlows(flows)
		if err != nil {
			return 0, 0, fmt.Errorf("failover %d (%s): %w", rep, what, err)
		}
		e2e, local = max(st[0].Blackout, st[1].Blackout), st[2].Blackout
		o.Logf("cframe failover %d (%s %s): end to end %s, VIP %s", rep+1, agents[dead].Name, what,
			e2e.Round(time.Millisecond), local.Round(time.Millisecond))
		if err := fail(dead, false); err != nil {
			return 0, 0, err
		}
		syscall.Kill(pid, syscall.SIGCONT)
		time.Sleep(3 * time.Second) // back as a standby
		return e2e, local, nil
	}
	for rep := range reps {
		a, b, err := round(rep, "dies", hostDeath)
		if err != nil {
			return nil, nil, nil, err
		}
		e2e, local = append(e2e, a), append(local, b)
	}
	for rep := range fwdReps {
		a, _, err := round(rep, "stops forwarding", noForwarding)
		if err != nil {
			return nil, nil, nil, err
		}
		fwd = append(fwd, a)
	}
	return e2e, local, fwd, nil
}

// startFlows starts an echo flow per (namespace, address) pair.
func startFlows(pairs [][2]any) ([]*topo.EchoStream, error) {
	var out []*topo.EchoStream
	for _, p := range pairs {
		f, err := topo.StartEchoStream(p[0].(string), p[1].(netip.Addr), flowInterval)
		if err != nil {
			stopFlows(out)
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func stopFlows(fs []*topo.EchoStream) []topo.EchoStats {
	out := make([]topo.EchoStats, len(fs))
	for i, f := range fs {
		out[i], _ = f.Stop()
	}
	return out
}

// keepalivedConf is a VRRPv3 instance holding the VIP on lan0.
const keepalivedConf = `global_defs {
  router_id %s
  vrrp_version 3
  enable_script_security
}
vrrp_instance sz {
  state BACKUP
  nopreempt
  interface lan0
  virtual_router_id 51
  priority 100
  advert_int %.2f
  virtual_ipaddress {
    %s/32 dev lan0
  }
}
`

// keepalivedFailovers moves the VIP with keepalived between the two
// gateway hosts of the same LAN shape, killing the master's host reps times.
func keepalivedFailovers(o Options, reps int) ([]time.Duration, error) {
	n, err := topo.New(nsPrefix + "ka")
	if err != nil {
		return nil, err
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()[0])
	if err != nil {
		return nil, err
	}
	s := tp.Sites()[0]
	h, err := tp.MakeHA(s, foVIP, foStandby)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Work, "keepalived")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	procs := map[*topo.Gateway]*topo.Proc{}
	start := func(i int, g *topo.Gateway) error {
		name := fmt.Sprintf("g%d", i+1)
		conf := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(keepalivedConf, name, keepalivedAdvert.Seconds(), foVIP)), 0o644); err != nil {
			return err
		}
		p, err := n.Start(g.NS, filepath.Join(dir, name+".log"), "keepalived", "-n", "-l", "-D", "-f", conf,
			"-p", filepath.Join(dir, name+".pid"), "-r", filepath.Join(dir, name+".vrrp.pid"), "-c", filepath.Join(dir, name+".checkers.pid"))
		procs[g] = p
		return err
	}
	for i, g := range h.Gateways {
		if err := start(i, g); err != nil {
			return nil, err
		}
	}
	holder := func() (int, *topo.Gateway) {
		for i, g := range h.Gateways {
			if held, _ := h.Holds(tp, g, foVIP); held {
				return i, g
			}
		}
		return -1, nil
	}
	if err := topo.Eventually(20*time.Second, func() error {
		if _, g := holder(); g == nil {
			return fmt.Errorf("no keepalived holds the VIP")
		}
		return n.Ping(s.Host, foVIP, 1, time.Second)
	}); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	var out []time.Duration
	for rep := 0; rep < reps; rep++ {
		var i int
		var dead *topo.Gateway
		if err := topo.Eventually(10*time.Second, func() error {
			if i, dead = holder(); dead == nil {
				return fmt.Errorf("no keepalived holds the VIP")
			}
			return nil
		}); err != nil {
			return nil, err
		}
		next := h.Gateways[1-i]
		flows, err := startFlows([][2]any{{s.Host, foVIP}})
		if err != nil {
			return nil, err
		}
		time.Sleep(300 * time.Millisecond)
		if err := h.SetDown(tp, dead, true); err != nil {
			return nil, err
		}
		// Cut off, it may as well stop in order (its children with it).
		procs[dead].Stop(5 * time.Second)
		err = topo.Eventually(10*time.Second, func() error {
			if held, err := h.Holds(tp, next, foVIP); err != nil || !held {
				return fmt.Errorf("the backup has not taken the VIP (%v)", err)
			}
			return nil
		})
		time.Sleep(500 * time.Millisecond)
		st := stopFlows(flows)
		if err != nil {
			return nil, err
		}
		out = append(out, st[0].Blackout)
		o.Logf("keepalived failover %d: VIP %s", rep+1, st[0].Blackout.Round(time.Millisecond))
		// The dead host reboots: its addresses as it left them, keepalived
		// started anew (it comes up as backup, nopreempt).
		if _, err := n.Exec(dead.NS, "ip", "addr", "del", foVIP.String()+"/32", "dev", topo.EdgeLAN); err != nil && !strings.Contains(err.Error(), "Address not found") {
			return nil, err
		}
		if err := h.SetDown(tp, dead, false); err != nil {
			return nil, err
		}
		if err := start(i, dead); err != nil {
			return nil, err
		}
		time.Sleep(2 * time.Second)
	}
	return out, nil
}

// probeCost runs the prober against targets addresses (the kernel of
// another namespace answers) every interval for window and returns the CPU
// this process used meanwhile.
func probeCost(targets int, interval, window time.Duration) (probeLoad, error) {
	l := probeLoad{IntervalMs: ms(interval)}
	n, err := topo.New(nsPrefix + "pr")
	if err != nil {
		return l, err
	}
	defer n.Close()
	a, err := n.NS("a")
	if err != nil {
		return l, err
	}
	b, err := n.NS("b")
	if err != nil {
		return l, err
	}
	if err := n.Veth(topo.End{NS: a, Name: "pa", Addr: netip.MustParsePrefix("10.201.0.1/16")}, topo.End{NS: b, Name: "pb", Addr: netip.MustParsePrefix("10.201.0.2/16")}); err != nil {
		return l, err
	}
	var batch strings.Builder
	var ts []probe.Target
	for i := range targets {
		addr := netip.AddrFrom4([4]byte{10, 201, byte(1 + i/250), byte(1 + i%250)})
		fmt.Fprintf(&batch, "addr add %s/32 dev pb\n", addr)
		ts = append(ts, probe.Target{Name: addr.String(), Addr: addr, Interval: interval, DownAfter: 4 * interval})
	}
	batchFile := filepath.Join(os.TempDir(), fmt.Sprintf("cframe-bench-probe-%d", os.Getpid()))
	if err := os.WriteFile(batchFile, []byte(batch.String()), 0o644); err != nil {
		return l, err
	}
	defer os.Remove(batchFile)
	if _, err := n.Exec(b, "ip", "-batch", batchFile); err != nil {
		return l, err
	}
	var p *probe.Prober
	if err := topo.Do(a, func() (err error) { p, err = probe.Open(); return err }); err != nil {
		return l, err
	}
	p.SetTargets(ts)
	done := make(chan struct{})
	go p.Run(done)
	defer close(done)
	if err := topo.Eventually(10*time.Second, func() error {
		up := 0
		for _, st := range p.States() {
			if st.Up {
				up++
			}
		}
		if up < targets {
			return fmt.Errorf("%d of %d targets up", up, targets)
		}
		return nil
	}); err != nil {
		return l, err
	}
	var r0, r1 syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r0); err != nil {
		return l, err
	}
	t0 := time.Now()
	time.Sleep(window)
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r1); err != nil {
		return l, err
	}
	wall := float64(time.Since(t0))
	l.UserPct = 100 * float64(r1.Utime.Nano()-r0.Utime.Nano()) / wall
	l.SystemPct = 100 * float64(r1.Stime.Nano()-r0.Stime.Nano()) / wall
	return l, nil
}
