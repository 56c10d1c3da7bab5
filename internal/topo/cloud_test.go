package topo

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// seenFrom listens on addr:port in namespace lns, dials dial:port from
// namespace dns and returns the source address the listener saw.
func seenFrom(lns string, addr netip.Addr, dns string, dial netip.Addr) (netip.Addr, error) {
	var ln net.Listener
	if err := Do(lns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return netip.Addr{}, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	seen := make(chan netip.Addr, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	c, err := Dialer{NS: dns}.Dial("tcp", netip.AddrPortFrom(dial, uint16(port)).String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	select {
	case a := <-seen:
		return a, nil
	case <-time.After(5 * time.Second):
		return netip.Addr{}, fmt.Errorf("%s:%d never accepted the connection from %s", dial, port, dns)
	}
}

// TestCloudTopology builds the walkthrough in the cloud shape, VPC3 with an
// empty route table, and checks what an edge behind a cloud's 1:1 NAT sees:
// one NIC, no public address, the VPC router as its gateway, the peers'
// EIPs as sources, its own EIP reachable from inside its VPC.
func TestCloudTopology(t *testing.T) {
	t.Parallel()
	SkipUnlessRoot(t, "iptables", "ping")
	rootBefore, _ := exec.Command("ip", "-o", "addr").Output()
	n := newNet(t)
	vpcs := Walkthrough()
	vpcs[2].NoRouteBack = true
	tp, err := BuildCloud(n, vpcs...)
	if err != nil {
		t.Fatal(err)
	}
	sites := tp.Sites()
	wantEIP := []string{"198.51.100.10", "203.0.113.10", "192.0.2.10"}
	wantGW := []string{"172.18.0.1", "172.31.0.1", "172.20.0.1"}
	for i, s := range sites {
		if s.Underlay().String() != wantEIP[i] || s.LANGateway.String() != wantGW[i] || s.VPCRouter == "" || s.RouteTable != s.VPCRouter || s.EdgeIf != HostIf {
			t.Errorf("%s: EIP %s, gateway %s, router %q, route table %q, edge interface %q", s.Name, s.Underlay(), s.LANGateway, s.VPCRouter, s.RouteTable, s.EdgeIf)
		}
		// One NIC, holding the private address only.
		addrs := mustExec(t, n, s.Edge, "ip", "-o", "-4", "addr", "show", "scope", "global")
		if lines := strings.Split(strings.TrimSpace(addrs), "\n"); len(lines) != 1 || !strings.Contains(lines[0], " "+HostIf+" ") ||
			!strings.Contains(lines[0], s.EdgeAddr.String()+"/16") {
			t.Errorf("%s edge addresses:\n%s", s.Name, addrs)
		}
		for _, ns := range []string{s.Edge, s.Host} {
			if r := mustExec(t, n, ns, "ip", "route", "show", "default"); !strings.Contains(r, "via "+s.LANGateway.String()) {
				t.Errorf("%s: default route %q, want via the VPC router %s", ns, r, s.LANGateway)
			}
		}
		if err := n.Ping(s.Host, s.EdgeAddr, 1, 5*time.Second); err != nil {
			t.Errorf("%s host -> edge: %v", s.Name, err)
		}
		other := sites[(i+1)%len(sites)]
		if err := n.Ping(s.Edge, other.Underlay(), 1, 5*time.Second); err != nil {
			t.Errorf("%s edge -> %s's EIP: %v", s.Name, other.Name, err)
		}
	}

	// The route tables: the other VPCs via the edge, none in VPC3.
	rt1 := mustExec(t, n, sites[0].RouteTable, "ip", "route")
	for _, want := range []string{"172.31.0.0/16 via 172.18.171.245 dev br0", "172.20.0.0/16 via 172.18.171.245 dev br0"} {
		if !strings.Contains(rt1, want) {
			t.Errorf("VPC1's route table lacks %q:\n%s", want, rt1)
		}
	}
	if rt3 := mustExec(t, n, sites[2].RouteTable, "ip", "route"); strings.Contains(rt3, "via 172.20.0.9") {
		t.Errorf("VPC3's route table should be empty:\n%s", rt3)
	}

	s1, s2 := sites[0], sites[1]
	// Who the edge of VPC1 sees dialling in through its EIP.
	for _, c := range []struct {
		what       string
		from       string
		wantSource netip.Addr
	}{
		{"1:1 NAT: a peer edge arrives from its EIP", s2.Edge, s2.Underlay()},
		{"SNAT: the rest of a VPC arrives from its SNAT address", s2.Host, s2.SNAT},
		{"hairpin: the edge reaches its own EIP", s1.Edge, s1.LANGateway},
		{"hairpin: a host of the VPC reaches the EIP", s1.Host, s1.LANGateway},
	} {
		seen, err := seenFrom(s1.Edge, s1.EdgeAddr, c.from, s1.Underlay())
		if err != nil || seen != c.wantSource {
			t.Errorf("%s: seen from %s (%v), want %s", c.what, seen, err, c.wantSource)
		}
	}
	// Another VPC's private addresses are not routed on the internet.
	if err := n.Ping(s2.Edge, s1.EdgeAddr, 1, time.Second); err == nil {
		t.Error("an edge reached another VPC's private address without a tunnel")
	}

	// A fourth VPC joins: the route tables learn it, its own lists the others.
	s4, err := tp.AddVPC(VPC{Name: "vpc4", CIDR: netip.MustParsePrefix("10.40.0.0/16"),
		EdgeAddr: netip.MustParseAddr("10.40.0.5"), HostAddr: netip.MustParseAddr("10.40.0.6")})
	if err != nil {
		t.Fatal(err)
	}
	if rt := mustExec(t, n, s1.RouteTable, "ip", "route"); !strings.Contains(rt, "10.40.0.0/16 via 172.18.171.245") {
		t.Errorf("VPC1's route table did not learn VPC4:\n%s", rt)
	}
	if rt := mustExec(t, n, s4.RouteTable, "ip", "route"); !strings.Contains(rt, "172.20.0.0/16 via 10.40.0.5") {
		t.Errorf("VPC4's route table lacks VPC3:\n%s", rt)
	}
	if rootAfter, _ := exec.Command("ip", "-o", "addr").Output(); string(rootAfter) != string(rootBefore) {
		t.Errorf("addresses in the caller's namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, rootAfter)
	}
}
