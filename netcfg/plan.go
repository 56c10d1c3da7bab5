package netcfg

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Change is one planned kernel modification. String describes it in
// ip/bridge/iptables/sysctl command syntax.
type Change struct {
	desc  string
	apply func(k *Kernel) error
	// ipt is the same change as an iptables-restore line, for iptables
	// changes: Apply runs consecutive ones as one iptables-restore.
	ipt *restoreLine
}

// restoreLine is one command of an iptables-restore input ("-I CHAIN 1 ...",
// "-N CHAIN") and its table.
type restoreLine struct{ table, line string }

// String returns the human-readable form of the change, e.g.
// "route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207".
func (c Change) String() string { return c.desc }

// Plan is the ordered list of changes that makes the kernel match a
// Desired state, plus the foreign objects that were left alone.
//
// Order: ip_forward; links (create, recreate, adjust); ipsets and their new
// members; new iptables rules and hooks; new or changed FDB entries,
// neighbors and routes; removal of stale routes, neighbors, FDB entries,
// set members and iptables rules; removal of stale sets and links.
// Everything a packet of an unchanged peer needs is therefore in place
// before anything stale goes away.
type Plan struct {
	Changes []Change
	// Conflicts describe foreign objects that overlap the mesh and were
	// left alone (and what was skipped because of them).
	Conflicts []string
	// notes are Conflicts with the peer each is about ("" for none).
	notes []conflictNote
	// rebuilds: the plan creates or recreates a tunnel device or changes
	// its address (which flushes its neighbors), so every peer's entries
	// on it are planned anew.
	rebuilds bool
}

// conflictNote is one conflict and the peer it is about ("": the device
// or a set, not one peer).
type conflictNote struct{ peer, text string }

// Strings returns the String of every change, in order.
func (p Plan) Strings() []string {
	out := make([]string, len(p.Changes))
	for i, c := range p.Changes {
		out[i] = c.String()
	}
	return out
}

// NewPlan computes the changes that turn a into d. It is a pure function:
// it reads nothing but its arguments. d should pass Validate.
func NewPlan(d *Desired, a *Actual) Plan {
	return newPlan(d.normalized(), a)
}

// newPlan is NewPlan of a normalized Desired.
func newPlan(d Desired, a *Actual) Plan {
	p := &planner{d: d, a: a, usable: map[string]bool{}, fresh: map[string]bool{}, neighGone: map[string]bool{}}
	p.lan = p.d.LANAddr
	if !p.lan.IsValid() {
		p.lan = a.LANAddr
	}
	under := a.UnderlayMTU
	if under == 0 {
		under = 1500
	}
	p.mtu = p.d.MTU
	if p.mtu == 0 {
		if p.d.Mode == ModeGRE {
			p.mtu = under - GREOverhead
		} else {
			p.mtu = under - VXLANOverhead
		}
	}
	if !a.IPForward {
		p.first = append(p.first, Change{"sysctl net.ipv4.ip_forward=1", (*Kernel).enableForwarding, nil})
	}
	p.planLinks()
	if p.d.Mode == ModeVXLAN && p.usable[p.d.Device] {
		p.planFDB()
		p.planNeighbors()
	}
	p.planRoutes()
	p.planIptables()

	var plan Plan
	for _, stage := range [][]Change{p.first, p.links, p.sets, p.ipAdd, p.add, p.delRoutes, p.delNeigh, p.delFDB, p.delMembers, p.ipDel, p.setDel, p.linkDel} {
		plan.Changes = append(plan.Changes, stage...)
	}
	plan.notes = p.conflicts
	for _, c := range p.conflicts {
		plan.Conflicts = append(plan.Conflicts, c.text)
	}
	plan.rebuilds = len(p.fresh) > 0 || len(p.neighGone) > 0
	return plan
}

// planner accumulates the changes of one NewPlan call by stage.
type planner struct {
	d   Desired
	a   *Actual
	mtu int
	lan netip.Addr

	first, links, sets, ipAdd, add                 []Change
	delRoutes, delNeigh, delFDB, delMembers, ipDel []Change
	setDel, linkDel                                []Change
	conflicts                                      []conflictNote

	// usable: desired devices that exist (or will) and are ours.
	usable map[string]bool
	// fresh: devices this plan creates, so nothing on them exists yet.
	fresh map[string]bool
	// neighGone: devices whose neighbor entries this plan's link changes
	// flush.
	neighGone map[string]bool
	// tunnels: usable tunnel devices in a stable order.
	tunnels []string
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

func (p *planner) wantLinks() []Link {
	if p.d.Mode == ModeVXLAN {
		return []Link{{Name: p.d.Device, Kind: "vxlan", Alias: OwnerAlias, MTU: p.mtu, MAC: p.d.DeviceMAC, Up: true,
			VNI: p.d.VNI, Port: p.d.Port, Local: p.d.LocalAddr, RPS: p.a.wantRPS()}}
	}
	var out []Link
	for _, peer := range p.d.Peers {
		remote := peer.Underlay.Addr()
		local := p.d.LocalAddr
		if !local.IsValid() {
			local = p.a.UnderlaySource[remote]
		}
		out = append(out, Link{Name: greDevice(p.d.Device, peer.Name), Kind: "gre", Alias: OwnerAlias + ":" + peer.Name,
			MTU: p.mtu, Up: true, Local: local, Remote: remote})
	}
	return out
}

// recreateReason says why an owned link cannot be adjusted in place.
func recreateReason(have, want Link) string {
	var why []string
	if have.Kind != want.Kind {
		why = append(why, fmt.Sprintf("type %s -> %s", have.Kind, want.Kind))
	} else if want.Kind == "vxlan" {
		if have.VNI != want.VNI {
			why = append(why, fmt.Sprintf("id %d -> %d", have.VNI, want.VNI))
		}
		if have.Port != want.Port {
			why = append(why, fmt.Sprintf("dstport %d -> %d", have.Port, want.Port))
		}
		if have.Learning {
			why = append(why, "learning -> nolearning")
		}
	} else if have.Remote != want.Remote {
		why = append(why, fmt.Sprintf("remote %s -> %s", addrOrAny(have.Remote), addrOrAny(want.Remote)))
	}
	if have.Kind == want.Kind && have.Local != want.Local {
		why = append(why, fmt.Sprintf("local %s -> %s", addrOrAny(have.Local), addrOrAny(want.Local)))
	}
	return strings.Join(why, ", ")
}

func addrOrAny(a netip.Addr) string {
	if a.IsValid() {
		return a.String()
	}
	return "any"
}

func (p *planner) planLinks() {
	have := map[string]Link{}
	for _, l := range p.a.Links {
		have[l.Name] = l
	}
	wanted := map[string]bool{}
	for _, w := range p.wantLinks() {
		w := w
		wanted[w.Name] = true
		h, ok := have[w.Name]
		switch {
		case !ok:
			p.links = append(p.links, Change{"link add " + w.String(), func(k *Kernel) error { return k.linkAdd(w) }, nil})
			p.fresh[w.Name] = true
		case !h.Owned():
			p.conflict("", "link %s exists but is not cframe's (type %s, alias %q): left alone, nothing installed on it", h.Name, h.Kind, h.Alias)
			continue
		case recreateReason(h, w) != "":
			p.links = append(p.links,
				Change{fmt.Sprintf("link del %s (recreate: %s)", h.Name, recreateReason(h, w)), func(k *Kernel) error { return k.linkDel(w.Name) }, nil},
				Change{"link add " + w.String(), func(k *Kernel) error { return k.linkAdd(w) }, nil})
			p.fresh[w.Name] = true
		default:
			if h.MTU != w.MTU {
				p.links = append(p.links, Change{fmt.Sprintf("link set %s mtu %d", w.Name, w.MTU), func(k *Kernel) error { return k.linkSetMTU(w.Name, w.MTU) }, nil})
			}
			if w.MAC != nil && !bytes.Equal(h.MAC, w.MAC) {
				p.links = append(p.links, Change{fmt.Sprintf("link set %s address %s", w.Name, w.MAC), func(k *Kernel) error { return k.linkSetMAC(w.Name, w.MAC) }, nil})
				// The kernel flushes a device's neighbors, permanent ones
				// included, when its address changes.
				p.neighGone[w.Name] = true
			}
			if h.Alias != w.Alias {
				p.links = append(p.links, Change{fmt.Sprintf("link set %s alias %q", w.Name, w.Alias), func(k *Kernel) error { return k.linkSetAlias(w.Name, w.Alias) }, nil})
			}
			if !h.Up {
				p.links = append(p.links, Change{fmt.Sprintf("link set %s up", w.Name), func(k *Kernel) error { return k.linkSetUp(w.Name) }, nil})
			}
			if w.RPS && !h.RPS {
				p.links = append(p.links, Change{fmt.Sprintf("link set %s rps_cpus all (receive packet steering)", w.Name), func(k *Kernel) error { return k.linkSetRPS(w.Name) }, nil})
			}
		}
		p.usable[w.Name] = true
		p.tunnels = append(p.tunnels, w.Name)
	}
	for _, h := range p.a.Links {
		if h.Owned() && !wanted[h.Name] {
			name := h.Name
			p.linkDel = append(p.linkDel, Change{fmt.Sprintf("link del %s (stale)", name), func(k *Kernel) error { return k.linkDel(name) }, nil})
		}
	}
}

func (p *planner) planFDB() {
	dev := p.d.Device
	// The kernel's entries for each MAC, in kernel order: first[mac] is
	// the position of the first in p.a.FDB, next[i] the one after i (or
	// -1). Keyed by raw MAC: no formatting, one allocation in all.
	fdb := p.a.FDB
	first := make(map[[6]byte]int, len(fdb))
	next := make([]int, len(fdb))
	if !p.fresh[dev] {
		for i := len(fdb) - 1; i >= 0; i-- {
			if fdb[i].Device == dev {
				key := [6]byte(fdb[i].MAC)
				if j, ok := first[key]; ok {
					next[i] = j
				} else {
					next[i] = -1
				}
				first[key] = i
			}
		}
	}
	var stale []FDBEntry
	for _, peer := range p.d.Peers {
		w := FDBEntry{Device: dev, MAC: peer.MAC, Dst: peer.Underlay.Addr(), Port: peer.Underlay.Port()}
		key := [6]byte(w.MAC)
		i, ok := first[key]
		delete(first, key)
		kept, held := false, 0
		for ; ok && i >= 0; i = next[i] {
			held++
			if h := fdb[i]; h.Dst == w.Dst && h.Port == w.Port && !kept {
				kept = true
			} else {
				stale = append(stale, h)
			}
		}
		switch {
		case kept:
		case held > 0:
			p.add = append(p.add, Change{"fdb replace " + w.String(), func(k *Kernel) error { return k.fdbSet(w) }, nil})
			if held == 1 {
				// Replacing rewrites the only remote in place.
				stale = stale[:len(stale)-1]
			}
		default:
			p.add = append(p.add, Change{"fdb add " + w.String(), func(k *Kernel) error { return k.fdbSet(w) }, nil})
		}
	}
	for _, e := range fdb {
		if _, left := first[[6]byte(e.MAC)]; left && e.Device == dev {
			stale = append(stale, e)
		}
	}
	for _, e := range stale {
		p.delFDB = append(p.delFDB, Change{"fdb del " + e.String(), func(k *Kernel) error { return k.fdbDel(e) }, nil})
	}
}

func (p *planner) planNeighbors() {
	dev := p.d.Device
	// have maps each neighbor of ours to its position in p.a.Neighbors.
	have := make(map[netip.Addr]int, len(p.a.Neighbors))
	if !p.fresh[dev] && !p.neighGone[dev] {
		for i, n := range p.a.Neighbors {
			if n.Device == dev {
				have[n.IP] = i
			}
		}
	}
	for _, peer := range p.d.Peers {
		w := Neighbor{Device: dev, IP: peer.NextHop, MAC: peer.MAC}
		i, ok := have[w.IP]
		delete(have, w.IP)
		verb := "replace"
		switch {
		case !ok:
			verb = "add"
		case bytes.Equal(p.a.Neighbors[i].MAC, w.MAC):
			continue
		}
		p.add = append(p.add, Change{fmt.Sprintf("neigh %s %s lladdr %s dev %s nud permanent", verb, w.IP, w.MAC, w.Device),
			func(k *Kernel) error { return k.neighSet(w) }, nil})
	}
	for _, n := range p.a.Neighbors {
		if _, left := have[n.IP]; left && n.Device == dev {
			p.delNeigh = append(p.delNeigh, Change{fmt.Sprintf("neigh del %s dev %s", n.IP, n.Device), func(k *Kernel) error { return k.neighDel(n) }, nil})
		}
	}
}

type routeKey struct {
	dst    netip.Prefix
	metric int
}

func (p *planner) planRoutes() {
	// ours maps each of our routes to its position; kept marks the ones
	// still wanted. The rest is stale.
	ours := make(map[routeKey]int, len(p.a.Routes))
	for i, r := range p.a.Routes {
		if !p.fresh[r.Device] { // routes on a (re)created device are gone
			ours[routeKey{r.Dst, r.Metric}] = i
		}
	}
	kept := make([]bool, len(p.a.Routes))
	for _, peer := range p.d.Peers {
		dev := p.peerDevice(peer)
		if !p.usable[dev] {
			continue
		}
		for _, cidr := range peer.CIDRs {
			w := Route{Dst: cidr, Device: dev, Src: p.lan, Protocol: RouteProtocol}
			if p.d.Mode == ModeVXLAN {
				w.Gw, w.OnLink = peer.NextHop, true
			}
			blocked := false
			for _, f := range p.a.ForeignRoutes {
				switch {
				case f.Dst == cidr && f.Metric == 0:
					p.conflict(peer.Name, "route %s is not cframe's: skipped peer %s's route %s", f, peer.Name, cidr)
					blocked = true
				case f.Dst.Overlaps(cidr):
					p.conflict(peer.Name, "route %s is not cframe's and overlaps peer %s's %s: installed cframe's route anyway", f, peer.Name, cidr)
				}
			}
			if blocked {
				continue
			}
			i, ok := ours[routeKey{cidr, 0}]
			switch {
			case !ok:
				p.add = append(p.add, Change{"route add " + w.String(), func(k *Kernel) error { return k.routeSet(w, false) }, nil})
			case !p.a.Routes[i].equal(w):
				p.add = append(p.add, Change{"route replace " + w.String(), func(k *Kernel) error { return k.routeSet(w, true) }, nil})
			}
			if ok {
				kept[i] = true
			}
		}
	}
	for i, r := range p.a.Routes {
		if !kept[i] && !p.fresh[r.Device] {
			p.delRoutes = append(p.delRoutes, Change{"route del " + r.String(), func(k *Kernel) error { return k.routeDel(r) }, nil})
		}
	}
}

func (p *planner) planIptables() {
	want := map[Chain][]rule{}
	for _, dev := range p.tunnels {
		for _, local := range p.d.LocalCIDRs {
			want[ChainForward] = append(want[ChainForward], forwardRules(dev, local)...)
		}
		want[ChainMSS] = append(want[ChainMSS], mssRules(dev, p.mtu)...)
	}
	underlays := make([]netip.Prefix, 0, len(p.d.Peers))
	var nets []netip.Prefix
	for _, peer := range p.d.Peers {
		underlays = append(underlays, netip.PrefixFrom(peer.Underlay.Addr(), 32))
		if p.d.Masquerade {
			nets = append(nets, peer.CIDRs...)
		}
	}
	if p.planSet(SetPeers, underlays) {
		want[ChainInput] = append(want[ChainInput], inputAccept(p.d.Mode, p.d.Port))
	}
	want[ChainInput] = append(want[ChainInput], inputDrop(p.d.Mode, p.d.Port))
	masquerade := p.d.Masquerade && p.planSet(SetNets, nets)
	if masquerade {
		for _, local := range p.d.LocalCIDRs {
			want[ChainNAT] = append(want[ChainNAT], natRule(local, p.lan))
		}
	}
	for _, h := range hooks {
		if h.own == ChainNAT && !masquerade {
			p.removeChain(h.own, h.from)
			continue
		}
		p.syncChain(h.own, want[h.own], h.own == ChainInput)
		p.syncHook(h.from, h.own)
	}
	if !p.d.Masquerade {
		p.removeSet(SetNets)
	}
}

// syncChain makes chain c hold exactly rules, inserting missing rules at
// the top before deleting stale ones. With terminal, the last rule of rules
// must end up last in the chain; it is re-appended (then the old copy
// deleted) when something else follows it.
func (p *planner) syncChain(c Chain, rules []rule, terminal bool) {
	have, exists := p.a.Chains[c]
	if !exists {
		p.ipAdd = append(p.ipAdd, iptCmd(c.Table, "-N "+c.Name, func(ipt *iptables.IPTables) error { return ipt.NewChain(c.Table, c.Name) }))
	}
	count := map[string]int{}
	last := map[string]int{}
	for i, l := range have {
		count[l]++
		last[l] = i
	}
	wantSet := map[string]bool{}
	for _, r := range rules {
		wantSet[r.line()] = true
	}
	body := rules
	var term *rule
	if terminal && len(rules) > 0 {
		term, body = &rules[len(rules)-1], rules[:len(rules)-1]
	}
	for i := len(body) - 1; i >= 0; i-- {
		if count[body[i].line()] == 0 {
			p.ipAdd = append(p.ipAdd, p.ipInsert(body[i]))
		}
	}
	dels := map[string]int{}
	for l, n := range count {
		if wantSet[l] {
			dels[l] = n - 1 // duplicates; the last copy survives
		} else {
			dels[l] = n
		}
	}
	if term != nil {
		tl := term.line()
		misplaced := false
		for l, i := range last {
			if l != tl && wantSet[l] && i > last[tl] {
				misplaced = true
			}
		}
		if count[tl] == 0 || misplaced {
			p.ipAdd = append(p.ipAdd, p.ipAppend(*term))
		}
		if misplaced {
			dels[tl] = count[tl]
		}
	}
	// Deletes in chain order, so that plans are deterministic.
	for _, l := range have {
		if dels[l] > 0 {
			dels[l]--
			p.ipDel = append(p.ipDel, p.ipDelete(c, l))
		}
	}
}

// syncHook keeps exactly one "-j own" rule in the built-in chain from,
// inserting it at the top when missing.
func (p *planner) syncHook(from, own Chain) {
	j := jumpRule(from, own)
	n := 0
	for _, l := range p.a.Chains[from] {
		if l == j.line() {
			n++
		}
	}
	if n == 0 {
		p.ipAdd = append(p.ipAdd, p.ipInsert(j))
	}
	for ; n > 1; n-- {
		p.ipDel = append(p.ipDel, p.ipDelete(from, j.line()))
	}
}

// removeChain unhooks and deletes an owned chain that is not wanted.
func (p *planner) removeChain(own, from Chain) {
	j := jumpRule(from, own)
	for _, l := range p.a.Chains[from] {
		if l == j.line() {
			p.ipDel = append(p.ipDel, p.ipDelete(from, l))
		}
	}
	if have, ok := p.a.Chains[own]; ok {
		if len(have) > 0 {
			p.ipDel = append(p.ipDel, iptCmd(own.Table, "-F "+own.Name, func(ipt *iptables.IPTables) error { return ipt.ClearChain(own.Table, own.Name) }))
		}
		p.ipDel = append(p.ipDel, iptCmd(own.Table, "-X "+own.Name, func(ipt *iptables.IPTables) error { return ipt.DeleteChain(own.Table, own.Name) }))
	}
}

// iptCmd is an iptables change: cmd ("-I CHAIN 1 ...") in table, run as
// part of an iptables-restore, or alone through run when that fails.
func iptCmd(table, cmd string, run func(ipt *iptables.IPTables) error) Change {
	return Change{"iptables -t " + table + " " + cmd, func(k *Kernel) error {
		k.count.Exec++
		return run(k.ipt)
	}, &restoreLine{table, cmd}}
}

func (p *planner) ipInsert(r rule) Change {
	return iptCmd(r.chain.Table, fmt.Sprintf("-I %s 1 %s", r.chain.Name, joinArgs(r.args)),
		func(ipt *iptables.IPTables) error { return ipt.Insert(r.chain.Table, r.chain.Name, 1, r.args...) })
}

func (p *planner) ipAppend(r rule) Change {
	return iptCmd(r.chain.Table, "-A "+r.chain.Name+" "+joinArgs(r.args),
		func(ipt *iptables.IPTables) error { return ipt.Append(r.chain.Table, r.chain.Name, r.args...) })
}

// ipDelete deletes the first rule of chain c that matches line; one that
// is already gone counts as deleted.
func (p *planner) ipDelete(c Chain, line string) Change {
	name, args, err := splitLine(line)
	if err == nil && name != c.Name {
		err = fmt.Errorf("rule %q is not in chain %s", line, c.Name)
	}
	return iptCmd(c.Table, "-D "+strings.TrimPrefix(line, "-A "), func(ipt *iptables.IPTables) error {
		if err != nil {
			return err
		}
		return ignoreGone(ipt.Delete(c.Table, c.Name, args...))
	})
}
