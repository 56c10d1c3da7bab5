// Package store keeps the controller's record of edges and pinned edge keys.
// Two implementations share the Store interface: the embedded one (a
// JetStream key-value bucket inside the controller's own NATS server, see
// OpenJetStream) and etcd (OpenEtcd), used when controller.toml sets
// etcd = [...].
package store

import (
	"context"
	"errors"

	"github.com/cframe/cframe/bus"
)

// ErrNotFound is returned when deleting something that does not exist.
var ErrNotFound = errors.New("not found")

// State is everything the store holds, as of Revision.
type State struct {
	// Revision is the revision of the edge set: that of its last change
	// (an edge put or delete). Every edge write returns a larger one, it
	// survives restarts, and pin writes do not move it — so after a restart
	// the controller publishes the revision its edges already hold.
	Revision uint64
	Edges    map[string]bus.Edge
	// Pins maps an edge name to the public key pinned for it.
	Pins map[string]string
}

// Store is the controller's durable record. Writes are durable when they
// return. The controller serialises writes itself; implementations need only
// be safe for concurrent use.
type Store interface {
	// Load returns the whole state.
	Load(ctx context.Context) (State, error)
	// PutEdge creates or replaces an edge and returns the new revision. The
	// edge's Revision field is ignored on write; Load fills it with the
	// revision of the edge's last write.
	PutEdge(ctx context.Context, e bus.Edge) (uint64, error)
	// DeleteEdge removes an edge (ErrNotFound if absent) and returns the new revision.
	DeleteEdge(ctx context.Context, name string) (uint64, error)
	// PutPin records the public key pinned for an edge name.
	PutPin(ctx context.Context, name, key string) error
	// DeletePin removes a pin (ErrNotFound if absent).
	DeletePin(ctx context.Context, name string) error
	// Close releases the store's resources.
	Close() error
}
