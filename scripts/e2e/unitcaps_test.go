package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/scripts/cluster"
	"golang.org/x/sys/unix"
)

// unitCapabilities returns the capabilities the edge's systemd unit
// grants, lower case without the "cap_" prefix (setpriv's spelling), and
// checks that its bounding and ambient sets agree and that it keeps
// NoNewPrivileges.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "systemd", "cframe-edge.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok && !strings.HasPrefix(k, "#") {
			keys[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	bounding, ambient := keys["CapabilityBoundingSet"], keys["AmbientCapabilities"]
	if bounding == "" || bounding != ambient || keys["NoNewPrivileges"] != "yes" {
		t.Fatalf("cframe-edge.service: CapabilityBoundingSet=%q AmbientCapabilities=%q NoNewPrivileges=%q: want one set in both, and no new privileges",
			bounding, ambient, keys["NoNewPrivileges"])
	}
	var caps []string
	for _, c := range strings.Fields(bounding) {
		caps = append(caps, strings.TrimPrefix(strings.ToLower(c), "cap_"))
	}
	return caps
}

// capabilityMask is the /proc/PID/status mask of capabilities named the
// way unitCapabilities returns them.
func capabilityMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	numbers := map[string]int{"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "net_bind_service": unix.CAP_NET_BIND_SERVICE}
	var m uint64
	for _, c := range caps {
		n, ok := numbers[c]
		if !ok {
			t.Fatalf("capability %q: not one an edge is expected to need", c)
		}
		m |= 1 << n
	}
	return m
}

// processCapabilities reads the effective and bounding capability masks
// of process pid.
func processCapabilities(pid int) (eff, bnd uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch k {
		case "CapEff":
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "CapBnd":
			bnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return eff, bnd, nil
}

// TestEdgeUnderUnitCapabilities runs the walkthrough's agents with exactly
// the capabilities their systemd unit grants (the unit's bounding and
// ambient sets, no new privileges: what systemd does to a root service),
// through setpriv: the agents watch the kernel, program tunnels, routes,
// ip_forward and iptables, and probe their peers without CAP_SYS_ADMIN or
// anything else. Under a real systemd, see the VM test.
func TestEdgeUnderUnitCapabilities(t *testing.T) {
	topo.SkipUnlessRoot(t, "bridge", "iptables", "ping", "setpriv")
	caps := unitCapabilities(t)
	want := capabilityMask(t, caps)
	set := "-all,+" + strings.Join(caps, ",+")
	wrap := []string{"setpriv", "--bounding-set", set, "--inh-caps", set, "--ambient-caps", set, "--no-new-privs", "--"}
	f := buildFixture(t, topo.Build, topo.Walkthrough(), cluster.Options{EdgeWrap: wrap})
	names := cluster.WalkthroughNames
	sites := f.topo.Sites()
	for i, s := range sites {
		f.startEdge(names[i], s)
	}

	for _, name := range names {
		pid := f.edges[name].Proc().Pid()
		// ip netns exec and setpriv exec the agent in the same process.
		if err := topo.Eventually(5*time.Second, func() error {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err == nil && filepath.Base(exe) != "cframe-edge" {
				err = fmt.Errorf("%s: process %d runs %s yet", name, pid, exe)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		eff, bnd, err := processCapabilities(pid)
		if err != nil {
			t.Fatal(err)
		}
		if eff != want || bnd != want {
			t.Fatalf("%s runs with capabilities %#x (bounding %#x), want %#x: the test does not reproduce the unit", name, eff, bnd, want)
		}
	}
	f.converge("walkthrough under the unit's capabilities", f.add(names...), sites...)
	f.appliedEverywhere(f.current(), names...)
	for _, name := range names {
		f.eventually(name+" probes both peers", func() error {
			if v, _ := f.scrapeEdge(name).Value("cframe_edge_peer_up"); v != 2 {
				return fmt.Errorf("%s: %v peers up", name, v)
			}
			return nil
		})
	}

	// The kernel watch works: a deleted route comes back well before the
	// periodic reconcile would have noticed.
	sz, hk := sites[0], sites[1]
	if _, err := f.net.Exec(sz.Edge, "ip", "route", "del", hk.CIDR.String()); err != nil {
		t.Fatal(err)
	}
	if err := topo.Eventually(5*time.Second, func() error {
		out, err := f.net.Exec(sz.Edge, "ip", "route", "show", hk.CIDR.String(), "proto", "207")
		if err == nil && strings.TrimSpace(out) == "" {
			err = fmt.Errorf("no route to %s yet", hk.CIDR)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.converge("after a repair", time.Now(), sites...)

	for _, name := range names {
		e := f.edges[name]
		select {
		case <-e.Proc().Done():
			t.Fatalf("%s exited: %v", name, e.Proc().Wait())
		default:
		}
		b, err := os.ReadFile(e.Log)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "not permitted") || strings.Contains(l, "permission denied") {
				t.Errorf("%s: %s", name, l)
			}
		}
	}
}
