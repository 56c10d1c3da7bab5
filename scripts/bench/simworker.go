package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
)

// The scale benchmark's simulated edges and floor subscribers live in
// worker processes (the benchmark binary started again with simWorkerArg),
// a few thousand sockets each, so that ten thousand of them are not one
// process's file descriptors, goroutines and garbage. The benchmark drives
// them over the workers' stdin and stdout, one JSON object a line.
const simWorkerArg = "sim-worker"

// perWorker is how many simulated edges one worker runs.
const perWorker = 2000

// workerCmd is a line to a worker.
type workerCmd struct {
	// Op is "serve" (run a floor server, TLS with a certificate in the
	// directory URL proving Secret when set; its URL comes back in Err),
	// "pub" (publish Payload on it), "fleet" (make room for the edges
	// From..To), "start" (connect them, with the config), "floor" (as many
	// bare subscribers of Set to URL), "arm" (a new round of Set: Want,
	// Fresh, Silent), "conns" (every edge's server and last reconnect).
	Op     string `json:"op"`
	From   int    `json:"from,omitempty"`
	To     int    `json:"to,omitempty"`
	NS     string `json:"ns,omitempty"`
	URL    string `json:"url,omitempty"`
	Secret string `json:"secret,omitempty"`
	KeyDir string `json:"key_dir,omitempty"`
	Set    string `json:"set,omitempty"`
	ID     int    `json:"id,omitempty"`
	Want   uint64 `json:"want,omitempty"`
	Fresh  bool   `json:"fresh,omitempty"`
	Silent bool   `json:"silent,omitempty"`
	// Payload is what "pub" publishes.
	Payload []byte `json:"payload,omitempty"`
}

// workerEvent is a line from a worker: the answer to a command ("ok",
// "error"), or a round all of its clients of Set have seen.
type workerEvent struct {
	Op  string `json:"op"`
	Err string `json:"err,omitempty"`
	Set string `json:"set,omitempty"`
	ID  int    `json:"id,omitempty"`
	// At is each client's time (Unix nanoseconds) in the round.
	At []int64 `json:"at,omitempty"`
	// Failed counts the snapshot fetches that failed so far, LastConnect
	// the latest first connection (Unix nanoseconds).
	Failed      int64 `json:"failed,omitempty"`
	LastConnect int64 `json:"last_connect,omitempty"`
	// Servers and Reconnected answer "conns".
	Servers     []string `json:"servers,omitempty"`
	Reconnected []int64  `json:"reconnected,omitempty"`
}

// Client sets of a worker.
const (
	setFleet    = "fleet"
	setFloorTLS = "floor-tls"
	setFloor    = "floor"
)

// simWorker runs a worker: commands on stdin, events on stdout.
func simWorker() {
	if err := raiseNoFile(3*perWorker + 512); err != nil {
		fail("%v", err)
	}
	w := &worker{sets: map[string]*clients{}, out: json.NewEncoder(os.Stdout)}
	defer func() {
		if w.floor != nil {
			w.pub.Close()
			w.floor.Shutdown()
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var c workerCmd
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			fail("%v", err)
		}
		ev, err := w.do(c)
		if err != nil {
			ev = workerEvent{Op: "error", Err: err.Error()}
		}
		w.send(ev)
	}
	w.fleet.close()
	for _, set := range w.sets {
		for _, nc := range set.conns {
			if nc != nil {
				nc.Close()
			}
		}
	}
}

// worker is one worker process's state; do runs on the main goroutine.
type worker struct {
	mu    sync.Mutex
	out   *json.Encoder
	sets  map[string]*clients
	fleet *fleet
	// floor and pub are the floor server this worker runs, if any.
	floor *server.Server
	pub   *nats.Conn
}

func (w *worker) send(ev workerEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.out.Encode(ev); err != nil {
		fail("%v", err)
	}
}

func (w *worker) do(c workerCmd) (workerEvent, error) {
	ok := workerEvent{Op: "ok"}
	switch c.Op {
	case "serve":
		var err error
		if w.floor, w.pub, err = serveFloor(c.Secret, c.URL); err != nil {
			return ok, err
		}
		return workerEvent{Op: "ok", Err: w.floor.ClientURL()}, nil
	case "pub":
		return ok, w.pub.Publish("bench.floor", c.Payload)
	case "fleet":
		w.fleet = newFleet(c.To - c.From)
		w.sets[setFleet] = &w.fleet.clients
		return ok, nil
	case "start":
		w.fleet.t0 = time.Now()
		errs := make(chan error, c.To-c.From)
		for i := c.From; i < c.To; i++ {
			go func() { errs <- w.fleet.start(i-c.From, i, c.NS, c.URL, c.Secret, c.KeyDir) }()
		}
		var err error
		for range c.To - c.From {
			err = errors.Join(err, <-errs)
		}
		return ok, err
	case "floor":
		var opts []nats.Option
		if c.Secret != "" {
			opts = bus.ClientOptions(bus.Trust{Secret: c.Secret}, nil)
		}
		subs, err := floorFleet(c.URL, opts, c.To-c.From)
		w.sets[c.Set] = subs
		return ok, err
	case "arm":
		set := w.sets[c.Set]
		if set == nil {
			return ok, fmt.Errorf("no client set %q", c.Set)
		}
		if c.Set == setFleet {
			w.fleet.silent.Store(c.Silent)
		}
		r := set.arm(c.Want, c.Fresh)
		go func() {
			<-r.done
			ev := workerEvent{Op: "round", Set: c.Set, ID: c.ID, At: make([]int64, len(r.at))}
			for i, at := range r.at {
				ev.At[i] = at.UnixNano()
			}
			if w.fleet != nil {
				ev.Failed, ev.LastConnect = w.fleet.failed.Load(), w.fleet.t0.UnixNano()+w.fleet.lastConnect.Load()
			}
			w.send(ev)
		}()
		return ok, nil
	case "conns":
		ev := workerEvent{Op: "ok"}
		for i, nc := range w.fleet.conns {
			ev.Servers = append(ev.Servers, nc.ConnectedServerName())
			ev.Reconnected = append(ev.Reconnected, w.fleet.reconnected[i].Load())
		}
		return ev, nil
	}
	return ok, fmt.Errorf("unknown command %q", c.Op)
}

// pool is the benchmark's side of the workers.
type pool struct {
	workers []*workerProc
	// sizes[i] is how many clients worker i runs.
	sizes []int
	next  int
	// failed and lastConnect are the workers' latest reports, summed or
	// the latest.
	failed      []atomic.Int64
	lastConnect []atomic.Int64
	// rounds are the workers' round reports, tagged with the worker.
	rounds chan poolEvent
}

// poolEvent is worker w's report of a round.
type poolEvent struct {
	w  int
	ev workerEvent
}

// workerProc is one worker process.
type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	in    *json.Encoder
	acks  chan workerEvent
	done  chan struct{}
	log   string
}

// startPool starts enough workers for n clients of each set.
func startPool(o Options, n int) (*pool, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &pool{rounds: make(chan poolEvent, 1024)}
	for from := 0; from < n; from += perWorker {
		p.sizes = append(p.sizes, min(perWorker, n-from))
	}
	p.failed, p.lastConnect = make([]atomic.Int64, len(p.sizes)), make([]atomic.Int64, len(p.sizes))
	for i := range p.sizes {
		wp := &workerProc{acks: make(chan workerEvent, 1), done: make(chan struct{}),
			log: filepath.Join(o.Work, fmt.Sprintf("sim-worker-%d.log", i))}
		logf, err := os.Create(wp.log)
		if err != nil {
			p.close()
			return nil, err
		}
		wp.cmd = exec.Command(self, simWorkerArg)
		wp.cmd.Stderr = logf
		stdin, err := wp.cmd.StdinPipe()
		if err != nil {
			p.close()
			return nil, err
		}
		stdout, err := wp.cmd.StdoutPipe()
		if err != nil {
			p.close()
			return nil, err
		}
		if err := wp.cmd.Start(); err != nil {
			p.close()
			return nil, err
		}
		logf.Close()
		wp.stdin, wp.in = stdin, json.NewEncoder(stdin)
		go p.read(i, wp, stdout)
		p.workers = append(p.workers, wp)
	}
	return p, nil
}

// read dispatches worker i's events until its stdout closes.
func (p *pool) read(i int, wp *workerProc, r io.Reader) {
	defer close(wp.done)
	in := bufio.NewScanner(r)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		var ev workerEvent
		if err := json.Unmarshal(in.Bytes(), &ev); err != nil {
			continue
		}
		if ev.Op == "round" {
			p.failed[i].Store(ev.Failed)
			p.lastConnect[i].Store(ev.LastConnect)
			p.rounds <- poolEvent{i, ev}
			continue
		}
		wp.acks <- ev
	}
}

// call sends c to worker i and waits for its answer.
func (p *pool) call(i int, c workerCmd) (workerEvent, error) {
	wp := p.workers[i]
	if err := wp.in.Encode(c); err != nil {
		return workerEvent{}, fmt.Errorf("worker %d: %w", i, err)
	}
	select {
	case ev := <-wp.acks:
		if ev.Op == "error" {
			return ev, fmt.Errorf("worker %d: %s", i, ev.Err)
		}
		return ev, nil
	case <-wp.done:
		return workerEvent{}, fmt.Errorf("worker %d exited (log %s)", i, wp.log)
	}
}

// all sends each worker its command (c for worker i and its clients
// from..to) at once and waits for every answer.
func (p *pool) all(c func(i, from, to int) workerCmd) error {
	errs := make(chan error, len(p.workers))
	from := 0
	for i, n := range p.sizes {
		cmd := c(i, from, from+n)
		from += n
		go func() {
			_, err := p.call(i, cmd)
			errs <- err
		}()
	}
	var err error
	for range p.workers {
		err = errors.Join(err, <-errs)
	}
	return err
}

// failures is the snapshot fetches that failed so far, over all workers.
func (p *pool) failures() int64 {
	var n int64
	for i := range p.failed {
		n += p.failed[i].Load()
	}
	return n
}

// latestConnect is the latest first connection of any edge.
func (p *pool) latestConnect() time.Time {
	var last int64
	for i := range p.lastConnect {
		last = max(last, p.lastConnect[i].Load())
	}
	return time.Unix(0, last)
}

// poolRound is one round armed on every worker.
type poolRound struct {
	p   *pool
	set string
	id  int
}

// arm starts a round of set on every worker: want is the revision to
// reach, fresh whether only one the controller confirmed after now counts,
// silent whether the edges keep from reporting status.
func (p *pool) arm(set string, want uint64, fresh, silent bool) (*poolRound, error) {
	p.next++
	r := &poolRound{p: p, set: set, id: p.next}
	err := p.all(func(int, int, int) workerCmd {
		return workerCmd{Op: "arm", Set: set, ID: r.id, Want: want, Fresh: fresh, Silent: silent}
	})
	return r, err
}

// wait returns every client's time since t0 once all have seen the round.
func (r *poolRound) wait(t0 time.Time, timeout time.Duration) ([]time.Duration, error) {
	deadline := time.After(timeout)
	var out []time.Duration
	done := make([]bool, len(r.p.workers))
	for left := len(done); left > 0; {
		select {
		case pe := <-r.p.rounds:
			if pe.ev.Set != r.set || pe.ev.ID != r.id || done[pe.w] {
				continue // a round given up on before
			}
			for _, at := range pe.ev.At {
				out = append(out, time.Unix(0, at).Sub(t0))
			}
			done[pe.w] = true
			left--
		case <-deadline:
			waiting := 0
			for j, d := range done {
				if !d {
					waiting += r.p.sizes[j]
				}
			}
			return nil, fmt.Errorf("the clients of %d of %d workers (%d clients) still waiting after %s", left, len(done), waiting, timeout)
		}
		for i, wp := range r.p.workers {
			select {
			case <-wp.done:
				return nil, fmt.Errorf("worker %d exited (log %s)", i, wp.log)
			default:
			}
		}
	}
	return out, nil
}

// conns is every edge's server and last reconnection, in edge order.
func (p *pool) conns() ([]string, []time.Time, error) {
	var servers []string
	var at []time.Time
	for i := range p.workers {
		ev, err := p.call(i, workerCmd{Op: "conns"})
		if err != nil {
			return nil, nil, err
		}
		servers = append(servers, ev.Servers...)
		for _, ns := range ev.Reconnected {
			at = append(at, time.Unix(0, ns))
		}
	}
	return servers, at, nil
}

// close ends every worker (closing its stdin stops it).
func (p *pool) close() {
	for _, wp := range p.workers {
		wp.stdin.Close()
	}
	for _, wp := range p.workers {
		select {
		case <-wp.done:
		case <-time.After(10 * time.Second):
			wp.cmd.Process.Kill()
		}
		wp.cmd.Wait()
	}
}

// simFollower is a simulated edge's side of the edge set: the protocol of
// bus.Follower (a snapshot, then deltas linked by revision, a snapshot
// again on a gap or a later hello; asking for compression and for the
// changes since the revision held) holding the revision only. A set of
// 10,000 edges held by 10,000 simulated edges would be 10^8 entries; the
// whole sets a worker receives are decoded once per distinct body (they
// are the same bytes for every edge at one revision).
type simFollower struct {
	nc    *nats.Conn
	msgs  chan *nats.Msg
	rev   uint64
	have  bool
	heard uint64
}

// decoded caches the revision of each whole-set body a worker received.
var decoded sync.Map // maphash of the body -> revision

var bodySeed = maphash.MakeSeed()

func simFollow(nc *nats.Conn) (*simFollower, error) {
	f := &simFollower{nc: nc, msgs: make(chan *nats.Msg, 64)}
	for _, subj := range []string{bus.SubjectDelta, bus.SubjectHello} {
		if _, err := nc.ChanSubscribe(subj, f.msgs); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// handle takes a delta or hello: whether the held revision moved, whether
// a snapshot was fetched.
func (f *simFollower) handle(m *nats.Msg) (moved, fetched bool, err error) {
	if m.Subject == bus.SubjectHello {
		var h bus.Hello
		if err := bus.Decode(m, &h); err != nil {
			return false, false, err
		}
		if f.have && h.Revision <= f.rev {
			return false, false, nil
		}
		f.heard = max(f.heard, h.Revision)
		moved, err := f.resync()
		return moved, true, err
	}
	var d bus.Delta
	if err := bus.Decode(m, &d); err != nil {
		return false, false, err
	}
	f.heard = max(f.heard, d.Revision)
	switch {
	case !f.have, d.Revision > f.rev && d.Prev != f.rev:
		moved, err := f.resync()
		return moved, true, err
	case d.Revision <= f.rev:
		return false, false, nil
	}
	f.rev = d.Revision
	return true, false, nil
}

// resync asks for the set as the agent does; it reports whether the held
// revision moved.
func (f *simFollower) resync() (bool, error) {
	req := bus.SnapshotRequest{Want: f.heard, Accept: []string{bus.AcceptZstd}}
	if f.have {
		req.Have, req.Want = f.rev, max(f.heard, f.rev)
		req.Accept = append(req.Accept, bus.AcceptDeltas)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return false, err
	}
	m, err := f.nc.Request(bus.SubjectSnapshot, body, bus.SnapshotTimeout)
	if err != nil {
		return false, err
	}
	h := maphash.Bytes(bodySeed, m.Data)
	rev, ok := decoded.Load(h)
	if !ok {
		var s bus.Snapshot
		if err := bus.Decode(m, &s); err != nil {
			return false, err
		}
		switch {
		case s.Unchanged && s.Revision != f.rev:
			return false, fmt.Errorf("unchanged at %d, held %d", s.Revision, f.rev)
		case s.Since != 0 && (s.Since != f.rev || len(s.Deltas) == 0 || s.Deltas[len(s.Deltas)-1].Revision != s.Revision):
			return false, fmt.Errorf("changes from %d to %d, held %d", s.Since, s.Revision, f.rev)
		case !s.Unchanged && s.Since == 0:
			decoded.Store(h, s.Revision) // a whole set: the same bytes for every edge
		}
		rev = s.Revision
	}
	moved := !f.have || rev.(uint64) != f.rev
	f.rev, f.have = rev.(uint64), true
	f.heard = max(f.heard, f.rev)
	return moved, nil
}

// fleet is the simulated edges of one worker.
type fleet struct {
	clients
	// failed counts snapshot fetches that failed (timed out).
	failed atomic.Int64
	// silent keeps the edges from reporting status after a change.
	silent atomic.Bool
	// lastConnect is the latest first connection, in nanoseconds since t0.
	t0          time.Time
	lastConnect atomic.Int64
	// reconnected is each edge's last reconnection (Unix nanoseconds).
	reconnected []atomic.Int64
	stop        chan struct{}
	wg          sync.WaitGroup
}

func newFleet(n int) *fleet {
	return &fleet{clients: clients{conns: make([]*nats.Conn, n)}, reconnected: make([]atomic.Int64, n), stop: make(chan struct{})}
}

// close stops and disconnects every simulated edge.
func (f *fleet) close() {
	if f == nil {
		return
	}
	close(f.stop)
	f.wg.Wait()
	for _, nc := range f.conns {
		if nc != nil {
			nc.Close()
		}
	}
}

// start connects simulated edge sim-<n> as client i from namespace ns and
// runs it: the agent's loop without the kernel — fetch a snapshot whenever
// (re)connected, follow deltas and hellos, report status on every change
// and every heartbeat interval.
func (f *fleet) start(i, n int, ns, url, secret, keyDir string) error {
	name := simSpec(n).Name
	id, err := bus.LoadIdentity(filepath.Join(keyDir, name+".nk"), name)
	if err != nil {
		return err
	}
	poke := make(chan struct{}, 1)
	kick := func(*nats.Conn) {
		select {
		case poke <- struct{}{}:
		default:
		}
	}
	connected := func(nc *nats.Conn) {
		for d := int64(time.Since(f.t0)); ; {
			last := f.lastConnect.Load()
			if d <= last || f.lastConnect.CompareAndSwap(last, d) {
				break
			}
		}
		kick(nc)
	}
	opts := append(id.EdgeOptions(secret), bus.ClientOptions(bus.Trust{Secret: secret}, topo.Dialer{NS: ns})...)
	// The servers a cluster announces are its controllers' interface
	// addresses, which real edges reach through the mesh they build; the
	// simulated edges build none and use only the addresses they are given.
	opts = append(opts, nats.RetryOnFailedConnect(true), nats.IgnoreDiscoveredServers(),
		nats.ConnectHandler(connected), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			f.reconnected[i].Store(time.Now().UnixNano())
			kick(nc)
		}))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err
	}
	f.conns[i] = nc
	fo, err := simFollow(nc)
	if err != nil {
		return err
	}
	// report may run on a timer's goroutine: it touches nothing but nc.
	report := func(rev uint64) {
		if nc.IsConnected() {
			bus.Publish(nc, bus.StatusSubject(name), bus.Status{Name: name, State: bus.StateReady, Version: "bench",
				AppliedRevision: rev, Time: time.Now().UTC()})
		}
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		// A random phase, as independent agents would have.
		hb := time.NewTicker(bus.HeartbeatInterval + rand.N(bus.HeartbeatInterval/10))
		defer hb.Stop()
		for {
			var moved, confirmed bool
			var err error
			select {
			case <-f.stop:
				return
			case m := <-fo.msgs:
				var fetched bool
				moved, fetched, err = fo.handle(m)
				// A hello that changes nothing confirms the held
				// revision; a snapshot fetched because of it too.
				confirmed = err == nil && (m.Subject == bus.SubjectHello || fetched)
			case <-poke:
				moved, err = fo.resync()
				confirmed = err == nil
			case <-hb.C:
				if fo.have {
					report(fo.rev)
				}
				continue
			}
			at := time.Now()
			if err != nil {
				f.failed.Add(1)
				continue
			}
			if moved || confirmed {
				f.saw(i, fo.rev, confirmed, at)
			}
			if moved && !f.silent.Load() {
				// As agents do: report after a random delay (bus.StatusJitter).
				rev := fo.rev
				time.AfterFunc(rand.N(bus.StatusJitter), func() { report(rev) })
			}
		}
	}()
	return nil
}
