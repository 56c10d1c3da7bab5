package netcfg

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/internal/topo"
)

// wgKey is a fixed WireGuard private key for the plan fixtures.
func wgKey(b byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k
}

// encryptedDesired is baseDesired with WireGuard: VXLAN on 58426, the
// WireGuard device on the tunnel port 58425, vpc1 encrypted (mesh address
// 240.207.0.1) and vpc2 plaintext.
func encryptedDesired() *Desired {
	d := baseDesired()
	d.Port = 58426
	d.WireGuard = &WireGuard{PrivateKey: wgKey(3), ListenPort: 58425, Address: pfx("240.207.0.3/16")}
	d.Peers[1].Mesh = netip.MustParseAddrPort("240.207.0.1:58424")
	d.Peers[1].PublicKey = wgKey(1).PublicKey()
	d.Peers[1].Keepalive = 25 * time.Second
	return d
}

// The WireGuard peer of vpc1, as "wg set" takes it.
var wgVPC1 = "wg set cframe-wg peer " + wgKey(1).PublicKey().String() + " endpoint 198.51.100.10:58423 allowed-ips 240.207.0.1/32 persistent-keepalive 25"

// encryptedActual is what the kernel holds after encryptedDesired was
// applied.
func encryptedActual() *actual {
	a := convergedActual()
	a.Links = []link{
		{Name: "cframe-wg", Kind: "wireguard", Index: 6, Alias: "cframe", MTU: 1440, Up: true},
		{Name: "cframe0", Kind: "vxlan", Index: 7, Alias: "cframe", MTU: 1390, MAC: mac(3), Up: true, VNI: 1, Port: 58426, UDPCsum: true, RPS: true},
	}
	a.WireGuard = &wgState{PrivateKey: wgKey(3), ListenPort: 58425, Addrs: []netip.Prefix{pfx("240.207.0.3/16")},
		Peers: []wgPeer{wantWireGuardPeer(encryptedDesired().normalized().Peers[0])}}
	a.FDB[0] = fdbEntry{Device: "cframe0", MAC: mac(1), Dst: ip("240.207.0.1"), Port: 58424}
	a.Sets[setPeers] = ipset{Type: "hash:ip", Members: []netip.Prefix{pfx("203.0.113.10/32")}}
	a.Chains[chainInput] = []string{
		"-A CFRAME-INPUT -i cframe-wg -p udp -m udp --dport 58426 -j ACCEPT",
		"-A CFRAME-INPUT -p udp -m udp --dport 58426 -m set --match-set cframe-peers src -j ACCEPT",
		"-A CFRAME-INPUT -p udp -m udp --dport 58426 -j DROP",
	}
	mss := func(dir string) string {
		return "-A CFRAME-MSS " + dir + " cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1351:65535 -j TCPMSS --set-mss 1350"
	}
	a.Chains[chainMSS] = []string{mss("-o"), mss("-i")}
	return a
}

func TestPlanWireGuard(t *testing.T) {
	pub3 := wgKey(3).PublicKey().String()
	pub1 := wgKey(1).PublicKey().String()
	tests := []struct {
		name          string
		desired       func(d *Desired)
		actual        func() *actual
		wantChanges   []string
		wantConflicts []string
	}{
		{
			name:   "from scratch: the WireGuard device, configured before the FDB entry that sends through it; MTU 1500-110, MSS follows",
			actual: scratchActual,
			wantChanges: []string{
				"sysctl net.ipv4.ip_forward=1",
				`link add cframe-wg type wireguard mtu 1440 alias "cframe"`,
				`link add cframe0 type vxlan id 1 dstport 58426 nolearning udpcsum address 02:cf:00:00:00:03 mtu 1390 alias "cframe" tx-checksumming off`,
				"wg set cframe-wg private-key (of public key " + pub3 + ") listen-port 58425",
				"addr add 240.207.0.3/16 dev cframe-wg",
				wgVPC1,
				"ipset create cframe-peers hash:ip family inet",
				"ipset add cframe-peers 203.0.113.10",
				"iptables -t filter -N CFRAME-FORWARD",
				"iptables -t filter -I CFRAME-FORWARD 1 -s 172.20.0.0/16 -o cframe0 -j ACCEPT",
				"iptables -t filter -I CFRAME-FORWARD 1 -d 172.20.0.0/16 -i cframe0 -j ACCEPT",
				"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD",
				"iptables -t filter -N CFRAME-INPUT",
				"iptables -t filter -I CFRAME-INPUT 1 -i cframe-wg -p udp -m udp --dport 58426 -j ACCEPT",
				"iptables -t filter -I CFRAME-INPUT 1 -p udp -m udp --dport 58426 -m set --match-set cframe-peers src -j ACCEPT",
				"iptables -t filter -A CFRAME-INPUT -p udp -m udp --dport 58426 -j DROP",
				"iptables -t filter -I INPUT 1 -j CFRAME-INPUT",
				"iptables -t mangle -N CFRAME-MSS",
				"iptables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1351:65535 -j TCPMSS --set-mss 1350",
				"iptables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1351:65535 -j TCPMSS --set-mss 1350",
				"iptables -t mangle -I FORWARD 1 -j CFRAME-MSS",
				"fdb add 02:cf:00:00:00:01 dst 240.207.0.1 port 58424 dev cframe0",
				"fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58424 dev cframe0",
				"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
				"neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent",
				"route add 172.18.0.0/16 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 10.244.1.0/24 via 172.18.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
				"route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.20.0.9 proto 207",
			},
		},
		{
			name:   "converged: no-op",
			actual: encryptedActual,
		},
		{
			name:        "a peer removed by hand comes back",
			actual:      func() *actual { a := encryptedActual(); a.WireGuard.Peers = nil; return a },
			wantChanges: []string{wgVPC1},
		},
		{
			name: "a peer's endpoint and allowed IPs changed by hand are put right",
			actual: func() *actual {
				a := encryptedActual()
				a.WireGuard.Peers[0].Endpoint = netip.MustParseAddrPort("192.0.2.66:1")
				a.WireGuard.Peers[0].AllowedIPs = []netip.Prefix{pfx("0.0.0.0/0")}
				return a
			},
			wantChanges: []string{wgVPC1},
		},
		{
			name: "a foreign peer and address on the device go, after the FDB entries",
			actual: func() *actual {
				a := encryptedActual()
				a.WireGuard.Peers = append(a.WireGuard.Peers, wgPeer{PublicKey: wgKey(9).PublicKey()})
				a.WireGuard.Addrs = append(a.WireGuard.Addrs, pfx("10.9.9.9/24"))
				return a
			},
			wantChanges: []string{
				"addr del 10.9.9.9/24 dev cframe-wg",
				"wg set cframe-wg peer " + wgKey(9).PublicKey().String() + " remove",
			},
		},
		{
			name:        "own key and port changed",
			desired:     func(d *Desired) { d.WireGuard.PrivateKey, d.WireGuard.ListenPort = wgKey(4), 51820 },
			actual:      encryptedActual,
			wantChanges: []string{"wg set cframe-wg private-key (of public key " + wgKey(4).PublicKey().String() + ") listen-port 51820"},
		},
		{
			name: "the peer drops encryption: plaintext FDB entry and INPUT admission first, its WireGuard peer goes last",
			desired: func(d *Desired) {
				d.Peers[1].Mesh, d.Peers[1].PublicKey, d.Peers[1].Keepalive = netip.AddrPort{}, wgtypes.Key{}, 0
			},
			actual: encryptedActual,
			wantChanges: []string{
				"ipset add cframe-peers 198.51.100.10",
				"fdb replace 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"wg set cframe-wg peer " + pub1 + " remove",
			},
		},
		{
			name:    "the peer's key changed: the new peer before the old one goes",
			desired: func(d *Desired) { d.Peers[1].PublicKey = wgKey(5).PublicKey() },
			actual:  encryptedActual,
			wantChanges: []string{
				"wg set cframe-wg peer " + wgKey(5).PublicKey().String() + " endpoint 198.51.100.10:58423 allowed-ips 240.207.0.1/32 persistent-keepalive 25",
				"wg set cframe-wg peer " + pub1 + " remove",
			},
		},
		{
			name:    "a foreign device with the WireGuard device's name is left alone",
			desired: func(d *Desired) { d.Peers[1].Mesh, d.Peers[1].PublicKey = netip.AddrPort{}, wgtypes.Key{} },
			actual: func() *actual {
				a := convergedActual()
				a.Links[0].Port = 58426
				a.Links[0].MTU = 1390
				a.Links = append(a.Links, link{Name: "cframe-wg", Kind: "wireguard", Index: 9, Alias: "vpn", MTU: 1420, Up: true})
				a.Chains[chainInput] = []string{
					"-A CFRAME-INPUT -p udp -m udp --dport 58426 -m set --match-set cframe-peers src -j ACCEPT",
					"-A CFRAME-INPUT -p udp -m udp --dport 58426 -j DROP",
				}
				a.Chains[chainMSS] = encryptedActual().Chains[chainMSS]
				return a
			},
			wantConflicts: []string{`link cframe-wg exists but is not cframe's (type wireguard, alias "vpn"): left alone, nothing installed on it`},
		},
		{
			name:    "encryption off: the device goes first (VXLAN may take its port back), VXLAN takes the whole overhead back",
			desired: func(d *Desired) { *d = *baseDesired(); d.Port = 58426 },
			actual:  encryptedActual,
			wantChanges: []string{
				"link del cframe-wg (stale)",
				"link set cframe0 mtu 1450",
				"ipset add cframe-peers 198.51.100.10",
				"iptables -t mangle -I CFRAME-MSS 1 -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
				"iptables -t mangle -I CFRAME-MSS 1 -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
				"fdb replace 02:cf:00:00:00:01 dst 198.51.100.10 port 58423 dev cframe0",
				"iptables -t filter -D CFRAME-INPUT -i cframe-wg -p udp -m udp --dport 58426 -j ACCEPT",
				"iptables -t mangle -D CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1351:65535 -j TCPMSS --set-mss 1350",
				"iptables -t mangle -D CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1351:65535 -j TCPMSS --set-mss 1350",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := encryptedDesired()
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

// TestPlanWireGuardNeverShowsThePrivateKey: no change's description holds
// the private key, in any encoding wg(8) or a log would print.
func TestPlanWireGuardNeverShowsThePrivateKey(t *testing.T) {
	n, err := prepare(encryptedDesired())
	if err != nil {
		t.Fatal(err)
	}
	secret := wgKey(3)
	for _, c := range newPlan(n, scratchActual()).changes {
		if containsKey(c.desc, secret) {
			t.Errorf("change %q shows the private key", c.desc)
		}
	}
}

func containsKey(s string, k wgtypes.Key) bool {
	return strings.Contains(s, k.String()) || strings.Contains(s, string(k[:]))
}

func TestValidateWireGuard(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(d *Desired)
		want   string
	}{
		{"base", func(d *Desired) {}, ""},
		{"GRE", func(d *Desired) { d.Mode = ModeGRE }, "needs mode"},
		{"no private key", func(d *Desired) { d.WireGuard.PrivateKey = wgtypes.Key{} }, "without a private key"},
		{"listen port is the VXLAN port", func(d *Desired) { d.WireGuard.ListenPort = d.Port }, "other than the VXLAN port"},
		{"no address", func(d *Desired) { d.WireGuard.Address = netip.Prefix{} }, "WireGuard address"},
		{"device named like the VXLAN device", func(d *Desired) { d.WireGuard.Device = "cframe0" }, "VXLAN device's name"},
		{"encrypted peer without a device", func(d *Desired) { d.WireGuard = nil }, "without a WireGuard device"},
		{"encrypted peer without a key", func(d *Desired) { d.Peers[1].PublicKey = wgtypes.Key{} }, "without a WireGuard key"},
		{"mesh address outside the mesh", func(d *Desired) { d.Peers[1].Mesh = netip.MustParseAddrPort("10.0.0.1:58424") }, "not another address"},
		{"mesh address is ours", func(d *Desired) { d.Peers[1].Mesh = netip.MustParseAddrPort("240.207.0.3:58424") }, "not another address"},
		{"duplicate key", func(d *Desired) {
			d.Peers[0].Mesh, d.Peers[0].PublicKey = netip.MustParseAddrPort("240.207.0.2:58424"), d.Peers[1].PublicKey
		}, "same WireGuard key"},
		{"duplicate mesh address", func(d *Desired) {
			d.Peers[0].Mesh, d.Peers[0].PublicKey = d.Peers[1].Mesh, wgKey(2).PublicKey()
		}, "same mesh address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := encryptedDesired()
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

// encrypt makes every edge of m encrypted toward every other: the
// WireGuard device on the site's tunnel port, VXLAN on the next port, mesh
// addresses 240.207.0.<index+1>, a key per site.
func (m *mesh) encrypt(keys map[string]wgtypes.Key) {
	meshAddr := func(s *topo.Site) netip.Addr { return netip.AddrFrom4([4]byte{240, 207, 0, byte(s.Index + 1)}) }
	for _, s := range m.topo.Sites() {
		if _, ok := keys[s.Name]; !ok {
			k, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				m.t.Fatal(err)
			}
			keys[s.Name] = k
		}
	}
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		d.Port = port(s) + 1
		d.WireGuard = &WireGuard{PrivateKey: keys[s.Name], ListenPort: port(s), Address: netip.PrefixFrom(meshAddr(s), 16)}
		for i, p := range d.Peers {
			o := m.site(p.Name)
			d.Peers[i].Mesh = netip.AddrPortFrom(meshAddr(o), port(o)+1)
			d.Peers[i].PublicKey = keys[o.Name].PublicKey()
		}
	}
}

// TestKernelWireGuard: the walkthrough's three edges with VXLAN over
// WireGuard: traffic between every pair, none of it readable on the
// underlay, a plaintext VXLAN packet from a peer's address dropped, the
// device's exact configuration, idempotence, drift repair (a peer removed
// and the device deleted by hand come back), a peer moved to plaintext,
// and cleanup. This machine's kernel may lack WireGuard; TestVMStockKernel
// runs the test on Debian's stock kernel.
func TestKernelWireGuard(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()...)
	var unsupported error
	m.in("vpc1", func() error { unsupported = WireGuardSupported(); return nil })
	if unsupported != nil {
		t.Skipf("%v (TestVMStockKernel runs this test on Debian's stock kernel)", unsupported)
	}
	keys := map[string]wgtypes.Key{}
	m.encrypt(keys)
	m.reconcileAll()
	m.expectNoChanges()
	m.checkAllPairs()

	s1, s2 := m.site("vpc1"), m.site("vpc2")
	e1 := s1.Edge
	link := m.sh(e1, "ip", "-d", "link", "show", "cframe-wg")
	for _, want := range []string{"mtu 1440", "wireguard", "alias cframe"} {
		if !strings.Contains(link, want) {
			t.Errorf("ip -d link show cframe-wg: missing %q in\n%s", want, link)
		}
	}
	if got := m.sh(e1, "ip", "-o", "-4", "addr", "show", "dev", "cframe-wg"); !strings.Contains(got, "inet 240.207.0.1/16 ") {
		t.Errorf("cframe-wg addresses: %s", got)
	}
	if got := m.sh(e1, "ip", "-d", "link", "show", "cframe0"); !strings.Contains(got, "mtu 1390") || !strings.Contains(got, fmt.Sprintf("dstport %d ", port(s1)+1)) {
		t.Errorf("cframe0 is not on the next port with MTU 1500-110:\n%s", got)
	}
	m.expectSet("bridge fdb show dev cframe0", m.lines(e1, "bridge", "fdb", "show", "dev", "cframe0"), []string{
		fmt.Sprintf("02:cf:00:00:00:02 dst 240.207.0.2 port %d self permanent", port(s2)+1),
		fmt.Sprintf("02:cf:00:00:00:03 dst 240.207.0.3 port %d self permanent", port(m.site("vpc3"))+1),
	})
	m.expectMembers("vpc1", setPeers) // no plaintext peer
	var dev *wgtypes.Device
	m.in("vpc1", func() (err error) {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		dev, err = c.Device("cframe-wg")
		return err
	})
	if dev.PrivateKey != keys["vpc1"] || dev.ListenPort != int(port(s1)) || len(dev.Peers) != 2 {
		t.Errorf("cframe-wg: listen port %d (want %d), %d peers, key ours: %v", dev.ListenPort, port(s1), len(dev.Peers), dev.PrivateKey == keys["vpc1"])
	}
	var stats []WireGuardPeerStats
	m.in("vpc1", func() (err error) { stats, err = m.k.WireGuardStats(""); return err })
	for _, st := range stats {
		if st.LastHandshake.IsZero() || st.RxBytes == 0 || st.TxBytes == 0 {
			t.Errorf("peer %s after traffic: handshake %v, rx %d, tx %d", st.PublicKey, st.LastHandshake, st.RxBytes, st.TxBytes)
		}
	}
	if len(stats) != 2 {
		t.Errorf("WireGuardStats: %d peers, want 2", len(stats))
	}

	// The underlay shows neither a known payload nor the hosts' addresses
	// as an inner IPv4 header would hold them; it does show WireGuard.
	capture, err := topo.StartCapture(e1, topo.EdgeWAN)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("cframe-wireguard-known-payload-0123456789")
	for range 5 {
		if err := topo.Do(s1.Host, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(s2.HostAddr, 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write(secret)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Error(err)
	}
	if _, err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	inner := append(s1.HostAddr.AsSlice(), s2.HostAddr.AsSlice()...)
	wgPackets := 0
	for _, pkt := range capture.Packets() {
		if bytes.Contains(pkt, secret) {
			t.Errorf("the underlay carried the payload in the clear: % x", pkt)
		}
		if bytes.Contains(pkt[20:], inner) {
			t.Errorf("the underlay carried an inner IPv4 header in the clear: % x", pkt)
		}
		if pkt[9] == 17 && len(pkt) >= 28 && int(pkt[22])<<8|int(pkt[23]) == int(port(s2)) {
			wgPackets++
		}
	}
	if wgPackets < 6 {
		t.Errorf("%d packets to vpc2's WireGuard port on the underlay, want the payloads and pings", wgPackets)
	}

	// A plaintext VXLAN packet from vpc2's underlay address to vpc1's VXLAN
	// port — a forgery, since vpc2 encrypts — is dropped.
	drops := m.counter(e1, "filter", "CFRAME-INPUT", "DROP")
	if err := topo.Do(s2.Edge, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(s1.Underlay(), port(s1)+1).String())
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write(vxlanFrame(s2.HostAddr, s1.HostAddr)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := topo.Eventually(5*time.Second, func() error {
		if got := m.counter(e1, "filter", "CFRAME-INPUT", "DROP"); got < drops+3 {
			return fmt.Errorf("DROP counter %d, want >= %d", got, drops+3)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Drift: a peer removed by hand comes back, and so does the device.
	m.in("vpc1", func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.ConfigureDevice("cframe-wg", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: keys["vpc2"].PublicKey(), Remove: true}}})
	})
	want := "wg set cframe-wg peer " + keys["vpc2"].PublicKey().String() + " "
	if res := m.reconcile("vpc1"); !slices.ContainsFunc(res.Changes, func(c string) bool { return strings.HasPrefix(c, want) }) {
		t.Errorf("reconcile after a peer was removed by hand: %q", res.Changes)
	}
	m.sh(e1, "ip", "link", "del", "cframe-wg")
	if res := m.reconcile("vpc1"); !slices.Contains(res.Changes, `link add cframe-wg type wireguard mtu 1440 alias "cframe"`) {
		t.Errorf("reconcile after cframe-wg was deleted: %q", res.Changes)
	}
	m.expectNoChanges()
	m.checkAllPairs()

	// vpc3 turns plaintext: its peers reach it on its underlay address
	// again, admitted by the set, and its WireGuard peer goes.
	for _, s := range m.topo.Sites() {
		d := m.desired[s.Name]
		if s.Name == "vpc3" {
			*d = Desired{DeviceMAC: vtepMAC(s), Port: port(s), LocalCIDRs: s.CIDRs()}
			for _, o := range m.topo.Sites() {
				if o != s {
					p := peerOf(o)
					p.Underlay = netip.AddrPortFrom(o.Underlay(), port(o)+1)
					d.Peers = append(d.Peers, p)
				}
			}
			continue
		}
		for i, p := range d.Peers {
			if p.Name == "vpc3" {
				d.Peers[i].Mesh, d.Peers[i].PublicKey = netip.AddrPort{}, wgtypes.Key{}
			}
		}
	}
	for _, s := range m.topo.Sites() {
		m.reconcile(s.Name)
	}
	m.expectNoChanges()
	m.checkAllPairs()
	m.expectMembers("vpc1", setPeers, m.site("vpc3").Underlay().String()+"/32")
	if got := m.lines(m.site("vpc3").Edge, "ip", "-o", "link", "show", "type", "wireguard"); len(got) != 0 {
		t.Errorf("vpc3 still has WireGuard links: %q", got)
	}

	var removed []string
	m.in("vpc1", func() (err error) { removed, err = m.k.Cleanup(); return err })
	if !slices.Contains(removed, "link del cframe-wg") {
		t.Errorf("Cleanup removed %q", removed)
	}
	if got := m.lines(e1, "ip", "-o", "link", "show", "type", "wireguard"); len(got) != 0 {
		t.Errorf("WireGuard links after Cleanup: %q", got)
	}
}

// vxlanFrame is a VXLAN packet (VNI DefaultVNI) carrying an ICMP echo
// request from src to dst.
func vxlanFrame(src, dst netip.Addr) []byte {
	b := []byte{0x08, 0, 0, 0, 0, 0, DefaultVNI, 0}                           // VXLAN header
	b = append(b, 0x02, 0xcf, 0, 0, 0, 1, 0x02, 0xcf, 0, 0, 0, 2, 0x08, 0x00) // Ethernet
	ipHdr := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0}
	ipHdr = append(append(ipHdr, src.AsSlice()...), dst.AsSlice()...)
	return append(append(b, ipHdr...), 8, 0, 0xf7, 0xff, 0, 0, 0, 0)
}
