package embedded

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cframe/cframe/bus"
)

// MaxHandshakes is how many TLS handshakes the client port serves at once.
// A handshake arriving beyond them is refused at once, before the server
// signs anything (the edge tries again after bus.ReconnectDelay, a window
// that widens while it keeps failing). Without a bound, ten thousand edges
// joining at once share the CPU so evenly that almost none of their
// handshakes completes within bus.TLSTimeout: each is abandoned by its edge
// after the server spent its CPU on it, and retried, and the burst feeds
// itself.
const MaxHandshakes = 128

// errBusy is a handshake refused by the gate.
var errBusy = errors.New("cframe: too many TLS handshakes in flight, try again later")

// refusedLogEvery is how often the gate logs the handshakes it refused.
const refusedLogEvery = 10 * time.Second

// handshakeGate bounds the TLS handshakes in flight on a listener.
type handshakeGate struct {
	slots chan struct{}
	// hold is how long a handshake that never verifies keeps its slot.
	hold    time.Duration
	refused atomic.Int64
	log     *slog.Logger
	// lastLog is when refusals were last logged (Unix nanoseconds).
	lastLog atomic.Int64
}

func newHandshakeGate(n int, log *slog.Logger) *handshakeGate {
	return &handshakeGate{slots: make(chan struct{}, n), hold: bus.TLSTimeout, log: log}
}

// wrap returns base with every handshake taking a slot of the gate: from
// the client's hello until the server has verified the connection (its
// signature sent), or g.hold (bus.TLSTimeout) for a handshake that fails on
// the way.
// base must not have GetConfigForClient or VerifyConnection set.
func (g *handshakeGate) wrap(base *tls.Config) *tls.Config {
	outer := base.Clone()
	outer.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		select {
		case g.slots <- struct{}{}:
		default:
			g.noteRefused()
			return nil, errBusy
		}
		var once sync.Once
		release := func() { once.Do(func() { <-g.slots }) }
		timer := time.AfterFunc(g.hold, release)
		c := base.Clone()
		c.VerifyConnection = func(tls.ConnectionState) error {
			timer.Stop()
			release()
			return nil
		}
		return c, nil
	}
	return outer
}

// noteRefused counts a refused handshake, and logs the count at most every
// refusedLogEvery.
func (g *handshakeGate) noteRefused() {
	n := g.refused.Add(1)
	now := time.Now().UnixNano()
	last := g.lastLog.Load()
	if g.log == nil || now-last < int64(refusedLogEvery) || !g.lastLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("bus: refusing TLS handshakes beyond the ones in flight; those edges retry later",
		"in_flight", cap(g.slots), "refused_total", n)
}

// isRefusedHandshake tells the NATS server's error line about a handshake
// the gate refused, which the gate logs in sum instead.
func isRefusedHandshake(msg string) bool { return strings.Contains(msg, errBusy.Error()) }
