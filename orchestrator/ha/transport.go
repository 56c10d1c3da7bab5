package ha

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cframe/cframe/orchestrator/mesh"
)

// Port is the UDP port of HA messages. They travel inside the tunnel,
// between the agents' link-local addresses (mesh.LinkLocal) on the tunnel
// device, so no firewall or NAT sees this port.
const Port = 58425

// Transport sends and receives HA messages through the tunnel. Only
// messages that arrive on the tunnel device from a link-local address and
// carry the join secret's tag are delivered.
type Transport struct {
	dev   string
	codec Codec
	log   *slog.Logger
	f     *os.File
	rc    syscall.RawConn
	in    chan Message
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	index int // of dev; 0: look it up
}

// Listen opens the HA socket in the calling thread's network namespace.
func Listen(dev, secret string, log *slog.Logger) (*Transport, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("ha: socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ha: socket option: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: Port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ha: bind udp [::]:%d: %w", Port, err)
	}
	f := os.NewFile(uintptr(fd), "ha")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	t := &Transport{dev: dev, codec: NewCodec(secret), log: log, f: f, rc: rc, in: make(chan Message, 256), done: make(chan struct{})}
	go t.read()
	return t, nil
}

// Messages delivers the authenticated messages received.
func (t *Transport) Messages() <-chan Message { return t.in }

// Close stops the transport.
func (t *Transport) Close() {
	t.once.Do(func() {
		close(t.done)
		t.f.Close()
	})
}

// Send seals m and sends it to the named edge's agent.
func (t *Transport) Send(to string, m Message) error {
	b, err := t.codec.Seal(m)
	if err != nil {
		return err
	}
	idx, err := t.devIndex(false)
	if err != nil {
		return err
	}
	sa := &unix.SockaddrInet6{Port: Port, Addr: mesh.LinkLocal(to).As16(), ZoneId: uint32(idx)}
	var serr error
	err = t.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, sa)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.mu.Lock()
		t.index = 0 // the device may have been recreated
		t.mu.Unlock()
		return fmt.Errorf("ha: send %s to %s: %w", m.Kind, to, err)
	}
	return nil
}

// devIndex returns the tunnel device's index, asked of the socket (so in
// its namespace) once, and again when fresh is set.
func (t *Transport) devIndex(fresh bool) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.index != 0 && !fresh {
		return t.index, nil
	}
	ifr, err := unix.NewIfreq(t.dev)
	if err != nil {
		return 0, err
	}
	var ierr error
	if err := t.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFINDEX, ifr) }); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, fmt.Errorf("ha: tunnel device %s: %w", t.dev, ierr)
	}
	t.index = int(ifr.Uint32())
	return t.index, nil
}

func (t *Transport) read() {
	buf := make([]byte, MaxMessage+1)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		if err := t.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return // closed
		}
		sa, ok := from.(*unix.SockaddrInet6)
		if rerr != nil || !ok || n > MaxMessage || !netip.AddrFrom16(sa.Addr).IsLinkLocalUnicast() || !t.fromTunnel(int(sa.ZoneId)) {
			continue
		}
		m, err := t.codec.Open(buf[:n])
		if err != nil {
			t.log.Warn("ignored HA message", "from", netip.AddrFrom16(sa.Addr), "err", err)
			continue
		}
		if mesh.LinkLocal(m.From) != netip.AddrFrom16(sa.Addr) {
			t.log.Warn("ignored HA message: sender and address disagree", "from", m.From, "addr", netip.AddrFrom16(sa.Addr))
			continue
		}
		select {
		case t.in <- m:
		case <-t.done:
			return
		default:
			t.log.Warn("HA message queue full: dropped one", "kind", m.Kind, "from", m.From)
		}
	}
}

// fromTunnel reports whether interface index i is the tunnel device.
func (t *Transport) fromTunnel(i int) bool {
	if idx, err := t.devIndex(false); err == nil && idx == i {
		return true
	}
	idx, err := t.devIndex(true)
	return err == nil && idx == i
}
