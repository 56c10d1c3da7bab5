// Package etcdtest runs a real, single-member etcd for tests. It needs the
// etcd binary from Debian's etcd-server package and skips the test when it is
// missing.
package etcdtest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is an etcd process that the test's cleanup kills.
type Server struct {
	// Endpoint is the client address, "127.0.0.1:<port>".
	Endpoint string

	name, dataDir, peer string
	cmd                 *exec.Cmd
	exited              chan struct{}
}

// Start runs etcd on a fresh data directory and returns its client endpoint.
func Start(t testing.TB) string {
	return New(t).Endpoint
}

// New runs etcd on a fresh data directory and waits until it serves.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		Endpoint: freeAddr(t),
		name:     fmt.Sprintf("cframe-test-%d", time.Now().UnixNano()),
		dataDir:  t.TempDir(),
		peer:     freeAddr(t),
	}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

// Restart kills etcd and starts it again on the same data directory and
// ports, as a crash and restart would.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// Stop kills etcd and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.exited
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not found: install the etcd-server package (apt-get install etcd-server)")
	}
	client, peer := "http://"+s.Endpoint, "http://"+s.peer
	out := &syncBuffer{}
	cmd := exec.Command(bin,
		"--name", s.name,
		"--data-dir", filepath.Join(s.dataDir, "etcd"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", s.name+"="+peer,
		"--logger", "zap",
		"--log-level", "warn",
	)
	// etcd 3.4 refuses to start on arm64 without this; amd64 ignores it.
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	cmd.Stdout, cmd.Stderr = out, out
	// Die with the test binary even if it never runs its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited

	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	hc := http.Client{Timeout: time.Second}
	for {
		if resp, err := hc.Get(client + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-tick.C:
		case <-exited:
			t.Fatalf("etcd exited before serving: %v\n%s", cmd.ProcessState, out)
		case <-deadline:
			s.Stop()
			t.Fatalf("etcd not healthy on %s after 30s\n%s", client, out)
		}
	}
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer collects etcd's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
