package api

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// sniffTimeout bounds how long a new connection may stay silent before its
// first byte tells TLS from plain HTTP.
const sniffTimeout = 10 * time.Second

// tlsRecordHandshake is the first byte of every TLS connection (a
// handshake record carrying the ClientHello); no HTTP method starts with it.
const tlsRecordHandshake = 0x16

// Listen serves plain HTTP and HTTPS on one address: each connection whose
// first byte starts a TLS handshake is served over TLS with cfg, any other
// as plain HTTP (which the handler answers on loopback only). Connections
// are told apart in their own goroutines, so a silent client delays nobody.
func Listen(ln net.Listener, cfg *tls.Config) net.Listener {
	l := &sniffListener{Listener: ln, cfg: cfg, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.accept()
	return l
}

type sniffListener struct {
	net.Listener
	cfg   *tls.Config
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // why accepting stopped; set before done closes
}

func (l *sniffListener) accept() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			l.stop(err)
			return
		}
		go l.sniff(c)
	}
}

func (l *sniffListener) sniff(c net.Conn) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	var conn net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == tlsRecordHandshake {
		conn = tls.Server(conn, l.cfg)
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		c.Close()
	}
}

func (l *sniffListener) stop(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// Accept returns the next connection, a *tls.Conn for TLS clients.
func (l *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// Close stops accepting.
func (l *sniffListener) Close() error {
	err := l.Listener.Close()
	l.stop(net.ErrClosed)
	return err
}

// peekedConn reads the bytes peeked at first.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
