package embedded

import (
	"testing"
	"time"
)

// An edge's connection opening and closing is reported with its name; the
// controller's own connections are not.
func TestWatchEdges(t *testing.T) {
	s := startServer(t)
	events := make(chan EdgeConn, 16)
	sys, err := s.WatchEdges(func(ev EdgeConn) { events <- ev })
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	own := internal(t, s) // the controller's own connection: no event
	defer own.Close()
	id := identity(t, t.TempDir(), "sz-1")
	nc, _, err := connectEdge(t, s, id, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	next := func() EdgeConn {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no connection event")
			return EdgeConn{}
		}
	}
	up := next()
	if !up.Up || up.Key != id.Public || up.Name != "sz-1" || up.Conn == "" {
		t.Fatalf("first event %+v, want sz-1's connection (key %s) up", up, id.Public)
	}
	nc.Close()
	down := next()
	if down.Up || down.Key != id.Public || down.Conn != up.Conn || down.Reason == "" || down.Reason == ServerShutdown {
		t.Fatalf("second event %+v, want %s closed by the client", down, up.Conn)
	}
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}
