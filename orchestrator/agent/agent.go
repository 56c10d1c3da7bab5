// Package agent is the edge agent: it joins the bus, follows the edge set
// (snapshot, then revision-linked deltas), turns it into a desired kernel
// state (package mesh) and has netcfg make the kernel match — on every
// change, on netlink drift events, and every ResyncInterval. Beside it the
// HA runner (ha.go) probes the data plane and takes part in the sites'
// elections; each decision is one more change the kernel follows. It
// reports status to the controller and keeps the last edge set and claims
// in its state_dir so a gateway that reboots while the controller is down
// restores the mesh at once. It chooses the VXLAN device's checksum
// setting from what the probes see (checksum.go) and keeps that choice
// there too.
//
// The agent never forwards a packet, and stopping it leaves the kernel state
// in place: only Cleanup removes it.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/atomicfile"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/mesh"
	"github.com/cframe/cframe/orchestrator/metrics"
)

// ResyncInterval is how often the agent re-reads the kernel to repair drift
// that raises no netlink event (iptables chains flushed by hand).
const ResyncInterval = 2 * time.Second

// driftSettle coalesces a burst of netlink events into one reconcile.
const driftSettle = 20 * time.Millisecond

// Agent is one edge's agent.
type Agent struct {
	cfg    config.Edge
	log    *slog.Logger
	local  mesh.Local
	kernel *netcfg.Kernel
	nc     *nats.Conn
	follow *bus.Follower
	status bus.Status // last reported
	// report fires when a changed status is due (see bus.StatusJitter).
	report  *time.Timer
	pending bool
	// ha runs the prober and the sites' elections (nil in ReconcileOnce);
	// roles is the view of it the kernel was last made to match.
	ha    *haRunner
	roles haView
	// checksum chooses the VXLAN device's checksum setting (checksum.go);
	// local.Checksum is its decision.
	checksum *checksumChooser
	metrics  *agentMetrics
	// trust is how the controller's certificate is verified.
	trust bus.Trust
	// refusedMu guards refused: the last refusal logged, so a controller
	// that keeps failing verification is logged once, not every retry.
	refusedMu sync.Mutex
	refused   string
	// links is how each link that does not run encrypted runs, as last
	// logged (mesh.Link.String).
	links map[string]string
	// encryptedSince is when each encrypted link was first seen so (the
	// reference of its handshake timeout before a first handshake).
	encryptedSince map[string]time.Time
	// rotating is the WireGuard key rotation under way (rotate.go), nil
	// for none; rotateDeferred: a staged one waits for the controller
	// (said once).
	rotating       *rotation
	rotateDeferred bool
}

// New checks that the kernel can do the configured mode and prepares the agent.
func New(cfg config.Edge, log *slog.Logger) (*Agent, error) {
	port, err := config.ListenPort(cfg.ListenAddr)
	if err != nil {
		return nil, err
	}
	mode := netcfg.Mode(cfg.Mode)
	if err := netcfg.Supported(mode); err != nil {
		return nil, err
	}
	local := mesh.Local{Name: cfg.Name, Mode: mode, Device: cfg.Device, MTU: cfg.MTU, Port: port, Masquerade: cfg.Masquerade}
	if cfg.LocalAddr != "" {
		local.LocalAddr = netip.MustParseAddr(cfg.LocalAddr) // checked by config.LoadEdge
	}
	trust := bus.Trust{Secret: cfg.Secret}
	if cfg.ControllerCA != "" {
		if trust.CA, err = bus.LoadCA(cfg.ControllerCA); err != nil {
			return nil, fmt.Errorf("controller_ca: %w", err)
		}
	}
	k, err := netcfg.New()
	if err != nil {
		return nil, err
	}
	how, err := wireGuard(cfg, &local)
	if err != nil {
		return nil, err
	}
	log.Info("data plane encryption: " + how)
	st := bus.Status{Name: cfg.Name, Mode: cfg.Mode, Version: metrics.Version, Encryption: local.Encryption}
	if local.WireGuardKey != (wgtypes.Key{}) {
		st.WireGuardKey = local.WireGuardKey.PublicKey().String()
	} else {
		st.Plaintext = how
	}
	a := &Agent{cfg: cfg, log: log, local: local, kernel: k, trust: trust, status: st, metrics: newAgentMetrics(k)}
	saved, err := loadChecksum(a.checksumPath())
	if err != nil {
		log.Warn("ignoring saved checksum setting", "err", err)
	}
	if cfg.ChecksumOffload != config.ChecksumAuto {
		saved = nil
	}
	a.checksum = newChecksumChooser(cfg.ChecksumOffload, saved, time.Now())
	a.local.Checksum = a.checksum.Decision().Setting
	if mode != netcfg.ModeGRE { // GRE has no UDP checksum to set
		a.metrics.checksum(a.checksum.Decision())
	}
	return a, nil
}

// refuse logs a controller that failed verification — once per address and
// reason until a connection succeeds. Nothing in the kernel changes.
func (a *Agent) refuse(addr string, why error) {
	a.refusedMu.Lock()
	defer a.refusedMu.Unlock()
	if key := addr + "\x00" + why.Error(); key != a.refused {
		a.refused = key
		a.log.Error("refused the controller; kernel state stays as applied", "controller", addr, "reason", why)
	}
}

// connected forgets the last refusal and logs the connection: the
// controller's address and name, and the cluster's other controllers the
// agent knows of.
func (a *Agent) connected(nc *nats.Conn, what string) {
	a.refusedMu.Lock()
	a.refused = ""
	a.refusedMu.Unlock()
	a.metrics.connected.Store(true)
	a.log.Info(what, "controller", nc.ConnectedAddr(), "server", nc.ConnectedServerName(), "cluster", nc.DiscoveredServers())
}

// connect joins the bus as this edge and subscribes to the edge set. With
// retry, it returns at once and keeps trying in the background (the
// controller may be down or start later). With several controllers the
// client connects to one at random, learns the cluster's other servers
// from it, and moves to a survivor at once when its controller is lost.
func (a *Agent) connect(retry bool, extra ...nats.Option) error {
	id, err := bus.LoadIdentity(filepath.Join(a.cfg.StateDir, "edge.nk"), a.cfg.Name)
	if err != nil {
		return err
	}
	trust := a.trust
	if retry {
		// A one-shot connect returns its refusal instead.
		trust.Refused = a.refuse
	}
	opts := append(append(id.EdgeOptions(a.cfg.Secret), bus.ClientOptions(trust, nil)...), extra...)
	if retry {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	url := bus.ControllerURLs(a.cfg.Controller)
	if a.nc, err = nats.Connect(url, opts...); err != nil {
		return fmt.Errorf("controller %s: %w", url, err)
	}
	if a.follow, err = bus.Follow(a.nc); err != nil {
		a.nc.Close()
	}
	return err
}

// Run follows the edge set and keeps the kernel in line until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.report = time.NewTimer(time.Hour)
	a.report.Stop()
	resync := make(chan struct{}, 1)
	poke := func() {
		select {
		case resync <- struct{}{}:
		default:
		}
	}
	if a.cfg.MetricsAddr != "" {
		if err := a.serveMetrics(ctx, a.cfg.MetricsAddr); err != nil {
			return err
		}
	}
	err := a.connect(true,
		nats.ConnectHandler(func(nc *nats.Conn) { a.connected(nc, "connected to controller"); poke() }),
		nats.ReconnectHandler(func(nc *nats.Conn) { a.connected(nc, "reconnected to controller"); poke() }),
		nats.DiscoveredServersHandler(func(nc *nats.Conn) {
			a.log.Info("learned the cluster's controllers", "servers", nc.DiscoveredServers())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			a.metrics.connected.Store(false)
			a.log.Warn("lost the controller; kernel state stays as applied", "err", err)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { a.log.Warn("bus error", "err", err) }),
	)
	if err != nil {
		return err
	}
	defer a.nc.Close()
	vxlan := a.local.Mode == netcfg.ModeVXLAN || a.local.Mode == ""
	watch := vxlan && a.checksum.Watching()
	if vxlan {
		d := a.checksum.Decision()
		a.log.Info("checksum setting", "setting", d.Setting, "evidence", d.Evidence, "detail", d.Detail, "checksum_offload", a.cfg.ChecksumOffload)
	}
	a.ha = startHA(a.cfg.Name, a.device(), a.cfg.Secret, a.claimsPath(), watch, a.log)
	a.metrics.ha.Store(a.ha)
	go a.ha.run(ctx)
	if _, err := a.nc.Subscribe(bus.SubjectClaims, func(m *nats.Msg) {
		var cs bus.Claims
		if err := bus.Decode(m, &cs); err != nil {
			a.log.Warn("ignored malformed claims", "err", err)
			return
		}
		a.ha.Relay(cs.Claims)
	}); err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SubjectClaims, err)
	}
	if snap, err := a.loadState(); err != nil {
		a.log.Warn("ignoring saved edge set", "err", err)
	} else if snap != nil {
		a.follow.Restore(*snap)
		a.setEdges()
		a.reconcile(fmt.Sprintf("restore saved edge set (revision %d)", snap.Revision))
	}
	if a.nc.IsConnected() {
		a.metrics.connected.Store(true)
		poke()
	}

	drift := make(chan string, 1)
	if err := a.kernel.Watch(ctx, func(reason string) {
		select {
		case drift <- reason:
		default:
		}
	}); err != nil {
		return fmt.Errorf("watch kernel: %w", err)
	}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var driftReason string
	tick := time.NewTicker(ResyncInterval)
	defer tick.Stop()
	heartbeat := time.NewTicker(bus.HeartbeatInterval)
	defer heartbeat.Stop()
	var checksumC <-chan time.Time
	if watch && a.ha.udp != nil {
		t := time.NewTicker(checksumTick)
		defer t.Stop()
		checksumC = t.C
	}

	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping; kernel state left in place (cframe-edge cleanup removes it)")
			return nil
		case m := <-a.follow.Messages():
			a.followChange(a.handleQueued(m))
		case <-resync:
			a.followChange(a.follow.Resync("connected"))
			a.publishStatus() // a restarted controller learns the roles at once
		case r := <-drift:
			if driftReason == "" {
				settle.Reset(driftSettle)
			}
			driftReason = r
		case <-settle.C:
			a.reconcile("drift repair: " + driftReason)
			driftReason = ""
		case <-tick.C:
			a.reconcile("periodic resync")
		case <-a.ha.Changed():
			a.rolesChanged()
		case now := <-heartbeat.C:
			a.followRotation(now)
			a.publishStatus()
		case now := <-checksumC:
			if a.checksum.Observe(now, a.ha.paths()) {
				a.checksumSwitched()
			}
			if !a.checksum.Watching() {
				checksumC = nil
			}
		case <-a.report.C:
			a.pending = false
			a.publishStatus()
		}
	}
}

// maxBatch bounds how many queued bus messages one kernel update follows.
const maxBatch = 512

// handleQueued hands m and the messages queued behind it (up to maxBatch)
// to the follower, so that a burst of deltas is saved and applied to the
// kernel once rather than once per delta. It returns the changes made, ""
// for none, and the last error.
func (a *Agent) handleQueued(m *nats.Msg) (string, error) {
	var changes []string
	var last error
	for n := 1; m != nil; n++ {
		change, err := a.follow.Handle(m)
		if change != "" {
			changes = append(changes, change)
		}
		if err != nil {
			last = err
		}
		m = nil
		if n < maxBatch {
			select {
			case m = <-a.follow.Messages():
			default:
			}
		}
	}
	switch len(changes) {
	case 0:
		return "", last
	case 1:
		return changes[0], last
	}
	return fmt.Sprintf("%d changes, %s … %s", len(changes), changes[0], changes[len(changes)-1]), last
}

// followChange saves a changed edge set and has the kernel follow it: an
// update that reads only the changed peers' objects (netcfg falls back to a
// full reconcile when that does not fit).
func (a *Agent) followChange(change string, err error) {
	if err != nil {
		a.log.Warn("edge set not updated; keeping the applied one", "err", err)
	}
	if change == "" {
		return
	}
	a.saveState()
	a.setEdges()
	a.converge(change, a.kernel.Update)
}

// setEdges hands the held set to the HA runner.
func (a *Agent) setEdges() {
	if set, _, ok := a.follow.Set(); ok && a.ha != nil {
		a.ha.SetEdges(set)
	}
}

// rolesChanged has the kernel follow a new decision of the HA runner — on
// remote edges one neighbor's change, read and applied as a targeted
// update — and reports a change of this gateway's role at once.
func (a *Agent) rolesChanged() {
	old, v := a.roles, a.ha.View()
	reason := describeRoles(old, v)
	a.converge(reason, a.kernel.Update)
	if !sameSite(old.Site, v.Site) {
		a.publishStatus()
	}
}

// checksumSwitched applies, saves, logs and exports a new checksum
// decision.
func (a *Agent) checksumSwitched() {
	d := a.checksum.Decision()
	a.local.Checksum = d.Setting
	a.metrics.checksum(d)
	a.metrics.checksumSwitches.Inc()
	a.log.Warn("checksum setting changed: the tunnel device is replaced", "setting", d.Setting, "evidence", d.Evidence, "detail", d.Detail)
	if b, err := json.Marshal(d); err != nil {
		a.log.Error("save checksum setting", "err", err)
	} else if err := atomicfile.Write(a.checksumPath(), b, 0o600); err != nil {
		a.log.Error("save checksum setting", "path", a.checksumPath(), "err", err)
	}
	a.reconcile(fmt.Sprintf("checksum setting %s (%s: %s)", d.Setting, d.Evidence, d.Detail))
}

func (a *Agent) device() string {
	if a.local.Device != "" {
		return a.local.Device
	}
	return netcfg.DefaultDevice
}

// reconcile makes the whole kernel state match the held set.
func (a *Agent) reconcile(reason string) { a.converge(reason, a.kernel.Reconcile) }

// converge has the kernel match the held set through kernelCall — an
// Update, which reads only the changed peers' objects, or a full Reconcile
// —, logs every change (with what was read: "changed peers" or
// "everything") and reports the outcome.
func (a *Agent) converge(reason string, kernelCall func(*netcfg.Desired) (netcfg.Result, error)) {
	set, rev, ok := a.follow.Set()
	if !ok {
		return
	}
	var roles haView
	if a.ha != nil {
		roles = a.ha.View()
	}
	d, registered := a.desired(set, roles)
	a.followLinks(set)
	began := time.Now()
	res, err := kernelCall(&d)
	// Drift: a full read found the kernel changed although the held set was
	// the one already applied.
	drift := !res.Targeted && a.status.State == bus.StateReady && a.status.AppliedRevision == rev
	a.metrics.converged(res.Targeted, drift, time.Since(began), res, err)
	if err == nil {
		a.roles = roles
	}
	read := "everything"
	if res.Targeted {
		read = "changed peers"
	}
	if res.FallbackReason != "" {
		a.log.Debug("full reconcile instead of an update", "why", res.FallbackReason, "reason", reason)
	}
	for _, ch := range res.Changes {
		a.log.Info("kernel change", "change", ch, "reason", reason, "read", read)
	}
	st := a.status
	st.Changes, st.Conflicts, st.Error, st.Links = len(res.Changes), res.Conflicts, "", a.links
	switch {
	case err != nil:
		st.State, st.Error = bus.StateError, err.Error()
		a.log.Error("reconcile failed", "reason", reason, "err", err)
	case !registered:
		st.State, st.AppliedRevision = bus.StateNotRegistered, rev
	default:
		st.State, st.AppliedRevision = bus.StateReady, rev
	}
	if st.AppliedRevision != a.status.AppliedRevision || st.AppliedAt.IsZero() {
		st.AppliedAt = time.Now().UTC()
	}
	a.metrics.revisions(st.AppliedRevision, a.follow.Latest(), len(d.Peers))
	if !slices.Equal(st.Conflicts, a.status.Conflicts) {
		for _, c := range st.Conflicts {
			a.log.Warn("conflict left alone", "object", c)
		}
	}
	if st.State == bus.StateNotRegistered && a.status.State != st.State {
		a.log.Warn("this edge is not registered: add it on the controller", "name", a.cfg.Name)
	}
	changed := st.State != a.status.State || st.AppliedRevision != a.status.AppliedRevision ||
		st.Error != a.status.Error || len(res.Changes) > 0 || !slices.Equal(st.Conflicts, a.status.Conflicts) ||
		!maps.Equal(st.Links, a.status.Links)
	a.status = st
	if changed && a.report != nil && !a.pending { // no reports from ReconcileOnce
		a.pending = true
		a.report.Reset(rand.N(bus.StatusJitter))
	}
}

func (a *Agent) publishStatus() {
	if _, _, ok := a.follow.Set(); !ok || !a.nc.IsConnected() {
		return
	}
	a.status.Time = time.Now().UTC()
	if a.ha != nil {
		a.status.Site, a.status.Probes = a.ha.View().Site, a.ha.Probes()
	}
	if err := bus.Publish(a.nc, bus.StatusSubject(a.cfg.Name), a.status); err != nil {
		a.log.Warn("publish status", "err", err)
	}
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.StateDir, "edgeset.json") }

// saveState writes the held set atomically, for a restart without the controller.
func (a *Agent) saveState() {
	b, err := json.Marshal(a.follow.Snapshot())
	if err == nil {
		err = atomicfile.Write(a.statePath(), b, 0o600)
	}
	if err != nil {
		a.log.Error("save edge set", "path", a.statePath(), "err", err)
	}
}

// loadState returns the saved set, or nil when there is none.
func (a *Agent) loadState() (*bus.Snapshot, error) {
	b, err := os.ReadFile(a.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s bus.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", a.statePath(), err)
	}
	return &s, nil
}

// Reconciled is what ReconcileOnce did: the kernel's result, and the
// revision of the edge set it applied and whether this edge is in it.
type Reconciled struct {
	netcfg.Result
	Revision   uint64
	Registered bool
}

// ReconcileOnce fetches the current set from the controller, makes the
// kernel match it once and returns what changed.
func (a *Agent) ReconcileOnce() (Reconciled, error) {
	if err := a.connect(false, nats.Timeout(5*time.Second)); err != nil {
		return Reconciled{}, err
	}
	defer a.nc.Close()
	if _, err := a.follow.Resync("one-shot reconcile"); err != nil {
		return Reconciled{}, err
	}
	a.saveState()
	set, rev, _ := a.follow.Set()
	// The saved claims; the VIP as it is (the running agent decides it).
	roles := haView{VIPState: ha.VIPKeep}
	if saved, err := loadClaims(a.claimsPath()); err != nil {
		a.log.Warn("ignoring saved claims", "err", err)
	} else {
		roles.Claims = map[string]bus.Claim{}
		for _, c := range saved {
			roles.Claims[c.Site] = c
		}
	}
	d, registered := a.desired(set, roles)
	res, err := a.kernel.Reconcile(&d)
	return Reconciled{Result: res, Revision: rev, Registered: registered}, err
}

// desired is the kernel state for set under the HA decisions roles.
func (a *Agent) desired(set map[string]bus.Edge, roles haView) (netcfg.Desired, bool) {
	d, registered := mesh.Desired(a.local, set, roles.Claims)
	switch roles.VIPState {
	case ha.VIPHeld:
		for _, v := range roles.VIPs {
			if v.Is4() {
				d.VIP = v
			} else {
				d.VIP6 = v
			}
		}
	case ha.VIPKeep:
		d.KeepVIP = true
	}
	return d, registered
}

func (a *Agent) claimsPath() string { return filepath.Join(a.cfg.StateDir, "claims.json") }
