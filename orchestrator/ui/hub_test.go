package ui

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sseClient reads "data:" lines of an event stream.
type sseClient struct {
	lines chan string
	resp  *http.Response
}

func connect(t *testing.T, url string) *sseClient {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	c := &sseClient{lines: make(chan string, 100), resp: resp}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				c.lines <- d
			}
		}
		close(c.lines)
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return c
}

func (c *sseClient) next(t *testing.T) string {
	t.Helper()
	select {
	case d, ok := <-c.lines:
		if !ok {
			t.Fatal("stream ended")
		}
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
	return ""
}

// A burst of notifications is one message, built once for every client;
// an unchanged view is not sent again; Close ends the streams.
func TestHubCoalescesAndFansOut(t *testing.T) {
	var version, builds atomic.Int64
	h := NewHub("topology", func() any {
		builds.Add(1)
		return map[string]int64{"v": version.Load()}
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)

	a, b := connect(t, srv.URL), connect(t, srv.URL)
	if got := a.next(t); got != `{"v":0}` {
		t.Fatalf("first message %s", got)
	}
	b.next(t)
	built := builds.Load()
	version.Store(1)
	for range 1000 {
		h.Notify()
	}
	for _, c := range []*sseClient{a, b} {
		if got := c.next(t); got != `{"v":1}` {
			t.Fatalf("after the burst: %s", got)
		}
	}
	if n := builds.Load() - built; n != 1 {
		t.Fatalf("the burst built the view %d times, want once", n)
	}
	// Nothing changed: a notification sends nothing; a change does.
	built = builds.Load()
	h.Notify()
	deadline := time.Now().Add(5 * time.Second)
	for builds.Load() == built { // the unchanged view was built (and not sent)
		if time.Now().After(deadline) {
			t.Fatal("the notification built no view")
		}
		time.Sleep(10 * time.Millisecond)
	}
	version.Store(2)
	h.Notify()
	if got := a.next(t); got != `{"v":2}` {
		t.Fatalf("after an unchanged notification and a change: %s", got)
	}
	h.Close()
	for _, c := range []*sseClient{a, b} {
		for range c.lines { // drains, then the stream ends
		}
	}
}
