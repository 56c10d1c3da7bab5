package netcfg

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// What Update builds on and what it reads: the baseline of the last full
// Reconcile and the scope of a change of the peers.

// baseline is what Update builds on: the namespace and desired state of
// the last successful Reconcile or Update, the facts of the last full read
// that do not depend on the peers, and the conflicts found so far.
type baseline struct {
	ns nsID
	d  Desired
	// facts is an actual holding only what does not depend on the peers:
	// the LAN address, the underlay's MTU and how it receives, the CPUs.
	facts actual
	notes []conflictNote
}

// newBaseline records a successful full reconcile of n over a.
func newBaseline(n Desired, a *actual, notes []conflictNote) *baseline {
	ns, err := threadNS()
	if err != nil {
		return nil
	}
	return &baseline{ns: ns, d: n, notes: notes, facts: actual{LANAddr: a.LANAddr, LANAddr6: a.LANAddr6, UnderlayMTU: a.UnderlayMTU,
		UnderlayRxQueues: a.UnderlayRxQueues, CPUs: a.CPUs, UnderlayRxOnSender: a.UnderlayRxOnSender}}
}

// updatePeers is Update without the fallback: fallback is empty when it
// made the change, else the reason a full reconcile is needed (res then
// holds what was applied before giving up).
func (k *Kernel) updatePeers(n Desired) (res Result, fallback string) {
	b := k.base
	switch {
	case b == nil:
		return res, "no earlier reconcile to build on"
	case n.Mode != ModeVXLAN:
		return res, "mode " + string(n.Mode)
	}
	if fields := changedBesidesPeers(b.d, n); len(fields) > 0 {
		return res, "more than the peers changed: " + strings.Join(fields, ", ")
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
	sc.facts = b.facts
	k.base = nil // restored below once the change is applied
	sub := n
	sub.Peers = sc.peers
	res, p, a, err := k.pass(sub, &sc)
	switch {
	case a == nil && err != nil:
		return res, "targeted read: " + err.Error()
	case err != nil:
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

// changedBesidesPeers names the fields other than Peers in which a and b
// differ. It compares every field, so that one added to Desired later
// cannot be missed: a change of it makes Update reconcile fully.
func changedBesidesPeers(a, b Desired) []string {
	a.Peers, b.Peers = nil, nil
	if reflect.DeepEqual(a, b) {
		return nil
	}
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var fields []string
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			fields = append(fields, va.Type().Field(i).Name)
		}
	}
	return fields
}

// samePeer reports whether a and b are the same in every field.
// TestSamePeerComparesEveryField changes each field of Peer, so that a
// field added later cannot be missed here (reflect.DeepEqual would take
// about a millisecond for a thousand peers, on every Update).
func samePeer(a, b Peer) bool {
	return a.Name == b.Name && a.Underlay == b.Underlay && bytes.Equal(a.MAC, b.MAC) &&
		a.NextHop == b.NextHop && slices.Equal(a.CIDRs, b.CIDRs) && a.LinkLocal == b.LinkLocal &&
		a.Mesh == b.Mesh && a.PublicKey == b.PublicKey && a.Keepalive == b.Keepalive
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
	names map[string]bool
	// The keys: FDB entries are read by MAC, neighbors by next hop, IPv6
	// neighbors by link-local address, routes and members of setNets by
	// CIDR, members of setPeers by underlay address (as /32s).
	macs      []net.HardwareAddr
	hops      []netip.Addr
	lls       []netip.Addr
	cidrs     []netip.Prefix
	underlays []netip.Prefix
	// wgKeys are the WireGuard peers in scope, by public key.
	wgKeys map[wgtypes.Key]bool
	// The same keys as sets.
	seenMAC    map[[6]byte]bool
	seenAddr   map[netip.Addr]bool // next hops, link-local and underlay addresses
	seenPrefix map[netip.Prefix]bool
	// facts are the baseline's facts that do not depend on the peers.
	facts actual
}

// newScope compares prev and next, both sorted by name (normalized).
func newScope(prev, next []Peer) scope {
	sc := scope{names: map[string]bool{}, wgKeys: map[wgtypes.Key]bool{}, seenMAC: map[[6]byte]bool{}, seenAddr: map[netip.Addr]bool{}, seenPrefix: map[netip.Prefix]bool{}}
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
	if p.NextHop.IsValid() && !sc.seenAddr[p.NextHop] {
		sc.seenAddr[p.NextHop] = true
		sc.hops = append(sc.hops, p.NextHop)
	}
	if p.Encrypted() {
		sc.wgKeys[p.PublicKey] = true
	}
	if p.LinkLocal.IsValid() && !sc.seenAddr[p.LinkLocal] {
		sc.seenAddr[p.LinkLocal] = true
		sc.lls = append(sc.lls, p.LinkLocal)
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
	return sc.seenMAC[[6]byte(p.MAC)] || p.NextHop.IsValid() && sc.seenAddr[p.NextHop] || sc.seenAddr[p.Underlay.Addr()] ||
		p.LinkLocal.IsValid() && sc.seenAddr[p.LinkLocal] || p.Encrypted() && sc.wgKeys[p.PublicKey] ||
		slices.ContainsFunc(p.CIDRs, func(c netip.Prefix) bool { return sc.seenPrefix[c] })
}
