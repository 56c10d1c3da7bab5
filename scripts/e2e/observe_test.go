package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/browser"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
	"github.com/cframe/cframe/scripts/cluster"
)

// What an operator sees, on the walkthrough's mesh with real agents: every
// edge's /metrics, the controller's, the audit trail replayed then
// followed, Graphviz, and the live topology page in Chromium.
func TestObservability(t *testing.T) {
	f := newFixture(t)
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	names := cluster.WalkthroughNames
	began := time.Now()
	f.converge("walkthrough, 3 edges", f.add(names...), sz, hk, gz)
	rev := f.current()
	f.appliedEverywhere(rev, names...)

	t.Run("edge /metrics: every family from a real scrape, promtool", func(t *testing.T) {
		for _, name := range names {
			var s metricstest.Scrape
			f.eventually(name+" probes both peers", func() error {
				s = f.scrapeEdge(name)
				if v, _ := s.Value("cframe_edge_peer_up"); v != 2 {
					return fmt.Errorf("%s: %v peers up", name, v)
				}
				if v, _ := s.Value("cframe_edge_peer_udp_up"); v != 2 {
					return fmt.Errorf("%s: %v peers answer the UDP probes", name, v)
				}
				return nil
			})
			metricstest.Promtool(t, s)
			want := []struct {
				name   string
				labels []string
				ok     func(float64) bool
				want   string
			}{
				{"cframe_build_info", []string{"program", "cframe-edge"}, eq(1), "1"},
				{"cframe_edge_peers", nil, eq(2), "2"},
				{"cframe_edge_applied_revision", nil, eq(float64(rev)), "the current revision"},
				{"cframe_edge_controller_revision", nil, eq(float64(rev)), "the current revision"},
				{"cframe_edge_revision_lag", nil, eq(0), "0"},
				{"cframe_edge_controller_connected", nil, eq(1), "1"},
				{"cframe_edge_reconcile_duration_seconds", nil, atLeast(1), "reconciles"},
				{"cframe_edge_update_duration_seconds", nil, atLeast(0), "present"},
				{"cframe_edge_kernel_changes_total", []string{"kind", "route"}, atLeast(2), "two routes"},
				{"cframe_edge_drift_repairs_total", nil, atLeast(0), "present"},
				{"cframe_edge_reconcile_errors_total", nil, eq(0), "0"},
				{"cframe_edge_conflicts", nil, eq(0), "0"},
				{"cframe_edge_checksum_setting", []string{"setting", "fast", "evidence", "default"}, eq(1), "1"},
				{"cframe_edge_checksum_switches_total", nil, eq(0), "0"},
				// Encrypted where both kernels have WireGuard, else plaintext.
				{"cframe_edge_links", []string{"state", "no_path"}, eq(0), "0"},
				{"cframe_edge_peer_udp_up", nil, eq(2), "both peers answer the UDP probes"},
				// The convergence pings crossed the tunnel both ways.
				{"cframe_edge_tunnel_receive_bytes_total", []string{"device", "cframe0"}, atLeast(1), "traffic"},
				{"cframe_edge_tunnel_transmit_bytes_total", []string{"device", "cframe0"}, atLeast(1), "traffic"},
				{"cframe_edge_tunnel_receive_packets_total", []string{"device", "cframe0"}, atLeast(1), "traffic"},
				{"cframe_edge_tunnel_transmit_packets_total", []string{"device", "cframe0"}, atLeast(1), "traffic"},
				{"cframe_edge_tunnel_receive_drops_total", []string{"device", "cframe0"}, atLeast(0), "present"},
				{"cframe_edge_tunnel_transmit_drops_total", []string{"device", "cframe0"}, atLeast(0), "present"},
				{"cframe_edge_tunnel_receive_errors_total", []string{"device", "cframe0"}, eq(0), "0"},
				{"cframe_edge_tunnel_transmit_errors_total", []string{"device", "cframe0"}, eq(0), "0"},
			}
			// Every other edge answers the probes through the tunnel.
			for _, peer := range names {
				if peer == name {
					continue
				}
				l := []string{"peer", peer, "path", "tunnel"}
				want = append(want, []struct {
					name   string
					labels []string
					ok     func(float64) bool
					want   string
				}{
					{"cframe_edge_peer_up", l, eq(1), "1"},
					{"cframe_edge_peer_rtt_seconds", l, func(v float64) bool { return v > 0 && v < 1 }, "a round-trip time"},
					{"cframe_edge_peer_state_since_timestamp_seconds", l, func(v float64) bool { return v > float64(began.Unix()-1) }, "since the test began"},
					{"cframe_edge_peer_probes_sent_total", l, atLeast(1), "probes"},
					{"cframe_edge_peer_probes_received_total", l, atLeast(1), "answers"},
				}...)
			}
			// Per WireGuard peer, where this kernel has WireGuard.
			checked := map[string]bool{"cframe_edge_wireguard_handshake_age_seconds": true,
				"cframe_edge_wireguard_receive_bytes_total": true, "cframe_edge_wireguard_transmit_bytes_total": true}
			for _, w := range want {
				checked[w.name] = true
				if v, ok := s.Value(w.name, w.labels...); !ok || !w.ok(v) {
					t.Errorf("%s: %s%v = %v (present %v), want %s", name, w.name, w.labels, v, ok, w.want)
				}
			}
			for fam := range s.Families {
				if strings.HasPrefix(fam, "cframe_edge_") && !checked[fam] {
					t.Errorf("family %s is not checked by this test", fam)
				}
			}
		}
	})

	t.Run("edge /metrics follow drift, changes and the controller", func(t *testing.T) {
		before := f.scrapeEdge("gz-3")
		// Drift: a hand-deleted route is repaired and counted.
		if out, err := f.net.Exec(gz.Edge, "ip", "route", "del", sz.CIDR.String(), "proto", "207"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		f.eventually("gz-3 counts the drift repair", func() error {
			s := f.scrapeEdge("gz-3")
			if d, r := delta(before, s, "cframe_edge_drift_repairs_total"), delta(before, s, "cframe_edge_kernel_changes_total", "kind", "route"); d < 1 || r < 1 {
				return fmt.Errorf("drift repairs +%v, route changes +%v", d, r)
			}
			return nil
		})
		// A change of the edge set is an update on every edge.
		spec := f.edges["hk-1"].Spec()
		spec.Comment = "metrics"
		res, err := f.c.API.Add(f.ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(res.Revision, names...)
		f.eventually("gz-3 reports the update", func() error {
			s := f.scrapeEdge("gz-3")
			if v, _ := s.Value("cframe_edge_applied_revision"); v != float64(res.Revision) {
				return fmt.Errorf("applied revision %v, want %d", v, res.Revision)
			}
			if delta(before, s, "cframe_edge_update_duration_seconds") < 1 {
				return fmt.Errorf("no update timed")
			}
			return nil
		})
		// Without the controller the agent says so, and recovers.
		f.c.StopController()
		f.eventually("gz-3 sees the controller gone", func() error {
			if v, _ := f.scrapeEdge("gz-3").Value("cframe_edge_controller_connected"); v != 0 {
				return fmt.Errorf("controller_connected = %v", v)
			}
			return nil
		})
		if err := f.c.StartController(); err != nil {
			t.Fatal(err)
		}
		f.eventually("gz-3 reconnects", func() error {
			if v, _ := f.scrapeEdge("gz-3").Value("cframe_edge_controller_connected"); v != 1 {
				return fmt.Errorf("controller_connected = %v", v)
			}
			return nil
		})
		f.appliedEverywhere(res.Revision, names...)
	})

	t.Run("controller /metrics from its namespace, promtool", func(t *testing.T) {
		var s metricstest.Scrape
		f.eventually("the controller counts three edges online, three links up", func() error {
			var err error
			if s, err = metricstest.Get(f.c.API.HTTP, f.c.API.Base+"/metrics"); err != nil {
				return err
			}
			on, _ := s.Value("cframe_controller_edges_online")
			up, _ := s.Value("cframe_controller_links", "state", "up")
			if on != 3 || up != 3 {
				return fmt.Errorf("edges online %v, links up %v", on, up)
			}
			return nil
		})
		metricstest.Promtool(t, s)
	})

	t.Run("cframectl events --since replays the kept events, then follows", func(t *testing.T) {
		evLog := filepath.Join(t.TempDir(), "events.log")
		p, err := f.net.Start(sz.Edge, evLog, filepath.Join(bin, "cframectl"), "events", "--since", "1h", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop(time.Second)
		f.eventually("the adds and the update replayed", func() error {
			return eventsIn(evLog, began, "added sz-1", "added hk-1", "added gz-3", "updated hk-1")
		})
		if _, err := f.c.API.Add(f.ctx, f.edges["hk-1"].Spec()); err != nil { // an update, live
			t.Fatal(err)
		}
		f.eventually("the update followed live", func() error {
			return eventsIn(evLog, began, "added sz-1", "added hk-1", "added gz-3", "updated hk-1", "updated hk-1")
		})
		f.appliedEverywhere(f.current(), names...)
	})

	t.Run("cframectl topology and -o dot show configuration and probe state", func(t *testing.T) {
		var out string
		f.eventually("the topology shows probed links", func() (err error) {
			out, err = f.c.Ctl("topology")
			if err == nil && !regexpLine(out, `gz-3 <-> sz-1\s+up\s+applied\s+up\s+[0-9.]+ms\s`) {
				err = fmt.Errorf("topology:\n%s", out)
			}
			return err
		})
		out, err := f.c.Ctl("topology", "-o", "dot")
		if err != nil || !strings.HasPrefix(out, "graph cframe {") || !strings.Contains(out, `"gz-3" -- "sz-1" [color=forestgreen, style=solid, label="`) {
			t.Fatalf("topology -o dot: %v\n%s", err, out)
		}
	})

	t.Run("topology page in Chromium: edges, links, a live state change", func(t *testing.T) {
		if _, err := browser.Path(); err != nil {
			t.Skip("chromium not installed (Debian package chromium; scripts/deps.sh installs it)")
		}
		b, err := browser.Start(browser.Options{NetNS: sz.Edge, Dir: t.TempDir(), Width: 1366, Height: 768})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		// "/" on the API address leads to the page (loopback: no token).
		if err := b.Navigate(fmt.Sprintf("http://127.0.0.1:%d/", cluster.APIPort)); err != nil {
			t.Fatal(err)
		}
		if err := b.WaitFor(15*time.Second, pageShows(names, map[string]string{"gz-3|hk-1": "up", "gz-3|sz-1": "up", "hk-1|sz-1": "up"}, "online")); err != nil {
			t.Fatal(err)
		}
		shot := func(name string) {
			p := filepath.Join(t.ArtifactDir(), name)
			if err := b.Screenshot(p); err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot: %s", p)
		}
		shot("topology-3-edges.png")
		if err := b.Eval(`window.__marker = 42`, nil); err != nil {
			t.Fatal(err)
		}
		// Live state changes, without a reload. gz-3's agent stops: its row
		// goes offline, but its links stay up — the kernel keeps
		// forwarding, and the probes through the tunnel say so.
		e := f.edges["gz-3"]
		e.Proc().Stop(5 * time.Second)
		defer func() {
			if e.Proc() != nil {
				select {
				case <-e.Proc().Done():
					if err := e.Start(); err != nil {
						t.Error(err)
					}
				default:
				}
			}
		}()
		if err := b.WaitFor(bus.OfflineAfter+10*time.Second, `(() => {
			const row = document.querySelector("#edges tr[data-edge='gz-3']");
			if (!row || row.dataset.state !== "offline") return "gz-3's row: " + (row && row.dataset.state);
			for (const k of ["gz-3|hk-1", "gz-3|sz-1"]) {
				const l = document.querySelector("#graph line[data-link='" + k + "']");
				if (!l || l.dataset.state !== "up" || !l.textContent.includes("tunnel still answers")) return k + ": " + (l && l.dataset.state + " " + l.textContent);
			}
			return window.__marker === 42 ? "" : "the page was reloaded";
		})()`); err != nil {
			t.Fatal(err)
		}
		shot("topology-3-edges-gz-3-agent-stopped.png")
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(f.current(), names...)
		// Now the data plane fails while both ends run the current
		// revision: gz-3 drops the tunnel's packets before cframe's rules
		// see them (the raw table, which cframe does not touch). Its links
		// go down, saying since when and why; the configuration stays
		// applied.
		drop := []string{"PREROUTING", "-p", "udp", "--dport", fmt.Sprint(cluster.TunnelPort), "-j", "DROP"}
		if out, err := f.net.Exec(gz.Edge, append([]string{"iptables", "-t", "raw", "-I"}, drop...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		cut := time.Now()
		defer f.net.Exec(gz.Edge, append([]string{"iptables", "-t", "raw", "-D"}, drop...)...)
		if err := b.WaitFor(15*time.Second, `(() => {
			const row = document.querySelector("#edges tr[data-edge='gz-3']");
			if (!row || row.dataset.state !== "online") return "gz-3's row: " + (row && row.dataset.state);
			for (const k of ["gz-3|hk-1", "gz-3|sz-1"]) {
				const l = document.querySelector("#graph line[data-link='" + k + "']");
				if (!l || l.dataset.state !== "down" || l.dataset.probe !== "down") return k + ": " + (l && l.dataset.state + "/" + l.dataset.probe);
				const p = document.querySelector("#problems li[data-problem='" + k + "']");
				if (!p || !p.textContent.includes("fail") || !p.textContent.includes("since")) return k + " in the list: " + (p && p.textContent);
			}
			const ok = document.querySelector("#graph line[data-link='hk-1|sz-1']");
			if (!ok || ok.dataset.state !== "up") return "hk-1|sz-1: " + (ok && ok.dataset.state);
			return window.__marker === 42 ? "" : "the page was reloaded";
		})()`); err != nil {
			t.Fatal(err)
		}
		t.Logf("the page showed gz-3's links down %s after the tunnel was cut", time.Since(cut).Round(time.Millisecond))
		shot("topology-3-edges-gz-3-tunnel-cut.png")
		// The API says the same, with the configuration applied beside.
		tp, err := f.c.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range tp.Links {
			if l.A == "gz-3" && (l.State != api.LinkDown || l.Config != api.ConfigApplied || l.Probe != api.ProbeDown || l.Since == nil || l.Since.Before(cut.Add(-time.Second))) {
				t.Errorf("link %+v, want down with the configuration applied, since the cut", l)
			}
		}
		if out, err := f.c.Ctl("topology"); err != nil || !regexpLine(out, `gz-3 <-> sz-1\s+down\s+applied\s+down\s+-\s+\S+\s+\S+\s+probes from`) {
			t.Errorf("topology while the tunnel is cut: %v\n%s", err, out)
		}
		if out, err := f.net.Exec(gz.Edge, append([]string{"iptables", "-t", "raw", "-D"}, drop...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if err := b.WaitFor(15*time.Second, pageShows(names, map[string]string{"gz-3|hk-1": "up", "gz-3|sz-1": "up", "hk-1|sz-1": "up"}, "online")); err != nil {
			t.Fatal(err)
		}
	})
}

// pageShows is a check for browser.WaitFor: every edge has a row in state,
// every link its line in the given state.
func pageShows(edges []string, links map[string]string, state string) string {
	js, _ := json.Marshal(map[string]any{"edges": edges, "links": links, "state": state})
	return `((want) => {
		for (const e of want.edges) {
			const row = document.querySelector("#edges tr[data-edge='" + e + "']");
			if (!row || row.dataset.state !== want.state) return e + "'s row: " + (row && row.dataset.state);
		}
		for (const [k, st] of Object.entries(want.links)) {
			const l = document.querySelector("#graph line[data-link='" + k + "']");
			if (!l || l.dataset.state !== st) return k + ": " + (l && l.dataset.state);
		}
		if (document.querySelectorAll("#graph line[data-link]").length !== Object.keys(want.links).length) return "extra links";
		return "";
	})(` + string(js) + `)`
}

// current is the controller's revision now.
func (f *fixture) current() uint64 {
	f.t.Helper()
	t, err := f.c.API.Topology(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return t.Revision
}

func (f *fixture) eventually(what string, cond func() error) {
	f.t.Helper()
	if err := topo.Eventually(20*time.Second, cond); err != nil {
		f.t.Fatalf("%s: %v", what, err)
	}
}

// scrapeEdge scrapes an agent's /metrics from inside its namespace.
func (f *fixture) scrapeEdge(name string) metricstest.Scrape {
	f.t.Helper()
	e := f.edges[name]
	s, err := metricstest.Get(e.HTTP(), e.MetricsURL())
	if err != nil {
		f.t.Fatalf("scrape %s: %v", name, err)
	}
	return s
}

func eq(want float64) func(float64) bool      { return func(v float64) bool { return v == want } }
func atLeast(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }

// delta is how much a series grew between two scrapes.
func delta(a, b metricstest.Scrape, name string, labels ...string) float64 {
	va, _ := a.Value(name, labels...)
	vb, _ := b.Value(name, labels...)
	return vb - va
}

// eventsIn checks that the JSON lines of `cframectl events` after since are
// exactly want ("kind edge"), in stream order, each naming its API client.
func eventsIn(path string, since time.Time, want ...string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var got []string
	var last uint64
	for _, line := range strings.Split(string(b), "\n") {
		var e bus.Event
		if json.Unmarshal([]byte(line), &e) != nil || e.Time.Before(since) || (e.Kind != bus.EventEdgeAdded && e.Kind != bus.EventEdgeUpdated) {
			continue
		}
		if e.Seq <= last || e.Actor == nil || !strings.HasPrefix(e.Actor.Remote, "127.0.0.1:") {
			return fmt.Errorf("event %s out of order or without its client:\n%s", line, b)
		}
		last = e.Seq
		got = append(got, e.Kind+" "+e.Edge)
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		return fmt.Errorf("events %v, want %v:\n%s", got, want, b)
	}
	return nil
}

// Off loopback the page keeps the API's rules in a real browser: plain HTTP
// is refused, HTTPS without the token leads to the sign-in form, a wrong
// token is refused, the right one opens the live page (its stream included).
func TestTopologyPageOffLoopback(t *testing.T) {
	topo.SkipUnlessRoot(t, "ping")
	if _, err := browser.Path(); err != nil {
		t.Skip("chromium not installed (Debian package chromium; scripts/deps.sh installs it)")
	}
	n, err := topo.New(topo.UniquePrefix("cfo"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tp, err := topo.Build(n, topo.Walkthrough()[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	home, away := tp.Sites()[0], tp.Sites()[1]
	c, err := cluster.Start(tp, home, cluster.Options{Bin: bin, Dir: runDir(t), APIToken: "page-token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.API.Add(context.Background(), edgeset.Spec{Name: "hk-1", HostAddr: "203.0.113.10:58423", CIDR: "172.31.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	// The controller's certificate is self-signed (trusted through the join
	// secret by cframe's own clients); a browser is told to accept it.
	b, err := browser.Start(browser.Options{NetNS: away.Edge, Dir: t.TempDir(), Args: []string{"--ignore-certificate-errors"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	body := `document.body ? document.body.innerText : ""`
	if err := b.Navigate("http://" + c.APIAddr() + "/ui/"); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(10*time.Second, `(`+body+`).includes("plain HTTP is answered on loopback only") ? "" : "plain HTTP: " + `+body); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/ui/", "/metrics", "/"} {
		if err := b.Navigate("https://" + c.APIAddr() + path); err != nil {
			t.Fatal(err)
		}
		if err := b.WaitFor(10*time.Second, `location.pathname === "/ui/login" && document.querySelector("input[name=token]") ? "" : location.href + ": " + `+body); err != nil {
			t.Fatalf("%s without the token: %v", path, err)
		}
	}
	signIn := func(token string) {
		t.Helper()
		js, _ := json.Marshal(token)
		if err := b.Eval(`document.querySelector("input[name=token]").value = `+string(js)+`; document.querySelector("form").submit()`, nil); err != nil {
			t.Fatal(err)
		}
	}
	signIn("wrong")
	if err := b.WaitFor(10*time.Second, `(`+body+`).includes("That is not the API token") ? "" : "after a wrong token: " + `+body); err != nil {
		t.Fatal(err)
	}
	signIn("page-token")
	if err := b.WaitFor(15*time.Second, `(() => {
		if (location.pathname !== "/ui/") return "at " + location.href;
		if (document.querySelector("#conn").dataset.state !== "open") return "stream: " + document.querySelector("#conn").textContent;
		return document.querySelector("#edges tr[data-edge='hk-1']") ? "" : "no hk-1 row";
	})()`); err != nil {
		t.Fatal(err)
	}
	// The session reads; it cannot change anything.
	var code int
	if err := b.Eval(`fetch("/api-service/v1/edge/del", {method: "POST", body: '{"name":"hk-1"}'}).then(r => r.status)`, &code); err != nil {
		t.Fatal(err)
	}
	if code != 401 {
		t.Fatalf("a change with the page's session: HTTP %d, want 401", code)
	}
	if list, err := c.API.List(context.Background()); err != nil || len(list) != 1 {
		t.Fatalf("edge list after the refused change: %v, %v", list, err)
	}
}

// siteMetrics checks site sz's metrics with active gateway active and
// standby gateway standby: each gateway's role, hk-1's probes of both, the
// controller's view of the site.
func (f *haFixture) siteMetrics(active, standby string) error {
	for gw, role := range map[string]string{active: bus.RoleActive, standby: bus.RoleStandby} {
		s, err := metricstest.Get(f.edges[gw].HTTP(), f.edges[gw].MetricsURL())
		if err != nil {
			return err
		}
		for _, r := range []string{bus.RoleActive, bus.RoleStandby} {
			want := 0.0
			if r == role {
				want = 1
			}
			if v, ok := s.Value("cframe_edge_gateway_role", "site", "sz", "role", r); !ok || v != want {
				return fmt.Errorf("%s: cframe_edge_gateway_role{site=sz,role=%s} = %v (present %v), want %v", gw, r, v, ok, want)
			}
		}
	}
	hk := f.edges["hk-1"]
	s, err := metricstest.Get(hk.HTTP(), hk.MetricsURL())
	if err != nil {
		return err
	}
	for _, gw := range []string{active, standby} {
		if v, _ := s.Value("cframe_edge_peer_up", "peer", gw, "path", "tunnel"); v != 1 {
			return fmt.Errorf("hk-1: cframe_edge_peer_up{peer=%s} = %v", gw, v)
		}
	}
	c, err := metricstest.Get(f.c.API.HTTP, f.c.API.Base+"/metrics")
	if err != nil {
		return err
	}
	if v, _ := c.Value("cframe_controller_site_active_gateway", "site", "sz", "edge", active); v != 1 {
		return fmt.Errorf("controller: cframe_controller_site_active_gateway{site=sz,edge=%s} = %v", active, v)
	}
	if v, _ := c.Value("cframe_controller_site_gateways", "site", "sz", "state", "online"); v != 2 {
		return fmt.Errorf("controller: cframe_controller_site_gateways{site=sz,state=online} = %v", v)
	}
	return nil
}
