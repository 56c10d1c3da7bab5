package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/scripts/cluster"
)

const e2eToken = "e2e-api-token-9f3c"

// refusalLine is the agent's one log line for a controller that failed
// verification.
const refusalLine = "refused the controller; kernel state stays as applied"

// The control channel across the underlay: TLS from the first byte, the
// controller trusted through the join secret alone, the API HTTPS off
// loopback — and the walkthrough unchanged on loopback.
func TestControlChannelTLS(t *testing.T) {
	f := newFixtureWith(t, cluster.Options{APIToken: e2eToken})
	sz, hk, gz := f.site("sz-1"), f.site("hk-1"), f.site("gz-3")
	all := []*topo.Site{sz, hk, gz}
	names := cluster.WalkthroughNames
	ctlAddr := f.c.ControllerAddr()

	t.Run("the walkthrough's three curl calls on loopback", func(t *testing.T) {
		for i, name := range names {
			s := f.site(name)
			body := fmt.Sprintf(`{"name": %q, "hostaddr": "%s:%d", "cidr": %q}`, name, s.Underlay(), cluster.TunnelPort, s.CIDR)
			out, err := f.net.Exec(sz.Edge, "curl", fmt.Sprintf("http://127.0.0.1:%d/api-service/v1/edge/add", cluster.APIPort),
				"-X", "POST", "-d", body, "-H", "Content-Type: application/json")
			if err != nil || !strings.Contains(out, `"message": "edge `+name+` added"`) {
				t.Fatalf("curl %d: %v\n%s", i+1, err, out)
			}
		}
		// The fixture's gz-3 also has a k8s pod range: its own update.
		f.converge("walkthrough over curl, bus over TLS", f.add("gz-3"), all...)
	})

	t.Run("the underlay carries nothing of the edge set in the clear", func(t *testing.T) {
		capture, err := topo.StartCapture(hk.Edge, topo.EdgeWAN)
		if err != nil {
			t.Fatal(err)
		}
		// Captured: a change arriving as a delta, a restarted agent's TLS
		// handshake and snapshot, another delta, and heartbeats.
		extra := edgeset.Spec{Name: "bj-9", HostAddr: "198.18.99.10:58423", CIDR: "10.99.0.0/24", ExtraCIDRs: []string{"10.98.0.0/24"}}
		res, err := f.c.API.Add(f.ctx, extra)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(res.Revision, "hk-1")
		e := f.edges["hk-1"]
		e.Proc().Stop(5 * time.Second)
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		if res, err = f.c.API.Del(f.ctx, extra.Name); err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(res.Revision, "hk-1")
		flows, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}

		var needles []string
		for _, s := range all {
			needles = append(needles, s.CIDR.String(), s.Underlay().String(), fmt.Sprintf("%s:%d", s.Underlay(), cluster.TunnelPort))
		}
		needles = append(needles, extra.CIDR, extra.ExtraCIDRs[0], extra.HostAddr, "198.18.99.10", extra.Name)
		ctl := netip.MustParseAddrPort(ctlAddr)
		var toCtl, fromCtl, handshakes int
		for fl, b := range flows {
			switch ctl {
			case fl.Dst:
				toCtl += len(b)
				if len(b) > 2 && b[0] == 0x16 && b[1] == 0x03 {
					handshakes++ // a connection captured from its first byte starts with a TLS handshake record
				}
			case fl.Src:
				fromCtl += len(b)
			default:
				continue
			}
			for _, n := range needles {
				if strings.Contains(string(b), n) {
					t.Errorf("%q crossed the underlay in the clear (flow %s)", n, fl)
				}
			}
		}
		// The capture saw the control channel: a snapshot's worth from the
		// controller, and the new connection beginning with TLS.
		if fromCtl < 1500 || toCtl < 500 || handshakes == 0 {
			t.Fatalf("capture saw %d bytes from and %d to the controller, %d connections from their first byte: not the control channel", fromCtl, toCtl, handshakes)
		}
		t.Logf("captured %d bytes from and %d to the controller at %s on %s's underlay; none of %d needles in the clear", fromCtl, toCtl, ctlAddr, hk.Name, len(needles))
	})

	t.Run("a plaintext NATS client is refused", func(t *testing.T) {
		conn, err := topo.Dialer{NS: gz.Edge}.Dial("tcp", ctlAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "CONNECT {\"verbose\":false,\"user\":\"cframe-audit\",\"pass\":\"x\"}\r\nPING\r\nSUB cframe.v1.> 1\r\n"); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server kept a plaintext client connected for 10 s (read %q)", got)
		}
		if strings.Contains(string(got), "PONG") || strings.Contains(string(got), "INFO") || strings.Contains(string(got), "MSG") {
			t.Fatalf("a plaintext client got an answer: %q", got)
		}
		// A stock NATS client without TLS gets no greeting at all.
		_, err = nats.Connect("nats://"+ctlAddr, nats.SetCustomDialer(topo.Dialer{NS: gz.Edge}), nats.Timeout(2*time.Second), nats.MaxReconnects(0))
		if err == nil {
			t.Fatal("a NATS client without TLS connected")
		}
		t.Logf("plaintext client: connection closed after %d bytes; nats.go without TLS: %v", len(got), err)
	})

	t.Run("off loopback the API is HTTPS with the token", func(t *testing.T) {
		url := "http://" + f.c.APIAddr() + api.PathList
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+e2eToken)
		plain := &http.Client{Transport: &http.Transport{DialContext: topo.Dialer{NS: hk.Edge}.DialContext}, Timeout: 10 * time.Second}
		resp, err := plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "use https://"+f.c.APIAddr()) {
			t.Fatalf("plain HTTP off loopback: %d %s, want 400 saying to use https", resp.StatusCode, b)
		}

		list, err := f.c.RemoteAPI(hk.Edge, bus.Trust{Secret: f.c.Secret()}).List(f.ctx)
		if err != nil || len(list) != 3 {
			t.Fatalf("HTTPS with the token: %d edges, %v", len(list), err)
		}
		noToken := f.c.RemoteAPI(hk.Edge, bus.Trust{Secret: f.c.Secret()})
		noToken.Token = ""
		var se *api.StatusError
		if _, err := noToken.List(f.ctx); !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
			t.Fatalf("HTTPS without the token: %v, want 401", err)
		}
		var refused *bus.RefusedError
		if _, err := f.c.RemoteAPI(hk.Edge, bus.Trust{Secret: "not-the-secret"}).List(f.ctx); !errors.As(err, &refused) {
			t.Fatalf("HTTPS trusting another secret: %v, want the controller refused", err)
		}

		// cframectl from another VPC: by fingerprint, by secret; the audit
		// stream over the same TLS.
		fp, err := runLocal(filepath.Join(bin, "cframe-controller"), "fingerprint", "-c", filepath.Join(filepath.Dir(f.c.ControllerDir()), "controller.toml"))
		if err != nil || !strings.HasPrefix(fp, "sha256:") {
			t.Fatalf("cframe-controller fingerprint: %v %q", err, fp)
		}
		ctl := func(args ...string) (string, error) {
			return f.net.Exec(hk.Edge, append([]string{filepath.Join(bin, "cframectl"), "--api", "https://" + f.c.APIAddr(), "--token", e2eToken}, args...)...)
		}
		for _, trust := range [][]string{{"--fingerprint", strings.TrimSpace(fp)}, {"--secret", f.c.Secret()}} {
			if out, err := ctl(append(trust, "edge", "list")...); err != nil || !strings.Contains(out, "gz-3") {
				t.Fatalf("cframectl %s edge list: %v\n%s", trust[0], err, out)
			}
		}
		out, err := ctl("edge", "list")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); err == nil || len(lines) != 1 || !strings.Contains(out, "system's CAs") {
			t.Fatalf("cframectl without a way to verify: %v, want one line naming the missing trust:\n%s", err, out)
		}
		evLog := filepath.Join(t.TempDir(), "events.log")
		events, err := f.net.Start(hk.Edge, evLog, filepath.Join(bin, "cframectl"), "--api", "https://"+f.c.APIAddr(), "--token", e2eToken,
			"--secret", f.c.Secret(), "events", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		defer events.Stop(time.Second)
		logHas := func(want string) func() error {
			return func() error {
				if b, _ := os.ReadFile(evLog); !strings.Contains(string(b), want) {
					return fmt.Errorf("events log lacks %s:\n%s", want, b)
				}
				return nil
			}
		}
		if err := topo.Eventually(10*time.Second, logHas("following cframe.v1.events.>")); err != nil {
			t.Fatal(err)
		}
		spec := f.edges["gz-3"].Spec()
		spec.Comment = "seen by a remote auditor"
		if _, err := f.c.API.Add(f.ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := topo.Eventually(10*time.Second, logHas(`"kind":"updated","edge":"gz-3"`)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a new certificate needs no edge touched", func(t *testing.T) {
		cfgPath := filepath.Join(filepath.Dir(f.c.ControllerDir()), "controller.toml")
		before, _ := runLocal(filepath.Join(bin, "cframe-controller"), "fingerprint", "-c", cfgPath)
		for _, name := range []string{"key.pem", "cert.pem"} {
			if err := os.Remove(filepath.Join(f.c.ControllerDir(), "tls", name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := syscall.Kill(f.c.Controller().Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var after string
		if err := topo.Eventually(5*time.Second, func() (err error) {
			after, err = runLocal(filepath.Join(bin, "cframe-controller"), "fingerprint", "-c", cfgPath)
			if err == nil && after == before {
				err = errors.New("fingerprint unchanged")
			}
			return err
		}); err != nil {
			t.Fatalf("SIGHUP did not make a new key: %v", err)
		}
		if _, err := f.c.RemoteAPI(hk.Edge, bus.Trust{Fingerprint: after}).List(f.ctx); err != nil {
			t.Fatalf("the API does not serve the new certificate: %v", err)
		}
		// Every edge reconnects to it by itself (the restart drops their
		// connections) and follows the next change.
		f.c.StopController()
		if err := f.c.StartController(); err != nil {
			t.Fatal(err)
		}
		spec := f.edges["hk-1"].Spec()
		spec.Comment = "after the new certificate"
		res, err := f.c.API.Add(f.ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(res.Revision, names...)
		for _, name := range names {
			if b, _ := os.ReadFile(f.edges[name].Log); strings.Contains(string(b), refusalLine) {
				t.Errorf("%s refused the controller's new certificate", name)
			}
		}
	})

	t.Run("a rogue controller at the controller's address is refused by every edge, kernel untouched", func(t *testing.T) {
		before := map[string]string{}
		for _, s := range all {
			before[s.Name] = f.kernelState(s.Edge)
		}
		ctlIP := netip.MustParseAddrPort(ctlAddr).Addr()
		// 1. On the path: a namespace takes over the controller's address
		// in the underlay router (as a hijacked route or spoofed ARP
		// would), running a controller of its own: its own certificate,
		// made with its own join secret, and an edge set that points sz-1's
		// network at itself.
		rogueNS, err := f.net.NS("rogue")
		if err != nil {
			t.Fatal(err)
		}
		if err := f.net.Veth(topo.End{NS: f.topo.Router, Name: "rg0", Addr: netip.MustParsePrefix("100.64.0.1/30")},
			topo.End{NS: rogueNS, Name: "eth0", Addr: netip.MustParsePrefix("100.64.0.2/30")}); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []struct {
			ns   string
			args []string
		}{
			{rogueNS, []string{"ip", "addr", "add", ctlIP.String() + "/32", "dev", "eth0"}},
			{rogueNS, []string{"ip", "route", "add", "default", "via", "100.64.0.1"}},
			{f.topo.Router, []string{"ip", "route", "add", ctlIP.String() + "/32", "via", "100.64.0.2"}},
		} {
			if _, err := f.net.Exec(cmd.ns, cmd.args...); err != nil {
				t.Fatal(err)
			}
		}
		rogue1 := f.startRogue(rogueNS, "rogue1", "")
		f.waitRefused(rogue1, rogueNS, "proof of the join secret does not match", hk, gz)

		// 2. Beside sz-1 (which shares its host with the controller, out of
		// any path's reach), the controller gone and a rogue in its place
		// whose certificate carries the real certificate's proofs for its
		// own key.
		f.c.StopController()
		rogue2 := f.startRogue(sz.Edge, "rogue2", f.replayedCert())
		f.waitRefused(rogue2, sz.Edge, "proof of the join secret does not match", sz)

		for _, s := range all {
			if after := f.kernelState(s.Edge); after != before[s.Name] {
				t.Errorf("%s's kernel changed while a rogue answered:\nbefore:\n%s\nafter:\n%s", s.Name, before[s.Name], after)
			}
		}
		if err := f.reachable(hk, gz); err != nil {
			t.Errorf("traffic between the hijacked edges stopped: %v", err)
		}

		// The real controller back: every edge follows it again.
		rogue2.proc.Stop(5 * time.Second)
		rogue1.proc.Stop(5 * time.Second)
		if _, err := f.net.Exec(f.topo.Router, "ip", "route", "del", ctlIP.String()+"/32"); err != nil {
			t.Fatal(err)
		}
		if err := f.c.StartController(); err != nil {
			t.Fatal(err)
		}
		spec := f.edges["sz-1"].Spec()
		spec.Comment = "after the rogue"
		res, err := f.c.API.Add(f.ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		f.appliedEverywhere(res.Revision, names...)
		if err := f.reachable(all...); err != nil {
			t.Fatal(err)
		}
	})
}

// runLocal runs a program that only reads files (no network) and returns
// its trimmed output.
func runLocal(prog string, args ...string) (string, error) {
	out, err := exec.Command(prog, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// rogue is a cframe-controller that is not ours.
type rogue struct {
	proc *topo.Proc
	log  string
	api  *api.Client
}

// startRogue runs a cframe-controller of its own (own data_dir and join
// secret; certFiles, when set, is its tls_cert/tls_key lines) at the
// controller's port in namespace ns, with an edge set that hijacks sz-1.
func (f *fixture) startRogue(ns, name, certFiles string) *rogue {
	f.t.Helper()
	dir := filepath.Join(runDir(f.t), name)
	cfg := filepath.Join(dir, "controller.toml")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	body := fmt.Sprintf("listen_addr=\":%d\"\napi_addr=\"127.0.0.1:%d\"\ndata_dir=%q\n%s", cluster.NATSPort, cluster.APIPort, filepath.Join(dir, "data"), certFiles)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		f.t.Fatal(err)
	}
	r := &rogue{log: filepath.Join(dir, "rogue.log")}
	p, err := f.net.Start(ns, r.log, filepath.Join(bin, "cframe-controller"), "-c", cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	r.proc = p
	f.t.Cleanup(func() { p.Stop(5 * time.Second) })
	r.api = api.NewClient(fmt.Sprintf("http://127.0.0.1:%d", cluster.APIPort), "")
	r.api.Trust(bus.Trust{}, topo.Dialer{NS: ns})
	if err := topo.Eventually(20*time.Second, func() error {
		select {
		case <-p.Done():
			b, _ := os.ReadFile(r.log)
			return fmt.Errorf("rogue exited: %s", b)
		default:
		}
		_, err := r.api.List(f.ctx)
		return err
	}); err != nil {
		f.t.Fatal(err)
	}
	hijack := f.edges["sz-1"].Spec()
	hijack.HostAddr = "100.64.0.2:58423"
	for _, s := range []edgeset.Spec{hijack, f.edges["hk-1"].Spec(), f.edges["gz-3"].Spec()} {
		if _, err := r.api.Add(f.ctx, s); err != nil {
			f.t.Fatal(err)
		}
	}
	return r
}

// replayedCert writes a certificate that copies the real controller's
// (its proofs and validity) for a key of the attacker's, and returns the
// tls_cert/tls_key lines naming it.
func (f *fixture) replayedCert() string {
	f.t.Helper()
	real, err := embedded.ReadCertificate(embedded.CertSource{Dir: filepath.Join(f.c.ControllerDir(), "tls")})
	if err != nil {
		f.t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(666), Subject: pkix.Name{CommonName: "cframe-controller"}, NotBefore: real.NotBefore, NotAfter: real.NotAfter,
		URIs: real.URIs, DNSNames: real.DNSNames, IPAddresses: real.IPAddresses, ExtKeyUsage: real.ExtKeyUsage, KeyUsage: real.KeyUsage}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		f.t.Fatal(err)
	}
	dir := f.t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for path, blk := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	return fmt.Sprintf("tls_cert=%q\ntls_key=%q\n", certFile, keyFile)
}

// handshakeFailed matches the rogue's NATS server logging a failed TLS
// handshake from a client address.
var handshakeFailed = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+):\d+ - cid:\d+ - .*TLS handshake error`)

// waitRefused waits until the rogue has failed at least three handshakes
// with each site's edge, then checks that each edge logged exactly one
// refusal naming the controller's address and why, and that the rogue saw
// no edge get as far as authenticating.
func (f *fixture) waitRefused(r *rogue, ns, why string, sites ...*topo.Site) {
	f.t.Helper()
	var seen map[string]int
	err := topo.Eventually(30*time.Second, func() error {
		b, _ := os.ReadFile(r.log)
		seen = map[string]int{}
		for _, m := range handshakeFailed.FindAllStringSubmatch(string(b), -1) {
			seen[m[1]]++
		}
		for _, s := range sites {
			if n := seen[s.Underlay().String()]; n < 3 {
				return fmt.Errorf("rogue failed %d handshakes with %s, want 3 (handshakes seen: %v)", n, s.Name, seen)
			}
		}
		return nil
	})
	if err != nil {
		b, _ := os.ReadFile(r.log)
		f.t.Fatalf("%v\nrogue log:\n%s", err, b)
	}
	for _, s := range sites {
		name := f.nameOf(s)
		b, _ := os.ReadFile(f.edges[name].Log)
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, refusalLine) {
				lines = append(lines, l)
			}
		}
		last := ""
		if len(lines) > 0 {
			last = lines[len(lines)-1]
		}
		if !strings.Contains(last, "controller="+f.c.ControllerAddr()) || !strings.Contains(last, why) {
			f.t.Errorf("%s: last refusal %q, want one naming %s and %q", name, last, f.c.ControllerAddr(), why)
		}
		f.t.Logf("%s refused the rogue %d times, logged: %s", name, seen[s.Underlay().String()], strings.TrimSpace(last))
		// One line for many attempts (earlier subtests logged none).
		if len(lines) != 1 {
			f.t.Errorf("%s logged %d refusal lines for one rogue, want 1:\n%s", name, len(lines), strings.Join(lines, "\n"))
		}
	}
	if b, _ := os.ReadFile(r.log); strings.Contains(string(b), "refused bus connection") {
		f.t.Errorf("an edge reached the rogue's authentication:\n%s", b)
	}
	tp, err := r.api.Topology(f.ctx)
	if err != nil || len(tp.Pending) > 0 {
		f.t.Errorf("rogue's topology: pending %v (%v), want no edge connected", tp.Pending, err)
	}
	for _, e := range tp.Edges {
		if e.State != api.StateOffline {
			f.t.Errorf("edge %s is %s at the rogue", e.Name, e.State)
		}
	}
}

func (f *fixture) nameOf(s *topo.Site) string {
	for name, e := range f.edges {
		if e.Site == s {
			return name
		}
	}
	f.t.Fatalf("no edge for site %s", s.Name)
	return ""
}
