package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/store"
)

// Every edge name is pinned to the identity key it first connected with.
// The pins live in the store beside the edge set (the view follows them);
// this controller's pin writes of one name take turns (c.pinWrite), those
// of different names run side by side, up to maxPinWrites at once
// (c.pinSlots); the others wait their turn for up to pinTimeout, so ten
// thousand edges joining at once are pinned a few dozen at a time, each
// write done well within its timeout, rather than all of them at once,
// each timing out after the store spent its time on it, and retried.

// maxPinWrites is how many pin writes this controller has in flight.
const maxPinWrites = 32

// pinTimeout bounds the store write that pins a new key: the server is
// holding the edge's connection meanwhile.
const pinTimeout = 3 * time.Second

// Pin implements embedded.Pinner: the first key an edge name connects with is
// stored; any other key is refused until the edge is deleted. The store
// decides which key is first, so two controllers that see two keys for one
// name at once pin only one of them.
func (c *Controller) Pin(name, key string) error {
	if !c.ready.Load() {
		return errors.New("controller is starting")
	}
	pinned, ok := c.view.now().pins[name]
	if ok && pinned != key {
		return c.refuseKey(name, pinned, key)
	}
	if ok {
		return nil
	}
	if err := c.writable(); err != nil {
		return fmt.Errorf("cannot pin a new key now: %w", err)
	}
	wait, cancelWait := context.WithTimeout(c.ctx, pinTimeout)
	defer cancelWait()
	release, err := c.pinSlots.take(wait)
	if err != nil {
		return fmt.Errorf("cannot pin a new key now: %d key pins in flight, none done within %s", maxPinWrites, pinTimeout)
	}
	defer release()
	defer c.pinWrite.lock(name)()
	ctx, cancel := context.WithTimeout(c.ctx, pinTimeout)
	defer cancel()
	p, err := c.store.PinKey(ctx, name, key)
	if err != nil {
		return fmt.Errorf("store key pin: %w", err)
	}
	c.view.pinned(name, p.Key, p.Revision)
	if p.Key != key {
		return c.refuseKey(name, p.Key, key)
	}
	if p.Created {
		c.log.Info("pinned edge key", "edge", name, "key", key)
		c.event(bus.EventKeyPinned, name, 0, key)
	}
	return nil
}

func (c *Controller) refuseKey(name, pinned, key string) error {
	c.event(bus.EventKeyRefused, name, 0, "presented key "+key)
	return fmt.Errorf("edge %s is pinned to key %s, not %s: delete and re-add the edge to accept a new key", name, pinned, key)
}

// unpin removes an edge's pinned key from the store, reporting whether
// there was one. It asks the store even when the view has no pin: another
// controller may have pinned a key a moment ago.
func (c *Controller) unpin(ctx context.Context, name string) (bool, error) {
	defer c.pinWrite.lock(name)()
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	rev, err := c.store.DeletePin(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: delete key pin of %s: %v", api.ErrUnavailable, name, err)
	}
	c.view.pinned(name, "", rev)
	return true, nil
}

// slots bounds the work in flight: one slot each.
type slots chan struct{}

// take waits for a free slot until ctx is done, and returns its release.
func (s slots) take(ctx context.Context) (func(), error) {
	select {
	case s <- struct{}{}:
		return func() { <-s }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// nameLocks is a lock per name, held only while in use.
type nameLocks struct {
	mu    sync.Mutex
	locks map[string]*nameLock
}

type nameLock struct {
	sync.Mutex
	users int
}

// lock takes name's lock and returns its release.
func (l *nameLocks) lock(name string) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*nameLock{}
	}
	nl := l.locks[name]
	if nl == nil {
		nl = &nameLock{}
		l.locks[name] = nl
	}
	nl.users++
	l.mu.Unlock()
	nl.Lock()
	return func() {
		nl.Unlock()
		l.mu.Lock()
		if nl.users--; nl.users == 0 {
			delete(l.locks, name)
		}
		l.mu.Unlock()
	}
}
