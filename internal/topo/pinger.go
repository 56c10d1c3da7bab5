package topo

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// Pinger sends ICMP echo requests from inside a namespace on a raw socket
// and reports when the first one is answered: a probe precise to about its
// send interval, for convergence measurements where ping(8), one process per
// try, is too coarse. Each Pinger has its own echo identifier, so several
// may share a namespace. A Pinger is not safe for concurrent use.
type Pinger struct {
	c   *net.IPConn
	id  uint16
	seq uint16
	buf []byte
}

// NewPinger opens a raw ICMP socket inside namespace ns.
func NewPinger(ns string) (*Pinger, error) {
	c, id, err := icmpSocket(ns)
	if err != nil {
		return nil, err
	}
	return &Pinger{c: c, id: id, buf: make([]byte, 1500)}, nil
}

// icmpSocket opens a raw ICMP socket inside namespace ns, with a random
// echo identifier for its requests.
func icmpSocket(ns string) (*net.IPConn, uint16, error) {
	var c net.PacketConn
	if err := Do(ns, func() (err error) {
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, 0, fmt.Errorf("topo: icmp socket in %s: %w", ns, err)
	}
	id := make([]byte, 2)
	rand.Read(id)
	return c.(*net.IPConn), binary.BigEndian.Uint16(id), nil
}

// Close closes the socket.
func (p *Pinger) Close() error { return p.c.Close() }

// Until sends an echo request to dst every interval until one is answered,
// and returns the time the first answer arrived; it gives up after timeout.
// Replies to requests of an earlier call are ignored.
func (p *Pinger) Until(dst netip.Addr, interval, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	first := p.seq + 1
	to := &net.IPAddr{IP: dst.AsSlice()}
	for time.Now().Before(deadline) {
		p.seq++
		if _, err := p.c.WriteTo(echoRequest(p.id, p.seq), to); err != nil && !isUnreachable(err) {
			return time.Time{}, err
		}
		next := time.Now().Add(interval)
		for {
			p.c.SetReadDeadline(next)
			n, from, err := p.c.ReadFrom(p.buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return time.Time{}, err
			}
			at := time.Now()
			// An echo reply (type 0) with our identifier, from dst, to
			// one of this call's requests.
			if n >= 8 && p.buf[0] == 0 && binary.BigEndian.Uint16(p.buf[4:]) == p.id &&
				binary.BigEndian.Uint16(p.buf[6:])-first <= p.seq-first && from.String() == dst.String() {
				return at, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("no answer from %s within %s", dst, timeout)
}

// isUnreachable reports the send errors that only mean "no route yet".
func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

// echoRequest builds an ICMP echo request with a checksum.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
