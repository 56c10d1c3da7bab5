package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
)

// auditReader connects as the read-only audit user, with the credentials
// the API hands out.
func auditReader(t *testing.T, r *running) (*nats.Conn, chan error) {
	t.Helper()
	creds, err := r.api.Credentials(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if creds.Replay != bus.SubjectAuditReplay || creds.InboxPrefix != bus.AuditInboxPrefix || creds.Subject != bus.SubjectEventsAll {
		t.Fatalf("credentials = %+v", creds)
	}
	errs := make(chan error, 16)
	opts := append(bus.ClientOptions(bus.Trust{Fingerprint: creds.Fingerprint}, nil), bus.AuditOptions(creds.Password)...)
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", creds.Port), append(opts,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// collector gathers what FollowEvents hands over.
type collector struct {
	mu     sync.Mutex
	events []bus.Event
}

func (c *collector) add(e bus.Event) {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
}

func (c *collector) get() []bus.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bus.Event(nil), c.events...)
}

// follow runs FollowEvents in the background until the test ends.
func follow(t *testing.T, nc *nats.Conn, since time.Time) *collector {
	t.Helper()
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.FollowEvents(ctx, nc, since, c.add) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("FollowEvents: %v", err)
		}
	})
	return c
}

// kinds summarises events as "kind edge" strings.
func kinds(evs []bus.Event) string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Kind+" "+e.Edge)
	}
	return strings.Join(out, ", ")
}

// checkOrder fails unless the events carry consecutive stream sequences.
func checkOrder(t *testing.T, evs []bus.Event) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq != evs[i-1].Seq+1 {
			t.Fatalf("sequence gap or repeat at %d: %d after %d (%s)", i, evs[i].Seq, evs[i-1].Seq, kinds(evs))
		}
	}
}

// The audit trail is kept across a restart, replayed from a point in time
// and then followed live, each event once and in order, naming the API
// client of each change.
func TestAuditTrailReplayThenFollow(t *testing.T) {
	cfg := testConfig(t)
	cfg.APIToken = "audit-token"
	r := start(t, cfg)
	began := time.Now()
	addAll(t, r, walkthrough[:2]...)
	// A client presenting the token (from loopback, so the test can reach
	// the API): the event names the token by fingerprint.
	withToken := api.NewClient(r.base, "audit-token")
	if _, err := withToken.Del(context.Background(), "hk-1"); err != nil {
		t.Fatal(err)
	}
	r.stop()

	r = start(t, cfg)
	nc, _ := auditReader(t, r)
	got := follow(t, nc, began)
	waitFor(t, 5*time.Second, func() error {
		if k := kinds(got.get()); k != "added sz-1, added hk-1, deleted hk-1" {
			return fmt.Errorf("replayed %q", k)
		}
		return nil
	})
	evs := got.get()
	for _, e := range evs {
		if e.Actor == nil || !strings.HasPrefix(e.Actor.Remote, "127.0.0.1:") || e.Revision == 0 || e.Seq == 0 {
			t.Fatalf("event %+v lacks its actor, revision or sequence", e)
		}
	}
	if evs[0].Actor.Token != "" || evs[2].Actor.Token != api.TokenFingerprint("audit-token") || strings.Contains(evs[2].Actor.Token, "audit-token") {
		t.Fatalf("tokens named %q and %q, want none and the fingerprint", evs[0].Actor.Token, evs[2].Actor.Token)
	}
	// Then live: a change made now arrives after the replay, once.
	addAll(t, r, walkthrough[2])
	waitFor(t, 5*time.Second, func() error {
		if k := kinds(got.get()); k != "added sz-1, added hk-1, deleted hk-1, added gz-3" {
			return fmt.Errorf("followed %q", k)
		}
		return nil
	})
	checkOrder(t, got.get())

	// A replay from a later point starts there.
	later := follow(t, nc, got.get()[3].Time)
	waitFor(t, 5*time.Second, func() error {
		if k := kinds(later.get()); k != "added gz-3" {
			return fmt.Errorf("replayed from the last event: %q", k)
		}
		return nil
	})
}

// Replays page through the stream in order.
func TestAuditReplayPages(t *testing.T) {
	r := start(t, testConfig(t))
	nc, _ := auditReader(t, r)
	for i := range 5 {
		r.event(bus.EventEdgeOnline, fmt.Sprintf("e-%d", i), 0, "")
	}
	waitStored(t, r, 5)
	// Pages: two events at a time, in order, until the last.
	var all []bus.Event
	req := bus.ReplayRequest{Since: time.Now().Add(-time.Minute), Limit: 2}
	for {
		p, err := bus.Replay(context.Background(), nc, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Events) > 2 || p.Last != 5 {
			t.Fatalf("page = %+v", p)
		}
		all = append(all, p.Events...)
		if len(p.Events) == 0 || p.Events[len(p.Events)-1].Seq == p.Last {
			break
		}
		req = bus.ReplayRequest{After: p.Events[len(p.Events)-1].Seq, Limit: 2}
	}
	if len(all) != 5 {
		t.Fatalf("paged %d events: %s", len(all), kinds(all))
	}
	checkOrder(t, all)
}

// waitStored waits until the audit stream's last sequence is last.
func waitStored(t *testing.T, r *running, last uint64) {
	t.Helper()
	waitFor(t, 30*time.Second, func() error {
		info, err := r.audit.stream.Info(context.Background())
		if err != nil || info.State.LastSeq != last {
			return fmt.Errorf("stream at %+v (%v), want last sequence %d", info.State, err, last)
		}
		return nil
	})
}

// The audit user reads only: it cannot write events, touch the stream, or
// make the controller answer outside its inbox.
func TestAuditUserCannotWrite(t *testing.T) {
	r := start(t, testConfig(t))
	nc, errs := auditReader(t, r)
	for _, subj := range []string{
		bus.AuditInSubject(bus.EventEdgeAdded, "forged"),
		bus.EventSubject(bus.EventEdgeAdded, "forged"),
		"$JS.API.STREAM.DELETE." + bus.AuditStream,
		"$JS.API.STREAM.PURGE." + bus.AuditStream,
		"$JS.API.CONSUMER.CREATE." + bus.AuditStream,
	} {
		_ = nc.Publish(subj, []byte("{}"))
		select {
		case err := <-errs:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") || !strings.Contains(err.Error(), subj) {
				t.Fatalf("publish %s: %v, want a permissions violation", subj, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("publish %s: no permissions violation", subj)
		}
	}
	// The controller answers a replay request only into an audit inbox: a
	// request asking for the answer on an edge subject is dropped, the
	// next proper one answered.
	in, err := r.srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	hijack, err := in.SubscribeSync(bus.SubjectHello + ".x")
	if err != nil {
		t.Fatal(err)
	}
	ok, err := in.SubscribeSync(bus.AuditInboxPrefix + ".test")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"since":"2000-01-01T00:00:00Z"}`)
	for _, reply := range []string{bus.SubjectHello + ".x", bus.AuditInboxPrefix + ".test"} {
		if err := in.PublishRequest(bus.SubjectAuditReplay, reply, body); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ok.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("proper replay request: %v", err)
	}
	if m, err := hijack.NextMsg(10 * time.Millisecond); err == nil {
		t.Fatalf("the controller answered on %s: %s", m.Subject, m.Data)
	}
	// Nothing was written: the stream holds no event (this test made no change).
	p, err := bus.Replay(context.Background(), nc, bus.ReplayRequest{Since: time.Now().Add(-time.Hour)})
	if err != nil || len(p.Events) != 0 {
		t.Fatalf("stream after the attempts: %+v, %v", p, err)
	}
}

// Retention and the size cap come from controller.toml, apply on restart,
// and the cap drops the oldest events.
func TestAuditRetentionAndSizeCap(t *testing.T) {
	cfg := testConfig(t)
	cfg.AuditRetention = config.Duration{Duration: 48 * time.Hour}
	cfg.AuditMaxBytes = 1 << 20
	r := start(t, cfg)
	info, err := r.audit.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != 48*time.Hour || info.Config.MaxBytes != 1<<20 {
		t.Fatalf("stream limits = %v, %d", info.Config.MaxAge, info.Config.MaxBytes)
	}
	big := strings.Repeat("x", 8<<10)
	for i := range 200 { // about 1.6 MiB
		r.event(bus.EventEdgeOnline, fmt.Sprintf("e-%d", i), 0, big)
	}
	waitFor(t, 10*time.Second, func() error {
		info, err := r.audit.stream.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.LastSeq != 200 {
			return fmt.Errorf("last sequence %d", info.State.LastSeq)
		}
		if info.State.Bytes > 1<<20 || info.State.FirstSeq <= 1 {
			return fmt.Errorf("stream holds %d bytes from sequence %d: the cap did not drop the oldest", info.State.Bytes, info.State.FirstSeq)
		}
		return nil
	})
	r.stop()
	cfg.AuditRetention = config.Duration{Duration: time.Hour}
	r = start(t, cfg)
	if info, err := r.audit.stream.Info(context.Background()); err != nil || info.Config.MaxAge != time.Hour {
		t.Fatalf("after restart: %+v, %v", info, err)
	}
}
