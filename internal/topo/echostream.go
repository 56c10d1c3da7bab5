package topo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// EchoStream is traffic that measures its own interruptions: an ICMP echo
// request from a namespace to an address every interval, each answer
// recorded. A failover's blackout is the longest time between two
// requests that were answered (Stats).
type EchoStream struct {
	c        *net.IPConn
	dst      *net.IPAddr
	id       uint16
	interval time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	sent     []time.Time
	answered []bool
	err      error
}

// EchoStats summarizes an EchoStream.
type EchoStats struct {
	Sent, Received int
	// Blackout is the longest time between the sending of two answered
	// requests in a row (the interval when nothing was lost), counting an
	// unanswered tail up to the last request.
	Blackout time.Duration
	// BlackoutStart is when the longest blackout began: the sending of
	// the last request answered before it.
	BlackoutStart time.Time
}

func (s EchoStats) String() string {
	return fmt.Sprintf("%d/%d answered, longest blackout %s", s.Received, s.Sent, s.Blackout.Round(time.Millisecond))
}

// StartEchoStream starts an EchoStream from namespace ns to dst.
func StartEchoStream(ns string, dst netip.Addr, interval time.Duration) (*EchoStream, error) {
	c, id, err := icmpSocket(ns)
	if err != nil {
		return nil, err
	}
	f := &EchoStream{c: c, dst: &net.IPAddr{IP: dst.AsSlice()}, id: id, interval: interval, stop: make(chan struct{})}
	f.wg.Add(2)
	go f.send()
	go f.receive()
	return f, nil
}

func (f *EchoStream) send() {
	defer f.wg.Done()
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	for {
		f.mu.Lock()
		seq := uint16(len(f.sent))
		f.sent = append(f.sent, time.Now())
		f.answered = append(f.answered, false)
		f.mu.Unlock()
		if _, err := f.c.WriteTo(echoRequest(f.id, seq), f.dst); err != nil && !isUnreachable(err) {
			f.fail(err)
		}
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
	}
}

func (f *EchoStream) receive() {
	defer f.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := f.c.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			f.fail(err)
			return
		}
		if n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != f.id || from.String() != f.dst.String() {
			continue
		}
		seq := binary.BigEndian.Uint16(buf[6:])
		f.mu.Lock()
		// The newest request with this sequence number (it wraps after
		// 65536 requests).
		if last := len(f.sent) - 1; last >= 0 {
			i := last - int(uint16(last)-seq)
			if i >= 0 {
				f.answered[i] = true
			}
		}
		f.mu.Unlock()
	}
}

func (f *EchoStream) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// Stats summarizes the stream so far.
func (f *EchoStream) Stats() EchoStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s EchoStats
	s.Sent = len(f.sent)
	prev := -1
	for i, ok := range f.answered {
		if !ok {
			continue
		}
		s.Received++
		if prev >= 0 {
			if gap := f.sent[i].Sub(f.sent[prev]); gap > s.Blackout {
				s.Blackout, s.BlackoutStart = gap, f.sent[prev]
			}
		}
		prev = i
	}
	if prev >= 0 && s.Sent > 0 {
		if gap := f.sent[s.Sent-1].Sub(f.sent[prev]); gap > s.Blackout {
			s.Blackout, s.BlackoutStart = gap, f.sent[prev]
		}
	}
	return s
}

// Stop ends the stream, waiting up to a second for the last answers, and
// returns its stats and the first socket error, if any.
func (f *EchoStream) Stop() (EchoStats, error) {
	close(f.stop)
	time.Sleep(min(time.Second, 20*f.interval)) // answers in flight
	f.c.Close()
	f.wg.Wait()
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	return f.Stats(), err
}
