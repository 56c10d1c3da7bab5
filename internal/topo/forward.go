package topo

import (
	"context"
	"io"
	"net"
)

// Forward accepts connections on ln (in the caller's namespace) and
// relays each to target dialed from inside namespace ns, until ctx ends:
// how the demo lets a browser on the machine reach a page that listens on
// a namespace's loopback. Nothing is added to any namespace.
func Forward(ctx context.Context, ln net.Listener, ns, target string) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			t, err := Dialer{NS: ns}.DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			defer t.Close()
			done := make(chan struct{}, 2)
			relay := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go relay(t, c)
			go relay(c, t)
			select {
			case <-done:
				<-done
			case <-ctx.Done():
			}
		}()
	}
}
