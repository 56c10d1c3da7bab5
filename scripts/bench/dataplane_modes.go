package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/metrics/metricstest"
	"github.com/cframe/cframe/scripts/cluster"
)

// bed is one built two-VPC topology with the modes' shared files.
type bed struct {
	o    Options
	t    *topo.Topology
	a, b *topo.Site
	// dir holds the files of this profile's runs.
	dir string
	// runs counts mode start-ups, to give every run fresh directories.
	runs int
	// chosen is the checksum setting cframe's agents ran in its last run.
	chosen string
}

// sites returns both sites, a first.
func (b *bed) sites() [2]*topo.Site { return [2]*topo.Site{b.a, b.b} }

// peer returns the site at the other end from s.
func (b *bed) peer(s *topo.Site) *topo.Site {
	if s == b.a {
		return b.b
	}
	return b.a
}

// dpMode is one way of carrying traffic between the two VPCs.
type dpMode struct {
	name string
	// userspace marks tunnels whose daemons forward every packet.
	userspace bool
	// prepare runs once before all runs (builds, keys) and says which
	// program runs; its error skips the mode with that reason. Optional.
	prepare func(o Options) (about string, err error)
	// about is what prepare said.
	about string
	// up makes host a reach host b through the mode and returns what
	// tears it down completely.
	up func(b *bed) (down func() error, err error)
	// skipped is the reason the mode is not measured, if any.
	skipped string
}

// dataPlaneModes returns the modes in the order each round runs them.
func dataPlaneModes() []*dpMode {
	wg := &wireguardGo{}
	neb := &nebulaMode{}
	ovpn := &openvpnMode{}
	return []*dpMode{
		{name: "direct", up: upDirect},
		{name: "kernel-vxlan", prepare: prepareKernelVXLAN, up: upKernelVXLAN("", false)},
		{name: kernelVXLANFast, prepare: prepareKernelVXLANFast, up: upKernelVXLAN(kernelVXLANFast, false)},
		{name: kernelVXLANCsum, prepare: prepareKernelVXLANCsum, up: upKernelVXLAN(kernelVXLANCsum, false)},
		{name: "cframe", prepare: prepareCframe, up: upCframe(false)},
		{name: kernelVXLAN6Fast, prepare: prepareKernelVXLAN6Fast, up: upKernelVXLAN(kernelVXLANFast, true)},
		{name: cframeUnderlay6, prepare: prepareCframe6, up: upCframe(true)},
		{name: "wireguard-go", userspace: true, prepare: wg.prepare, up: wg.up},
		{name: "nebula", userspace: true, prepare: neb.prepare, up: neb.up},
		{name: "openvpn", userspace: true, prepare: ovpn.prepare, up: ovpn.up},
	}
}

// runCmd runs a program in the benchmark's own namespace (nothing that
// touches the network) and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// need reports the first of the programs that is not installed.
func need(programs ...string) error {
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not installed (scripts/deps.sh bench installs it)", p)
		}
	}
	return nil
}

// upDirect routes each VPC over the underlay without encapsulation: the
// hosts already send to their edge, the edges' default route leads to the
// router, and the router learns both VPCs — the physical limit.
func upDirect(b *bed) (func() error, error) {
	var added []string
	down := func() error {
		var errs []error
		for _, c := range added {
			_, err := b.t.Net.Exec(b.t.Router, "ip", "route", "del", c)
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	for _, s := range b.sites() {
		if _, err := b.t.Net.Exec(b.t.Router, "ip", "route", "add", s.CIDR.String(), "via", s.Underlay().String()); err != nil {
			return nil, errors.Join(err, down())
		}
		added = append(added, s.CIDR.String())
	}
	return down, nil
}

// prepareCframe checks that the programs are built.
func prepareCframe(o Options) (string, error) {
	for _, p := range []string{"cframe-controller", "cframe-edge"} {
		if _, err := os.Stat(filepath.Join(o.Bin, p)); err != nil {
			return "", fmt.Errorf("%s not built (make build): %w", p, err)
		}
	}
	return fmt.Sprintf("the controller and two cframe-edge agents from %s, walkthrough configs: kernel VXLAN, MTU 1450, MSS clamping, "+
		"the checksum setting the agents choose (checksum_offload = auto; which one is reported with the verdicts: fast is kernel-vxlan+fast's, safe kernel-vxlan+csum's), "+
		"receive packet steering on cframe0 where the underlay calls for it (one receive queue for %d CPUs, here on the wire-like underlay; "+
		"a veth without GRO receives on the sending CPUs and gets none)", o.Bin, runtime.NumCPU()), nil
}

// kernelVXLANDevice is the device of the kernel-vxlan modes.
const kernelVXLANDevice = "cfbvx0"

// kernelVXLANCsum and kernelVXLANFast name the kernel-vxlan modes with
// cframe's safe and fast checksum settings.
const (
	kernelVXLANCsum = "kernel-vxlan+csum"
	kernelVXLANFast = "kernel-vxlan+fast"
)

// prepareKernelVXLAN describes the reference mode.
func prepareKernelVXLAN(Options) (string, error) {
	return "the kernel's VXLAN configured by hand with ip and bridge, none of cframe's settings (no receive steering, no firewall, no MSS clamping, " +
		"the kernel's checksum defaults: TCP finds the 1450-byte path MTU by discovery; a Linux NAT in the same kernel breaks its TCP and UDP): " +
		"what the kernel's VXLAN itself costs", nil
}

// prepareKernelVXLANCsum describes the reference mode with the safe
// checksum setting.
func prepareKernelVXLANCsum(Options) (string, error) {
	return "kernel-vxlan plus cframe's safe checksum setting, correct through any NAT: transmit checksum offload off on the VXLAN device and the outer UDP checksum on " +
		"(ethtool -K cfbvx0 tx off, udpcsum), nothing else; beside kernel-vxlan what the safe setting costs", nil
}

// prepareKernelVXLANFast describes the reference mode with the fast
// checksum setting.
func prepareKernelVXLANFast(Options) (string, error) {
	return "kernel-vxlan plus cframe's fast checksum setting: a zero outer UDP checksum (noudpcsum), transmit checksum offload on as by default, nothing else; " +
		"the setting cframe's agents start with, configured by hand", nil
}

// upKernelVXLAN returns the kernel-vxlan modes' start: each edge gets a
// VXLAN device with an address in 10.97.0.0/24, one all-zeros FDB entry
// toward the other edge's public address (ARP works through it) and a
// route to the other VPC via the other edge's address. Over the IPv4
// underlay the device has no fixed local address (an edge behind 1:1 NAT
// does not hold its public one); with v6 it runs over the IPv6 underlay
// as cframe's does there: the edge's IPv6 public address as local address
// (the kernel fixes a VXLAN device's family by it), MTU 1430. setting
// (kernelVXLANCsum, kernelVXLANFast, "": the kernel's defaults) applies
// one of cframe's checksum settings as the agent applies it to the family:
// the fast setting's zero outer checksum is IPv4's, over IPv6 the outer
// checksum stays on (the kernel's default there) and fast is offload on.
func upKernelVXLAN(setting string, v6 bool) func(b *bed) (func() error, error) {
	return func(b *bed) (func() error, error) {
		var made []string
		down := func() error {
			var errs []error
			for _, ns := range made {
				_, err := b.t.Net.Exec(ns, "ip", "link", "del", kernelVXLANDevice)
				errs = append(errs, err)
			}
			return errors.Join(errs...)
		}
		addr := func(s *topo.Site) string {
			if s == b.a {
				return "10.97.0.1"
			}
			return "10.97.0.2"
		}
		for _, s := range b.sites() {
			p := b.peer(s)
			add := []string{"ip", "link", "add", kernelVXLANDevice, "type", "vxlan", "id", "97", "dstport", "4797", "nolearning"}
			mtu, remote := "1450", p.Underlay()
			if v6 {
				add = append(add, "local", s.Underlay6().String())
				mtu, remote = "1430", p.Underlay6()
			}
			cmds := [][]string{
				{"ip", "addr", "add", addr(s) + "/24", "dev", kernelVXLANDevice},
				{"ip", "link", "set", kernelVXLANDevice, "mtu", mtu, "up"},
				{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", kernelVXLANDevice, "dst", remote.String()},
				{"ip", "route", "add", p.CIDR.String(), "via", addr(p), "dev", kernelVXLANDevice},
			}
			switch {
			case setting == kernelVXLANCsum:
				if !v6 {
					add = append(add, "udpcsum")
				}
				cmds = append(cmds, []string{"ethtool", "-K", kernelVXLANDevice, "tx", "off"})
			case setting == kernelVXLANFast && !v6:
				add = append(add, "noudpcsum")
			}
			for i, args := range append([][]string{add}, cmds...) {
				if _, err := b.t.Net.Exec(s.Edge, args...); err != nil {
					return nil, errors.Join(err, down())
				}
				if i == 0 {
					made = append(made, s.Edge)
				}
			}
		}
		return down, nil
	}
}

// upCframe returns the start of the cframe modes: it runs the real
// controller and two cframe-edge agents, adds both edges through the API
// (with v6, by their IPv6 public addresses: the IPv6 underlay), and tears
// down with cframe-edge cleanup.
func upCframe(v6 bool) func(b *bed) (func() error, error) {
	return func(b *bed) (func() error, error) { return startCframe(b, v6) }
}

func startCframe(b *bed, v6 bool) (func() error, error) {
	c, err := cluster.Start(b.t, b.a, cluster.Options{Bin: b.o.Bin, Dir: filepath.Join(b.dir, fmt.Sprintf("cframe-%d", b.runs))})
	if err != nil {
		return nil, err
	}
	var edges []*cluster.Edge
	down := func() error {
		var errs []error
		for _, e := range edges {
			if p := e.Proc(); p != nil {
				p.Stop(5 * time.Second)
			}
		}
		c.StopController()
		for _, e := range edges {
			if out, err := e.Run("cleanup"); err != nil {
				errs = append(errs, fmt.Errorf("%s cleanup: %w: %s", e.Name, err, out))
			}
		}
		return errors.Join(errs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, s := range b.sites() {
		e, err := c.NewEdge(cluster.WalkthroughNames[i], s)
		if err == nil {
			edges = append(edges, e)
			err = e.Start()
		}
		if err == nil {
			spec := e.Spec()
			if v6 {
				spec.HostAddr = netip.AddrPortFrom(s.Underlay6(), cluster.TunnelPort).String()
			}
			_, err = c.API.Add(ctx, spec)
		}
		if err != nil {
			return nil, errors.Join(err, down())
		}
	}
	chosen, err := checksumChosen(edges)
	if err != nil {
		return nil, errors.Join(err, down())
	}
	b.chosen = chosen
	return down, nil
}

// checksumChosen waits for the agents' checksum settings and says which
// they run and why ("sz-1 fast (default), hk-1 fast (default)").
func checksumChosen(edges []*cluster.Edge) (string, error) {
	var out []string
	for _, e := range edges {
		var got string
		if err := topo.Eventually(10*time.Second, func() error {
			s, err := metricstest.Get(e.HTTP(), e.MetricsURL())
			if err != nil {
				return err
			}
			for _, m := range s.Families["cframe_edge_checksum_setting"].GetMetric() {
				if m.GetGauge().GetValue() == 1 {
					labels := map[string]string{}
					for _, l := range m.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					got = fmt.Sprintf("%s %s (%s)", e.Name, labels["setting"], labels["evidence"])
					return nil
				}
			}
			return fmt.Errorf("%s: no checksum setting in its metrics", e.Name)
		}); err != nil {
			return "", err
		}
		out = append(out, got)
	}
	return strings.Join(out, ", "), nil
}

// tunnelRoutes points each edge's route for the other VPC at its tunnel
// device dev(site), with the edge's LAN address as source.
func tunnelRoutes(b *bed, dev func(*topo.Site) string) error {
	for _, s := range b.sites() {
		d := dev(s)
		if err := waitLink(b.t.Net, s.Edge, d, true); err != nil {
			return err
		}
		if _, err := b.t.Net.Exec(s.Edge, "ip", "route", "add", b.peer(s).CIDR.String(), "dev", d, "src", s.EdgeAddr.String()); err != nil {
			return err
		}
	}
	return nil
}

// waitLink waits until a daemon has created link dev in namespace ns and,
// with up, set it up.
func waitLink(n *topo.Net, ns, dev string, up bool) error {
	args := []string{"ip", "link", "show", "dev", dev}
	if up {
		args = append(args, "up")
	}
	return topo.Eventually(10*time.Second, func() error {
		out, err := n.Exec(ns, args...)
		if err == nil && strings.TrimSpace(out) == "" {
			err = fmt.Errorf("%s is down", dev)
		}
		return err
	})
}

// stopAll returns a teardown that stops procs; their tun devices, and the
// routes on them, go away with them.
func stopAll(procs []*topo.Proc) func() error {
	return func() error {
		for _, p := range procs {
			p.Stop(5 * time.Second)
		}
		return nil
	}
}

// wireguardGo is the userspace WireGuard implementation built from the Go
// module proxy, configured with Debian's wg.
type wireguardGo struct {
	bin  string
	keys [2]string // private key files
	pubs [2]string
}

const wgPort = 51820

func (w *wireguardGo) prepare(o Options) (string, error) {
	if err := need("wg", "go"); err != nil {
		return "", err
	}
	gobin := filepath.Join(o.Work, "gobin")
	cmd := exec.Command("go", "install", "golang.zx2c4.com/wireguard@latest")
	cmd.Dir = o.Work
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build wireguard-go from the Go module proxy: %w: %s", err, firstLine(string(out)))
	}
	w.bin = filepath.Join(gobin, "wireguard")
	version := "unknown version"
	if out, err := runCmd("go", "version", "-m", w.bin); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "mod" {
				version = f[2]
			}
		}
	}
	for i := range w.keys {
		priv, err := runCmd("wg", "genkey")
		if err != nil {
			return "", err
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(priv)
		pub, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("wg pubkey: %w", err)
		}
		w.keys[i] = filepath.Join(o.Work, fmt.Sprintf("wg%d.key", i))
		if err := os.WriteFile(w.keys[i], []byte(priv), 0o600); err != nil {
			return "", err
		}
		w.pubs[i] = strings.TrimSpace(string(pub))
	}
	return fmt.Sprintf("golang.zx2c4.com/wireguard %s built from the Go module proxy, configured with Debian's wg (%s); tun MTU 1420", version, debVersion("wireguard-tools")), nil
}

// wgDevice names the tun device of site i. wireguard-go keeps its control
// socket in /var/run/wireguard/<device>.sock, shared by all namespaces, so
// the names must differ between the edges and from anything else.
func wgDevice(i int) string { return fmt.Sprintf("cfbwg%d", i) }

func (w *wireguardGo) up(b *bed) (func() error, error) {
	var procs []*topo.Proc
	for i, s := range b.sites() {
		p, err := b.t.Net.Start(s.Edge, filepath.Join(b.dir, "wireguard-go.log"), w.bin, "-f", wgDevice(i))
		if err != nil {
			return nil, errors.Join(err, stopAll(procs)())
		}
		procs = append(procs, p)
	}
	down := stopAll(procs)
	for i, s := range b.sites() {
		peer := b.peer(s)
		dev := wgDevice(i)
		if err := waitLink(b.t.Net, s.Edge, dev, false); err != nil {
			return nil, errors.Join(err, down())
		}
		for _, args := range [][]string{
			{"wg", "set", dev, "listen-port", fmt.Sprint(wgPort), "private-key", w.keys[i],
				"peer", w.pubs[1-i], "allowed-ips", peer.CIDR.String(), "endpoint", netip.AddrPortFrom(peer.Underlay(), wgPort).String()},
			{"ip", "link", "set", dev, "mtu", "1420", "up"},
		} {
			if _, err := b.t.Net.Exec(s.Edge, args...); err != nil {
				return nil, errors.Join(err, down())
			}
		}
	}
	if err := tunnelRoutes(b, func(s *topo.Site) string { return wgDevice(s.Index) }); err != nil {
		return nil, errors.Join(err, down())
	}
	return down, nil
}

// nebulaMode is Slack's nebula from Debian: a CA, one certificate per edge
// that also covers its VPC (-subnets), and unsafe_routes to the other VPC.
type nebulaMode struct {
	dir string
}

const nebulaPort = 4242

// nebulaAddr is the overlay address of site i.
func nebulaAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}) }

func (m *nebulaMode) prepare(o Options) (string, error) {
	if err := need("nebula", "nebula-cert"); err != nil {
		return "", err
	}
	m.dir = filepath.Join(o.Work, "nebula")
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return "", err
	}
	_, err := runCmd("nebula-cert", "ca", "-name", "cframe-bench", "-duration", "24h",
		"-out-crt", filepath.Join(m.dir, "ca.crt"), "-out-key", filepath.Join(m.dir, "ca.key"))
	return fmt.Sprintf("Debian's nebula %s, static host map, no lighthouse, unsafe_routes to the other VPC; default tun MTU 1300", debVersion("nebula")), err
}

// config writes site i's nebula config (certificate first) and returns its
// path.
func (m *nebulaMode) config(b *bed, i int, s *topo.Site) (string, error) {
	name := fmt.Sprintf("edge%d", i)
	crt, key := filepath.Join(m.dir, name+".crt"), filepath.Join(m.dir, name+".key")
	if _, err := os.Stat(crt); err != nil {
		if _, err := runCmd("nebula-cert", "sign", "-name", name, "-ip", netip.PrefixFrom(nebulaAddr(i), 24).String(),
			"-subnets", s.CIDR.String(), "-ca-crt", filepath.Join(m.dir, "ca.crt"), "-ca-key", filepath.Join(m.dir, "ca.key"),
			"-out-crt", crt, "-out-key", key); err != nil {
			return "", err
		}
	}
	peer := b.peer(s)
	cfg := fmt.Sprintf(`pki:
  ca: %s
  cert: %s
  key: %s
static_host_map:
  "%s": ["%s"]
lighthouse:
  am_lighthouse: false
listen:
  host: 0.0.0.0
  port: %d
punchy:
  punch: false
tun:
  dev: cfbneb%d
  unsafe_routes:
    - route: %s
      via: %s
logging:
  level: info
firewall:
  outbound:
    - {port: any, proto: any, host: any}
  inbound:
    - {port: any, proto: any, host: any}
`, filepath.Join(m.dir, "ca.crt"), crt, key,
		nebulaAddr(peer.Index), netip.AddrPortFrom(peer.Underlay(), nebulaPort),
		nebulaPort, i, peer.CIDR, nebulaAddr(peer.Index))
	path := filepath.Join(m.dir, name+".yml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

func (m *nebulaMode) up(b *bed) (func() error, error) {
	var procs []*topo.Proc
	for i, s := range b.sites() {
		cfg, err := m.config(b, i, s)
		if err == nil {
			var p *topo.Proc
			p, err = b.t.Net.Start(s.Edge, filepath.Join(b.dir, "nebula.log"), "nebula", "-config", cfg)
			procs = append(procs, p)
		}
		if err != nil {
			return nil, errors.Join(err, stopAll(procs)())
		}
	}
	// nebula installs the unsafe_routes itself.
	down := stopAll(procs)
	for i, s := range b.sites() {
		if err := waitLink(b.t.Net, s.Edge, fmt.Sprintf("cfbneb%d", i), true); err != nil {
			return nil, errors.Join(err, down())
		}
	}
	return down, nil
}

// openvpnMode is OpenVPN from Debian in static-key point-to-point mode with
// an explicit cipher, otherwise at its defaults (tun-mtu 1500, mssfix).
type openvpnMode struct {
	key string
}

const (
	openvpnPort   = 1194
	openvpnCipher = "AES-256-CBC"
	openvpnAuth   = "SHA256"
)

func (m *openvpnMode) prepare(o Options) (string, error) {
	if err := need("openvpn"); err != nil {
		return "", err
	}
	m.key = filepath.Join(o.Work, "openvpn.key")
	_, err := runCmd("openvpn", "--genkey", "secret", m.key)
	return fmt.Sprintf("Debian's openvpn %s, static key, --cipher %s --auth %s, no DCO, otherwise defaults (tun MTU 1500, mssfix)", debVersion("openvpn"), openvpnCipher, openvpnAuth), err
}

// openvpnAddr is the point-to-point address of site i.
func openvpnAddr(i int) string { return fmt.Sprintf("10.98.0.%d", i+1) }

func (m *openvpnMode) up(b *bed) (func() error, error) {
	var procs []*topo.Proc
	for i, s := range b.sites() {
		peer := b.peer(s)
		p, err := b.t.Net.Start(s.Edge, filepath.Join(b.dir, "openvpn.log"), "openvpn",
			"--dev", fmt.Sprintf("cfbovpn%d", i), "--dev-type", "tun", "--proto", "udp",
			"--lport", fmt.Sprint(openvpnPort), "--remote", peer.Underlay().String(), fmt.Sprint(openvpnPort),
			"--ifconfig", openvpnAddr(i), openvpnAddr(peer.Index),
			"--secret", m.key, fmt.Sprint(i), "--cipher", openvpnCipher, "--auth", openvpnAuth,
			"--disable-dco", "--verb", "3")
		if err != nil {
			return nil, errors.Join(err, stopAll(procs)())
		}
		procs = append(procs, p)
	}
	down := stopAll(procs)
	if err := tunnelRoutes(b, func(s *topo.Site) string { return fmt.Sprintf("cfbovpn%d", s.Index) }); err != nil {
		return nil, errors.Join(err, down())
	}
	return down, nil
}

// debVersion returns the installed version of a Debian package.
func debVersion(pkg string) string {
	out, err := runCmd("dpkg-query", "-W", "-f", "${Version}", pkg)
	if err != nil {
		return "(version unknown)"
	}
	return strings.TrimSpace(out)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}
