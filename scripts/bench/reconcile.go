package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/scripts/cluster"
)

// Targets of the issue for the edge reconcile.
const (
	// reconcileFloorRatio: a full reconcile within 1.3x the ip -batch floor.
	reconcileFloorRatio = 1.3
	// changeTarget: a one-peer change on a 10,000-peer edge.
	changeTarget = 2 * time.Millisecond
)

// simSpec is the i-th synthetic edge of the scale benchmarks: two /24s
// (a VPC and a pod range) and an underlay address in 198.18.0.0/15.
func simSpec(i int) edgeset.Spec {
	return edgeset.Spec{
		Name:       fmt.Sprintf("sim-%04d", i),
		HostAddr:   fmt.Sprintf("198.18.%d.%d:58423", i/250, i%250+1),
		CIDR:       fmt.Sprintf("10.%d.%d.0/24", i/256, i%256),
		ExtraCIDRs: []string{fmt.Sprintf("100.%d.%d.0/24", 64+i/256, i%256)},
	}
}

// rcSelf is the edge whose kernel the reconcile benchmark programs, with
// the addresses of the walkthrough's first edge.
var rcSelf = edgeset.Spec{Name: "rc-edge", HostAddr: "198.51.100.10:58423", CIDR: "172.18.0.0/16"}

// rcDesired is what rcSelf's kernel should hold with peers sim-0000 to
// sim-<peers-1>, computed the way the agent does (package mesh).
func rcDesired(peers int) (netcfg.Desired, error) {
	set := map[string]bus.Edge{}
	for i := -1; i < peers; i++ {
		s := rcSelf
		if i >= 0 {
			s = simSpec(i)
		}
		e, err := edgeset.Validate(s)
		if err != nil {
			return netcfg.Desired{}, err
		}
		set[e.Name] = e
	}
	d, _ := mesh.Desired(mesh.Local{Name: rcSelf.Name, Port: cluster.TunnelPort}, set, nil)
	return d, nil
}

// reconcileFigures are the reconcile part's numbers (times in ms).
type reconcileFigures struct {
	Sizes  []reconcileSize `json:"sizes"`
	Change reconcileChange `json:"one_peer_change"`
	Agent  agentUsage      `json:"agent"`
}

// reconcileSize is one edge size.
type reconcileSize struct {
	Peers int `json:"peers"`
	// Scratch: Reconcile on an edge with nothing of cframe's; Floor: ip
	// -batch and bridge -batch creating the same link, FDB entries,
	// neighbors and routes; Noop: Reconcile of the converged edge.
	Scratch Summary `json:"scratch_ms"`
	Floor   Summary `json:"floor_ms"`
	Noop    Summary `json:"noop_ms"`
	// Changes and Requests are those of one reconcile from scratch;
	// NoopRequests those of a no-op one.
	Changes      int             `json:"changes"`
	Requests     netcfg.Requests `json:"requests"`
	NoopRequests netcfg.Requests `json:"noop_requests"`
}

// reconcileChange is one peer added to, then removed from, the biggest
// edge: through Update (what the agent does with a delta) and, interleaved
// with it, through a full Reconcile.
type reconcileChange struct {
	Peers          int             `json:"peers"`
	Add            Summary         `json:"add_ms"`
	Remove         Summary         `json:"remove_ms"`
	AddChanges     []string        `json:"add_changes"`
	RemoveChanges  []string        `json:"remove_changes"`
	AddRequests    netcfg.Requests `json:"add_requests"`
	RemoveRequests netcfg.Requests `json:"remove_requests"`
	FullAdd        Summary         `json:"full_add_ms"`
	FullRemove     Summary         `json:"full_remove_ms"`
	FullRequests   netcfg.Requests `json:"full_requests"`
}

// agentUsage is the real cframe-edge holding the biggest mesh.
type agentUsage struct {
	Peers int `json:"peers"`
	// ApplyMs: agent started -> its status reports the current revision
	// applied (connect, snapshot, reconcile from scratch).
	ApplyMs      float64 `json:"apply_ms"`
	RSSBytes     int64   `json:"rss_bytes"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	// IdleCPUPercent covers its periodic resync (every 2 s) and heartbeats.
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
	Error          string  `json:"error,omitempty"`
}

// reconcileScale measures netcfg reconciling one edge against 10, 100 and
// 1000 peers in a namespace, beside ip/bridge -batch creating the same
// objects, then a one-peer change on the 1000-peer edge, then the real
// agent holding a 1000-peer mesh.
func reconcileScale(o Options) (Section, error) {
	sizes, reps, changeReps, idle := []int{100, 1000, 10000}, 5, 41, 4*time.Second
	if o.Quick {
		sizes, reps, changeReps, idle = []int{10, 100, 1000}, 3, 15, 2*time.Second
	}
	n, err := topo.New(nsPrefix + "rc")
	if err != nil {
		return Section{}, err
	}
	defer n.Close()
	ns, err := n.NS("edge")
	if err != nil {
		return Section{}, err
	}
	// An underlay with a default route (it sets the tunnel MTU) and a LAN
	// holding the edge's own address, both veth pairs inside the namespace.
	if err := n.Veth(topo.End{NS: ns, Name: "wan0", Addr: netip.MustParsePrefix("198.51.100.10/24")}, topo.End{NS: ns, Name: "wan1"}); err != nil {
		return Section{}, err
	}
	if err := n.Veth(topo.End{NS: ns, Name: "lan0", Addr: netip.MustParsePrefix("172.18.171.245/16")}, topo.End{NS: ns, Name: "lan1"}); err != nil {
		return Section{}, err
	}
	if _, err := n.Exec(ns, "ip", "route", "add", "default", "via", "198.51.100.1"); err != nil {
		return Section{}, err
	}
	k, err := netcfg.New()
	if err != nil {
		return Section{}, err
	}
	var f reconcileFigures
	for _, peers := range sizes {
		s, err := reconcileSize1(o, k, ns, peers, reps)
		if err != nil {
			return reconcileSection(f), fmt.Errorf("%d peers: %w", peers, err)
		}
		f.Sizes = append(f.Sizes, s)
		o.Logf("%d peers: scratch %.1f ms (floor %.1f ms), no-op %.2f ms", peers, s.Scratch.Median, s.Floor.Median, s.Noop.Median)
	}
	if f.Change, err = onePeerChange(k, ns, sizes[len(sizes)-1], changeReps); err != nil {
		return reconcileSection(f), fmt.Errorf("one-peer change: %w", err)
	}
	o.Logf("one-peer change on %d peers: add %.2f ms, remove %.2f ms", f.Change.Peers, f.Change.Add.Median, f.Change.Remove.Median)
	if err := topo.Do(ns, func() error { _, err := k.Cleanup(); return err }); err != nil {
		return reconcileSection(f), err
	}
	f.Agent = agentAtScale(o, sizes[len(sizes)-1], idle)
	if f.Agent.Error == "" {
		o.Logf("agent with %d peers: applied in %.0f ms, RSS %.1f MiB", f.Agent.Peers, f.Agent.ApplyMs, mib(f.Agent.RSSBytes))
	}
	return reconcileSection(f), nil
}

// reconcileSize1 times, interleaved, netcfg from scratch and the batch floor
// on an edge with peers peers, then no-op reconciles.
func reconcileSize1(o Options, k *netcfg.Kernel, ns string, peers, reps int) (reconcileSize, error) {
	s := reconcileSize{Peers: peers}
	d, err := rcDesired(peers)
	if err != nil {
		return s, err
	}
	ipBatch, bridgeBatch := filepath.Join(o.Work, "rc-ip.batch"), filepath.Join(o.Work, "rc-bridge.batch")
	ipb, brb := floorBatches(&d)
	if err := errors.Join(os.WriteFile(ipBatch, []byte(ipb), 0o644), os.WriteFile(bridgeBatch, []byte(brb), 0o644)); err != nil {
		return s, err
	}
	var scratch, floor, noop []time.Duration
	err = topo.Do(ns, func() error {
		for range reps {
			if _, err := k.Cleanup(); err != nil {
				return err
			}
			t0 := time.Now()
			res, err := k.Reconcile(&d)
			if err != nil {
				return err
			}
			scratch = append(scratch, time.Since(t0))
			s.Changes, s.Requests = len(res.Changes), res.Requests

			if _, err := k.Cleanup(); err != nil {
				return err
			}
			t0 = time.Now()
			for _, c := range [][]string{{"ip", "-batch", ipBatch}, {"bridge", "-batch", bridgeBatch}} {
				if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
					return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
				}
			}
			floor = append(floor, time.Since(t0))
		}
		// Converge (the floor's objects are adopted), then no-op rounds.
		if _, err := k.Reconcile(&d); err != nil {
			return err
		}
		for range 3 * reps {
			t0 := time.Now()
			res, err := k.Reconcile(&d)
			if err != nil {
				return err
			}
			if len(res.Changes) > 0 {
				return fmt.Errorf("a converged edge changed: %v", res.Changes)
			}
			noop = append(noop, time.Since(t0))
			s.NoopRequests = res.Requests
		}
		return nil
	})
	s.Scratch, s.Floor, s.Noop = Millis(scratch).Summarize(), Millis(floor).Summarize(), Millis(noop).Summarize()
	return s, err
}

// floorBatches writes the objects netcfg creates for d as an ip -batch
// (link, neighbors, routes) and a bridge -batch (FDB entries) input.
func floorBatches(d *netcfg.Desired) (ipBatch, bridgeBatch string) {
	var ip, br strings.Builder
	dev := netcfg.DefaultDevice
	fmt.Fprintf(&ip, "link add %s address %s mtu 1450 type vxlan id %d dstport %d nolearning udpcsum\n", dev, d.DeviceMAC, mesh.VNI, d.Port)
	fmt.Fprintf(&ip, "link set dev %s alias %s\nlink set dev %s up\n", dev, netcfg.OwnerAlias, dev)
	for _, p := range d.Peers {
		fmt.Fprintf(&ip, "neigh add %s lladdr %s dev %s nud permanent\n", p.NextHop, p.MAC, dev)
		for _, c := range p.CIDRs {
			fmt.Fprintf(&ip, "route add %s via %s dev %s onlink src 172.18.171.245 proto %d\n", c, p.NextHop, dev, netcfg.RouteProtocol)
		}
		fmt.Fprintf(&br, "fdb append %s dev %s dst %s port %d self permanent\n", p.MAC, dev, p.Underlay.Addr(), p.Underlay.Port())
	}
	return ip.String(), br.String()
}

// onePeerChange converges the edge with peers peers, then adds one more
// peer and removes it again, reps times each through Update and through
// Reconcile (interleaved), timing every call.
func onePeerChange(k *netcfg.Kernel, ns string, peers, reps int) (reconcileChange, error) {
	c := reconcileChange{Peers: peers}
	base, err := rcDesired(peers)
	if err != nil {
		return c, err
	}
	plus, err := rcDesired(peers + 1)
	if err != nil {
		return c, err
	}
	var add, remove, fullAdd, fullRemove []time.Duration
	type step struct {
		d       *netcfg.Desired
		took    *[]time.Duration
		changes *[]string
		reqs    *netcfg.Requests
	}
	var discard []string
	err = topo.Do(ns, func() error {
		if _, err := k.Reconcile(&base); err != nil {
			return err
		}
		for range reps {
			for _, m := range []struct {
				update bool
				steps  []step
			}{
				{true, []step{{&plus, &add, &c.AddChanges, &c.AddRequests}, {&base, &remove, &c.RemoveChanges, &c.RemoveRequests}}},
				{false, []step{{&plus, &fullAdd, &discard, &c.FullRequests}, {&base, &fullRemove, &discard, &c.FullRequests}}},
			} {
				for _, s := range m.steps {
					time.Sleep(2 * time.Millisecond)
					do := k.Reconcile
					if m.update {
						do = k.Update
					}
					t0 := time.Now()
					res, err := do(s.d)
					if err != nil {
						return err
					}
					*s.took = append(*s.took, time.Since(t0))
					if m.update && !res.Targeted {
						return fmt.Errorf("Update read everything: %s", res.FallbackReason)
					}
					*s.changes, *s.reqs = res.Changes, res.Requests
				}
			}
		}
		return nil
	})
	c.Add, c.Remove = Millis(add).Summarize(), Millis(remove).Summarize()
	c.FullAdd, c.FullRemove = Millis(fullAdd).Summarize(), Millis(fullRemove).Summarize()
	return c, err
}

// agentAtScale runs the real cframe-edge against a controller holding it
// and peers other edges, and reads its usage once it has applied the set.
// Failures are reported in the figures, not fatal to the part.
func agentAtScale(o Options, peers int, idle time.Duration) agentUsage {
	u := agentUsage{Peers: peers}
	fail := func(err error) agentUsage { u.Error = err.Error(); return u }
	n, err := topo.New(nsPrefix + "ag")
	if err != nil {
		return fail(err)
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()[0])
	if err != nil {
		return fail(err)
	}
	site := tp.Sites()[0]
	c, err := cluster.Start(tp, site, cluster.Options{Bin: o.Bin, Dir: filepath.Join(o.Work, "agent")})
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	if _, err := addSims(ctx, c.API, peers); err != nil {
		return fail(err)
	}
	e, err := c.NewEdge(cluster.WalkthroughNames[0], site)
	if err != nil {
		return fail(err)
	}
	res, err := e.Add(ctx)
	if err != nil {
		return fail(err)
	}
	t0 := time.Now()
	if err := e.Start(); err != nil {
		return fail(err)
	}
	if err := topo.Eventually(time.Minute, func() error {
		views, err := c.API.List(ctx)
		if err != nil {
			return err
		}
		for _, v := range views {
			if v.Name == e.Name && v.AppliedRevision >= res.Revision && v.LastError == "" {
				return nil
			}
		}
		return fmt.Errorf("%s has not applied revision %d", e.Name, res.Revision)
	}); err != nil {
		return fail(err)
	}
	u.ApplyMs = ms(time.Since(t0))
	pid := e.Proc().Pid()
	u0, err := topo.ProcUsage(pid)
	if err != nil {
		return fail(err)
	}
	time.Sleep(idle)
	u1, err := topo.ProcUsage(pid)
	if err != nil {
		return fail(err)
	}
	u.RSSBytes, u.PeakRSSBytes = u1.RSS, u1.PeakRSS
	u.IdleCPUPercent = 100 * float64(u1.CPU-u0.CPU) / float64(idle)
	return u
}

func reconcileSection(f reconcileFigures) Section {
	var md strings.Builder
	md.WriteString("netcfg reconciling one VXLAN edge against N peers (two CIDRs each) inside a namespace, on a thread locked into it. **cframe** is `Kernel.Reconcile` on an edge without any of cframe's objects: read, plan, apply — the link, an FDB entry and a neighbor per peer, a route per CIDR, the peers' public addresses in an ipset, and three iptables chains. The **floor**, measured interleaved with it, is `ip -batch` plus `bridge -batch` creating the same link, FDB entries, neighbors and routes (one process each, one netlink request per object): it reads nothing and leaves out the firewall, so the ratio is conservative. **No-op** is a reconcile of the converged edge (what the agent's periodic resync costs). Requests count netlink requests (one per dump, whatever its size) and programs run.\n\n")
	md.WriteString("| peers | cframe from scratch, median | spread | floor, median | spread | ratio | changes | requests (netlink / programs) | no-op median | no-op requests |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var verdicts []string
	for _, s := range f.Sizes {
		fmt.Fprintf(&md, "| %d | %.1f ms | %.2f | %.1f ms | %.2f | %s | %d | %d / %d | %.2f ms | %d / %d |\n",
			s.Peers, s.Scratch.Median, s.Scratch.Spread, s.Floor.Median, s.Floor.Spread, Ratio(s.Scratch.Median, s.Floor.Median),
			s.Changes, s.Requests.Netlink, s.Requests.Exec, s.Noop.Median, s.NoopRequests.Netlink, s.NoopRequests.Exec)
		verdicts = append(verdicts, fmt.Sprintf("%d peers from scratch: cframe %.1f ms vs %.1f ms for ip/bridge -batch (%s, %s is faster)",
			s.Peers, s.Scratch.Median, s.Floor.Median, Ratio(s.Scratch.Median, s.Floor.Median),
			Better("cframe", s.Scratch.Median, "the batch floor", s.Floor.Median, false)))
	}
	if n := len(f.Sizes); n > 0 {
		s := f.Sizes[n-1]
		verdicts = append(verdicts, fmt.Sprintf("full %d-peer reconcile: %s the floor, %s the %.1fx target",
			s.Peers, Ratio(s.Scratch.Median, s.Floor.Median), metOrMissed(s.Scratch.Median <= reconcileFloorRatio*s.Floor.Median), reconcileFloorRatio))
	}
	if c := f.Change; c.Peers > 0 {
		fmt.Fprintf(&md, "\nOne peer added to the converged %d-peer edge, then removed again, %d times each, every time after 2 ms idle as when a delta reaches an agent. **Update** is what the agent does with a delta: it reads only the changed peer's objects (one netlink get per FDB entry, neighbor, route and set member), the links and the nftables generation, then plans and applies. **Reconcile** is the full read, plan and apply the agent runs on drift and every 2 s, measured interleaved with it:\n\n", c.Peers, c.Add.N)
		md.WriteString("| change | median | p99 | spread | netlink requests | programs run | kernel changes |\n|---|---|---|---|---|---|---|\n")
		for _, r := range []struct {
			name    string
			s       Summary
			reqs    netcfg.Requests
			changes int
			full    *Summary // the same change through Reconcile, for a row of Update
		}{
			{"add one peer (Update)", c.Add, c.AddRequests, len(c.AddChanges), &c.FullAdd},
			{"remove one peer (Update)", c.Remove, c.RemoveRequests, len(c.RemoveChanges), &c.FullRemove},
			{"add one peer (full Reconcile)", c.FullAdd, c.FullRequests, len(c.AddChanges), nil},
			{"remove one peer (full Reconcile)", c.FullRemove, c.FullRequests, len(c.RemoveChanges), nil},
		} {
			fmt.Fprintf(&md, "| %s | %.2f ms | %.2f ms | %.2f | %d | %d | %d |\n", r.name, r.s.Median, r.s.P99, r.s.Spread,
				r.reqs.Netlink, r.reqs.Exec, r.changes)
			if r.full != nil {
				verdicts = append(verdicts, fmt.Sprintf("%s on a %d-peer edge: median %.2f ms (p99 %.2f ms), %d netlink requests, %d programs: %s the %.0f ms target; a full Reconcile of the same change takes %.2f ms",
					r.name, c.Peers, r.s.Median, r.s.P99, r.reqs.Netlink, r.reqs.Exec, metOrMissed(r.s.Median < ms(changeTarget)), ms(changeTarget), r.full.Median))
			}
		}
		fmt.Fprintf(&md, "\nAdding the peer: `%s`.\n", strings.Join(c.AddChanges, "`; `"))
		md.WriteString("\nAn Update's requests are one links dump (a handful of links), one get per key of the changed peer (its FDB entry, neighbor, two routes, set member), the nftables generation (which tells whether the iptables chains changed since they were last read — then they are not read again) and one request per kernel change: O(change). A full Reconcile makes as few requests (one dump per kind) but each dump carries every peer's objects: 2000 routes, 1000 neighbors, 1000 FDB entries, 1000 set members.\n")
	}
	if a := f.Agent; a.Peers > 0 {
		md.WriteString("\nThe real `cframe-edge` against a controller holding it and " + fmt.Sprint(a.Peers) + " other edges (they are registered, not running):\n\n")
		if a.Error != "" {
			fmt.Fprintf(&md, "Not measured: %s\n", a.Error)
		} else {
			md.WriteString("| agent started → set applied | RSS | peak RSS | CPU while idle (periodic resync, heartbeats) |\n|---|---|---|---|\n")
			fmt.Fprintf(&md, "| %.0f ms | %.1f MiB | %.1f MiB | %.1f %% |\n", a.ApplyMs, mib(a.RSSBytes), mib(a.PeakRSSBytes), a.IdleCPUPercent)
			verdicts = append(verdicts, fmt.Sprintf("agent holding %d peers: %.1f MiB RSS, %.1f %% CPU while idle", a.Peers, mib(a.RSSBytes), a.IdleCPUPercent))
		}
	}
	return Section{Title: "Edge reconcile scale", Markdown: md.String(), Verdicts: verdicts, Figures: f}
}
