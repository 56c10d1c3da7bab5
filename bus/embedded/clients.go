package embedded

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/cframe/cframe/bus"
)

// EdgeConn is an edge's connection opening or closing on a server of the
// controllers' cluster (any of them: the servers share these events).
type EdgeConn struct {
	// Key is the identity key the edge authenticated with (pinned to its
	// name: see Pinner), Name the edge name its connection name claims
	// (bus.ConnName: check it against the pinned key), Conn the connection
	// (unique in the cluster).
	Key, Name, Conn string
	// Up is true when it opened; Reason says why it closed.
	Up     bool
	Reason string
}

// The users of the controller's in-process connections (Connect, and
// WatchEdges in the system account).
const (
	controllerUser = "cframe-controller"
	systemUser     = "cframe-controller-system"
)

// ServerShutdown is the Reason of connections closed because their
// server stopped: the controller went away, not the edge.
var ServerShutdown = server.ServerShutdown.String()

// WatchEdges calls fn, from one goroutine and in the order each server
// reported them, for every edge connection that opens or closes on any
// server of the cluster. A killed agent's connection closes at once (its
// kernel closes the socket), long before its heartbeats are missed. Close
// the returned connection to stop.
func (s *Server) WatchEdges(fn func(EdgeConn)) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.Name(systemUser), nats.Token(s.sysToken), nats.InProcessServer(s.ns))
	if err != nil {
		return nil, fmt.Errorf("connection events: %w", err)
	}
	events := make(chan *nats.Msg, 1024)
	closed := make(chan struct{})
	// Closing events could race a delivery still in flight; closed ends
	// the goroutine instead.
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	for _, subj := range []string{"$SYS.ACCOUNT.*.CONNECT", "$SYS.ACCOUNT.*.DISCONNECT"} {
		if _, err := nc.ChanSubscribe(subj, events); err != nil {
			nc.Close()
			return nil, fmt.Errorf("connection events: subscribe %s: %w", subj, err)
		}
	}
	go func() {
		for {
			select {
			case m := <-events:
				if ev, ok := edgeConn(m.Data); ok {
					fn(ev)
				}
			case <-closed:
				return
			}
		}
	}()
	return nc, nil
}

// edgeConn reads a server's connect or disconnect event; ok is false for
// connections that are not an edge's (only edges authenticate with a key).
func edgeConn(data []byte) (EdgeConn, bool) {
	var ev struct {
		Type   string            `json:"type"`
		Client server.ClientInfo `json:"client"`
		Reason string            `json:"reason"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return EdgeConn{}, false
	}
	if !nkeys.IsValidPublicUserKey(ev.Client.User) {
		return EdgeConn{}, false
	}
	name, _ := bus.EdgeOfConn(ev.Client.Name)
	out := EdgeConn{Key: ev.Client.User, Name: name, Conn: ev.Client.Server + "/" + strconv.FormatUint(ev.Client.ID, 10), Reason: ev.Reason}
	switch ev.Type {
	case server.ConnectEventMsgType:
		out.Up = true
	case server.DisconnectEventMsgType:
	default:
		return EdgeConn{}, false
	}
	return out, true
}
