package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// The audit trail. The controller writes every Event to
// AuditInSubject(kind, edge); the JetStream stream AuditStream keeps them
// (bounded by age and size) and republishes each one, as stored, on the
// public EventSubject(kind, edge) with its stream sequence in the
// "Nats-Sequence" header. A reader replays the kept events with
// ReplayRequests on SubjectAuditReplay and follows the live ones on
// SubjectEventsAll; the sequence joins the two without a gap or a repeat
// (FollowEvents does exactly that).
//
// AuditUser may publish only on SubjectAuditReplay and subscribe only to
// SubjectEventsAll and its own inbox (AuditInboxPrefix), so it can neither
// write nor delete events: the controller answers its requests itself and
// answers only into that inbox.
const (
	// AuditStream is the JetStream stream that keeps audit events.
	AuditStream = "CFRAME_AUDIT"
	// SubjectAuditIn matches every subject the stream stores from.
	SubjectAuditIn = prefix + "audit.in.>"
	// SubjectAuditReplay is the request subject for a ReplayPage.
	SubjectAuditReplay = prefix + "audit.replay"
	// AuditInboxPrefix is the reply-subject prefix audit readers must use.
	AuditInboxPrefix = "_INBOX_audit"
	// HeaderSequence carries an event's stream sequence on the live subject.
	HeaderSequence = "Nats-Sequence"
)

// AuditInSubject is where the controller writes an event of one kind about
// one edge; the stream republishes it on EventSubject(kind, edge).
func AuditInSubject(kind, edge string) string { return prefix + "audit.in." + kind + "." + edge }

// ReplayRequest asks for kept events after a point: the events stored after
// sequence After, or, when After is 0, the events stored at or after Since.
type ReplayRequest struct {
	Since time.Time `json:"since,omitzero"`
	After uint64    `json:"after,omitempty"`
	// Limit bounds the events of one page (at most MaxReplayPage; 0 means
	// MaxReplayPage).
	Limit int `json:"limit,omitempty"`
}

// MaxReplayPage bounds the events of one ReplayPage.
const MaxReplayPage = 1000

// ReplayTimeout bounds one replay request.
const ReplayTimeout = 10 * time.Second

// ReplayPage answers a ReplayRequest: events in stream order, each with its
// Seq, and Last, the stream's last sequence when the page was read. A reader
// has caught up when its last event's Seq reaches Last (or Events is empty).
type ReplayPage struct {
	Events []Event `json:"events"`
	Last   uint64  `json:"last"`
	Error  string  `json:"error,omitempty"`
}

// AuditOptions are the NATS options of an audit reader: the audit user and
// the inbox prefix its replies must arrive in.
func AuditOptions(password string) []nats.Option {
	return []nats.Option{nats.UserInfo(AuditUser, password), nats.CustomInboxPrefix(AuditInboxPrefix)}
}

// EventFromMsg decodes a live event and takes its sequence from the header.
func EventFromMsg(m *nats.Msg) (Event, error) {
	var e Event
	if err := Decode(m, &e); err != nil {
		return e, err
	}
	if m.Header != nil {
		e.Seq, _ = strconv.ParseUint(m.Header.Get(HeaderSequence), 10, 64)
	}
	return e, nil
}

// Replay requests one page of kept events.
func Replay(ctx context.Context, nc *nats.Conn, req ReplayRequest) (ReplayPage, error) {
	var p ReplayPage
	body, err := json.Marshal(req)
	if err != nil {
		return p, err
	}
	ctx, cancel := context.WithTimeout(ctx, ReplayTimeout)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, SubjectAuditReplay, body)
	if err != nil {
		return p, fmt.Errorf("replay audit events: %w", err)
	}
	if err := Decode(m, &p); err != nil {
		return p, err
	}
	if p.Error != "" {
		return p, fmt.Errorf("replay audit events: %s", p.Error)
	}
	return p, nil
}

// FollowEvents hands every kept event stored at or after since to fn, in
// order, then every live event until ctx ends (a zero since skips the
// replay). A live event that shows a gap (the reader was slow or
// reconnected) is preceded by a replay of what was missed, so fn sees each
// event once, in stream order. It returns ctx's error or the first failure.
func FollowEvents(ctx context.Context, nc *nats.Conn, since time.Time, fn func(Event)) error {
	live := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(SubjectEventsAll, live)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return err
	}
	var last uint64 // sequence of the last event handed to fn
	started := time.Now()
	// resume asks for what follows the last event handed over.
	resume := func() ReplayRequest {
		switch {
		case last > 0:
			return ReplayRequest{After: last}
		case since.IsZero():
			return ReplayRequest{Since: started}
		}
		return ReplayRequest{Since: since}
	}
	catchUp := func(req ReplayRequest, upTo uint64) error {
		for {
			p, err := Replay(ctx, nc, req)
			if err != nil {
				return err
			}
			for _, e := range p.Events {
				if e.Seq > last {
					fn(e)
					last = e.Seq
				}
			}
			if len(p.Events) == 0 || last >= max(p.Last, upTo) {
				return nil
			}
			req = ReplayRequest{After: last}
		}
	}
	if !since.IsZero() {
		if err := catchUp(ReplayRequest{Since: since}, 0); err != nil {
			return err
		}
	}
	// Messages dropped on the way here (a slow reader) or lost while
	// reconnecting show up as a gap only when a later event arrives; look
	// for them locally every second too, so the last events of a burst are
	// not held back.
	check := time.NewTicker(time.Second)
	defer check.Stop()
	dropped, reconnects := 0, nc.Stats().Reconnects
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			d, _ := sub.Dropped()
			if r := nc.Stats().Reconnects; d != dropped || r != reconnects {
				dropped, reconnects = d, r
				if err := catchUp(resume(), 0); err != nil {
					return err
				}
			}
		case m := <-live:
			e, err := EventFromMsg(m)
			if err != nil || e.Seq == 0 {
				continue // not from the stream
			}
			switch {
			case e.Seq <= last:
			case last != 0 && e.Seq > last+1:
				if err := catchUp(resume(), e.Seq); err != nil {
					return err
				}
			default:
				fn(e)
				last = e.Seq
			}
		}
	}
}

// ParseSince reads a --since value: a duration back from now ("1h", "30m",
// "7d") or an RFC 3339 time.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("since %q: want a duration like 1h, 30m or 7d, or an RFC 3339 time", s)
	}
	return now.Add(-d), nil
}

// ParseDuration is time.ParseDuration that also takes days ("30d", "1d12h").
func ParseDuration(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		return time.ParseDuration(s)
	}
	n, err := strconv.ParseUint(days, 10, 32)
	if err != nil {
		return 0, errors.New("invalid duration " + strconv.Quote(s))
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil {
			return 0, errors.New("invalid duration " + strconv.Quote(s))
		}
		d += r
	}
	return d, nil
}
