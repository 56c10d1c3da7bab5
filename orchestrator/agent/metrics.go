package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/metrics"
)

// agentMetrics are the edge agent's Prometheus families, served on
// edge.toml's metrics_addr. The agent's loop updates them; scrapes read
// them from their own goroutines.
type agentMetrics struct {
	reg           *prometheus.Registry
	peers         prometheus.Gauge
	applied       prometheus.Gauge
	latest        prometheus.Gauge
	lag           prometheus.Gauge
	reconcile     prometheus.Histogram
	update        prometheus.Histogram
	kernelChanges *prometheus.CounterVec
	driftRepairs  prometheus.Counter
	errors        prometheus.Counter
	conflicts     prometheus.Gauge
	// checksumSetting is 1 for the VXLAN device's checksum setting in
	// force and its evidence (checksum.go); checksumSwitches counts the
	// agent's changes of it.
	checksumSetting  *prometheus.GaugeVec
	checksumSwitches prometheus.Counter
	linkStates       *prometheus.GaugeVec
	// wgNames names the WireGuard peers by edge (wireGuardCollector).
	wgNames   atomic.Pointer[map[wgtypes.Key]string]
	connected atomic.Bool
	// ha is the agent's prober and elections, once started.
	ha atomic.Pointer[haRunner]
}

func newAgentMetrics(k *netcfg.Kernel) *agentMetrics {
	m := &agentMetrics{
		reg: metrics.NewRegistry("cframe-edge"),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cframe_edge_peers", Help: "Remote edges this edge has a tunnel to in its applied edge set."}),
		applied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cframe_edge_applied_revision", Help: "The edge-set revision the kernel matches."}),
		latest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cframe_edge_controller_revision", Help: "The controller's edge-set revision as last announced to this edge."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cframe_edge_revision_lag", Help: "Revisions the kernel is behind the controller (0 when current)."}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cframe_edge_reconcile_duration_seconds", Buckets: metrics.Seconds,
			Help: "Time of a full reconcile: read every object cframe owns, plan, apply (drift repair, periodic resync, restart)."}),
		update: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cframe_edge_update_duration_seconds", Buckets: metrics.Seconds,
			Help: "Time of an update: apply a change of the edge set reading only the changed peers' objects."}),
		kernelChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cframe_edge_kernel_changes_total", Help: "Kernel objects created, changed or removed, by object kind."}, []string{"kind"}),
		driftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cframe_edge_drift_repairs_total", Help: "Reconciles that found the kernel changed by someone else while the edge set was unchanged, and repaired it."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cframe_edge_reconcile_errors_total", Help: "Reconciles and updates that failed (the error is in the edge's status)."}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cframe_edge_conflicts", Help: "Foreign kernel objects overlapping the mesh, left alone (listed in the edge's status)."}),
		checksumSetting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cframe_edge_checksum_setting",
			Help: "1 for the VXLAN device's checksum setting in force (fast: transmit checksum offload on, zero outer UDP checksum; safe: offload off, outer checksum on) and why: default, config, udp-fails-icmp-passes."},
			[]string{"setting", "evidence"}),
		checksumSwitches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cframe_edge_checksum_switches_total", Help: "Changes of the checksum setting the agent made on the probes' evidence (checksum_offload = auto)."}),
		linkStates: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cframe_edge_links", Help: "Links to the other gateways by how they run: encrypted (kernel WireGuard), stale (encrypted, no handshake for 3 minutes), plaintext, or no_path (encryption required, the peer cannot encrypt)."}, []string{"state"}),
	}
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cframe_edge_controller_connected", Help: "1 while the agent is connected to a controller, else 0.",
	}, func() float64 {
		if m.connected.Load() {
			return 1
		}
		return 0
	})
	m.reg.MustRegister(m.peers, m.applied, m.latest, m.lag, m.reconcile, m.update, m.kernelChanges, m.driftRepairs, m.errors, m.conflicts, m.checksumSetting, m.checksumSwitches, m.linkStates, connected,
		tunnelCollector{k}, haCollector{&m.ha}, wireGuardCollector{k, &m.wgNames})
	return m
}

// links records how many links run in each state.
func (m *agentMetrics) links(counts map[string]int) {
	for _, s := range []string{"encrypted", "stale", "plaintext", "no_path"} {
		m.linkStates.WithLabelValues(s).Set(float64(counts[s]))
	}
}

// converged records one targeted update or full reconcile: how long it
// took, what it changed, whether it failed, and whether it repaired drift.
func (m *agentMetrics) converged(targeted, drift bool, took time.Duration, res netcfg.Result, err error) {
	if targeted {
		m.update.Observe(took.Seconds())
	} else {
		m.reconcile.Observe(took.Seconds())
	}
	for kind, n := range res.Kinds {
		m.kernelChanges.WithLabelValues(kind).Add(float64(n))
	}
	if drift && err == nil && len(res.Changes) > 0 {
		m.driftRepairs.Inc()
	}
	if err != nil {
		m.errors.Inc()
	}
	m.conflicts.Set(float64(len(res.Conflicts)))
}

// checksum records the checksum setting in force.
func (m *agentMetrics) checksum(d checksumDecision) {
	m.checksumSetting.Reset()
	m.checksumSetting.WithLabelValues(string(d.Setting), d.Evidence).Set(1)
}

// revisions records the applied and the announced revision and the peers.
func (m *agentMetrics) revisions(applied, latest uint64, peers int) {
	m.applied.Set(float64(applied))
	m.latest.Set(float64(latest))
	m.lag.Set(float64(max(latest, applied) - applied))
	m.peers.Set(float64(peers))
}

// tunnelCollector reads the tunnel devices' counters at scrape time.
type tunnelCollector struct{ k *netcfg.Kernel }

var tunnelDescs = []struct {
	d   *prometheus.Desc
	get func(netcfg.DeviceStats) uint64
}{
	{prometheus.NewDesc("cframe_edge_tunnel_receive_bytes_total", "Bytes the tunnel device received (decapsulated), by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.RxBytes }},
	{prometheus.NewDesc("cframe_edge_tunnel_transmit_bytes_total", "Bytes the tunnel device sent (before encapsulation), by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.TxBytes }},
	{prometheus.NewDesc("cframe_edge_tunnel_receive_packets_total", "Packets the tunnel device received, by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.RxPackets }},
	{prometheus.NewDesc("cframe_edge_tunnel_transmit_packets_total", "Packets the tunnel device sent, by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.TxPackets }},
	{prometheus.NewDesc("cframe_edge_tunnel_receive_drops_total", "Received packets the tunnel device dropped, by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.RxDropped }},
	{prometheus.NewDesc("cframe_edge_tunnel_transmit_drops_total", "Packets to send that the tunnel device dropped (no FDB entry, no route to the peer, ...), by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.TxDropped }},
	{prometheus.NewDesc("cframe_edge_tunnel_receive_errors_total", "Receive errors of the tunnel device, by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.RxErrors }},
	{prometheus.NewDesc("cframe_edge_tunnel_transmit_errors_total", "Transmit errors of the tunnel device, by device.", []string{"device"}, nil),
		func(s netcfg.DeviceStats) uint64 { return s.TxErrors }},
}

func (tunnelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, t := range tunnelDescs {
		ch <- t.d
	}
}

func (c tunnelCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.k.TunnelStats()
	if err != nil {
		for _, t := range tunnelDescs {
			ch <- prometheus.NewInvalidMetric(t.d, err)
		}
		return
	}
	for _, s := range stats {
		for _, t := range tunnelDescs {
			ch <- prometheus.MustNewConstMetric(t.d, prometheus.CounterValue, float64(t.get(s)), s.Name)
		}
	}
}

// haCollector reads the data-plane probes and the gateway role at scrape
// time.
type haCollector struct{ ha *atomic.Pointer[haRunner] }

var (
	descPeerUp = prometheus.NewDesc("cframe_edge_peer_up",
		"1 while the remote gateway answers the probes sent to it (through the tunnel; path=lan: the own site's other gateways on the LAN), else 0.", []string{"peer", "path"}, nil)
	descPeerRTT = prometheus.NewDesc("cframe_edge_peer_rtt_seconds",
		"Round-trip time of the last probe the gateway answered.", []string{"peer", "path"}, nil)
	descPeerSince = prometheus.NewDesc("cframe_edge_peer_state_since_timestamp_seconds",
		"When the gateway's up state last changed (or probing began), Unix time.", []string{"peer", "path"}, nil)
	descProbesSent = prometheus.NewDesc("cframe_edge_peer_probes_sent_total",
		"Probes sent to the gateway; with cframe_edge_peer_probes_received_total, the loss.", []string{"peer", "path"}, nil)
	descProbesReceived = prometheus.NewDesc("cframe_edge_peer_probes_received_total",
		"Probe answers received from the gateway.", []string{"peer", "path"}, nil)
	descPeerUDPUp = prometheus.NewDesc("cframe_edge_peer_udp_up",
		"1 while the remote gateway answers the UDP probes through the tunnel (the checksum setting's evidence, and after a fall back its confirmation; in an agent that started in the fast setting of checksum_offload = auto), else 0.", []string{"peer"}, nil)
	descRole = prometheus.NewDesc("cframe_edge_gateway_role",
		"For a gateway of a site: 1 for its current role (active or standby), 0 for the other.", []string{"site", "role"}, nil)
)

func (haCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeerUp, descPeerRTT, descPeerSince, descProbesSent, descProbesReceived, descPeerUDPUp, descRole} {
		ch <- d
	}
}

func (c haCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.ha.Load()
	if h == nil {
		return
	}
	if h.pr != nil {
		for name, st := range h.pr.States() {
			t := ha.TargetOf(name)
			peer, path := t.Gateway, "tunnel"
			switch t.Kind {
			case ha.TargetLAN:
				path = "lan"
			case ha.TargetForward:
				continue // the HA engine's own checks (forwarding through a gateway)
			}
			up := 0.0
			if st.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descPeerUp, prometheus.GaugeValue, up, peer, path)
			ch <- prometheus.MustNewConstMetric(descPeerRTT, prometheus.GaugeValue, st.RTT.Seconds(), peer, path)
			ch <- prometheus.MustNewConstMetric(descPeerSince, prometheus.GaugeValue, float64(st.Since.UnixNano())/1e9, peer, path)
			ch <- prometheus.MustNewConstMetric(descProbesSent, prometheus.CounterValue, float64(st.Sent), peer, path)
			ch <- prometheus.MustNewConstMetric(descProbesReceived, prometheus.CounterValue, float64(st.Received), peer, path)
		}
	}
	if h.udp != nil {
		for name, st := range h.udp.States() {
			if !st.Known {
				continue
			}
			up := 0.0
			if st.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descPeerUDPUp, prometheus.GaugeValue, up, name)
		}
	}
	if site := h.View().Site; site != nil {
		for _, role := range []string{bus.RoleActive, bus.RoleStandby} {
			v := 0.0
			if site.Role == role {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, v, site.Name, role)
		}
	}
}

// serveMetrics serves /metrics on addr until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics_addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(metrics.Path, metrics.Handler(a.metrics.reg))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server stopped", "err", err)
		}
	}()
	a.log.Info("serving metrics", "addr", ln.Addr().String()+metrics.Path)
	return nil
}

// wireGuardCollector reads the WireGuard peers' handshakes and traffic at
// scrape time, naming each peer by the edge its key is pinned for.
type wireGuardCollector struct {
	k *netcfg.Kernel
	// names maps public keys to edge names (set by followLinks).
	names *atomic.Pointer[map[wgtypes.Key]string]
}

var (
	wgHandshakeDesc = prometheus.NewDesc("cframe_edge_wireguard_handshake_age_seconds",
		"Seconds since the latest WireGuard handshake with the peer (absent: none yet).", []string{"peer"}, nil)
	wgRxDesc = prometheus.NewDesc("cframe_edge_wireguard_receive_bytes_total", "Bytes received from the peer over WireGuard.", []string{"peer"}, nil)
	wgTxDesc = prometheus.NewDesc("cframe_edge_wireguard_transmit_bytes_total", "Bytes sent to the peer over WireGuard.", []string{"peer"}, nil)
)

func (c wireGuardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- wgHandshakeDesc
	ch <- wgRxDesc
	ch <- wgTxDesc
}

func (c wireGuardCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.k.WireGuardStats("")
	if err != nil {
		return // no WireGuard here
	}
	var names map[wgtypes.Key]string
	if p := c.names.Load(); p != nil {
		names = *p
	}
	for _, s := range stats {
		peer, ok := names[s.PublicKey]
		if !ok {
			peer = s.PublicKey.String()
		}
		if !s.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(wgHandshakeDesc, prometheus.GaugeValue, time.Since(s.LastHandshake).Seconds(), peer)
		}
		ch <- prometheus.MustNewConstMetric(wgRxDesc, prometheus.CounterValue, float64(s.RxBytes), peer)
		ch <- prometheus.MustNewConstMetric(wgTxDesc, prometheus.CounterValue, float64(s.TxBytes), peer)
	}
}
