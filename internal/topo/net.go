// Package topo builds network-namespace topologies for cframe's tests, the
// demo and the benchmarks.
//
// A Net is a set of namespaces named "<prefix>-<role>" plus the processes
// started in them; Close removes all of it. Links are always created directly
// inside the namespaces (never in the caller's namespace), no address is ever
// assigned outside them, and no route leads out of them, so nothing a
// topology does is visible to, or reaches, the host. Every name carries the
// caller's prefix, so concurrent test binaries never collide; pick one with
// UniquePrefix.
//
// Everything here needs root and iproute2 ("ip"); Ping needs iputils ping.
package topo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Net is a set of network namespaces sharing one name prefix, plus the
// processes started in them. The zero value is not usable; call New.
type Net struct {
	prefix string

	mu     sync.Mutex
	ns     []string
	procs  []*Proc
	closed bool
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// UniquePrefix returns short followed by 6 random hex digits, e.g.
// "cf3fa9c1": a prefix no concurrent run will pick.
func UniquePrefix(short string) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return short + hex.EncodeToString(b)
}

// New returns an empty Net whose namespaces will be named "<prefix>-<role>".
// prefix must be 1-16 lower-case letters and digits, starting with a letter.
func New(prefix string) (*Net, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("topo: bad prefix %q (want 1-16 of [a-z0-9], starting with a letter)", prefix)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("topo: network namespaces need root")
	}
	return &Net{prefix: prefix}, nil
}

// Prefix returns the prefix shared by every namespace of n.
func (n *Net) Prefix() string { return n.prefix }

// NSName returns the namespace name of role without creating it.
func (n *Net) NSName(role string) string { return n.prefix + "-" + role }

// NS creates the namespace "<prefix>-<role>" with its loopback up and returns
// its name. Asking for a role that n already created returns the same name.
func (n *Net) NS(role string) (string, error) {
	name := n.NSName(role)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return "", errors.New("topo: net is closed")
	}
	for _, have := range n.ns {
		if have == name {
			return name, nil
		}
	}
	if _, err := run("ip", "netns", "add", name); err != nil {
		return "", err
	}
	n.ns = append(n.ns, name)
	if _, err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return name, nil
}

// End is one side of a veth pair: the namespace, the interface name (at
// most 15 characters) and an optional address with prefix length.
type End struct {
	NS   string
	Name string
	Addr netip.Prefix
}

// Veth connects a and b with a veth pair created directly inside their
// namespaces, assigns the addresses that are valid and sets both ends up.
func (n *Net) Veth(a, b End) error {
	for _, e := range []End{a, b} {
		if len(e.Name) == 0 || len(e.Name) > 15 {
			return fmt.Errorf("topo: bad interface name %q (1-15 characters)", e.Name)
		}
	}
	if _, err := run("ip", "-n", a.NS, "link", "add", a.Name, "type", "veth", "peer", "name", b.Name, "netns", b.NS); err != nil {
		return err
	}
	for _, e := range []End{a, b} {
		if e.Addr.IsValid() {
			if _, err := run("ip", "-n", e.NS, "addr", "add", e.Addr.String(), "dev", e.Name); err != nil {
				return err
			}
		}
		if _, err := run("ip", "-n", e.NS, "link", "set", e.Name, "up"); err != nil {
			return err
		}
	}
	return nil
}

// Exec runs args inside namespace ns ("ip netns exec") and returns its
// combined output; a non-zero exit is an error that includes the output.
func (n *Net) Exec(ns string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// Ping sends count echo requests from namespace ns to addr and succeeds when
// all of them are answered within timeout.
func (n *Net) Ping(ns string, addr netip.Addr, count int, timeout time.Duration) error {
	secs := int((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	_, err := n.Exec(ns, "ping", "-n", "-q", "-i", "0.2", "-c", strconv.Itoa(count), "-w", strconv.Itoa(secs), addr.String())
	return err
}

// Counter reads one counter of namespace ns's /proc/net/snmp, named as
// nstat names it: "UdpInCsumErrors" is the InCsumErrors column of the Udp
// lines.
func (n *Net) Counter(ns, name string) (int64, error) {
	out, err := n.Exec(ns, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		head, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(head) == 0 || len(head) != len(vals) || head[0] != vals[0] || !strings.HasPrefix(name, strings.TrimSuffix(head[0], ":")) {
			continue
		}
		for j, h := range head[1:] {
			if strings.TrimSuffix(head[0], ":")+h == name {
				return strconv.ParseInt(vals[j+1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("topo: no counter %s in %s's /proc/net/snmp", name, ns)
}

// Start runs args inside namespace ns in the background, with stdout and
// stderr appended to logfile (discarded when logfile is empty). The process is
// tracked: Close stops it if it is still running.
func (n *Net) Start(ns, logfile string, args ...string) (*Proc, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("topo: net is closed")
	}
	var out io.Writer = io.Discard
	var f *os.File
	if logfile != "" {
		var err error
		f, err = os.OpenFile(logfile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		out = f
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group, so a signal from the terminal to the test binary
	// does not reach it before Close does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("topo: start %v in %s: %w", args, ns, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{}), name: strings.Join(args, " ")}
	go func() {
		p.err = cmd.Wait()
		if f != nil {
			f.Close()
		}
		close(p.done)
	}()
	n.procs = append(n.procs, p)
	return p, nil
}

// Close stops every process started by n, kills anything else still running
// in its namespaces and deletes them. It is idempotent and safe to call after
// a partial setup failure (e.g. from t.Cleanup).
func (n *Net) Close() error {
	n.mu.Lock()
	procs, nss := n.procs, n.ns
	n.procs, n.ns, n.closed = nil, nil, true
	n.mu.Unlock()

	var errs []error
	for _, p := range procs {
		p.Stop(2 * time.Second)
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNS(nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CleanupPrefix deletes every namespace whose name starts with prefix
// (killing the processes inside it first): the leftovers of an interrupted
// run. The empty prefix is refused.
func CleanupPrefix(prefix string) error {
	if prefix == "" {
		return errors.New("topo: refusing to clean up the empty prefix")
	}
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := deleteNS(e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// deleteNS kills whatever runs in namespace name, then deletes it.
func deleteNS(name string) error {
	if out, err := run("ip", "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(out) {
			// A thread of this very process may sit in the namespace
			// (see Do); never kill ourselves.
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if _, err := run("ip", "netns", "del", name); err != nil {
		if _, statErr := os.Stat("/run/netns/" + name); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return nil
}

// Proc is a background process started by Net.Start.
type Proc struct {
	cmd  *exec.Cmd
	name string
	done chan struct{}
	err  error
}

// String names the process by its command line.
func (p *Proc) String() string { return p.name }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then sends
// SIGKILL. It returns once the process has exited.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Proc) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Eventually calls fn until it returns nil or timeout has passed, pausing
// briefly between calls; it returns nil or fn's last error.
func Eventually(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run executes a command with a generous timeout and returns its combined
// output; errors include the command line and the output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
