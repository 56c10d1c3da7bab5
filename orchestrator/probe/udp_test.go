package probe

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// Real sockets in namespaces: a peer's kernel answers UDP probes of its
// link-local address with port unreachables; when its firewall drops the
// datagrams the UDP probe goes down while an ICMP probe of the same
// address stays up, and comes back up when they pass again.
func TestUDPInNamespaces(t *testing.T) {
	topo.SkipUnlessRoot(t, "ip6tables")
	n, err := topo.New(topo.UniquePrefix("cfu"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	a, err := n.NS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.NS("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Veth(topo.End{NS: a, Name: "va"}, topo.End{NS: b, Name: "vb"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{a, "fe80::a/64", "va"}, {b, "fe80::b/64", "vb"}} {
		if _, err := n.Exec(c[0], "ip", "-6", "addr", "add", c[1], "dev", c[2], "nodad"); err != nil {
			t.Skipf("no IPv6 here: %v", err)
		}
	}
	var udp, icmp *Prober
	if err := topo.Do(a, func() (err error) {
		if udp, err = OpenUDP(); err != nil {
			return err
		}
		icmp, err = Open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b6 := netip.MustParseAddr("fe80::b%va")
	udp.SetTargets([]Target{{Name: "b", Addr: b6, Interval: UDPInterval, DownAfter: 3 * UDPInterval}, {Name: "v4", Addr: netip.MustParseAddr("10.0.0.1"), Interval: UDPInterval}})
	icmp.SetTargets([]Target{{Name: "b", Addr: b6}})
	done := make(chan struct{})
	defer close(done)
	go udp.Run(done)
	go icmp.Run(done)
	wait := func(udpUp bool) {
		t.Helper()
		if err := topo.Eventually(10*time.Second, func() error {
			u, _ := udp.State("b")
			i, _ := icmp.State("b")
			if !u.Known || u.Up != udpUp || !i.Up {
				return fmt.Errorf("UDP probe %+v (send error %v), ICMP probe %+v; want UDP up=%v, ICMP up", u, udp.Err(), i, udpUp)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	wait(true)
	if st, _ := udp.State("b"); st.RTT <= 0 || st.RTT > time.Second {
		t.Fatalf("UDP probe %+v", st)
	}
	if st, _ := udp.State("v4"); st.Up || st.Received != 0 {
		t.Fatalf("UDP probe of an IPv4 target %+v, want never up", st)
	}
	drop := []string{"ip6tables", "-I", "INPUT", "-p", "udp", "--dport", fmt.Sprint(UDPPort), "-j", "DROP"}
	if _, err := n.Exec(b, drop...); err != nil {
		t.Fatal(err)
	}
	wait(false)
	drop[1] = "-D"
	if _, err := n.Exec(b, drop...); err != nil {
		t.Fatal(err)
	}
	wait(true)
}

// parse takes the port unreachables that quote this Conn's probes, and
// nothing else.
func TestUDPParse(t *testing.T) {
	c := &udpConn{port: 40000}
	dst := netip.MustParseAddr("fe80::b")
	msg := func(edit func(m []byte)) []byte {
		m := make([]byte, 8+40+8+8)
		m[0], m[1] = 1, 4 // destination unreachable, port unreachable
		ip := m[8:]
		ip[0] = 0x60
		ip[6] = 17 // UDP
		a := dst.As16()
		copy(ip[24:40], a[:])
		udp := ip[40:]
		udp[0], udp[1] = 40000>>8, 40000&0xff
		udp[2], udp[3] = UDPPort>>8, UDPPort&0xff
		copy(udp[8:], udpMagic[:])
		udp[12], udp[13], udp[14], udp[15] = 0x12, 0x34, 0, 7
		if edit != nil {
			edit(m)
		}
		return m
	}
	if got, id, seq, ok := c.parse(msg(nil)); !ok || got != dst || id != 0x1234 || seq != 7 {
		t.Fatalf("parse = %s %#x %d %v, want %s 0x1234 7 true", got, id, seq, ok, dst)
	}
	for name, edit := range map[string]func(m []byte){
		"another type":           func(m []byte) { m[0] = 3 },
		"another code":           func(m []byte) { m[1] = 3 },
		"not UDP":                func(m []byte) { m[8+6] = 6 },
		"another source port":    func(m []byte) { m[8+40+1]++ },
		"another destination":    func(m []byte) { m[8+40+3]++ },
		"someone else's payload": func(m []byte) { m[8+40+8] = 'x' },
	} {
		if _, _, _, ok := c.parse(msg(edit)); ok {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, _, _, ok := c.parse(msg(nil)[:60]); ok {
		t.Error("truncated: parsed")
	}
}
