package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cframe/cframe/bus"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// fakeStream stands in for the controller's audit stream: it keeps events,
// answers replay requests from them and publishes on the live subject only
// what the test says.
type fakeStream struct {
	nc *nats.Conn
	mu sync.Mutex
	ev []bus.Event
}

func newFakeStream(t *testing.T, s *Server) *fakeStream {
	f := &fakeStream{nc: internal(t, s)}
	_, err := f.nc.Subscribe(bus.SubjectAuditReplay, func(m *nats.Msg) {
		var req bus.ReplayRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Error(err)
			return
		}
		f.mu.Lock()
		p := bus.ReplayPage{Events: []bus.Event{}, Last: uint64(len(f.ev))}
		for _, e := range f.ev {
			if (req.After > 0 && e.Seq > req.After) || (req.After == 0 && !e.Time.Before(req.Since)) {
				if len(p.Events) < 2 { // small pages: the reader must page
					p.Events = append(p.Events, e)
				}
			}
		}
		f.mu.Unlock()
		b, _ := json.Marshal(p)
		m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// store keeps an event and, if live, publishes it as the stream would.
func (f *fakeStream) store(t *testing.T, edge string, live bool) {
	t.Helper()
	f.mu.Lock()
	e := bus.Event{Time: time.Now().UTC(), Kind: bus.EventEdgeOnline, Edge: edge, Seq: uint64(len(f.ev) + 1)}
	f.ev = append(f.ev, e)
	f.mu.Unlock()
	if !live {
		return
	}
	m := nats.NewMsg(bus.EventSubject(e.Kind, e.Edge))
	e.Seq = 0 // the body as stored: the sequence travels in the header
	m.Data, _ = json.Marshal(e)
	m.Header.Set(bus.HeaderSequence, strconv.Itoa(len(f.ev)))
	if err := f.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
}

type seen struct {
	mu   sync.Mutex
	seqs []uint64
}

func (s *seen) add(e bus.Event) {
	s.mu.Lock()
	s.seqs = append(s.seqs, e.Seq)
	s.mu.Unlock()
}

// upTo waits until the reader holds exactly 1..n, in order.
func (s *seen) upTo(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		got := fmt.Sprint(s.seqs)
		s.mu.Unlock()
		want := make([]uint64, n)
		for i := range want {
			want[i] = uint64(i + 1)
		}
		if got == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reader holds %s, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bus.FollowEvents replays from a time (paging), follows live, repairs a gap
// that a later event reveals, and repairs, after a reconnect, a gap that no
// later event reveals — each event once, in order.
func TestFollowEventsReplaysFollowsAndRepairsGaps(t *testing.T) {
	s := startServer(t)
	f := newFakeStream(t, s)
	for _, e := range []string{"a", "b", "c"} {
		f.store(t, e, false) // kept before the reader started
	}
	nc, err := nats.Connect(s.URL(), append(bus.ClientOptions(bus.Trust{Secret: testSecret}, nil), bus.AuditOptions(bus.AuditPassword(testSecret))...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := &seen{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.FollowEvents(ctx, nc, time.Now().Add(-time.Hour), got.add) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("FollowEvents: %v", err)
		}
	}()
	got.upTo(t, 3) // replayed, two pages
	f.store(t, "d", true)
	got.upTo(t, 4) // live
	f.store(t, "e", false)
	f.store(t, "f", false)
	f.store(t, "g", true) // reveals the gap e, f
	got.upTo(t, 7)
	// Lost while reconnecting, and nothing after them: the reconnect alone
	// makes the reader catch up.
	f.store(t, "h", false)
	f.store(t, "i", false)
	if err := nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	got.upTo(t, 9)
}
