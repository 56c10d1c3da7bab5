// Package mesh computes what one edge's kernel should hold from the edge set:
// the desired-state half of the reconcile loop (netcfg does the kernel half).
// It is pure, so the controller's topology view and the agent agree on every
// derived value (VTEP MACs, next hops).
package mesh

import (
	"crypto/sha256"
	"net"
	"net/netip"
	"sort"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
)

// VNI is the VXLAN network identifier every edge uses. Each edge's device
// listens on its own tunnel port, so it does not clash with other VXLAN users.
const VNI = 1

// VTEPMAC is the stable VTEP MAC address of an edge, derived from its name
// (a locally administered unicast address), so restarting or re-keying an
// edge never invalidates its peers' FDB entries.
func VTEPMAC(name string) net.HardwareAddr {
	h := sha256.Sum256([]byte("cframe-vtep\x00" + name))
	return net.HardwareAddr{0x02, h[0], h[1], h[2], h[3], h[4]}
}

// NextHop is the on-link gateway peers route an edge's IPv4 networks
// through: the network address of its first IPv4 CIDR (the primary one in
// the walkthrough), the shape flannel's VXLAN backend uses. It is unique
// because CIDRs never overlap. An edge with IPv6 CIDRs only has none: its
// IPv6 networks are routed via its link-local address on the tunnel
// (LinkLocal; see netcfg's route6.go).
func NextHop(e bus.Edge) netip.Addr {
	for _, p := range e.Prefixes() {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Local is what an edge knows about itself from its own config.
type Local struct {
	Name       string
	Mode       netcfg.Mode
	Device     string
	MTU        int
	Port       uint16
	LocalAddr  netip.Addr
	Masquerade bool
	// Checksum is the VXLAN device's checksum setting in force (the
	// agent's choice, or edge.toml's checksum_offload override).
	Checksum netcfg.Checksum
	// Encryption is edge.toml encryption (EncryptPrefer when empty).
	Encryption string
	// WireGuardKey is this edge's WireGuard key; zero when it has none:
	// encryption "none", or NoWireGuard says why (the kernel's words).
	WireGuardKey wgtypes.Key
	NoWireGuard  string
	// RotatingFrom is, while this edge rotates its WireGuard key, the key
	// it rotates from: the edge set may still pin that one, and the links
	// stay encrypted meanwhile (the device runs WireGuardKey already).
	RotatingFrom wgtypes.Key
}

// Desired returns the kernel state edge l should have for the edge set and
// the claims in force per site (see Site.Active), and whether l is
// registered in it. An unregistered edge gets its device and chains but no
// peers.
//
// Every other gateway is a peer with its FDB entry (and, in VXLAN mode,
// the permanent IPv6 neighbor of its link-local address: its identity in
// the tunnel), but only a remote site's active gateway carries the site's
// next hop and routes: its standby gateways, and l's own site's other
// gateways, are reachable through the tunnel (for probes and HA messages)
// and nothing is routed to them. A new active gateway is therefore one
// neighbor entry's change. The VIP is the agent's to set (package ha).
// Edges of the other underlay family are no peers at all (underlay.go);
// on an IPv6 underlay the local address defaults to the edge's hostaddr.
func Desired(l Local, set map[string]bus.Edge, claims map[string]bus.Claim) (netcfg.Desired, bool) {
	d := netcfg.Desired{
		Mode:       l.Mode,
		Device:     l.Device,
		DeviceMAC:  VTEPMAC(l.Name),
		VNI:        VNI,
		MTU:        l.MTU,
		Port:       l.Port,
		LocalAddr:  l.LocalAddr,
		Masquerade: l.Masquerade,
		Checksum:   l.Checksum,
	}
	self, ok := set[l.Name]
	if !ok {
		return d, false
	}
	vxlan := l.Mode == netcfg.ModeVXLAN || l.Mode == ""
	if vxlan {
		d.LinkLocal = LinkLocal(l.Name)
	}
	if !d.LocalAddr.IsValid() && self.HostAddr.Addr().Is6() {
		// An IPv6 underlay: its device needs the local address (the
		// hostaddr, unless edge.toml's local_addr says otherwise).
		d.LocalAddr = self.HostAddr.Addr()
	}
	d.LocalCIDRs = self.Prefixes()
	encrypting, why := l.encrypting(self)
	if encrypting && vxlan {
		l.encrypt(&d, self)
	}
	for _, s := range Sites(set) {
		active := s.Active(claims[s.Name]).Name
		for _, e := range s.Gateways {
			if e.Name == l.Name || !ShareUnderlay(self, e) {
				continue
			}
			p := netcfg.Peer{Name: e.Name, Underlay: e.HostAddr, MAC: VTEPMAC(e.Name)}
			if vxlan {
				link := l.linkTo(encrypting, why, e)
				if link.NoPath {
					continue
				}
				var err error
				if p, err = peer(e, link); err != nil {
					continue // a key the controller would not have pinned
				}
				p.LinkLocal = LinkLocal(e.Name)
			}
			if e.Name == active && s.Name != self.SiteName() {
				p.NextHop, p.CIDRs = NextHop(e), e.Prefixes()
			}
			d.Peers = append(d.Peers, p)
		}
	}
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].Name < d.Peers[j].Name })
	return d, true
}
