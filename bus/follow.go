package bus

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/nats.go"
)

// SnapshotTimeout bounds a snapshot request.
const SnapshotTimeout = 3 * time.Second

// Follower keeps a copy of the controller's edge set: a snapshot first, then
// every delta whose Prev is the revision held. A delta that does not follow,
// or a Hello announcing a later revision, means something was missed, and the
// follower fetches a fresh snapshot — so no change is lost or applied out of
// order. With several controllers, deltas of writes made through different
// controllers may arrive out of order, and a controller may announce its
// revision a moment before it has seen the latest write: a Hello behind the
// held revision is ignored, and a snapshot request names the latest revision
// the follower has heard of, which the answering controller waits for. It
// is not safe for concurrent use: drive it from one goroutine. The sets it
// hands out are immutable, so they may cross goroutines.
type Follower struct {
	nc   *nats.Conn
	msgs chan *nats.Msg
	// set is never modified once built: a delta builds the next one
	// (copy-on-write), so a set returned by Set stays that revision's.
	set  map[string]Edge
	rev  uint64
	have bool
	// heard is the latest revision a delta or hello announced.
	heard uint64
}

// Follow subscribes to deltas and hellos on nc. Subscriptions made before
// the connection is up are sent when it comes up.
func Follow(nc *nats.Conn) (*Follower, error) {
	f := &Follower{nc: nc, msgs: make(chan *nats.Msg, 4096)}
	for _, subj := range []string{SubjectDelta, SubjectHello} {
		if _, err := nc.ChanSubscribe(subj, f.msgs); err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
	}
	return f, nil
}

// Messages delivers the deltas and hellos to pass to Handle.
func (f *Follower) Messages() <-chan *nats.Msg { return f.msgs }

// Set returns the held edge set, its revision, and whether the follower
// holds a set at all yet. The set is that revision's for good: the follower
// never modifies it (nor may anyone else), so it can be handed to other
// goroutines as it is.
func (f *Follower) Set() (map[string]Edge, uint64, bool) { return f.set, f.rev, f.have }

// Latest is the controller's current revision as last heard of: what Set
// lags behind when a fetch failed.
func (f *Follower) Latest() uint64 { return f.heard }

// Restore seeds the follower with a saved snapshot (taken over by the
// follower) until the controller can be asked.
func (f *Follower) Restore(s Snapshot) {
	f.set = make(map[string]Edge, len(s.Edges))
	for _, e := range s.Edges {
		f.set[e.Name] = e
	}
	f.rev, f.have = s.Revision, true
}

// Snapshot returns the held set as a Snapshot (for saving).
func (f *Follower) Snapshot() Snapshot {
	s := Snapshot{Revision: f.rev, Edges: make([]Edge, 0, len(f.set))}
	for _, e := range f.set {
		s.Edges = append(s.Edges, e)
	}
	return s
}

// Handle processes one message from Messages. It returns a description of
// the change when the held set changed, "" when it did not; an error means a
// needed snapshot could not be fetched (the held set is unchanged).
func (f *Follower) Handle(m *nats.Msg) (string, error) {
	if m.Subject == SubjectHello {
		var h Hello
		if err := Decode(m, &h); err != nil {
			return "", err
		}
		if f.have && h.Revision <= f.rev {
			return "", nil // current, or a controller that has not caught up yet
		}
		f.heard = max(f.heard, h.Revision)
		return f.Resync(fmt.Sprintf("controller is at revision %d, held %d", h.Revision, f.rev))
	}
	var d Delta
	if err := Decode(m, &d); err != nil {
		return "", err
	}
	f.heard = max(f.heard, d.Revision)
	switch {
	case !f.have:
		return f.Resync("delta before any snapshot")
	case d.Revision <= f.rev:
		return "", nil // already part of the held set
	case d.Prev != f.rev:
		return f.Resync(fmt.Sprintf("missed revisions %d..%d", f.rev+1, d.Prev))
	}
	if err := f.apply([]Delta{d}); err != nil {
		return "", err
	}
	return fmt.Sprintf("revision %d: %s edge %s", d.Revision, d.Op, d.Edge.Name), nil
}

// apply moves the held set along deltas, each following the one before it
// and the first the held revision (one copy of the set for all of them).
func (f *Follower) apply(ds []Delta) error {
	next, rev := maps.Clone(f.set), f.rev
	for _, d := range ds {
		if d.Prev != rev {
			return fmt.Errorf("delta %d follows revision %d, not %d", d.Revision, d.Prev, rev)
		}
		switch d.Op {
		case OpPut:
			next[d.Edge.Name] = d.Edge
		case OpDelete:
			delete(next, d.Edge.Name)
		default:
			return fmt.Errorf("delta %d: unknown op %q", d.Revision, d.Op)
		}
		rev = d.Revision
	}
	f.set, f.rev = next, rev
	return nil
}

// Resync replaces the held set with the controller's current snapshot; when
// the held set is current, the controller says so and nothing changes.
func (f *Follower) Resync(why string) (string, error) {
	req := SnapshotRequest{Want: f.heard, Accept: []string{AcceptZstd}}
	if f.have {
		req.Have = f.rev
		req.Want = max(req.Want, f.rev)
		req.Accept = append(req.Accept, AcceptDeltas)
	}
	s, err := f.request(req)
	if err != nil {
		return "", fmt.Errorf("fetch edge set (%s): %w", why, err)
	}
	f.heard = max(f.heard, s.Revision)
	switch {
	case s.Unchanged:
		if s.Revision != f.rev {
			return "", fmt.Errorf("fetch edge set (%s): controller says revision %d is unchanged, held %d", why, s.Revision, f.rev)
		}
		return "", nil
	case s.Since != 0:
		from := f.rev
		err := error(nil)
		if s.Since != from {
			err = fmt.Errorf("they start from revision %d", s.Since)
		} else if err = f.apply(s.Deltas); err == nil && f.rev != s.Revision {
			err = fmt.Errorf("they end at revision %d, not %d", f.rev, s.Revision)
		}
		if err == nil {
			return fmt.Sprintf("snapshot revision %d: %d changes since %d (%s)", s.Revision, len(s.Deltas), from, why), nil
		}
		// Not what was asked for: take the whole set instead.
		if s, err = f.request(SnapshotRequest{Want: req.Want, Accept: []string{AcceptZstd}}); err != nil {
			return "", fmt.Errorf("fetch edge set (%s): %w", why, err)
		}
	}
	f.Restore(s)
	return fmt.Sprintf("snapshot revision %d (%s)", s.Revision, why), nil
}

func (f *Follower) request(req SnapshotRequest) (Snapshot, error) {
	var s Snapshot
	body, err := json.Marshal(req)
	if err != nil {
		return s, err
	}
	m, err := f.nc.Request(SubjectSnapshot, body, SnapshotTimeout)
	if err != nil {
		return s, err
	}
	return s, Decode(m, &s)
}
