package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/scripts/cluster"
)

// convergenceTarget is the aim: p99 under 300 ms for 3 edges.
const convergenceTarget = 300 * time.Millisecond

// probeInterval is how often the convergence probes look: their resolution.
const probeInterval = time.Millisecond

// convergenceFigures are the convergence part's numbers, in milliseconds.
type convergenceFigures struct {
	Edges int `json:"edges"`
	// AddFirstPair: add call returned -> first ping answered across one
	// of the re-added edge's pairs; AddAllPairs: across all of them.
	AddFirstPair Summary `json:"add_first_pair_ms"`
	AddAllPairs  Summary `json:"add_all_pairs_ms"`
	// Delete: del call returned -> the deleted edge's routes gone on
	// every other edge.
	Delete   Summary `json:"delete_ms"`
	TargetMs float64 `json:"target_p99_ms"`
	// ProbeIntervalMs is the probes' resolution.
	ProbeIntervalMs float64 `json:"probe_interval_ms"`
}

// convergence runs the walkthrough's three edges (real controller and
// agents) and repeatedly deletes and re-adds one of them, timing how long
// the mesh takes to follow each API call.
func convergence(o Options) (Section, error) {
	reps := 21
	if o.Quick {
		reps = 6
	}
	n, err := topo.New(nsPrefix + "cv")
	if err != nil {
		return Section{}, err
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()...)
	if err != nil {
		return Section{}, err
	}
	sites := tp.Sites()
	c, err := cluster.Start(tp, sites[0], cluster.Options{Bin: o.Bin, Dir: filepath.Join(o.Work, "convergence")})
	if err != nil {
		return Section{}, err
	}
	ctx := context.Background()
	edges := make([]*cluster.Edge, len(sites))
	pingers := make([]*topo.Pinger, len(sites))
	for i, s := range sites {
		if edges[i], err = c.NewEdge(cluster.WalkthroughNames[i], s); err != nil {
			return Section{}, err
		}
		if err := edges[i].Start(); err != nil {
			return Section{}, err
		}
		if _, err := edges[i].Add(ctx); err != nil {
			return Section{}, err
		}
		if pingers[i], err = topo.NewPinger(s.Host); err != nil {
			return Section{}, err
		}
		defer pingers[i].Close()
	}
	for i, s := range sites {
		for j, d := range sites {
			if i != j {
				if _, err := pingers[i].Until(d.HostAddr, 10*time.Millisecond, 20*time.Second); err != nil {
					return Section{}, fmt.Errorf("the walkthrough mesh did not converge: %s -> %s: %w", s.Name, d.Name, err)
				}
			}
		}
	}
	o.Logf("walkthrough mesh up; %d delete/re-add rounds", reps)

	var first, all, del []time.Duration
	for rep := 0; rep < reps; rep++ {
		// Each round moves the next edge, so every edge and every pair
		// takes part.
		m := rep % len(sites)
		var others []int
		for i := range sites {
			if i != m {
				others = append(others, i)
			}
		}
		settle()
		if _, err := c.API.Del(ctx, edges[m].Name); err != nil {
			return Section{}, err
		}
		returned := time.Now()
		gone := make([]chan result, len(others))
		for k, i := range others {
			gone[k] = make(chan result, 1)
			go func() {
				at, err := routesGone(sites[i].Edge, sites[m].CIDRs(), 10*time.Second)
				gone[k] <- result{at, err}
			}()
		}
		last, err := latest(gone)
		if err != nil {
			return Section{}, fmt.Errorf("delete %s: %w", edges[m].Name, err)
		}
		del = append(del, last.Sub(returned))

		settle()
		if _, err := edges[m].Add(ctx); err != nil {
			return Section{}, err
		}
		returned = time.Now()
		answered := make([]chan result, len(others))
		for k, i := range others {
			answered[k] = make(chan result, 1)
			go func() {
				at, err := pingers[i].Until(sites[m].HostAddr, probeInterval, 10*time.Second)
				answered[k] <- result{at, err}
			}()
		}
		var ats []time.Time
		for _, ch := range answered {
			r := <-ch
			if r.err != nil {
				return Section{}, fmt.Errorf("re-add %s: %w", edges[m].Name, r.err)
			}
			ats = append(ats, r.at)
		}
		earliest, latest := ats[0], ats[0]
		for _, at := range ats[1:] {
			earliest, latest = minTime(earliest, at), maxTime(latest, at)
		}
		first, all = append(first, earliest.Sub(returned)), append(all, latest.Sub(returned))
	}

	f := convergenceFigures{Edges: len(sites), AddFirstPair: Millis(first).Summarize(), AddAllPairs: Millis(all).Summarize(),
		Delete: Millis(del).Summarize(), TargetMs: ms(convergenceTarget), ProbeIntervalMs: ms(probeInterval)}
	var md strings.Builder
	fmt.Fprintf(&md, "Three edges of the walkthrough (real `cframe-controller` and `cframe-edge` processes), %d rounds; each round deletes one edge through the API and adds it back, moving to the next edge every round. Times run from the API call returning. Adds end at the first ICMP echo answered between the hosts behind the edges (a raw-socket prober sending every %s); deletes end when no other edge holds a `proto 207` route to the deleted edge's networks (polled over netlink every %s).\n\n",
		reps, probeInterval, probeInterval)
	md.WriteString("| figure | median | p99 | spread | target (p99) |\n|---|---|---|---|---|\n")
	rows := []struct {
		name string
		s    Summary
	}{
		{"add → first new pair pings", f.AddFirstPair},
		{"add → every new pair pings", f.AddAllPairs},
		{"delete → routes gone on every other edge", f.Delete},
	}
	var verdicts []string
	for _, r := range rows {
		fmt.Fprintf(&md, "| %s | %.1f ms | %.1f ms | %.2f | < %.0f ms |\n", r.name, r.s.Median, r.s.P99, r.s.Spread, f.TargetMs)
		verdicts = append(verdicts, fmt.Sprintf("convergence, %s: p99 %.1f ms %s the %.0f ms target for 3 edges",
			r.name, r.s.P99, metOrMissed(r.s.P99 < f.TargetMs), f.TargetMs))
	}
	return Section{Title: "Convergence (3 edges)", Markdown: md.String(), Verdicts: verdicts, Figures: f}, nil
}

// result is when something was observed, or why it was not.
type result struct {
	at  time.Time
	err error
}

// latest waits for every result and returns the latest time.
func latest(chs []chan result) (time.Time, error) {
	var last time.Time
	var firstErr error
	for _, ch := range chs {
		r := <-ch
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
		last = maxTime(last, r.at)
	}
	return last, firstErr
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// settle pauses between API calls for a random 150-350 ms, so that the
// rounds do not fall into step with the agents' periodic work.
func settle() { time.Sleep(150*time.Millisecond + rand.N(200*time.Millisecond)) }

// routesGone polls the main table of namespace ns until no cframe route
// (protocol netcfg.RouteProtocol) to any of cidrs remains, and returns when
// that was first seen.
func routesGone(ns string, cidrs []netip.Prefix, timeout time.Duration) (time.Time, error) {
	var at time.Time
	err := topo.Do(ns, func() error {
		deadline := time.Now().Add(timeout)
		filter := &netlink.Route{Protocol: netcfg.RouteProtocol}
		for {
			rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				return err
			}
			now := time.Now()
			left := 0
			for _, r := range rs {
				if r.Dst == nil {
					continue
				}
				if p, ok := netip.AddrFromSlice(r.Dst.IP); ok {
					ones, _ := r.Dst.Mask.Size()
					for _, c := range cidrs {
						if netip.PrefixFrom(p.Unmap(), ones) == c {
							left++
						}
					}
				}
			}
			if left == 0 {
				at = now
				return nil
			}
			if now.After(deadline) {
				return fmt.Errorf("%s still has %d routes to %v after %s", ns, left, cidrs, timeout)
			}
			time.Sleep(probeInterval)
		}
	})
	return at, err
}

// ms converts a duration into milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// metOrMissed words a target verdict.
func metOrMissed(ok bool) string {
	if ok {
		return "meets"
	}
	return "misses"
}
