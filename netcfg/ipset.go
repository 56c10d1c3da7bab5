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
	// setPeers (hash:ip) holds every plaintext peer's underlay address:
	// the only sources CFRAME-INPUT admits the tunnel protocol from on the
	// underlay (an encrypted peer's VXLAN packets come out of the
	// WireGuard device, so a plaintext one forged with its address dies).
	setPeers = "cframe-peers"
	// setNets (hash:net) holds every peer's networks while Masquerade is
	// on: CFRAME-POSTROUTING SNATs traffic from them into the LAN.
	setNets = "cframe-nets"
	// setNets6 (hash:net, family inet6) holds the peers' IPv6 networks
	// while Masquerade is on and the mesh has IPv6 CIDRs: the ip6tables
	// CFRAME-POSTROUTING SNATs traffic from them (chains6.go).
	setNets6 = "cframe-nets6"
	// setPeers6 (hash:ip, family inet6) holds the peers' IPv6 underlay
	// addresses on an edge with an IPv6 underlay (underlay6.go).
	setPeers6 = "cframe-peers6"
)

// setTypes are the ipset types of cframe's sets.
var setTypes = map[string]string{setPeers: "hash:ip", setNets: "hash:net", setNets6: "hash:net", setPeers6: "hash:ip"}

// setFamily is the address family of set name's members.
func setFamily(name string) (family uint8, word string) {
	if name == setNets6 || name == setPeers6 {
		return unix.AF_INET6, "inet6"
	}
	return unix.AF_INET, "inet"
}

// ipset is an ipset: its type ("hash:ip", "hash:net") and members, the
// members of a hash:ip set as /32s.
type ipset struct {
	Type    string
	Members []netip.Prefix
}

// readSets reads cframe's sets: all their members, or with keys whether
// each key of the scope — the peers' underlay addresses, and their
// networks under Masquerade — is a member, one test each (a set missing
// then is an error).
func (s *session) readSets(r *reading) error {
	if r.keys != nil {
		members := map[string][]netip.Prefix{setPeers: r.keys.underlays}
		if r.d.underlay6() {
			members = map[string][]netip.Prefix{setPeers: nil, setPeers6: r.keys.underlays}
		}
		if r.d.Masquerade {
			members[setNets] = nil
			if wantsIPv6(r.d) && s.k.ip6tables() != nil {
				members[setNets6] = nil
			}
			for _, c := range r.keys.cidrs {
				name := setNets
				if isV6(c) {
					name = setNets6
				}
				if _, ok := members[name]; ok {
					members[name] = append(members[name], c)
				}
			}
		}
		for name, keys := range members {
			set := ipset{Type: setTypes[name]}
			for _, m := range keys {
				in, err := s.nl.IpsetTest(name, setEntry(m))
				if err != nil {
					return fmt.Errorf("ipset test %s %s: %w", name, member(m), err)
				}
				if in {
					set.Members = append(set.Members, m)
				}
			}
			r.a.Sets[name] = set
		}
		return nil
	}
	nets := 0
	for _, p := range r.d.Peers {
		nets += len(p.CIDRs)
	}
	for name, hint := range map[string]int{setPeers: len(r.d.Peers), setNets: nets, setNets6: 0, setPeers6: 0} {
		set := ipset{Members: make([]netip.Prefix, 0, hint)}
		family, _ := setFamily(name)
		req := nl.NewNetlinkRequest(nl.IPSET_CMD_LIST|unix.NFNL_SUBSYS_IPSET<<8, nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
		req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
		req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
		req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
		err := s.dump("ipset "+name, unix.NETLINK_NETFILTER, req, func() { set.Members = set.Members[:0] }, func(m []byte) error {
			if len(m) < nl.SizeofNfgenmsg {
				return errors.New("short ipset message")
			}
			walkAttrs(m[nl.DeserializeNfgenmsg(m).Len():], func(typ uint16, v []byte) {
				switch typ {
				case nl.IPSET_ATTR_TYPENAME:
					set.Type = unix.ByteSliceToString(v)
				case nl.IPSET_ATTR_ADT:
					walkAttrs(v, func(typ uint16, v []byte) {
						if typ == nl.IPSET_ATTR_DATA {
							if p, ok := setMember(v); ok {
								set.Members = append(set.Members, p)
							}
						}
					})
				}
			})
			return nil
		})
		switch {
		case errors.Is(err, unix.ENOENT): // no such set
		case err != nil:
			return err
		default:
			r.a.Sets[name] = set
		}
	}
	return nil
}

// setMember decodes one ipset entry (IPSET_ATTR_DATA) of an IPv4 or IPv6
// hash:ip or hash:net set.
func setMember(data []byte) (netip.Prefix, bool) {
	var addr netip.Addr
	bits := -1
	walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case nl.IPSET_ATTR_IP:
			walkAttrs(v, func(typ uint16, v []byte) {
				switch typ {
				case nl.IPSET_ATTR_IPADDR_IPV4:
					addr, _ = ip4(v)
				case nl.IPSET_ATTR_IPADDR_IPV6:
					addr, _ = ip6(v)
				}
			})
		case nl.IPSET_ATTR_CIDR:
			if len(v) == 1 {
				bits = int(v[0])
			}
		}
	})
	if bits < 0 {
		bits = addr.BitLen()
	}
	return netip.PrefixFrom(addr, bits), addr.IsValid() && bits <= addr.BitLen()
}

// planSets makes setPeers hold the plaintext peers' underlay addresses and, under
// Masquerade, setNets their networks; setNets goes when Masquerade is off.
// It notes in setReady the sets the rules may match.
func (p *planner) planSets() {
	underlays := make([]netip.Prefix, 0, len(p.d.Peers))
	var nets, nets6 []netip.Prefix
	for _, peer := range p.d.Peers {
		if !peer.Encrypted() {
			a := peer.Underlay.Addr()
			underlays = append(underlays, netip.PrefixFrom(a, a.BitLen()))
		}
		if p.d.Masquerade {
			for _, c := range peer.CIDRs {
				if isV6(c) && !p.ipv6 {
					continue
				}
				if isV6(c) {
					nets6 = append(nets6, c)
				} else {
					nets = append(nets, c)
				}
			}
		}
	}
	if p.d.underlay6() {
		// The peers' addresses are IPv6; the iptables INPUT filter keeps
		// its (empty) set and drops the tunnel port over IPv4.
		p.setReady[setPeers] = p.planSet(setPeers, nil)
		p.setReady[setPeers6] = p.a.IP6tables && p.planSet(setPeers6, underlays)
	} else {
		p.setReady[setPeers] = p.planSet(setPeers, underlays)
		p.removeSet(setPeers6)
	}
	if p.d.Masquerade {
		p.setReady[setNets] = p.planSet(setNets, nets)
	} else {
		p.removeSet(setNets)
	}
	if p.d.Masquerade && p.ipv6 && p.a.IP6tables {
		p.setReady[setNets6] = p.planSet(setNets6, nets6)
	} else {
		p.removeSet(setNets6)
	}
}

// planSet makes set name hold exactly members: created when missing, new
// members added before the rules that use them (stageSets), stale ones
// removed after the peers' routes (stageMembersDel). A set of the wrong
// type is someone else's: reported, left alone, and planSet returns false.
func (p *planner) planSet(name string, members []netip.Prefix) bool {
	have, exists := p.a.Sets[name]
	typ := setTypes[name]
	switch {
	case !exists:
		p.add(stageSets, setCreate(name))
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
		p.add(stageSets, setAdd(name, m))
	}
	for _, m := range have.Members { // in kernel order, so that plans are deterministic
		if held[m] {
			p.add(stageMembersDel, setDel(name, m))
		}
	}
	return true
}

// removeSet destroys set name if it exists, once the rules using it are
// gone (stageSetsDel).
func (p *planner) removeSet(name string) {
	if _, ok := p.a.Sets[name]; ok {
		p.add(stageSetsDel, setDestroy(name))
	}
}

// removeSets destroys every set of cframe's (Cleanup).
func (p *planner) removeSets() {
	for _, name := range []string{setPeers, setNets, setNets6, setPeers6} {
		p.removeSet(name)
	}
}

// Set operations.

func setCreate(name string) change {
	typ := setTypes[name]
	family, word := setFamily(name)
	return change{desc: fmt.Sprintf("ipset create %s %s family %s", name, typ, word), do: func(s *session) error {
		return s.nl.IpsetCreate(name, typ, netlink.IpsetCreateOptions{Family: family})
	}}
}

func setDestroy(name string) change {
	return change{desc: "ipset destroy " + name, do: func(s *session) error { return ignoreGone(s.nl.IpsetDestroy(name)) }}
}

// setAdd adds a member; one that is already there counts as added.
func setAdd(name string, m netip.Prefix) change {
	return change{desc: fmt.Sprintf("ipset add %s %s", name, member(m)), do: func(s *session) error {
		return ignoreExists(s.nl.IpsetAdd(name, setEntry(m)))
	}}
}

// setDel removes a member; one that is already gone counts as removed.
func setDel(name string, m netip.Prefix) change {
	return change{desc: fmt.Sprintf("ipset del %s %s", name, member(m)), do: func(s *session) error {
		return ignoreGone(ignoreExists(s.nl.IpsetDel(name, setEntry(m))))
	}}
}

// ignoreExists drops IPSET_ERR_EXIST, which the kernel answers both for a
// member added that is there and for one deleted that is not.
func ignoreExists(err error) error {
	if errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) {
		return nil
	}
	return err
}

func setEntry(p netip.Prefix) *netlink.IPSetEntry {
	e := &netlink.IPSetEntry{IP: p.Addr().AsSlice()}
	if p.Bits() < p.Addr().BitLen() {
		e.CIDR = uint8(p.Bits())
	}
	return e
}

// member spells a set member the way ipset(8) does: an address alone for
// a single host.
func member(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
