package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/cluster"
	"github.com/cframe/cframe/scripts/topo"
)

// observePeers is the mesh size the agent's observability cost is measured at.
const observePeers = 100

// observeBudget is the aim: probes and metrics cost the agent less
// than 1 % of a CPU at 100 peers.
const observeBudget = 1.0

// observeFigures are the observability part's numbers.
type observeFigures struct {
	Peers int `json:"peers"`
	// Seconds is the length of each measured phase.
	Seconds float64 `json:"seconds"`
	// IdleCPUPercent is the agent's CPU with its mesh applied and nobody
	// scraping; ScrapedCPUPercent the same scraped every ScrapeEvery.
	IdleCPUPercent    float64 `json:"idle_cpu_percent"`
	ScrapedCPUPercent float64 `json:"scraped_cpu_percent"`
	ScrapeEverySec    float64 `json:"scrape_every_s"`
	Scrapes           int     `json:"scrapes"`
	// MetricsCPUPercent is the difference: what serving the metrics costs
	// at that rate; PerScrapeMs the agent's CPU per scrape.
	MetricsCPUPercent float64 `json:"metrics_cpu_percent"`
	PerScrapeMs       float64 `json:"per_scrape_cpu_ms"`
	ScrapeBytes       int     `json:"scrape_bytes"`
	Series            int     `json:"series"`
}

// observeCost runs one real agent with 100 peers (a real controller; the
// peers exist only in the edge set) and measures, side by side in one run,
// its CPU when nobody looks and when Prometheus scrapes it every second —
// fifteen times its default rate.
func observeCost(o Options) (Section, error) {
	phase, rounds, every := 20*time.Second, 2, time.Second
	if o.Quick {
		phase, rounds = 8*time.Second, 1
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
	if err := e.Start(); err != nil {
		return Section{}, err
	}
	if _, err := e.Add(ctx); err != nil {
		return Section{}, err
	}
	for i := range observePeers {
		spec := edgeset.Spec{Name: fmt.Sprintf("peer-%03d", i), HostAddr: fmt.Sprintf("198.18.%d.%d:58423", i/200, i%200+1),
			CIDR: fmt.Sprintf("10.200.%d.0/24", i)}
		if _, err := c.API.Add(ctx, spec); err != nil {
			return Section{}, err
		}
	}
	hc := e.HTTP()
	scrape := func() ([]byte, error) {
		resp, err := hc.Get(e.MetricsURL())
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	if err := topo.Eventually(60*time.Second, func() error {
		b, err := scrape()
		if err != nil {
			return err
		}
		if !bytes.Contains(b, fmt.Appendf(nil, "\ncframe_edge_peers %d\n", observePeers)) || !bytes.Contains(b, []byte("\ncframe_edge_revision_lag 0\n")) {
			return fmt.Errorf("the agent has not applied its %d peers yet", observePeers)
		}
		return nil
	}); err != nil {
		return Section{}, err
	}
	o.Logf("agent up with %d peers; measuring %d rounds of %s idle and %s scraped every %s", observePeers, rounds, phase, phase, every)
	time.Sleep(3 * time.Second) // past the first reconciles
	pid := e.Proc().Pid()
	cpu := func(during func()) (time.Duration, error) {
		before, err := topo.ProcUsage(pid)
		if err != nil {
			return 0, err
		}
		during()
		after, err := topo.ProcUsage(pid)
		if err != nil {
			return 0, err
		}
		return after.CPU - before.CPU, nil
	}
	f := observeFigures{Peers: observePeers, Seconds: phase.Seconds() * float64(rounds), ScrapeEverySec: every.Seconds()}
	var idle, scraped time.Duration
	// Interleaved rounds, so a neighbour's load on the shared machine
	// falls on both kinds of phase alike.
	for range rounds {
		d, err := cpu(func() { time.Sleep(phase) })
		if err != nil {
			return Section{}, err
		}
		idle += d
		var scrapeErr error
		d, err = cpu(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for end := time.Now().Add(phase); time.Now().Before(end); <-tick.C {
				b, err := scrape()
				if err != nil {
					scrapeErr = err
					return
				}
				f.Scrapes++
				f.ScrapeBytes, f.Series = len(b), 0
				for _, l := range strings.Split(string(b), "\n") {
					if l != "" && !strings.HasPrefix(l, "#") {
						f.Series++
					}
				}
			}
		})
		if err == nil {
			err = scrapeErr
		}
		if err != nil {
			return Section{}, err
		}
		scraped += d
	}
	total := time.Duration(rounds) * phase
	f.IdleCPUPercent = 100 * float64(idle) / float64(total)
	f.ScrapedCPUPercent = 100 * float64(scraped) / float64(total)
	f.MetricsCPUPercent = max(f.ScrapedCPUPercent-f.IdleCPUPercent, 0)
	if f.Scrapes > 0 {
		f.PerScrapeMs = max(ms(scraped-idle), 0) / float64(f.Scrapes)
	}
	return observeSection(f), nil
}

func observeSection(f observeFigures) Section {
	var md strings.Builder
	fmt.Fprintf(&md, "One real `cframe-edge` with %d peers in its edge set (a real controller; the peers exist only in the set), its kernel state applied. Its CPU (user + system, from /proc: 10 ms ticks) over %.0f s with nobody looking and over %.0f s with its `/metrics` scraped every %.0f s — fifteen times Prometheus's default rate —, in interleaved phases of the same run.\n\n", f.Peers, f.Seconds, f.Seconds, f.ScrapeEverySec)
	md.WriteString("| agent at 100 peers | CPU | per scrape | scrape size |\n|---|---|---|---|\n")
	fmt.Fprintf(&md, "| idle (resyncs, heartbeats) | %.2f %% | - | - |\n", f.IdleCPUPercent)
	fmt.Fprintf(&md, "| scraped every %.0f s | %.2f %% | %.2f ms | %d bytes, %d series |\n", f.ScrapeEverySec, f.ScrapedCPUPercent, f.PerScrapeMs, f.ScrapeBytes, f.Series)
	fmt.Fprintf(&md, "| **metrics (difference)** | **%.2f %%** | | |\n", f.MetricsCPUPercent)
	verdict := fmt.Sprintf("metrics cost the agent %.2f %% of a CPU at %d peers scraped every %.0f s: %s the %.0f %% budget", f.MetricsCPUPercent, f.Peers, f.ScrapeEverySec, within(f.MetricsCPUPercent, observeBudget), observeBudget)
	return Section{Title: "Observability cost on the agent", Markdown: md.String(), Verdicts: []string{verdict}, Figures: f}
}

func within(v, budget float64) string {
	if v < budget {
		return "within"
	}
	return "over"
}
