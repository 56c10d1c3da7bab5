package topo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread that has joined network namespace ns and
// returns fn's error. Netlink sockets, Go sockets and child processes that fn
// creates on that thread (i.e. without starting goroutines) live in ns;
// sockets stay there after fn returns. Afterwards the thread returns to its
// original namespace; if that fails it is discarded, so the namespace never
// leaks into other goroutines.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("topo: current namespace: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("topo: open namespace %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("topo: enter namespace %s: %w", ns, err)
			return
		}
		err = fn()
		// Only a thread back in its own namespace may serve other
		// goroutines; otherwise stay locked and the runtime discards it.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// TCPTransfer listens on addr (an address of namespace toNS) on a free port,
// connects from namespace fromNS, sends size random bytes through an echo
// server and checks that exactly those bytes come back within timeout.
func TCPTransfer(fromNS, toNS string, addr netip.Addr, size int, timeout time.Duration) error {
	var ln net.Listener
	if err := Do(toNS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	deadline := time.Now().Add(timeout)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		io.Copy(c, c)
	}()

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := Dialer{NS: fromNS}.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("tcp %s -> %s: %w", fromNS, ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(deadline)

	payload := make([]byte, size)
	rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("tcp %s -> %s: read after %d bytes: %w", fromNS, ln.Addr(), len(got), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("tcp %s -> %s: write: %w", fromNS, ln.Addr(), err)
	}
	if len(got) != size || !bytes.Equal(got, payload) {
		a, b := sha256.Sum256(payload), sha256.Sum256(got)
		return fmt.Errorf("tcp %s -> %s: echoed %d bytes (sha %x), sent %d (sha %x)", fromNS, ln.Addr(), len(got), b[:4], size, a[:4])
	}
	return nil
}

// UDPTransfer starts a UDP echo server on addr (an address of namespace
// toNS) and sends count datagrams of size random bytes to it from namespace
// fromNS, one at a time; each must come back intact. A datagram whose echo
// is late is sent again (a loaded machine may drop one), but all of them
// must be echoed within timeout.
func UDPTransfer(fromNS, toNS string, addr netip.Addr, count, size int, timeout time.Duration) error {
	var srv net.PacketConn
	if err := Do(toNS, func() (err error) {
		srv, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := Dialer{NS: fromNS}.DialContext(ctx, "udp", srv.LocalAddr().String())
	if err != nil {
		return fmt.Errorf("udp %s -> %s: %w", fromNS, srv.LocalAddr(), err)
	}
	defer c.Close()
	payload, buf := make([]byte, size), make([]byte, size+1)
	for i := 0; i < count; i++ {
		rand.Read(payload)
		for echoed := false; !echoed; {
			if time.Now().After(deadline) {
				return fmt.Errorf("udp %s -> %s: %d of %d datagrams of %d bytes echoed within %s", fromNS, srv.LocalAddr(), i, count, size, timeout)
			}
			if _, err := c.Write(payload); err != nil {
				return fmt.Errorf("udp %s -> %s: %w", fromNS, srv.LocalAddr(), err)
			}
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for !echoed {
				n, err := c.Read(buf)
				if err != nil {
					break // late: send again
				}
				echoed = bytes.Equal(buf[:n], payload) // else an echo of an earlier resend
			}
		}
	}
	return nil
}

// Dialer opens connections from inside network namespace NS. DialContext
// fits http.Transport; Dial (5 s timeout) fits nats.CustomDialer.
type Dialer struct{ NS string }

// DialContext dials addr from inside d.NS.
func (d Dialer) DialContext(ctx context.Context, network, addr string) (conn net.Conn, err error) {
	err = Do(d.NS, func() error {
		var nd net.Dialer
		conn, err = nd.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Dial dials addr from inside d.NS, giving up after 5 seconds.
func (d Dialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.DialContext(ctx, network, addr)
}
