package controller

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
)

// Every family of the controller's /metrics, read back from a real scrape
// after a change reached an edge, and promtool's check of the whole text.
func TestControllerMetricsScrape(t *testing.T) {
	cfg := testConfig(t)
	cfg.APIToken = "metrics-token"
	r := start(t, cfg)
	addAll(t, r, walkthrough...)
	// A site of two gateways.
	addAll(t, r, edgeset.Spec{Name: "bj-1", HostAddr: "198.51.100.41:58423", CIDR: "10.60.0.0/16", Site: "bj"},
		edgeset.Spec{Name: "bj-2", HostAddr: "198.51.100.42:58423", CIDR: "10.60.0.0/16", Site: "bj"})
	nc, f := followEdge(t, r, "sz-1", t.TempDir())
	if _, err := f.Resync("join"); err != nil {
		t.Fatal(err)
	}
	report := func(rev uint64, appliedAt time.Time) {
		t.Helper()
		st := bus.Status{Name: "sz-1", State: bus.StateReady, AppliedRevision: rev, AppliedAt: appliedAt, Time: time.Now().UTC()}
		if err := bus.Publish(nc, bus.StatusSubject("sz-1"), st); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, _ := f.Set()
	report(rev, time.Now().UTC())
	waitFor(t, 5*time.Second, func() error {
		for _, e := range r.ListEdges() {
			if e.Name == "sz-1" && (e.State != api.StateOnline || e.AppliedRevision != rev) {
				return fmt.Errorf("sz-1 = %+v", e)
			}
		}
		return nil
	})
	// A change that sz-1 (online) applies 40 ms after it arrived, by its own
	// clock, and reports 500 ms later: the fan-out ends at the kernel update,
	// not at the report.
	res, err := r.api.Add(context.Background(), walkthrough[1]) // unchanged: no revision
	if err != nil || res.Revision != rev {
		t.Fatalf("unchanged add = %+v, %v", res, err)
	}
	res, err = r.api.Del(context.Background(), "gz-3")
	if err != nil {
		t.Fatal(err)
	}
	handleNext(t, f)
	time.Sleep(40 * time.Millisecond) // stands in for the agent's kernel update
	appliedAt := time.Now().UTC()
	time.Sleep(500 * time.Millisecond) // stands in for the agent's report delay
	report(res.Revision, appliedAt)

	var s metricstest.Scrape
	waitFor(t, 5*time.Second, func() error {
		var err error
		if s, err = metricstest.Get(nil, r.base+"/metrics"); err != nil {
			return err
		}
		// Collectors run side by side within a scrape: wait for one that
		// shows both the fan-out and the status that ended it.
		if n, _ := s.Value("cframe_controller_delta_fanout_seconds"); n != 1 {
			return fmt.Errorf("fan-out observations = %v, want 1", n)
		}
		if v, _ := s.Value("cframe_controller_edge_applied_revision", "edge", "sz-1"); v != float64(res.Revision) {
			return fmt.Errorf("sz-1 applied %v, want %d", v, res.Revision)
		}
		return nil
	})
	// The bounds tell the kernel update (40 ms after delivery) from the
	// report (500 ms later), with room at the low end: the agent's times
	// are wall-clock stamps, the 40 ms a monotonic sleep (a run measured
	// 0.0399 s).
	if sum := histogramSum(s, "cframe_controller_delta_fanout_seconds"); sum < 0.030 || sum > 0.400 {
		t.Errorf("fan-out took %.3f s, want the delivery and the 40 ms to the kernel update, not the 500 ms report delay", sum)
	}
	want := []struct {
		name   string
		labels []string
		value  float64
		typ    string
	}{
		{"cframe_build_info", []string{"program", "cframe-controller"}, 1, "GAUGE"},
		{"cframe_controller_edges", nil, 4, "GAUGE"},
		{"cframe_controller_edges_online", nil, 1, "GAUGE"},
		{"cframe_controller_edges_pending", nil, 0, "GAUGE"},
		{"cframe_controller_edge_online", []string{"edge", "sz-1"}, 1, "GAUGE"},
		{"cframe_controller_edge_online", []string{"edge", "hk-1"}, 0, "GAUGE"},
		{"cframe_controller_edge_applied_revision", []string{"edge", "sz-1"}, float64(res.Revision), "GAUGE"},
		{"cframe_controller_edgeset_revision", nil, float64(res.Revision), "GAUGE"},
		{"cframe_controller_links", []string{"state", "down"}, 6, "GAUGE"},
		{"cframe_controller_links", []string{"state", "up"}, 0, "GAUGE"},
		{"cframe_controller_bus_clients", nil, 3, "GAUGE"}, // the controller's own two and sz-1
		{"cframe_controller_api_requests_total", []string{"path", api.PathAdd, "method", "POST", "code", "200"}, 6, "COUNTER"},
		{"cframe_controller_api_requests_total", []string{"path", api.PathDel, "method", "POST", "code", "200"}, 1, "COUNTER"},
		{"cframe_controller_api_request_duration_seconds", []string{"path", api.PathAdd, "method", "POST"}, 6, "HISTOGRAM"},
		{"cframe_controller_store_write_duration_seconds", []string{"op", "put_edge"}, 5, "HISTOGRAM"},
		{"cframe_controller_store_write_duration_seconds", []string{"op", "delete_edge"}, 1, "HISTOGRAM"},
		{"cframe_controller_store_write_duration_seconds", []string{"op", "pin_key"}, 1, "HISTOGRAM"},
		{"cframe_controller_delta_fanout_seconds", nil, 1, "HISTOGRAM"},
		{"cframe_controller_delta_fanout_timeouts_total", nil, 0, "COUNTER"},
		// sz-1 joined: the whole set, compressed, once.
		{"cframe_controller_snapshot_replies_total", []string{"kind", "full_zstd"}, 1, "COUNTER"},
		{"cframe_controller_audit_events_total", []string{"kind", bus.EventEdgeAdded}, 5, "COUNTER"},
		{"cframe_controller_audit_events_total", []string{"kind", bus.EventEdgeDeleted}, 1, "COUNTER"},
		{"cframe_controller_audit_events_total", []string{"kind", bus.EventEdgeOnline}, 1, "COUNTER"},
		{"cframe_controller_audit_events_total", []string{"kind", bus.EventKeyPinned}, 1, "COUNTER"},
		{"cframe_controller_site_gateways", []string{"site", "bj", "state", "all"}, 2, "GAUGE"},
		{"cframe_controller_site_gateways", []string{"site", "bj", "state", "online"}, 0, "GAUGE"},
		{"cframe_controller_site_active_gateway", []string{"site", "bj"}, 1, "GAUGE"},
		// A lone controller: one, reachable, with a quorum of itself.
		{"cframe_controller_cluster_controllers", []string{"state", "all"}, 1, "GAUGE"},
		{"cframe_controller_cluster_controllers", []string{"state", "reachable"}, 1, "GAUGE"},
		{"cframe_controller_cluster_quorum", nil, 1, "GAUGE"},
		{"cframe_controller_cluster_leader", []string{"role", "store"}, 0, "GAUGE"},
	}
	for _, w := range want {
		v, ok := s.Value(w.name, w.labels...)
		if !ok || v != w.value || s.Type(w.name) != w.typ {
			t.Errorf("%s%v = %v (present %v, %s), want %v (%s)", w.name, w.labels, v, ok, s.Type(w.name), w.value, w.typ)
		}
	}
	if v, _ := s.Value("cframe_controller_snapshot_reply_bytes_total", "kind", "full_zstd"); v < 100 || v > 2000 {
		t.Errorf("sz-1's join took %v bytes, want a compressed set of 5 edges", v)
	}
	// Every cframe_controller_ family is checked above.
	checked := map[string]bool{"cframe_controller_snapshot_reply_bytes_total": true}
	for _, w := range want {
		checked[w.name] = true
	}
	for name := range s.Families {
		if len(name) > 17 && name[:17] == "cframe_controller" && !checked[name] {
			t.Errorf("family %s is not checked by this test", name)
		}
	}
	metricstest.Promtool(t, s)
}

// histogramSum is the sum of a histogram's observations.
func histogramSum(s metricstest.Scrape, name string) float64 {
	sum := 0.0
	if f := s.Families[name]; f != nil {
		for _, m := range f.Metric {
			sum += m.GetHistogram().GetSampleSum()
		}
	}
	return sum
}

// Off loopback /metrics, the page and its stream need the token, like the API.
func TestObservabilityKeepsTokenRules(t *testing.T) {
	cfg := testConfig(t)
	cfg.APIToken = "tok"
	r := start(t, cfg)
	for _, path := range []string{"/metrics", "/ui/", "/ui/app.js", api.PathTopologyStream} {
		for _, tt := range []struct {
			auth string
			code int
		}{{"", http.StatusUnauthorized}, {"Bearer nope", http.StatusUnauthorized}, {"Bearer tok", http.StatusOK}} {
			ctx, cancel := context.WithCancel(context.Background())
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
			req.RemoteAddr, req.TLS = "192.0.2.9:4000", &tls.ConnectionState{}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			if path == api.PathTopologyStream && tt.code == http.StatusOK {
				cancel() // the stream would run until the client leaves
			}
			r.http.Handler.ServeHTTP(rec, req)
			cancel()
			if rec.Code != tt.code {
				t.Errorf("GET %s from off loopback with %q: %d, want %d", path, tt.auth, rec.Code, tt.code)
			}
		}
	}
	// "/" sends a browser to the page.
	resp, err := http.Get(r.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/ui/" || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET / ended at %s: %d %s", resp.Request.URL, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
