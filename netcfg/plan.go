package netcfg

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// change is one planned kernel modification, made by an operation of the
// object it changes (linkAdd, fdbAdd, routeDel, ruleInsert, ...).
type change struct {
	// desc says what the change does, in ip/bridge/iptables/sysctl command
	// syntax, e.g. "route add 172.31.0.0/16 via 172.31.0.0 dev cframe0
	// onlink src 172.20.0.9 proto 207".
	desc string
	// do makes the change; nil for an iptables command, which apply hands
	// to iptables together with the commands next to it.
	do       func(s *session) error
	iptables *iptablesCmd
}

// kind is the kind of kernel object the change is to: the first word of
// its desc (link, fdb, neigh, route, ipset, iptables, sysctl).
func (c change) kind() string {
	k, _, _ := strings.Cut(c.desc, " ")
	return k
}

// plan is the ordered list of changes that makes the kernel match a
// desired state, plus the foreign objects that were left alone.
type plan struct {
	changes []change
	// notes are the conflicts, in the order found.
	notes []conflictNote
	// rebuilds: the plan creates or recreates a tunnel device or changes
	// its address (which flushes its neighbors), so every peer's entries
	// on it are planned anew.
	rebuilds bool
}

// conflictNote is one conflict and the peer it is about ("": the device
// or a set, not one peer).
type conflictNote struct{ peer, text string }

// stage orders a plan: everything a packet of an unchanged peer needs is in
// place before anything stale goes away (make before break).
type stage int

const (
	stageSysctl     stage = iota // ip_forward
	stageLinks                   // links created, recreated, adjusted
	stageAddrs                   // the tunnel's link-local address, the VIP
	stageSets                    // ipsets and their new members
	stageRulesAdd                // new iptables chains, rules and hooks
	stageEntriesAdd              // new or changed FDB entries, neighbors, routes
	stageRoutesDel               // stale routes,
	stageNeighDel                // neighbors,
	stageFDBDel                  // FDB entries,
	stageMembersDel              // set members,
	stageRulesDel                // iptables rules and chains,
	stageSetsDel                 // sets
	stageLinksDel                // and links
	stages
)

// planner accumulates the changes of one newPlan call by stage.
type planner struct {
	d   Desired
	a   *actual
	mtu int
	// wgMTU is the WireGuard device's MTU (with Desired.WireGuard).
	wgMTU int
	lan   netip.Addr
	// lan6 is the LAN's IPv6 address (actual.LANAddr6), if any; ipv6
	// tells that the edge takes part in IPv6 (wantsIPv6).
	lan6 netip.Addr
	ipv6 bool

	changes   [stages][]change
	conflicts []conflictNote

	// usable: desired devices that exist (or will) and are ours.
	usable map[string]bool
	// fresh: devices this plan creates, so nothing on them exists yet.
	fresh map[string]bool
	// neighGone: devices whose neighbor entries this plan's link changes
	// flush.
	neighGone map[string]bool
	// tunnels: usable tunnel devices in a stable order.
	tunnels []string
	// setReady: the sets that exist (or will) with the right type, so that
	// rules may match them.
	setReady map[string]bool
}

// newPlan computes the changes that turn a into d (normalized and valid),
// object by object (each in its own file). It is a pure function: it reads
// nothing but its arguments.
func newPlan(d Desired, a *actual) plan {
	p := &planner{d: d, a: a, usable: map[string]bool{}, fresh: map[string]bool{}, neighGone: map[string]bool{}, setReady: map[string]bool{}}
	p.lan = d.LANAddr
	if !p.lan.IsValid() {
		p.lan = a.LANAddr
	}
	p.lan6, p.ipv6 = a.LANAddr6, wantsIPv6(&d)
	under := a.UnderlayMTU
	if under == 0 {
		under = 1500
	}
	p.mtu = d.MTU
	if p.mtu == 0 {
		p.mtu = under - overhead(d)
	}
	p.wgMTU = p.mtu + vxlanOverhead
	p.planIPForward()
	p.planLinks()
	p.planWireGuard()
	p.planFDB()
	p.planLinkLocal()
	p.planVIP()
	p.planNeighbors()
	p.planNeighbors6()
	p.planRoutes()
	p.planSets()
	p.planChains()
	return p.plan()
}

// overhead is what the tunnel adds to a packet: the encapsulation, and
// WireGuard's around it when the mesh is encrypted.
func overhead(d Desired) int {
	switch {
	case d.Mode == ModeGRE:
		return greOverhead
	case d.WireGuard != nil:
		// VXLAN rides WireGuard between IPv4 mesh addresses; WireGuard's
		// own header follows the underlay's family.
		if d.underlay6() {
			return vxlanOverhead + wireGuardOverhead + ipv6Overhead
		}
		return vxlanOverhead + wireGuardOverhead
	}
	return d.vxlanOverhead()
}

// add plans changes in stage st.
func (p *planner) add(st stage, changes ...change) {
	p.changes[st] = append(p.changes[st], changes...)
}

// plan returns the changes planned so far, stage by stage.
func (p *planner) plan() plan {
	var out plan
	for _, st := range p.changes {
		out.changes = append(out.changes, st...)
	}
	out.notes = p.conflicts
	out.rebuilds = len(p.fresh) > 0 || len(p.neighGone) > 0
	return out
}

// conflict records a foreign object left alone; peer names the peer it is
// about, if any.
func (p *planner) conflict(peer, format string, args ...any) {
	p.conflicts = append(p.conflicts, conflictNote{peer, fmt.Sprintf(format, args...)})
}

// peerDevice is the tunnel device that carries a peer's traffic.
func (p *planner) peerDevice(peer Peer) string {
	if p.d.Mode == ModeGRE {
		return greDevice(p.d.Device, peer.Name)
	}
	return p.d.Device
}

// conflictTexts returns the conflicts' texts, sorted, so that the same
// conflicts read the same after a Reconcile and after an Update.
func conflictTexts(notes []conflictNote) []string {
	var out []string
	for _, c := range notes {
		out = append(out, c.text)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
