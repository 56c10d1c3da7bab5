package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// The data-plane part: two VPCs of the walkthrough (a host behind each
// edge, the "internet" router between the edges) carry iperf3 and ping
// traffic host to host, once per mode and round, the modes interleaved
// within each round so that drift of a shared VM hits all of them alike.
// Every mode is torn down completely before the next one starts. It runs
// on two underlay profiles, each on a freshly built topology.

// dpPlan is how much the part measures.
type dpPlan struct {
	rounds int
	// secs is the duration of each iperf3 run.
	secs int
	// pings is the number of echo requests for the RTT.
	pings int
}

func dataPlanePlan(quick bool) dpPlan {
	if quick {
		return dpPlan{rounds: 1, secs: 1, pings: 100}
	}
	return dpPlan{rounds: 3, secs: 3, pings: 300}
}

// underlayDevices are the veth ends that make up the underlay: both edges'
// WAN interfaces and the router's ends.
func underlayDevices(t *topo.Topology) [][2]string {
	var out [][2]string
	for _, s := range t.Sites() {
		out = append(out, [2]string{s.Edge, s.EdgeIf}, [2]string{t.Router, s.RouterIf})
	}
	return out
}

// dpProfile is an underlay configuration.
type dpProfile struct {
	name, note string
	// apply configures a freshly built topology; nil keeps veth defaults.
	apply func(t *topo.Topology) error
	// need is a program the profile needs.
	need string
}

func dataPlaneProfiles() []dpProfile {
	return []dpProfile{
		{name: "veth defaults",
			note: "TSO/GSO and GRO at veth defaults: 64 KB segments cross the whole path unsplit — the best case for every mode."},
		{name: "wire-like", need: "ethtool",
			note: "TSO and GSO off, GRO on, on every underlay veth (both edges' WAN interfaces and the router's ends): packets cross the underlay at MTU size and are merged again on receipt, as on a cloud NIC. The hosts' and the edges' LAN veths keep their defaults. Software segmentation sends each 64 KB segment as a burst of ~45 packets, which overflows the 256-slot receive ring of the veth peer: the sending veth drops and TCP retransmits, the more the faster a mode sends.",
			apply: func(t *topo.Topology) error {
				for _, d := range underlayDevices(t) {
					if _, err := t.Net.Exec(d[0], "ethtool", "-K", d[1], "tso", "off", "gso", "off", "gro", "on"); err != nil {
						return err
					}
				}
				return nil
			}},
	}
}

// roundResult is one mode's figures from one round.
type roundResult struct {
	one, four flow
	rtt       Sample
	// procCPU and kernelCPU are CPU seconds per GB moved by both iperf3
	// runs: of the processes in the edge namespaces, and of the whole
	// machine's kernel (system, irq and softirq time).
	procCPU, kernelCPU float64
	// payload is the largest DF ping payload that crossed (0 when not
	// probed: only until a round of the mode succeeded).
	payload int
	// frags are the IP fragments the edges made during the round.
	frags int64
}

// modeStats accumulates one mode's rounds on one profile.
type modeStats struct {
	gbps1, gbps4, ratio1, ratio4 Sample
	rttAvg, rttP99, addedRTT     Sample
	procCPU, kernelCPU           Sample
	payload, mss, retransmits    int
	frags                        int64
	// chosen is the checksum setting cframe's agents ran (cframe only).
	chosen  string
	movedGB float64
	errs    []string
}

// dataPlane measures throughput, latency, CPU cost and path MTU of cframe
// beside the direct path and the userspace tunnels, on both underlay
// profiles.
func dataPlane(o Options) (Section, error) {
	if err := need("iperf3", "ping", "ss"); err != nil {
		return Section{Title: "Data plane"}, err
	}
	plan := dataPlanePlan(o.Quick)
	modes := dataPlaneModes()
	for _, m := range modes {
		if m.prepare == nil {
			continue
		}
		about, err := m.prepare(o)
		if err != nil {
			m.skipped = err.Error()
			o.Logf("%s: skipped: %s", m.name, m.skipped)
			continue
		}
		m.about = about
	}
	fig := dpFigures{Rounds: plan.rounds, IperfSeconds: plan.secs, Pings: plan.pings, Programs: map[string]string{}}
	for _, m := range modes {
		if m.about != "" {
			fig.Programs[m.name] = m.about
		}
	}
	var profiles []profileReport
	for _, p := range dataPlaneProfiles() {
		pr := profileReport{profile: p, stats: map[string]*modeStats{}}
		if p.need != "" {
			if err := need(p.need); err != nil {
				pr.skipped = err.Error()
			}
		}
		if pr.skipped == "" {
			if err := runProfile(o, plan, p, modes, pr.stats); err != nil {
				return Section{Title: "Data plane"}, fmt.Errorf("%s: %w", p.name, err)
			}
		}
		profiles = append(profiles, pr)
	}
	return renderDataPlane(plan, modes, profiles, fig), nil
}

// runProfile builds a topology with profile p and measures every mode
// plan.rounds times, interleaved.
func runProfile(o Options, plan dpPlan, p dpProfile, modes []*dpMode, stats map[string]*modeStats) error {
	n, err := topo.New(nsPrefix + "dp")
	if err != nil {
		return err
	}
	defer n.Close()
	defer closeOnSignal(n, o.Work)()
	vpcs := topo.Walkthrough()[:2]
	for i := range vpcs {
		vpcs[i].IPv6Underlay = true // for the IPv6-underlay rows
	}
	t, err := topo.Build(n, vpcs...)
	if err != nil {
		return err
	}
	sites := t.Sites()
	b := &bed{o: o, t: t, a: sites[0], b: sites[1], dir: filepath.Join(o.Work, "dataplane", strings.ReplaceAll(p.name, " ", "-"))}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return err
	}
	for _, s := range sites {
		// Every edge is a gateway, whatever carries its traffic.
		if _, err := n.Exec(s.Edge, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
	}
	if p.apply != nil {
		if err := p.apply(t); err != nil {
			return err
		}
	}
	if err := startIperfServers(n, b.b.Host, 4); err != nil {
		return err
	}
	for _, m := range modes {
		stats[m.name] = &modeStats{}
	}
	for r := range plan.rounds {
		results := map[string]roundResult{}
		for _, m := range modes {
			if m.skipped != "" {
				continue
			}
			st := stats[m.name]
			res, err := b.measure(m, plan, st.payload == 0)
			if err != nil {
				st.errs = append(st.errs, fmt.Sprintf("round %d: %v", r+1, err))
				o.Logf("%s, round %d/%d, %s: %v", p.name, r+1, plan.rounds, m.name, err)
				continue
			}
			results[m.name] = res
			if m.name == "cframe" {
				st.chosen = b.chosen
			}
			o.Logf("%s, round %d/%d, %-12s 1 stream %5.1f Gbit/s, 4 streams %5.1f Gbit/s, RTT %4.0f µs",
				p.name, r+1, plan.rounds, m.name, res.one.Gbps, res.four.Gbps, res.rtt.Mean())
		}
		direct, haveDirect := results["direct"]
		for name, res := range results {
			st := stats[name]
			st.gbps1 = append(st.gbps1, res.one.Gbps)
			st.gbps4 = append(st.gbps4, res.four.Gbps)
			st.rttAvg = append(st.rttAvg, res.rtt.Mean())
			st.rttP99 = append(st.rttP99, res.rtt.P99())
			st.procCPU = append(st.procCPU, res.procCPU)
			st.kernelCPU = append(st.kernelCPU, res.kernelCPU)
			st.frags += res.frags
			st.retransmits += res.one.Retransmits + res.four.Retransmits
			st.movedGB += (res.one.Bytes + res.four.Bytes) / 1e9
			if res.payload > 0 {
				st.payload, st.mss = res.payload, res.one.MSS
			}
			if haveDirect {
				st.ratio1 = append(st.ratio1, res.one.Gbps/direct.one.Gbps)
				st.ratio4 = append(st.ratio4, res.four.Gbps/direct.four.Gbps)
				st.addedRTT = append(st.addedRTT, res.rtt.Mean()-direct.rtt.Mean())
			}
		}
	}
	return nil
}

// closeOnSignal closes n, removes the scratch directory work and exits when
// the benchmark is interrupted, so that Ctrl-C leaves no namespace, process
// or file behind; the returned function stops watching.
func closeOnSignal(n *topo.Net, work string) func() {
	sig := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "bench: %v: removing the data-plane namespaces\n", s)
			n.Close()
			os.RemoveAll(work)
			os.Exit(130)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
	}
}

// resetHostRoutes deletes and re-adds each host's route to the other VPC:
// that drops the path MTU the previous mode taught it, which would
// otherwise cap the next mode's packets.
func (b *bed) resetHostRoutes() error {
	for _, s := range b.sites() {
		dst := b.peer(s).CIDR.String()
		b.t.Net.Exec(s.Host, "ip", "route", "del", dst)
		if _, err := b.t.Net.Exec(s.Host, "ip", "route", "add", dst, "via", s.EdgeAddr.String()); err != nil {
			return err
		}
	}
	return nil
}

// measure brings mode m up, measures it and tears it down again; probe
// adds the path-MTU search.
func (b *bed) measure(m *dpMode, plan dpPlan, probe bool) (res roundResult, err error) {
	if err := b.resetHostRoutes(); err != nil {
		return res, err
	}
	b.runs++
	down, err := m.up(b)
	if err != nil {
		return res, fmt.Errorf("start: %w", err)
	}
	defer func() {
		if derr := down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear down: %w", derr))
		}
	}()
	n, from, to := b.t.Net, b.a.Host, b.b.HostAddr
	if err := topo.Eventually(20*time.Second, func() error { return n.Ping(from, to, 1, time.Second) }); err != nil {
		return res, fmt.Errorf("hosts never reached each other: %w", err)
	}
	frags0, err := b.fragCreates()
	if err != nil {
		return res, err
	}
	edges := []string{b.a.Edge, b.b.Edge}
	c0, err := readCPU(edges...)
	if err != nil {
		return res, err
	}
	if res.one, err = iperf(n, from, to, 1, plan.secs); err != nil {
		return res, fmt.Errorf("1 stream: %w", err)
	}
	if res.four, err = iperf(n, from, to, 4, plan.secs); err != nil {
		return res, fmt.Errorf("4 streams: %w", err)
	}
	c1, err := readCPU(edges...)
	if err != nil {
		return res, err
	}
	procs, kernel := c1.since(c0)
	if gb := (res.one.Bytes + res.four.Bytes) / 1e9; gb > 0 {
		res.procCPU, res.kernelCPU = procs/gb, kernel/gb
	}
	// After the transfers: a mode that has just come up may still be busy
	// (cframe's agents report and resync in their first seconds), and
	// back-to-back pings take only milliseconds.
	if res.rtt, err = pingRTT(n, from, to, plan.pings); err != nil {
		return res, err
	}
	if probe {
		if res.payload, err = maxPayload(n, from, to); err != nil {
			return res, err
		}
	}
	frags1, err := b.fragCreates()
	res.frags = frags1 - frags0
	return res, err
}

// fragCreates sums the IP fragments both edges have made.
func (b *bed) fragCreates() (int64, error) {
	var sum int64
	for _, s := range b.sites() {
		v, err := ipFragCreates(b.t.Net, s.Edge)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// dpFigures are the data-plane figures of the JSON report.
type dpFigures struct {
	Rounds       int `json:"rounds"`
	IperfSeconds int `json:"iperf_seconds"`
	Pings        int `json:"pings"`
	// Programs says which build of each compared program ran.
	Programs map[string]string `json:"programs"`
	Profiles []profileFigure   `json:"profiles"`
}

type profileFigure struct {
	Name    string       `json:"name"`
	Skipped string       `json:"skipped,omitempty"`
	Modes   []modeFigure `json:"modes"`
}

// modeFigure holds one mode's samples; summaries are absent when the mode
// produced none (JSON has no NaN).
type modeFigure struct {
	Mode    string   `json:"mode"`
	Skipped string   `json:"skipped,omitempty"`
	Errors  []string `json:"errors,omitempty"`
	// Throughput in Gbit/s and per-round ratios to direct.
	Stream1Gbps  *Summary `json:"stream1_gbps,omitempty"`
	Stream4Gbps  *Summary `json:"stream4_gbps,omitempty"`
	Stream1Ratio *Summary `json:"stream1_ratio_to_direct,omitempty"`
	Stream4Ratio *Summary `json:"stream4_ratio_to_direct,omitempty"`
	// Round-trip times in microseconds, each sample one round's.
	RTTAvgUs   *Summary `json:"rtt_avg_us,omitempty"`
	RTTP99Us   *Summary `json:"rtt_p99_us,omitempty"`
	AddedRTTUs *Summary `json:"added_rtt_us,omitempty"`
	// CPU seconds per GB moved.
	ProcCPUPerGB   *Summary `json:"tunnel_process_cpu_s_per_gb,omitempty"`
	KernelCPUPerGB *Summary `json:"kernel_cpu_s_per_gb,omitempty"`
	// Path MTU and the MSS, from the first successful round.
	MaxPayload        int     `json:"max_df_ping_payload,omitempty"`
	MSS               int     `json:"tcp_mss_at_handshake,omitempty"`
	UnderlayFragments int64   `json:"underlay_fragments"`
	Retransmits       int     `json:"tcp_retransmits"`
	MovedGB           float64 `json:"moved_gb"`
}

func summary(s Sample) *Summary {
	if len(s) == 0 {
		return nil
	}
	v := s.Summarize()
	return &v
}

type profileReport struct {
	profile dpProfile
	skipped string
	stats   map[string]*modeStats
}

func renderDataPlane(plan dpPlan, modes []*dpMode, profiles []profileReport, fig dpFigures) Section {
	var b strings.Builder
	fmt.Fprintf(&b, "Two VPCs of the walkthrough (vpc1 and vpc2, a host behind each edge), the underlay router between the edges. "+
		"Traffic runs host to host through each mode; each round runs every mode once, in the order of the table, and tears it down before the next. "+
		"%d round(s); iperf3 runs of %d s (4 streams = 4 iperf3 processes of one stream each, since Debian's iperf3 drives all -P streams from one thread); "+
		"%d pings back to back for the RTT (ping -A, so that the idle vCPUs' wake-up time does not drown the path's own latency). Ratios are per-round ratios to direct, medians over rounds; ±x%% is the spread (max-min)/median. "+
		"CPU per GB counts both iperf3 runs: *processes* is user+system time of everything running in the edge namespaces "+
		"(the tunnel daemons; for cframe its controller and both agents), *kernel* the whole machine's system+irq+softirq time — all namespaces share these 2 CPUs, the router's forwarding included.\n\n",
		plan.rounds, plan.secs, plan.pings)
	for _, m := range modes {
		switch {
		case m.skipped != "":
			fmt.Fprintf(&b, "- **%s skipped:** %s\n", m.name, m.skipped)
		case m.about != "":
			fmt.Fprintf(&b, "- %s: %s\n", m.name, m.about)
		}
	}
	b.WriteString("\n")
	var verdicts []string
	for _, pr := range profiles {
		pf := profileFigure{Name: pr.profile.name, Skipped: pr.skipped}
		fmt.Fprintf(&b, "### Underlay: %s\n\n%s\n\n", pr.profile.name, pr.profile.note)
		if pr.skipped != "" {
			fmt.Fprintf(&b, "**Skipped:** %s\n\n", pr.skipped)
			fig.Profiles = append(fig.Profiles, pf)
			continue
		}
		b.WriteString("| mode | 1 stream Gbit/s | ×direct | 4 streams Gbit/s | ×direct | RTT avg µs | RTT p99 µs | added RTT µs | CPU s/GB processes | CPU s/GB kernel |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
		for _, m := range modes {
			st := pr.stats[m.name]
			mf := modeFigure{Mode: m.name, Skipped: m.skipped}
			if m.skipped != "" || st == nil {
				fmt.Fprintf(&b, "| %s | skipped |  |  |  |  |  |  |  |  |\n", m.name)
				pf.Modes = append(pf.Modes, mf)
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", m.name,
				withSpread(st.gbps1, "%.1f"), ratioCell(st.ratio1), withSpread(st.gbps4, "%.1f"), ratioCell(st.ratio4),
				num(st.rttAvg.Median(), "%.0f"), num(st.rttP99.Median(), "%.0f"), num(st.addedRTT.Median(), "%+.0f"),
				num(st.procCPU.Median(), "%.3f"), num(st.kernelCPU.Median(), "%.2f"))
			mf.Errors = st.errs
			mf.Stream1Gbps, mf.Stream4Gbps = summary(st.gbps1), summary(st.gbps4)
			mf.Stream1Ratio, mf.Stream4Ratio = summary(st.ratio1), summary(st.ratio4)
			mf.RTTAvgUs, mf.RTTP99Us, mf.AddedRTTUs = summary(st.rttAvg), summary(st.rttP99), summary(st.addedRTT)
			mf.ProcCPUPerGB, mf.KernelCPUPerGB = summary(st.procCPU), summary(st.kernelCPU)
			mf.MaxPayload, mf.MSS, mf.UnderlayFragments = st.payload, st.mss, st.frags
			mf.Retransmits, mf.MovedGB = st.retransmits, math.Round(st.movedGB*100)/100
			pf.Modes = append(pf.Modes, mf)
		}
		b.WriteString("\nPath MTU and TCP over it (a host MTU of 1500 on both sides):\n\n")
		b.WriteString("| mode | largest DF ping payload | path MTU | TCP MSS at handshake | bulk TCP moved | retransmits | IP fragments made by the edges |\n")
		b.WriteString("|---|---|---|---|---|---|---|\n")
		for _, m := range modes {
			st := pr.stats[m.name]
			if m.skipped != "" || st == nil || len(st.gbps1) == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %d | %.1f GB | %d | %d |\n", m.name, st.payload, st.payload+28, st.mss, st.movedGB, st.retransmits, st.frags)
		}
		b.WriteString("\n")
		for _, m := range modes {
			if st := pr.stats[m.name]; st != nil && len(st.errs) > 0 {
				fmt.Fprintf(&b, "- %s failed in some rounds: %s\n", m.name, strings.Join(st.errs, "; "))
			}
		}
		verdicts = append(verdicts, dataPlaneVerdicts(pr, modes)...)
		fig.Profiles = append(fig.Profiles, pf)
	}
	return Section{Title: "Data plane", Markdown: b.String(), Verdicts: verdicts, Figures: fig}
}

// withSpread formats a sample's median with its spread.
func withSpread(s Sample, format string) string {
	if len(s) == 0 {
		return "-"
	}
	if len(s) == 1 {
		return fmt.Sprintf(format, s.Median())
	}
	return fmt.Sprintf(format+" ±%.0f%%", s.Median(), 100*s.Spread())
}

func ratioCell(s Sample) string {
	if len(s) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", s.Median())
}

func num(v float64, format string) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// withinNoise says whether the median of a lies within the noise of b's:
// no further apart than the larger of their spreads; beyond it, whether a
// is above or (in capitals, a regression) below.
func withinNoise(a, b Sample) string {
	if len(a) == 0 || len(b) == 0 || b.Median() == 0 {
		return "no comparison"
	}
	d, noise := a.Median()/b.Median()-1, math.Max(a.Spread(), b.Spread())
	switch {
	case math.Abs(d) <= noise:
		return fmt.Sprintf("within noise: %+.0f%%, spreads up to ±%.0f%%", 100*d, 100*noise)
	case d > 0:
		return fmt.Sprintf("above it beyond noise: %+.0f%%, spreads up to ±%.0f%%", 100*d, 100*noise)
	}
	return fmt.Sprintf("BELOW it beyond noise: %+.0f%%, spreads up to ±%.0f%%", 100*d, 100*noise)
}

// met renders a target check.
func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// dataPlaneVerdicts are the profile's one-line-per-figure conclusions,
// read against the targets of the benchmark issue.
func dataPlaneVerdicts(pr profileReport, modes []*dpMode) []string {
	st := pr.stats
	cf := st["cframe"]
	if cf == nil || len(cf.gbps1) == 0 {
		return []string{pr.profile.name + ": cframe produced no figures"}
	}
	// The best userspace tunnel by each figure's median.
	best := func(fig func(*modeStats) Sample, higher bool) (string, float64) {
		name, v := "", math.NaN()
		for _, m := range modes {
			s := st[m.name]
			if !m.userspace || s == nil || len(fig(s)) == 0 {
				continue
			}
			x := fig(s).Median()
			if name == "" || (x > v) == higher {
				name, v = m.name, x
			}
		}
		return name, v
	}
	p := pr.profile.name
	var out []string
	for _, f := range []struct {
		label  string
		gbps   func(*modeStats) Sample
		ratio  func(*modeStats) Sample
		target float64
	}{
		{"1-stream throughput", func(s *modeStats) Sample { return s.gbps1 }, func(s *modeStats) Sample { return s.ratio1 }, 0.95},
		{"4-stream throughput", func(s *modeStats) Sample { return s.gbps4 }, func(s *modeStats) Sample { return s.ratio4 }, 0.75},
	} {
		r := f.ratio(cf).Median()
		line := fmt.Sprintf("%s, %s: cframe %s direct (target ≥%.2fx: %s)", p, f.label, num(r, "%.2fx"), f.target, met(r >= f.target))
		if name, v := best(f.gbps, true); name != "" {
			x := f.gbps(cf).Median() / v
			line += fmt.Sprintf(", %.1fx the best userspace tunnel (%s, %s direct; target ≥7x: %s); better: %s",
				x, name, num(f.ratio(st[name]).Median(), "%.2fx"), met(x >= 7), Better("cframe", f.gbps(cf).Median(), name, v, true))
		}
		out = append(out, line)
	}
	vs := func(ref string, what string) {
		r := st[ref]
		if r == nil || len(r.gbps1) == 0 {
			return
		}
		r1, r4 := cf.gbps1.Median()/r.gbps1.Median(), cf.gbps4.Median()/r.gbps4.Median()
		out = append(out, fmt.Sprintf("%s, cframe against %s (%s): %s on 1 stream (%s), %s on 4 streams (%s) (target ≥0.95x: %s), RTT %s vs %s µs",
			p, what, ref, Ratio(cf.gbps1.Median(), r.gbps1.Median()), withinNoise(cf.gbps1, r.gbps1),
			Ratio(cf.gbps4.Median(), r.gbps4.Median()), withinNoise(cf.gbps4, r.gbps4), met(r1 >= 0.95 && r4 >= 0.95),
			num(cf.rttAvg.Median(), "%.0f"), num(r.rttAvg.Median(), "%.0f")))
	}
	vs("kernel-vxlan", "the kernel's own VXLAN configured by hand with the kernel's defaults")
	vs(kernelVXLANFast, "the same with the fast checksum setting by hand")
	if cf.chosen != "" {
		out = append(out, fmt.Sprintf("%s, checksum setting the agents chose (checksum_offload = auto): %s — no NAT on this path breaks the fast setting, so no probe gave evidence against it", p, cf.chosen))
	}
	kv, kc := st["kernel-vxlan"], st[kernelVXLANCsum]
	if kv != nil && len(kv.gbps1) > 0 && kc != nil && len(kc.gbps1) > 0 {
		out = append(out, fmt.Sprintf("%s, what the safe checksum setting costs (transmit checksum offload off on the VXLAN device, outer UDP checksum on: correct through any NAT, the agents' fall back): %s is %s of kernel-vxlan on 1 stream, %s on 4 streams, kernel CPU %s per GB; cframe is %s and %s of it",
			p, kernelVXLANCsum, Ratio(kc.gbps1.Median(), kv.gbps1.Median()), Ratio(kc.gbps4.Median(), kv.gbps4.Median()),
			Ratio(kc.kernelCPU.Median(), kv.kernelCPU.Median()), Ratio(cf.gbps1.Median(), kc.gbps1.Median()), Ratio(cf.gbps4.Median(), kc.gbps4.Median())))
	}
	if c6, k6 := st[cframeUnderlay6], st[kernelVXLAN6Fast]; c6 != nil && len(c6.gbps1) > 0 {
		line := fmt.Sprintf("%s, over the IPv6 underlay (MTU 1430): %s %s direct on 1 stream, %s on 4 streams", p, cframeUnderlay6,
			num(c6.ratio1.Median(), "%.2fx"), num(c6.ratio4.Median(), "%.2fx"))
		if k6 != nil && len(k6.gbps1) > 0 {
			line += fmt.Sprintf("; against the kernel's VXLAN over IPv6 by hand (%s): %s on 1 stream (%s), %s on 4 streams (%s)", kernelVXLAN6Fast,
				Ratio(c6.gbps1.Median(), k6.gbps1.Median()), withinNoise(c6.gbps1, k6.gbps1), Ratio(c6.gbps4.Median(), k6.gbps4.Median()), withinNoise(c6.gbps4, k6.gbps4))
		}
		out = append(out, line)
	}
	added := cf.addedRTT.Median()
	line := fmt.Sprintf("%s, latency: cframe adds %s µs to direct's RTT (avg %s µs, p99 %s µs; target <40 µs: %s)",
		p, num(added, "%.0f"), num(cf.rttAvg.Median(), "%.0f"), num(cf.rttP99.Median(), "%.0f"), met(added < 40))
	if name, v := best(func(s *modeStats) Sample { return s.addedRTT }, false); name != "" {
		line += fmt.Sprintf("; the best userspace tunnel (%s) adds %.0f µs; better: %s", name, v, Better("cframe", added, name, v, false))
	}
	out = append(out, line)
	line = fmt.Sprintf("%s, CPU of our processes: cframe's controller and agents spend %.4f s per GB moved (~0: the kernel forwards)", p, cf.procCPU.Median())
	if name, v := best(func(s *modeStats) Sample { return s.procCPU }, false); name != "" {
		line += fmt.Sprintf(", the cheapest userspace tunnel (%s) %.2f s/GB; better: %s", name, v, Better("cframe", cf.procCPU.Median(), name, v, false))
	}
	out = append(out, line)
	if d := st["direct"]; d != nil && len(d.kernelCPU) > 0 {
		line = fmt.Sprintf("%s, kernel CPU per GB (whole machine): cframe %.2f s/GB, direct %.2f s/GB (%s)", p, cf.kernelCPU.Median(), d.kernelCPU.Median(), Ratio(cf.kernelCPU.Median(), d.kernelCPU.Median()))
		if name, v := best(func(s *modeStats) Sample { return s.kernelCPU }, false); name != "" {
			line += fmt.Sprintf(", the cheapest userspace tunnel (%s) %.2f s/GB; better: %s", name, v, Better("cframe", cf.kernelCPU.Median(), name, v, false))
		}
		out = append(out, line)
	}
	frags := "no IP fragments on the underlay"
	if cf.frags > 0 {
		frags = fmt.Sprintf("%d IP fragments made by the edges", cf.frags)
	}
	line = fmt.Sprintf("%s, MTU: cframe carries %d-byte DF pings (path MTU %d) with %s, and clamps the TCP MSS to %d at the handshake, so bulk TCP never waits on path-MTU discovery",
		p, cf.payload, cf.payload+28, frags, cf.mss)
	if d := st["direct"]; d != nil && d.payload > 0 {
		line += fmt.Sprintf(" (direct: %d bytes, MSS %d)", d.payload, d.mss)
	}
	return append(out, line)
}
