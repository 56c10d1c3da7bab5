package netcfg

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Defaults applied to zero fields of Desired.
const (
	// DefaultDevice is the VXLAN device name (and GRE device name prefix).
	DefaultDevice = "cframe0"
	// DefaultVNI is the VXLAN network identifier used when Desired.VNI is 0.
	DefaultVNI = 1
	// DefaultPort is the tunnel UDP port used when Desired.Port is 0 (the
	// walkthrough's listen_addr ":58423").
	DefaultPort = 58423
)

// greTTL is the outer TTL of GRE tunnels.
const greTTL = 64

// validate reports the first problem that would keep n (normalized) from
// being applied: unknown mode, bad names, LAN addresses that are not IPv4,
// peers' underlay addresses of another family than the edge's own, missing peer data for the mode (an IPv4 next hop for IPv4
// CIDRs, a link-local address for IPv6 CIDRs in VXLAN mode), duplicate
// peers, MACs, next hops or CIDRs. CIDRs may be of either family.
func (n *Desired) validate() error {
	if n.Mode != ModeVXLAN && n.Mode != ModeGRE {
		return fmt.Errorf("unknown mode %q (want %q or %q)", n.Mode, ModeVXLAN, ModeGRE)
	}
	if n.Device != "" {
		if err := CheckDevice(n.Device); err != nil {
			return err
		}
	}
	if n.VNI < 0 || n.VNI >= 1<<24 {
		return fmt.Errorf("VNI %d out of range", n.VNI)
	}
	if err := CheckMTU(n.MTU); err != nil {
		return err
	}
	if n.DeviceMAC != nil && !unicastMAC(n.DeviceMAC) {
		return fmt.Errorf("device MAC %s is not a unicast Ethernet address", n.DeviceMAC)
	}
	if n.LocalAddr.IsValid() && n.LocalAddr.Is6() && (n.Mode != ModeVXLAN || n.LocalAddr.Is4In6() || !n.LocalAddr.IsGlobalUnicast() || n.LocalAddr.Zone() != "") {
		return fmt.Errorf("local address %s: an IPv6 underlay takes a global unicast address, and VXLAN mode", n.LocalAddr)
	}
	underlay6 := n.underlay6()
	if n.LANAddr.IsValid() && !n.LANAddr.Is4() {
		return fmt.Errorf("LAN address %s is not IPv4", n.LANAddr)
	}
	if n.LinkLocal.IsValid() && !n.LinkLocal.IsLinkLocalUnicast() || n.LinkLocal.Zone() != "" {
		return fmt.Errorf("link-local address %s is not an IPv6 link-local address without zone", n.LinkLocal)
	}
	if n.VIP.IsValid() && !n.VIP.Is4() {
		return fmt.Errorf("VIP %s is not IPv4", n.VIP)
	}
	if n.VIP6.IsValid() && (!n.VIP6.Is6() || n.VIP6.Is4In6() || n.VIP6.Zone() != "" || !n.VIP6.IsGlobalUnicast()) {
		return fmt.Errorf("VIP6 %s is not a global IPv6 address", n.VIP6)
	}
	if err := n.validateWireGuard(); err != nil {
		return err
	}
	for _, c := range n.LocalCIDRs {
		if !c.IsValid() || c.Addr().Is4In6() || c.Addr().Zone() != "" {
			return fmt.Errorf("local CIDR %s is not an IPv4 or IPv6 prefix", c)
		}
	}
	// One map per kind, keyed by small values (IPv4 addresses as
	// integers, not formatted strings): this runs on every reconcile and
	// update, with thousands of keys at scale. Peers are sorted by name,
	// so a repeated name is the previous one.
	cidrs := make(map[uint64]string, 2*len(n.Peers))
	cidrs6 := make(map[netip.Prefix]string)
	macs := make(map[[6]byte]string, len(n.Peers))
	hops := make(map[uint32]string, len(n.Peers))
	lls := make(map[netip.Addr]string)
	wgKeys := make(map[wgtypes.Key]string)
	gres := map[string]string{}
	dup := func(other, peer, kind string, key any) error {
		return fmt.Errorf("peers %q and %q have the same %s %v", other, peer, kind, key)
	}
	for i, p := range n.Peers {
		if p.Name == "" {
			return errors.New("peer without a name")
		}
		if i > 0 && n.Peers[i-1].Name == p.Name {
			return dup(p.Name, p.Name, "name", p.Name)
		}
		if a := p.Underlay.Addr(); a.Is6() != underlay6 || a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("peer %q: underlay address %s is not of this edge's underlay family (%s)", p.Name, a, n.underlayFamily())
		}
		has4, has6 := false, false
		for _, c := range p.CIDRs {
			if !c.IsValid() || c.Addr().Is4In6() || c.Addr().Zone() != "" {
				return fmt.Errorf("peer %q: CIDR %s is not an IPv4 or IPv6 prefix", p.Name, c)
			}
			if c.Addr().Is6() {
				has6 = true
				if other, ok := cidrs6[c]; ok {
					return dup(other, p.Name, "CIDR", c)
				}
				cidrs6[c] = p.Name
				continue
			}
			has4 = true
			key := uint64(v4(c.Addr()))<<8 | uint64(c.Bits())
			if other, ok := cidrs[key]; ok {
				return dup(other, p.Name, "CIDR", c)
			}
			cidrs[key] = p.Name
		}
		switch n.Mode {
		case ModeVXLAN:
			if p.Underlay.Port() == 0 {
				return fmt.Errorf("peer %q: underlay %s has no port", p.Name, p.Underlay)
			}
			if !unicastMAC(p.MAC) {
				return fmt.Errorf("peer %q: VTEP MAC %q is not a unicast Ethernet address", p.Name, p.MAC)
			}
			if other, ok := macs[[6]byte(p.MAC)]; ok {
				return dup(other, p.Name, "MAC", p.MAC)
			}
			macs[[6]byte(p.MAC)] = p.Name
			switch {
			case !p.NextHop.IsValid() && !has4: // a plain peer, or IPv6 CIDRs only
			case !p.NextHop.Is4():
				return fmt.Errorf("peer %q: next hop %s is not IPv4", p.Name, p.NextHop)
			default:
				if other, ok := hops[v4(p.NextHop)]; ok {
					return dup(other, p.Name, "next hop", p.NextHop)
				}
				hops[v4(p.NextHop)] = p.Name
			}
			if p.LinkLocal.IsValid() {
				if !p.LinkLocal.IsLinkLocalUnicast() || p.LinkLocal.Zone() != "" {
					return fmt.Errorf("peer %q: link-local address %s is not an IPv6 link-local address without zone", p.Name, p.LinkLocal)
				}
				if other, ok := lls[p.LinkLocal]; ok {
					return dup(other, p.Name, "link-local address", p.LinkLocal)
				}
				lls[p.LinkLocal] = p.Name
			} else if has6 {
				return fmt.Errorf("peer %q: IPv6 CIDRs need a link-local address (their next hop on the tunnel)", p.Name)
			}
			if p.Encrypted() {
				if err := n.validateEncrypted(p); err != nil {
					return err
				}
				if other, ok := wgKeys[p.PublicKey]; ok {
					return dup(other, p.Name, "WireGuard key", p.PublicKey)
				}
				wgKeys[p.PublicKey] = p.Name
				// Mesh addresses share the link-local map: both are
				// per-peer addresses that must be unique.
				if other, ok := lls[p.Mesh.Addr()]; ok {
					return dup(other, p.Name, "mesh address", p.Mesh.Addr())
				}
				lls[p.Mesh.Addr()] = p.Name
			}
		case ModeGRE:
			dev := greDevice(n.Device, p.Name)
			if other, ok := gres[dev]; ok {
				return dup(other, p.Name, "GRE device", dev)
			}
			gres[dev] = p.Name
		}
	}
	return nil
}

// validateWireGuard checks the WireGuard device of n (normalized).
func (n *Desired) validateWireGuard() error {
	wg := n.WireGuard
	if wg == nil {
		return nil
	}
	switch {
	case n.Mode != ModeVXLAN:
		return fmt.Errorf("WireGuard needs mode %q, not %q", ModeVXLAN, n.Mode)
	case wg.Device == n.Device:
		return fmt.Errorf("WireGuard device %s has the VXLAN device's name", wg.Device)
	case wg.PrivateKey == wgtypes.Key{}:
		return errors.New("WireGuard device without a private key")
	case wg.ListenPort == 0 || wg.ListenPort == n.Port:
		return fmt.Errorf("WireGuard listen port %d: want a port other than the VXLAN port %d", wg.ListenPort, n.Port)
	case !wg.Address.IsValid() || !wg.Address.Addr().Is4() || wg.Address.Bits() >= 32:
		return fmt.Errorf("WireGuard address %s is not an IPv4 address with the mesh's prefix length", wg.Address)
	}
	return CheckDevice(wg.Device)
}

// validateEncrypted checks an encrypted peer of n (normalized).
func (n *Desired) validateEncrypted(p Peer) error {
	wg := n.WireGuard
	switch {
	case wg == nil:
		return fmt.Errorf("peer %q: encrypted (mesh address %s) without a WireGuard device", p.Name, p.Mesh)
	case p.PublicKey == wgtypes.Key{}:
		return fmt.Errorf("peer %q: encrypted without a WireGuard key", p.Name)
	case p.Mesh.Port() == 0:
		return fmt.Errorf("peer %q: mesh address %s has no port", p.Name, p.Mesh)
	case !wg.Address.Masked().Contains(p.Mesh.Addr()) || p.Mesh.Addr() == wg.Address.Addr():
		return fmt.Errorf("peer %q: mesh address %s is not another address of this edge's mesh %s", p.Name, p.Mesh.Addr(), wg.Address.Masked())
	case p.Keepalive < 0 || p.Keepalive > 65535*time.Second:
		return fmt.Errorf("peer %q: persistent keepalive %v out of range", p.Name, p.Keepalive)
	}
	return nil
}

// v4 is an IPv4 address as an integer.
func v4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func unicastMAC(m []byte) bool {
	return len(m) == 6 && m[0]&1 == 0 && slices.ContainsFunc(m, func(b byte) bool { return b != 0 })
}

// normalized returns a copy of d with defaults filled in, prefixes masked
// and peers sorted by name, so that plans are deterministic.
func (d *Desired) normalized() Desired {
	n := *d
	if n.Mode == "" {
		n.Mode = ModeVXLAN
	}
	if n.Device == "" {
		n.Device = DefaultDevice
	}
	if n.VNI == 0 {
		n.VNI = DefaultVNI
	}
	if n.Port == 0 {
		n.Port = DefaultPort
	}
	if n.Checksum == "" {
		n.Checksum = ChecksumSafe
	}
	if d.WireGuard != nil {
		wg := *d.WireGuard
		if wg.Device == "" {
			wg.Device = DefaultWireGuardDevice
		}
		n.WireGuard = &wg
	}
	n.LocalCIDRs = maskAll(d.LocalCIDRs)
	n.Peers = make([]Peer, len(d.Peers))
	for i, p := range d.Peers {
		p.CIDRs = maskAll(p.CIDRs)
		n.Peers[i] = p
	}
	slices.SortFunc(n.Peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return n
}

func maskAll(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if m := p.Masked(); !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// greDevice returns the GRE device name for a peer: the device prefix cut to
// 8 characters, "-", and 6 hex digits of the peer name's SHA-256, so names
// are stable, at most 15 characters and distinct per peer.
func greDevice(prefix, peer string) string {
	if len(prefix) > 8 {
		prefix = prefix[:8]
	}
	sum := sha256.Sum256([]byte(peer))
	return prefix + "-" + hex.EncodeToString(sum[:3])
}

// The tunnel device's MTU range: IPv4's minimum, and the largest jumbo
// frame underlays commonly carry less the encapsulation.
const (
	MinMTU = 576
	MaxMTU = 9000
)

// CheckMTU reports whether mtu is a tunnel MTU cframe sets (0: automatic,
// from the underlay's).
func CheckMTU(mtu int) error {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return fmt.Errorf("MTU %d is out of range (%d-%d, or 0 for automatic)", mtu, MinMTU, MaxMTU)
	}
	return nil
}

// CheckDevice reports whether name is a valid interface name for a tunnel
// device, and not a tunnel module's own (FallbackDevice).
func CheckDevice(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, " /:\t") {
		return fmt.Errorf("bad device name %q: not a valid interface name (1-15 characters, no spaces, '/' or ':')", name)
	}
	if FallbackDevice(name) {
		return fmt.Errorf("device name %q is a tunnel module's own fallback device, never cframe's: choose another", name)
	}
	return nil
}

// FallbackDevice reports whether name is one of the devices tunnel modules
// create in every namespace once loaded (ip_gre's gre0, gretap0 and
// erspan0; ip6_gre's ip6gre0; ip6_tunnel's ip6tnl0; ipip's tunl0; sit's
// sit0; the vti modules' ip_vti0 and ip6_vti0). They are the kernel's:
// cframe never uses, changes, deletes or counts them.
func FallbackDevice(name string) bool {
	switch name {
	case "gre0", "gretap0", "erspan0", "ip6gre0", "ip6tnl0", "tunl0", "sit0", "ip_vti0", "ip6_vti0":
		return true
	}
	return false
}
