package netcfg

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/cframe/cframe/internal/topo"
)

// Kernel tests build edges, hosts and an underlay router in network
// namespaces (internal/topo) and run the Kernel inside each edge namespace on
// a thread locked into it (topo.Do).

func requireRoot(t *testing.T) { topo.SkipUnlessRoot(t, "bridge", "iptables", "ping") }

// mesh is a topology plus the Desired state of every edge.
type mesh struct {
	t    *testing.T
	net  *topo.Net
	topo *topo.Topology
	// k drives the iptables program named ipt.
	k       *Kernel
	ipt     string
	desired map[string]*Desired
}

func newMesh(t *testing.T, vpcs ...topo.VPC) *mesh {
	t.Helper()
	return newMeshOn(t, "iptables", vpcs...)
}

// newMeshOn is newMesh with a Kernel that drives the iptables program named
// ipt ("iptables-legacy", say).
func newMeshOn(t *testing.T, ipt string, vpcs ...topo.VPC) *mesh {
	t.Helper()
	return newMeshShaped(t, ipt, topo.Build, vpcs)
}

// newMeshShaped is newMeshOn on a topology built by build (topo.Build or
// topo.BuildCloud).
func newMeshShaped(t *testing.T, ipt string, build func(*topo.Net, ...topo.VPC) (*topo.Topology, error), vpcs []topo.VPC) *mesh {
	t.Helper()
	requireRoot(t)
	n, err := topo.New(topo.UniquePrefix("nc"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("topology cleanup: %v", err)
		}
	})
	tp, err := build(n, vpcs...)
	if err != nil {
		t.Fatal(err)
	}
	k, err := newKernel(ipt)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, net: n, topo: tp, k: k, ipt: ipt, desired: map[string]*Desired{}}
	m.rebuildDesired()
	return m
}

// port is a site's tunnel port: different for every edge, so the FDB must
// carry per-peer ports.
func port(s *topo.Site) uint16 { return uint16(58423 + 10*s.Index) }

func vtepMAC(s *topo.Site) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xcf, 0, 0, 0, byte(s.Index + 1)}
}

// peerOf describes site s as a peer, the way the orchestrator would: next
// hop = the primary CIDR's network address.
func peerOf(s *topo.Site) Peer {
	return Peer{Name: s.Name, Underlay: netip.AddrPortFrom(s.Underlay(), port(s)), MAC: vtepMAC(s),
		NextHop: s.CIDR.Addr(), CIDRs: s.CIDRs()}
}

// rebuildDesired gives every site a Desired with all other sites as peers.
func (m *mesh) rebuildDesired() {
	for _, s := range m.topo.Sites() {
		d := &Desired{DeviceMAC: vtepMAC(s), Port: port(s), LocalCIDRs: s.CIDRs()}
		for _, o := range m.topo.Sites() {
			if o != s {
				d.Peers = append(d.Peers, peerOf(o))
			}
		}
		m.desired[s.Name] = d
	}
}

func (m *mesh) site(name string) *topo.Site {
	s := m.topo.Site(name)
	if s == nil {
		m.t.Fatalf("no site %s", name)
	}
	return s
}

// in runs f in the edge namespace of site.
func (m *mesh) in(site string, f func() error) {
	m.t.Helper()
	if err := topo.Do(m.site(site).Edge, f); err != nil {
		m.t.Fatalf("%s: %v", site, err)
	}
}

func (m *mesh) reconcile(site string) Result {
	m.t.Helper()
	var res Result
	m.in(site, func() (err error) { res, err = m.k.Reconcile(m.desired[site]); return err })
	return res
}

func (m *mesh) reconcileAll() {
	m.t.Helper()
	for _, s := range m.topo.Sites() {
		res := m.reconcile(s.Name)
		if len(res.Changes) == 0 {
			m.t.Errorf("%s: first reconcile made no changes", s.Name)
		}
		// Counted by kind: one FDB entry and at least one neighbor per
		// peer (VXLAN) or one device per peer (GRE), and every change
		// counted once.
		peers, sum := len(m.topo.Sites())-1, 0
		for _, n := range res.Kinds {
			sum += n
		}
		perPeer := res.Kinds["fdb"] != peers || res.Kinds["neigh"] < peers || res.Kinds["link"] == 0
		if m.desired[s.Name].Mode == ModeGRE {
			perPeer = res.Kinds["fdb"]+res.Kinds["neigh"] != 0 || res.Kinds["link"] != peers
		}
		if perPeer || sum != len(res.Changes) {
			m.t.Errorf("%s: changes by kind %v for %d changes and %d peers", s.Name, res.Kinds, len(res.Changes), peers)
		}
		if len(res.Conflicts) > 0 {
			m.t.Errorf("%s: unexpected conflicts %q", s.Name, res.Conflicts)
		}
	}
}

// expectNoChanges reconciles every edge and fails if anything changed.
func (m *mesh) expectNoChanges() {
	m.t.Helper()
	for _, s := range m.topo.Sites() {
		if res := m.reconcile(s.Name); len(res.Changes) > 0 {
			m.t.Errorf("%s: reconcile of a converged edge changed:\n\t%s", s.Name, strings.Join(res.Changes, "\n\t"))
		}
	}
}

// sh runs a command in a namespace and returns its trimmed output.
func (m *mesh) sh(ns string, args ...string) string {
	m.t.Helper()
	out, err := m.net.Exec(ns, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// lines returns the non-empty, whitespace-trimmed lines of a command.
func (m *mesh) lines(ns string, args ...string) []string {
	m.t.Helper()
	var out []string
	for _, l := range strings.Split(m.sh(ns, args...), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// expectSet fails unless got and want hold the same lines, in any order.
func (m *mesh) expectSet(what string, got, want []string) {
	m.t.Helper()
	g, w := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(g, w) {
		m.t.Errorf("%s:\n got:\n\t%s\nwant:\n\t%s", what, strings.Join(g, "\n\t"), strings.Join(w, "\n\t"))
	}
}

func (m *mesh) ping(from *topo.Site, to netip.Addr) error {
	return m.net.Ping(from.Host, to, 2, 5*time.Second)
}

// checkAllPairs pings and runs a 1 MiB TCP echo between the hosts of every
// ordered pair of sites (and to extra hosts).
func (m *mesh) checkAllPairs() {
	m.t.Helper()
	for _, a := range m.topo.Sites() {
		for _, b := range m.topo.Sites() {
			if a == b {
				continue
			}
			if err := m.ping(a, b.HostAddr); err != nil {
				m.t.Errorf("ping %s -> %s: %v", a.Name, b.Name, err)
			}
			if err := topo.TCPTransfer(a.Host, b.Host, b.HostAddr, 1<<20, 15*time.Second); err != nil {
				m.t.Errorf("tcp %s -> %s: %v", a.Name, b.Name, err)
			}
			if b.Extra != nil {
				if err := m.ping(a, b.Extra.HostAddr); err != nil {
					m.t.Errorf("ping %s -> %s pod: %v", a.Name, b.Name, err)
				}
			}
		}
	}
}

// expectUnreachable fails if from's host can ping to.
func (m *mesh) expectUnreachable(from *topo.Site, to netip.Addr) {
	m.t.Helper()
	if err := m.net.Ping(from.Host, to, 1, time.Second); err == nil {
		m.t.Errorf("ping %s -> %s succeeded, want it blocked", from.Name, to)
	}
}

// expectMembers checks the members of an ipset on site's edge.
func (m *mesh) expectMembers(site, set string, want ...string) {
	m.t.Helper()
	var got ipset
	m.in(site, func() error {
		s, err := m.k.begin()
		if err != nil {
			return err
		}
		defer s.end()
		r := newReading(&Desired{}, nil)
		if err := s.readSets(r); err != nil {
			return err
		}
		var ok bool
		if got, ok = r.a.Sets[set]; !ok {
			return fmt.Errorf("no ipset %s", set)
		}
		return nil
	})
	var members []string
	for _, p := range got.Members {
		members = append(members, p.String())
	}
	m.expectSet("members of "+set, members, want)
}

// counter returns the packet counter of the first rule in chain whose
// "iptables -L -v -x -n" line contains match.
func (m *mesh) counter(ns, table, chain, match string) int {
	m.t.Helper()
	for _, l := range m.lines(ns, m.ipt, "-t", table, "-L", chain, "-v", "-x", "-n") {
		if strings.Contains(l, match) {
			n, err := strconv.Atoi(strings.Fields(l)[0])
			if err != nil {
				m.t.Fatalf("counter in %q: %v", l, err)
			}
			return n
		}
	}
	m.t.Fatalf("no rule matching %q in %s %s", match, table, chain)
	return 0
}

// The changes on vpc1's edge of the walkthrough mesh when vpc3 leaves it,
// and when vpc3 comes back.
var (
	vpc1WithoutVPC3 = []string{
		"route del 172.20.0.0/16 via 172.20.0.0 dev cframe0 onlink src 172.18.171.245 proto 207",
		"neigh del 172.20.0.0 dev cframe0",
		"fdb del 02:cf:00:00:00:03 dst 192.0.2.10 port 58443 dev cframe0",
		"ipset del cframe-peers 192.0.2.10",
	}
	vpc1WithVPC3Again = []string{
		"ipset add cframe-peers 192.0.2.10",
		"fdb add 02:cf:00:00:00:03 dst 192.0.2.10 port 58443 dev cframe0",
		"neigh add 172.20.0.0 lladdr 02:cf:00:00:00:03 dev cframe0 nud permanent",
		"route add 172.20.0.0/16 via 172.20.0.0 dev cframe0 onlink src 172.18.171.245 proto 207",
	}
)

// reconcileRequests is what a Reconcile of a VXLAN edge whose chains are
// unchanged takes to make changes changes: one dump each of the links, FDB
// entries, IPv4 and IPv6 neighbors, IPv4 and IPv6 routes, IPv4 addresses,
// IPv6 addresses (a site's IPv6 VIP, found without its CIDRs, see vip.go)
// and the four sets (two of them IPv6), the read of the chains, and one
// request per change.
func reconcileRequests(k *Kernel, changes int) Requests {
	return Requests{Netlink: 12 + changes}.plus(chainsRead(k))
}

// updateRequests is what an Update of one peer with cidrs networks takes to
// make changes changes: the links dump, one get each for the peer's FDB
// entry, neighbor, set member and every network's route, the read of the
// chains, and one request per change.
func updateRequests(k *Kernel, cidrs, changes int) Requests {
	return Requests{Netlink: 4 + cidrs + changes}.plus(chainsRead(k))
}

// chainsRead is what reading the iptables chains costs when they have not
// changed since the Kernel last read them: with nf_tables one request for
// the nftables generation; legacy iptables has no generation to tell that
// nothing changed, so iptables-save runs (and no ip6tables-save: the
// callers' edges are IPv4-only, see readChains6).
func chainsRead(k *Kernel) Requests {
	if k.ipt.nft {
		return Requests{Netlink: 1}
	}
	return Requests{Exec: 1}
}

func walkthroughWithPod() []topo.VPC {
	vpcs := topo.Walkthrough()
	vpcs[2].Extra = &topo.Extra{CIDR: netip.MustParsePrefix("10.244.1.0/24"),
		EdgeAddr: netip.MustParseAddr("10.244.1.1"), HostAddr: netip.MustParseAddr("10.244.1.2")}
	return vpcs
}

// vpc1FilterRules is "iptables -S" on VPC1's edge of the walkthrough mesh
// (peers vpc2 and vpc3, FORWARD policy DROP).
var vpc1FilterRules = []string{
	"-P INPUT ACCEPT",
	"-P FORWARD DROP",
	"-P OUTPUT ACCEPT",
	"-N CFRAME-FORWARD",
	"-N CFRAME-INPUT",
	"-A INPUT -j CFRAME-INPUT",
	"-A FORWARD -j CFRAME-FORWARD",
	"-A CFRAME-FORWARD -d 172.18.0.0/16 -i cframe0 -j ACCEPT",
	"-A CFRAME-FORWARD -s 172.18.0.0/16 -o cframe0 -j ACCEPT",
	"-A CFRAME-INPUT -p udp -m udp --dport 58423 -m set --match-set cframe-peers src -j ACCEPT",
	"-A CFRAME-INPUT -p udp -m udp --dport 58423 -j DROP",
}

var vpc1MangleRules = []string{
	"-P PREROUTING ACCEPT",
	"-P INPUT ACCEPT",
	"-P FORWARD ACCEPT",
	"-P OUTPUT ACCEPT",
	"-P POSTROUTING ACCEPT",
	"-N CFRAME-MSS",
	"-A FORWARD -j CFRAME-MSS",
	"-A CFRAME-MSS -o cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
	"-A CFRAME-MSS -i cframe0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1411:65535 -j TCPMSS --set-mss 1410",
}

// TestKernelMesh: three edges and a pod network, FORWARD policy DROP;
// traffic between every pair, exact kernel objects, idempotence, and the
// tunnel port closed to non-peers.
func TestKernelMesh(t *testing.T) {
	t.Parallel()
	m := newMesh(t, walkthroughWithPod()...)
	for _, s := range m.topo.Sites() {
		m.sh(s.Edge, "iptables", "-P", "FORWARD", "DROP") // as Docker leaves it
	}
	m.reconcileAll()
	start := time.Now()
	m.expectNoChanges()
	t.Logf("a no-op reconcile takes %s per edge", time.Since(start)/time.Duration(len(m.topo.Sites())))
	m.checkAllPairs()

	e1 := m.site("vpc1").Edge
	link := m.sh(e1, "ip", "-d", "link", "show", "cframe0")
	for _, want := range []string{"mtu 1450", "state UNKNOWN", "link/ether 02:cf:00:00:00:01", "vxlan id 1 ", "dstport 58423 ", "nolearning", "alias cframe"} {
		if !strings.Contains(link, want) {
			t.Errorf("ip -d link show cframe0: missing %q in\n%s", want, link)
		}
	}
	if got := m.lines(e1, "ip", "-o", "link", "show", "type", "vxlan"); len(got) != 1 {
		t.Errorf("want exactly one vxlan link, got %q", got)
	}
	m.expectSet("bridge fdb show dev cframe0", m.lines(e1, "bridge", "fdb", "show", "dev", "cframe0"), []string{
		"02:cf:00:00:00:02 dst 203.0.113.10 port 58433 self permanent",
		"02:cf:00:00:00:03 dst 192.0.2.10 port 58443 self permanent",
	})
	m.expectSet("ip neigh show dev cframe0", m.lines(e1, "ip", "neigh", "show", "dev", "cframe0"), []string{
		"172.31.0.0 lladdr 02:cf:00:00:00:02 PERMANENT",
		"172.20.0.0 lladdr 02:cf:00:00:00:03 PERMANENT",
	})
	m.expectSet("ip route show proto 207", m.lines(e1, "ip", "route", "show", "proto", "207"), []string{
		"172.31.0.0/16 via 172.31.0.0 dev cframe0 src 172.18.171.245 onlink",
		"172.20.0.0/16 via 172.20.0.0 dev cframe0 src 172.18.171.245 onlink",
		"10.244.1.0/24 via 172.20.0.0 dev cframe0 src 172.18.171.245 onlink",
	})
	expectLines(t, "iptables -S", m.lines(e1, "iptables", "-S"), vpc1FilterRules)
	expectLines(t, "iptables -t mangle -S", m.lines(e1, "iptables", "-t", "mangle", "-S"), vpc1MangleRules)
	expectLines(t, "iptables -t nat -S", m.lines(e1, "iptables", "-t", "nat", "-S"),
		[]string{"-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT"})
	m.expectMembers("vpc1", setPeers, "203.0.113.10/32", "192.0.2.10/32")
	if got := m.sh(e1, "cat", "/proc/sys/net/ipv4/ip_forward"); got != "1" {
		t.Errorf("ip_forward = %s", got)
	}
	// The pod network behind edge 3 gets FORWARD rules too.
	e3rules := m.lines(m.site("vpc3").Edge, "iptables", "-S", "CFRAME-FORWARD")
	if !slices.Contains(e3rules, "-A CFRAME-FORWARD -d 10.244.1.0/24 -i cframe0 -j ACCEPT") {
		t.Errorf("edge 3 FORWARD rules lack the pod range: %q", e3rules)
	}

	// The tunnel device's counters, after the pings of checkAllPairs; the
	// underlay and loopback are not cframe's and are not listed.
	var stats []DeviceStats
	m.in("vpc1", func() (err error) { stats, err = m.k.TunnelStats(); return err })
	if len(stats) != 1 || stats[0].Name != "cframe0" || stats[0].TxPackets == 0 || stats[0].RxBytes == 0 {
		t.Errorf("tunnel stats = %+v, want cframe0 with traffic both ways", stats)
	}

	// The tunnel port answers peers only: UDP from the underlay router (not
	// a peer) hits the final DROP, peer traffic hits the ACCEPT of the set.
	s1 := m.site("vpc1")
	drops := m.counter(e1, "filter", "CFRAME-INPUT", "DROP")
	if accepted := m.counter(e1, "filter", "CFRAME-INPUT", "match-set cframe-peers src"); accepted == 0 {
		t.Error("no packet from the peers counted by the ACCEPT of their set")
	}
	if err := topo.Do(m.topo.Router, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(s1.Underlay(), port(s1)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < 3; i++ {
			if _, err := c.Write([]byte("not a vxlan peer")); err != nil {
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
}

// TestKernelPeerChanges: removing a peer or a CIDR, changing a peer's port
// and MAC, and adding a fourth VPC while traffic between two others runs
// without loss.
func TestKernelPeerChanges(t *testing.T) {
	t.Parallel()
	m := newMesh(t, walkthroughWithPod()...)
	m.reconcileAll()
	s1, s2, s3 := m.site("vpc1"), m.site("vpc2"), m.site("vpc3")
	e1 := s1.Edge
	if err := m.ping(s1, s3.Extra.HostAddr); err != nil {
		t.Fatalf("pod reachable before the change: %v", err)
	}

	// A CIDR removed: only its route goes.
	m.desired["vpc1"].Peers[1].CIDRs = m.desired["vpc1"].Peers[1].CIDRs[:1]
	expectLines(t, "changes after removing vpc3's pod CIDR", m.reconcile("vpc1").Changes, []string{
		"route del 10.244.1.0/24 via 172.20.0.0 dev cframe0 onlink src 172.18.171.245 proto 207",
	})
	m.expectUnreachable(s1, s3.Extra.HostAddr)
	if err := m.ping(s1, s3.HostAddr); err != nil {
		t.Errorf("vpc3 host unreachable after removing only its pod CIDR: %v", err)
	}

	// A peer removed: its route, neighbor, FDB entry and set member go,
	// in one request each plus the reads (one dump of each kind), with no
	// iptables program run but the read of the unchanged chains (none with
	// nf_tables, see chainsRead).
	m.desired["vpc1"].Peers = m.desired["vpc1"].Peers[:1]
	res := m.reconcile("vpc1")
	expectLines(t, "changes after removing peer vpc3", res.Changes, vpc1WithoutVPC3)
	if want := reconcileRequests(m.k, len(res.Changes)); res.Requests != want {
		t.Errorf("removing a peer took %+v, want %+v", res.Requests, want)
	}
	m.expectMembers("vpc1", setPeers, "203.0.113.10/32")
	m.expectSet("fdb after removal", m.lines(e1, "bridge", "fdb", "show", "dev", "cframe0"),
		[]string{"02:cf:00:00:00:02 dst 203.0.113.10 port 58433 self permanent"})
	m.expectSet("neighbors after removal", m.lines(e1, "ip", "neigh", "show", "dev", "cframe0"),
		[]string{"172.31.0.0 lladdr 02:cf:00:00:00:02 PERMANENT"})
	m.expectSet("routes after removal", m.lines(e1, "ip", "route", "show", "proto", "207"),
		[]string{"172.31.0.0/16 via 172.31.0.0 dev cframe0 src 172.18.171.245 onlink"})
	expectLines(t, "FORWARD after removal", m.lines(e1, "iptables", "-S", "CFRAME-FORWARD"), []string{
		"-N CFRAME-FORWARD",
		"-A CFRAME-FORWARD -d 172.18.0.0/16 -i cframe0 -j ACCEPT",
		"-A CFRAME-FORWARD -s 172.18.0.0/16 -o cframe0 -j ACCEPT",
	})
	m.expectUnreachable(s1, s3.HostAddr)
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Errorf("vpc2 unreachable after removing vpc3: %v", err)
	}

	// vpc2 moves to another port: its device is recreated, its peers
	// replace one FDB entry in place.
	m.rebuildDesired()
	m.reconcile("vpc1")
	s2port := netip.AddrPortFrom(s2.Underlay(), 58500)
	m.desired["vpc2"].Port = 58500
	for _, other := range []string{"vpc1", "vpc3"} {
		m.desired[other].Peers = slices.Clone(m.desired[other].Peers)
		for i := range m.desired[other].Peers {
			if m.desired[other].Peers[i].Name == "vpc2" {
				m.desired[other].Peers[i].Underlay = s2port
			}
		}
	}
	m.reconcile("vpc2")
	m.reconcile("vpc3")
	expectLines(t, "changes after vpc2's port change", m.reconcile("vpc1").Changes,
		[]string{"fdb replace 02:cf:00:00:00:02 dst 203.0.113.10 port 58500 dev cframe0"})
	if !slices.Contains(m.lines(e1, "bridge", "fdb", "show", "dev", "cframe0"), "02:cf:00:00:00:02 dst 203.0.113.10 port 58500 self permanent") {
		t.Error("fdb entry of vpc2 does not carry port 58500")
	}
	m.checkAllPairs()

	// vpc2 gets a new VTEP MAC: set in place on its device, peers swap
	// their FDB and neighbor entries.
	newMAC := net.HardwareAddr{0x02, 0xcf, 0, 0, 0, 0x22}
	m.desired["vpc2"].DeviceMAC = newMAC
	for _, other := range []string{"vpc1", "vpc3"} {
		for i := range m.desired[other].Peers {
			if m.desired[other].Peers[i].Name == "vpc2" {
				m.desired[other].Peers[i].MAC = newMAC
			}
		}
	}
	expectLines(t, "vpc2 changes after its MAC change", m.reconcile("vpc2").Changes, []string{
		"link set cframe0 address 02:cf:00:00:00:22",
		"neigh add 172.18.0.0 lladdr 02:cf:00:00:00:01 dev cframe0 nud permanent",
		"neigh add 172.20.0.0 lladdr 02:cf:00:00:00:03 dev cframe0 nud permanent",
	})
	m.reconcile("vpc3")
	expectLines(t, "vpc1 changes after vpc2's MAC change", m.reconcile("vpc1").Changes, []string{
		"fdb add 02:cf:00:00:00:22 dst 203.0.113.10 port 58500 dev cframe0",
		"neigh replace 172.31.0.0 lladdr 02:cf:00:00:00:22 dev cframe0 nud permanent",
		"fdb del 02:cf:00:00:00:02 dst 203.0.113.10 port 58500 dev cframe0",
	})
	m.checkAllPairs()
	m.expectNoChanges()

	// A fourth VPC joins while vpc1 pings vpc2 every 20 ms: not one
	// packet of the unchanged pair may be lost.
	log := t.TempDir() + "/ping.log"
	pinger, err := m.net.Start(s1.Host, log, "ping", "-n", "-q", "-i", "0.02", "-c", "150", s2.HostAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	s4, err := m.topo.AddVPC(topo.VPC{Name: "vpc4", CIDR: netip.MustParsePrefix("10.40.0.0/16"),
		EdgeAddr: netip.MustParseAddr("10.40.0.1"), HostAddr: netip.MustParseAddr("10.40.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.desired { // keep the port and MAC changes of vpc2
		d.Peers = append(d.Peers, peerOf(s4))
	}
	m.desired["vpc4"] = &Desired{DeviceMAC: vtepMAC(s4), Port: port(s4), LocalCIDRs: s4.CIDRs()}
	for _, s := range []*topo.Site{s1, s2, s3} {
		p := peerOf(s)
		if s == s2 {
			p.Underlay, p.MAC = s2port, newMAC
		}
		m.desired["vpc4"].Peers = append(m.desired["vpc4"].Peers, p)
	}
	for _, s := range m.topo.Sites() {
		m.reconcile(s.Name)
	}
	if err := m.ping(s1, s4.HostAddr); err != nil {
		t.Errorf("vpc4 unreachable from vpc1: %v", err)
	}
	if err := m.ping(s4, s3.HostAddr); err != nil {
		t.Errorf("vpc3 unreachable from vpc4: %v", err)
	}
	select {
	case <-pinger.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("ping did not finish")
	}
	out, _ := os.ReadFile(log)
	if err := pinger.Wait(); err != nil || !strings.Contains(string(out), " 0% packet loss") {
		t.Errorf("vpc1 -> vpc2 lost packets while vpc4 joined (%v):\n%s", err, out)
	}
}

// TestForeignSysfs: a thread that entered a namespace sees the host's
// devices in /sys — what a unit with NetworkNamespacePath= sees under
// systemd 252 — and a sysfs mounted for its namespace shows its own; only
// the latter is read or written for receive steering.
func TestForeignSysfs(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()[:1]...)
	m.in("vpc1", func() error {
		if own, err := sysfsShowsOwnLinks("/sys"); err != nil || own {
			return fmt.Errorf("the host's /sys from inside a namespace: own %v, %v; want another namespace's", own, err)
		}
		var own bool
		if err := inNetSysfs(func(root string) (err error) {
			own, err = sysfsShowsOwnLinks(root)
			return err
		}); err != nil || !own {
			return fmt.Errorf("a sysfs mounted for the namespace: own %v, %v; want its own", own, err)
		}
		return nil
	})
}

// TestKernelSteering: receive packet steering on cframe0 follows the
// underlay: none over a veth that receives on the sending CPUs (GRO off,
// veth's default), every online CPU once the veth has NAPI (GRO on) and
// one receive queue for more CPUs.
func TestKernelSteering(t *testing.T) {
	t.Parallel()
	topo.SkipUnlessRoot(t, "ethtool")
	m := newMesh(t, topo.Walkthrough()[:2]...)
	e1 := m.site("vpc1").Edge
	m.reconcile("vpc1")
	// ip netns exec mounts the edge's own sysfs.
	rps := func() string {
		return strings.TrimLeft(strings.ReplaceAll(m.sh(e1, "cat", rpsFile("/sys", "cframe0")), ",", ""), "0")
	}
	if got := rps(); got != "" {
		t.Errorf("rps_cpus of cframe0 over a veth without NAPI = %s, want none", got)
	}
	m.sh(e1, "ethtool", "-K", "wan0", "gro", "on")
	res := m.reconcile("vpc1")
	if runtime.NumCPU() < 2 {
		expectLines(t, "changes on one CPU", res.Changes, nil)
		return
	}
	expectLines(t, "changes once the underlay has NAPI", res.Changes, []string{"link set cframe0 rps_cpus all (receive packet steering)"})
	want, err := onlineCPUMask()
	if err != nil {
		t.Fatal(err)
	}
	if got := rps(); got != strings.TrimLeft(strings.ReplaceAll(want, ",", ""), "0") {
		t.Errorf("rps_cpus of cframe0 = %s, want %s (every online CPU)", got, want)
	}
	expectLines(t, "changes of a second reconcile", m.reconcile("vpc1").Changes, nil)
	// sysfs has no events: the periodic reconcile repairs a cleared mask.
	m.sh(e1, "sh", "-c", "echo 0 > "+rpsFile("/sys", "cframe0"))
	expectLines(t, "repair after rps_cpus 0", m.reconcile("vpc1").Changes, []string{"link set cframe0 rps_cpus all (receive packet steering)"})
}

// TestKernelForeignObjects: foreign routes to a peer's CIDR (same prefix,
// overlapping prefix), a foreign link with cframe's device name and
// foreign iptables rules are reported or ignored, never touched, and
// survive Cleanup.
func TestKernelForeignObjects(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()...)
	s1 := m.site("vpc1")
	e1, e2 := s1.Edge, m.site("vpc2").Edge
	m.sh(e1, "ip", "route", "add", "172.31.0.0/16", "via", "198.51.100.1", "proto", "static")
	m.sh(e1, "ip", "route", "add", "172.20.99.0/24", "via", "198.51.100.1")
	m.sh(e1, "iptables", "-A", "FORWARD", "-s", "10.99.0.0/16", "-j", "ACCEPT")
	m.sh(e2, "ip", "link", "add", "cframe0", "type", "bridge")

	wantConflicts := []string{
		"route 172.20.99.0/24 via 198.51.100.1 dev wan0 proto boot is not cframe's and overlaps peer vpc3's 172.20.0.0/16: installed cframe's route anyway",
		"route 172.31.0.0/16 via 198.51.100.1 dev wan0 proto static is not cframe's: skipped peer vpc2's route 172.31.0.0/16",
	}
	res := m.reconcile("vpc1")
	expectLines(t, "vpc1 conflicts", res.Conflicts, wantConflicts)
	m.expectSet("vpc1 routes with proto 207", m.lines(e1, "ip", "route", "show", "proto", "207"),
		[]string{"172.20.0.0/16 via 172.20.0.0 dev cframe0 src 172.18.171.245 onlink"})
	res = m.reconcile("vpc1")
	expectLines(t, "vpc1 changes on the second pass", res.Changes, nil)
	expectLines(t, "vpc1 conflicts on the second pass", res.Conflicts, wantConflicts)

	res = m.reconcile("vpc2")
	expectLines(t, "vpc2 conflicts", res.Conflicts, []string{`link cframe0 exists but is not cframe's (type bridge, alias ""): left alone, nothing installed on it`})
	if got := m.lines(e2, "ip", "route", "show", "proto", "207"); len(got) > 0 {
		t.Errorf("routes installed on a foreign device: %q", got)
	}
	if got := m.lines(e2, "iptables", "-S", "CFRAME-FORWARD"); len(got) != 1 {
		t.Errorf("FORWARD rules installed for a foreign device: %q", got)
	}

	for _, site := range []string{"vpc1", "vpc2"} {
		var removed []string
		m.in(site, func() (err error) { removed, err = m.k.Cleanup(); return err })
		if len(removed) == 0 {
			t.Errorf("%s: Cleanup removed nothing", site)
		}
		m.in(site, func() (err error) { removed, err = m.k.Cleanup(); return err })
		if len(removed) > 0 {
			t.Errorf("%s: second Cleanup removed %q", site, removed)
		}
	}
	for _, ns := range []string{e1, e2} {
		if got := m.lines(ns, "ip", "route", "show", "proto", "207"); len(got) > 0 {
			t.Errorf("routes left after Cleanup: %q", got)
		}
		for _, table := range []string{"filter", "mangle", "nat"} {
			if out := m.sh(ns, "iptables", "-t", table, "-S"); strings.Contains(out, "CFRAME") {
				t.Errorf("%s table still mentions CFRAME after Cleanup:\n%s", table, out)
			}
		}
		if out := m.sh(ns, "ip", "-d", "link"); strings.Contains(out, "alias cframe") || strings.Contains(out, "vxlan") {
			t.Errorf("links left after Cleanup:\n%s", out)
		}
	}
	m.expectSet("foreign routes after Cleanup", m.lines(e1, "ip", "route", "show", "root", "172.16.0.0/12"), []string{
		"172.18.0.0/16 dev lan0 proto kernel scope link src 172.18.171.245",
		"172.20.99.0/24 via 198.51.100.1 dev wan0",
		"172.31.0.0/16 via 198.51.100.1 dev wan0 proto static",
	})
	expectLines(t, "foreign FORWARD rules after Cleanup", m.lines(e1, "iptables", "-S", "FORWARD"),
		[]string{"-P FORWARD ACCEPT", "-A FORWARD -s 10.99.0.0/16 -j ACCEPT"})
	if out := m.sh(e2, "ip", "-d", "link", "show", "cframe0"); !strings.Contains(out, "bridge") {
		t.Errorf("foreign cframe0 changed or removed:\n%s", out)
	}
}

// TestKernelRepair: deleted routes, neighbors, FDB entries, a deleted
// device and flushed chains are noticed (Watch, for the netlink ones) and
// repaired by the next Reconcile.
func TestKernelRepair(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()[:2]...)
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	e1 := s1.Edge
	m.sh(e1, "iptables", "-P", "FORWARD", "DROP")
	m.reconcileAll()
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reasons := make(chan string, 1000)
	var stopped <-chan struct{}
	m.in("vpc1", func() (err error) {
		stopped, err = watch(ctx, func(r string) { reasons <- r })
		return err
	})
	waitFor := func(substr string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		var seen []string
		for {
			select {
			case r := <-reasons:
				if strings.Contains(r, substr) {
					return
				}
				seen = append(seen, r)
			case <-deadline:
				t.Errorf("Watch did not report %q (saw %q)", substr, seen)
				return
			}
		}
	}
	drain := func() {
		for {
			select {
			case r := <-reasons:
				if strings.HasPrefix(r, "watch restarted") {
					t.Errorf("Watch had to restart: %s", r)
				}
			default:
				return
			}
		}
	}
	repair := func(what string, want []string) {
		t.Helper()
		expectLines(t, "repair after "+what, m.reconcile("vpc1").Changes, want)
		if err := m.ping(s1, s2.HostAddr); err != nil {
			t.Errorf("after repairing %s: %v", what, err)
		}
		drain()
	}
	route := "route add 172.31.0.0/16 via 172.31.0.0 dev cframe0 onlink src 172.18.171.245 proto 207"
	neigh := "neigh add 172.31.0.0 lladdr 02:cf:00:00:00:02 dev cframe0 nud permanent"
	fdb := "fdb add 02:cf:00:00:00:02 dst 203.0.113.10 port 58433 dev cframe0"

	m.sh(e1, "ip", "route", "del", "172.31.0.0/16", "proto", "207")
	waitFor("route 172.31.0.0/16 proto 207 deleted")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("ip route del", []string{route})

	m.sh(e1, "ip", "neigh", "del", "172.31.0.0", "dev", "cframe0")
	waitFor("neighbor 172.31.0.0 on cframe0 deleted")
	repair("ip neigh del", []string{neigh})

	m.sh(e1, "bridge", "fdb", "del", "02:cf:00:00:00:02", "dev", "cframe0", "dst", "203.0.113.10", "port", "58433")
	waitFor("fdb entry 02:cf:00:00:00:02 on cframe0 deleted")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("bridge fdb del", []string{fdb})

	m.sh(e1, "ip", "link", "set", "cframe0", "mtu", "1300")
	waitFor("link cframe0 mtu changed to 1300")
	repair("ip link set mtu", []string{"link set cframe0 mtu 1450"})

	m.sh(e1, "ip", "link", "del", "cframe0")
	waitFor("link cframe0 deleted")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("ip link del", []string{
		`link add cframe0 type vxlan id 1 dstport 58423 nolearning udpcsum address 02:cf:00:00:00:01 mtu 1450 alias "cframe" tx-checksumming off`,
		fdb, neigh, route,
	})

	// iptables has no events: the periodic reconcile repairs these.
	m.sh(e1, "iptables", "-F", "CFRAME-FORWARD")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("iptables -F CFRAME-FORWARD", []string{
		"iptables -t filter -I CFRAME-FORWARD 1 -s 172.18.0.0/16 -o cframe0 -j ACCEPT",
		"iptables -t filter -I CFRAME-FORWARD 1 -d 172.18.0.0/16 -i cframe0 -j ACCEPT",
	})
	m.sh(e1, "iptables", "-F", "FORWARD")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("iptables -F FORWARD", []string{"iptables -t filter -I FORWARD 1 -j CFRAME-FORWARD"})
	m.sh(e1, "iptables", "-I", "CFRAME-INPUT", "1", "-p", "udp", "--dport", "58423", "-j", "DROP")
	repair("a DROP inserted first", []string{"iptables -t filter -D CFRAME-INPUT -p udp -m udp --dport 58423 -j DROP"})
	expectLines(t, "INPUT after the DROP repair", m.lines(e1, "iptables", "-S", "CFRAME-INPUT"), []string{
		"-N CFRAME-INPUT",
		"-A CFRAME-INPUT -p udp -m udp --dport 58423 -m set --match-set cframe-peers src -j ACCEPT",
		"-A CFRAME-INPUT -p udp -m udp --dport 58423 -j DROP",
	})
	// ipsets have no events either.
	m.in("vpc1", func() error { return netlink.IpsetDel(setPeers, &netlink.IPSetEntry{IP: s2.Underlay().AsSlice()}) })
	m.expectUnreachable(s1, s2.HostAddr)
	repair("ipset del", []string{"ipset add cframe-peers 203.0.113.10"})

	m.sh(e1, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	m.expectUnreachable(s1, s2.HostAddr)
	repair("ip_forward=0", []string{"sysctl net.ipv4.ip_forward=1"})

	cancel()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Error("Watch did not stop after cancel")
	}
	drain()
}

// TestKernelMasquerade: a VPC whose hosts have no route back to the other
// VPCs is reachable only when its edge masquerades. All edges use the
// walkthrough's port 58423, so the kernel omits the (default) port from
// FDB dumps and Read must fill it in.
func TestKernelMasquerade(t *testing.T) {
	t.Parallel()
	vpcs := topo.Walkthrough()[:2]
	vpcs[1].NoRouteBack = true
	m := newMesh(t, vpcs...)
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	for _, d := range m.desired {
		d.Port = 58423
		for i := range d.Peers {
			d.Peers[i].Underlay = netip.AddrPortFrom(d.Peers[i].Underlay.Addr(), 58423)
		}
	}
	m.reconcileAll()
	m.expectNoChanges()
	m.expectSet("fdb with the default port", m.lines(s1.Edge, "bridge", "fdb", "show", "dev", "cframe0"),
		[]string{"02:cf:00:00:00:02 dst 203.0.113.10 self permanent"})
	m.expectUnreachable(s1, s2.HostAddr)

	m.desired["vpc2"].Masquerade = true
	res := m.reconcile("vpc2")
	expectLines(t, "changes when turning masquerade on", res.Changes, []string{
		"ipset create cframe-nets hash:net family inet",
		"ipset add cframe-nets 172.18.0.0/16",
		"iptables -t nat -N CFRAME-POSTROUTING",
		"iptables -t nat -I CFRAME-POSTROUTING 1 -d 172.31.0.0/16 -m set --match-set cframe-nets src -j SNAT --to-source 172.31.185.158",
		"iptables -t nat -I POSTROUTING 1 -j CFRAME-POSTROUTING",
	})
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Errorf("masqueraded VPC unreachable: %v", err)
	}
	if err := topo.TCPTransfer(s1.Host, s2.Host, s2.HostAddr, 1<<20, 15*time.Second); err != nil {
		t.Error(err)
	}
	m.expectNoChanges()

	m.desired["vpc2"].Masquerade = false
	expectLines(t, "changes when turning masquerade off", m.reconcile("vpc2").Changes, []string{
		"iptables -t nat -D POSTROUTING -j CFRAME-POSTROUTING",
		"iptables -t nat -F CFRAME-POSTROUTING",
		"iptables -t nat -X CFRAME-POSTROUTING",
		"ipset destroy cframe-nets",
	})
	m.expectUnreachable(s1, s2.HostAddr)
}

// TestKernelLegacyIptables: the walkthrough mesh with the legacy flavour of
// iptables (iptables-legacy and its -save and -restore, as Debian's
// iptables package ships them): the same rules, a converged mesh that stays
// so, traffic, the requests of an Update and a Reconcile — where
// iptables-save runs every time: legacy iptables has no generation to tell
// that nothing changed —, and a Cleanup that leaves nothing behind.
func TestKernelLegacyIptables(t *testing.T) {
	t.Parallel()
	topo.SkipUnlessRoot(t, "iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore")
	m := newMeshOn(t, "iptables-legacy", topo.Walkthrough()...)
	if m.k.ipt.nft {
		t.Fatal("iptables-legacy is the nf_tables flavour here")
	}
	s1, s2, s3 := m.site("vpc1"), m.site("vpc2"), m.site("vpc3")
	e1 := s1.Edge
	m.sh(e1, "iptables-legacy", "-P", "FORWARD", "DROP")
	m.reconcileAll()
	m.expectNoChanges()
	expectLines(t, "iptables-legacy -S", m.lines(e1, "iptables-legacy", "-S"), vpc1FilterRules)
	expectLines(t, "iptables-legacy -t mangle -S", m.lines(e1, "iptables-legacy", "-t", "mangle", "-S"), vpc1MangleRules)
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Error(err)
	}
	if err := topo.TCPTransfer(s1.Host, s3.Host, s3.HostAddr, 1<<20, 15*time.Second); err != nil {
		t.Error(err)
	}

	// vpc3 leaves vpc1's mesh through an Update (built on a Reconcile of
	// vpc1) and comes back through a Reconcile.
	m.reconcile("vpc1")
	d := *m.desired["vpc1"]
	d.Peers = slices.DeleteFunc(slices.Clone(d.Peers), func(p Peer) bool { return p.Name == "vpc3" })
	var res Result
	m.in("vpc1", func() (err error) { res, err = m.k.Update(&d); return err })
	if !res.Targeted {
		t.Fatalf("Update fell back to a full Reconcile: %s", res.FallbackReason)
	}
	expectLines(t, "changes after vpc3 left", res.Changes, vpc1WithoutVPC3)
	if want := updateRequests(m.k, 1, len(res.Changes)); res.Requests != want {
		t.Errorf("vpc3 leaving took %+v, want %+v", res.Requests, want)
	}
	m.expectUnreachable(s1, s3.HostAddr)
	res = m.reconcile("vpc1")
	expectLines(t, "changes after vpc3 came back", res.Changes, vpc1WithVPC3Again)
	if want := reconcileRequests(m.k, len(res.Changes)); res.Requests != want {
		t.Errorf("vpc3 coming back took %+v, want %+v", res.Requests, want)
	}
	if err := m.ping(s1, s3.HostAddr); err != nil {
		t.Error(err)
	}

	var removed []string
	m.in("vpc1", func() (err error) { removed, err = m.k.Cleanup(); return err })
	if len(removed) == 0 {
		t.Error("Cleanup removed nothing")
	}
	if out := m.sh(e1, "iptables-legacy-save"); strings.Contains(out, "CFRAME") {
		t.Errorf("iptables-legacy-save still mentions CFRAME after Cleanup:\n%s", out)
	}
	if got := m.lines(e1, "ip", "route", "show", "proto", "207"); len(got) > 0 {
		t.Errorf("routes left after Cleanup: %q", got)
	}
}

// TestKernelSupported: VXLAN is available; GRE is either available or
// reported in one actionable line; the probe leaves nothing behind.
func TestKernelSupported(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	n, ns := oneNS(t, "ns", "probe")
	var vx, gre, bogus error
	if err := topo.Do(ns, func() error {
		vx, gre, bogus = Supported(ModeVXLAN), Supported(ModeGRE), Supported("ipip")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if vx != nil {
		t.Errorf("Supported(vxlan) = %v", vx)
	}
	if gre != nil {
		msg := gre.Error()
		if !strings.HasPrefix(msg, "mode gre: kernel cannot create gre devices (") || !strings.HasSuffix(msg, `load the ip_gre module or use mode = "vxlan"`) {
			t.Errorf("Supported(gre) error is not the documented line: %q", msg)
		}
		t.Logf("GRE unsupported here: %v", gre)
	}
	if bogus == nil {
		t.Error("Supported(ipip) = nil")
	}
	out, err := n.Exec(ns, "ip", "-o", "link")
	if left := nonFallbackLinks(out); err != nil || len(left) != 1 || left[0] != "lo" {
		t.Errorf("probe left links behind (%v): %q\n%s", err, left, out)
	}
}

// nonFallbackLinks are the names in `ip -o link` output but the fallback
// devices.
func nonFallbackLinks(ipLink string) []string {
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(ipLink), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !FallbackDevice(name) {
			names = append(names, name)
		}
	}
	return names
}

// TestKernelGRE runs the walkthrough's first two VPCs in GRE mode, where
// the kernel can create GRE devices.
func TestKernelGRE(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()[:2]...)
	var unsupported error
	m.in("vpc1", func() error { unsupported = Supported(ModeGRE); return nil })
	if unsupported != nil {
		t.Skipf("%v (TestVMStockKernel runs this test on Debian's stock kernel)", unsupported)
	}
	for _, d := range m.desired {
		d.Mode = ModeGRE
	}
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	// ip_gre is loaded now: its fallback devices are in every namespace.
	before := m.sh(s1.Edge, "ip", "-d", "-o", "link", "show")
	if !strings.Contains(before, " gre0@NONE: ") {
		t.Fatalf("no gre0 with ip_gre loaded:\n%s", before)
	}
	m.reconcileAll()
	m.expectNoChanges()
	m.checkAllPairs()
	dev := greDevice(DefaultDevice, "vpc2")
	m.expectSet("routes with proto 207", m.lines(s1.Edge, "ip", "route", "show", "proto", "207"),
		[]string{fmt.Sprintf("172.31.0.0/16 dev %s scope link src 172.18.171.245", dev)})
	link := m.sh(s1.Edge, "ip", "-d", "link", "show", dev)
	for _, want := range []string{"mtu 1476", "remote " + s2.Underlay().String(), "local " + s1.Underlay().String(), "alias cframe:vpc2"} {
		if !strings.Contains(link, want) {
			t.Errorf("ip -d link show %s lacks %q:\n%s", dev, want, link)
		}
	}

	// Drift: the device deleted behind cframe's back comes back.
	m.sh(s1.Edge, "ip", "link", "del", dev)
	if res := m.reconcile("vpc1"); !slices.ContainsFunc(res.Changes, func(c string) bool { return strings.HasPrefix(c, "link add "+dev+" ") }) {
		t.Errorf("reconcile after %s was deleted: %q", dev, res.Changes)
	}
	m.checkAllPairs()

	var removed []string
	m.in("vpc1", func() (err error) { removed, err = m.k.Cleanup(); return err })
	if len(removed) == 0 {
		t.Errorf("Cleanup removed %q", removed)
	}
	after := m.sh(s1.Edge, "ip", "-d", "-o", "link", "show")
	if got, want := nonFallbackLinks(after), nonFallbackLinks(before); !slices.Equal(got, want) {
		t.Errorf("links after Cleanup %q, before the first reconcile %q", got, want)
	}
	for _, l := range strings.Split(before, "\n") {
		if name := nonFallbackLinks(l); len(name) == 0 && !strings.Contains(after, l) {
			t.Errorf("fallback device changed: before %s\nafter:\n%s", l, after)
		}
	}
}

// TestKernelIptablesForms checks that every kind of rule cframe writes —
// written in one iptables-restore per table — is printed back by this
// host's iptables-save exactly as cframe spells it: the premise of diffing
// rules without flushing chains. A rule with an awkward comment, as an
// older cframe wrote per peer, must be deletable by its canonical line,
// in a batch and alone. Both flavours of iptables, nf_tables and legacy.
func TestKernelIptablesForms(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	for _, program := range []string{"iptables", "iptables-legacy"} {
		t.Run(program, func(t *testing.T) {
			t.Parallel()
			topo.SkipUnlessRoot(t, program, program+"-save", program+"-restore")
			iptablesForms(t, program)
		})
	}
}

func iptablesForms(t *testing.T, program string) {
	n, ns := oneNS(t, "ni", "ipt")
	k, err := newKernel(program)
	if err != nil {
		t.Fatal(err)
	}
	oldPeer := func(name, addr string) rule {
		return rule{chainInput, []string{"-s", addr, "-p", "udp", "-m", "udp", "--dport", "4789", "-m", "comment", "--comment", "cframe peer " + name, "-j", "ACCEPT"}}
	}
	odd, plain := oldPeer(`we"ird name/ü:1.2@x`, "192.0.2.7/32"), oldPeer("sz-1", "192.0.2.8/32")
	var rules []rule
	rules = append(rules, forwardRules("cframe0", pfx("10.244.0.0/16"))...)
	rules = append(rules, odd, plain, inputAccept(ModeVXLAN, 58423), inputDrop(ModeVXLAN, 58423), inputAccept(ModeGRE, 0), inputDrop(ModeGRE, 0))
	rules = append(rules, mssRules("cframe0-abcdef", 1450)...)
	rules = append(rules, natRule(pfx("172.18.0.0/16"), ip("172.18.171.245")), natRule(pfx("172.18.0.0/16"), netip.Addr{}))
	if err := topo.Do(ns, func() error {
		s, err := k.begin()
		if err != nil {
			return err
		}
		defer s.end()
		sets := []change{setCreate(setPeers), setCreate(setNets)}
		var add []change
		for _, h := range hooks {
			add = append(add, chainNew(h.own), ruleAppend(jumpRule(h.from, h.own)))
		}
		for _, r := range rules {
			add = append(add, ruleAppend(r))
		}
		if _, err := s.apply(sets); err != nil {
			return err
		}
		before := s.requests()
		if _, err := s.apply(add); err != nil {
			return err
		}
		if ran := s.requests().Exec - before.Exec; ran != 3 {
			t.Errorf("%d changes in 3 tables took %d programs, want 3", len(add), ran)
		}
		r := newReading(&Desired{}, nil)
		if err := s.readChains(r); err != nil {
			return err
		}
		want := map[chain][]string{}
		for _, r := range rules {
			want[r.chain] = append(want[r.chain], r.line())
		}
		for _, h := range hooks {
			expectLines(t, "rules of "+h.own.Name, r.a.Chains[h.own], want[h.own])
			expectLines(t, "rules of "+h.from.Table+" "+h.from.Name, r.a.Chains[h.from], []string{jumpRule(h.from, h.own).line()})
		}
		// Alone, then in a batch with a rule that is gone (the restore
		// fails, each change then runs alone).
		gone := ruleDelete(chainInput, oldPeer("gone", "192.0.2.9/32").line())
		for _, cs := range [][]change{{ruleDelete(chainInput, odd.line())}, {gone, ruleDelete(chainInput, plain.line())}} {
			if _, err := s.apply(cs); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out := nsExec(t, n, ns, program, "-S", "CFRAME-INPUT"); strings.Contains(out, "cframe peer") {
		t.Errorf("rules with comments not deleted:\n%s", out)
	}
}

// oneNS returns a namespace of its own (named name, under a unique prefix),
// removed when the test ends.
func oneNS(t *testing.T, prefix, name string) (*topo.Net, string) {
	t.Helper()
	n, err := topo.New(topo.UniquePrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ns, err := n.NS(name)
	if err != nil {
		t.Fatal(err)
	}
	return n, ns
}

func nsExec(t *testing.T, n *topo.Net, ns string, args ...string) string {
	t.Helper()
	out, err := n.Exec(ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKernelThroughNAT is the regression test of the checksum trap (see
// ethtool.go): two edges in the cloud shape, each behind a VPC router that
// maps its EIP 1:1 onto it — a Linux NAT in the same kernel on both ends
// of the tunnel. TCP and UDP between the hosts pass in both checksum
// settings (this kernel's NAT leaves the fast setting's zero outer
// checksum alone), offload switched by hand is switched back by the next
// reconcile, a change of setting replaces the device; through a path that
// rewrites zero checksums (topo.BreakZeroChecksums) pings pass and TCP
// fails in the fast setting, and everything passes in the safe one. The
// EIP as the local address is refused.
func TestKernelThroughNAT(t *testing.T) {
	t.Parallel()
	topo.SkipUnlessRoot(t, "ethtool")
	m := newMeshShaped(t, "iptables", topo.BuildCloud, topo.Walkthrough()[:2])
	m.reconcileAll()
	m.expectNoChanges()
	s1, s2 := m.site("vpc1"), m.site("vpc2")
	for _, s := range []*topo.Site{s1, s2} {
		if link := m.sh(s.Edge, "ip", "-d", "link", "show", "cframe0"); !strings.Contains(link, " udpcsum ") {
			t.Errorf("%s: cframe0 without the outer UDP checksum:\n%s", s.Name, link)
		}
		if k := m.sh(s.Edge, "ethtool", "-k", "cframe0"); !strings.Contains(k, "tx-checksumming: off") {
			t.Errorf("%s: cframe0 offloads transmit checksums:\n%s", s.Name, k)
		}
	}
	traffic := func() {
		t.Helper()
		errs0 := [2]int64{}
		for i, s := range []*topo.Site{s1, s2} {
			errs0[i] = m.csumErrors(s)
		}
		for _, p := range [][2]*topo.Site{{s1, s2}, {s2, s1}} {
			from, to := p[0], p[1]
			if err := m.ping(from, to.HostAddr); err != nil {
				t.Fatalf("ping %s -> %s: %v", from.Name, to.Name, err)
			}
			if err := topo.TCPTransfer(from.Host, to.Host, to.HostAddr, 1<<20, 10*time.Second); err != nil {
				t.Fatalf("%v (UdpInCsumErrors of %s's edge: %d -> %d)", err, to.Name, errs0[to.Index], m.csumErrors(to))
			}
			if err := topo.UDPTransfer(from.Host, to.Host, to.HostAddr, 10, 1400, 10*time.Second); err != nil {
				t.Fatalf("%v (UdpInCsumErrors of %s's edge: %d -> %d)", err, to.Name, errs0[to.Index], m.csumErrors(to))
			}
		}
		for i, s := range []*topo.Site{s1, s2} {
			if n := m.csumErrors(s); n != errs0[i] {
				t.Errorf("%s's edge: UdpInCsumErrors %d -> %d", s.Name, errs0[i], n)
			}
		}
	}
	traffic()

	// The EIP is no address of the edge: as the local address it is refused
	// before anything changes.
	bad := *m.desired["vpc1"]
	bad.LocalAddr = s1.Underlay()
	m.in("vpc1", func() error {
		res, err := m.k.Reconcile(&bad)
		if err == nil || !strings.Contains(err.Error(), "not an address of this host") || len(res.Changes) > 0 {
			t.Errorf("reconcile with the EIP as local address: %v, changes %q", err, res.Changes)
		}
		return nil
	})

	m.sh(s1.Edge, "ethtool", "-K", "cframe0", "tx", "on")
	res := m.reconcile("vpc1")
	m.expectSet("reconcile after tx-checksumming was switched on", res.Changes, []string{"link set cframe0 tx-checksumming off"})
	m.expectNoChanges()
	traffic()

	// The fast setting: the device is replaced (the kernel fixes udpcsum
	// at creation) with a zero outer checksum and offload on, and this
	// kernel's NAT leaves the zero alone.
	setting := func(c Checksum, udpcsum, tx string) {
		t.Helper()
		for _, s := range []*topo.Site{s1, s2} {
			m.desired[s.Name].Checksum = c
			res := m.reconcile(s.Name)
			if want := "link del cframe0 (recreate: udpcsum "; len(res.Changes) == 0 || !strings.HasPrefix(res.Changes[0], want) {
				t.Errorf("%s: setting %s: changes %q, want the device replaced first", s.Name, c, res.Changes)
			}
			if link := m.sh(s.Edge, "ip", "-d", "link", "show", "cframe0"); !strings.Contains(link, " "+udpcsum+" ") {
				t.Errorf("%s: setting %s: cframe0 without %s:\n%s", s.Name, c, udpcsum, link)
			}
			if k := m.sh(s.Edge, "ethtool", "-k", "cframe0"); !strings.Contains(k, "tx-checksumming: "+tx) {
				t.Errorf("%s: setting %s: cframe0 tx-checksumming not %s:\n%s", s.Name, c, tx, k)
			}
		}
		m.expectNoChanges()
	}
	setting(ChecksumFast, "noudpcsum", "on")
	traffic()
	m.sh(s1.Edge, "ethtool", "-K", "cframe0", "tx", "off")
	res = m.reconcile("vpc1")
	m.expectSet("fast: reconcile after tx-checksumming was switched off", res.Changes, []string{"link set cframe0 tx-checksumming on"})
	m.expectNoChanges()

	// A path that breaks the fast setting (a NAT that rewrites zero
	// checksums): pings pass, TCP does not; the safe setting passes.
	br, err := m.net.BreakZeroChecksums(s2.VPCRouter, []uint16{port(s1), port(s2)}, topo.VPCUplink, "e0")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ping(s1, s2.HostAddr); err != nil {
		t.Errorf("fast setting through the breaker: ping: %v", err)
	}
	if err := topo.TCPTransfer(s1.Host, s2.Host, s2.HostAddr, 1<<20, 3*time.Second); err == nil {
		t.Error("fast setting through the breaker: TCP passed, want it broken")
	}
	if hits, err := br.Hits(); err != nil || hits == 0 {
		t.Errorf("breaker hits %d (%v), want some", hits, err)
	}
	setting(ChecksumSafe, "udpcsum", "off")
	traffic()
	if err := br.Remove(); err != nil {
		t.Error(err)
	}
}

// csumErrors reads UdpInCsumErrors of s's edge.
func (m *mesh) csumErrors(s *topo.Site) int64 {
	m.t.Helper()
	n, err := m.net.Counter(s.Edge, "UdpInCsumErrors")
	if err != nil {
		m.t.Fatal(err)
	}
	return n
}
