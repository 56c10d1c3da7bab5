package netcfg

import (
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode is the encapsulation used between edges.
type Mode string

const (
	// ModeVXLAN uses one VXLAN device for all peers (the default).
	ModeVXLAN Mode = "vxlan"
	// ModeGRE uses one point-to-point GRE device per peer.
	ModeGRE Mode = "gre"
)

// RouteProtocol is the rtnetlink protocol number stamped on every route
// cframe installs ("ip route show proto 207"); routes with any other protocol
// are never modified.
const RouteProtocol = 207

// OwnerAlias prefixes the alias (IFLA_IFALIAS) of every link cframe creates;
// a link with the configured name but without this alias is someone else's.
const OwnerAlias = "cframe"

// vxlanOverhead is the encapsulation overhead subtracted from the underlay MTU
// (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
const vxlanOverhead = 50

// greOverhead is the encapsulation overhead of a GRE tunnel (outer IPv4 20 + GRE 4).
const greOverhead = 24

// Desired is the complete kernel state one edge should have.
type Desired struct {
	// Mode is the encapsulation; empty means ModeVXLAN.
	Mode Mode
	// Device is the VXLAN device name; in GRE mode it is the prefix of the
	// per-peer device names. Empty means DefaultDevice.
	Device string
	// DeviceMAC is this edge's own VTEP MAC address (VXLAN mode); nil leaves
	// the kernel's random address alone.
	DeviceMAC net.HardwareAddr
	// VNI is the VXLAN network identifier shared by all edges; 0 means
	// DefaultVNI.
	VNI int
	// MTU of the tunnel device(s); 0 means underlay MTU minus the overhead.
	MTU int
	// Port is this edge's own tunnel UDP port (the VXLAN dstport it listens
	// on); 0 means DefaultPort.
	Port uint16
	// LocalAddr is the underlay source address; invalid means the kernel's
	// choice. An IPv6 address makes the underlay IPv6 (underlay6.go).
	LocalAddr netip.Addr
	// LocalCIDRs are the networks behind this edge.
	LocalCIDRs []netip.Prefix
	// LANAddr is the source address for routes to remote networks; invalid
	// means "the host address that lies inside one of LocalCIDRs", if any.
	LANAddr netip.Addr
	// Masquerade SNATs tunnel traffic entering the LAN to LANAddr.
	Masquerade bool
	// Checksum is the VXLAN device's checksum setting (ethtool.go); empty
	// means ChecksumSafe.
	Checksum Checksum
	// LinkLocal, when valid, is this edge's IPv6 link-local address on the
	// VXLAN device (lladdr.go): the identity through the tunnel that the
	// peers probe and send HA messages to. VXLAN mode only.
	LinkLocal netip.Addr
	// VIP, when valid, is the site's virtual IP this gateway holds on its
	// LAN interface (vip.go). KeepVIP leaves cframe's VIP addresses as they
	// are instead — neither added nor removed — and VIP is ignored.
	VIP     netip.Addr
	KeepVIP bool
	// VIP6, when valid, is the site's IPv6 virtual IP this gateway holds
	// beside (or instead of) VIP; KeepVIP applies to it too.
	VIP6 netip.Addr
	// WireGuard, when not nil, is the WireGuard device the encrypted peers
	// are reached through (wireguard.go; VXLAN mode only). The VXLAN
	// device's MTU then leaves room for both encapsulations, and its
	// underlay source is the kernel's choice per route (the mesh address
	// toward encrypted peers).
	WireGuard *WireGuard
	// Peers are the other edges of the mesh.
	Peers []Peer
}

// Checksum is a checksum setting of the VXLAN device: how the inner and
// the outer UDP checksums of the tunnel's packets are computed (ethtool.go).
type Checksum string

const (
	// ChecksumSafe: transmit checksum offload off, the outer UDP checksum
	// on. The inner checksums are complete before encapsulation, so every
	// NAT on the path updates the outer one correctly.
	ChecksumSafe Checksum = "safe"
	// ChecksumFast: transmit checksum offload on and a zero outer UDP
	// checksum, as fast as the kernel's VXLAN gets. A Linux NAT leaves a
	// zero checksum alone (since 5.7, backported to 4.14.181, 4.19.123,
	// 5.4.41); a NAT that rewrites it anyway breaks the tunnel's TCP and
	// UDP while pings pass.
	ChecksumFast Checksum = "fast"
)

// fast reports whether c is ChecksumFast.
func (c Checksum) fast() bool { return c == ChecksumFast }

// outerUDP reports whether a VXLAN device sending from local computes the
// outer UDP checksum: always but with the fast setting, whose zero
// checksum is IPv4's only (over IPv6 the kernel sends, and reports, the
// checksum on whatever the device asked).
func (c Checksum) outerUDP(local netip.Addr) bool { return !c.fast() || local.Is6() }

// Peer is one remote edge.
type Peer struct {
	// Name is the peer's edge name (used in logs and GRE device aliases).
	Name string
	// Underlay is the peer's public address and tunnel port: where its
	// VXLAN packets go, or for an encrypted peer its WireGuard endpoint.
	Underlay netip.AddrPort
	// MAC is the peer's VTEP MAC (VXLAN mode).
	MAC net.HardwareAddr
	// NextHop is the on-link gateway address used for the peer's routes and
	// its permanent neighbor entry (VXLAN mode). A peer without CIDRs (a
	// standby gateway) has none: it only gets its FDB entry.
	NextHop netip.Addr
	// CIDRs are the networks behind the peer.
	CIDRs []netip.Prefix
	// LinkLocal, when valid, is the peer's IPv6 link-local address on the
	// tunnel: it gets a permanent IPv6 neighbor with MAC (neigh6.go).
	LinkLocal netip.Addr
	// Mesh, when valid, makes the peer encrypted (Desired.WireGuard must be
	// set): its mesh address and VXLAN port, where its FDB entry sends
	// through the WireGuard device; PublicKey is its WireGuard key and
	// Keepalive, when not 0, the persistent keepalive that holds a NAT
	// mapping on the path open.
	Mesh      netip.AddrPort
	PublicKey wgtypes.Key
	Keepalive time.Duration
}
