package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/cluster"
)

// ctrlFixture is the walkthrough's mesh run by three controllers, one on
// each VPC's edge (c1 on sz-1's, where the walkthrough puts its controller,
// c2 on hk-1's, c3 on gz-3's), forming one cluster; every agent lists all
// three.
type ctrlFixture struct {
	*fixture
	ctrl map[string]*cluster.Controller
	// acked are the probe edges whose add was acknowledged (200).
	mu    sync.Mutex
	acked []string
	probe int
}

func newCtrlFixture(t *testing.T) *ctrlFixture {
	topo.SkipUnlessRoot(t, "bridge", "iptables", "ping")
	n, err := topo.New(topo.UniquePrefix("cfc"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tp, err := topo.Build(n, topo.Walkthrough()...)
	if err != nil {
		t.Fatal(err)
	}
	dir := runDir(t)
	sites := tp.Sites()
	c, err := cluster.Start(tp, sites[0], cluster.Options{Bin: bin, Dir: dir, Peers: sites[1:]})
	if err != nil {
		t.Fatal(err)
	}
	f := &ctrlFixture{
		fixture: &fixture{t: t, net: n, topo: tp, c: c, edges: map[string]*cluster.Edge{}, ctx: context.Background()},
		ctrl:    map[string]*cluster.Controller{},
	}
	for _, ct := range c.Controllers {
		f.ctrl[ct.Name] = ct
	}
	t.Cleanup(func() {
		if t.Failed() {
			f.dumpLogs(dir)
		}
	})
	for i, s := range sites {
		f.startEdge(cluster.WalkthroughNames[i], s)
	}
	return f
}

// live are the controllers whose process runs.
func (f *ctrlFixture) live() []*cluster.Controller {
	var out []*cluster.Controller
	for _, ct := range f.c.Controllers {
		select {
		case <-ct.Proc().Done():
		default:
			out = append(out, ct)
		}
	}
	return out
}

// sameView waits until every given controller lists the same edges (and
// their states) and the same topology revision, and returns that list.
func (f *ctrlFixture) sameView(timeout time.Duration, cts ...*cluster.Controller) []api.EdgeView {
	f.t.Helper()
	var first []api.EdgeView
	err := topo.Eventually(timeout, func() error {
		var rev uint64
		for i, ct := range cts {
			list, err := ct.API.List(f.ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", ct.Name, err)
			}
			tp, err := ct.API.Topology(f.ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", ct.Name, err)
			}
			for j := range list {
				list[j].LastSeen = nil // the time each controller heard the heartbeat
			}
			if i == 0 {
				first, rev = list, tp.Revision
				continue
			}
			if !reflect.DeepEqual(list, first) || tp.Revision != rev {
				return fmt.Errorf("%s lists %+v at %d, %s lists %+v at %d", ct.Name, list, tp.Revision, cts[0].Name, first, rev)
			}
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return first
}

// allApplied waits until every agent is online and has applied rev, as the
// controller ct lists them.
func (f *ctrlFixture) allApplied(ct *cluster.Controller, rev uint64) {
	f.t.Helper()
	err := topo.Eventually(10*time.Second, func() error {
		list, err := ct.API.List(f.ctx)
		if err != nil {
			return err
		}
		for _, e := range list {
			if f.edges[e.Name] != nil && (e.Status != 1 || e.AppliedRevision < rev) {
				return fmt.Errorf("%s: %+v, want online at revision %d", e.Name, e, rev)
			}
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// addProbe adds the next probe edge (a network behind no agent) through
// ct, and returns its network; an acknowledged add is remembered, to be
// found again later.
func (f *ctrlFixture) addProbe(ctx context.Context, ct *cluster.Controller) (string, api.ChangeResult, error) {
	f.mu.Lock()
	f.probe++
	i := f.probe
	f.mu.Unlock()
	name, cidr := fmt.Sprintf("probe-%d", i), fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)
	res, err := ct.API.Add(ctx, edgeset.Spec{Name: name, HostAddr: fmt.Sprintf("198.18.%d.%d:58423", 100+i/200, 1+i%200), CIDR: cidr})
	if err == nil {
		f.mu.Lock()
		f.acked = append(f.acked, name)
		f.mu.Unlock()
	}
	return cidr, res, err
}

// routed waits until every agent's kernel routes cidr, and returns when.
func (f *ctrlFixture) routed(cidr string, timeout time.Duration) (time.Time, error) {
	err := topo.Eventually(timeout, func() error {
		for _, e := range f.edges {
			out, err := f.net.Exec(e.Site.Edge, "ip", "route", "show", cidr, "proto", "207")
			if err != nil {
				return err
			}
			if !strings.Contains(out, cidr[:strings.Index(cidr, "/")]) {
				return fmt.Errorf("%s has no route to %s", e.Name, cidr)
			}
		}
		return nil
	})
	return time.Now(), err
}

// connections reads each agent's log for the controller it is connected to
// now, and since when.
func (f *ctrlFixture) connections() map[string]connection {
	out := map[string]connection{}
	for name, e := range f.edges {
		if c, ok := lastConnection(e.Log); ok {
			out[name] = c
		}
	}
	return out
}

type connection struct {
	server string
	at     time.Time
}

// lastConnection finds the agent log's last "(re)connected to controller" line.
func lastConnection(log string) (connection, bool) {
	fh, err := os.Open(log)
	if err != nil {
		return connection{}, false
	}
	defer fh.Close()
	var last connection
	found := false
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, `connected to controller"`) {
			continue
		}
		var c connection
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "time="); ok {
				c.at, _ = time.Parse(time.RFC3339Nano, v)
			}
			if v, ok := strings.CutPrefix(f, "server="); ok {
				c.server = v
			}
		}
		last, found = c, true
	}
	return last, found
}

// reader polls the edge list and topology of controllers until stopped,
// counting failed reads.
type reader struct {
	stop   chan struct{}
	done   chan struct{}
	reads  atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
}

func (f *ctrlFixture) startReader(cts ...*cluster.Controller) *reader {
	r := &reader{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			for _, ct := range cts {
				ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
				_, err := ct.API.List(ctx)
				if err == nil {
					_, err = ct.API.Topology(ctx)
				}
				cancel()
				r.reads.Add(1)
				if err != nil {
					r.failed.Add(1)
					r.mu.Lock()
					r.errs = append(r.errs, fmt.Sprintf("%s: %v", ct.Name, err))
					r.mu.Unlock()
				}
			}
			select {
			case <-r.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return r
}

func (r *reader) finish() (reads, failed int64, errs []string) {
	close(r.stop)
	<-r.done
	return r.reads.Load(), r.failed.Load(), r.errs
}

// traffic is ICMP, TCP and UDP between the VPCs, running across a test.
type traffic struct {
	ping   *topo.Ping
	stream *stream
	udp    *udpFlow
}

func (f *ctrlFixture) startTraffic(d time.Duration) *traffic {
	f.t.Helper()
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	tr := &traffic{ping: topo.StartPing(sz.Host, hk.HostAddr, int(d/(100*time.Millisecond)), 100*time.Millisecond)}
	var err error
	if tr.stream, err = startStream(gz.Host, sz.Host, sz.HostAddr); err != nil {
		f.t.Fatal(err)
	}
	if tr.udp, err = startUDP(hk.Host, gz.Host, gz.HostAddr, 20*time.Millisecond); err != nil {
		f.t.Fatal(err)
	}
	return tr
}

// check waits for the ping to end and stops the streams: nothing may be lost.
func (tr *traffic) check(t *testing.T) {
	t.Helper()
	sent, received, err := tr.ping.Wait()
	if err != nil || sent != received || sent == 0 {
		t.Errorf("ping VPC1 -> VPC2: %d sent, %d received (%v)", sent, received, err)
	}
	n, gap, err := tr.stream.finish()
	if err != nil || gap > time.Second {
		t.Errorf("TCP VPC3 -> VPC1: %d bytes, longest pause %s (%v)", n, gap, err)
	}
	us, ur := tr.udp.finish()
	if us == 0 || us != ur {
		t.Errorf("UDP VPC2 -> VPC3: %d datagrams sent, %d received", us, ur)
	}
	t.Logf("traffic: ping %d/%d, TCP %d bytes (longest pause %s), UDP %d/%d", received, sent, n, gap.Round(time.Millisecond), ur, us)
}

// leaders asks a controller which controllers lead JetStream's metadata
// and the store.
func (f *ctrlFixture) leaders(ct *cluster.Controller) (meta, store string) {
	f.t.Helper()
	var cl api.Cluster
	err := topo.Eventually(10*time.Second, func() (err error) {
		if cl, err = ct.API.Cluster(f.ctx); err == nil && (cl.MetaLeader == "" || cl.StoreLeader == "") {
			err = fmt.Errorf("no leaders yet: %+v", cl)
		}
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return cl.MetaLeader, cl.StoreLeader
}

// restartEdge restarts an agent with another controller list, and waits
// until it is connected.
func (f *ctrlFixture) restartEdge(name string, controllers ...*cluster.Controller) {
	f.t.Helper()
	e := f.edges[name]
	e.Proc().Stop(5 * time.Second)
	b, err := os.ReadFile(e.Config)
	if err != nil {
		f.t.Fatal(err)
	}
	var addrs []string
	for _, ct := range controllers {
		addrs = append(addrs, fmt.Sprintf("%q", ct.BusAddr()))
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "controller=") {
			l = "controller=[" + strings.Join(addrs, ", ") + "]"
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(e.Config, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		f.t.Fatal(err)
	}
	before := time.Now().Truncate(time.Millisecond) // the log's precision
	if err := e.Start(); err != nil {
		f.t.Fatal(err)
	}
	if err := topo.Eventually(10*time.Second, func() error {
		if c, ok := lastConnection(e.Log); !ok || c.at.Before(before) {
			return fmt.Errorf("%s not connected since its restart", name)
		}
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
}

// TestControllerCluster runs the walkthrough with three controllers and
// takes them down: one at a time (the store's leader, then the metadata
// leader) with kill -9, then two at once.
func TestControllerCluster(t *testing.T) {
	f := newCtrlFixture(t)
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	all := []*topo.Site{sz, hk, gz}
	c1, c2, c3 := f.ctrl["c1"], f.ctrl["c2"], f.ctrl["c3"]

	t.Run("each controller serves the whole API and all list the same", func(t *testing.T) {
		for i, ct := range []*cluster.Controller{c1, c2, c3} {
			if _, err := ct.API.Add(f.ctx, f.edges[cluster.WalkthroughNames[i]].Spec()); err != nil {
				t.Fatalf("add %s through %s: %v", cluster.WalkthroughNames[i], ct.Name, err)
			}
		}
		f.converge("walkthrough through three controllers", time.Now(), all...)
		tp, err := c2.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		f.allApplied(c2, tp.Revision)
		list := f.sameView(10*time.Second, c1, c2, c3)
		for _, e := range list {
			if e.State != api.StateOnline || e.Key == "" {
				t.Fatalf("%s = %+v, want online with its key pinned", e.Name, e)
			}
		}
	})

	t.Run("50 concurrent conflicting adds over three controllers store exactly one", func(t *testing.T) {
		var wg sync.WaitGroup
		codes := make([]int, 50)
		for i := range codes {
			wg.Go(func() {
				_, err := f.c.Controllers[i%3].API.Add(f.ctx, edgeset.Spec{Name: fmt.Sprintf("race-%d", i),
					HostAddr: fmt.Sprintf("198.18.50.%d:58423", i+1), CIDR: []string{"10.50.0.0/16", "10.50.0.0/20", "10.50.7.0/24"}[i%3]})
				var se *api.StatusError
				switch {
				case err == nil:
					codes[i] = http.StatusOK
				case errors.As(err, &se):
					codes[i] = se.Code
				}
			})
		}
		wg.Wait()
		var won []string
		for i, c := range codes {
			switch c {
			case http.StatusOK:
				won = append(won, fmt.Sprintf("race-%d", i))
			case http.StatusConflict:
			default:
				t.Errorf("add race-%d: HTTP %d", i, c)
			}
		}
		if len(won) != 1 {
			t.Fatalf("accepted %v, want exactly one", won)
		}
		list := f.sameView(10*time.Second, c1, c2, c3)
		var stored []string
		for _, e := range list {
			if strings.HasPrefix(e.Name, "race-") {
				stored = append(stored, e.Name)
			}
		}
		if !slices.Equal(stored, won) {
			t.Fatalf("stored %v, accepted %v", stored, won)
		}
		if _, err := c3.API.Del(f.ctx, won[0]); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cframectl uses the first controller that answers", func(t *testing.T) {
		out, err := f.c.Ctl("--api", fmt.Sprintf("http://127.0.0.1:1,http://127.0.0.1:%d", cluster.APIPort), "cluster")
		if flat := strings.Join(strings.Fields(out), " "); err != nil || !strings.Contains(flat, "reachable 3 of 3: c1, c2, c3 quorum yes") {
			t.Fatalf("cframectl cluster: %v\n%s", err, out)
		}
	})

	// killOne kills the controller victim with SIGKILL while traffic runs,
	// reads are made on the survivors and writes go on through one of them,
	// and checks the cluster's promises; then it restarts the victim.
	killOne := func(t *testing.T, victim *cluster.Controller) {
		var survivors []*cluster.Controller
		for _, ct := range f.c.Controllers {
			if ct != victim {
				survivors = append(survivors, ct)
			}
		}
		writer := survivors[0]
		// hk-1 knows only the victim: it finds the survivors through the
		// servers the cluster announced to it.
		f.restartEdge("hk-1", victim)
		conns := f.connections()
		var onVictim []string
		for name, c := range conns {
			if c.server == victim.Name {
				onVictim = append(onVictim, name)
			}
		}
		if !slices.Contains(onVictim, "hk-1") {
			t.Fatalf("hk-1 is not on %s: %+v", victim.Name, conns)
		}
		// The time a write takes to reach every agent with all three up.
		cidr, _, err := f.addProbe(f.ctx, writer)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if _, err := f.routed(cidr, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		before := time.Since(t0)

		tr := f.startTraffic(8 * time.Second)
		rd := f.startReader(survivors...)
		// Writes go on, one every 100 ms at most, through a survivor.
		stopWrites := make(chan struct{})
		type ack struct {
			at  time.Time
			err error
		}
		acks := make(chan ack, 1000)
		go func() {
			defer close(acks)
			for {
				select {
				case <-stopWrites:
					return
				default:
				}
				next := time.After(100 * time.Millisecond)
				ctx, cancel := context.WithTimeout(f.ctx, 15*time.Second)
				_, _, err := f.addProbe(ctx, writer)
				cancel()
				acks <- ack{time.Now(), err}
				<-next
			}
		}()
		// Writes are flowing: kill.
		if a := <-acks; a.err != nil {
			t.Fatalf("write before the kill: %v", a.err)
		}
		killed := time.Now()
		victim.Kill()
		restarted := false
		defer func() {
			// A check failed on the way: the next subtests need all three.
			if !restarted {
				if err := victim.Start(); err != nil {
					t.Errorf("restart %s: %v", victim.Name, err)
				}
			}
		}()

		// Writes are accepted again within 10 s.
		var firstWrite time.Duration
		var refused []string
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case a := <-acks:
				if a.at.Before(killed) {
					continue
				}
				if a.err == nil {
					firstWrite = a.at.Sub(killed)
					break wait
				}
				refused = append(refused, a.err.Error())
			case <-deadline:
				t.Fatalf("no write accepted within 10s of killing %s: %v", victim.Name, refused)
			}
		}
		t.Logf("kill -9 %s: first accepted write after %s (%d refused meanwhile)", victim.Name, firstWrite.Round(time.Millisecond), len(refused))

		// The agents that were on the victim are on a survivor within 1 s.
		err = topo.Eventually(5*time.Second, func() error {
			now := f.connections()
			for _, name := range onVictim {
				if c := now[name]; c.server == victim.Name || c.at.Before(killed) {
					return fmt.Errorf("%s still on %s", name, victim.Name)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range onVictim {
			c := f.connections()[name]
			moved := c.at.Sub(killed)
			t.Logf("%s moved from %s to %s after %s", name, victim.Name, c.server, moved.Round(time.Millisecond))
			if moved > time.Second {
				t.Errorf("%s took %s to reach a survivor", name, moved)
			}
		}

		close(stopWrites)
		for range acks { // until the writer has stopped
		}
		// A write after the loss reaches every agent as fast as before it.
		cidr, _, err = f.addProbe(f.ctx, survivors[1])
		if err != nil {
			t.Fatal(err)
		}
		t0 = time.Now()
		if _, err := f.routed(cidr, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		after := time.Since(t0)
		t.Logf("a write reaches every agent's kernel in %s with three controllers, %s after losing %s", before.Round(time.Millisecond), after.Round(time.Millisecond), victim.Name)
		if after > before+time.Second {
			t.Errorf("after the loss a write took %s to reach every agent, %s before", after, before)
		}

		tr.check(t)
		reads, failed, errs := rd.finish()
		if failed > 0 || reads == 0 {
			t.Errorf("%d of %d reads on the survivors failed: %v", failed, reads, errs)
		}

		// The victim rejoins and catches up; no acknowledged write is lost.
		restarted = true
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
		list := f.sameView(15*time.Second, c1, c2, c3)
		f.mu.Lock()
		acked := slices.Clone(f.acked)
		f.mu.Unlock()
		for _, name := range acked {
			if !slices.ContainsFunc(list, func(e api.EdgeView) bool { return e.Name == name }) {
				t.Errorf("acknowledged add of %s is lost", name)
			}
		}
		t.Logf("%d acknowledged writes, all on every controller after %s rejoined", len(acked), victim.Name)
	}

	t.Run("kill -9 the store's leader", func(t *testing.T) {
		_, store := f.leaders(c1)
		killOne(t, f.ctrl[store])
	})

	t.Run("kill -9 the metadata leader", func(t *testing.T) {
		meta, _ := f.leaders(c1)
		killOne(t, f.ctrl[meta])
	})

	t.Run("two of three down: writes refused at once, reads answered, traffic untouched; both rejoin", func(t *testing.T) {
		f.restartEdge("hk-1", c1, c2, c3)
		before := f.sameView(10*time.Second, c1, c2, c3)
		tr := f.startTraffic(6 * time.Second)
		c2.Kill()
		c3.Kill()
		err := topo.Eventually(5*time.Second, func() error {
			cl, err := c1.API.Cluster(f.ctx)
			if err == nil && cl.Quorum {
				err = fmt.Errorf("c1 still sees a quorum: %+v", cl)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, _, err = f.addProbe(f.ctx, c1)
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Msg, "no quorum") {
			t.Fatalf("write without a quorum: %v, want 503 saying there is no quorum", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the refusal took %s", d)
		}
		t.Logf("refused in %s: %s", time.Since(start).Round(time.Millisecond), se.Msg)
		out, err := f.c.Ctl("edge", "del", "--name", "gz-3")
		if err == nil || !strings.Contains(out, "no quorum") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("cframectl edge del without a quorum: %v, want one line saying there is no quorum:\n%s", err, out)
		}
		list, err := c1.API.List(f.ctx)
		if err != nil || !reflect.DeepEqual(definitions(list), definitions(before)) {
			t.Fatalf("reads without a quorum: %v\n%+v\nwant the last known\n%+v", err, list, before)
		}
		if _, err := c1.API.Topology(f.ctx); err != nil {
			t.Fatal(err)
		}

		t.Run("config validation: one-line errors at start", func(t *testing.T) {
			ctlValidation(t, f, c3)
		})

		tr.check(t)
		for _, ct := range []*cluster.Controller{c2, c3} {
			if err := ct.Start(); err != nil {
				t.Fatal(err)
			}
		}
		_, res, err := f.addProbe(f.ctx, c3)
		if err != nil {
			t.Fatalf("write after both came back: %v", err)
		}
		f.sameView(15*time.Second, c1, c2, c3)
		f.allApplied(c2, res.Revision)
		if err := f.reachable(all...); err != nil {
			t.Fatal(err)
		}
	})
}

// definitions are the edges of a list as added (without their status).
func definitions(list []api.EdgeView) []string {
	var out []string
	for _, e := range list {
		out = append(out, fmt.Sprintf("%s %s %s %v %d %s", e.Name, e.HostAddr, e.CIDR, e.ExtraCIDRs, e.Revision, e.Key))
	}
	return out
}

// ctlValidation starts cframe-controller in site's namespace (where ct is
// down) with broken configs: each stops at once with one line naming the
// problem — a duplicate server name too, found on contact with the
// controller that has it.
func ctlValidation(t *testing.T, f *ctrlFixture, ct *cluster.Controller) {
	good, err := os.ReadFile(ct.Config)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	peers := func(p ...string) string { return `cluster_peers = ["` + strings.Join(p, `", "`) + `"]` }
	own := fmt.Sprintf("%s:%d", ct.Site.Underlay(), cluster.ClusterPort)
	other := fmt.Sprintf("%s:%d", f.c.Controllers[0].Site.Underlay(), cluster.ClusterPort)
	tests := []struct {
		name, change, want string
		config             bool // found in the file alone
	}{
		{"unknown key", "cluster_port = 58424", "unknown key cluster_port", true},
		{"a cluster of two", peers(own, other), "cluster_peers lists 2 controller(s): a cluster needs at least 3", true},
		{"the peers lack this controller", peers(other, "192.0.2.99:58424", "198.51.100.99:58424"), "does not contain this controller", true},
		{"a duplicate server name", `server_name = "c1"`, `server_name "c1" is already used by the controller at`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lines []string
			for _, l := range strings.Split(string(good), "\n") {
				key, _, _ := strings.Cut(tt.change, " ")
				if strings.HasPrefix(l, key+" ") || strings.HasPrefix(l, "data_dir") {
					continue
				}
				lines = append(lines, l)
			}
			lines = append(lines, tt.change, fmt.Sprintf("data_dir = %q", filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))))
			cfg := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".toml")
			if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(f.ctx, 20*time.Second)
			defer cancel()
			b, err := exec.CommandContext(ctx, "ip", "netns", "exec", ct.Site.Edge, filepath.Join(bin, "cframe-controller"), "-c", cfg).CombinedOutput()
			got := strings.Split(strings.TrimSpace(string(b)), "\n")
			last := got[len(got)-1]
			if ctx.Err() != nil || err == nil || !strings.HasPrefix(last, "cframe-controller: ") || !strings.Contains(last, tt.want) {
				t.Fatalf("cframe-controller with %s: %v, want exit 1 with a last line containing %q:\n%s", tt.change, err, tt.want, b)
			}
			// A configuration error stops it before it logs anything else.
			if tt.config && len(got) != 1 {
				t.Fatalf("cframe-controller with %s printed more than the error:\n%s", tt.change, b)
			}
			t.Logf("after %s: %s", time.Since(start).Round(time.Millisecond), last)
		})
	}
}
