package netcfg

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The iptables rules that depend on the peers match one of two ipsets
// instead of naming each peer: a peer that joins or leaves is one set
// member added or removed over netlink — atomic, O(1) whatever the mesh
// size, and never a rewrite of a chain (iptables has no way to change one
// rule without fetching the whole ruleset, tens of milliseconds at a
// thousand rules). The chains stay a handful of rules.
const (
	// SetPeers (hash:ip) holds every peer's underlay address: the only
	// sources CFRAME-INPUT admits the tunnel protocol from.
	SetPeers = "cframe-peers"
	// SetNets (hash:net) holds every peer's networks while Masquerade is
	// on: CFRAME-POSTROUTING SNATs traffic from them into the LAN.
	SetNets = "cframe-nets"
)

// setTypes are the ipset types of cframe's sets.
var setTypes = map[string]string{SetPeers: "hash:ip", SetNets: "hash:net"}

func (k *Kernel) setCreate(name string) error {
	k.count.Netlink++
	return k.nl.IpsetCreate(name, setTypes[name], netlink.IpsetCreateOptions{Family: unix.AF_INET})
}

func (k *Kernel) setDestroy(name string) error {
	k.count.Netlink++
	return ignoreGone(k.nl.IpsetDestroy(name))
}

func setEntry(p netip.Prefix) *netlink.IPSetEntry {
	e := &netlink.IPSetEntry{IP: p.Addr().AsSlice()}
	if p.Bits() < 32 {
		e.CIDR = uint8(p.Bits())
	}
	return e
}

// setAdd adds a member; one that is already there counts as added.
func (k *Kernel) setAdd(name string, p netip.Prefix) error {
	k.count.Netlink++
	err := k.nl.IpsetAdd(name, setEntry(p))
	if errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) {
		return nil
	}
	return err
}

// setDel removes a member; one that is already gone counts as removed
// (the kernel answers IPSET_ERR_EXIST for both).
func (k *Kernel) setDel(name string, p netip.Prefix) error {
	k.count.Netlink++
	err := k.nl.IpsetDel(name, setEntry(p))
	if errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) {
		return nil
	}
	return ignoreGone(err)
}

// setHas reports whether p is a member of set name (a missing set is an
// error).
func (k *Kernel) setHas(name string, p netip.Prefix) (bool, error) {
	k.count.Netlink++
	in, err := k.nl.IpsetTest(name, setEntry(p))
	if err != nil {
		return false, fmt.Errorf("ipset test %s %s: %w", name, member(p), err)
	}
	return in, nil
}

// planSet makes set name hold exactly members: created (stage sets) when
// missing, new members added before the rules that use them (stage sets),
// stale ones removed after the peer's routes (stage delMembers). A set of
// the wrong type is someone else's: reported, left alone.
func (p *planner) planSet(name string, members []netip.Prefix) bool {
	have, exists := p.a.Sets[name]
	typ := setTypes[name]
	switch {
	case !exists:
		p.sets = append(p.sets, Change{fmt.Sprintf("ipset create %s %s family inet", name, typ), func(k *Kernel) error { return k.setCreate(name) }, nil})
	case have.Type != typ:
		p.conflict("", "ipset %s has type %s, not %s: left alone, the rules using it are not installed", name, have.Type, typ)
		return false
	}
	held := make(map[netip.Prefix]bool, len(have.Members))
	for _, m := range have.Members {
		held[m] = true
	}
	planned := make(map[netip.Prefix]bool, len(members))
	for _, m := range members {
		if planned[m] { // peers sharing an underlay address
			continue
		}
		planned[m] = true
		if held[m] {
			delete(held, m)
			continue
		}
		p.sets = append(p.sets, Change{fmt.Sprintf("ipset add %s %s", name, member(m)), func(k *Kernel) error { return k.setAdd(name, m) }, nil})
	}
	for _, m := range have.Members { // in kernel order, so that plans are deterministic
		if held[m] {
			p.delMembers = append(p.delMembers, Change{fmt.Sprintf("ipset del %s %s", name, member(m)), func(k *Kernel) error { return k.setDel(name, m) }, nil})
		}
	}
	return true
}

// member spells a set member the way ipset(8) does: an address alone for
// a single host.
func member(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// removeSet destroys an owned set that is no longer wanted, once the rules
// using it are gone (stage setDel).
func (p *planner) removeSet(name string) {
	if _, ok := p.a.Sets[name]; ok {
		p.setDel = append(p.setDel, Change{"ipset destroy " + name, func(k *Kernel) error { return k.setDestroy(name) }, nil})
	}
}
