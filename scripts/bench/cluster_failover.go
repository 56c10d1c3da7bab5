package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/cluster"
)

// The failover targets: writes accepted again within 10 s of losing
// a controller (aim 3 s), and the edges that were on it on a survivor
// within 1 s.
const (
	controllerWriteTarget = 10 * time.Second
	controllerWriteAim    = 3 * time.Second
	controllerMoveTarget  = time.Second
)

// controllerFailoverFigures are the cluster's failover times (milliseconds).
type controllerFailoverFigures struct {
	Edges int `json:"edges"`
	// Victims are the controllers killed, each the store's leader then.
	Victims []string `json:"victims"`
	// FirstWrite: kill -9 of the store's leader -> the first write
	// accepted through a survivor, writes made back to back from the kill.
	FirstWrite Summary `json:"first_write_ms"`
	// Moved: kill -9 -> the last edge that was on the killed controller
	// connected to a survivor; MovedEdges how many there were, per kill.
	Moved      Summary `json:"edges_moved_ms"`
	MovedEdges []int   `json:"moved_edges"`
	// Rejoin: restart of the killed controller -> its API answers at the
	// cluster's revision.
	Rejoin Summary `json:"rejoin_ms"`

	write, moved, rejoin []time.Duration
}

// measureControllerFailover kills the store's leader kills times, each time timing
// the first accepted write and the move of its edges, then restarts it.
func measureControllerFailover(o Options, c *cluster.Cluster, p *pool, spec edgeset.Spec, kills int) (*controllerFailoverFigures, error) {
	servers, _, err := p.conns()
	if err != nil {
		return nil, err
	}
	f := &controllerFailoverFigures{Edges: len(servers)}
	ctx := context.Background()
	for k := range kills {
		cl, err := c.API.Cluster(ctx)
		if err != nil {
			return nil, err
		}
		var victim *cluster.Controller
		var survivors []*cluster.Controller
		for _, ct := range c.Controllers {
			if ct.Name == cl.StoreLeader {
				victim = ct
			} else {
				survivors = append(survivors, ct)
			}
		}
		if victim == nil {
			return nil, fmt.Errorf("no store leader: %+v", cl)
		}
		servers, _, err := p.conns()
		if err != nil {
			return nil, err
		}
		var onVictim []int
		for i, name := range servers {
			if name == victim.Name {
				onVictim = append(onVictim, i)
			}
		}

		killed := time.Now()
		victim.Kill()
		for n := 0; ; n++ {
			spec.Comment = fmt.Sprintf("failover %d-%d", k, n)
			wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			_, err := survivors[0].API.Add(wctx, spec)
			cancel()
			if err == nil {
				break
			}
			if time.Since(killed) > time.Minute {
				return nil, fmt.Errorf("no write accepted a minute after killing %s: %w", victim.Name, err)
			}
		}
		write := time.Since(killed)
		var moved time.Duration
		err = waitUntil(30*time.Second, func() error {
			moved = 0
			_, reconnected, err := p.conns()
			if err != nil {
				return err
			}
			for _, i := range onVictim {
				at := reconnected[i]
				if at.Before(killed) {
					return fmt.Errorf("edge %d of %d on %s not reconnected", i, len(onVictim), victim.Name)
				}
				moved = max(moved, at.Sub(killed))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}

		restarted := time.Now()
		if err := victim.Start(); err != nil {
			return nil, fmt.Errorf("restart %s: %w", victim.Name, err)
		}
		if err := waitUntil(30*time.Second, func() error {
			a, err := victim.API.Cluster(ctx)
			if err != nil {
				return err
			}
			b, err := survivors[0].API.Cluster(ctx)
			if err != nil {
				return err
			}
			if a.Revision != b.Revision || !a.Quorum {
				return fmt.Errorf("%s at revision %d, %s at %d", victim.Name, a.Revision, survivors[0].Name, b.Revision)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		rejoin := time.Since(restarted)
		f.Victims = append(f.Victims, victim.Name)
		f.MovedEdges = append(f.MovedEdges, len(onVictim))
		f.write, f.moved, f.rejoin = append(f.write, write), append(f.moved, moved), append(f.rejoin, rejoin)
		o.Logf("kill -9 %s (store leader, %d edges on it): first write accepted after %s, its edges on a survivor after %s; rejoined in %s",
			victim.Name, len(onVictim), write.Round(time.Millisecond), moved.Round(time.Millisecond), rejoin.Round(time.Millisecond))
	}
	f.FirstWrite, f.Moved, f.Rejoin = Millis(f.write).Summarize(), Millis(f.moved).Summarize(), Millis(f.rejoin).Summarize()
	return f, nil
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *controllerFailoverFigures) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nFailover of the three-controller cluster with %d edges: kill -9 of the controller leading the store's replicas (whichever it is, %d times), while a survivor's API is asked to update an edge back to back from the moment of the kill; then the killed controller is restarted and rejoins. Raft timings: heartbeat %s, election timeout %s-%s (nats-server's defaults are 1 s and 4-9 s).\n\n",
		f.Edges, len(f.Victims), embedded.RaftHeartbeat, embedded.RaftElectionMin, embedded.RaftElectionMax)
	b.WriteString("| kill | controller killed | edges on it | first accepted write | its edges on a survivor | restart → rejoined at the cluster's revision |\n|---|---|---|---|---|---|\n")
	for i, v := range f.Victims {
		fmt.Fprintf(&b, "| %d | %s | %d | %.0f ms | %.0f ms | %.0f ms |\n", i+1, v, f.MovedEdges[i], f.FirstWrite.Values[i], f.Moved.Values[i], f.Rejoin.Values[i])
	}
	return b.String()
}

func (f *controllerFailoverFigures) verdict() string {
	worst := slices.Max(f.FirstWrite.Values)
	return fmt.Sprintf("kill -9 of the store's leader: writes accepted again after median %.0f ms, at worst %.0f ms (%s the %s target, %s the %s aim); the edges on it were on a survivor after median %.0f ms, at worst %.0f ms (%s the %s target)",
		f.FirstWrite.Median, worst, metOrMissed(worst <= ms(controllerWriteTarget)), controllerWriteTarget, metOrMissed(worst <= ms(controllerWriteAim)), controllerWriteAim,
		f.Moved.Median, slices.Max(f.Moved.Values), metOrMissed(slices.Max(f.Moved.Values) <= ms(controllerMoveTarget)), controllerMoveTarget)
}
