package netcfg

import (
	"net"
	"net/netip"
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
	// ChecksumOffload keeps the VXLAN device's transmit checksum offload
	// on: faster, but TCP and UDP through the tunnel break when a Linux
	// NAT in the same kernel rewrites the tunnel's packets (ethtool.go).
	// Off by default: correct through any NAT.
	ChecksumOffload bool
	// LinkLocal, when valid, is this edge's IPv6 link-local address on the
	// VXLAN device (lladdr.go): the identity through the tunnel that the
	// peers probe and send HA messages to. VXLAN mode only.
	LinkLocal netip.Addr
	// VIP, when valid, is the site's virtual IP this gateway holds on its
	// LAN interface (vip.go). KeepVIP leaves cframe's VIP addresses as they
	// are instead — neither added nor removed — and VIP is ignored.
	VIP     netip.Addr
	KeepVIP bool
	// Peers are the other edges of the mesh.
	Peers []Peer
}

// Peer is one remote edge.
type Peer struct {
	// Name is the peer's edge name (used in logs and GRE device aliases).
	Name string
	// Underlay is the peer's public address and tunnel port.
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
}
