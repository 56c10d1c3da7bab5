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
// device, so no firewall or NAT sees this port there; the gateways of one
// site also talk over their LAN (the security group must let the LAN's
// UDP port 58425 in).
const Port = 58425

// Transport sends and receives HA messages through the tunnel and over the
// LAN. Only messages that carry the join secret's tag, and through the
// tunnel only those that arrive on the tunnel device from the link-local
// address of the edge they name as sender, are delivered.
type Transport struct {
	dev     string
	codec   Codec
	log     *slog.Logger
	tun     *udpSocket // IPv6, through the tunnel
	lan     *udpSocket // IPv4, over the LAN (nil when it cannot be opened)
	in      chan Message
	done    chan struct{}
	once    sync.Once
	lanOnce sync.Once

	mu    sync.Mutex
	index int // of dev; 0: look it up
}

type udpSocket struct {
	f  *os.File
	rc syscall.RawConn
}

// Listen opens the HA sockets in the calling thread's network namespace.
func Listen(dev, secret string, log *slog.Logger) (*Transport, error) {
	tun, err := listenUDP(unix.AF_INET6, &unix.SockaddrInet6{Port: Port})
	if err != nil {
		return nil, fmt.Errorf("ha: udp [::]:%d: %w", Port, err)
	}
	t := &Transport{dev: dev, codec: NewCodec(secret), log: log, tun: tun, in: make(chan Message, 256), done: make(chan struct{})}
	if t.lan, err = listenUDP(unix.AF_INET, &unix.SockaddrInet4{Port: Port}); err != nil {
		log.Warn("HA messages over the LAN disabled", "err", err)
	}
	go t.read(t.tun, true)
	if t.lan != nil {
		go t.read(t.lan, false)
	}
	return t, nil
}

func listenUDP(family int, sa unix.Sockaddr) (*udpSocket, error) {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, err
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "ha")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &udpSocket{f: f, rc: rc}, nil
}

// Messages delivers the authenticated messages received.
func (t *Transport) Messages() <-chan Message { return t.in }

// Close stops the transport.
func (t *Transport) Close() {
	t.once.Do(func() {
		close(t.done)
		t.tun.f.Close()
		if t.lan != nil {
			t.lan.f.Close()
		}
	})
}

// Send seals the envelope's message and sends it to the named edge's agent:
// through the tunnel, or over the LAN to env.LAN.
func (t *Transport) Send(env Envelope) error {
	b, err := t.codec.Seal(env.Msg)
	if err != nil {
		return err
	}
	s, sa := t.tun, unix.Sockaddr(nil)
	if env.LAN.IsValid() {
		if t.lan == nil {
			return nil
		}
		s, sa = t.lan, &unix.SockaddrInet4{Port: Port, Addr: env.LAN.As4()}
	} else {
		idx, err := t.devIndex(false)
		if err != nil {
			return err
		}
		sa = &unix.SockaddrInet6{Port: Port, Addr: mesh.LinkLocal(env.To).As16(), ZoneId: uint32(idx)}
	}
	var serr error
	err = s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, sa)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if !env.LAN.IsValid() {
			t.mu.Lock()
			t.index = 0 // the device may have been recreated
			t.mu.Unlock()
		}
		return fmt.Errorf("ha: send %s to %s: %w", env.Msg.Kind, env.To, err)
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
	if err := t.tun.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFINDEX, ifr) }); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, fmt.Errorf("ha: tunnel device %s: %w", t.dev, ierr)
	}
	t.index = int(ifr.Uint32())
	return t.index, nil
}

// read delivers the messages s receives: through the tunnel (tunnel set)
// from the link-local address of their sender on the tunnel device only.
func (t *Transport) read(s *udpSocket, tunnel bool) {
	buf := make([]byte, MaxMessage+1)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		if err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return // closed
		}
		if rerr != nil || n > MaxMessage {
			continue
		}
		var src netip.Addr
		switch sa := from.(type) {
		case *unix.SockaddrInet6:
			src = netip.AddrFrom16(sa.Addr)
			if !src.IsLinkLocalUnicast() || !t.fromTunnel(int(sa.ZoneId)) {
				continue
			}
		case *unix.SockaddrInet4:
			src = netip.AddrFrom4(sa.Addr)
		default:
			continue
		}
		m, err := t.codec.Open(buf[:n])
		if err != nil {
			t.log.Warn("ignored HA message", "from", src, "err", err)
			continue
		}
		if tunnel && mesh.LinkLocal(m.From) != src {
			t.log.Warn("ignored HA message: sender and address disagree", "from", m.From, "addr", src)
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
