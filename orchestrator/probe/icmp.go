package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// icmpConn is the real Conn: one raw ICMPv4 and one raw ICMPv6 socket of
// the calling thread's network namespace, each with a kernel filter that
// lets echo replies through and nothing else, read through Go's poller.
type icmpConn struct {
	v4, v6  *rawSocket
	replies chan reply
	done    chan struct{}
	once    sync.Once

	mu    sync.Mutex
	zones map[string]int // interface name -> index
}

type reply struct {
	from    netip.Addr
	id, seq uint16
}

type rawSocket struct {
	f  *os.File
	rc syscall.RawConn
}

// Open opens raw ICMP sockets in the calling thread's network namespace
// (it needs CAP_NET_RAW) and returns a Prober over them.
func Open() (*Prober, error) {
	c, err := openICMP()
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

func openICMP() (*icmpConn, error) {
	v4, err := openRaw(unix.AF_INET, unix.IPPROTO_ICMP, func(fd int) error {
		// Bits set are filtered out: everything but type 0, echo reply.
		mask := ^uint32(1 << 0)
		return unix.SetsockoptInt(fd, unix.SOL_RAW, unix.ICMP_FILTER, int(int32(mask)))
	})
	if err != nil {
		return nil, fmt.Errorf("probe: ICMPv4 socket: %w", err)
	}
	v6, err := openRaw(unix.AF_INET6, unix.IPPROTO_ICMPV6, func(fd int) error {
		var f unix.ICMPv6Filter // bits set are blocked: all but 129, echo reply
		for i := range f.Data {
			f.Data[i] = ^uint32(0)
		}
		f.Data[129>>5] &^= 1 << (129 & 31)
		return unix.SetsockoptICMPv6Filter(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &f)
	})
	if err != nil {
		v4.f.Close()
		return nil, fmt.Errorf("probe: ICMPv6 socket: %w", err)
	}
	c := &icmpConn{v4: v4, v6: v6, replies: make(chan reply, 256), done: make(chan struct{}), zones: map[string]int{}}
	go c.read(v4, parse4)
	go c.read(v6, parse6)
	return c, nil
}

func openRaw(family, proto int, filter func(fd int) error) (*rawSocket, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, err
	}
	if err := filter(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "icmp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawSocket{f: f, rc: rc}, nil
}

// Send sends an echo request with an 8-byte payload.
func (c *icmpConn) Send(dst netip.Addr, id, seq uint16) error {
	var b [16]byte
	var sa unix.Sockaddr
	s := c.v4
	if dst.Is4() {
		b[0] = 8 // echo request
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		b[0] = 128 // ICMPv6 echo request; the kernel computes the checksum
		s = c.v6
		zone, err := c.zone(dst.Zone())
		if err != nil {
			return err
		}
		sa = &unix.SockaddrInet6{Addr: dst.As16(), ZoneId: uint32(zone)}
	}
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	if dst.Is4() {
		binary.BigEndian.PutUint16(b[2:], checksum(b[:]))
	}
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b[:], 0, sa)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil && dst.Zone() != "" && (errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.EINVAL)) {
		c.mu.Lock()
		delete(c.zones, dst.Zone()) // the interface may have been recreated
		c.mu.Unlock()
	}
	return err
}

// zone returns the index of interface name, looked up once (and again
// after a send to it failed).
func (c *icmpConn) zone(name string) (int, error) {
	if name == "" {
		return 0, errors.New("probe: link-local target without an interface")
	}
	c.mu.Lock()
	i, ok := c.zones[name]
	c.mu.Unlock()
	if ok {
		return i, nil
	}
	// Asked of the socket, so in its namespace whatever thread calls.
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	var ierr error
	if err := c.v6.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFINDEX, ifr) }); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, fmt.Errorf("probe: interface %s: %w", name, ierr)
	}
	i = int(ifr.Uint32())
	c.mu.Lock()
	c.zones[name] = i
	c.mu.Unlock()
	return i, nil
}

// Receive returns the next echo reply.
func (c *icmpConn) Receive() (netip.Addr, uint16, uint16, error) {
	select {
	case r := <-c.replies:
		return r.from, r.id, r.seq, nil
	case <-c.done:
		return netip.Addr{}, 0, 0, net.ErrClosed
	}
}

func (c *icmpConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.v4.f.Close()
		c.v6.f.Close()
	})
	return nil
}

// read passes the echo replies of s to Receive until s is closed.
func (c *icmpConn) read(s *rawSocket, parse func([]byte, unix.Sockaddr) (reply, bool)) {
	buf := make([]byte, 1500)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		if r, ok := parse(buf[:n], from); ok {
			select {
			case c.replies <- r:
			case <-c.done:
				return
			}
		}
	}
}

// parse4 reads an ICMPv4 echo reply; a raw IPv4 socket receives the IP
// header too.
func parse4(b []byte, from unix.Sockaddr) (reply, bool) {
	sa, ok := from.(*unix.SockaddrInet4)
	if !ok || len(b) < 20 {
		return reply{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if len(b) < ihl+8 || b[ihl] != 0 {
		return reply{}, false
	}
	m := b[ihl:]
	return reply{netip.AddrFrom4(sa.Addr), binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:])}, true
}

// parse6 reads an ICMPv6 echo reply (no IP header on raw IPv6 sockets).
func parse6(b []byte, from unix.Sockaddr) (reply, bool) {
	sa, ok := from.(*unix.SockaddrInet6)
	if !ok || len(b) < 8 || b[0] != 129 {
		return reply{}, false
	}
	return reply{netip.AddrFrom16(sa.Addr), binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])}, true
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
