package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

// replayTimeout bounds the reading of one replay page.
const replayTimeout = 5 * time.Second

// auditOpenTimeout bounds the wait for a forming cluster to take the audit
// stream.
const auditOpenTimeout = time.Minute

// auditQueue is how many events may wait for the stream (a replicated
// stream electing a leader); auditDrain how long a stopping controller
// goes on writing them.
const (
	auditQueue = 4096
	auditDrain = 2 * time.Second
)

// audit is the kept audit trail: the JetStream stream that stores every
// event the controller writes (bounded by audit_retention and
// audit_max_bytes, the oldest dropped first) and republishes it on the
// public event subjects, and the replay service readers page through it.
type audit struct {
	stream jetstream.Stream
	sub    *nats.Subscription
	js     jetstream.JetStream
	// queue holds the events on their way to the stream; the writer ends
	// once stopping is closed and the queue is empty (or auditDrain is up),
	// then closes done.
	queue          chan bus.Event
	stopping, done chan struct{}
	stopOnce       sync.Once
}

// openAudit creates or updates the audit stream (a changed retention takes
// effect at once; the controllers of a cluster should agree on it) with as
// many replicas as the embedded store, and starts answering replay
// requests and writing events. It retries while JetStream is slow to answer
// (a cluster still forming, a loaded machine).
func (c *Controller) openAudit() error {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return err
	}
	c.audit.js = js
	cfg := jetstream.StreamConfig{
		Name:        bus.AuditStream,
		Description: "cframe audit events",
		Subjects:    []string{bus.SubjectAuditIn},
		MaxAge:      c.cfg.AuditRetention.Duration,
		MaxBytes:    c.cfg.AuditMaxBytes,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas(c.cfg),
		RePublish:   &jetstream.RePublish{Source: bus.SubjectAuditIn, Destination: bus.SubjectEventsAll},
	}
	deadline := time.Now().Add(auditOpenTimeout)
	for attempt := time.Second; ; attempt = min(2*attempt, 8*time.Second) {
		ctx, cancel := context.WithTimeout(c.ctx, attempt)
		c.audit.stream, err = js.CreateOrUpdateStream(ctx, cfg)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || c.ctx.Err() != nil {
			return fmt.Errorf("audit stream: %w", err)
		}
		c.log.Info("waiting for JetStream to hold the audit stream", "err", err)
	}
	// A queue group: with several controllers, one answers each request.
	if c.audit.sub, err = c.nc.QueueSubscribe(bus.SubjectAuditReplay, bus.QueueControllers, c.onReplay); err != nil {
		return err
	}
	c.audit.queue, c.audit.stopping, c.audit.done = make(chan bus.Event, auditQueue), make(chan struct{}), make(chan struct{})
	go c.writeAudit()
	return nil
}

// writeAudit stores the queued events in order, each acknowledged by the
// stream. Once the controller stops, it goes on for up to auditDrain with
// what is queued.
func (c *Controller) writeAudit() {
	defer close(c.audit.done)
	giveUp := make(chan struct{})
	go func() {
		<-c.audit.stopping
		time.AfterFunc(auditDrain, func() { close(giveUp) })
	}()
	run := fmt.Sprintf("%s-%d", c.cfg.ServerName, time.Now().UnixNano())
	for n := 1; ; n++ {
		select {
		case e := <-c.audit.queue:
			if !c.keep(e, fmt.Sprintf("%s-%d", run, n), giveUp) {
				c.log.Error("audit events not kept: the controller stopped before the stream took them", "events", len(c.audit.queue)+1)
				return
			}
		case <-c.audit.stopping:
			if len(c.audit.queue) == 0 {
				return
			}
		}
	}
}

// keep stores one event. A publish the stream cannot take now (a
// replicated stream electing a leader) is tried again under the same id,
// which the stream recognises: the event is kept once however often it is
// sent. It reports false if giveUp closes first.
func (c *Controller) keep(e bus.Event, id string, giveUp <-chan struct{}) bool {
	body, err := json.Marshal(e)
	if err != nil {
		c.log.Error("audit event not kept", "kind", e.Kind, "edge", e.Edge, "err", err)
		return true
	}
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), storeAttempt)
		_, err = c.audit.js.Publish(ctx, bus.AuditInSubject(e.Kind, e.Edge), body, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return true
		}
		if wait == 50*time.Millisecond {
			c.log.Warn("the audit stream does not take events now; retrying", "err", err)
		}
		select {
		case <-giveUp:
			return false
		case <-time.After(wait):
		}
	}
}

// closeAudit lets the writer store what is queued, for up to auditDrain.
func (c *Controller) closeAudit() {
	if c.audit.done == nil {
		return
	}
	c.audit.stopOnce.Do(func() { close(c.audit.stopping) })
	<-c.audit.done
}

// event records what the controller saw by itself (heartbeats, key pins).
func (c *Controller) event(kind, edge string, rev uint64, detail string) {
	c.record(bus.Event{Kind: kind, Edge: edge, Revision: rev, Detail: detail})
}

// apiEvent records a change an API client asked for, naming the client.
func (c *Controller) apiEvent(ctx context.Context, kind, edge string, rev uint64, detail string) {
	c.record(bus.Event{Kind: kind, Edge: edge, Revision: rev, Detail: detail, Actor: api.ActorOf(ctx)})
}

// record queues an event for the audit stream, which keeps it and
// publishes it to live readers. It never blocks: a full queue (the stream
// unavailable for long) drops the event, saying so.
func (c *Controller) record(e bus.Event) {
	e.Time = time.Now().UTC()
	c.metrics.auditEvents.WithLabelValues(e.Kind).Inc()
	select {
	case c.audit.queue <- e:
	default:
		c.log.Error("audit event dropped: the audit stream has not taken events for long", "kind", e.Kind, "edge", e.Edge)
	}
	c.changed()
}

// onReplay answers a ReplayRequest with one page of kept events. Answers go
// only into an audit inbox: a reader cannot make the controller publish on
// any other subject.
func (c *Controller) onReplay(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	if !strings.HasPrefix(m.Reply, bus.AuditInboxPrefix+".") {
		c.log.Warn("ignored audit replay request: reply subject is not an audit inbox", "reply", m.Reply)
		return
	}
	var req bus.ReplayRequest
	p, err := bus.ReplayPage{}, bus.Decode(m, &req)
	if err == nil {
		p, err = c.replay(req)
	}
	if err != nil {
		p = bus.ReplayPage{Error: err.Error()}
	}
	b, err := json.Marshal(p)
	if err == nil {
		err = m.Respond(b)
	}
	if err != nil {
		c.log.Warn("audit replay reply failed", "err", err)
	}
}

// replay reads up to one page of events after req's starting point.
func (c *Controller) replay(req bus.ReplayRequest) (bus.ReplayPage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
	defer cancel()
	info, err := c.audit.stream.Info(ctx)
	if err != nil {
		return bus.ReplayPage{}, err
	}
	p := bus.ReplayPage{Events: []bus.Event{}, Last: info.State.LastSeq}
	cfg := jetstream.OrderedConsumerConfig{InactiveThreshold: 10 * time.Second}
	switch {
	case req.After > 0:
		if req.After >= p.Last {
			return p, nil
		}
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, req.After+1
	case !req.Since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &req.Since
	default:
		return p, errors.New("a replay request needs since or after")
	}
	if p.Last == 0 {
		return p, nil
	}
	limit := req.Limit
	if limit <= 0 || limit > bus.MaxReplayPage {
		limit = bus.MaxReplayPage
	}
	cons, err := c.audit.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return p, err
	}
	batch, err := cons.FetchNoWait(limit)
	if err != nil {
		return p, err
	}
	for msg := range batch.Messages() {
		var e bus.Event
		meta, err := msg.Metadata()
		if err != nil || json.Unmarshal(msg.Data(), &e) != nil {
			continue // not an event: nothing else is written there
		}
		e.Seq = meta.Sequence.Stream
		p.Events = append(p.Events, e)
	}
	return p, batch.Error()
}
