package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/scripts/cluster"
)

// flow is a direction a connection can be opened in: from a namespace to
// an address of another VPC.
type flow struct {
	fromNS, toNS string
	to           netip.Addr
	what         string
}

// cloudFlows are the connections the cloud walkthrough must carry: from the
// host of every VPC whose route table points at its edge to the host and
// the edge of every other VPC, and from the edge of a VPC without routes
// back (it cannot be reached by its own hosts' answers otherwise) to the
// other VPCs' hosts.
func cloudFlows(sites []*topo.Site) []flow {
	var out []flow
	for _, from := range sites {
		for _, to := range sites {
			if from == to {
				continue
			}
			if from.NoRouteBack {
				out = append(out, flow{from.Edge, to.Host, to.HostAddr, from.Name + " edge -> " + to.Name + " host"})
				continue
			}
			out = append(out, flow{from.Host, to.Host, to.HostAddr, from.Name + " host -> " + to.Name + " host"},
				flow{from.Host, to.Edge, to.EdgeAddr, from.Name + " host -> " + to.Name + " edge"})
		}
	}
	return out
}

// TestCloudWalkthrough runs the walkthrough as it really runs in a cloud
// (topo.BuildCloud): every edge has one NIC in its VPC, its hostaddr is an
// EIP that the VPC router maps 1:1 onto it, hosts reach the other VPCs
// through their default gateway's route table, the edges reach the
// controller at sz-1's EIP, and VPC3's route table is left empty: gz-3
// masquerades. The tunnel's packets cross two Linux NATs in the same kernel,
// the trap where pings pass and TCP stalls on bad outer UDP checksums.
func TestCloudWalkthrough(t *testing.T) {
	vpcs := topo.Walkthrough()
	vpcs[2].NoRouteBack = true
	f := buildFixture(t, topo.BuildCloud, vpcs, cluster.Options{})
	sites := f.topo.Sites()
	sz, hk, gz := sites[0], sites[1], sites[2]
	names := cluster.WalkthroughNames
	flows := cloudFlows(sites)

	t.Run("edges started first wait unregistered, three adds converge", func(t *testing.T) {
		for i, s := range sites {
			var extra []string
			if s.NoRouteBack {
				extra = append(extra, "masquerade = true")
			}
			f.startEdge(names[i], s, extra...)
		}
		// They reached the controller through sz-1's EIP and wait (the
		// deadline is generous for the stock-kernel VM's emulated CPU).
		if err := topo.Eventually(45*time.Second, func() error {
			tp, err := f.c.API.Topology(f.ctx)
			if err != nil {
				return err
			}
			if pending := slices.Sorted(slices.Values(tp.Pending)); !slices.Equal(pending, slices.Sorted(slices.Values(names))) {
				return fmt.Errorf("pending = %v, want %v", pending, names)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		start := f.add(names...)
		if err := topo.Eventually(45*time.Second, func() error { return pingAll(f.net, flows) }); err != nil {
			t.Fatal(err)
		}
		t.Logf("convergence (cloud walkthrough): %s from the last add returning to every flow answering a ping", time.Since(start).Round(time.Millisecond))
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("DF pings at the path MTU pass, one byte more is answered with frag-needed", func(t *testing.T) {
		mtu := 1450 // the underlay's 1500 minus VXLAN's 50 bytes
		if f.encrypted() {
			mtu -= 60 // and WireGuard's 60 around it
		}
		for _, to := range []*topo.Site{hk, gz} {
			out, err := f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-28), "-c", "2", "-i", "0.2", "-W", "2", to.HostAddr.String())
			if err != nil {
				t.Errorf("DF ping of %d bytes to %s: %v", mtu, to.HostAddr, err)
			}
			out, err = f.net.Exec(sz.Host, "ping", "-n", "-M", "do", "-s", strconv.Itoa(mtu-27), "-c", "1", "-W", "2", to.HostAddr.String())
			if err == nil || !strings.Contains(out, "mtu = "+strconv.Itoa(mtu)) {
				t.Errorf("DF ping of %d bytes to %s: %v, want frag-needed naming mtu %d:\n%s", mtu+1, to.HostAddr, err, mtu, out)
			}
		}
	})

	t.Run("bulk TCP and UDP both ways between every routed pair and into the masquerading VPC", func(t *testing.T) {
		before := csumErrors(t, f.net, sites)
		// The first failing flow ends the test, saying whether tunnel
		// packets arrived with bad outer checksums.
		check := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v (UdpInCsumErrors on the edges: %v before, %v now)", what, err, before, csumErrors(t, f.net, sites))
			}
		}
		// Deadlines for the stock-kernel VM, whose emulated CPU also does
		// WireGuard's crypto there: a stall still fails, slowness does not.
		for _, fl := range flows {
			check(fl.what, topo.TCPTransfer(fl.fromNS, fl.toNS, fl.to, 4<<20, 60*time.Second))
			for _, size := range []int{1400, 64} {
				check(fl.what, topo.UDPTransfer(fl.fromNS, fl.toNS, fl.to, 20, size, 30*time.Second))
			}
		}
		if after := csumErrors(t, f.net, sites); !slices.Equal(after, before) {
			t.Errorf("UdpInCsumErrors on the edges went from %v to %v: tunnel packets arrive with bad outer checksums", before, after)
		}
	})

	t.Run("transmit checksum offload switched on by hand: the agent switches it off, TCP keeps working", func(t *testing.T) {
		if _, err := f.net.Exec(hk.Edge, "ethtool", "-K", "cframe0", "tx", "on"); err != nil {
			t.Fatal(err)
		}
		switched := time.Now()
		if err := topo.Eventually(10*time.Second, func() error {
			out, err := f.net.Exec(hk.Edge, "ethtool", "-k", "cframe0")
			if err != nil || !strings.Contains(out, "tx-checksumming: off") {
				return fmt.Errorf("hk-1's cframe0 still offloads transmit checksums (%v)", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("drift repair of tx-checksumming: %s", time.Since(switched).Round(time.Millisecond))
		if b, err := os.ReadFile(f.edges["hk-1"].Log); err != nil || !strings.Contains(string(b), `change="link set cframe0 tx-checksumming off"`) {
			t.Errorf("hk-1 did not log the repair (%v)", err)
		}
		if err := topo.TCPTransfer(sz.Host, hk.Host, hk.HostAddr, 1<<20, 10*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("kill -9 an agent and restart it: no ping lost, no stream paused", func(t *testing.T) {
		e := f.edges["gz-3"]
		before := f.kernelState(gz.Edge)
		ping := topo.StartPing(sz.Host, gz.HostAddr, 40, 100*time.Millisecond)
		s, err := startStream(hk.Host, gz.Host, gz.HostAddr)
		if err != nil {
			t.Fatal(err)
		}
		e.Proc().Kill()
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		sent, received, err := ping.Wait()
		if err != nil || sent != received {
			t.Errorf("ping across the restart: %d sent, %d received (%v)", sent, received, err)
		}
		if n, gap, err := s.finish(); err != nil || gap > time.Second {
			t.Errorf("stream across the restart: %d bytes, longest pause %s (%v)", n, gap, err)
		}
		topoNow, err := f.c.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(topoNow.Revision, "gz-3")
		if after := f.kernelState(gz.Edge); after != before {
			t.Errorf("kernel state changed across the restart:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})

	t.Run("every edge online in the edge list, at its EIP", func(t *testing.T) {
		topoNow, err := f.c.API.Topology(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(topoNow.Revision, names...)
		list, err := f.c.API.List(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if want := netip.AddrPortFrom(f.site(e.Name).Underlay(), cluster.TunnelPort).String(); e.Status != 1 || e.HostAddr != want {
				t.Errorf("edge %s: status %d at %s, want 1 at %s", e.Name, e.Status, e.HostAddr, want)
			}
		}
	})
}

// pingAll pings every flow's address once.
func pingAll(n *topo.Net, flows []flow) error {
	for _, fl := range flows {
		if err := n.Ping(fl.fromNS, fl.to, 1, time.Second); err != nil {
			return fmt.Errorf("%s (%s): %w", fl.what, fl.to, err)
		}
	}
	return nil
}

// csumErrors reads UdpInCsumErrors of every site's edge.
func csumErrors(t *testing.T, n *topo.Net, sites []*topo.Site) []int64 {
	t.Helper()
	var out []int64
	for _, s := range sites {
		v, err := n.Counter(s.Edge, "UdpInCsumErrors")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}
