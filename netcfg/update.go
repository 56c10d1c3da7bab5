package netcfg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Update is Reconcile for a change of the peers, at a cost that grows with
// the change rather than with the mesh. It compares d with the desired state
// of the last successful Reconcile or Update (in the same namespace), reads
// only the objects of the peers that joined, left or changed — their FDB
// entries, neighbors, routes and set members, one netlink get each — plus
// the device and the firewall chains, plans over that part and applies it.
// The objects of unchanged peers are neither read nor touched: keeping them
// in line is the job of Reconcile, which the agent runs on netlink drift
// events and periodically.
//
// Update does a full Reconcile instead (and says why in Result.FullRead)
// when it has nothing to build on, when anything besides the peers changed,
// in GRE mode, when many peers changed (dumping everything is then
// cheaper), when the device is not as the last Reconcile left it, or when
// a targeted read or a change fails.
func (k *Kernel) Update(d *Desired) (Result, error) {
	n := d.normalized()
	if err := n.validate(); err != nil {
		return Result{}, fmt.Errorf("netcfg: invalid desired state: %w", err)
	}
	res, why := k.update(n)
	if why == "" {
		return res, nil
	}
	full, err := k.reconcile(n)
	full.FullRead = why
	full.Changes = append(res.Changes, full.Changes...)
	full.Requests.Netlink += res.Requests.Netlink
	full.Requests.Exec += res.Requests.Exec
	return full, err
}

// baseline is what Update builds on: the namespace and desired state of
// the last successful Reconcile or Update, the facts of the last full read
// that do not depend on the peers, and the conflicts found so far.
type baseline struct {
	ns nsID
	d  Desired
	// facts is an Actual holding only what does not depend on the peers:
	// the LAN address, the underlay's MTU and how it receives, the CPUs.
	facts Actual
	notes []conflictNote
}

// newBaseline records a successful full reconcile of n over a.
func newBaseline(n Desired, a *Actual, notes []conflictNote) *baseline {
	ns, err := threadNS()
	if err != nil {
		return nil
	}
	return &baseline{ns: ns, d: n, notes: notes, facts: Actual{LANAddr: a.LANAddr, UnderlayMTU: a.UnderlayMTU,
		UnderlayRxQueues: a.UnderlayRxQueues, CPUs: a.CPUs, UnderlayRxOnSender: a.UnderlayRxOnSender}}
}

// update is Update without the fallback: why is empty when it did the
// change, else the reason a full reconcile is needed (res then holds
// what was applied before giving up).
func (k *Kernel) update(n Desired) (res Result, why string) {
	b := k.base
	switch {
	case b == nil:
		return res, "no earlier reconcile to build on"
	case n.Mode != ModeVXLAN:
		return res, "mode " + string(n.Mode)
	case !sameButPeers(&b.d, &n):
		return res, "more than the peers changed"
	}
	if ns, err := threadNS(); err != nil || ns != b.ns {
		return res, "another network namespace"
	}
	sc := newScope(b.d.Peers, n.Peers)
	if len(sc.names) == 0 {
		res.Conflicts = conflictTexts(b.notes)
		return res, ""
	}
	if limit := 16 + len(n.Peers)/16; len(sc.names) > limit {
		return res, fmt.Sprintf("%d peers changed (targeted reads pay off up to %d)", len(sc.names), limit)
	}
	k.base = nil // restored below once the change is applied
	if err := k.begin(); err != nil {
		return res, err.Error()
	}
	defer k.end()
	a, err := k.readScope(&n, b, &sc)
	if err != nil {
		return Result{Requests: k.count}, "targeted read: " + err.Error()
	}
	sub := n
	sub.Peers = sc.peers
	p := newPlan(sub, a)
	if p.rebuilds {
		return Result{Requests: k.count}, "the tunnel device needs recreating"
	}
	applied, err := k.apply(p)
	res = Result{Changes: applied, Requests: k.count}
	if err != nil {
		return res, err.Error()
	}
	b.d = n
	b.notes = slices.DeleteFunc(b.notes, func(c conflictNote) bool { return sc.names[c.peer] })
	for _, c := range p.notes {
		if c.peer != "" {
			b.notes = append(b.notes, c)
		}
	}
	k.base = b
	res.Conflicts = conflictTexts(b.notes)
	return res, ""
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

// sameButPeers reports whether a and b (normalized) differ at most in
// their peers.
func sameButPeers(a, b *Desired) bool {
	return a.Mode == b.Mode && a.Device == b.Device && bytes.Equal(a.DeviceMAC, b.DeviceMAC) &&
		a.VNI == b.VNI && a.MTU == b.MTU && a.Port == b.Port && a.LocalAddr == b.LocalAddr &&
		slices.Equal(a.LocalCIDRs, b.LocalCIDRs) && a.LANAddr == b.LANAddr && a.Masquerade == b.Masquerade
}

func samePeer(a, b Peer) bool {
	return a.Name == b.Name && a.Underlay == b.Underlay && bytes.Equal(a.MAC, b.MAC) &&
		a.NextHop == b.NextHop && slices.Equal(a.CIDRs, b.CIDRs)
}

// scope is the part of the mesh an Update reads and plans: the peers of
// the new set that joined or changed, plus any unchanged peer sharing an
// underlay address, MAC, next hop or network with those or with a peer that
// left or changed (else planning without it would remove what it still
// uses); and the keys under which all their objects, old and new, live.
type scope struct {
	// peers are the new set's peers in scope, in its order.
	peers []Peer
	// names holds the peers in scope and the peers that left.
	names     map[string]bool
	macs      []net.HardwareAddr
	hops      []netip.Addr
	cidrs     []netip.Prefix
	underlays []netip.Prefix // as /32s, like the members of SetPeers
	// The same keys as sets.
	seenMAC    map[[6]byte]bool
	seenAddr   map[netip.Addr]bool // next hops and underlay addresses
	seenPrefix map[netip.Prefix]bool
}

// newScope compares prev and next, both sorted by name (normalized).
func newScope(prev, next []Peer) scope {
	sc := scope{names: map[string]bool{}, seenMAC: map[[6]byte]bool{}, seenAddr: map[netip.Addr]bool{}, seenPrefix: map[netip.Prefix]bool{}}
	for i, j := 0, 0; i < len(prev) || j < len(next); {
		switch {
		case j == len(next) || i < len(prev) && prev[i].Name < next[j].Name: // left
			sc.names[prev[i].Name] = true
			sc.add(prev[i])
			i++
		case i == len(prev) || next[j].Name < prev[i].Name: // joined
			sc.names[next[j].Name] = true
			sc.add(next[j])
			j++
		default:
			if !samePeer(prev[i], next[j]) {
				sc.names[next[j].Name] = true
				sc.add(next[j])
				sc.add(prev[i])
			}
			i++
			j++
		}
	}
	for grown := len(sc.names) > 0; grown; {
		grown = false
		for _, p := range next {
			if !sc.names[p.Name] && sc.touches(p) {
				sc.names[p.Name] = true
				sc.add(p)
				grown = true
			}
		}
	}
	for _, p := range next {
		if sc.names[p.Name] {
			sc.peers = append(sc.peers, p)
		}
	}
	return sc
}

// add records the keys of p's objects.
func (sc *scope) add(p Peer) {
	if mac := [6]byte(p.MAC); !sc.seenMAC[mac] {
		sc.seenMAC[mac] = true
		sc.macs = append(sc.macs, p.MAC)
	}
	if !sc.seenAddr[p.NextHop] {
		sc.seenAddr[p.NextHop] = true
		sc.hops = append(sc.hops, p.NextHop)
	}
	if u := p.Underlay.Addr(); !sc.seenAddr[u] {
		sc.seenAddr[u] = true
		sc.underlays = append(sc.underlays, netip.PrefixFrom(u, 32))
	}
	for _, c := range p.CIDRs {
		if !sc.seenPrefix[c] {
			sc.seenPrefix[c] = true
			sc.cidrs = append(sc.cidrs, c)
		}
	}
}

// touches reports whether one of p's objects lives under a key in scope.
func (sc *scope) touches(p Peer) bool {
	return sc.seenMAC[[6]byte(p.MAC)] || sc.seenAddr[p.NextHop] || sc.seenAddr[p.Underlay.Addr()] ||
		slices.ContainsFunc(p.CIDRs, func(c netip.Prefix) bool { return sc.seenPrefix[c] })
}

// readScope reads what the plan of the scope's peers depends on: the
// links (a handful in VXLAN mode), the FDB entries, neighbors, routes and
// set members under the scope's keys, ip_forward and the iptables chains.
// The peer-independent facts come from the baseline.
func (k *Kernel) readScope(n *Desired, b *baseline, sc *scope) (*Actual, error) {
	facts := b.facts
	a := &facts
	a.Chains, a.Sets = map[Chain][]string{}, map[string]IPSet{}
	links, err := k.listLinks()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	var dev *Link
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		if l.Attrs().Name == n.Device {
			ll := linkFrom(l)
			dev = &ll
		}
	}
	if dev == nil || !dev.Owned() || dev.Kind != "vxlan" {
		return nil, fmt.Errorf("device %s is missing or not cframe's VXLAN device", n.Device)
	}
	dev.RPS = a.wantRPS() // as the last Reconcile left it
	a.Links = []Link{*dev}
	k.index[dev.Name] = dev.Index

	macs := macArena(len(sc.macs) + len(sc.hops))
	for _, mac := range sc.macs {
		e, ok, err := k.getFDB(dev.Index, dev.Port, mac, macs)
		if err != nil {
			return nil, err
		}
		if ok {
			e.Device = dev.Name
			a.FDB = append(a.FDB, e)
		}
	}
	for _, ip := range sc.hops {
		nb, ok, err := k.getNeighbor(dev.Index, dev.Name, ip, macs)
		if err != nil {
			return nil, err
		}
		if ok {
			a.Neighbors = append(a.Neighbors, nb)
		}
	}
	for _, c := range sc.cidrs {
		r, ok, err := k.getRoute(c.Addr(), names)
		if err != nil {
			return nil, err
		}
		switch {
		case !ok:
		case r.Protocol == RouteProtocol:
			if !slices.ContainsFunc(a.Routes, r.equal) {
				a.Routes = append(a.Routes, r.Route)
			}
		case r.Dst.Bits() > 0 && r.Dst.Overlaps(c):
			if !slices.ContainsFunc(a.ForeignRoutes, r.equal) {
				a.ForeignRoutes = append(a.ForeignRoutes, r.Route)
			}
		}
	}
	if a.IPForward, err = readIPForward(); err != nil {
		return nil, err
	}
	members := map[string][]netip.Prefix{SetPeers: sc.underlays}
	if n.Masquerade {
		members[SetNets] = sc.cidrs
	}
	for name, ms := range members {
		set := IPSet{Type: setTypes[name]}
		for _, m := range ms {
			in, err := k.setHas(name, m)
			if err != nil {
				return nil, err
			}
			if in {
				set.Members = append(set.Members, m)
			}
		}
		a.Sets[name] = set
	}
	if err := k.readChains(a); err != nil {
		return nil, err
	}
	return a, nil
}

// get sends one netlink get request and calls f with the answer; absent
// reports that the kernel has no such object.
func (k *Kernel) get(req *nl.NetlinkRequest, f func(msg []byte) error) (absent bool, err error) {
	k.count.Netlink++
	req.Flags |= unix.NLM_F_ACK // the answer ends with an acknowledgement
	err = k.roundTrip(unix.NETLINK_ROUTE, req, f)
	if errors.Is(err, unix.ENOENT) {
		return true, nil
	}
	return false, err
}

// getFDB returns the FDB entry of mac on the VXLAN device with index
// ifindex and dstport devPort (its first remote).
func (k *Kernel) getFDB(ifindex int, devPort uint16, mac net.HardwareAddr, macs *arena) (e FDBEntry, ok bool, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, 0)
	req.AddData(&netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(ifindex), Flags: netlink.NTF_SELF})
	req.AddData(nl.NewRtAttr(unix.NDA_LLADDR, mac))
	_, err = k.get(req, func(m []byte) error {
		var idx int
		var perr error
		e, idx, ok, perr = parseFDB(m, devPort, macs)
		ok = ok && idx == ifindex
		return perr
	})
	if err != nil {
		return e, false, fmt.Errorf("fdb get %s dev index %d: %w", mac, ifindex, err)
	}
	return e, ok, nil
}

// getNeighbor returns the permanent neighbor ip on the device with index
// ifindex (named dev).
func (k *Kernel) getNeighbor(ifindex int, dev string, ip netip.Addr, macs *arena) (nb Neighbor, ok bool, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, 0)
	req.AddData(&netlink.Ndmsg{Family: unix.AF_INET, Index: uint32(ifindex)})
	a4 := ip.As4()
	req.AddData(nl.NewRtAttr(unix.NDA_DST, a4[:]))
	_, err = k.get(req, func(m []byte) error {
		var perr error
		nb, ok, perr = parseNeighbor(m, ifindex, dev, macs)
		return perr
	})
	if err != nil {
		return nb, false, fmt.Errorf("neigh get %s dev %s: %w", ip, dev, err)
	}
	return nb, ok, nil
}

// getRoute returns the main-table route the kernel would use for dst, as
// it sits in the routing table (RTM_F_FIB_MATCH: its own prefix, protocol
// and metric); ok is false when there is none or it is in another table.
func (k *Kernel) getRoute(dst netip.Addr, names map[int]string) (r routeMsg, ok bool, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, 0)
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET, Dst_len: 32, Flags: unix.RTM_F_FIB_MATCH}})
	a4 := dst.As4()
	req.AddData(nl.NewRtAttr(unix.RTA_DST, a4[:]))
	_, err = k.get(req, func(m []byte) error {
		var perr error
		r, ok, perr = parseRoute(m, names)
		return perr
	})
	switch {
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.EACCES), errors.Is(err, unix.EINVAL):
		// No route, or one that only rejects (unreachable, prohibit,
		// blackhole): nothing of ours; adding ours over an exact one fails
		// and sends Update to a full reconcile.
		return r, false, nil
	case err != nil:
		return r, false, fmt.Errorf("route get %s fibmatch: %w", dst, err)
	}
	return r, ok, nil
}
