package store

import (
	"encoding/json"
	"fmt"

	"github.com/cframe/cframe/bus"
)

// newState returns an empty State at revision rev.
func newState(rev uint64) State {
	return State{Revision: rev, Edges: map[string]bus.Edge{}, Pins: map[string]string{}}
}

// add records one stored value of the given kind in st.
func (st *State) add(kind, name string, value []byte, rev uint64) error {
	switch kind {
	case KindEdge:
		e, err := decodeEdge(name, value, rev)
		if err != nil {
			return err
		}
		st.Edges[name] = e
	case KindPin:
		st.Pins[name] = string(value)
	}
	return nil
}

// newChange decodes one write of the change feed.
func newChange(kind, name string, value []byte, rev uint64, deleted bool) (Change, error) {
	ch := Change{Revision: rev, Kind: kind, Name: name, Deleted: deleted}
	switch {
	case deleted:
	case kind == KindEdge:
		e, err := decodeEdge(name, value, rev)
		if err != nil {
			return ch, err
		}
		ch.Edge = e
	case kind == KindPin:
		ch.Key = string(value)
	}
	return ch, nil
}

// encodeEdge is an edge's stored value: its JSON without the revision, which
// the store itself keeps.
func encodeEdge(e bus.Edge) ([]byte, error) {
	e.Revision = 0
	return json.Marshal(e)
}

func decodeEdge(name string, value []byte, rev uint64) (bus.Edge, error) {
	var e bus.Edge
	if err := json.Unmarshal(value, &e); err != nil {
		return e, fmt.Errorf("store: edge %q: %w", name, err)
	}
	e.Revision = rev
	return e, nil
}
