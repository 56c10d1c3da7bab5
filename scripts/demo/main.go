// Command demo runs the reference walkthrough on one machine (make demo):
// three VPCs in network namespaces with an "internet" between their edges,
// the controller on sz-1's gateway, three edges, the walkthrough's three API
// calls, and its ping test — then a full ping matrix and the edge list.
// With -cloud (make demo CLOUD=1) the VPCs have the shape they have in a
// cloud (topo.BuildCloud): single-NIC edges behind VPC routers that map an
// EIP onto each, and the demo also moves bulk TCP between the VPCs.
// Everything lives in namespaces named cfdemo-*; nothing touches the root
// namespace, and all of it is removed on exit or Ctrl-C (make demo-clean
// removes the leftovers of a killed run).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/scripts/cluster"
)

const prefix = "cfdemo"

func main() {
	bin := flag.String("bin", "dist", "directory with the built programs (make build)")
	etcd := flag.Bool("etcd", false, "run the controller on a real etcd, as the walkthrough does")
	hold := flag.Bool("hold", false, "keep the mesh running until Ctrl-C, to look inside")
	cloud := flag.Bool("cloud", false, "the cloud shape: single-NIC edges behind VPC routers that map an EIP onto them")
	clean := flag.Bool("clean", false, "only remove the leftovers of an interrupted demo")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail("the demo creates network namespaces: run it as root")
	}
	if err := topo.CleanupPrefix(prefix + "-"); err != nil {
		fail("remove leftovers: %v", err)
	}
	if *clean {
		fmt.Println("removed every cfdemo-* namespace and the processes in it")
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *bin, *etcd, *hold, *cloud)
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", a...)
	os.Exit(1)
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func run(ctx context.Context, bin string, etcd, hold, cloud bool) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "cframe-demo-")
	if err != nil {
		return err
	}
	n, err := topo.New(prefix)
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up: stopping the programs, deleting the namespaces (logs stay in %s)", dir)
		n.Close()
	}()

	build, shape := topo.Build, ""
	if cloud {
		build, shape = topo.BuildCloud, " (cloud shape)"
	}
	step("building the walkthrough's topology%s in network namespaces", shape)
	t, err := build(n, topo.Walkthrough()...)
	if err != nil {
		return err
	}
	for i, s := range t.Sites() {
		fmt.Printf("    %s  %-15s edge %-15s (public %-13s ns %s)  host %-15s (ns %s)\n",
			cluster.WalkthroughNames[i], s.CIDR, s.EdgeAddr, s.Underlay(), s.Edge, s.HostAddr, s.Host)
	}
	if cloud {
		fmt.Printf("    each edge has ONE NIC in its VPC; its public address is an EIP that the VPC router (ns %s-*-rt)\n", prefix)
		fmt.Printf("    maps 1:1 onto the edge's private address: hostaddr is the EIP, the controller is reached at sz-1's EIP\n")
		fmt.Printf("    each VPC router's route table sends the other VPCs' CIDRs to the edge (the walkthrough's step 5):\n")
		for _, s := range t.Sites() {
			out, _ := n.Exec(s.RouteTable, "ip", "route")
			var via []string
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) >= 3 && f[1] == "via" && f[2] == s.EdgeAddr.String() {
					via = append(via, strings.Join(f[:3], " "))
				}
			}
			fmt.Printf("      %s: %s\n", s.VPCRouter, strings.Join(via, ", "))
		}
	} else {
		fmt.Printf("    the hosts route the other VPCs via their edge (the cloud route table step)\n")
	}

	home := t.Sites()[0]
	store := "embedded store"
	if etcd {
		store = "etcd on 127.0.0.1:2379"
	}
	step("starting the controller on sz-1's gateway (%s, %s)", home.Edge, store)
	c, err := cluster.Start(t, home, cluster.Options{Bin: bin, Dir: dir, Etcd: etcd})
	if err != nil {
		return err
	}
	fmt.Print(indent(c.Controllers[0].ConfigText()))

	step("starting the three edges (they wait, unregistered, until they are added)")
	var edges []*cluster.Edge
	for i, s := range t.Sites() {
		e, err := c.NewEdge(cluster.WalkthroughNames[i], s)
		if err != nil {
			return err
		}
		if err := e.Start(); err != nil {
			return err
		}
		edges = append(edges, e)
	}
	cfg, _ := os.ReadFile(edges[0].Config)
	fmt.Printf("    %s:\n%s", filepath.Base(edges[0].Config), indent(redact(string(cfg))))
	if err := topo.Do(home.Edge, netcfg.WireGuardSupported); err != nil {
		fmt.Printf("    data plane: PLAINTEXT — %v; where the kernel has WireGuard the same configs encrypt every link\n", err)
	} else {
		fmt.Println("    data plane: encrypted with kernel WireGuard (encryption = \"prefer\", the default)")
	}

	step("adding the three edges with the walkthrough's API calls")
	var added time.Time
	for _, e := range edges {
		body, _ := json.Marshal(e.Spec())
		fmt.Printf("    curl \"http://127.0.0.1:12345/api-service/v1/edge/add\" -X POST -d '%s'\n", body)
		res, err := e.Add(ctx)
		if err != nil {
			return err
		}
		added = time.Now()
		fmt.Printf("      -> %s (revision %d)\n", res.Message, res.Revision)
	}

	step("waiting until every host reaches every other host")
	if err := topo.Eventually(20*time.Second, func() error { return matrixOK(ctx, t) }); err != nil {
		return fmt.Errorf("the mesh did not converge: %w (logs in %s)", err, dir)
	}
	fmt.Printf("    converged %s after the last API call returned\n", time.Since(added).Round(time.Millisecond))

	step("the walkthrough's test: from the VPC3 host (172.20.0.13) ping both hosts and edges of VPC1 and VPC2")
	vpc3 := t.Sites()[2]
	for _, s := range t.Sites()[:2] {
		for _, a := range []netip.Addr{s.HostAddr, s.EdgeAddr} {
			out, err := n.Exec(vpc3.Host, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", a.String())
			fmt.Print(indent(pingSummary(out)))
			if err != nil {
				return fmt.Errorf("ping %s from VPC3: %w", a, err)
			}
		}
	}

	step("full ping matrix (rows: from host; columns: to host / edge)")
	if err := printMatrix(t); err != nil {
		return err
	}

	if cloud {
		step("bulk TCP between the VPCs' hosts, through both VPC routers' NAT")
		for _, p := range [][2]*topo.Site{{vpc3, t.Sites()[0]}, {t.Sites()[0], t.Sites()[1]}} {
			start := time.Now()
			if err := topo.TCPTransfer(p[0].Host, p[1].Host, p[1].HostAddr, 16<<20, 20*time.Second); err != nil {
				return err
			}
			fmt.Printf("    %s -> %s: 16 MiB echoed back in %s\n", p[0].HostAddr, p[1].HostAddr, time.Since(start).Round(time.Millisecond))
		}
	}

	step("cframectl edge list")
	out, err := c.Ctl("edge", "list")
	fmt.Print(indent(out))
	if err != nil {
		return err
	}

	step("how to look inside (while the demo holds, or in your own run)")
	e3 := vpc3.Edge
	for _, cmd := range []string{
		"ip -d link show cframe0",
		"bridge fdb show dev cframe0",
		"ip neigh show dev cframe0",
		"ip route show proto 207",
		"iptables -S CFRAME-FORWARD; iptables -S CFRAME-INPUT; iptables -t mangle -S CFRAME-MSS",
	} {
		fmt.Printf("    ip netns exec %s sh -c '%s'\n", e3, cmd)
	}
	if cloud {
		fmt.Printf("    ip netns exec %s iptables -t nat -S     # the VPC router's EIP mapping and SNAT\n", vpc3.VPCRouter)
		fmt.Printf("    ip netns exec %s ethtool -k cframe0     # tx-checksumming on, and ip -d link shows noudpcsum: the fast setting, which those NATs leave alone\n", e3)
	}
	out, _ = n.Exec(e3, "ip", "route", "show", "proto", "207")
	fmt.Printf("    for example, %s's routes:\n%s", cluster.WalkthroughNames[2], indent(out))

	step("what an operator sees: the topology page, metrics, the audit trail")
	if hold {
		if err := forwardViews(ctx, c, edges); err != nil {
			return err
		}
	} else {
		fmt.Printf("    inside the controller's namespace (make demo HOLD=1 forwards them to this machine's loopback):\n")
		fmt.Printf("      topology page:      http://127.0.0.1:%d/ui/\n", cluster.APIPort)
		fmt.Printf("      controller metrics: ip netns exec %s curl -s http://127.0.0.1:%d/metrics\n", home.Edge, cluster.APIPort)
		for _, e := range edges {
			fmt.Printf("      %s metrics:      ip netns exec %s curl -s %s\n", e.Name, e.Site.Edge, e.MetricsURL())
		}
	}
	ctl := filepath.Join(bin, "cframectl")
	fmt.Printf("    audit trail (kept, then live): ip netns exec %s %s events --since 1h\n", home.Edge, ctl)
	fmt.Printf("    Graphviz:                      ip netns exec %s %s topology -o dot | dot -Tsvg > mesh.svg\n", home.Edge, ctl)
	out, err = c.Ctl("topology")
	fmt.Print(indent(out))
	if err != nil {
		return err
	}

	if hold {
		step("holding the mesh: press Ctrl-C to clean up")
		<-ctx.Done()
	}
	return nil
}

// forwardViews makes the page and the metrics reachable from this machine's
// loopback while the demo holds: each listener relays into the namespace
// where the controller or the agent listens on its own loopback.
func forwardViews(ctx context.Context, c *cluster.Cluster, edges []*cluster.Edge) error {
	listen := func(port int) (net.Listener, error) {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil { // taken on this machine: any free port
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		}
		return ln, err
	}
	ln, err := listen(cluster.APIPort)
	if err != nil {
		return err
	}
	go topo.Forward(ctx, ln, c.Home.Edge, fmt.Sprintf("127.0.0.1:%d", cluster.APIPort))
	fmt.Printf("    open in a browser on this machine (forwarded into %s while the demo holds):\n", c.Home.Edge)
	fmt.Printf("      topology page:      http://%s/ui/\n", ln.Addr())
	fmt.Printf("      controller metrics: http://%s/metrics\n", ln.Addr())
	for i, e := range edges {
		ln, err := listen(cluster.MetricsPort + i)
		if err != nil {
			return err
		}
		go topo.Forward(ctx, ln, e.Site.Edge, fmt.Sprintf("127.0.0.1:%d", cluster.MetricsPort))
		fmt.Printf("      %s metrics:      http://%s/metrics\n", e.Name, ln.Addr())
	}
	return nil
}

// matrixOK is nil when every host reaches every other host with one ping.
func matrixOK(ctx context.Context, t *topo.Topology) error {
	for _, from := range t.Sites() {
		for _, to := range t.Sites() {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if from != to {
				if err := t.Net.Ping(from.Host, to.HostAddr, 1, time.Second); err != nil {
					return fmt.Errorf("%s -> %s: %w", from.HostAddr, to.HostAddr, err)
				}
			}
		}
	}
	return nil
}

func printMatrix(t *topo.Topology) error {
	sites := t.Sites()
	fmt.Printf("    %-16s", "from \\ to")
	for _, s := range sites {
		fmt.Printf(" %-16s %-16s", s.HostAddr, s.EdgeAddr)
	}
	fmt.Println()
	failed := 0
	for _, from := range sites {
		fmt.Printf("    %-16s", from.HostAddr)
		for _, to := range sites {
			for _, a := range []netip.Addr{to.HostAddr, to.EdgeAddr} {
				mark := "ok"
				if err := t.Net.Ping(from.Host, a, 1, time.Second); err != nil {
					mark, failed = "FAIL", failed+1
				}
				fmt.Printf(" %-16s", mark)
			}
		}
		fmt.Println()
	}
	if failed > 0 {
		return fmt.Errorf("%d ping(s) failed", failed)
	}
	return nil
}

func pingSummary(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "PING") || strings.Contains(l, "bytes from") || strings.Contains(l, "packets transmitted") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n") + "\n"
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "      " + strings.ReplaceAll(s, "\n", "\n      ") + "\n"
}

// redact hides the join secret in printed configs.
func redact(cfg string) string {
	var out []string
	for _, l := range strings.Split(cfg, "\n") {
		if strings.HasPrefix(l, "secret") {
			l = `secret = "…" # the controller's data_dir/secret`
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
