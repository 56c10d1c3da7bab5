package deb

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/internal/vm"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
	"golang.org/x/sys/unix"
)

// The two builds the VM test installs, the first and its upgrade.
const (
	oldVersion = "0.0.1+systemd"
	newVersion = "0.0.2+systemd"
)

// TestVMSystemd installs the package under a real systemd: Debian's
// systemd as PID 1 in the stock-kernel VM (internal/vm), where the run below
// happens (systemdRun) and dpkg -i only writes to the VM's overlay.
func TestVMSystemd(t *testing.T) {
	if vm.Inside() {
		systemdRun(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the VM")
	}
	dir := t.TempDir()
	for _, v := range []string{oldVersion, newVersion} {
		if _, err := Build(dir, v); err != nil {
			t.Fatal(err)
		}
	}
	vm.GoTest(t, ".", "^TestVMSystemd$", vm.Options{Systemd: true, Env: []string{"CFRAME_DEBS=" + dir}, Share: []string{dir}, Timeout: 12 * time.Minute})
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// vmHost runs commands on the VM, under its systemd.
type vmHost struct {
	t *testing.T
}

// run runs a command and returns its combined output; a failure is fatal.
func (h vmHost) run(args ...string) string {
	h.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// show returns one property of a unit (systemctl show).
func (h vmHost) show(unit, prop string) string {
	h.t.Helper()
	return strings.TrimSpace(h.run("systemctl", "show", "--value", "-p", prop, unit))
}

// state is what systemctl is-enabled or is-active says (they exit non-zero
// for "disabled", "inactive", ...).
func state(what, unit string) string {
	out, _ := exec.Command("systemctl", what, unit).Output()
	return strings.TrimSpace(string(out))
}

// mainPID is the unit's main process, 0 when it has none.
func (h vmHost) mainPID(unit string) int {
	h.t.Helper()
	pid, err := strconv.Atoi(h.show(unit, "MainPID"))
	if err != nil {
		h.t.Fatal(err)
	}
	return pid
}

// restarted waits until unit runs a main process other than old and
// returns when it saw it.
func (h vmHost) restarted(unit string, old int, timeout time.Duration) time.Time {
	h.t.Helper()
	if err := topo.Eventually(timeout, func() error {
		if pid := h.mainPID(unit); pid == 0 || pid == old || state("is-active", unit) != "active" {
			return fmt.Errorf("%s: main process %d, %s", unit, pid, state("is-active", unit))
		}
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
	return time.Now()
}

// write writes a file; an existing file keeps its owner and mode.
func (h vmHost) write(path, text string, mode os.FileMode) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		h.t.Fatal(err)
	}
}

// owner checks a path's owner, group and permission bits.
func (h vmHost) owner(path, want string) {
	h.t.Helper()
	if got := strings.TrimSpace(h.run("stat", "-c", "%U:%G %a", path)); got != want {
		h.t.Errorf("%s: %s, want %s", path, got, want)
	}
}

// sdEdge is one edge agent run by a unit.
type sdEdge struct {
	name, unit string
	site       *topo.Site
	// ns is the namespace its unit runs in, "" for the VM's own.
	ns string
}

// metrics scrapes the agent's /metrics in its namespace.
func (e sdEdge) metrics() (metricstest.Scrape, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	if e.ns != "" {
		c.Transport = &http.Transport{DialContext: topo.Dialer{NS: e.ns}.DialContext}
	}
	return metricstest.Get(c, "http://127.0.0.1:9474/metrics")
}

// systemdRun is the VM side of TestVMSystemd: it installs the package, runs
// the walkthrough's controller and sz-1's edge as the packaged units in the
// VM's own namespace and the other two edges as copies of the edge unit in
// namespaces of their own (a drop-in sets NetworkNamespacePath=), and
// checks what an operator relies on: the mesh, restarts without a lost
// packet, an upgrade, removal and purge.
func systemdRun(t *testing.T) {
	h := vmHost{t}
	ctx := context.Background()
	debs := os.Getenv("CFRAME_DEBS")
	deb := func(v string) string { return filepath.Join(debs, fmt.Sprintf("cframe_%s_amd64.deb", v)) }
	step := func(what string) { t.Logf("%s: %s", time.Now().Format("15:04:05.000"), what) }

	step("dpkg -i: nothing enabled, nothing started")
	h.run("dpkg", "-i", deb(oldVersion))
	for _, u := range []string{"cframe-controller.service", "cframe-edge.service"} {
		if en, act := state("is-enabled", u), state("is-active", u); en != "disabled" || act != "inactive" {
			t.Fatalf("%s after installation: %s, %s; want disabled, inactive", u, en, act)
		}
	}
	h.owner("/var/lib/cframe", "cframe:cframe 700")
	h.owner("/var/lib/cframe-edge", "root:root 700")
	h.owner("/etc/cframe/controller.toml", "root:cframe 640")
	h.owner("/etc/cframe/edge.toml", "root:root 600")

	step("the walkthrough's namespaces; sz-1's edge moves into the VM's own")
	n, err := topo.New(topo.UniquePrefix("sd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	tp, err := topo.Build(n, topo.Walkthrough()...)
	if err != nil {
		t.Fatal(err)
	}
	sites := tp.Sites()
	sz := sites[0]
	for _, l := range []struct {
		dev  string
		addr netip.Prefix
	}{{topo.EdgeWAN, sz.Public}, {topo.EdgeLAN, netip.PrefixFrom(sz.EdgeAddr, sz.CIDR.Bits())}} {
		h.run("ip", "-n", sz.Edge, "link", "set", l.dev, "netns", "1")
		h.run("ip", "addr", "add", l.addr.String(), "dev", l.dev)
		h.run("ip", "link", "set", l.dev, "up")
	}
	h.run("ip", "route", "add", "default", "via", sz.Gateway.String())
	edges := []sdEdge{{name: "sz-1", unit: "cframe-edge.service", site: sz}}
	for i, s := range sites[1:] {
		name := []string{"hk-1", "gz-3"}[i]
		edges = append(edges, sdEdge{name: name, unit: "cframe-edge-" + name + ".service", site: s, ns: s.Edge})
	}

	step("controller: the walkthrough's controller.toml, systemctl enable --now")
	h.write("/etc/cframe/controller.toml", "listen_addr=\":58422\"\napi_addr=\":12345\"\n", 0o640)
	h.run("systemctl", "enable", "--now", "cframe-controller.service")
	cl := api.NewClient("http://127.0.0.1:12345", "")
	var secret []byte
	if err := topo.Eventually(60*time.Second, func() (err error) {
		if secret, err = os.ReadFile("/var/lib/cframe/secret"); err != nil {
			return err
		}
		_, err = cl.List(ctx)
		return err
	}); err != nil {
		t.Fatalf("controller: %v\n%s", err, h.run("journalctl", "-u", "cframe-controller", "-o", "cat", "--no-pager"))
	}

	step("edges: edge.toml, copies of the unit with a NetworkNamespacePath= drop-in, systemctl enable --now")
	controller := fmt.Sprintf("%s:58422", sz.Underlay())
	var units []string
	for _, e := range edges {
		cfg := fmt.Sprintf("controller=%q\nname = %q\nlisten_addr=\":58423\"\nsecret = %q\nmetrics_addr = \"127.0.0.1:9474\"\n",
			controller, e.name, strings.TrimSpace(string(secret)))
		if e.ns == "" {
			h.write("/etc/cframe/edge.toml", cfg, 0o600)
		} else {
			base := strings.TrimSuffix(e.unit, ".service")
			h.write("/etc/cframe/"+e.name+".toml", cfg+fmt.Sprintf("state_dir = \"/var/lib/%s\"\n", base), 0o600)
			h.run("cp", "/lib/systemd/system/cframe-edge.service", "/etc/systemd/system/"+e.unit)
			h.write("/etc/systemd/system/"+e.unit+".d/netns.conf", fmt.Sprintf(
				"[Service]\nNetworkNamespacePath=/run/netns/%s\nExecStart=\nExecStart=/usr/bin/cframe-edge -c /etc/cframe/%s.toml\nStateDirectory=\nStateDirectory=%s\n",
				e.ns, e.name, base), 0o644)
		}
		units = append(units, e.unit)
	}
	h.run("systemctl", "daemon-reload")
	h.run(append([]string{"systemctl", "enable", "--now"}, units...)...)
	added := time.Now()
	for _, e := range edges {
		if _, err := cl.Add(ctx, edgeset.Spec{Name: e.name, HostAddr: fmt.Sprintf("%s:58423", e.site.Underlay()), CIDR: e.site.CIDR.String()}); err != nil {
			t.Fatal(err)
		}
	}
	meshUp := func(what string, timeout time.Duration) {
		t.Helper()
		if err := topo.Eventually(timeout, func() error { return pingMatrix(n, sites) }); err != nil {
			for _, e := range edges {
				t.Logf("%s:\n%s", e.unit, tail(h.run("journalctl", "-u", e.unit, "-o", "cat", "--no-pager"), 20))
			}
			t.Fatalf("%s: %v", what, err)
		}
	}
	meshUp("every host pings every host and edge", 90*time.Second)
	step(fmt.Sprintf("mesh up %s after the adds", time.Since(added).Round(time.Millisecond)))

	step("the prober works under the unit's capabilities; the journal shows the kernel changes")
	for _, e := range edges {
		if err := topo.Eventually(60*time.Second, func() error {
			s, err := e.metrics()
			if err != nil {
				return err
			}
			if v, _ := s.Value("cframe_edge_peer_up"); v != 2 {
				return fmt.Errorf("%s: %v peers up", e.name, v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		journal := h.run("journalctl", "-u", e.unit, "-o", "cat", "--no-pager")
		if !strings.Contains(journal, "kernel change") || !strings.Contains(journal, "route") {
			t.Errorf("%s: the journal shows no kernel change:\n%s", e.unit, tail(journal, 20))
		}
		if strings.Contains(journal, "not permitted") || strings.Contains(journal, "permission denied") {
			t.Errorf("%s: refused something:\n%s", e.unit, journal)
		}
	}

	// The agent reads and writes sysfs (receive steering); a unit joining
	// a namespace may see another one's devices there (netcfg then leaves
	// steering alone, TestForeignSysfs).
	ns := edges[1].ns
	seen := h.run("systemd-run", "--quiet", "--wait", "--pipe", "-p", "NetworkNamespacePath=/run/netns/"+ns,
		"-p", "ProtectSystem=strict", "-p", "PrivateMounts=yes", "cat", "/sys/class/net/"+topo.EdgeWAN+"/address")
	own := seen == h.run("ip", "netns", "exec", ns, "cat", "/sys/class/net/"+topo.EdgeWAN+"/address")
	step(fmt.Sprintf("a unit with NetworkNamespacePath= sees its namespace's devices in /sys: %v (systemd %s)", own,
		strings.Fields(h.run("systemctl", "--version"))[1]))

	for _, u := range []string{"cframe-controller.service", "cframe-edge.service"} {
		step(strings.TrimSpace(tail(h.run("systemd-analyze", "security", "--no-pager", u), 1)))
	}

	hk, gz := sites[1], sites[2]
	restartSec, err := time.ParseDuration(strings.ReplaceAll(h.show("cframe-edge.service", "RestartUSec"), "min", "m"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range edges[:2] { // the VM's own namespace and a drop-in's
		step("kill -9 of " + e.unit + ": restarted within RestartSec, no packet lost")
		ping := topo.StartPing(hk.Host, gz.HostAddr, 100, 50*time.Millisecond)
		if e.ns == "" {
			ping = topo.StartPing(sz.Host, hk.HostAddr, 100, 50*time.Millisecond)
		}
		old := h.mainPID(e.unit)
		killed := monotonic(t)
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		h.restarted(e.unit, old, restartSec+20*time.Second)
		// systemd's clock: when it started the new process.
		startedUS, err := strconv.ParseInt(h.show(e.unit, "ExecMainStartTimestampMonotonic"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Duration(startedUS)*time.Microsecond - killed
		if took < restartSec || took > restartSec+time.Second {
			t.Errorf("%s restarted %s after kill -9, RestartSec is %s", e.unit, took, restartSec)
		}
		step(fmt.Sprintf("%s restarted %s after kill -9 (RestartSec %s)", e.unit, took.Round(time.Millisecond), restartSec))
		if sent, received, err := ping.Wait(); err != nil || sent == 0 || received != sent {
			t.Errorf("ping across the kill of %s: %d sent, %d answered (%v)", e.unit, sent, received, err)
		}
	}

	step("systemctl stop leaves the data plane up; systemctl restart converges")
	h.run("systemctl", "stop", "cframe-edge.service")
	if err := pingMatrix(n, sites); err != nil {
		t.Fatalf("with cframe-edge stopped: %v", err)
	}
	h.run("ip", "route", "del", hk.CIDR.String(), "proto", "207") // drift while stopped
	h.run("systemctl", "restart", "cframe-edge.service")
	meshUp("after systemctl restart", 60*time.Second)

	step("kill -9 of the controller: restarted, the edges resync")
	oldCtl := h.mainPID("cframe-controller.service")
	if err := syscall.Kill(oldCtl, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.restarted("cframe-controller.service", oldCtl, 30*time.Second)
	spec := edgeset.Spec{Name: "gz-3", HostAddr: fmt.Sprintf("%s:58423", gz.Underlay()), CIDR: gz.CIDR.String(), Comment: "after the controller's crash"}
	if err := topo.Eventually(60*time.Second, func() error {
		_, err := cl.Add(ctx, spec) // an update: it reaches every edge once they resynced
		return err
	}); err != nil {
		t.Fatal(err)
	}
	allApplied := func(what string) {
		t.Helper()
		if err := topo.Eventually(60*time.Second, func() error {
			tp, err := cl.Topology(ctx)
			if err != nil {
				return err
			}
			list, err := cl.List(ctx)
			if err != nil {
				return err
			}
			for _, e := range list {
				if e.Status != 1 || e.AppliedRevision != tp.Revision {
					return fmt.Errorf("%s: status %d, applied %d, want online at %d", e.Name, e.Status, e.AppliedRevision, tp.Revision)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	allApplied("after the controller's restart")

	step("upgrade by dpkg -i: every unit restarts, no packet lost")
	pids := map[string]int{"cframe-controller.service": h.mainPID("cframe-controller.service")}
	for _, u := range units {
		pids[u] = h.mainPID(u)
	}
	pings := []*topo.Ping{topo.StartPing(sz.Host, hk.HostAddr, 600, 50*time.Millisecond), topo.StartPing(hk.Host, gz.HostAddr, 600, 50*time.Millisecond)}
	h.run("dpkg", "-i", deb(newVersion))
	for u, old := range pids {
		h.restarted(u, old, 30*time.Second)
	}
	if v := strings.TrimSpace(h.run("dpkg-query", "-W", "-f=${Version}", "cframe")); v != newVersion {
		t.Errorf("installed %s, want %s", v, newVersion)
	}
	h.owner("/etc/cframe/controller.toml", "root:cframe 640")
	allApplied("after the upgrade")
	for _, p := range pings {
		if sent, received, err := p.Wait(); err != nil || sent == 0 || received != sent {
			t.Errorf("ping across the upgrade: %d sent, %d answered (%v)", sent, received, err)
		}
	}

	step("dpkg -r: units stopped and disabled, configs, state and the kernel's objects stay")
	h.run("dpkg", "-r", "cframe")
	for _, u := range append([]string{"cframe-controller.service"}, units...) {
		if act := state("is-active", u); act == "active" {
			t.Errorf("%s after removal: %s", u, act)
		}
	}
	for _, p := range []string{"/etc/cframe/edge.toml", "/var/lib/cframe/secret", "/var/lib/cframe-edge"} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("removal removed %s: %v", p, err)
		}
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/cframe-edge.service"); err == nil {
		t.Error("cframe-edge.service is still enabled after removal")
	}
	h.run("ip", "link", "show", "cframe0")
	if err := pingMatrix(n, sites); err != nil {
		t.Errorf("after removal the kernel no longer forwards: %v", err)
	}

	step("dpkg -P: configs and state gone")
	h.run("dpkg", "-P", "cframe")
	for _, p := range []string{"/etc/cframe/controller.toml", "/etc/cframe/edge.toml", "/var/lib/cframe", "/var/lib/cframe-edge"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there after purge", p)
		}
	}
	step("done")
}

// monotonic reads CLOCK_MONOTONIC, systemd's clock for its *Monotonic
// timestamps.
func monotonic(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// pingMatrix checks that every host pings every other site's host and edge.
func pingMatrix(n *topo.Net, sites []*topo.Site) error {
	for _, from := range sites {
		for _, to := range sites {
			if from == to {
				continue
			}
			for _, a := range []netip.Addr{to.HostAddr, to.EdgeAddr} {
				if err := n.Ping(from.Host, a, 1, 2*time.Second); err != nil {
					return fmt.Errorf("%s cannot reach %s (%s): %w", from.Name, a, to.Name, err)
				}
			}
		}
	}
	return nil
}
