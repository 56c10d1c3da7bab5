package netcfg

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Links: cframe's tunnel devices — one VXLAN device for all peers (and the
// WireGuard device under it, wireguard.go), or one GRE device per peer —
// and any foreign link that carries a desired name.

// link is a network device as cframe sees it.
type link struct {
	Name  string
	Kind  string // netlink kind: "vxlan", "gre", "veth", ...
	Index int    // set by the read; unused by the plan
	Alias string
	MTU   int
	MAC   net.HardwareAddr // nil: don't care (desired) / none (GRE)
	Up    bool
	// VXLAN only.
	VNI      int
	Port     uint16
	Learning bool
	// UDPCsum: the outer UDP checksum is computed (IFLA_VXLAN_UDP_CSUM,
	// fixed at creation); TxCsum: the device offloads transmit checksums
	// (ethtool "tx", read for the desired VXLAN device only). cframe wants
	// one of them on, the other off, as Desired.Checksum says (ethtool.go).
	UDPCsum, TxCsum bool
	// RPS: received packets are steered to other CPUs after
	// decapsulation (a non-zero rps_cpus, see sysfs.go). Read for the
	// desired VXLAN device only; desired for it when the underlay has
	// fewer receive queues than there are CPUs.
	RPS bool
	// VXLAN and GRE: the underlay source address (invalid: kernel's choice).
	Local netip.Addr
	// GRE only: the peer's underlay address.
	Remote netip.Addr
	// IPv6: created without kernel-generated IPv6 addresses and with IPv6
	// on, for the link-local address of lladdr.go (desired only).
	IPv6 bool
}

// Owned reports whether the link is cframe's: its alias is exactly
// OwnerAlias or OwnerAlias followed by ":" and a peer name, or it is a
// VXLAN/GRE link still carrying the temporary name cframe creates links
// under (left behind if cframe died while creating it).
func (l link) Owned() bool {
	return l.Alias == OwnerAlias || strings.HasPrefix(l.Alias, OwnerAlias+":") ||
		strings.HasPrefix(l.Name, tempLinkPrefix) && (l.Kind == "vxlan" || l.Kind == "gre" || l.Kind == "wireguard")
}

// String renders the link the way "ip link add" would take it.
func (l link) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s type %s", l.Name, l.Kind)
	switch l.Kind {
	case "vxlan":
		fmt.Fprintf(&b, " id %d dstport %d", l.VNI, l.Port)
		if l.Local.IsValid() {
			fmt.Fprintf(&b, " local %s", l.Local)
		}
		if l.Learning {
			b.WriteString(" learning")
		} else {
			b.WriteString(" nolearning")
		}
		if l.UDPCsum {
			b.WriteString(" udpcsum")
		} else {
			b.WriteString(" noudpcsum")
		}
	case "gre":
		if l.Local.IsValid() {
			fmt.Fprintf(&b, " local %s", l.Local)
		}
		fmt.Fprintf(&b, " remote %s ttl %d", l.Remote, greTTL)
	}
	if l.MAC != nil {
		fmt.Fprintf(&b, " address %s", l.MAC)
	}
	fmt.Fprintf(&b, " mtu %d alias %q", l.MTU, l.Alias)
	if l.IPv6 {
		b.WriteString(" addrgenmode none")
	}
	if l.Kind == "vxlan" {
		b.WriteString(" tx-checksumming " + onOff(l.TxCsum))
	}
	return b.String()
}

// linkFrom is l as cframe sees it.
func linkFrom(l netlink.Link) link {
	attrs := l.Attrs()
	out := link{Name: attrs.Name, Kind: l.Type(), Index: attrs.Index, Alias: attrs.Alias, MTU: attrs.MTU,
		MAC: attrs.HardwareAddr, Up: attrs.Flags&net.FlagUp != 0}
	switch v := l.(type) {
	case *netlink.Vxlan:
		out.VNI, out.Port, out.Learning, out.Local = v.VxlanId, uint16(v.Port), v.Learning, addrFromIP(v.SrcAddr)
		out.UDPCsum = v.UDPCSum
	case *netlink.Gretun:
		out.Local, out.Remote = addrFromIP(v.Local), addrFromIP(v.Remote)
		out.MAC = nil // the "hardware address" of a GRE device is its local IP
	}
	return out
}

// readLinks dumps the links (a handful: there is no key to read fewer by)
// and keeps those with a desired name and — on a full read — all of
// cframe's; it notes the desired VXLAN device, which an Update's read
// requires.
func (s *session) readLinks(r *reading) error {
	var all []netlink.Link
	if err := retryDump("links", func() (err error) { all, err = s.nl.LinkList(); return err }); err != nil {
		return err
	}
	desired := map[string]bool{r.d.Device: true}
	if r.d.WireGuard != nil {
		desired[r.d.WireGuard.Device] = true
	}
	if r.d.Mode == ModeGRE {
		for _, p := range r.d.Peers {
			desired[greDevice(r.d.Device, p.Name)] = true
		}
	}
	for _, x := range all {
		l := linkFrom(x)
		r.links[l.Index] = x
		r.ours[l.Index] = l.Owned()
		if desired[l.Name] || r.keys == nil && l.Owned() {
			r.a.Links = append(r.a.Links, l)
			s.index[l.Name] = l.Index
		}
	}
	for i, l := range r.a.Links {
		if r.d.Mode == ModeVXLAN && l.Name == r.d.Device && l.Owned() && l.Kind == "vxlan" {
			r.tunnel = &r.a.Links[i]
		}
	}
	if r.keys != nil && r.tunnel == nil {
		return fmt.Errorf("device %s is missing or not cframe's VXLAN device", r.d.Device)
	}
	return nil
}

// wantLinks are the desired tunnel devices.
func (p *planner) wantLinks() []link {
	if p.d.Mode == ModeVXLAN {
		local := p.d.LocalAddr
		var out []link
		if wg := p.d.WireGuard; wg != nil {
			// The WireGuard device first: the VXLAN device sends through it.
			out = append(out, link{Name: wg.Device, Kind: "wireguard", Alias: OwnerAlias, MTU: p.wgMTU, Up: true})
			// Toward encrypted peers the source must be the mesh address.
			local = netip.Addr{}
		}
		return append(out, link{Name: p.d.Device, Kind: "vxlan", Alias: OwnerAlias, MTU: p.mtu, MAC: p.d.DeviceMAC, Up: true,
			VNI: p.d.VNI, Port: p.d.Port, Local: local, UDPCsum: p.d.Checksum.outerUDP(local), TxCsum: p.d.Checksum.fast(), RPS: p.a.wantRPS(), IPv6: p.d.LinkLocal.IsValid()})
	}
	var out []link
	for _, peer := range p.d.Peers {
		remote := peer.Underlay.Addr()
		local := p.d.LocalAddr
		if !local.IsValid() {
			local = p.a.UnderlaySource[remote]
		}
		out = append(out, link{Name: greDevice(p.d.Device, peer.Name), Kind: "gre", Alias: OwnerAlias + ":" + peer.Name,
			MTU: p.mtu, Up: true, Local: local, Remote: remote})
	}
	return out
}

// planLinks creates the desired tunnel devices, recreates those whose
// kind-specific settings changed, adjusts the rest in place and deletes
// cframe's links that are no longer wanted (last). It notes which devices
// are usable for the entries, routes and rules planned after it.
func (p *planner) planLinks() {
	have := map[string]link{}
	for _, l := range p.a.Links {
		have[l.Name] = l
	}
	wants := p.wantLinks()
	wanted := map[string]bool{}
	for _, w := range wants {
		wanted[w.Name] = true
	}
	// A stale WireGuard device goes first: it holds the UDP port that a
	// VXLAN device created below may be about to take back.
	for _, h := range p.a.Links {
		if h.Owned() && !wanted[h.Name] && h.Kind == "wireguard" {
			p.add(stageLinks, linkDel(h.Name, "stale"))
		}
	}
	for _, w := range wants {
		h, ok := have[w.Name]
		switch {
		case !ok:
			p.add(stageLinks, linkAdd(w))
			p.fresh[w.Name] = true
		case !h.Owned():
			p.conflict("", "link %s exists but is not cframe's (type %s, alias %q): left alone, nothing installed on it", h.Name, h.Kind, h.Alias)
			continue
		case recreateReason(h, w) != "":
			p.add(stageLinks, linkDel(w.Name, "recreate: "+recreateReason(h, w)), linkAdd(w))
			p.fresh[w.Name] = true
		default:
			if h.MTU != w.MTU {
				p.add(stageLinks, linkSetMTU(w.Name, w.MTU))
			}
			if w.MAC != nil && !bytes.Equal(h.MAC, w.MAC) {
				p.add(stageLinks, linkSetAddress(w.Name, w.MAC))
				// The kernel flushes a device's neighbors, permanent ones
				// included, when its address changes.
				p.neighGone[w.Name] = true
			}
			if h.Alias != w.Alias {
				p.add(stageLinks, linkSetAlias(w.Name, w.Alias))
			}
			if !h.Up {
				p.add(stageLinks, linkSetUp(w.Name))
			}
			if w.RPS && !h.RPS {
				p.add(stageLinks, linkSetRPS(w.Name))
			}
			if h.TxCsum != w.TxCsum {
				p.add(stageLinks, linkSetTxCsum(w.Name, w.TxCsum))
			}
		}
		p.usable[w.Name] = true
		if w.Kind != "wireguard" { // WireGuard carries VXLAN, not the LAN's packets
			p.tunnels = append(p.tunnels, w.Name)
		}
	}
	for _, h := range p.a.Links {
		if h.Owned() && !wanted[h.Name] && h.Kind != "wireguard" {
			p.add(stageLinksDel, linkDel(h.Name, "stale"))
		}
	}
}

// recreateReason says why an owned link cannot be adjusted in place.
func recreateReason(have, want link) string {
	var why []string
	if have.Kind != want.Kind {
		why = append(why, fmt.Sprintf("type %s -> %s", have.Kind, want.Kind))
	} else if want.Kind == "vxlan" {
		if have.VNI != want.VNI {
			why = append(why, fmt.Sprintf("id %d -> %d", have.VNI, want.VNI))
		}
		if have.Port != want.Port {
			why = append(why, fmt.Sprintf("dstport %d -> %d", have.Port, want.Port))
		}
		if have.Learning {
			why = append(why, "learning -> nolearning")
		}
		if have.UDPCsum != want.UDPCsum {
			// The kernel refuses to change IFLA_VXLAN_UDP_CSUM on a device.
			why = append(why, fmt.Sprintf("udpcsum %s -> %s, fixed at creation", onOff(have.UDPCsum), onOff(want.UDPCsum)))
		}
	} else if have.Remote != want.Remote {
		why = append(why, fmt.Sprintf("remote %s -> %s", addrOrAny(have.Remote), addrOrAny(want.Remote)))
	}
	if have.Kind == want.Kind && have.Local != want.Local {
		why = append(why, fmt.Sprintf("local %s -> %s", addrOrAny(have.Local), addrOrAny(want.Local)))
	}
	return strings.Join(why, ", ")
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func addrOrAny(a netip.Addr) string {
	if a.IsValid() {
		return a.String()
	}
	return "any"
}

// Link operations.

// linkAdd creates l. The kernel ignores IFLA_IFALIAS when creating links,
// so the link is created under a temporary name, given its alias and only
// then renamed: a link with cframe's name never lacks cframe's alias. With
// l.RPS it gets receive packet steering, with l.IPv6 its IPv6 settings
// (lladdr.go), and a VXLAN device its transmit checksum setting, before it
// comes up.
func linkAdd(l link) change {
	return change{desc: "link add " + l.String(), do: func(s *session) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = tempLinkName(), l.MTU
		if l.MAC != nil {
			attrs.HardwareAddr = l.MAC
		}
		var dev netlink.Link
		switch l.Kind {
		case "vxlan":
			if err := s.send(unix.NETLINK_ROUTE, vxlanAddRequest(attrs.Name, l), nil); err != nil {
				return err
			}
			var err error
			if dev, err = s.nl.LinkByName(attrs.Name); err != nil {
				return err
			}
		case "gre":
			dev = &netlink.Gretun{LinkAttrs: attrs, Local: ipOrNil(l.Local), Remote: ipOrNil(l.Remote), Ttl: greTTL, PMtuDisc: 1}
			if err := s.nl.LinkAdd(dev); err != nil {
				return err
			}
		case "wireguard":
			dev = &netlink.Wireguard{LinkAttrs: attrs}
			if err := s.nl.LinkAdd(dev); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unsupported link type %q", l.Kind)
		}
		err := s.nl.LinkSetAlias(dev, l.Alias)
		if err == nil {
			err = s.nl.LinkSetName(dev, l.Name)
		}
		if err != nil {
			s.nl.LinkDel(dev)
			return err
		}
		s.index[l.Name] = dev.Attrs().Index
		if l.RPS {
			if err := setRPS(l.Name); err != nil {
				return fmt.Errorf("set RPS: %w", err)
			}
		}
		if l.IPv6 {
			if err := prepareIPv6(s, dev, l.Name); err != nil {
				return err
			}
		}
		if l.Kind == "vxlan" {
			if err := setTxCsum(l.Name, l.TxCsum); err != nil {
				return err
			}
		}
		return s.nl.LinkSetUp(dev)
	}}
}

// vxlanAddRequest creates VXLAN device l under name: package netlink's
// LinkAdd sends IFLA_VXLAN_UDP_CSUM only to switch the checksum on, and
// the kernel's default without it is on, so a zero outer checksum needs a
// request of cframe's own. Learning off, the kernel's defaults otherwise.
func vxlanAddRequest(name string, l link) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(l.MTU))))
	if l.MAC != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, l.MAC))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("vxlan"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(nl.IFLA_VXLAN_ID, nl.Uint32Attr(uint32(l.VNI)))
	switch {
	case l.Local.Is4():
		a := l.Local.As4()
		data.AddRtAttr(nl.IFLA_VXLAN_LOCAL, a[:])
	case l.Local.Is6():
		a := l.Local.As16()
		data.AddRtAttr(nl.IFLA_VXLAN_LOCAL6, a[:])
	}
	data.AddRtAttr(nl.IFLA_VXLAN_PORT, binary.BigEndian.AppendUint16(nil, l.Port))
	data.AddRtAttr(nl.IFLA_VXLAN_LEARNING, []byte{boolByte(l.Learning)})
	data.AddRtAttr(nl.IFLA_VXLAN_UDP_CSUM, []byte{boolByte(l.UDPCsum)})
	req.AddData(info)
	return req
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// linkDel deletes link name; why, if not empty, is said in parentheses.
func linkDel(name, why string) change {
	desc := "link del " + name
	if why != "" {
		desc += " (" + why + ")"
	}
	return change{desc: desc, do: func(s *session) error {
		err := s.onLink(name, s.nl.LinkDel)
		delete(s.index, name)
		return ignoreGone(err)
	}}
}

func linkSetMTU(name string, mtu int) change {
	return change{desc: fmt.Sprintf("link set %s mtu %d", name, mtu), do: func(s *session) error {
		return s.onLink(name, func(l netlink.Link) error { return s.nl.LinkSetMTU(l, mtu) })
	}}
}

func linkSetAddress(name string, mac net.HardwareAddr) change {
	return change{desc: fmt.Sprintf("link set %s address %s", name, mac), do: func(s *session) error {
		return s.onLink(name, func(l netlink.Link) error { return s.nl.LinkSetHardwareAddr(l, mac) })
	}}
}

func linkSetAlias(name, alias string) change {
	return change{desc: fmt.Sprintf("link set %s alias %q", name, alias), do: func(s *session) error {
		return s.onLink(name, func(l netlink.Link) error { return s.nl.LinkSetAlias(l, alias) })
	}}
}

func linkSetUp(name string) change {
	return change{desc: fmt.Sprintf("link set %s up", name), do: func(s *session) error { return s.onLink(name, s.nl.LinkSetUp) }}
}

// linkSetRPS steers the packets link name receives over every online CPU.
func linkSetRPS(name string) change {
	return change{desc: fmt.Sprintf("link set %s rps_cpus all (receive packet steering)", name), do: func(*session) error { return setRPS(name) }}
}

// linkSetTxCsum switches transmit checksum offload of link name on or off.
func linkSetTxCsum(name string, on bool) change {
	return change{desc: fmt.Sprintf("link set %s tx-checksumming %s", name, onOff(on)), do: func(*session) error { return setTxCsum(name, on) }}
}

// onLink calls f with link name, known by its index.
func (s *session) onLink(name string, f func(netlink.Link) error) error {
	i, err := s.ifindex(name)
	if err != nil {
		return err
	}
	return f(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: i}})
}

// tempLinkPrefix starts the names of links being created.
const tempLinkPrefix = "cfnew"

// tempLinkName returns a unique name for a link being created.
func tempLinkName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return tempLinkPrefix + hex.EncodeToString(b)
}

// Supported reports whether the kernel (of the calling thread's network
// namespace) can create the devices mode needs, by creating and deleting a
// temporary link with a unique name. The GRE probe is an IPv4 GRE device
// (as cframe's are) with a random key: a keyless one without addresses is
// ip_gre's own fallback device gre0, which the kernel refuses to create
// twice ("file exists"). The error is one readable line that says what to
// do.
func Supported(mode Mode) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tempLinkName()
	var probe netlink.Link
	var hint string
	switch mode {
	case ModeVXLAN, "":
		mode = ModeVXLAN
		probe = &netlink.Vxlan{LinkAttrs: attrs, VxlanId: DefaultVNI}
		hint = "load the vxlan module"
	case ModeGRE:
		var key [4]byte
		rand.Read(key[:])
		k := binary.BigEndian.Uint32(key[:]) | 1 // a key of 0 is none
		// An IPv4 local address: without one netlink asks for ip6gre.
		probe = &netlink.Gretun{LinkAttrs: attrs, Local: net.IPv4zero.To4(), IKey: k, OKey: k}
		hint = `load the ip_gre module or use mode = "vxlan"`
	default:
		return fmt.Errorf("mode %q: unknown (want %q or %q)", mode, ModeVXLAN, ModeGRE)
	}
	if err := netlink.LinkAdd(probe); err != nil {
		why := err.Error()
		if errors.Is(err, unix.EOPNOTSUPP) {
			why = "Unknown device type"
		}
		return fmt.Errorf("mode %s: kernel cannot create %s devices (%s); %s", mode, mode, why, hint)
	}
	if err := netlink.LinkDel(probe); err != nil {
		return fmt.Errorf("mode %s: delete probe device %s: %w", mode, attrs.Name, err)
	}
	return nil
}

// DeviceStats are the traffic counters of one of cframe's tunnel devices,
// as the kernel keeps them.
type DeviceStats struct {
	Name                 string
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxDropped, TxDropped uint64
	RxErrors, TxErrors   uint64
}

// TunnelStats returns the counters of every tunnel device cframe owns in
// the calling thread's network namespace (one link dump). It does not
// touch what Reconcile and Update keep, so it may run beside them.
func (k *Kernel) TunnelStats() ([]DeviceStats, error) {
	s, err := k.begin()
	if err != nil {
		return nil, err
	}
	defer s.end()
	var all []netlink.Link
	if err := retryDump("links", func() (err error) { all, err = s.nl.LinkList(); return err }); err != nil {
		return nil, err
	}
	var out []DeviceStats
	for _, x := range all {
		st := x.Attrs().Statistics
		if !linkFrom(x).Owned() || st == nil {
			continue
		}
		out = append(out, DeviceStats{Name: x.Attrs().Name, RxBytes: st.RxBytes, TxBytes: st.TxBytes,
			RxPackets: st.RxPackets, TxPackets: st.TxPackets, RxDropped: st.RxDropped, TxDropped: st.TxDropped,
			RxErrors: st.RxErrors, TxErrors: st.TxErrors})
	}
	return out, nil
}
