package store

import (
	"encoding/json"
	"fmt"

	"github.com/cframe/cframe/bus"
)

// Key kinds, the first key token after the implementation's prefix.
const (
	kindEdges = "edges"
	kindPins  = "pins"
)

// newState returns an empty State at revision rev.
func newState(rev uint64) State {
	return State{Revision: rev, Edges: map[string]bus.Edge{}, Pins: map[string]string{}}
}

// add records one stored value of the given kind in st.
func (st *State) add(kind, name string, value []byte, rev uint64) error {
	switch kind {
	case kindEdges:
		var e bus.Edge
		if err := json.Unmarshal(value, &e); err != nil {
			return fmt.Errorf("store: edge %q: %w", name, err)
		}
		e.Revision = rev
		st.Edges[name] = e
	case kindPins:
		st.Pins[name] = string(value)
	}
	return nil
}

// encodeEdge is an edge's stored value: its JSON without the revision, which
// the store itself keeps.
func encodeEdge(e bus.Edge) ([]byte, error) {
	e.Revision = 0
	return json.Marshal(e)
}
