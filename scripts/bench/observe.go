package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/orchestrator/probe"
	"github.com/cframe/cframe/scripts/cluster"
)

// observePeers is the mesh size the agent's observability cost is measured at.
const observePeers = 100

// observeBudget is the aim: probes and metrics cost the agent less
// than 1 % of a CPU at 100 peers.
const observeBudget = 1.0

// Where the simulated peers live: one namespace on the underlay, one
// address, one VXLAN device per peer on its own port.
var (
	peersAddr   = netip.MustParsePrefix("198.18.0.1/24")
	peersRouter = netip.MustParsePrefix("198.18.0.254/24")
)

const peersBasePort = 40000

// observeFigures are the observability part's numbers.
type observeFigures struct {
	Peers int `json:"peers"`
	// Seconds is the measured time of each kind of phase.
	Seconds float64 `json:"seconds"`
	// AgentCPUPercent is the agent's CPU with its mesh applied, probing
	// every peer, nobody scraping.
	AgentCPUPercent float64 `json:"agent_cpu_percent"`
	// PerScrapeMs is the agent's CPU per scrape, from Scrapes scrapes in a
	// row; MetricsCPUPercent what scraping every ScrapeEverySec costs, and
	// StressCPUPercent every second.
	PerScrapeMs       float64 `json:"per_scrape_cpu_ms"`
	Scrapes           int     `json:"scrapes"`
	ScrapeEverySec    float64 `json:"scrape_every_s"`
	MetricsCPUPercent float64 `json:"metrics_cpu_percent"`
	StressCPUPercent  float64 `json:"metrics_every_second_cpu_percent"`
	ScrapeBytes       int     `json:"scrape_bytes"`
	Series            int     `json:"series"`
	// ProbeCPUPercent is the agent's prober alone (package probe, the same
	// targets and timing, in a process of its own); TotalCPUPercent the
	// probes and the metrics together.
	ProbeCPUPercent float64 `json:"probe_cpu_percent"`
	TotalCPUPercent float64 `json:"total_cpu_percent"`
	// ProbesPerSecond is what the agent sent, PeersUp how many answered.
	ProbesPerSecond float64 `json:"probes_per_second"`
	PeersUp         int     `json:"peers_up"`
}

// observeCost runs one real agent with 100 peers that answer its probes
// through the tunnel (VXLAN devices in one namespace on the underlay, no
// agents) and a real controller, and measures, in interleaved phases of one
// run: the agent idle (probing), the agent scraped every second — fifteen
// times Prometheus's default rate —, and the agent's prober alone (package
// probe with the same targets, run by this benchmark in a process of its
// own: the agent cannot run without CAP_NET_RAW, which its firewall rules
// need as well, so its probes cannot simply be switched off).
func observeCost(o Options) (Section, error) {
	phase, rounds, every, scrapesPerRound := 15*time.Second, 2, 15*time.Second, 200
	if o.Quick {
		phase, rounds, scrapesPerRound = 6*time.Second, 1, 100
	}
	n, err := topo.New(nsPrefix + "obs")
	if err != nil {
		return Section{}, err
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()[0])
	if err != nil {
		return Section{}, err
	}
	site := tp.Sites()[0]
	c, err := cluster.Start(tp, site, cluster.Options{Bin: o.Bin, Dir: filepath.Join(o.Work, "observe")})
	if err != nil {
		return Section{}, err
	}
	ctx := context.Background()
	e, err := c.NewEdge("sz-1", site)
	if err != nil {
		return Section{}, err
	}
	if _, err := e.Add(ctx); err != nil {
		return Section{}, err
	}
	var names []string
	for i := range observePeers {
		name := fmt.Sprintf("peer-%03d", i)
		names = append(names, name)
		spec := edgeset.Spec{Name: name, HostAddr: fmt.Sprintf("%s:%d", peersAddr.Addr(), peersBasePort+i), CIDR: fmt.Sprintf("10.200.%d.0/24", i)}
		if _, err := c.API.Add(ctx, spec); err != nil {
			return Section{}, err
		}
	}
	if err := simulatePeers(n, tp, site, e.Name, names, o.Work); err != nil {
		return Section{}, fmt.Errorf("simulated peers: %w", err)
	}
	// What the network and the peers do with the probes happens, in real
	// life, on other machines; here it would run on the sender's CPU and
	// be billed to it. So the agent (and the prober alone) run on CPU 0
	// and the router's interface toward the edge steers what it receives
	// to the other CPUs (RPS): the processes pay for what they send and
	// read, the rest runs elsewhere.
	pin := []string{}
	if runtime.NumCPU() > 1 {
		mask := fmt.Sprintf("%x", (1<<min(runtime.NumCPU(), 32))-2)
		if out, err := n.Exec(tp.Router, "sh", "-c", fmt.Sprintf("echo %s > /sys/class/net/%s/queues/rx-0/rps_cpus", mask, site.RouterIf)); err != nil {
			return Section{}, fmt.Errorf("steer the router's receive: %w: %s", err, out)
		}
		pin = []string{"taskset", "-c", "0"}
	}
	p, err := n.Start(site.Edge, e.Log, append(pin, filepath.Join(o.Bin, "cframe-edge"), "-c", e.Config)...)
	if err != nil {
		return Section{}, err
	}
	defer p.Stop(5 * time.Second)
	hc := e.HTTP()
	scrape := func() ([]byte, error) {
		resp, err := hc.Get(e.MetricsURL())
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	// sum adds up the values of the series of family name.
	sum := func(b []byte, name string) float64 {
		total := 0.0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
				var v float64
				fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
				total += v
			}
		}
		return total
	}
	if err := topo.Eventually(60*time.Second, func() error {
		b, err := scrape()
		if err != nil {
			return err
		}
		if up := sum(b, "cframe_edge_peer_up"); sum(b, "cframe_edge_peers") != observePeers || sum(b, "cframe_edge_revision_lag") != 0 || up != observePeers {
			log, _ := os.ReadFile(e.Log)
			return fmt.Errorf("the agent has not applied and reached its %d peers yet (%v answer); its log ends: %s", observePeers, up, lastLines(string(log), 3))
		}
		return nil
	}); err != nil {
		return Section{}, err
	}
	time.Sleep(2 * time.Second) // past the first reconciles and probe bursts
	agent := p
	cpu := func(p *topo.Proc, during func() error) (time.Duration, error) {
		before, err := topo.ProcUsage(p.Pid())
		if err != nil {
			return 0, err
		}
		if err := during(); err != nil {
			return 0, err
		}
		after, err := topo.ProcUsage(p.Pid())
		if err != nil {
			return 0, err
		}
		return after.CPU - before.CPU, nil
	}
	f := observeFigures{Peers: observePeers, Seconds: phase.Seconds() * float64(rounds), ScrapeEverySec: every.Seconds()}
	var sent float64
	idle := func() error {
		b0, err := scrape()
		if err != nil {
			return err
		}
		time.Sleep(phase)
		b1, err := scrape()
		if err != nil {
			return err
		}
		sent += sum(b1, "cframe_edge_peer_probes_sent_total") - sum(b0, "cframe_edge_peer_probes_sent_total")
		f.PeersUp = int(sum(b1, "cframe_edge_peer_up"))
		return nil
	}
	scraped := func() error {
		for range scrapesPerRound {
			b, err := scrape()
			if err != nil {
				return err
			}
			f.Scrapes++
			f.ScrapeBytes, f.Series = len(b), 0
			for _, l := range strings.Split(string(b), "\n") {
				if l != "" && !strings.HasPrefix(l, "#") {
					f.Series++
				}
			}
		}
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return Section{}, err
	}
	targets := filepath.Join(o.Work, "probe-targets")
	if err := os.WriteFile(targets, []byte(strings.Join(names, "\n")), 0o644); err != nil {
		return Section{}, err
	}
	prober := func() (time.Duration, error) {
		child, err := n.Start(site.Edge, filepath.Join(o.Work, "probe-child.log"), append(pin, self, probeChildArg, targets, (phase+4*time.Second).String())...)
		if err != nil {
			return 0, err
		}
		defer child.Stop(time.Second)
		time.Sleep(2 * time.Second) // its first round of probes
		return cpu(child, func() error { time.Sleep(phase); return nil })
	}
	o.Logf("agent with %d answering peers; %d rounds of %s idle, %d scrapes in a row, and %s of its prober alone", observePeers, rounds, phase, scrapesPerRound, phase)
	var idleCPU, scrapedCPU, probeCPU, scrapeWall time.Duration
	// Interleaved rounds, so a neighbour's load on the shared machine
	// falls on every kind of phase alike.
	for range rounds {
		d, err := cpu(agent, idle)
		if err != nil {
			return Section{}, err
		}
		idleCPU += d
		t0 := time.Now()
		if d, err = cpu(agent, scraped); err != nil {
			return Section{}, err
		}
		scrapedCPU, scrapeWall = scrapedCPU+d, scrapeWall+time.Since(t0)
		if d, err = prober(); err != nil {
			return Section{}, err
		}
		probeCPU += d
	}
	total := time.Duration(rounds) * phase
	pct := func(d time.Duration) float64 { return 100 * float64(d) / float64(total) }
	f.AgentCPUPercent, f.ProbeCPUPercent = pct(idleCPU), pct(probeCPU)
	// Less what the agent spends anyway while the scrapes run.
	background := time.Duration(float64(idleCPU) / float64(total) * float64(scrapeWall))
	f.PerScrapeMs = max(ms(scrapedCPU-background), 0) / float64(f.Scrapes)
	f.MetricsCPUPercent = 100 * f.PerScrapeMs / 1000 / f.ScrapeEverySec
	f.StressCPUPercent = 100 * f.PerScrapeMs / 1000
	f.TotalCPUPercent = f.ProbeCPUPercent + f.MetricsCPUPercent
	f.ProbesPerSecond = sent / total.Seconds()
	return observeSection(f), nil
}

// probeChildArg makes the benchmark binary run only the agent's prober
// (probe-child <file of peer names> <duration>), in the namespace it is
// started in: the probe cost measured apart from the rest of the agent.
const probeChildArg = "probe-child"

func probeChild(args []string) {
	if len(args) != 2 {
		fail("usage: bench %s <peers file> <duration>", probeChildArg)
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fail("%v", err)
	}
	d, err := time.ParseDuration(args[1])
	if err != nil {
		fail("%v", err)
	}
	p, err := probe.Open()
	if err != nil {
		fail("%v", err)
	}
	// As the agent's HA engine sets them for a gateway alone in its site.
	t := ha.DefaultTiming()
	var ts []probe.Target
	for _, name := range strings.Fields(string(b)) {
		ts = append(ts, probe.Target{Name: name, Addr: mesh.LinkLocal(name).WithZone("cframe0"), Interval: t.PeerInterval, DownAfter: t.PeerDownAfter})
	}
	p.SetTargets(ts)
	done := make(chan struct{})
	go p.Run(done)
	time.Sleep(d)
	close(done)
	up := 0
	for _, st := range p.States() {
		if st.Up {
			up++
		}
	}
	fmt.Printf("%d of %d targets up\n", up, len(ts))
}

// simulatePeers gives each peer a VXLAN device in one namespace on the
// underlay, with the peer's port, VTEP MAC and link-local address and a way
// back to the edge, so the kernel answers the edge's probes as a real
// peer's would.
func simulatePeers(n *topo.Net, tp *topo.Topology, site *topo.Site, edge string, peers []string, work string) error {
	ns, err := n.NS("peers")
	if err != nil {
		return err
	}
	if err := n.Veth(topo.End{NS: tp.Router, Name: "peers0", Addr: peersRouter}, topo.End{NS: ns, Name: "up0", Addr: peersAddr}); err != nil {
		return err
	}
	var ipb, brb strings.Builder
	fmt.Fprintf(&ipb, "route add default via %s\n", peersRouter.Addr())
	edgeMAC, edgeLL := mesh.VTEPMAC(edge), mesh.LinkLocal(edge)
	for i, p := range peers {
		dev := fmt.Sprintf("vxp%03d", i)
		fmt.Fprintf(&ipb, "link add %s type vxlan id %d local %s dstport %d nolearning\n", dev, mesh.VNI, peersAddr.Addr(), peersBasePort+i)
		fmt.Fprintf(&ipb, "link set %s address %s addrgenmode none\n", dev, mesh.VTEPMAC(p))
		fmt.Fprintf(&ipb, "addr add %s/64 dev %s nodad\n", mesh.LinkLocal(p), dev)
		fmt.Fprintf(&ipb, "link set %s up\n", dev)
		fmt.Fprintf(&ipb, "neigh add %s lladdr %s dev %s nud permanent\n", edgeLL, edgeMAC, dev)
		fmt.Fprintf(&brb, "fdb add %s dev %s dst %s port %d self permanent\n", edgeMAC, dev, site.Underlay(), cluster.TunnelPort)
	}
	for _, b := range []struct{ tool, body string }{{"ip", ipb.String()}, {"bridge", brb.String()}} {
		path := filepath.Join(work, "peers."+b.tool)
		if err := os.WriteFile(path, []byte(b.body), 0o644); err != nil {
			return err
		}
		if out, err := n.Exec(ns, b.tool, "-batch", path); err != nil {
			return fmt.Errorf("%s -batch: %w: %s", b.tool, err, out)
		}
	}
	return nil
}

func observeSection(f observeFigures) Section {
	var md strings.Builder
	fmt.Fprintf(&md, "One real `cframe-edge` with %d peers that answer its probes through the tunnel (each a VXLAN device with the peer's port, MAC and link-local address in one namespace on the underlay; the kernel answers, no agent runs there; %d of %d up) and a real controller, the mesh applied and otherwise idle. The agent runs on CPU 0, and the underlay router's interface toward it steers what it receives to the other CPU (RPS), so the work the network and the peers do for the probes — elsewhere in real life — is not billed to it. CPU is user + system from /proc (10 ms ticks), in interleaved phases of one run: the agent as it runs for %.0f s (probing %.0f times a second, its HA engine, resyncs, heartbeats); %d scrapes of its `/metrics` in a row (CPU per scrape, priced at one scrape every %.0f s, the usual interval, and at one a second); the agent's prober alone for %.0f s (package probe, the same targets and timing, in a process of its own, on CPU 0 too: the agent needs CAP_NET_RAW for its firewall rules as well, so its probes cannot be switched off to compare).\n\n",
		f.Peers, f.PeersUp, f.Peers, f.Seconds, f.ProbesPerSecond, f.Scrapes, f.ScrapeEverySec, f.Seconds)
	md.WriteString("| at 100 peers | CPU |\n|---|---|\n")
	fmt.Fprintf(&md, "| the whole agent, probing, not scraped | %.2f %% |\n", f.AgentCPUPercent)
	fmt.Fprintf(&md, "| probes (the prober alone, %.0f probes/s) | %.2f %% |\n", f.ProbesPerSecond, f.ProbeCPUPercent)
	fmt.Fprintf(&md, "| metrics, scraped every %.0f s (%.2f ms a scrape of %d bytes, %d series) | %.3f %% (every second: %.2f %%) |\n", f.ScrapeEverySec, f.PerScrapeMs, f.ScrapeBytes, f.Series, f.MetricsCPUPercent, f.StressCPUPercent)
	fmt.Fprintf(&md, "| **probes and metrics** | **%.2f %%** |\n", f.TotalCPUPercent)
	verdict := fmt.Sprintf("probes and metrics cost the agent %.2f %% of a CPU at %d peers (probes %.2f %%, metrics scraped every %.0f s %.3f %%; scraped every second %.2f %%): %s the %.0f %% budget",
		f.TotalCPUPercent, f.Peers, f.ProbeCPUPercent, f.ScrapeEverySec, f.MetricsCPUPercent, f.ProbeCPUPercent+f.StressCPUPercent, within(f.TotalCPUPercent, observeBudget), observeBudget)
	return Section{Title: "Observability cost on the agent", Markdown: md.String(), Verdicts: []string{verdict}, Figures: f}
}

// lastLines is the end of a log.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

func within(v, budget float64) string {
	if v < budget {
		return "within"
	}
	return "over"
}
