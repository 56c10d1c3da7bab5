package topo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func newNet(t *testing.T) *Net {
	t.Helper()
	SkipUnlessRoot(t)
	n, err := New(UniquePrefix("tp"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func mustExec(t *testing.T, n *Net, ns string, args ...string) string {
	t.Helper()
	out, err := n.Exec(ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNewRejectsBadPrefixes(t *testing.T) {
	for _, p := range []string{"", "Cf", "1cf", "cf-x", "averyveryverylongprefix"} {
		if _, err := New(p); err == nil {
			t.Errorf("New(%q) accepted", p)
		}
	}
	if a, b := UniquePrefix("cf"), UniquePrefix("cf"); a == b || len(a) != 8 || !prefixRE.MatchString(a) {
		t.Errorf("UniquePrefix gave %q and %q", a, b)
	}
}

// TestNetLifecycle: namespaces, veths, Exec, Ping, processes and an
// idempotent Close that removes all of it.
func TestNetLifecycle(t *testing.T) {
	t.Parallel()
	n := newNet(t)
	a, err := n.NS("a")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := n.NS("a"); err != nil || again != a {
		t.Errorf("NS(a) twice = %q, %v", again, err)
	}
	b, err := n.NS("b")
	if err != nil {
		t.Fatal(err)
	}
	if a != n.Prefix()+"-a" || !nsExists(a) || !nsExists(b) {
		t.Fatalf("namespaces %q %q not created", a, b)
	}
	if out := mustExec(t, n, a, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Errorf("lo not up: %s", out)
	}
	if err := n.Veth(End{NS: a, Name: "x0", Addr: netip.MustParsePrefix("10.1.0.1/30")},
		End{NS: b, Name: "y0", Addr: netip.MustParsePrefix("10.1.0.2/30")}); err != nil {
		t.Fatal(err)
	}
	if err := n.Veth(End{NS: a, Name: "this-name-is-too-long"}, End{NS: b, Name: "y1"}); err == nil {
		t.Error("Veth accepted a 21-character interface name")
	}
	if err := n.Ping(a, netip.MustParseAddr("10.1.0.2"), 2, 5*time.Second); err != nil {
		t.Error(err)
	}
	if err := n.Ping(a, netip.MustParseAddr("10.1.0.3"), 1, time.Second); err == nil {
		t.Error("ping to an address nobody has succeeded")
	}
	if _, err := n.Exec(a, "false"); err == nil {
		t.Error("Exec of a failing command returned no error")
	}

	log := t.TempDir() + "/out.log"
	p, err := n.Start(a, log, "sh", "-c", "echo started; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	short, err := n.Start(b, "", "true")
	if err != nil {
		t.Fatal(err)
	}
	if err := short.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	if err := Eventually(5*time.Second, func() error {
		if b, _ := os.ReadFile(log); !strings.Contains(string(b), "started") {
			return errors.New("no output in the log yet")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("Close left a started process running")
	}
	if nsExists(a) || nsExists(b) {
		t.Error("Close left namespaces behind")
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := n.NS("c"); err == nil {
		t.Error("NS on a closed Net succeeded")
	}
}

// TestCleanupPrefix removes the namespaces (and the processes inside) of
// an interrupted run that never called Close.
func TestCleanupPrefix(t *testing.T) {
	t.Parallel()
	SkipUnlessRoot(t)
	prefix := UniquePrefix("tc")
	n, err := New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	a, err := n.NS("left")
	if err != nil {
		t.Fatal(err)
	}
	stray := exec.Command("ip", "netns", "exec", a, "sleep", "60")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- stray.Wait() }()
	// Only a process that has entered the namespace is CleanupPrefix's to kill.
	pid := strconv.Itoa(stray.Process.Pid)
	if err := Eventually(5*time.Second, func() error {
		out, err := run("ip", "netns", "pids", a)
		if err != nil || !slices.Contains(strings.Fields(out), pid) {
			return fmt.Errorf("pid %s not in %s yet (%v)", pid, a, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := CleanupPrefix(""); err == nil {
		t.Error("CleanupPrefix(\"\") accepted")
	}
	if err := CleanupPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	if nsExists(a) {
		t.Error("namespace left behind")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process inside the namespace survived")
		stray.Process.Kill()
	}
}

// TestWalkthroughTopology builds the walkthrough (plus a pod network and a
// VPC without routes back), checks addressing and routes, adds a fourth VPC
// and checks that the existing hosts learned its CIDR. Nothing may appear
// in the caller's namespace.
func TestWalkthroughTopology(t *testing.T) {
	t.Parallel()
	SkipUnlessRoot(t)
	rootBefore, _ := exec.Command("ip", "-o", "addr").Output()
	n := newNet(t)
	vpcs := Walkthrough()
	vpcs[1].NoRouteBack = true
	vpcs[2].Extra = &Extra{CIDR: netip.MustParsePrefix("10.244.1.0/24"),
		EdgeAddr: netip.MustParseAddr("10.244.1.1"), HostAddr: netip.MustParseAddr("10.244.1.2")}
	tp, err := Build(n, vpcs...)
	if err != nil {
		t.Fatal(err)
	}
	sites := tp.Sites()
	if len(sites) != 3 || tp.Site("vpc2") != sites[1] || tp.Site("nope") != nil {
		t.Fatalf("sites: %+v", sites)
	}
	wantUnder := []string{"198.51.100.10/24", "203.0.113.10/24", "192.0.2.10/24"}
	for i, s := range sites {
		if s.Public.String() != wantUnder[i] || s.Gateway != s.Public.Masked().Addr().Next() {
			t.Errorf("%s underlay %s via %s", s.Name, s.Public, s.Gateway)
		}
		if err := n.Ping(s.Host, s.EdgeAddr, 1, 5*time.Second); err != nil {
			t.Errorf("%s host -> edge: %v", s.Name, err)
		}
		other := sites[(i+1)%len(sites)]
		if err := n.Ping(s.Edge, other.Underlay(), 1, 5*time.Second); err != nil {
			t.Errorf("%s edge -> %s edge over the underlay: %v", s.Name, other.Name, err)
		}
	}
	if err := n.Ping(sites[2].ExtraHost, sites[2].EdgeAddr, 1, 5*time.Second); err != nil {
		t.Errorf("pod -> its edge: %v", err)
	}
	if got := sites[2].CIDRs(); len(got) != 2 {
		t.Errorf("CIDRs with an extra network = %v", got)
	}
	h1 := mustExec(t, n, sites[0].Host, "ip", "route")
	for _, want := range []string{"172.31.0.0/16 via 172.18.171.245 dev eth0", "172.20.0.0/16 via 172.18.171.245 dev eth0",
		"10.244.1.0/24 via 172.18.171.245 dev eth0"} {
		if !strings.Contains(h1, want) {
			t.Errorf("vpc1 host lacks route %q:\n%s", want, h1)
		}
	}
	if h2 := mustExec(t, n, sites[1].Host, "ip", "route"); strings.Contains(h2, "via") {
		t.Errorf("NoRouteBack host has routes via its edge:\n%s", h2)
	}
	if r := mustExec(t, n, tp.Router, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(r) != "1" {
		t.Error("router does not forward")
	}

	s4, err := tp.AddVPC(VPC{Name: "vpc4", CIDR: netip.MustParsePrefix("10.40.0.0/16"),
		EdgeAddr: netip.MustParseAddr("10.40.0.1"), HostAddr: netip.MustParseAddr("10.40.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	if s4.Public.String() != "198.18.0.10/24" {
		t.Errorf("fourth site underlay %s", s4.Public)
	}
	if h1 := mustExec(t, n, sites[0].Host, "ip", "route"); !strings.Contains(h1, "10.40.0.0/16 via 172.18.171.245") {
		t.Errorf("existing host did not learn the new VPC:\n%s", h1)
	}
	h4 := mustExec(t, n, s4.Host, "ip", "route")
	for _, want := range []string{"172.18.0.0/16 via 10.40.0.1", "10.244.1.0/24 via 10.40.0.1"} {
		if !strings.Contains(h4, want) {
			t.Errorf("new host lacks %q:\n%s", want, h4)
		}
	}
	if _, err := tp.AddVPC(VPC{Name: "vpc4", CIDR: s4.CIDR, EdgeAddr: s4.EdgeAddr, HostAddr: s4.HostAddr}); err == nil {
		t.Error("AddVPC accepted a duplicate name")
	}
	if _, err := tp.AddVPC(VPC{Name: "bad", CIDR: netip.MustParsePrefix("10.50.0.0/16"), EdgeAddr: netip.MustParseAddr("10.51.0.1"),
		HostAddr: netip.MustParseAddr("10.50.0.2")}); err == nil {
		t.Error("AddVPC accepted an edge address outside the CIDR")
	}
	if rootAfter, _ := exec.Command("ip", "-o", "addr").Output(); string(rootAfter) != string(rootBefore) {
		t.Errorf("addresses in the caller's namespace changed:\nbefore:\n%s\nafter:\n%s", rootBefore, rootAfter)
	}
}

// TestDo: fn runs in the namespace, the caller's thread does not move, and
// TCPTransfer and UDPTransfer move bytes between two namespaces.
func TestDo(t *testing.T) {
	t.Parallel()
	n := newNet(t)
	SkipUnlessRoot(t, "iptables")
	a, _ := n.NS("a")
	b, _ := n.NS("b")
	if err := n.Veth(End{NS: a, Name: "x0", Addr: netip.MustParsePrefix("10.2.0.1/30")},
		End{NS: b, Name: "y0", Addr: netip.MustParsePrefix("10.2.0.2/30")}); err != nil {
		t.Fatal(err)
	}
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var names []string
	if err := Do(a, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"lo", "x0"}) {
		t.Errorf("interfaces seen inside Do: %q", names)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Error("Do moved the calling thread")
	}
	if err := Do(n.NSName("missing"), func() error { return nil }); err == nil {
		t.Error("Do in a missing namespace succeeded")
	}
	wantErr := errors.New("from fn")
	if err := Do(a, func() error { return wantErr }); err != wantErr {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := TCPTransfer(a, b, netip.MustParseAddr("10.2.0.2"), 256<<10, 10*time.Second); err != nil {
		t.Error(err)
	}
	if err := TCPTransfer(a, b, netip.MustParseAddr("10.2.0.1"), 1, time.Second); err == nil {
		t.Error("TCPTransfer to an address the server namespace lacks succeeded")
	}
	datagrams, err := n.Counter(b, "UdpInDatagrams")
	if err != nil {
		t.Fatal(err)
	}
	if err := UDPTransfer(a, b, netip.MustParseAddr("10.2.0.2"), 20, 1400, 10*time.Second); err != nil {
		t.Error(err)
	}
	if after, err := n.Counter(b, "UdpInDatagrams"); err != nil || after-datagrams < 20 {
		t.Errorf("UdpInDatagrams of the echo side: %d -> %d (%v), want 20 more", datagrams, after, err)
	}
	if _, err := n.Counter(b, "UdpNoSuchCounter"); err == nil {
		t.Error("Counter found a counter that does not exist")
	}
	// Nobody echoes behind a drop: every send times out.
	mustExec(t, n, b, "iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP")
	if err := UDPTransfer(a, b, netip.MustParseAddr("10.2.0.2"), 1, 100, time.Second); err == nil {
		t.Error("UDPTransfer through a drop succeeded")
	}
}

func TestEventually(t *testing.T) {
	calls := 0
	if err := Eventually(5*time.Second, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Errorf("Eventually = %v after %d calls", err, calls)
	}
	sentinel := errors.New("never")
	start := time.Now()
	err := Eventually(200*time.Millisecond, func() error { return sentinel })
	if !errors.Is(err, sentinel) || time.Since(start) < 200*time.Millisecond {
		t.Errorf("Eventually = %v after %s", err, time.Since(start))
	}
}

// A capture sees the plaintext of a TCP connection crossing the link, both
// ways, reassembled in order.
func TestCapture(t *testing.T) {
	t.Parallel()
	n := newNet(t)
	a, err := n.NS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.NS("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Veth(End{NS: a, Name: "va", Addr: netip.MustParsePrefix("10.9.0.1/24")}, End{NS: b, Name: "vb", Addr: netip.MustParsePrefix("10.9.0.2/24")}); err != nil {
		t.Fatal(err)
	}
	capture, err := StartCapture(a, "va")
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := Do(b, func() (err error) { ln, err = net.Listen("tcp", "10.9.0.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write([]byte(strings.ToUpper(string(buf[:k]))))
		}
	}()
	c, err := Dialer{NS: a}.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// Many small writes and one large one (segmented, maybe as GSO).
	want := strings.Repeat("x", 100<<10) + "the-needle-172.18.0.0/16"
	for _, part := range []string{"hello ", "wire ", want} {
		if _, err := c.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 0, len(want)+11)
	buf := make([]byte, 64<<10)
	for len(got) < len(want)+11 {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:k]...)
	}
	c.Close()
	flows, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	out := Flow{Src: netip.MustParseAddrPort(c.LocalAddr().String()), Dst: netip.MustParseAddrPort(ln.Addr().String())}
	back := Flow{Src: out.Dst, Dst: out.Src}
	if s := string(flows[out]); s != "hello wire "+want {
		t.Fatalf("flow %s: %d bytes captured, want %d in order", out, len(s), len("hello wire "+want))
	}
	if s := string(flows[back]); !strings.HasSuffix(s, "THE-NEEDLE-172.18.0.0/16") {
		t.Fatalf("flow %s: %d bytes captured without the echoed needle", back, len(s))
	}
}
