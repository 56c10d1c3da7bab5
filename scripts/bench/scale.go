package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
	"github.com/cframe/cframe/scripts/cluster"
)

// scaleFloorRatio is the aim: one change reaches every edge within
// twice the raw NATS floor (measured over TLS, as cframe's bus is).
const scaleFloorRatio = 2.0

// scaleFloorFrom is the mesh size from which the floor-ratio aim holds.
const scaleFloorFrom = 1000

// The targets at scaleTargetEdges edges on this 2-CPU machine.
const (
	scaleTargetEdges  = 10000
	scaleJoinTarget   = time.Minute
	scaleResyncTarget = 30 * time.Second
	scaleRSSTarget    = 500 << 20
)

// scaleFigures are the bus-scale part's numbers (times in milliseconds):
// each fleet size with one controller and with a cluster of three, and the
// cluster's failover.
type scaleFigures struct {
	Sizes    []scaleSize                `json:"sizes"`
	Failover *controllerFailoverFigures `json:"failover,omitempty"`
}

// scaleSize is one fleet size on one or three controllers.
type scaleSize struct {
	Edges       int `json:"edges"`
	Controllers int `json:"controllers"`
	// AddEdgesMs registers every edge through the API (one call each, 8
	// in parallel) before any of them connects.
	AddEdgesMs float64 `json:"add_edges_ms"`
	// ConnectedMs: every edge, all starting at once with a new key, is
	// connected (the controller pinned each key in its store);
	// FirstJoinMs: every edge holds its first snapshot.
	ConnectedMs float64 `json:"connected_ms"`
	FirstJoinMs float64 `json:"first_join_ms"`
	// JoinBytesPerEdge is what the controllers sent in snapshot replies
	// during the first join, per edge; SetJSONBytes the whole set as plain
	// JSON, SetZstdBytes as the controller sends it compressed.
	JoinBytesPerEdge float64 `json:"join_bytes_per_edge"`
	SetJSONBytes     int     `json:"set_json_bytes"`
	SetZstdBytes     float64 `json:"set_zstd_bytes"`
	// Delivery: API call made -> the change held by every edge, the edges
	// silent; Reported: the same with every edge answering with its status
	// at once, as agents do after applying a change; FloorTLS: bare publish
	// -> received by every bare subscriber, all connected over TLS as edges
	// are; Floor: the same without TLS.
	Delivery rounds `json:"delivery"`
	Reported rounds `json:"reported"`
	FloorTLS rounds `json:"floor_tls"`
	Floor    rounds `json:"floor"`
	// Controller process usage: idle with every edge heartbeating (the
	// per-change CPU is in the rounds).
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
	RSSBytes       int64   `json:"rss_bytes"`
	PeakRSSBytes   int64   `json:"peak_rss_bytes"`
	// StopMs: SIGTERM -> the old controller exited; RestartMs: SIGTERM ->
	// the restarted controller's API answers; ResyncMs: SIGTERM -> every
	// edge reconnected and confirmed the current revision (with three
	// controllers, the first one is restarted and its edges move).
	StopMs    float64 `json:"stop_ms"`
	RestartMs float64 `json:"restart_ms"`
	ResyncMs  float64 `json:"resync_ms"`
	// JoinSnapshotFailures and ResyncSnapshotFailures count snapshot
	// fetches that failed (bus.SnapshotTimeout) during the first join and
	// the resync; such an edge keeps what it holds and is confirmed by the
	// next hello instead.
	JoinSnapshotFailures   int64 `json:"join_snapshot_failures"`
	ResyncSnapshotFailures int64 `json:"resync_snapshot_failures"`
}

// rounds are the times of one kind of round.
type rounds struct {
	// All runs until every client has the message, First until the first.
	All   Summary `json:"all_ms"`
	First Summary `json:"first_ms"`
	// Arrivals pool every client's arrival time over all rounds.
	Arrivals Percentiles `json:"arrivals_ms"`
	// APICall is the API call's own duration (store write included) and
	// CPUMs the controller's CPU per change, idle rate subtracted (changes
	// only).
	APICall Summary `json:"api_call_ms"`
	CPUMs   float64 `json:"controller_cpu_ms"`

	all, first, arrivals, api []time.Duration
	cpu                       time.Duration
}

// add records one round: every client's time, and for a change the API
// call's duration and the controller's CPU.
func (r *rounds) add(arrivals []time.Duration, api, cpu time.Duration) {
	r.all, r.first = append(r.all, slices.Max(arrivals)), append(r.first, slices.Min(arrivals))
	r.arrivals = append(r.arrivals, arrivals...)
	if api > 0 {
		r.api = append(r.api, api)
	}
	r.cpu += cpu
}

// sum fills the exported figures.
func (r *rounds) sum() {
	r.All, r.First, r.APICall = Millis(r.all).Summarize(), Millis(r.first).Summarize(), Millis(r.api).Summarize()
	r.Arrivals = percentiles(Millis(r.arrivals))
	if n := len(r.all); n > 0 {
		r.CPUMs = ms(r.cpu) / float64(n)
	}
}

// Percentiles condenses many per-client times.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func percentiles(s Sample) Percentiles { return Percentiles{s.Median(), s.P99(), s.Quantile(1)} }

// busScale runs the real controller in its own namespace with N simulated
// edges: NATS clients in worker processes (simworker.go) that join exactly
// as agents do (TLS, key pair, join proof, pinned key), follow the edge set
// and heartbeat, with no kernel work — then the same with a cluster of
// three controllers, one in each of three namespaces, the edges spread over
// them. Beside both, the floor: a plain embedded NATS server (in a worker
// of its own) with N bare subscribers (in the workers) and one bare
// publish per round, once over TLS as cframe's bus is (TLS first, the
// join-secret proof checked) and once without. The cluster's first size
// also measures failover: kill -9 of the store's leader, and the time until
// a write is accepted again. (--quick runs the cluster for the first size
// only, with one kill.)
func busScale(o Options) (Section, error) {
	sizes, clustered, reps, idle, kills := []int{1000, 3000, 10000}, 3, 30, 4*time.Second, 3
	if o.Quick {
		sizes, clustered, reps, idle, kills = []int{100, 300}, 1, 10, 2*time.Second, 1
	}
	if len(o.Edges) > 0 {
		sizes, clustered = o.Edges, len(o.Edges)
	}
	n, err := topo.New(nsPrefix + "bus")
	if err != nil {
		return Section{}, err
	}
	defer n.Close()
	tp, err := topo.Build(n, topo.Walkthrough()...)
	if err != nil {
		return Section{}, err
	}
	// Each floor server runs in a process of its own (a worker): N
	// sockets each, beside the N of every other process.
	plain, err := startFloorProc(o, "")
	if err != nil {
		return Section{}, err
	}
	defer plain.p.close()
	tlsFloor, err := startFloorProc(o, "bench-floor-secret")
	if err != nil {
		return Section{}, err
	}
	defer tlsFloor.p.close()

	var figs scaleFigures
	var runErr error
sizes:
	for i, size := range sizes {
		for _, controllers := range []int{1, 3} {
			if controllers > 1 && i >= clustered {
				continue
			}
			failover := 0
			if controllers > 1 && i == 0 {
				failover = kills
			}
			s, fo, err := scaleRun(o, tp, plain, tlsFloor, size, reps, idle, controllers, failover)
			if err != nil {
				runErr = fmt.Errorf("%d edges, %d controller(s): %w", size, controllers, err)
				break sizes
			}
			figs.Sizes = append(figs.Sizes, s)
			if fo != nil {
				figs.Failover = fo
			}
		}
	}
	sec := scaleSection(figs, reps)
	return sec, runErr
}

// floor is a plain embedded NATS server for the floor rounds, in a worker
// process: its URL, and the join secret its certificate proves ("" for
// one without TLS).
type floor struct {
	p      *pool
	url    string
	secret string
}

// startFloorProc starts a floor server in a worker of its own.
func startFloorProc(o Options, secret string) (floor, error) {
	p, err := startPool(o, 1)
	if err != nil {
		return floor{}, err
	}
	ev, err := p.call(0, workerCmd{Op: "serve", Secret: secret, URL: filepath.Join(o.Work, "floor-tls")})
	if err != nil {
		p.close()
		return floor{}, err
	}
	return floor{p, ev.Err, secret}, nil
}

// publish has the floor server's own connection publish payload once.
func (f floor) publish(payload []byte) error {
	_, err := f.p.call(0, workerCmd{Op: "pub", Payload: payload})
	return err
}

// serveFloor starts a floor server, TLS-first with a certificate in dir
// proving secret when secret is set, and connects to it in-process.
func serveFloor(secret, dir string) (*server.Server, *nats.Conn, error) {
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true, MaxPayload: 8 << 20}
	if secret != "" {
		certs, err := embedded.LoadCerts(embedded.CertSource{Dir: dir, Proofs: []bus.Proof{{Secret: secret, Purpose: bus.PurposeController}}})
		if err != nil {
			return nil, nil, err
		}
		opts.TLSConfig, opts.TLSHandshakeFirst, opts.TLSTimeout = certs.ServerTLS(), true, bus.TLSTimeout.Seconds()
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, err
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, nil, errors.New("floor NATS server did not start")
	}
	pub, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		srv.Shutdown()
		return nil, nil, err
	}
	return srv, pub, nil
}

func scaleSection(f scaleFigures, reps int) Section {
	var md strings.Builder
	fmt.Fprintf(&md, "The real `cframe-controller` (embedded store, in its own namespace) with N simulated edges: NATS clients that join as agents do (TLS from the first byte with the controller's certificate checked against the join secret, own key pair, join proof, key pinned by the controller), follow the edge set (snapshot, then revision-linked deltas) and heartbeat every %s, without kernel work. Then the same with three controllers, one in each of three namespaces behind the underlay router, forming one cluster (TLS routes, the store replicated on all three, Raft heartbeat %s, election timeout %s-%s): the edges are given the three addresses and spread over them at random, and the change goes through one controller's API. The floor is measured in the same runs: a plain embedded NATS server without our authentication (in a process of its own), N bare subscribers and one bare publish of a message of the same size as a delta — once with every subscriber connected over TLS as edges are (TLS first, the certificate's proof checked; the reference for the ratios), once without TLS (what TLS itself costs NATS). Every edge and subscriber shares the machine's 2 CPUs with the controllers (and, on a shared machine, with whatever else runs there). %d rounds per size of each kind, interleaved: a change is an edge update through the API, timed from the call until every edge holds it — once with the edges silent (delivery alone, like for like with the floor), once with every edge publishing its status within %s of applying the change (a random delay, as agents do, so N status messages do not all hit the controller while it is still delivering).\n\n",
		bus.HeartbeatInterval, embedded.RaftHeartbeat, embedded.RaftElectionMin, embedded.RaftElectionMax, reps, bus.StatusJitter)
	md.WriteString("| edges | controllers | round | → all, median | p99 | spread | ratio to TLS floor, median / p99 | → first | API call | per-client arrival p50 / p99 / max | controllers' CPU per change |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range f.Sizes {
		for _, r := range []struct {
			name string
			r    rounds
		}{{"change, edges silent", s.Delivery}, {"change, edges report status", s.Reported}, {"floor: bare publish, TLS", s.FloorTLS}, {"floor: bare publish, no TLS", s.Floor}} {
			api, cpu := "-", "-"
			if r.r.APICall.N > 0 {
				api, cpu = fmt.Sprintf("%.1f ms", r.r.APICall.Median), fmt.Sprintf("%.1f ms", r.r.CPUMs)
			}
			fmt.Fprintf(&md, "| %d | %d | %s | %.1f ms | %.1f ms | %.2f | %s / %s | %.1f ms | %s | %.1f / %.1f / %.1f ms | %s |\n",
				s.Edges, s.Controllers, r.name, r.r.All.Median, r.r.All.P99, r.r.All.Spread, Ratio(r.r.All.Median, s.FloorTLS.All.Median), Ratio(r.r.All.P99, s.FloorTLS.All.P99),
				r.r.First.Median, api, r.r.Arrivals.P50, r.r.Arrivals.P99, r.r.Arrivals.Max, cpu)
		}
	}
	md.WriteString("\n| edges | controllers | register N edges (API) | first join of N new keys: connected / all hold the set | per edge | bytes sent per joining edge / the set as JSON / compressed | controller restart: stopped / API up | all N resynced | snapshot fetches failed (join / resync) | controllers' RSS (idle / peak) | controllers' CPU idle |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range f.Sizes {
		fmt.Fprintf(&md, "| %d | %d | %.0f ms | %.0f / %.0f ms | %.2f ms | %.0f / %d / %.0f B | %.0f / %.0f ms | %.0f ms | %d / %d | %.1f / %.1f MiB | %.1f %% |\n",
			s.Edges, s.Controllers, s.AddEdgesMs, s.ConnectedMs, s.FirstJoinMs, s.FirstJoinMs/float64(s.Edges), s.JoinBytesPerEdge, s.SetJSONBytes, s.SetZstdBytes,
			s.StopMs, s.RestartMs, s.ResyncMs, s.JoinSnapshotFailures, s.ResyncSnapshotFailures, mib(s.RSSBytes), mib(s.PeakRSSBytes), s.IdleCPUPercent)
	}
	fmt.Fprintf(&md, "\nThe simulated edges and the floor's subscribers run in %d-client worker processes (this benchmark's binary started again), apart from the controllers but on the same 2 CPUs. A simulated edge follows the set as the agent's bus.Follower does (snapshot asking for zstd and for the changes since its revision, revision-linked deltas, hellos, heartbeats every %s) but holds the revision only: the whole-set bodies a worker receives are decoded once per distinct body, being the same bytes for every edge at a revision (10,000 edges each holding 10,000 would not fit the machine). Restart and resync run from the SIGTERM to the (first) controller until every edge has confirmed the current revision after it (a snapshot fetched, or the next hello, every %s, announcing its revision); with three controllers the restarted one's edges move to the other two. Edges reconnect on their own, as agents do (bus.ReconnectDelay: a random wait in a window doubling from 1 s to %s), and fetch a snapshot on reconnecting (an edge whose fetch times out, after %s, keeps its set and is confirmed by a hello). The first join pins N new keys, one store write each (replicated on three controllers in the cluster). With three controllers, memory and CPU are the sum of the three processes.\n",
		perWorker, bus.HeartbeatInterval, bus.HelloInterval, bus.ReconnectSpread, bus.SnapshotTimeout)
	if fo := f.Failover; fo != nil {
		md.WriteString(fo.markdown())
	}
	var verdicts []string
	byKey := map[[2]int]scaleSize{}
	for _, s := range f.Sizes {
		byKey[[2]int{s.Edges, s.Controllers}] = s
	}
	for _, s := range f.Sizes {
		for _, r := range []struct {
			name string
			r    rounds
		}{{"edges silent", s.Delivery}, {"edges reporting status", s.Reported}} {
			line := fmt.Sprintf("%d edges, %d controller(s), %s: one change reaches all of them in p99 %.1f ms vs %.1f ms for the raw NATS floor over TLS (%s, %s is faster)",
				s.Edges, s.Controllers, r.name, r.r.All.P99, s.FloorTLS.All.P99, Ratio(r.r.All.P99, s.FloorTLS.All.P99),
				Better("cframe", r.r.All.P99, "the floor", s.FloorTLS.All.P99, false))
			if s.Edges >= scaleFloorFrom {
				line += fmt.Sprintf("; %s the %.0fx-floor target", metOrMissed(r.r.All.P99 <= scaleFloorRatio*s.FloorTLS.All.P99), scaleFloorRatio)
			} else {
				line += fmt.Sprintf(" (the %.0fx-floor target is set from %d edges)", scaleFloorRatio, scaleFloorFrom)
			}
			verdicts = append(verdicts, line)
		}
		if s.Controllers == 1 {
			verdicts = append(verdicts, fmt.Sprintf("%d edges, what TLS costs NATS itself: the bare publish reaches all subscribers in p99 %.1f ms over TLS vs %.1f ms without (%s, %s is faster)",
				s.Edges, s.FloorTLS.All.P99, s.Floor.All.P99, Ratio(s.FloorTLS.All.P99, s.Floor.All.P99), Better("TLS", s.FloorTLS.All.P99, "no TLS", s.Floor.All.P99, false)))
		}
		if one, ok := byKey[[2]int{s.Edges, 1}]; ok && s.Controllers > 1 {
			verdicts = append(verdicts,
				fmt.Sprintf("%d edges: one change reaches all of them through three controllers in p99 %.1f ms vs %.1f ms through one (%s, %s is faster)",
					s.Edges, s.Delivery.All.P99, one.Delivery.All.P99, Ratio(s.Delivery.All.P99, one.Delivery.All.P99),
					Better("the cluster", s.Delivery.All.P99, "one controller", one.Delivery.All.P99, false)),
				fmt.Sprintf("%d edges: an API write takes median %.1f ms with the store on three controllers (R3) vs %.1f ms on one (R1) (%s, %s is faster)",
					s.Edges, s.Delivery.APICall.Median, one.Delivery.APICall.Median, Ratio(s.Delivery.APICall.Median, one.Delivery.APICall.Median),
					Better("R3", s.Delivery.APICall.Median, "R1", one.Delivery.APICall.Median, false)))
		}
	}
	for _, s := range f.Sizes {
		line := fmt.Sprintf("%d edges, %d controller(s): all joined in %.1f s (%.2f ms per edge), each sent %.0f bytes of snapshot replies for a set of %d bytes of JSON, %.0f compressed (%.2fx the compressed set); restart → all resynced in %.1f s; RSS %.0f MiB",
			s.Edges, s.Controllers, s.FirstJoinMs/1000, s.FirstJoinMs/float64(s.Edges), s.JoinBytesPerEdge, s.SetJSONBytes, s.SetZstdBytes, s.JoinBytesPerEdge/max(s.SetZstdBytes, 1), s.ResyncMs/1000, mib(s.RSSBytes))
		if s.Edges >= scaleTargetEdges {
			line += fmt.Sprintf(" (targets at %d: join ≤ %s %s, resync ≤ %s %s, RSS ≤ %d MiB %s)", scaleTargetEdges,
				scaleJoinTarget, metOrMissed(s.FirstJoinMs <= ms(scaleJoinTarget)), scaleResyncTarget, metOrMissed(s.ResyncMs <= ms(scaleResyncTarget)),
				scaleRSSTarget>>20, metOrMissed(s.RSSBytes <= scaleRSSTarget))
		}
		verdicts = append(verdicts, line)
		if small, ok := byKey[[2]int{f.Sizes[0].Edges, s.Controllers}]; ok && s.Edges > small.Edges {
			a, b := small.FirstJoinMs/float64(small.Edges), s.FirstJoinMs/float64(s.Edges)
			verdicts = append(verdicts, fmt.Sprintf("%d controller(s), join time per edge from %d to %d edges: %.2f → %.2f ms (slope %.2fx for %.0fx the edges; flat is 1x)",
				s.Controllers, small.Edges, s.Edges, a, b, b/a, float64(s.Edges)/float64(small.Edges)))
		}
	}
	if fo := f.Failover; fo != nil {
		verdicts = append(verdicts, fo.verdict())
	}
	return Section{Title: "Controller and bus scale", Markdown: md.String(), Verdicts: verdicts, Figures: f}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// raiseNoFile makes sure this process may open want files (raising its
// hard limit too where it may).
func raiseNoFile(want uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= want {
		return nil
	}
	l.Cur, l.Max = want, max(l.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("open-file limit: the scale benchmark needs %d: %w (raise ulimit -Hn)", want, err)
	}
	return nil
}

// scaleRun measures one fleet size on a fresh controller, or a fresh
// cluster of three; with failover > 0, it then kills the cluster's store
// leader that many times.
func scaleRun(o Options, tp *topo.Topology, plain, tlsFloor floor, size, reps int, idle time.Duration, controllers, failover int) (scaleSize, *controllerFailoverFigures, error) {
	s := scaleSize{Edges: size, Controllers: controllers}
	sites := tp.Sites()
	home := sites[0]
	dir := filepath.Join(o.Work, fmt.Sprintf("scale-%d-%d", size, controllers))
	copts := cluster.Options{Bin: o.Bin, Dir: dir}
	if controllers > 1 {
		copts.Peers = sites[1:controllers]
	}
	c, err := cluster.Start(tp, home, copts)
	if err != nil {
		return s, nil, err
	}
	defer func() {
		for _, ct := range c.Controllers {
			ct.Stop()
		}
	}()
	ctx := context.Background()

	t0 := time.Now()
	rev, err := addSims(ctx, c.API, size)
	if err != nil {
		return s, nil, err
	}
	s.AddEdgesMs = ms(time.Since(t0))
	o.Logf("%d edges: registered in %s", size, time.Since(t0).Round(time.Millisecond))
	if s.SetJSONBytes, err = simSetBytes(size); err != nil {
		return s, nil, err
	}

	p, err := startPool(o, size)
	if err != nil {
		return s, nil, err
	}
	defer p.close()
	if err := p.all(func(_, from, to int) workerCmd { return workerCmd{Op: "fleet", From: from, To: to} }); err != nil {
		return s, nil, err
	}
	join, err := p.arm(setFleet, 0, true, false)
	if err != nil {
		return s, nil, err
	}
	url, keys := fmt.Sprintf("nats://127.0.0.1:%d", cluster.NATSPort), filepath.Join(dir, "keys")
	if controllers > 1 {
		var urls []string
		for _, ct := range c.Controllers {
			urls = append(urls, "nats://"+ct.BusAddr())
		}
		url = strings.Join(urls, ",")
	}
	// All at once, as after a power cut; each worker answers once every
	// one of its connections is up or retrying in the background.
	t0 = time.Now()
	if err := p.all(func(_, from, to int) workerCmd {
		return workerCmd{Op: "start", From: from, To: to, NS: home.Edge, URL: url, Secret: c.Secret(), KeyDir: keys}
	}); err != nil {
		return s, nil, err
	}
	if _, err := join.wait(t0, max(3*time.Minute, time.Duration(size)*30*time.Millisecond)); err != nil {
		return s, nil, exited(c, fmt.Errorf("first join: %w", err))
	}
	s.FirstJoinMs = ms(time.Since(t0))
	s.ConnectedMs = ms(p.latestConnect().Sub(t0))
	s.JoinSnapshotFailures = p.failures()
	snaps, err := snapshotReplies(c)
	if err != nil {
		return s, nil, err
	}
	s.JoinBytesPerEdge = snaps.bytes / float64(size)
	if n := snaps.byKind[replyKindFullZstd]; n.replies > 0 {
		s.SetZstdBytes = n.bytes / n.replies
	}
	o.Logf("%d edges: first join in %s, %.0f bytes sent per edge (the set: %d bytes of JSON, %.0f compressed)",
		size, time.Since(t0).Round(time.Millisecond), s.JoinBytesPerEdge, s.SetJSONBytes, s.SetZstdBytes)

	floors := []struct {
		f    floor
		set  string
		into *rounds
	}{{tlsFloor, setFloorTLS, &s.FloorTLS}, {plain, setFloor, &s.Floor}}
	for _, f := range floors {
		if err := p.all(func(_, from, to int) workerCmd {
			return workerCmd{Op: "floor", Set: f.set, URL: f.f.url, Secret: f.f.secret, From: from, To: to}
		}); err != nil {
			return s, nil, err
		}
	}

	var pids []int
	for _, ct := range c.Controllers {
		pids = append(pids, ct.Proc().Pid())
	}
	time.Sleep(bus.HeartbeatInterval)
	u0, err := usage(pids)
	if err != nil {
		return s, nil, exited(c, err)
	}
	time.Sleep(idle)
	u1, err := usage(pids)
	if err != nil {
		return s, nil, exited(c, err)
	}
	idleRate := float64(u1.CPU-u0.CPU) / float64(idle)
	s.IdleCPUPercent = 100 * idleRate
	s.RSSBytes = u1.RSS
	o.Logf("%d edges, %d controller(s): idle %.1f%% CPU, RSS %.0f MiB", size, controllers, s.IdleCPUPercent, mib(s.RSSBytes))

	// The floor publishes what a delta of this benchmark weighs.
	spec := simSpec(0)
	spec.Comment = "change 000"
	edge, err := edgeset.Validate(spec)
	if err != nil {
		return s, nil, err
	}
	payload, err := json.Marshal(bus.Delta{Revision: rev + 1, Prev: rev, Op: bus.OpPut, Edge: edge})
	if err != nil {
		return s, nil, err
	}
	// A change round: the API call, every edge holding the change, then a
	// pause before the controller's CPU is read, so that what the change
	// set off (status messages) is counted with it.
	changes := 0
	change := func(silent bool, into *rounds) error {
		changes++
		spec.Comment = fmt.Sprintf("change %03d", changes)
		r, err := p.arm(setFleet, rev+1, false, silent)
		if err != nil {
			return err
		}
		u0, err := usage(pids)
		if err != nil {
			return exited(c, err)
		}
		t0 := time.Now()
		res, err := c.API.Add(ctx, spec)
		if err != nil {
			return err
		}
		api := time.Since(t0)
		rev = res.Revision
		arr, err := r.wait(t0, 30*time.Second)
		if err != nil {
			return exited(c, fmt.Errorf("change: %w", err))
		}
		pause()
		u1, err := usage(pids)
		if err != nil {
			return exited(c, err)
		}
		into.add(arr, api, u1.CPU-u0.CPU-time.Duration(idleRate*float64(time.Since(t0))))
		return nil
	}
	for range reps {
		for _, f := range floors {
			r, err := p.arm(f.set, 1, false, false)
			if err != nil {
				return s, nil, err
			}
			t0 := time.Now()
			if err := f.f.publish(payload); err != nil {
				return s, nil, err
			}
			arr, err := r.wait(t0, 30*time.Second)
			if err != nil {
				return s, nil, fmt.Errorf("floor: %w", err)
			}
			f.into.add(arr, 0, 0)
			pause()
		}
		if err := change(true, &s.Delivery); err != nil {
			return s, nil, err
		}
		if err := change(false, &s.Reported); err != nil {
			return s, nil, err
		}
	}
	for _, r := range []*rounds{&s.Delivery, &s.Reported, &s.FloorTLS, &s.Floor} {
		r.sum()
	}
	u2, err := usage(pids)
	if err != nil {
		return s, nil, exited(c, err)
	}
	s.PeakRSSBytes = u2.PeakRSS
	o.Logf("%d edges, %d controller(s): p99 change %.1f ms (edges silent), %.1f ms (edges reporting), floor %.1f ms over TLS, %.1f ms without; API call median %.1f ms",
		size, controllers, s.Delivery.All.P99, s.Reported.All.P99, s.FloorTLS.All.P99, s.Floor.All.P99, s.Delivery.APICall.Median)

	// A restart of the (first) controller: with one, every edge comes
	// back to it; with three, its edges move to the other two.
	resync, err := p.arm(setFleet, 0, true, false)
	if err != nil {
		return s, nil, err
	}
	failedBefore := p.failures()
	t0 = time.Now()
	c.StopController()
	s.StopMs = ms(time.Since(t0))
	if err := c.StartController(); err != nil {
		return s, nil, fmt.Errorf("restart: %w", err)
	}
	s.RestartMs = ms(time.Since(t0))
	if _, err := resync.wait(t0, 2*time.Minute); err != nil {
		return s, nil, exited(c, fmt.Errorf("resync after restart: %w", err))
	}
	s.ResyncMs = ms(time.Since(t0))
	s.ResyncSnapshotFailures = p.failures() - failedBefore
	o.Logf("%d edges, %d controller(s): restart %.0f ms, all resynced %.0f ms", size, controllers, s.RestartMs, s.ResyncMs)
	if failover == 0 {
		return s, nil, nil
	}
	fo, err := measureControllerFailover(o, c, p, spec, failover)
	return s, fo, err
}

// simSetBytes is the JSON size of the whole set of n simulated edges.
func simSetBytes(n int) (int, error) {
	snap := bus.Snapshot{Revision: uint64(n)}
	for i := range n {
		e, err := edgeset.Validate(simSpec(i))
		if err != nil {
			return 0, err
		}
		e.Revision = uint64(i + 1)
		snap.Edges = append(snap.Edges, e)
	}
	b, err := json.Marshal(snap)
	return len(b), err
}

// The kinds of the controller's snapshot replies (its metrics).
const (
	replyKindFullZstd     = "full_zstd"
	snapshotRepliesFamily = "cframe_controller_snapshot_replies_total"
	snapshotBytesFamily   = "cframe_controller_snapshot_reply_bytes_total"
)

// replyCounts are the snapshot replies the controllers sent and their bytes.
type replyCounts struct {
	replies, bytes float64
	byKind         map[string]struct{ replies, bytes float64 }
}

// snapshotReplies sums every controller's snapshot replies.
func snapshotReplies(c *cluster.Cluster) (replyCounts, error) {
	out := replyCounts{byKind: map[string]struct{ replies, bytes float64 }{}}
	for _, ct := range c.Controllers {
		sc, err := metricstest.Get(ct.API.HTTP, ct.API.Base+"/metrics")
		if err != nil {
			return out, err
		}
		for _, kind := range []string{"full", replyKindFullZstd, "deltas", "unchanged"} {
			n, _ := sc.Value(snapshotRepliesFamily, "kind", kind)
			b, _ := sc.Value(snapshotBytesFamily, "kind", kind)
			k := out.byKind[kind]
			k.replies, k.bytes = k.replies+n, k.bytes+b
			out.byKind[kind] = k
			out.replies, out.bytes = out.replies+n, out.bytes+b
		}
	}
	return out, nil
}

// exited adds the log of a controller that has exited to err.
func exited(c *cluster.Cluster, err error) error {
	for _, ct := range c.Controllers {
		select {
		case <-ct.Proc().Done():
			b, _ := os.ReadFile(ct.Log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			return fmt.Errorf("%w: controller %s exited: %s", err, ct.Name, strings.Join(lines[max(0, len(lines)-5):], " | "))
		default:
		}
	}
	return err
}

// usage sums the usage of several processes (CPU, RSS and peak RSS).
func usage(pids []int) (topo.Usage, error) {
	var sum topo.Usage
	for _, pid := range pids {
		u, err := topo.ProcUsage(pid)
		if err != nil {
			return sum, err
		}
		sum.CPU += u.CPU
		sum.RSS += u.RSS
		sum.PeakRSS += u.PeakRSS
	}
	return sum, nil
}

// pause waits a random 30-60 ms between rounds, so that they do not fall
// into step with the heartbeats.
func pause() { time.Sleep(30*time.Millisecond + rand.N(30*time.Millisecond)) }

// addSims registers sim-0000 .. sim-<n-1> through the API, 8 calls at a
// time, and returns the last revision.
func addSims(ctx context.Context, c *api.Client, n int) (uint64, error) {
	specs := make(chan edgeset.Spec)
	var mu sync.Mutex
	var rev uint64
	var firstErr error
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range specs {
				res, err := c.Add(ctx, s)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("add %s: %w", s.Name, err)
				}
				rev = max(rev, res.Revision)
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		specs <- simSpec(i)
	}
	close(specs)
	wg.Wait()
	return rev, firstErr
}

// round collects, for one event, the time each client saw it.
type round struct {
	// want is the revision (or floor sequence) to reach; with fresh, only
	// a revision the controller confirmed after the round began counts (a
	// snapshot fetched, or a hello announcing the held revision).
	want  uint64
	fresh bool
	at    []time.Time
	left  atomic.Int64
	done  chan struct{}
}

// wait returns every client's time since t0 once all have seen the event.
func (r *round) wait(t0 time.Time, timeout time.Duration) ([]time.Duration, error) {
	select {
	case <-r.done:
	case <-time.After(timeout):
		return nil, fmt.Errorf("%d of %d clients still waiting after %s", r.left.Load(), len(r.at), timeout)
	}
	out := make([]time.Duration, len(r.at))
	for i, at := range r.at {
		out[i] = at.Sub(t0)
	}
	return out, nil
}

// clients is a set of clients that report events into the current round.
type clients struct {
	cur   atomic.Pointer[round]
	conns []*nats.Conn
}

// arm starts a new round.
func (c *clients) arm(want uint64, fresh bool) *round {
	r := &round{want: want, fresh: fresh, at: make([]time.Time, len(c.conns)), done: make(chan struct{})}
	r.left.Store(int64(len(c.conns)))
	c.cur.Store(r)
	return r
}

// saw records that client i held revision rev at time at, confirmed by
// the controller or not. Only client i's goroutine calls it for i.
func (c *clients) saw(i int, rev uint64, confirmed bool, at time.Time) {
	r := c.cur.Load()
	if r == nil || rev < r.want || (r.fresh && !confirmed) || !r.at[i].IsZero() {
		return
	}
	r.at[i] = at
	if r.left.Add(-1) == 0 {
		close(r.done)
	}
}

// floorFleet connects n bare subscribers to a floor server.
func floorFleet(url string, opts []nats.Option, n int) (*clients, error) {
	c := &clients{conns: make([]*nats.Conn, n)}
	for i := range n {
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			return nil, err
		}
		c.conns[i] = nc
		if _, err := nc.Subscribe("bench.floor", func(*nats.Msg) { c.saw(i, 1, false, time.Now()) }); err != nil {
			return nil, err
		}
		if err := nc.Flush(); err != nil {
			return nil, err
		}
	}
	return c, nil
}
