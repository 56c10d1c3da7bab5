package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Timing of the event stream.
const (
	// Settle coalesces a burst of changes (a thousand heartbeats after one
	// edit) into one message.
	Settle = 100 * time.Millisecond
	// MinGap is the least time between two messages to a client.
	MinGap = 500 * time.Millisecond
	// Refresh is how often the view is rebuilt without a notification, to
	// carry what changes continuously (round-trip times) — sent only when
	// it differs.
	Refresh = 5 * time.Second
	// keepAlive is a comment line that keeps proxies from closing an idle
	// stream.
	keepAlive = 20 * time.Second
)

// Hub serves a JSON view as server-sent events: every client gets the
// current view when it connects, then the view again whenever it changed —
// one "data:" line per message, event name Event. The view is built once
// per message for all clients; a slow client skips to the newest version.
// No client ever polls.
type Hub struct {
	view   func() any
	event  string
	log    *slog.Logger
	notify chan struct{}

	mu      sync.Mutex
	clients map[chan []byte]struct{}
	last    []byte
	closed  chan struct{}
}

// NewHub returns a hub sending view() under the event name event.
func NewHub(event string, view func() any, log *slog.Logger) *Hub {
	return &Hub{view: view, event: event, log: log, notify: make(chan struct{}, 1),
		clients: map[chan []byte]struct{}{}, closed: make(chan struct{})}
}

// Notify says the view changed; clients get it within Settle (or MinGap
// after the previous message).
func (h *Hub) Notify() {
	select {
	case h.notify <- struct{}{}:
	default:
	}
}

// Close ends every stream (for a server shutdown, which otherwise waits
// for them).
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.closed:
	default:
		close(h.closed)
	}
}

// Run sends changed views until ctx ends or the hub is closed.
func (h *Hub) Run(ctx context.Context) {
	refresh := time.NewTicker(Refresh)
	defer refresh.Stop()
	var sent time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.closed:
			return
		case <-h.notify:
			wait := max(Settle, MinGap-time.Since(sent))
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			case <-h.closed:
				return
			}
		case <-refresh.C:
		}
		if h.broadcast() {
			sent = time.Now()
		}
	}
}

// broadcast builds the view and sends it to every client if it changed.
func (h *Hub) broadcast() bool {
	h.mu.Lock()
	n := len(h.clients)
	h.mu.Unlock()
	if n == 0 {
		return false
	}
	msg, err := h.message()
	if err != nil {
		h.log.Error("event stream: encode view", "err", err)
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if bytes.Equal(msg, h.last) {
		return false
	}
	h.last = msg
	for ch := range h.clients {
		select {
		case <-ch: // drop the version the client has not taken yet
		default:
		}
		ch <- msg
	}
	return true
}

func (h *Hub) message() ([]byte, error) {
	b, err := json.Marshal(h.view())
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", h.event, b), nil
}

// ServeHTTP streams the view to one client until it goes away.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	first, err := h.message()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ch := make(chan []byte, 1)
	h.mu.Lock()
	h.clients[ch] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.clients, ch)
		h.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// Reconnect after 2 s if the stream breaks (the browser's default is 3 s).
	if !write(append([]byte("retry: 2000\n"), first...)) {
		return
	}
	alive := time.NewTicker(keepAlive)
	defer alive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.closed:
			return
		case msg := <-ch:
			if !write(msg) {
				return
			}
		case <-alive.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}
