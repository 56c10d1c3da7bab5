package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
	"github.com/cframe/cframe/scripts/cluster"
)

// churnEdge is the spec of churn edge i of writer w at version v: a
// network behind no agent, with an underlay address of its own per
// version (so that every FDB entry names its edge and version).
func churnEdge(w, i, v int) edgeset.Spec {
	k := (w*25+i)*8 + v%8
	return edgeset.Spec{Name: fmt.Sprintf("churn-%d-%d", w, i),
		HostAddr: fmt.Sprintf("198.18.%d.%d:58423", k/250, 1+k%250),
		CIDR:     fmt.Sprintf("10.%d.%d.0/24", 100+w, i*8+v%8)}
}

// storm is writers adding, updating and deleting churn edges through the
// given controllers (writer w through cts[w%len(cts)]), with malformed
// bodies sent beside them; final is the churn edges that exist when it
// is over, by name.
type storm struct {
	mu        sync.Mutex
	final     map[string]edgeset.Spec
	ops       int
	malformed int
	errs      []string
}

func (s *storm) fail(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, fmt.Sprintf(format, a...))
}

// run makes opsPerWriter changes per writer, and calls halfway once when
// half of all changes are made.
func (s *storm) run(ctx context.Context, cts []*cluster.Controller, writers, opsPerWriter int, halfway func()) {
	var wg sync.WaitGroup
	var once sync.Once
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ct := cts[w%len(cts)]
			rng := rand.New(rand.NewPCG(uint64(w), 17))
			version := map[int]int{} // churn edge i -> its version while it exists
			for op := range opsPerWriter {
				if op%10 == 9 {
					s.sendMalformed(ctx, ct, op)
				}
				i := rng.IntN(25)
				v, exists := version[i]
				var err error
				switch {
				case !exists || rng.IntN(2) == 0: // add, or update
					spec := churnEdge(w, i, v+1)
					if _, err = ct.API.Add(ctx, spec); err == nil {
						version[i] = v + 1
						s.mu.Lock()
						s.final[spec.Name] = spec
						s.mu.Unlock()
					}
				default:
					name := churnEdge(w, i, v).Name
					if _, err = ct.API.Del(ctx, name); err == nil {
						delete(version, i)
						s.mu.Lock()
						delete(s.final, name)
						s.mu.Unlock()
					}
				}
				if err != nil {
					s.fail("writer %d op %d through %s: %v", w, op, ct.Name, err)
				}
				s.mu.Lock()
				s.ops++
				half := s.ops == writers*opsPerWriter/2
				s.mu.Unlock()
				if half {
					once.Do(halfway)
				}
			}
		}()
	}
	wg.Wait()
}

// sendMalformed posts a body the API must refuse with a 400 and a JSON
// message, changing nothing.
func (s *storm) sendMalformed(ctx context.Context, ct *cluster.Controller, op int) {
	bodies := []string{`{"name": "churn-bad", "hostaddr": `, `{"name": "churn-bad", "hostaddr": "198.18.250.1:58423", "cidr": "10.300.0.0/24"}`, `[1, 2]`}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ct.API.Base+api.PathAdd, strings.NewReader(bodies[op%len(bodies)]))
	if err != nil {
		s.fail("malformed request: %v", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ct.API.HTTP.Do(req)
	if err != nil {
		s.fail("malformed body through %s: %v", ct.Name, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		s.fail("malformed body through %s: %s %s, want 400 with a JSON message", ct.Name, resp.Status, b)
	}
	s.mu.Lock()
	s.malformed++
	s.mu.Unlock()
}

// churnState is what a kernel holds of the churn edges: the networks it
// routes and the underlay addresses its tunnel's FDB sends to.
func (f *haFixture) churnState(ns string) (routes, fdb []string, err error) {
	out, err := f.net.Exec(ns, "ip", "route", "show", "proto", "207")
	if err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if dst, _, _ := strings.Cut(strings.TrimSpace(l), " "); strings.HasPrefix(dst, "10.10") {
			routes = append(routes, dst)
		}
	}
	if out, err = f.net.Exec(ns, "bridge", "fdb", "show", "dev", "cframe0"); err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if _, dst, ok := strings.Cut(l, " dst "); ok && strings.HasPrefix(dst, "198.18.") {
			dst, _, _ = strings.Cut(dst, " ")
			fdb = append(fdb, dst)
		}
	}
	sort.Strings(routes)
	sort.Strings(fdb)
	return routes, fdb, nil
}

// exact waits until every agent's kernel holds exactly the final churn
// edges, and returns how long after the call the last kernel change that
// led there was made.
func (f *haFixture) exact(final map[string]edgeset.Spec, timeout time.Duration) (time.Duration, error) {
	var routes, fdb []string
	for _, s := range final {
		routes = append(routes, s.CIDR)
		host, _, _ := strings.Cut(s.HostAddr, ":")
		fdb = append(fdb, host)
	}
	sort.Strings(routes)
	sort.Strings(fdb)
	began := time.Now()
	err := topo.Eventually(timeout, func() error {
		for name, e := range f.edges {
			r, d, err := f.churnState(e.Site.Edge)
			if err != nil {
				return err
			}
			if !slices.Equal(r, routes) {
				return fmt.Errorf("%s routes %d churn networks, want %d: extra %v, missing %v", name, len(r), len(routes), minus(r, routes), minus(routes, r))
			}
			if !slices.Equal(d, fdb) {
				return fmt.Errorf("%s has %d churn FDB entries, want %d: extra %v, missing %v", name, len(d), len(fdb), minus(d, fdb), minus(fdb, d))
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// The polls only bound it from above, each a few commands per edge
	// late on a loaded machine: the agents' logs say when their kernels
	// last changed, and that is when the set was exact.
	passed := time.Now()
	last := began
	for name, e := range f.edges {
		b, err := os.ReadFile(e.Log)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			stamp, ok := strings.CutPrefix(line, "time=")
			if !ok || !strings.Contains(line, `msg="kernel change"`) {
				continue
			}
			stamp, _, _ = strings.Cut(stamp, " ")
			at, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil {
				return 0, fmt.Errorf("%s's log: %v", name, err)
			}
			if at.After(last) && !at.After(passed) {
				last = at
			}
		}
	}
	return last.Sub(began), nil
}

// minus is a without the elements of b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// shownOffline checks that controller ct shows edge name offline in its
// edge list, its topology and its metrics.
func shownOffline(ctx context.Context, ct *cluster.Controller, name string) error {
	if on, _, err := edgeOnline(ctx, ct, name); err != nil || on {
		return fmt.Errorf("%s lists %s online (%v)", ct.Name, name, err)
	}
	tp, err := ct.API.Topology(ctx)
	if err != nil {
		return err
	}
	for _, e := range tp.Edges {
		if e.Name == name && e.State != api.StateOffline {
			return fmt.Errorf("%s's topology shows %s %s", ct.Name, name, e.State)
		}
	}
	s, err := metricstest.Get(ct.API.HTTP, ct.API.Base+"/metrics")
	if err != nil {
		return err
	}
	if v, ok := s.Value("cframe_controller_edge_online", "edge", name); !ok || v != 0 {
		return fmt.Errorf("%s's metrics: cframe_controller_edge_online{edge=%q} = %v (present %v), want 0", ct.Name, name, v, ok)
	}
	return nil
}

// edgeOnline is whether controller ct lists edge name as online, and its
// applied revision.
func edgeOnline(ctx context.Context, ct *cluster.Controller, name string) (bool, uint64, error) {
	list, err := ct.API.List(ctx)
	if err != nil {
		return false, 0, err
	}
	for _, e := range list {
		if e.Name == name {
			return e.State == api.StateOnline, e.AppliedRevision, nil
		}
	}
	return false, 0, fmt.Errorf("%s does not list %s", ct.Name, name)
}

// TestChurn is the storm of issue 17: traffic between the real VPCs
// (through an HA site) while four writers add, update and delete hundreds
// of edges through two controllers of a cluster, and hk-1's agent is
// killed with -9 halfway and restarted. Afterwards no agent has exited,
// every agent has applied the controllers' revision, every kernel holds
// exactly the final edges within a second, and no packet between the VPCs
// was lost.
func TestChurn(t *testing.T) {
	f := newHAFixtureWith(t, true)
	c1, c2 := f.c.Controllers[0], f.c.Controllers[1]
	sz, hk, gz := f.topo.Sites()[0], f.topo.Sites()[1], f.topo.Sites()[2]
	if err := topo.Eventually(30*time.Second, func() error {
		for _, name := range []string{"sz-1", "sz-2", "hk-1", "gz-3"} {
			if on, _, err := edgeOnline(f.ctx, c1, name); err != nil || !on {
				return fmt.Errorf("%s not online (%v)", name, err)
			}
		}
		// VPC1's host reaches the others through the VIP, held by the active gateway.
		if err := f.net.Ping(sz.Host, hk.HostAddr, 1, time.Second); err != nil {
			return err
		}
		return f.net.Ping(gz.Host, sz.HostAddr, 1, time.Second)
	}); err != nil {
		t.Fatal(err)
	}

	echo, err := topo.StartEchoStream(sz.Host, hk.HostAddr, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := startStream(gz.Host, sz.Host, sz.HostAddr)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := startUDP(hk.Host, gz.Host, gz.HostAddr, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}

	// Halfway, hk-1's agent dies (kill -9): the controllers show it offline
	// within two heartbeats (at once: its connection closed), and it is restarted as
	// its unit would.
	victim := f.edges["hk-1"]
	var offlineAfter time.Duration
	var offlineErr error
	halfway := func() {
		killed := time.Now()
		victim.Proc().Kill()
		offlineErr = topo.Eventually(2*bus.HeartbeatInterval, func() error {
			for _, ct := range []*cluster.Controller{c1, c2} {
				if err := shownOffline(f.ctx, ct, victim.Name); err != nil {
					return err
				}
			}
			return nil
		})
		offlineAfter = time.Since(killed)
		if err := victim.Start(); err != nil {
			offlineErr = err
		}
	}
	s := &storm{final: map[string]edgeset.Spec{}}
	began := time.Now()
	s.run(f.ctx, []*cluster.Controller{c1, c2}, 4, 75, halfway)
	stormTook := time.Since(began)
	for _, e := range s.errs {
		t.Error(e)
	}
	if offlineErr != nil {
		t.Errorf("killed agent: %v", offlineErr)
	}

	// Every write returned: the kernels hold exactly the final set within
	// a second of the last one (polled for longer, to say how late they
	// are).
	took, err := f.exact(s.final, 10*time.Second)
	if err != nil {
		t.Errorf("10 s after the storm: %v", err)
	} else if took > time.Second {
		t.Errorf("the kernels held exactly the final set %s after the last write, want < 1s", took.Round(time.Millisecond))
	}
	// Both controllers agree on the revision, and every agent has applied it.
	var rev uint64
	if err := topo.Eventually(10*time.Second, func() error {
		t1, err := c1.API.Topology(f.ctx)
		if err != nil {
			return err
		}
		t2, err := c2.API.Topology(f.ctx)
		if err != nil {
			return err
		}
		if t1.Revision != t2.Revision {
			return fmt.Errorf("c1 at revision %d, c2 at %d", t1.Revision, t2.Revision)
		}
		rev = t1.Revision
		for name := range f.edges {
			if on, applied, err := edgeOnline(f.ctx, c1, name); err != nil || !on || applied != rev {
				return fmt.Errorf("%s: online %v, applied revision %d, want %d (%v)", name, on, applied, rev, err)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	for name, e := range f.edges {
		select {
		case <-e.Proc().Done():
			t.Errorf("%s's agent exited during the storm: %v", name, e.Proc().Wait())
		default:
		}
	}

	st, err := echo.Stop()
	if err != nil || st.Sent == 0 || st.Received != st.Sent {
		t.Errorf("ping every 20 ms VPC1 -> VPC2: %s (%v)", st, err)
	}
	n, gap, err := tcp.finish()
	if err != nil || gap > time.Second {
		t.Errorf("TCP VPC3 -> VPC1: %d bytes, longest pause %s (%v)", n, gap, err)
	}
	us, ur := udp.finish()
	if us == 0 || us != ur {
		t.Errorf("UDP VPC2 -> VPC3: %d datagrams sent, %d received", us, ur)
	}
	t.Logf("storm: %d changes and %d malformed bodies through c1 and c2 in %s, final revision %d with %d churn edges; kernels exact %s after the last write; killed agent offline after %s; ping %s, TCP %d bytes (longest pause %s), UDP %d/%d",
		s.ops, s.malformed, stormTook.Round(time.Millisecond), rev, len(s.final), took.Round(time.Millisecond), offlineAfter.Round(time.Millisecond), st, n, gap.Round(time.Millisecond), ur, us)
}
