package topo

import (
	"net/netip"
)

// The cloud shape: how the walkthrough really runs (DESIGN.md, "How it
// really runs in a cloud"). Each VPC has a VPC router namespace
// "<prefix>-<name>-rt" standing in for the cloud's virtual router:
//
//   - a LAN bridge (VPCBridge) holding the VPC's gateway address (the first
//     address of CIDR), which is the default gateway of the host and of the
//     edge, and which never sends ICMP redirects;
//   - the VPC's route table: the other VPCs' CIDRs via the edge (none with
//     NoRouteBack);
//   - an uplink (VPCUplink) to the shared "internet" router holding the
//     edge's EIP, mapped 1:1 onto the edge's private address by NAT (DNAT in,
//     SNAT out, every port), and a second public address that the rest of
//     the VPC leaves by (SNAT);
//   - hairpin NAT, so that the VPC's own machines reach the EIP too (the
//     controller's edge dials the controller at its own EIP, as the
//     walkthrough's identical edge.toml files say).
//
// The edge has ONE NIC (HostIf) in its VPC holding EdgeAddr and no public
// address at all; hostaddr is the EIP. The bridge is plain L2 (bridged
// frames skip iptables), like a cloud's virtual switch.

// Interface names inside a VPC router namespace.
const (
	// VPCBridge is the VPC router's LAN bridge.
	VPCBridge = "br0"
	// VPCUplink is the VPC router's interface toward the internet router.
	VPCUplink = "up0"
)

// BuildCloud creates the internet router namespace and one site per VPC on
// n in the cloud shape (see above).
func BuildCloud(n *Net, vpcs ...VPC) (*Topology, error) { return build(n, true, vpcs) }

// snatHost is the last byte of the public address a VPC's other machines
// leave by; the EIP is .10 and the internet router .1, as in the plain shape.
const snatHost = 2

// wireCloud builds s's VPC router and connects the edge and the host to
// its LAN bridge, each by its only interface.
func (t *Topology) wireCloud(s *Site) error {
	n := t.Net
	rt, err := n.NS(s.Name + "-rt")
	if err != nil {
		return err
	}
	snat := s.Public.Masked().Addr().As4()
	snat[3] = snatHost
	s.VPCRouter, s.RouteTable, s.EdgeIf = rt, rt, HostIf
	s.LANGateway, s.SNAT = s.CIDR.Addr().Next(), netip.AddrFrom4(snat)
	lan := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, s.CIDR.Bits()) }

	// Redirects off before any interface exists: a cloud router forwards
	// a host's packet to the edge without telling the host to go direct.
	for _, cmd := range [][]string{
		{"sysctl", "-q", "-w", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"},
		// A cloud's virtual switch does not run the router's firewall on
		// frames between two machines of the VPC.
		{"sh", "-c", "f=/proc/sys/net/bridge/bridge-nf-call-iptables; [ ! -e $f ] || echo 0 > $f"},
		{"ip", "link", "add", VPCBridge, "type", "bridge"},
		{"ip", "addr", "add", lan(s.LANGateway).String(), "dev", VPCBridge},
		{"ip", "link", "set", VPCBridge, "up"},
	} {
		if _, err := n.Exec(rt, cmd...); err != nil {
			return err
		}
	}
	if err := forwarding(n, rt); err != nil {
		return err
	}
	if err := n.Veth(End{NS: t.Router, Name: s.RouterIf, Addr: netip.PrefixFrom(s.Gateway, 24)},
		End{NS: rt, Name: VPCUplink, Addr: netip.PrefixFrom(s.SNAT, 24)}); err != nil {
		return err
	}
	for _, m := range []struct {
		ns, port string
		addr     netip.Addr
	}{{s.Edge, "e0", s.EdgeAddr}, {s.Host, "h0", s.HostAddr}} {
		if err := n.Veth(End{NS: rt, Name: m.port}, End{NS: m.ns, Name: HostIf, Addr: lan(m.addr)}); err != nil {
			return err
		}
		if _, err := n.Exec(rt, "ip", "link", "set", m.port, "master", VPCBridge); err != nil {
			return err
		}
		if _, err := n.Exec(m.ns, "ip", "route", "add", "default", "via", s.LANGateway.String()); err != nil {
			return err
		}
	}

	eip, edge := s.Underlay().String(), s.EdgeAddr.String()
	for _, cmd := range [][]string{
		{"ip", "addr", "add", s.Public.String(), "dev", VPCUplink},
		{"ip", "route", "add", "default", "via", s.Gateway.String()},
		// The EIP: every packet to it goes to the edge, every packet of
		// the edge leaves from it.
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-d", eip, "-j", "DNAT", "--to-destination", edge},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", edge, "-o", VPCUplink, "-j", "SNAT", "--to-source", eip},
		// The rest of the VPC shares the SNAT address.
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", s.CIDR.String(), "-o", VPCUplink, "-j", "SNAT", "--to-source", s.SNAT.String()},
		// Hairpin: a VPC machine dialling the EIP comes back from the
		// router, so that the answer passes the DNAT again.
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", s.CIDR.String(), "-d", edge, "-o", VPCBridge,
			"-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", s.LANGateway.String()},
	} {
		if _, err := n.Exec(rt, cmd...); err != nil {
			return err
		}
	}
	return nil
}
