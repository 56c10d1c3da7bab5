package controller

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/metrics"
	"github.com/cframe/cframe/orchestrator/store"
)

// fanoutTimeout gives up on a revision that has not reached every edge
// that was online when it was committed (an edge stuck in an error state).
const fanoutTimeout = 30 * time.Second

// controllerMetrics are the controller's Prometheus families. Counters and
// histograms are updated where things happen; the gauges of the mesh's
// state are read from the controller at each scrape (stateCollector).
type controllerMetrics struct {
	reg           *prometheus.Registry
	apiRequests   *prometheus.CounterVec
	apiDuration   *prometheus.HistogramVec
	storeWrite    *prometheus.HistogramVec
	fanout        prometheus.Histogram
	fanoutTimeout prometheus.Counter
	auditEvents   *prometheus.CounterVec
	// snapshots and snapshotBytes count the replies to snapshot requests
	// and their bodies' bytes, by kind (snapshotKinds).
	snapshots     *prometheus.CounterVec
	snapshotBytes *prometheus.CounterVec
}

// The kinds of snapshot reply: the whole set as plain JSON (an older
// agent), the whole set compressed, the changes since the requester's
// revision, and "your revision is current".
const (
	replyFull      = "full"
	replyFullZstd  = "full_zstd"
	replyDeltas    = "deltas"
	replyUnchanged = "unchanged"
)

func newControllerMetrics(c *Controller) *controllerMetrics {
	m := &controllerMetrics{
		reg: metrics.NewRegistry("cframe-controller"),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cframe_controller_api_requests_total",
			Help: "HTTP requests to the controller's API, page and metrics, by route, method and status code.",
		}, []string{"path", "method", "code"}),
		apiDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cframe_controller_api_request_duration_seconds",
			Help:    "Time to answer an HTTP request (a change includes its store write), by route and method; event streams are left out.",
			Buckets: metrics.Seconds,
		}, []string{"path", "method"}),
		storeWrite: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cframe_controller_store_write_duration_seconds",
			Help:    "Time of one durable store write, by operation (put_edge, delete_edge, pin_key, delete_pin).",
			Buckets: metrics.Seconds,
		}, []string{"op"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cframe_controller_delta_fanout_seconds",
			Help:    "Time from an edge-set change being stored to every edge that was online having applied it to its kernel.",
			Buckets: metrics.Seconds,
		}),
		fanoutTimeout: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cframe_controller_delta_fanout_timeouts_total",
			Help: "Edge-set changes that had not reached every online edge 30 s after being stored.",
		}),
		auditEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cframe_controller_audit_events_total",
			Help: "Audit events written to the audit stream, by kind.",
		}, []string{"kind"}),
	}
	m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cframe_controller_snapshot_replies_total",
		Help: "Replies to edges' snapshot requests, by kind: full (the whole set, plain JSON, for agents that accept nothing else), full_zstd (the whole set compressed), deltas (the changes since the edge's revision), unchanged.",
	}, []string{"kind"})
	m.snapshotBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cframe_controller_snapshot_reply_bytes_total",
		Help: "Bytes of the bodies of the replies to snapshot requests, by kind (as cframe_controller_snapshot_replies_total).",
	}, []string{"kind"})
	m.reg.MustRegister(m.apiRequests, m.apiDuration, m.storeWrite, m.fanout, m.fanoutTimeout, m.auditEvents, m.snapshots, m.snapshotBytes, stateCollector{c})
	return m
}

// instrument counts and times every HTTP request by the route that served
// it (the mux's pattern, so the label set stays bounded).
func (m *controllerMetrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		path := r.Pattern // set by the mux on this very request
		if path == "" || path == "/" {
			path = "other"
		}
		m.apiRequests.WithLabelValues(path, r.Method, strconv.Itoa(rec.code)).Inc()
		if rec.Header().Get("Content-Type") != "text/event-stream" {
			m.apiDuration.WithLabelValues(path, r.Method).Observe(time.Since(start).Seconds())
		}
	})
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush (event streams).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// timedStore times every write of the store it wraps.
type timedStore struct {
	store.Store
	hist *prometheus.HistogramVec
}

func (t timedStore) observe(op string, start time.Time) {
	t.hist.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (t timedStore) PutEdge(ctx context.Context, e bus.Edge, expect uint64) (uint64, error) {
	defer t.observe("put_edge", time.Now())
	return t.Store.PutEdge(ctx, e, expect)
}

func (t timedStore) DeleteEdge(ctx context.Context, name string, expect uint64) (uint64, error) {
	defer t.observe("delete_edge", time.Now())
	return t.Store.DeleteEdge(ctx, name, expect)
}

func (t timedStore) PinKey(ctx context.Context, name, key string) (store.Pin, error) {
	defer t.observe("pin_key", time.Now())
	return t.Store.PinKey(ctx, name, key)
}

func (t timedStore) DeletePin(ctx context.Context, name string) (uint64, error) {
	defer t.observe("delete_pin", time.Now())
	return t.Store.DeletePin(ctx, name)
}

// stateCollector reads the mesh's state at scrape time.
type stateCollector struct{ c *Controller }

var (
	descEdges = prometheus.NewDesc("cframe_controller_edges",
		"Edges in the edge set.", nil, nil)
	descEdgesOnline = prometheus.NewDesc("cframe_controller_edges_online",
		"Edges of the edge set whose agent is heartbeating.", nil, nil)
	descEdgesPending = prometheus.NewDesc("cframe_controller_edges_pending",
		"Agents connected to the bus under a name that is not in the edge set (waiting to be added).", nil, nil)
	descEdgeOnline = prometheus.NewDesc("cframe_controller_edge_online",
		"1 while the edge's agent is heartbeating, else 0 (no heartbeat for a while, or its connection closed).", []string{"edge"}, nil)
	descEdgeApplied = prometheus.NewDesc("cframe_controller_edge_applied_revision",
		"The edge-set revision the edge reports its kernel matches.", []string{"edge"}, nil)
	descRevision = prometheus.NewDesc("cframe_controller_edgeset_revision",
		"The current edge-set revision.", nil, nil)
	descLinks = prometheus.NewDesc("cframe_controller_links",
		"Links between edges by state: up, pending (an end has not applied the current revision), down.", []string{"state"}, nil)
	descBusClients = prometheus.NewDesc("cframe_controller_bus_clients",
		"Clients connected to the controller's NATS server (edges, audit readers, and the controller's own two: its bus connection and its watch of the edges' connections).", nil, nil)
	descSiteGateways = prometheus.NewDesc("cframe_controller_site_gateways",
		"Gateways of a site (edges added with that site), and of those online.", []string{"site", "state"}, nil)
	descSiteActive = prometheus.NewDesc("cframe_controller_site_active_gateway",
		"1 for the gateway currently active in its site (by the newest claim); alert when it is not online.", []string{"site", "edge"}, nil)
	descClusterControllers = prometheus.NewDesc("cframe_controller_cluster_controllers",
		"Controllers of the control plane (1 when alone), and of those this one reaches (itself included).", []string{"state"}, nil)
	descClusterQuorum = prometheus.NewDesc("cframe_controller_cluster_quorum",
		"1 while this controller can take writes (a quorum of the store's replicas), else 0.", nil, nil)
	descClusterLeader = prometheus.NewDesc("cframe_controller_cluster_leader",
		"1 for each role this controller leads: JetStream's metadata (meta), the embedded store's replicas (store).", []string{"role"}, nil)
)

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEdges, descEdgesOnline, descEdgesPending, descEdgeOnline, descEdgeApplied, descRevision, descLinks, descBusClients,
		descSiteGateways, descSiteActive, descClusterControllers, descClusterQuorum, descClusterLeader} {
		ch <- d
	}
}

func (s stateCollector) Collect(ch chan<- prometheus.Metric) {
	t, ends, _ := s.c.topology()
	online := 0
	for _, e := range t.Edges {
		up := 0.0
		if e.State == "online" {
			up = 1
			online++
		}
		ch <- prometheus.MustNewConstMetric(descEdgeOnline, prometheus.GaugeValue, up, e.Name)
		ch <- prometheus.MustNewConstMetric(descEdgeApplied, prometheus.GaugeValue, float64(e.AppliedRevision), e.Name)
	}
	for state, n := range linkCounts(ends, t.Revision) {
		ch <- prometheus.MustNewConstMetric(descLinks, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descEdges, prometheus.GaugeValue, float64(len(t.Edges)))
	ch <- prometheus.MustNewConstMetric(descEdgesOnline, prometheus.GaugeValue, float64(online))
	ch <- prometheus.MustNewConstMetric(descEdgesPending, prometheus.GaugeValue, float64(len(t.Pending)))
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(t.Revision))
	ch <- prometheus.MustNewConstMetric(descBusClients, prometheus.GaugeValue, float64(s.c.srv.Clients()))
	s.collectSites(ch, t)
	s.collectCluster(ch)
}

// collectSites reports the sites that have gateways added with a site (an
// edge without one is a site of its own and reported as an edge).
func (s stateCollector) collectSites(ch chan<- prometheus.Metric, t api.Topology) {
	type counts struct{ all, online int }
	sites := map[string]*counts{}
	for _, e := range t.Edges {
		if e.Site == "" {
			continue
		}
		n := sites[e.Site]
		if n == nil {
			n = &counts{}
			sites[e.Site] = n
		}
		n.all++
		if e.State == api.StateOnline {
			n.online++
		}
	}
	for _, site := range t.Sites {
		n := sites[site.Name]
		if n == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descSiteGateways, prometheus.GaugeValue, float64(n.all), site.Name, "all")
		ch <- prometheus.MustNewConstMetric(descSiteGateways, prometheus.GaugeValue, float64(n.online), site.Name, "online")
		if site.Active != "" {
			ch <- prometheus.MustNewConstMetric(descSiteActive, prometheus.GaugeValue, 1, site.Name, site.Active)
		}
	}
}

// collectCluster reports the control plane as this controller sees it.
func (s stateCollector) collectCluster(ch chan<- prometheus.Metric) {
	cl := s.c.Cluster()
	ch <- prometheus.MustNewConstMetric(descClusterControllers, prometheus.GaugeValue, float64(cl.Controllers), "all")
	ch <- prometheus.MustNewConstMetric(descClusterControllers, prometheus.GaugeValue, float64(len(cl.Reachable)), "reachable")
	quorum := 0.0
	if cl.Quorum {
		quorum = 1
	}
	ch <- prometheus.MustNewConstMetric(descClusterQuorum, prometheus.GaugeValue, quorum)
	for role, leader := range map[string]string{"meta": cl.MetaLeader, "store": cl.StoreLeader} {
		v := 0.0
		if leader != "" && leader == cl.Name {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descClusterLeader, prometheus.GaugeValue, v, role)
	}
}

// fanout times each edge-set change until every edge that was online when
// it was stored reports having applied it (or a later revision). The time
// ends when the edge applied it by its own clock (Status.AppliedAt against
// Status.Time), not when its report arrived: agents spread their reports
// on purpose (bus.StatusJitter).
type fanout struct {
	mu      sync.Mutex
	pending []*pendingRev // ascending revisions
	m       *controllerMetrics
}

type pendingRev struct {
	rev     uint64
	start   time.Time
	waiting map[string]bool
	// last is when the last edge so far applied it.
	last time.Time
}

// begin starts timing rev, waiting for edges.
func (f *fanout) begin(rev uint64, start time.Time, edges []string) {
	if len(edges) == 0 {
		return
	}
	p := &pendingRev{rev: rev, start: start, waiting: make(map[string]bool, len(edges))}
	for _, e := range edges {
		p.waiting[e] = true
	}
	f.mu.Lock()
	f.pending = append(f.pending, p)
	f.mu.Unlock()
}

// applied records that edge applied revision rev at time at.
func (f *fanout) applied(edge string, rev uint64, at time.Time) {
	f.settle(edge, func(p *pendingRev) bool {
		if p.rev > rev {
			return false
		}
		p.last = maxTime(p.last, at)
		return true
	})
}

// forget stops waiting for an edge that went offline or was deleted; a
// revision it was the last one missing ends when the last edge applied it.
func (f *fanout) forget(edge string) {
	f.settle(edge, func(*pendingRev) bool { return true })
}

// settle removes edge from the pending revisions that match selects and
// observes those that are complete.
func (f *fanout) settle(edge string, match func(*pendingRev) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keep := f.pending[:0]
	for _, p := range f.pending {
		if p.waiting[edge] && match(p) {
			delete(p.waiting, edge)
			if len(p.waiting) == 0 {
				if !p.last.IsZero() {
					f.m.fanout.Observe(max(p.last.Sub(p.start), 0).Seconds())
				}
				continue
			}
		}
		keep = append(keep, p)
	}
	f.pending = keep
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// expire gives up on revisions older than fanoutTimeout.
func (f *fanout) expire(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keep := f.pending[:0]
	for _, p := range f.pending {
		if now.Sub(p.start) > fanoutTimeout {
			f.m.fanoutTimeout.Inc()
			continue
		}
		keep = append(keep, p)
	}
	f.pending = keep
}

// onlineEdges are the edges of the set whose agents are heartbeating.
func (c *Controller) onlineEdges() []string {
	edges := c.view.now().edges
	names := make([]string, 0, len(edges))
	for name := range edges {
		names = append(names, name)
	}
	return c.status.online(names)
}
