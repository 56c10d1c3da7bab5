package topo

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Flow is one direction of a TCP connection.
type Flow struct{ Src, Dst netip.AddrPort }

func (f Flow) String() string { return f.Src.String() + " -> " + f.Dst.String() }

// Capture records the IPv4 TCP segments crossing one interface of a
// namespace, both ways, through a raw AF_PACKET socket opened inside it:
// what an observer on that link sees.
type Capture struct {
	fd   int
	stop chan struct{}
	done chan struct{}
	err  error // set before done closes
	segs []segment
	// pkts are the IPv4 packets seen, whole (a tunnel's UDP included).
	pkts [][]byte
}

type segment struct {
	flow    Flow
	seq     uint32
	payload []byte
}

// StartCapture starts capturing on interface ifname of namespace ns.
func StartCapture(ns, ifname string) (*Capture, error) {
	// ETH_P_ALL: a socket bound to one protocol sees incoming packets only.
	proto := htons(unix.ETH_P_ALL)
	fd := -1
	err := Do(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// SOCK_DGRAM: the kernel strips the link header, packets start at IP.
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto)); err != nil {
			return fmt.Errorf("capture socket: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index})
	})
	if err == nil {
		// A read timeout lets Stop end the reading loop; a large buffer
		// keeps bursts of 64 KiB GSO packets from being dropped.
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	}
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("capture on %s in %s: %w", ifname, ns, err)
	}
	c := &Capture{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<16+64)
	stopping := false
	for {
		select {
		case <-c.stop:
			stopping = true
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if stopping {
				return // everything queued before Stop is read
			}
			continue
		}
		if err != nil {
			c.err = err
			return
		}
		if n >= 20 && buf[0]>>4 == 4 {
			c.pkts = append(c.pkts, slices.Clone(buf[:n]))
		}
		if s, ok := parseTCP(buf[:n]); ok {
			c.segs = append(c.segs, s)
		}
	}
}

// parseTCP reads an IPv4 packet carrying TCP payload.
func parseTCP(b []byte) (segment, bool) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return segment{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if total := int(binary.BigEndian.Uint16(b[2:4])); total >= ihl && total < len(b) {
		b = b[:total] // an outgoing GSO packet may say 0: keep what was read
	}
	if len(b) < ihl+20 {
		return segment{}, false
	}
	tcp := b[ihl:]
	off := int(tcp[12]>>4) * 4
	if off < 20 || len(tcp) <= off {
		return segment{}, false
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(tcp[0:2]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), binary.BigEndian.Uint16(tcp[2:4]))
	return segment{flow: Flow{src, dst}, seq: binary.BigEndian.Uint32(tcp[4:8]), payload: slices.Clone(tcp[off:])}, true
}

// Packets returns every IPv4 packet the capture saw, whole, once Stop has
// returned: what an observer of the link could read, tunnels included.
func (c *Capture) Packets() [][]byte { return c.pkts }

// Stop ends the capture and returns each flow's payload reassembled in
// sequence order (retransmitted bytes once); it fails if the socket dropped
// a packet.
func (c *Capture) Stop() (map[Flow][]byte, error) {
	close(c.stop)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		return nil, errors.New("capture did not stop")
	}
	// A dropped packet would make "the capture does not contain X" prove
	// nothing.
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	unix.Close(c.fd)
	switch {
	case c.err != nil:
		return nil, c.err
	case err != nil:
		return nil, fmt.Errorf("capture statistics: %w", err)
	case st.Drops > 0:
		return nil, fmt.Errorf("capture dropped %d packets", st.Drops)
	}
	byFlow := map[Flow][]segment{}
	for _, s := range c.segs {
		byFlow[s.flow] = append(byFlow[s.flow], s)
	}
	out := map[Flow][]byte{}
	for f, segs := range byFlow {
		// Offsets from the first segment seen, in uint32 arithmetic (the
		// sequence space wraps).
		base := segs[0].seq
		slices.SortStableFunc(segs, func(a, b segment) int { return cmp.Compare(a.seq-base, b.seq-base) })
		var stream []byte
		for _, s := range segs {
			at := int(s.seq - base)
			if end := at + len(s.payload); end > len(stream) {
				stream = append(stream, s.payload[max(len(stream)-at, 0):]...)
			}
		}
		out[f] = stream
	}
	return out, nil
}
