package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WireGuard: the encrypted underlay of the VXLAN device (Desired.WireGuard).
// One kernel WireGuard device, cframe-wg by default, listens on the edge's
// tunnel port and holds this edge's mesh address; each encrypted peer is a
// WireGuard peer whose only allowed IP is its mesh address, and its VXLAN
// FDB entry points at that mesh address, so every VXLAN packet to it is
// encrypted by the kernel on the way out (and only packets that peer's key
// authenticated come out of the device). The FDB, neighbors, routes and HA
// above are those of a plaintext mesh. The device is configured over
// generic netlink (wgctrl); it is cframe's by its alias, as the other links.

// WireGuard is this edge's WireGuard device.
type WireGuard struct {
	// Device is the device name; empty means DefaultWireGuardDevice.
	Device string
	// PrivateKey is this edge's WireGuard key (it never appears in a
	// change's description: the public key names it there).
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port the device listens on (the edge's tunnel
	// port, which the VXLAN device then leaves to it).
	ListenPort uint16
	// Address is this edge's mesh address with the mesh's prefix length
	// (240.207.0.5/16): the source of the VXLAN packets it encrypts.
	Address netip.Prefix
}

// DefaultWireGuardDevice is the WireGuard device's name when
// WireGuard.Device is empty.
const DefaultWireGuardDevice = "cframe-wg"

// wireGuardOverhead is what WireGuard adds to a packet it carries (outer
// IPv4 20 + UDP 8 + WireGuard header 16 + authentication tag 16).
const wireGuardOverhead = 60

// MeshPrefix is where mesh addresses come from: 240.207.0.0/16, in the
// reserved 240.0.0.0/4 that no VPC uses and Linux routes like any unicast.
var MeshPrefix = netip.MustParsePrefix("240.207.0.0/16")

// wgState is what a read found on the desired WireGuard device (when it
// exists and is cframe's).
type wgState struct {
	PrivateKey wgtypes.Key
	ListenPort uint16
	// Addrs are the device's IPv4 addresses.
	Addrs []netip.Prefix
	// Peers are the device's peers (with an Update's read only those under
	// the scope's keys).
	Peers []wgPeer
}

// wgPeer is a WireGuard peer as cframe configures it.
type wgPeer struct {
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
}

// String renders the peer the way "wg set DEV peer ..." would take it.
func (w wgPeer) String() string {
	var ips []string
	for _, p := range w.AllowedIPs {
		ips = append(ips, p.String())
	}
	return fmt.Sprintf("peer %s endpoint %s allowed-ips %s persistent-keepalive %d",
		w.PublicKey, w.Endpoint, strings.Join(ips, ","), int(w.Keepalive/time.Second))
}

func (w wgPeer) equal(o wgPeer) bool {
	return w.PublicKey == o.PublicKey && w.Endpoint == o.Endpoint && slices.Equal(w.AllowedIPs, o.AllowedIPs) && w.Keepalive == o.Keepalive
}

// Encrypted reports whether the peer's VXLAN traffic goes through the
// WireGuard device (it has a mesh address).
func (p Peer) Encrypted() bool { return p.Mesh.IsValid() }

// readWireGuard reads the desired WireGuard device's configuration and
// addresses when it exists and is cframe's. With keys only the peers whose
// public keys are in the scope are kept.
func (s *session) readWireGuard(r *reading) error {
	if r.d.WireGuard == nil {
		return nil
	}
	dev := r.d.WireGuard.Device
	var l *link
	for i := range r.a.Links {
		if h := &r.a.Links[i]; h.Name == dev && h.Owned() && h.Kind == "wireguard" {
			l = h
		}
	}
	if l == nil {
		return nil
	}
	wg, err := s.wireGuard()
	if err != nil {
		return err
	}
	d, err := wg.Device(dev)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netcfg: wireguard device %s: %w", dev, err)
	}
	st := &wgState{PrivateKey: d.PrivateKey, ListenPort: uint16(d.ListenPort)}
	addrs, err := s.nl.AddrList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.Index}}, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("netcfg: addresses of %s: %w", dev, err)
	}
	for _, a := range addrs {
		if ip := addrFromIP(a.IP); ip.IsValid() {
			bits, _ := a.Mask.Size()
			st.Addrs = append(st.Addrs, netip.PrefixFrom(ip, bits))
		}
	}
	for _, p := range d.Peers {
		if r.keys != nil && !r.keys.wgKeys[p.PublicKey] {
			continue
		}
		w := wgPeer{PublicKey: p.PublicKey, Keepalive: p.PersistentKeepaliveInterval}
		if p.Endpoint != nil {
			w.Endpoint = p.Endpoint.AddrPort()
			w.Endpoint = netip.AddrPortFrom(w.Endpoint.Addr().Unmap(), w.Endpoint.Port())
		}
		for _, ip := range p.AllowedIPs {
			if a, ok := netip.AddrFromSlice(ip.IP); ok {
				bits, _ := ip.Mask.Size()
				w.AllowedIPs = append(w.AllowedIPs, netip.PrefixFrom(a.Unmap(), bits))
			}
		}
		st.Peers = append(st.Peers, w)
	}
	r.a.WireGuard = st
	return nil
}

// wantWireGuardPeer is the WireGuard peer of an encrypted peer.
func wantWireGuardPeer(p Peer) wgPeer {
	return wgPeer{PublicKey: p.PublicKey, Endpoint: p.Underlay, AllowedIPs: []netip.Prefix{netip.PrefixFrom(p.Mesh.Addr(), 32)}, Keepalive: p.Keepalive}
}

// planWireGuard configures the WireGuard device (after planLinks created
// it or found it): its key and port, its mesh address, one peer per
// encrypted peer — in place before the FDB entries that send to them —,
// and removes the peers and addresses it should not have after the FDB
// entries that used them are gone.
func (p *planner) planWireGuard() {
	wg := p.d.WireGuard
	if wg == nil || !p.usable[wg.Device] {
		return
	}
	dev := wg.Device
	have := p.a.WireGuard
	if have == nil || p.fresh[dev] {
		have = &wgState{}
	}
	if have.PrivateKey != wg.PrivateKey || have.ListenPort != wg.ListenPort {
		p.add(stageAddrs, wgSetDevice(dev, wg.PrivateKey, wg.ListenPort))
	}
	if !slices.Contains(have.Addrs, wg.Address) {
		p.add(stageAddrs, wgAddrAdd(dev, wg.Address))
	}
	for _, a := range have.Addrs {
		if a != wg.Address {
			p.add(stageFDBDel, wgAddrDel(dev, a))
		}
	}
	held := make(map[wgtypes.Key]wgPeer, len(have.Peers))
	for _, h := range have.Peers {
		held[h.PublicKey] = h
	}
	for _, peer := range p.d.Peers {
		if !peer.Encrypted() {
			continue
		}
		w := wantWireGuardPeer(peer)
		h, ok := held[w.PublicKey]
		delete(held, w.PublicKey)
		if !ok || !h.equal(w) {
			p.add(stageAddrs, wgPeerSet(dev, w))
		}
	}
	for _, h := range have.Peers { // in the device's order: deterministic plans
		if _, stale := held[h.PublicKey]; stale {
			p.add(stageFDBDel, wgPeerRemove(dev, h.PublicKey))
		}
	}
}

// WireGuard operations.

// wgSetDevice sets the device's private key and listen port; the
// description names the key by its public half.
func wgSetDevice(dev string, key wgtypes.Key, port uint16) change {
	return change{desc: fmt.Sprintf("wg set %s private-key (of public key %s) listen-port %d", dev, key.PublicKey(), port), do: func(s *session) error {
		p := int(port)
		return s.configure(dev, wgtypes.Config{PrivateKey: &key, ListenPort: &p})
	}}
}

// wgPeerSet adds the peer or makes it exactly w (its allowed IPs replaced).
func wgPeerSet(dev string, w wgPeer) change {
	return change{desc: fmt.Sprintf("wg set %s %s", dev, w), do: func(s *session) error {
		keepalive := w.Keepalive
		pc := wgtypes.PeerConfig{PublicKey: w.PublicKey, Endpoint: net.UDPAddrFromAddrPort(w.Endpoint),
			PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true}
		for _, a := range w.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		return s.configure(dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}})
	}}
}

// wgPeerRemove removes a peer; one already gone counts as removed.
func wgPeerRemove(dev string, key wgtypes.Key) change {
	return change{desc: fmt.Sprintf("wg set %s peer %s remove", dev, key), do: func(s *session) error {
		return s.configure(dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}})
	}}
}

func wgAddrAdd(dev string, a netip.Prefix) change {
	return change{desc: fmt.Sprintf("addr add %s dev %s", a, dev), do: func(s *session) error {
		return s.onLink(dev, func(l netlink.Link) error {
			err := s.nl.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(a)})
			if errors.Is(err, unix.EEXIST) {
				return nil
			}
			return err
		})
	}}
}

func wgAddrDel(dev string, a netip.Prefix) change {
	return change{desc: fmt.Sprintf("addr del %s dev %s", a, dev), do: func(s *session) error {
		return s.onLink(dev, func(l netlink.Link) error {
			err := s.nl.AddrDel(l, &netlink.Addr{IPNet: prefixNet(a)})
			if errors.Is(err, unix.EADDRNOTAVAIL) {
				return nil
			}
			return ignoreGone(err)
		})
	}}
}

func prefixNet(a netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}
}

// configure applies c to WireGuard device dev.
func (s *session) configure(dev string, c wgtypes.Config) error {
	wg, err := s.wireGuard()
	if err != nil {
		return err
	}
	return wg.ConfigureDevice(dev, c)
}

// wireGuard returns the session's WireGuard client, opened on first use
// (after the device was created, if this session creates it: creating the
// first WireGuard device loads the module that answers the client).
func (s *session) wireGuard() (*wgctrl.Client, error) {
	if s.wg != nil {
		return s.wg, nil
	}
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("netcfg: wireguard: %w", err)
	}
	s.wg = c
	return c, nil
}

// WireGuardSupported reports whether the kernel (of the calling thread's
// network namespace) can create WireGuard devices, by creating and deleting
// a temporary one; the error is one readable line.
func WireGuardSupported() error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tempLinkName()
	probe := &netlink.Wireguard{LinkAttrs: attrs}
	if err := netlink.LinkAdd(probe); err != nil {
		why := err.Error()
		if errors.Is(err, unix.EOPNOTSUPP) {
			why = "Unknown device type"
		}
		return fmt.Errorf("kernel cannot create wireguard devices (%s): load the wireguard module (Linux 5.6 or later)", why)
	}
	if err := netlink.LinkDel(probe); err != nil {
		return fmt.Errorf("wireguard: delete probe device %s: %w", attrs.Name, err)
	}
	return nil
}

// WireGuardPeerStats is the kernel's view of one WireGuard peer: when it
// last completed a handshake and what it carried.
type WireGuardPeerStats struct {
	PublicKey        wgtypes.Key
	LastHandshake    time.Time // zero: never
	RxBytes, TxBytes int64
}

// WireGuardStats returns the peers of cframe's WireGuard device dev in the
// calling thread's network namespace (none when it does not exist).
func (k *Kernel) WireGuardStats(dev string) ([]WireGuardPeerStats, error) {
	if dev == "" {
		dev = DefaultWireGuardDevice
	}
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("netcfg: wireguard: %w", err)
	}
	defer c.Close()
	d, err := c.Device(dev)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netcfg: wireguard device %s: %w", dev, err)
	}
	var out []WireGuardPeerStats
	for _, p := range d.Peers {
		out = append(out, WireGuardPeerStats{PublicKey: p.PublicKey, LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes})
	}
	return out, nil
}
