package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// stream is a paced TCP stream between two namespaces that records the
// longest pause in delivery.
type stream struct {
	conn, peer net.Conn
	ln         net.Listener
	stop       chan struct{}
	wg         sync.WaitGroup

	mu       sync.Mutex
	sent     int64
	received int64
	maxGap   time.Duration
	err      error
}

// startStream sends ~10 MB/s from fromNS to addr (an address of toNS).
func startStream(fromNS, toNS string, addr netip.Addr) (*stream, error) {
	s := &stream{stop: make(chan struct{})}
	if err := topo.Do(toNS, func() (err error) {
		s.ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return nil, err
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := s.ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var err error
	if s.conn, err = (topo.Dialer{NS: fromNS}).Dial("tcp", s.ln.Addr().String()); err != nil {
		s.ln.Close()
		return nil, err
	}
	select {
	case s.peer = <-accepted:
	case <-time.After(5 * time.Second):
	}
	if s.peer == nil {
		s.conn.Close()
		s.ln.Close()
		return nil, fmt.Errorf("stream to %s: not accepted", addr)
	}
	s.wg.Add(2)
	go s.send()
	go s.receive()
	return s, nil
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

func (s *stream) send() {
	defer s.wg.Done()
	chunk := make([]byte, 100<<10)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			s.conn.(*net.TCPConn).CloseWrite()
			return
		case <-tick.C:
			s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			n, err := s.conn.Write(chunk)
			s.mu.Lock()
			s.sent += int64(n)
			s.mu.Unlock()
			if err != nil {
				s.fail(fmt.Errorf("stream write: %w", err))
				return
			}
		}
	}
}

func (s *stream) receive() {
	defer s.wg.Done()
	buf := make([]byte, 256<<10)
	last := time.Now()
	for {
		s.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := s.peer.Read(buf)
		now := time.Now()
		s.mu.Lock()
		s.received += int64(n)
		if gap := now.Sub(last); gap > s.maxGap {
			s.maxGap = gap
		}
		s.mu.Unlock()
		last = now
		if err == io.EOF {
			return
		}
		if err != nil {
			s.fail(fmt.Errorf("stream read: %w", err))
			return
		}
	}
}

// finish stops sending, waits for the rest to arrive and reports the bytes
// delivered and the longest pause between reads.
func (s *stream) finish() (int64, time.Duration, error) {
	close(s.stop)
	s.wg.Wait()
	s.conn.Close()
	s.peer.Close()
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && s.received != s.sent {
		s.err = fmt.Errorf("stream: sent %d bytes, received %d", s.sent, s.received)
	}
	return s.received, s.maxGap, s.err
}

// udpFlow sends numbered datagrams from one namespace to a listener in
// another at a steady pace and counts those that arrive.
type udpFlow struct {
	conn, peer net.Conn
	stop       chan struct{}
	wg         sync.WaitGroup
	sent       int
	mu         sync.Mutex
	seen       map[uint32]bool
}

// startUDP sends a datagram every interval from fromNS to addr (an address
// of toNS).
func startUDP(fromNS, toNS string, addr netip.Addr, interval time.Duration) (*udpFlow, error) {
	u := &udpFlow{stop: make(chan struct{}), seen: map[uint32]bool{}}
	var ln net.PacketConn
	if err := topo.Do(toNS, func() (err error) {
		ln, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return nil, err
	}
	u.peer = ln.(*net.UDPConn)
	c, err := (topo.Dialer{NS: fromNS}).Dial("udp", ln.LocalAddr().String())
	if err != nil {
		ln.Close()
		return nil, err
	}
	u.conn = c
	u.wg.Add(2)
	go func() {
		defer u.wg.Done()
		buf := make([]byte, 64)
		for {
			n, err := u.peer.Read(buf)
			if err != nil {
				return
			}
			if n == 4 {
				u.mu.Lock()
				u.seen[binary.BigEndian.Uint32(buf)] = true
				u.mu.Unlock()
			}
		}
	}()
	go func() {
		defer u.wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		var b [4]byte
		for {
			select {
			case <-u.stop:
				return
			case <-tick.C:
				u.mu.Lock()
				binary.BigEndian.PutUint32(b[:], uint32(u.sent))
				if _, err := u.conn.Write(b[:]); err == nil {
					u.sent++
				}
				u.mu.Unlock()
			}
		}
	}()
	return u, nil
}

// finish stops sending, waits (up to a second) for the datagrams in flight
// and returns how many were sent and received.
func (u *udpFlow) finish() (sent, received int) {
	close(u.stop)
	topo.Eventually(time.Second, func() error {
		u.mu.Lock()
		defer u.mu.Unlock()
		if len(u.seen) < u.sent {
			return fmt.Errorf("%d of %d arrived", len(u.seen), u.sent)
		}
		return nil
	})
	u.conn.Close()
	u.peer.Close()
	u.wg.Wait()
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.sent, len(u.seen)
}
