// Package store keeps the controller's record of edges and pinned edge keys.
// Two implementations share the Store interface: the embedded one (a
// JetStream key-value bucket inside the controller's own NATS server,
// replicated over the controllers of a cluster, see OpenJetStream) and etcd
// (OpenEtcd), used when controller.toml sets etcd = [...].
//
// Several controllers may write to one store at once. Edge writes are
// therefore conditional: each names the edge-set revision it was validated
// against and fails with ErrConflict when another write came first, so a
// check such as "no CIDR overlaps" holds across controllers. Every
// controller follows the others' writes through Watch.
package store

import (
	"context"
	"errors"

	"github.com/cframe/cframe/bus"
)

// ErrNotFound is returned when deleting something that does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned by a conditional edge write when the edge set is
// no longer at the revision the write was conditional on: another write
// (perhaps by another controller) came first. Catch up and validate again.
var ErrConflict = errors.New("the edge set changed meanwhile")

// State is everything the store holds, as of Revision.
type State struct {
	// Revision is the revision of the edge set: that of its last change
	// (an edge put or delete). Every edge write returns a larger one, it
	// survives restarts, and pin writes do not move it — so after a restart
	// the controller publishes the revision its edges already hold.
	Revision uint64
	// Latest is the store's own revision when the state was read: that of
	// its last write of any kind, pins included. Watch(ctx, Latest)
	// delivers exactly the writes that came after this state.
	Latest uint64
	Edges  map[string]bus.Edge
	// Pins maps an edge name to the public key pinned for it.
	Pins map[string]string
}

// Kinds of stored records.
const (
	KindEdge = "edges"
	KindPin  = "pins"
)

// Change is one write seen on the store's change feed.
type Change struct {
	// Revision is the store revision of the write; for an edge write it is
	// the edge set's new revision.
	Revision uint64
	// Kind is KindEdge or KindPin; Name is the edge's name.
	Kind, Name string
	// Deleted marks a delete; otherwise Edge (KindEdge, Revision filled)
	// or Key (KindPin) is the new value.
	Deleted bool
	Edge    bus.Edge
	Key     string
}

// Pin is the outcome of PinKey.
type Pin struct {
	// Key is the key pinned for the name after the call: the one asked
	// for, or the one pinned before.
	Key string
	// Created is true when this call pinned Key.
	Created bool
	// Revision is the store revision of the pin's write.
	Revision uint64
}

// Store is the controller's durable record. Writes are durable (on a quorum
// of replicas, where replicated) when they return. Implementations are safe
// for concurrent use by several controllers.
type Store interface {
	// Load returns the whole state.
	Load(ctx context.Context) (State, error)
	// Watch delivers every write with a store revision above after, in
	// order, until ctx ends or the feed fails; then the channel is closed
	// (Load again and start a new Watch to go on).
	Watch(ctx context.Context, after uint64) (<-chan Change, error)
	// PutEdge creates or replaces an edge if the edge set is still at
	// revision expect (0: no edge was ever written), and returns the new
	// revision; ErrConflict otherwise. The edge's Revision field is
	// ignored on write; Load fills it with the revision of its last write.
	PutEdge(ctx context.Context, e bus.Edge, expect uint64) (uint64, error)
	// DeleteEdge removes an edge if the edge set is still at revision
	// expect, and returns the new revision; ErrNotFound if it is absent,
	// ErrConflict if the set moved on.
	DeleteEdge(ctx context.Context, name string, expect uint64) (uint64, error)
	// PinKey pins key for an edge name unless a key is pinned already, and
	// says which key is pinned afterwards.
	PinKey(ctx context.Context, name, key string) (Pin, error)
	// DeletePin removes a pin (ErrNotFound if absent) and returns the
	// store revision of the delete.
	DeletePin(ctx context.Context, name string) (uint64, error)
	// Close releases the store's resources.
	Close() error
}
