package netcfg

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The fixture is the edge of VPC3 in the walkthrough (172.20.0.0/16, LAN
// address 172.20.0.9) with VPC1 (plus a pod range) and VPC2 as peers.

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0xcf, 0, 0, 0, last} }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func baseDesired() *Desired {
	return &Desired{
		DeviceMAC:  mac(3),
		Port:       58425,
		LocalCIDRs: []netip.Prefix{pfx("172.20.0.0/16")},
		Peers: []Peer{ // deliberately unsorted
			{Name: "vpc2", Underlay: netip.MustParseAddrPort("203.0.113.10:58424"), MAC: mac(2), NextHop: ip("172.31.0.0"),
				CIDRs: []netip.Prefix{pfx("172.31.0.0/16")}},
			{Name: "vpc1", Underlay: netip.MustParseAddrPort("198.51.100.10:58423"), MAC: mac(1), NextHop: ip("172.18.0.0"),
				CIDRs: []netip.Prefix{pfx("172.18.0.0/16"), pfx("10.244.1.0/24")}},
		},
	}
}

// scratchActual is a fresh edge: no cframe objects, forwarding off, one
// foreign rule in POSTROUTING, one receive queue on the underlay NIC for
// two CPUs.
func scratchActual() *actual {
	return &actual{
		LANAddr:          ip("172.20.0.9"),
		UnderlayMTU:      1500,
		UnderlayRxQueues: 1,
		CPUs:             2,
		Sets:             map[string]ipset{},
		Chains: map[chain][]string{
			{"filter", "FORWARD"}:  {},
			{"filter", "INPUT"}:    {},
			{"mangle", "FORWARD"}:  {},
			{"nat", "POSTROUTING"}: {"-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"},
		},
	}
}

// Canonical rule lines, as iptables -S prints them.
const (
	fwdIn      = "-A CFRAME-FORWARD -d 172.20.0.0/16 -i cframe0 -j ACCEPT"
	fwdOut     = "-A CFRAME-FORWARD -s 172.20.0.0/16 -o cframe0 -j ACCEPT"
	inPeers    = "-A CFRAME-INPUT -p udp -m udp --dport 58425 -m set --match-set cframe-peers src -j ACCEPT"
	inDrop     = "-A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP"
	mssOut     = "-A CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410"
	mssIn      = "-A CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410"
	jumpFwd    = "-A FORWARD -j CFRAME-FORWARD"
	jumpInput  = "-A INPUT -j CFRAME-INPUT"
	jumpMSS    = "-A FORWARD -j CFRAME-MSS"
	dockerUser = "-A FORWARD -j DOCKER-USER"
)

// convergedActual is what the kernel holds after baseDesired was applied.
func convergedActual() *actual {
	a := scratchActual()
	a.IPForward = true
	a.Links = []link{{Name: "cframe0", Kind: "vxlan", Index: 7, Alias: "cframe", MTU: 1450, MAC: mac(3), Up: true, VNI: 1, Port: 58425, UDPCsum: true, RPS: true}}
	a.FDB = []fdbEntry{
		{Device: "cframe0", MAC: mac(1), Dst: ip("198.51.100.10"), Port: 58423},
		{Device: "cframe0", MAC: mac(2), Dst: ip("203.0.113.10"), Port: 58424},
	}
	a.Neighbors = []neighbor{
		{Device: "cframe0", IP: ip("172.18.0.0"), MAC: mac(1)},
		{Device: "cframe0", IP: ip("172.31.0.0"), MAC: mac(2)},
	}
	ours := func(dst, gw string) route {
		return route{Dst: pfx(dst), Gw: ip(gw), Device: "cframe0", Src: ip("172.20.0.9"), Protocol: RouteProtocol, OnLink: true}
	}
	a.Routes = []route{ours("172.18.0.0/16", "172.18.0.0"), ours("10.244.1.0/24", "172.18.0.0"), ours("172.31.0.0/16", "172.31.0.0")}
	a.Chains[chainForward] = []string{fwdIn, fwdOut}
	a.Chains[chain{"filter", "FORWARD"}] = []string{jumpFwd, dockerUser}
	a.Chains[chainInput] = []string{inPeers, inDrop}
	a.Sets[setPeers] = ipset{Type: "hash:ip", Members: []netip.Prefix{pfx("198.51.100.10/32"), pfx("203.0.113.10/32")}}
	a.Chains[chain{"filter", "INPUT"}] = []string{jumpInput}
	a.Chains[chainMSS] = []string{mssOut, mssIn}
	a.Chains[chain{"mangle", "FORWARD"}] = []string{jumpMSS}
	return a
}

var scratchChanges = []string{
	"sysctl net.ipv4.ip_forward=1",
	`link add cframe0 type vxlan id 1 dstport 58425 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming off`,
	"ipset create cframe-peers hash:ip family inet",
	"ipset add cframe-peers 198.51.100.10",
	"ipset add cframe-peers 203.0.113.10",
	"iptables -t filter -N CFRAME-FORWARD",
	"iptables -t filter -I CFRAME-FORWARD 1 -s 172.20.0.0/16 -o cframe0 -j ACCEPT",
	"iptables -t filter -I CFRAME-FORWARD 1 -d 172.20.0.0/16 -i cframe0 -j ACCEPT",
	"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
	"iptables -t filter -N CFRAME-INPUT",
	"iptables -t filter -I CFRAME-INPUT 1 -p udp -m udp --dport 58425 -m set --match-set cframe-peers src -j ACCEPT",
	"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
	"iptables -t filter -I INPUT 1 -j CFRAME-INPUT",
	"iptables -t mangle -N CFRAME-MSS",
	"iptables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
	"iptables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
	"iptables -t mangle -I FORWARD 1 -j CFRAME-MSS",
	"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
	"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
	"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
	"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
	"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
	"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
	"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
}

func TestPlan(t *testing.T) {
	gre1, gre2 := greDevice("cframe0", "vpc1"), greDevice("cframe0", "vpc2")
	tests := []struct {
		name          string
		desired       func(d *Desired)
		actual        func() *actual
		wantChanges   []string
		wantConflicts []string
	}{
		{
			name:        "from scratch",
			actual:      scratchActual,
			wantChanges: scratchChanges,
		},
		{
			name:   "converged: no-op",
			actual: convergedActual,
		},
		{
			name:    "peer removed",
			desired: func(d *Desired) { d.Peers = d.Peers[1:] },
			actual:  convergedActual,
			wantChanges: []string{
				"route del 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"neigh del 172.31.0.0 dev cframe0",
				"fdb del 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"ipset del cframe-peers 203.0.113.10",
			},
		},
		{
			name:    "CIDR removed",
			desired: func(d *Desired) { d.Peers[1].CIDRs = d.Peers[1].CIDRs[:1] },
			actual:  convergedActual,
			wantChanges: []string{
				"route del 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name:        "peer port changed",
			desired:     func(d *Desired) { d.Peers[0].Underlay = netip.MustParseAddrPort("203.0.113.10:4789") },
			actual:      convergedActual,
			wantChanges: []string{"fdb replace 02:cf:00:00:00:02 dst 203.0.113.10 port 4789 dev cframe0"},
		},
		{
			name:    "peer MAC changed",
			desired: func(d *Desired) { d.Peers[0].MAC = mac(0x22) },
			actual:  convergedActual,
			wantChanges: []string{
				"fdb add 02:cf:00:00:00:22 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh replace 172.31.0.0 lladdr 02:cf:00:00:00:22 dev cframe0 nud permanent",
				"fdb del 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
			},
		},
		{
			name:    "own MTU and MAC changed: set in place, flushed neighbors re-added, MSS rules follow",
			desired: func(d *Desired) { d.MTU, d.DeviceMAC = 1400, mac(0x33) },
			actual:  convergedActual,
			wantChanges: []string{
				"link set cframe0 mtu 1400",
				"link set cframe0 address 02:cf:00:00:00:33",
				"iptables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1361:65535 -j TCPMSS --set-mss 1360",
				"iptables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1361:65535 -j TCPMSS --set-mss 1360",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"iptables -t mangle -D CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
				"iptables -t mangle -D CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
			},
		},
		{
			name:    "own port changed: device recreated, entries re-added, INPUT swapped make-before-break",
			desired: func(d *Desired) { d.Port = 58500 },
			actual:  convergedActual,
			wantChanges: []string{
				"link del cframe0 (recreate: dstport 58425 -> 58500)",
				`link add cframe0 type vxlan id 1 dstport 58500 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming off`,
				"iptables -t filter -I CFRAME-INPUT 1 -p udp -m udp --dport 58500 -m set --match-set cframe-peers src -j ACCEPT",
				"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58500 -j DROP",
				"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"iptables -t filter -D CFRAME-INPUT -p udp -m udp --dport 58425 -m set --match-set cframe-peers src -j ACCEPT",
				"iptables -t filter -D CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
			},
		},
		{
			name:    "explicit LAN address and next hop change: routes replaced, not re-added",
			desired: func(d *Desired) { d.LANAddr = ip("172.20.0.10"); d.Peers[0].NextHop = ip("172.31.0.1") },
			actual:  convergedActual,
			wantChanges: []string{
				"neigh add 172.31.0.1 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route replace 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.10 proto 207",
				"route replace 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.10 proto 207",
				"route replace 172.31.0.0/16 via 172.31.0.1 dev cframe0 onlink src 172.20.0.10 proto 207",
				"neigh del 172.31.0.0 dev cframe0",
			},
		},
		{
			name: "foreign route with the same prefix: ours skipped, conflict reported",
			actual: func() *actual {
				a := convergedActual()
				a.Routes = slices.DeleteFunc(a.Routes, func(r route) bool { return r.Dst == pfx("172.31.0.0/16") })
				a.ForeignRoutes = []route{{Dst: pfx("172.31.0.0/16"), Gw: ip("172.20.0.1"), Device: "eth0", Protocol: 4}}
				return a
			},
			wantConflicts: []string{"route 172.31.0.0/16 via 172.20.0.1 dev eth0 proto static is not cframe's: skipped peer vpc2's route 172.31.0.0/16"},
		},
		{
			name: "overlapping foreign routes: ours installed, overlap reported",
			actual: func() *actual {
				a := convergedActual()
				a.Routes = a.Routes[:2]
				a.ForeignRoutes = []route{
					{Dst: pfx("172.31.5.0/24"), Device: "eth0", Protocol: 3},
					{Dst: pfx("172.31.0.0/16"), Device: "eth1", Protocol: 4, Metric: 100},
				}
				return a
			},
			wantChanges: []string{"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207"},
			wantConflicts: []string{
				"route 172.31.5.0/24 dev eth0 proto boot is not cframe's and overlaps peer vpc2's 172.31.0.0/16: installed cframe's route anyway",
				"route 172.31.0.0/16 dev eth1 metric 100 proto static is not cframe's and overlaps peer vpc2's 172.31.0.0/16: installed cframe's route anyway",
			},
		},
		{
			name: "foreign link with our name: left alone with everything that depends on it",
			actual: func() *actual {
				a := scratchActual()
				a.IPForward = true
				a.Links = []link{{Name: "cframe0", Kind: "bridge", Index: 3, MTU: 1500, Up: true}}
				return a
			},
			wantChanges: []string{
				"ipset create cframe-peers hash:ip family inet",
				"ipset add cframe-peers 198.51.100.10",
				"ipset add cframe-peers 203.0.113.10",
				"iptables -t filter -N CFRAME-FORWARD",
				"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
				"iptables -t filter -N CFRAME-INPUT",
				"iptables -t filter -I CFRAME-INPUT 1 -p udp -m udp --dport 58425 -m set --match-set cframe-peers src -j ACCEPT",
				"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
				"iptables -t filter -I INPUT 1 -j CFRAME-INPUT",
				"iptables -t mangle -N CFRAME-MSS",
				"iptables -t mangle -I FORWARD 1 -j CFRAME-MSS",
			},
			wantConflicts: []string{`link cframe0 exists but is not cframe's (type bridge, alias ""): left alone, nothing installed on it`},
		},
		{
			name: "stale objects of ours removed, foreign entries on other devices ignored",
			actual: func() *actual {
				a := convergedActual()
				a.FDB = append(a.FDB, fdbEntry{Device: "cframe0", MAC: mac(9), Dst: ip("192.0.2.99"), Port: 58423})
				a.Neighbors = append(a.Neighbors, neighbor{Device: "cframe0", IP: ip("10.9.0.0"), MAC: mac(9)})
				a.Routes = append(a.Routes, route{Dst: pfx("10.9.0.0/16"), Gw: ip("10.9.0.0"), Device: "cframe0", Protocol: RouteProtocol, OnLink: true})
				a.Links = append(a.Links, link{Name: "cframe1", Kind: "vxlan", Alias: "cframe", VNI: 2},
					link{Name: "cfnew0badf00d", Kind: "vxlan"}, // a creation cut short
					link{Name: "cfnew-bridge", Kind: "bridge"}) // not ours
				return a
			},
			wantChanges: []string{
				"route del 10.9.0.0/16 via 10.9.0.0 dev cframe0 onlink proto 207",
				"neigh del 10.9.0.0 dev cframe0",
				"fdb del 02:cf:00:00:00:09 dst 192.0.2.99 port 58423 dev cframe0",
				"link del cframe1 (stale)",
				"link del cfnew0badf00d (stale)",
			},
		},
		{
			name:        "ip_forward off",
			actual:      func() *actual { a := convergedActual(); a.IPForward = false; return a },
			wantChanges: []string{"sysctl net.ipv4.ip_forward=1"},
		},
		{
			name:        "link down",
			actual:      func() *actual { a := convergedActual(); a.Links[0].Up = false; return a },
			wantChanges: []string{"link set cframe0 up"},
		},
		{
			name:        "receive packet steering switched off by someone: switched on again",
			actual:      func() *actual { a := convergedActual(); a.Links[0].RPS = false; return a },
			wantChanges: []string{"link set cframe0 rps_cpus all (receive packet steering)"},
		},
		{
			name:    "safe to fast: the device is replaced (the kernel does not change udpcsum in place), offload on",
			desired: func(d *Desired) { d.Checksum = ChecksumFast },
			actual: func() *actual {
				a := convergedActual()
				a.FDB, a.Neighbors = nil, nil
				return a
			},
			wantChanges: []string{
				"link del cframe0 (recreate: udpcsum on -> off, fixed at creation)",
				`link add cframe0 type vxlan id 1 dstport 58425 nolearning noudpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming on`,
				"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name:    "fast, converged: nothing to do",
			desired: func(d *Desired) { d.Checksum = ChecksumFast },
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].UDPCsum, a.Links[0].TxCsum = false, true
				return a
			},
		},
		{
			name:    "fast, transmit checksum offload switched off by someone: switched on again",
			desired: func(d *Desired) { d.Checksum = ChecksumFast },
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].UDPCsum = false
				return a
			},
			wantChanges: []string{"link set cframe0 tx-checksumming on"},
		},
		{
			name: "fast to safe: the device is replaced with the outer checksum on, offload off",
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].UDPCsum, a.Links[0].TxCsum = false, true
				a.FDB, a.Neighbors = nil, nil
				return a
			},
			wantChanges: []string{
				"link del cframe0 (recreate: udpcsum off -> on, fixed at creation)",
				`link add cframe0 type vxlan id 1 dstport 58425 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming off`,
				"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name:        "transmit checksum offload switched on by someone: switched off again",
			actual:      func() *actual { a := convergedActual(); a.Links[0].TxCsum = true; return a },
			wantChanges: []string{"link set cframe0 tx-checksumming off"},
		},
		{
			name: "outer UDP checksum off (a device of an older kernel's default): recreated",
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].UDPCsum = false
				a.FDB, a.Neighbors = nil, nil
				return a
			},
			wantChanges: []string{
				"link del cframe0 (recreate: udpcsum off -> on, fixed at creation)",
				`link add cframe0 type vxlan id 1 dstport 58425 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming off`,
				"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name: "underlay NIC with a receive queue per CPU: no receive packet steering wanted, none removed",
			actual: func() *actual {
				a := convergedActual()
				a.UnderlayRxQueues = 2
				a.Links[0].RPS = false
				return a
			},
		},
		{
			name: "underlay veth receiving on the sending CPUs: no receive packet steering wanted, none removed",
			actual: func() *actual {
				a := convergedActual()
				a.UnderlayRxOnSender = true
				return a
			},
		},
		{
			name: "learning switched on by someone: recreated",
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].Learning = true
				a.FDB, a.Neighbors = nil, nil
				return a
			},
			wantChanges: []string{
				"link del cframe0 (recreate: learning -> nolearning)",
				`link add cframe0 type vxlan id 1 dstport 58425 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1450 alias "cframe" tx-checksumming off`,
				"fdb add 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name: "iptables repairs: flushed builtin chain, flushed own chain, misplaced DROP, duplicates",
			actual: func() *actual {
				a := convergedActual()
				a.Chains[chain{"filter", "FORWARD"}] = []string{dockerUser} // someone ran iptables -F FORWARD
				a.Chains[chainForward] = []string{}                         // iptables -F CFRAME-FORWARD
				a.Chains[chainInput] = []string{inDrop, inPeers}            // accept after the DROP
				a.Chains[chainMSS] = []string{mssOut, mssIn, mssOut}        // duplicate
				a.Chains[chain{"mangle", "FORWARD"}] = []string{jumpMSS, jumpMSS}
				return a
			},
			wantChanges: []string{
				"iptables -t filter -I CFRAME-FORWARD 1 -s 172.20.0.0/16 -o cframe0 -j ACCEPT",
				"iptables -t filter -I CFRAME-FORWARD 1 -d 172.20.0.0/16 -i cframe0 -j ACCEPT",
				"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
				"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
				"iptables -t filter -D CFRAME-INPUT -p udp -m udp --dport 58425 -j DROP",
				"iptables -t mangle -D CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
				"iptables -t mangle -D FORWARD -j CFRAME-MSS",
			},
		},
		{
			name:    "masquerade on",
			desired: func(d *Desired) { d.Masquerade = true },
			actual:  convergedActual,
			wantChanges: []string{
				"ipset create cframe-nets hash:net family inet",
				"ipset add cframe-nets 172.18.0.0/16",
				"ipset add cframe-nets 10.244.1.0/24",
				"ipset add cframe-nets 172.31.0.0/16",
				"iptables -t nat -N CFRAME-POSTROUTING",
				"iptables -t nat -I CFRAME-POSTROUTING 1 -d 172.20.0.0/16 -m set --match-set cframe-nets src -j SNAT --to-source 172.20.0.9",
				"iptables -t nat -I POSTROUTING 1 -j CFRAME-POSTROUTING",
			},
		},
		{
			name: "masquerade on without a known LAN address: MASQUERADE",
			desired: func(d *Desired) {
				d.Masquerade = true
				d.Peers = d.Peers[:1]
			},
			actual: func() *actual {
				a := convergedActual()
				a.LANAddr = netip.Addr{}
				a.Routes = []route{{Dst: pfx("172.31.0.0/16"), Gw: ip("172.31.0.0"), Device: "cframe0", Protocol: RouteProtocol, OnLink: true}}
				a.FDB, a.Neighbors = a.FDB[1:], a.Neighbors[1:]
				a.Sets[setPeers] = ipset{Type: "hash:ip", Members: []netip.Prefix{pfx("203.0.113.10/32")}}
				a.Sets[setNets] = ipset{Type: "hash:net", Members: []netip.Prefix{pfx("10.9.0.0/16")}}
				return a
			},
			wantChanges: []string{
				"ipset add cframe-nets 172.31.0.0/16",
				"iptables -t nat -N CFRAME-POSTROUTING",
				"iptables -t nat -I CFRAME-POSTROUTING 1 -d 172.20.0.0/16 -m set --match-set cframe-nets src -j MASQUERADE",
				"iptables -t nat -I POSTROUTING 1 -j CFRAME-POSTROUTING",
				"ipset del cframe-nets 10.9.0.0/16",
			},
		},
		{
			name: "masquerade off: chain unhooked and removed, then its set; foreign NAT rule kept",
			actual: func() *actual {
				a := convergedActual()
				a.Sets[setNets] = ipset{Type: "hash:net", Members: []netip.Prefix{pfx("172.31.0.0/16")}}
				a.Chains[chainNAT] = []string{"-A CFRAME-POSTROUTING -d 172.20.0.0/16 -m set --match-set cframe-nets src -j SNAT --to-source 172.20.0.9"}
				a.Chains[chain{"nat", "POSTROUTING"}] = []string{"-A POSTROUTING -j CFRAME-POSTROUTING", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"}
				return a
			},
			wantChanges: []string{
				"iptables -t nat -D POSTROUTING -j CFRAME-POSTROUTING",
				"iptables -t nat -F CFRAME-POSTROUTING",
				"iptables -t nat -X CFRAME-POSTROUTING",
				"ipset destroy cframe-nets",
			},
		},
		{
			name: "GRE from scratch, replacing a stale VXLAN device",
			desired: func(d *Desired) {
				d.Mode = ModeGRE
				d.Peers[1].CIDRs = d.Peers[1].CIDRs[:1]
			},
			actual: func() *actual {
				a := scratchActual()
				a.IPForward = true
				a.UnderlaySource = map[netip.Addr]netip.Addr{ip("198.51.100.10"): ip("192.0.2.10"), ip("203.0.113.10"): ip("192.0.2.10")}
				a.Links = []link{{Name: "cframe0", Kind: "vxlan", Alias: "cframe", VNI: 1, Port: 58425, MTU: 1450, Up: true}}
				return a
			},
			wantChanges: []string{
				"link add " + gre1 + ` type gre local 192.0.2.10 remote 198.51.100.10 ttl 64 mtu 1476 alias "cframe:vpc1"`,
				"link add " + gre2 + ` type gre local 192.0.2.10 remote 203.0.113.10 ttl 64 mtu 1476 alias "cframe:vpc2"`,
				"ipset create cframe-peers hash:ip family inet",
				"ipset add cframe-peers 198.51.100.10",
				"ipset add cframe-peers 203.0.113.10",
				"iptables -t filter -N CFRAME-FORWARD",
				"iptables -t filter -I CFRAME-FORWARD 1 -s 172.20.0.0/16 -o " + gre2 + " -j ACCEPT",
				"iptables -t filter -I CFRAME-FORWARD 1 -d 172.20.0.0/16 -i " + gre2 + " -j ACCEPT",
				"iptables -t filter -I CFRAME-FORWARD 1 -s 172.20.0.0/16 -o " + gre1 + " -j ACCEPT",
				"iptables -t filter -I CFRAME-FORWARD 1 -d 172.20.0.0/16 -i " + gre1 + " -j ACCEPT",
				"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
				"iptables -t filter -N CFRAME-INPUT",
				"iptables -t filter -I CFRAME-INPUT 1 -p gre -m set --match-set cframe-peers src -j ACCEPT",
				"iptables -t filter -A CFRAME-INPUT -p gre -j DROP",
				"iptables -t filter -I INPUT 1 -j CFRAME-INPUT",
				"iptables -t mangle -N CFRAME-MSS",
				"iptables -t mangle -I CFRAME-MSS 1 -i " + gre2 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"iptables -t mangle -I CFRAME-MSS 1 -o " + gre2 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"iptables -t mangle -I CFRAME-MSS 1 -i " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"iptables -t mangle -I CFRAME-MSS 1 -o " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"iptables -t mangle -I FORWARD 1 -j CFRAME-MSS",
				"route add 172.18.0.0/16 dev " + gre1 + " src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 dev " + gre2 + " src 172.20.0.9 proto 207",
				"link del cframe0 (stale)",
			},
		},
		{
			name: "GRE peer removed and peer address changed; per-peer INPUT rules of an older cframe replaced by the set",
			desired: func(d *Desired) {
				d.Mode, d.LocalAddr = ModeGRE, ip("192.0.2.10")
				d.Peers = d.Peers[:1] // vpc2 only
				d.Peers[0].Underlay = netip.MustParseAddrPort("203.0.113.20:0")
			},
			actual: func() *actual {
				a := scratchActual()
				a.IPForward = true
				a.Links = []link{
					{Name: gre1, Kind: "gre", Alias: "cframe:vpc1", Local: ip("192.0.2.10"), Remote: ip("198.51.100.10"), MTU: 1476, Up: true},
					{Name: gre2, Kind: "gre", Alias: "cframe:vpc2", Local: ip("192.0.2.10"), Remote: ip("203.0.113.10"), MTU: 1476, Up: true},
				}
				a.Routes = []route{
					{Dst: pfx("172.18.0.0/16"), Device: gre1, Src: ip("172.20.0.9"), Protocol: RouteProtocol},
					{Dst: pfx("172.31.0.0/16"), Device: gre2, Src: ip("172.20.0.9"), Protocol: RouteProtocol},
				}
				a.Chains[chainForward] = []string{
					"-A CFRAME-FORWARD -d 172.20.0.0/16 -i " + gre1 + " -j ACCEPT", "-A CFRAME-FORWARD -s 172.20.0.0/16 -o " + gre1 + " -j ACCEPT",
					"-A CFRAME-FORWARD -d 172.20.0.0/16 -i " + gre2 + " -j ACCEPT", "-A CFRAME-FORWARD -s 172.20.0.0/16 -o " + gre2 + " -j ACCEPT",
				}
				a.Chains[chain{"filter", "FORWARD"}] = []string{jumpFwd}
				a.Chains[chainInput] = []string{
					`-A CFRAME-INPUT -s 198.51.100.10/32 -p gre -m comment --comment "cframe peer vpc1" -j ACCEPT`,
					`-A CFRAME-INPUT -s 203.0.113.10/32 -p gre -m comment --comment "cframe peer vpc2" -j ACCEPT`,
					"-A CFRAME-INPUT -p gre -j DROP",
				}
				a.Chains[chain{"filter", "INPUT"}] = []string{jumpInput}
				a.Chains[chainMSS] = []string{
					"-A CFRAME-MSS -o " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
					"-A CFRAME-MSS -i " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
					"-A CFRAME-MSS -o " + gre2 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
					"-A CFRAME-MSS -i " + gre2 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				}
				a.Chains[chain{"mangle", "FORWARD"}] = []string{jumpMSS}
				return a
			},
			wantChanges: []string{
				"link del " + gre2 + " (recreate: remote 203.0.113.10 -> 203.0.113.20)",
				"link add " + gre2 + ` type gre local 192.0.2.10 remote 203.0.113.20 ttl 64 mtu 1476 alias "cframe:vpc2"`,
				"ipset create cframe-peers hash:ip family inet",
				"ipset add cframe-peers 203.0.113.20",
				"iptables -t filter -I CFRAME-INPUT 1 -p gre -m set --match-set cframe-peers src -j ACCEPT",
				"route add 172.31.0.0/16 dev " + gre2 + " src 172.20.0.9 proto 207",
				"route del 172.18.0.0/16 dev " + gre1 + " src 172.20.0.9 proto 207",
				"iptables -t filter -D CFRAME-FORWARD -d 172.20.0.0/16 -i " + gre1 + " -j ACCEPT",
				"iptables -t filter -D CFRAME-FORWARD -s 172.20.0.0/16 -o " + gre1 + " -j ACCEPT",
				`iptables -t filter -D CFRAME-INPUT -s 198.51.100.10/32 -p gre -m comment --comment "cframe peer vpc1" -j ACCEPT`,
				`iptables -t filter -D CFRAME-INPUT -s 203.0.113.10/32 -p gre -m comment --comment "cframe peer vpc2" -j ACCEPT`,
				"iptables -t mangle -D CFRAME-MSS -o " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"iptables -t mangle -D CFRAME-MSS -i " + gre1 + " -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1437:65535 -j TCPMSS --set-mss 1436",
				"link del " + gre1 + " (stale)",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := baseDesired()
			if tc.desired != nil {
				tc.desired(d)
			}
			n, err := prepare(d)
			if err != nil {
				t.Fatalf("fixture does not validate: %v", err)
			}
			p := newPlan(n, tc.actual())
			expectLines(t, "changes", descs(p.changes), tc.wantChanges)
			var conflicts []string
			for _, c := range p.notes {
				conflicts = append(conflicts, c.text)
			}
			expectLines(t, "conflicts", conflicts, tc.wantConflicts)
		})
	}
}

// descs returns the descriptions of changes, in order.
func descs(changes []change) []string {
	var out []string
	for _, c := range changes {
		out = append(out, c.desc)
	}
	return out
}

func expectLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) || len(got) == 0 && len(want) == 0 {
		return
	}
	t.Errorf("%s differ:\n got (%d):\n\t%s\nwant (%d):\n\t%s", what, len(got), strings.Join(got, "\n\t"), len(want), strings.Join(want, "\n\t"))
}

func TestGREDeviceNames(t *testing.T) {
	if got := greDevice("cframe0", "sz-1"); got != "cframe0-"+got[8:] || len(got) != 14 {
		t.Errorf("greDevice(cframe0, sz-1) = %q, want cframe0-<6 hex>", got)
	}
	if a, b := greDevice("cframe0", "sz-1"), greDevice("cframe0", "sz-1"); a != b {
		t.Errorf("not deterministic: %q vs %q", a, b)
	}
	if a, b := greDevice("cframe0", "sz-1"), greDevice("cframe0", "sz-2"); a == b {
		t.Errorf("two peers share %q", a)
	}
	long := greDevice("averylongdevicename", "x")
	if len(long) > 15 || !strings.HasPrefix(long, "averylon-") {
		t.Errorf("greDevice with a long prefix = %q (%d chars)", long, len(long))
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(d *Desired)
		want   string // substring of the error; "" = valid
	}{
		{"base", func(d *Desired) {}, ""},
		{"defaults only", func(d *Desired) { *d = Desired{} }, ""},
		{"bad mode", func(d *Desired) { d.Mode = "ipip" }, "unknown mode"},
		{"long device", func(d *Desired) { d.Device = "a-very-long-name0" }, "bad device name"},
		{"fallback device", func(d *Desired) { d.Device = "gre0" }, "fallback device"},
		{"VNI", func(d *Desired) { d.VNI = 1 << 24 }, "VNI"},
		{"MTU", func(d *Desired) { d.MTU = 100 }, "MTU"},
		{"multicast device MAC", func(d *Desired) { d.DeviceMAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }, "device MAC"},
		{"IPv6 local, IPv4 peers", func(d *Desired) { d.LocalAddr = ip("2001:db8::1") }, "not of this edge's underlay family (IPv6)"},
		{"IPv4 local, an IPv6 peer", func(d *Desired) { d.Peers[0].Underlay = netip.MustParseAddrPort("[2001:db8::2]:58423") }, "not of this edge's underlay family (IPv4)"},
		{"IPv6 local and peers", func(d *Desired) {
			d.LocalAddr = ip("2001:db8::1")
			d.Peers[0].Underlay, d.Peers[1].Underlay = netip.MustParseAddrPort("[2001:db8::2]:58423"), netip.MustParseAddrPort("[2001:db8::3]:58423")
		}, ""},
		{"IPv6 link-local local", func(d *Desired) { d.LocalAddr = ip("fe80::1") }, "global unicast"},
		{"GRE over IPv6", func(d *Desired) { d.Mode, d.LocalAddr = ModeGRE, ip("2001:db8::1") }, "VXLAN mode"},
		{"duplicate name", func(d *Desired) { d.Peers[1].Name = "vpc2" }, "same name"},
		{"duplicate CIDR", func(d *Desired) { d.Peers[1].CIDRs = append(d.Peers[1].CIDRs, pfx("172.31.0.0/16")) }, "same CIDR"},
		{"duplicate MAC", func(d *Desired) { d.Peers[1].MAC = mac(2) }, "same MAC"},
		{"duplicate next hop", func(d *Desired) { d.Peers[1].NextHop = ip("172.31.0.0") }, "same next hop"},
		{"missing MAC", func(d *Desired) { d.Peers[0].MAC = nil }, "VTEP MAC"},
		{"missing port", func(d *Desired) { d.Peers[0].Underlay = netip.MustParseAddrPort("203.0.113.10:0") }, "no port"},
		{"missing next hop", func(d *Desired) { d.Peers[0].NextHop = netip.Addr{} }, "next hop"},
		{"GRE needs no MAC, port or next hop", func(d *Desired) {
			d.Mode = ModeGRE
			d.Peers[0].MAC, d.Peers[0].NextHop, d.Peers[0].Underlay = nil, netip.Addr{}, netip.MustParseAddrPort("203.0.113.10:0")
		}, ""},
		{"unnamed peer", func(d *Desired) { d.Peers[0].Name = "" }, "without a name"},
		{"invalid CIDR", func(d *Desired) { d.Peers[0].CIDRs = []netip.Prefix{{}} }, "not an IPv4 or IPv6 prefix"},
		{"IPv4-mapped CIDR", func(d *Desired) { d.Peers[0].CIDRs = []netip.Prefix{pfx("::ffff:10.0.0.0/104")} }, "not an IPv4 or IPv6 prefix"},
		{"IPv6 local CIDR", func(d *Desired) { d.LocalCIDRs = append(d.LocalCIDRs, pfx("2001:db8:20::/48")) }, ""},
		{"IPv6 CIDR without link-local", func(d *Desired) { d.Peers[0].CIDRs = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48")) }, "need a link-local"},
		{"IPv6 CIDR with link-local", func(d *Desired) {
			d.Peers[0].CIDRs, d.Peers[0].LinkLocal = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48")), ip("fe80::2")
		}, ""},
		{"IPv6 CIDRs only, no next hop", func(d *Desired) {
			d.Peers[0].CIDRs, d.Peers[0].LinkLocal, d.Peers[0].NextHop = []netip.Prefix{pfx("2001:db8:31::/48")}, ip("fe80::2"), netip.Addr{}
		}, ""},
		{"IPv4 CIDRs need a next hop beside IPv6 ones", func(d *Desired) {
			d.Peers[0].CIDRs, d.Peers[0].LinkLocal, d.Peers[0].NextHop = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48")), ip("fe80::2"), netip.Addr{}
		}, "next hop"},
		{"duplicate IPv6 CIDR", func(d *Desired) {
			d.Peers[0].CIDRs, d.Peers[0].LinkLocal = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48")), ip("fe80::2")
			d.Peers[1].CIDRs, d.Peers[1].LinkLocal = append(d.Peers[1].CIDRs, pfx("2001:db8:31::/48")), ip("fe80::1")
		}, "same CIDR"},
		{"GRE IPv6 CIDR needs no link-local", func(d *Desired) {
			d.Mode = ModeGRE
			d.Peers[0].CIDRs = append(d.Peers[0].CIDRs, pfx("2001:db8:31::/48"))
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := baseDesired()
			tc.mutate(d)
			_, err := prepare(d)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRuleLinesRoundTrip(t *testing.T) {
	for _, comment := range []string{"sz-1", "cframe peer sz-1", `we"ir\d'x`, "a.b:c", ""} {
		r := rule{chainInput, []string{"-s", "192.0.2.1/32", "-m", "comment", "--comment", comment, "-j", "ACCEPT"}}
		args, err := splitArgs(r.line())
		if err != nil || len(args) < 2 || args[0] != "-A" || args[1] != "CFRAME-INPUT" || !slices.Equal(args[2:], r.args) {
			t.Errorf("splitArgs(%q) = %q %v, want -A CFRAME-INPUT %q", r.line(), args, err, r.args)
		}
	}
	if got := quoteSave("sz-1"); got != "sz-1" {
		t.Errorf("quoteSave(sz-1) = %s", got)
	}
	if got := quoteSave(`a"b\c'd e`); got != `"a\"b\\c\'d e"` {
		t.Errorf("quoteSave = %s", got)
	}
	if _, err := splitArgs(`-A X -m comment --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
	if got := normalizeLine("-A CFRAME-INPUT -s 192.0.2.1/32 -p 47 -j ACCEPT"); got != "-A CFRAME-INPUT -s 192.0.2.1/32 -p gre -j ACCEPT" {
		t.Errorf("normalizeLine = %q", got)
	}
}
