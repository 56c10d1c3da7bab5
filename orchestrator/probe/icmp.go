package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// icmpConn is the real Conn: one raw ICMPv4 and one raw ICMPv6 socket of
// the calling thread's network namespace, each with a kernel filter that
// lets echo replies through and nothing else. Probes go out and answers
// come in batches (sendmmsg, recvmmsg: one system call for every probe due
// at a tick, one for every answer queued at a wake-up), which is what
// keeps hundreds of targets cheap.
type icmpConn struct {
	v4, v6 *rawSocket
	once   sync.Once

	mu    sync.Mutex // guards zones and the send buffers
	zones map[string]int
	out4  batch
	out6  batch
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
	return &icmpConn{v4: v4, v6: v6, zones: map[string]int{}}, nil
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

// batch holds the messages of one sendmmsg or recvmmsg call, reused from
// call to call.
type batch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
	sa4  []unix.RawSockaddrInet4
	sa6  []unix.RawSockaddrInet6
}

// grow makes room for n messages of size bytes each.
func (b *batch) grow(n, size int) {
	if len(b.hdrs) >= n {
		return
	}
	b.hdrs, b.iovs = make([]unix.Mmsghdr, n), make([]unix.Iovec, n)
	b.bufs, b.sa4, b.sa6 = make([][]byte, n), make([]unix.RawSockaddrInet4, n), make([]unix.RawSockaddrInet6, n)
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
}

// setName points message i at the socket address of family v6 or v4.
func (b *batch) setName(i int, v6 bool) {
	h := &b.hdrs[i].Hdr
	if v6 {
		h.Name, h.Namelen = (*byte)(unsafe.Pointer(&b.sa6[i])), unix.SizeofSockaddrInet6
	} else {
		h.Name, h.Namelen = (*byte)(unsafe.Pointer(&b.sa4[i])), unix.SizeofSockaddrInet4
	}
}

// mmsg runs sendmmsg or recvmmsg (trap) on fd with the first n messages.
func mmsg(trap uintptr, fd uintptr, hdrs []unix.Mmsghdr) (int, error) {
	r, _, errno := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// Send sends the echo requests, 8-byte payload each, one sendmmsg per
// address family.
func (c *icmpConn) Send(echoes []Echo) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var v4, v6 []Echo
	for _, e := range echoes {
		if e.Dst.Is4() {
			v4 = append(v4, e)
		} else {
			v6 = append(v6, e)
		}
	}
	return errors.Join(c.send(c.v4, &c.out4, v4, false), c.send(c.v6, &c.out6, v6, true))
}

func (c *icmpConn) send(s *rawSocket, b *batch, echoes []Echo, v6 bool) error {
	if len(echoes) == 0 {
		return nil
	}
	b.grow(len(echoes), 16)
	n := 0
	var errs []error
	for _, e := range echoes {
		p := b.bufs[n]
		clear(p)
		binary.BigEndian.PutUint16(p[4:], e.ID)
		binary.BigEndian.PutUint16(p[6:], e.Seq)
		if v6 {
			p[0] = 128 // ICMPv6 echo request; the kernel computes the checksum
			zone, err := c.zone(e.Dst.Zone())
			if err != nil {
				errs = append(errs, err)
				continue
			}
			b.sa6[n] = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: e.Dst.As16(), Scope_id: uint32(zone)}
		} else {
			p[0] = 8 // echo request
			binary.BigEndian.PutUint16(p[2:], checksum(p))
			b.sa4[n] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: e.Dst.As4()}
		}
		b.setName(n, v6)
		n++
	}
	for done := 0; done < n; {
		var sent int
		var serr error
		err := s.rc.Write(func(fd uintptr) bool {
			sent, serr = mmsg(unix.SYS_SENDMMSG, fd, b.hdrs[done:n])
			return serr != unix.EAGAIN
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			if v6 {
				c.zones = map[string]int{} // a device may have been recreated
			}
			// Skip the message that failed (unreachable, say) and go on.
			errs = append(errs, err)
			sent = max(sent, 0) + 1
		}
		done += sent
	}
	return errors.Join(errs...)
}

// zone returns the index of interface name, asked of the socket (so in its
// namespace, whatever thread calls) once, and again after a failed send.
// Callers hold c.mu.
func (c *icmpConn) zone(name string) (int, error) {
	if name == "" {
		return 0, errors.New("probe: link-local target without an interface")
	}
	if i, ok := c.zones[name]; ok {
		return i, nil
	}
	i, err := c.v6.ifindex(name)
	if err != nil {
		return 0, err
	}
	c.zones[name] = i
	return i, nil
}

// ifindex asks the socket for the index of interface name: in the
// socket's network namespace, whatever thread calls.
func (s *rawSocket) ifindex(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	var ierr error
	if err := s.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFINDEX, ifr) }); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, fmt.Errorf("probe: interface %s: %w", name, ierr)
	}
	return int(ifr.Uint32()), nil
}

// Receive reads the echo replies of both sockets until Close.
func (c *icmpConn) Receive(handle func(from netip.Addr, id, seq uint16)) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.read(c.v4, false, handle) }()
	go func() { defer wg.Done(); c.read(c.v6, true, handle) }()
	wg.Wait()
}

func (c *icmpConn) Close() error {
	c.once.Do(func() {
		c.v4.f.Close()
		c.v6.f.Close()
	})
	return nil
}

// read hands every echo reply s receives to handle, as many per system
// call as are queued.
func (c *icmpConn) read(s *rawSocket, v6 bool, handle func(from netip.Addr, id, seq uint16)) {
	var b batch
	b.grow(64, 128)
	for {
		for i := range b.hdrs {
			b.setName(i, v6)
			b.hdrs[i].Hdr.Flags = 0
		}
		var n int
		var rerr error
		if err := s.rc.Read(func(fd uintptr) bool {
			n, rerr = mmsg(unix.SYS_RECVMMSG, fd, b.hdrs)
			return rerr != unix.EAGAIN
		}); err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		for i := range n {
			m := b.bufs[i][:min(int(b.hdrs[i].Len), len(b.bufs[i]))]
			if v6 {
				if len(m) >= 8 && m[0] == 129 {
					handle(netip.AddrFrom16(b.sa6[i].Addr), binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:]))
				}
				continue
			}
			// A raw IPv4 socket receives the IP header too.
			if len(m) < 20 {
				continue
			}
			ihl := int(m[0]&0x0f) * 4
			if len(m) >= ihl+8 && m[ihl] == 0 {
				handle(netip.AddrFrom4(b.sa4[i].Addr), binary.BigEndian.Uint16(m[ihl+4:]), binary.BigEndian.Uint16(m[ihl+6:]))
			}
		}
	}
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
