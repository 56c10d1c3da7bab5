package mesh

import (
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/netcfg"
)

// Encryption settings (edge.toml encryption).
const (
	// EncryptPrefer encrypts with every peer that can and runs plaintext,
	// loudly, with the others (the default).
	EncryptPrefer = "prefer"
	// EncryptRequired never runs plaintext: a peer that cannot encrypt gets
	// no path.
	EncryptRequired = "required"
	// EncryptNone runs every link plaintext (private links).
	EncryptNone = "none"
)

// Keepalive is the persistent keepalive of every WireGuard peer: it holds
// NAT and stateful-firewall mappings on the path open and keeps each link's
// latest handshake fresh (a link without one for minutes is down).
const Keepalive = 25 * time.Second

// Encrypts reports whether the edge set says e encrypts: it has a mesh
// address and a pinned WireGuard key, and its last word was not plaintext.
func Encrypts(e bus.Edge) bool { return e.Mesh.IsValid() && e.WireGuardKey != "" && !e.Plaintext }

// VXLANPort is the UDP port edge e's VXLAN device listens on: its tunnel
// port, or the port after it when WireGuard holds the tunnel port.
func VXLANPort(e bus.Edge) uint16 {
	if Encrypts(e) {
		return e.HostAddr.Port() + 1
	}
	return e.HostAddr.Port()
}

// HandshakeTimeout is how long an encrypted link may go without a
// WireGuard handshake before it counts as down: the kernel renews a
// session every 2 minutes while packets (keepalives included) flow, and
// stops using one after 3.
const HandshakeTimeout = 3 * time.Minute

// Link is how this edge runs its link to one peer.
type Link struct {
	Encrypted bool
	// Stale: encrypted, but no handshake for HandshakeTimeout (Why says
	// how long).
	Stale bool
	// NoPath: the link carries nothing (encryption required, the peer
	// cannot encrypt). Why says why a link is not encrypted.
	NoPath bool
	Why    string
}

// String is the link as Status.Links reports it ("" when encrypted).
func (l Link) String() string {
	switch {
	case l.Stale:
		return "down: " + l.Why
	case l.Encrypted:
		return ""
	case l.NoPath:
		return "no path: " + l.Why
	}
	return "plaintext: " + l.Why
}

// encrypting reports whether l itself encrypts in set: it has a key, and
// the edge set holds its mesh address and pins that key (or, during a
// rotation, the key it rotates from). Otherwise it says
// why not.
func (l Local) encrypting(self bus.Edge) (bool, string) {
	switch {
	case l.Encryption == EncryptNone:
		return false, `encryption = "none" here`
	case l.Mode == netcfg.ModeGRE:
		return false, "GRE mode carries no WireGuard"
	case l.WireGuardKey == (wgtypes.Key{}):
		return false, "no WireGuard here: " + l.NoWireGuard
	case !self.Mesh.IsValid():
		return false, "the controller has not given this edge a mesh address"
	case self.WireGuardKey == "":
		return false, "the controller has not pinned this edge's WireGuard key yet"
	case self.WireGuardKey != l.WireGuardKey.PublicKey().String() &&
		(l.RotatingFrom == (wgtypes.Key{}) || self.WireGuardKey != l.RotatingFrom.PublicKey().String()):
		return false, fmt.Sprintf("the controller pinned another WireGuard key (%s) for this edge: delete and re-add it to accept this one", self.WireGuardKey)
	}
	return true, ""
}

// linkTo decides the link from l (encrypting or not, for why) to peer e.
func (l Local) linkTo(encrypting bool, why string, e bus.Edge) Link {
	switch {
	case encrypting && Encrypts(e):
		return Link{Encrypted: true}
	case encrypting:
		why = fmt.Sprintf("%s does not encrypt (encryption \"none\" or no WireGuard in its kernel)", e.Name)
		if !e.Plaintext {
			why = fmt.Sprintf("%s has published no WireGuard key", e.Name)
		}
	}
	return Link{NoPath: l.Encryption == EncryptRequired, Why: why}
}

// Links returns how l runs its link to every other gateway of set (nil
// when l is not in set).
func Links(l Local, set map[string]bus.Edge) map[string]Link {
	self, ok := set[l.Name]
	if !ok {
		return nil
	}
	encrypting, why := l.encrypting(self)
	out := map[string]Link{}
	for name, e := range set {
		if name != l.Name {
			out[name] = l.linkTo(encrypting, why, e)
		}
	}
	return out
}

// encrypt turns d (of l, encrypting) into VXLAN over WireGuard: the
// WireGuard device on the tunnel port with l's mesh address, VXLAN on the
// next port.
func (l Local) encrypt(d *netcfg.Desired, self bus.Edge) {
	d.WireGuard = &netcfg.WireGuard{PrivateKey: l.WireGuardKey, ListenPort: l.Port,
		Address: netip.PrefixFrom(self.Mesh, netcfg.MeshPrefix.Bits())}
	d.Port = l.Port + 1
}

// peer is the netcfg peer of e over link: plaintext to e's VXLAN port, or
// encrypted to its mesh address with its WireGuard endpoint at hostaddr.
func peer(e bus.Edge, link Link) (netcfg.Peer, error) {
	p := netcfg.Peer{Name: e.Name, Underlay: netip.AddrPortFrom(e.HostAddr.Addr(), VXLANPort(e)), MAC: VTEPMAC(e.Name)}
	if !link.Encrypted {
		return p, nil
	}
	key, err := wgtypes.ParseKey(e.WireGuardKey)
	if err != nil {
		return p, fmt.Errorf("edge %s: WireGuard key: %w", e.Name, err)
	}
	p.Underlay, p.PublicKey, p.Keepalive = e.HostAddr, key, Keepalive
	p.Mesh = netip.AddrPortFrom(e.Mesh, VXLANPort(e))
	return p, nil
}
