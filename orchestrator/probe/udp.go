package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// UDP probes. An ICMP echo is checksummed in software; a UDP datagram that
// leaves through a device with transmit checksum offload is not (its
// checksum is partial until the device or the underlay computes it), so it
// crosses a path the way the tunnel's TCP and UDP do and an echo does not.
// A UDP probe is a small datagram to UDPPort, a port nobody listens on, of
// the target; the target's kernel answers with an ICMPv6 port unreachable,
// which quotes the datagram. An answer proves the datagram arrived with a
// good checksum: a receiver drops a datagram with a bad one before it
// looks for the port. The answer itself is ICMP, checksummed in software,
// so a UDP probe tests the path toward the target only.
//
// The targets' kernels rate-limit the errors they send (per source, a
// burst of a few, then one per 250 ms toward a link-local address): probe
// each target at most every UDPInterval.

// UDPPort is the destination port of UDP probes: traceroute's first
// port, unused by convention.
const UDPPort = 33434

// UDPInterval is the shortest interval to probe a target by UDP at.
const UDPInterval = 500 * time.Millisecond

// udpMagic starts a UDP probe's payload: magic, identifier, sequence number.
var udpMagic = [4]byte{'c', 'f', 'u', 'p'}

// udpConn is a Conn over UDP probes of IPv6 targets: a UDP socket that
// sends them and a raw ICMPv6 socket with a kernel filter that lets
// destination-unreachable messages through and nothing else.
type udpConn struct {
	udp, icmp *rawSocket
	port      uint16 // the UDP socket's own port
	once      sync.Once

	mu    sync.Mutex // guards zones
	zones map[string]int
}

// OpenUDP opens the sockets of UDP probes in the calling thread's network
// namespace (the raw socket needs CAP_NET_RAW) and returns a Prober over
// them. Its targets must be IPv6 addresses; give them an Interval of at
// least UDPInterval.
func OpenUDP() (*Prober, error) {
	c, err := openUDP()
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

func openUDP() (*udpConn, error) {
	icmp, err := openRaw(unix.AF_INET6, unix.IPPROTO_ICMPV6, func(fd int) error {
		var f unix.ICMPv6Filter // bits set are blocked: all but 1, destination unreachable
		for i := range f.Data {
			f.Data[i] = ^uint32(0)
		}
		f.Data[0] &^= 1 << 1
		return unix.SetsockoptICMPv6Filter(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &f)
	})
	if err != nil {
		return nil, fmt.Errorf("probe: ICMPv6 socket: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet6{})
		if err != nil {
			unix.Close(fd)
		}
	}
	var port uint16
	if err == nil {
		var sa unix.Sockaddr
		if sa, err = unix.Getsockname(fd); err == nil {
			port = uint16(sa.(*unix.SockaddrInet6).Port)
		} else {
			unix.Close(fd)
		}
	}
	if err != nil {
		icmp.f.Close()
		return nil, fmt.Errorf("probe: UDP socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "udp-probe")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		icmp.f.Close()
		return nil, err
	}
	return &udpConn{udp: &rawSocket{f: f, rc: rc}, icmp: icmp, port: port, zones: map[string]int{}}, nil
}

// Send sends one UDP probe per Echo.
func (c *udpConn) Send(echoes []Echo) error {
	var errs []error
	var p [8]byte
	copy(p[:], udpMagic[:])
	for _, e := range echoes {
		if !e.Dst.Is6() || e.Dst.Is4In6() {
			errs = append(errs, fmt.Errorf("probe: UDP probe of %s: IPv6 only", e.Dst))
			continue
		}
		sa := &unix.SockaddrInet6{Port: UDPPort, Addr: e.Dst.As16()}
		if z := e.Dst.Zone(); z != "" {
			i, err := c.zone(z)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			sa.ZoneId = uint32(i)
		}
		binary.BigEndian.PutUint16(p[4:], e.ID)
		binary.BigEndian.PutUint16(p[6:], e.Seq)
		var serr error
		if err := c.udp.rc.Control(func(fd uintptr) { serr = unix.Sendto(int(fd), p[:], unix.MSG_DONTWAIT, sa) }); err != nil {
			serr = err
		}
		if serr != nil {
			c.mu.Lock()
			c.zones = map[string]int{} // a device may have been recreated
			c.mu.Unlock()
			errs = append(errs, fmt.Errorf("probe: UDP probe of %s: %w", e.Dst, serr))
		}
	}
	return errors.Join(errs...)
}

// zone returns the index of interface name (cached until a send fails).
func (c *udpConn) zone(name string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.zones[name]; ok {
		return i, nil
	}
	i, err := c.udp.ifindex(name)
	if err != nil {
		return 0, err
	}
	c.zones[name] = i
	return i, nil
}

// Receive hands every port unreachable that quotes one of this Conn's
// probes to handle, with the probe's destination as the source, until
// Close.
func (c *udpConn) Receive(handle func(from netip.Addr, id, seq uint16)) {
	buf := make([]byte, 1500)
	for {
		var n int
		var rerr error
		if err := c.icmp.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		if dst, id, seq, ok := c.parse(buf[:n]); ok {
			handle(dst, id, seq)
		}
	}
}

// parse reads an ICMPv6 message: a port unreachable (type 1, code 4)
// quoting the IPv6 header, the UDP header and the payload of a probe of
// this Conn.
func (c *udpConn) parse(m []byte) (dst netip.Addr, id, seq uint16, ok bool) {
	const icmpHdr, ipHdr, udpHdr = 8, 40, 8
	if len(m) < icmpHdr+ipHdr+udpHdr+8 || m[0] != 1 || m[1] != 4 {
		return netip.Addr{}, 0, 0, false
	}
	ip := m[icmpHdr:]
	udp := ip[ipHdr:]
	payload := udp[udpHdr:]
	if ip[6] != unix.IPPROTO_UDP || binary.BigEndian.Uint16(udp[0:]) != c.port || binary.BigEndian.Uint16(udp[2:]) != UDPPort ||
		[4]byte(payload[:4]) != udpMagic {
		return netip.Addr{}, 0, 0, false
	}
	return netip.AddrFrom16([16]byte(ip[24:40])), binary.BigEndian.Uint16(payload[4:]), binary.BigEndian.Uint16(payload[6:]), true
}

// Close closes both sockets.
func (c *udpConn) Close() error {
	c.once.Do(func() {
		c.udp.f.Close()
		c.icmp.f.Close()
	})
	return nil
}
