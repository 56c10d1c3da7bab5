package netcfg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watch subscribes to link, route, neighbor and address events in the
// calling thread's network namespace and calls notify with a short reason
// whenever one of cframe's objects changes or disappears: a link with its
// alias is deleted, loses the alias, goes down or changes MTU, address or
// name; a main-table route with RouteProtocol is deleted; a neighbor or FDB
// entry on one of its links is deleted or a neighbor stops being permanent;
// an address on one of its links, or an IPv4 /32 anywhere (a VIP, maybe),
// is deleted. The caller should then reconcile.
//
// notify is called from one background goroutine, never concurrently, and
// must not block: bursts (a deleted link takes all its entries along) call it
// many times, so it should only flag the need, e.g. with a non-blocking send
// on a channel of capacity 1. cframe's own changes trigger notifications too;
// the reconcile that follows then finds nothing to do.
//
// The subscriptions exist when Watch returns nil; events are delivered until
// ctx is cancelled. When a subscription fails (e.g. the socket overflowed),
// Watch calls notify with a reason starting "watch restarted" (events may
// have been lost) and subscribes again in the same namespace.
//
// iptables and ipsets have no change events: callers must also reconcile
// periodically (the agent does every ~2 s) to repair flushed or edited
// chains and sets.
func (k *Kernel) Watch(ctx context.Context, notify func(reason string)) error {
	_, err := watch(ctx, notify)
	return err
}

// watch implements Watch and returns a channel closed once the watch has
// fully stopped after ctx is cancelled.
func watch(ctx context.Context, notify func(string)) (<-chan struct{}, error) {
	ns, err := foreignNamespace()
	if err != nil {
		return nil, fmt.Errorf("netcfg: watch: current namespace: %w", err)
	}
	w := &watcher{ns: ns, notify: notify, ours: map[int]watchedLink{}}
	s, err := w.subscribe()
	if err != nil {
		ns.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer ns.Close()
		backoff := 100 * time.Millisecond
		for {
			err := w.run(ctx, s)
			if err == nil {
				return
			}
			notify("watch restarted: " + err.Error())
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				if s, err = w.subscribe(); err == nil {
					break
				}
				backoff = min(2*backoff, 5*time.Second)
			}
		}
	}()
	return done, nil
}

// foreignNamespace returns the calling thread's network namespace when it
// is not the process's (a thread that entered one on its own), or
// netns.None(): the process's own namespace, which every unlocked goroutine
// runs in. Only a foreign namespace needs entering (setns, CAP_SYS_ADMIN)
// to open a socket in it; the agent's systemd unit grants only
// CAP_NET_ADMIN and CAP_NET_RAW and runs it in one namespace.
func foreignNamespace() (netns.NsHandle, error) {
	cur, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	own, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		cur.Close()
		return netns.None(), err
	}
	defer own.Close()
	if cur.Equal(own) {
		cur.Close()
		return netns.None(), nil
	}
	return cur, nil
}

// watcher holds the state of one Watch across resubscriptions.
type watcher struct {
	// ns is the watched namespace when it is not the process's own, or
	// netns.None().
	ns     netns.NsHandle
	notify func(string)
	// ours tracks cframe's links by index.
	ours map[int]watchedLink
}

// watchedLink is what the watcher remembers about one of cframe's links.
type watchedLink struct {
	name string
	up   bool
	mtu  int
	mac  net.HardwareAddr
}

// subscription is one set of netlink subscriptions.
type subscription struct {
	stop  chan struct{}
	links chan netlink.LinkUpdate
	route chan netlink.RouteUpdate
	neigh chan netlink.NeighUpdate
	addrs chan netlink.AddrUpdate
	errs  chan error
}

// subscribe opens the three subscriptions in the watched namespace; the
// link subscription first lists the existing links, which the watcher
// records without notifying.
func (w *watcher) subscribe() (*subscription, error) {
	s := &subscription{
		stop:  make(chan struct{}),
		links: make(chan netlink.LinkUpdate, 256),
		route: make(chan netlink.RouteUpdate, 256),
		neigh: make(chan netlink.NeighUpdate, 256),
		addrs: make(chan netlink.AddrUpdate, 256),
		errs:  make(chan error, 8),
	}
	onErr := func(err error) {
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			return // the initial link list only; later events still arrive
		}
		select {
		case s.errs <- err:
		default:
		}
	}
	const rcvbuf = 1 << 20
	var at *netns.NsHandle // nil: the calling thread's namespace, the process's
	if w.ns.IsOpen() {
		at = &w.ns
	}
	var err error
	if err = netlink.LinkSubscribeWithOptions(s.links, s.stop, netlink.LinkSubscribeOptions{
		Namespace: at, ErrorCallback: onErr, ListExisting: true, ReceiveBufferSize: rcvbuf}); err != nil {
		err = fmt.Errorf("link events: %w", err)
	} else if err = netlink.RouteSubscribeWithOptions(s.route, s.stop, netlink.RouteSubscribeOptions{
		Namespace: at, ErrorCallback: onErr, ReceiveBufferSize: rcvbuf}); err != nil {
		err = fmt.Errorf("route events: %w", err)
	} else if err = netlink.NeighSubscribeWithOptions(s.neigh, s.stop, netlink.NeighSubscribeOptions{
		Namespace: at, ErrorCallback: onErr, ReceiveBufferSize: rcvbuf}); err != nil {
		err = fmt.Errorf("neighbor events: %w", err)
	} else if err = netlink.AddrSubscribeWithOptions(s.addrs, s.stop, netlink.AddrSubscribeOptions{
		Namespace: at, ErrorCallback: onErr, ReceiveBufferSize: rcvbuf}); err != nil {
		err = fmt.Errorf("address events: %w", err)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("netcfg: watch: subscribe to %w", err)
	}
	return s, nil
}

// close stops the subscriptions and waits until their goroutines, which
// close their channels once the sockets are closed, are done.
func (s *subscription) close() {
	close(s.stop)
	links, route, neigh, addrs := s.links, s.route, s.neigh, s.addrs
	for links != nil || route != nil || neigh != nil || addrs != nil {
		select {
		case _, ok := <-links:
			if !ok {
				links = nil
			}
		case _, ok := <-route:
			if !ok {
				route = nil
			}
		case _, ok := <-neigh:
			if !ok {
				neigh = nil
			}
		case _, ok := <-addrs:
			if !ok {
				addrs = nil
			}
		case <-time.After(5 * time.Second):
			return // a subscription that never started has no goroutine
		}
	}
}

// run delivers events until ctx is cancelled (nil) or a subscription fails.
func (w *watcher) run(ctx context.Context, s *subscription) error {
	defer s.close()
	closed := errors.New("netlink subscription closed")
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.errs:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case u, ok := <-s.links:
			if !ok {
				return closed
			}
			if reason := w.linkEvent(u); reason != "" {
				w.notify(reason)
			}
		case u, ok := <-s.route:
			if !ok {
				return closed
			}
			if u.Type == unix.RTM_DELROUTE && int(u.Protocol) == RouteProtocol && u.Table == unix.RT_TABLE_MAIN {
				w.notify(fmt.Sprintf("route %s proto %d deleted", u.Dst, RouteProtocol))
			}
		case u, ok := <-s.neigh:
			if !ok {
				return closed
			}
			if reason := w.neighEvent(u); reason != "" {
				w.notify(reason)
			}
		case u, ok := <-s.addrs:
			if !ok {
				return closed
			}
			if reason := w.addrEvent(u); reason != "" {
				w.notify(reason)
			}
		}
	}
}

func (w *watcher) addrEvent(u netlink.AddrUpdate) string {
	if u.NewAddr {
		return ""
	}
	if l, mine := w.ours[u.LinkIndex]; mine {
		return fmt.Sprintf("address %s on %s deleted", u.LinkAddress.String(), l.name)
	}
	if ones, bits := u.LinkAddress.Mask.Size(); ones == 32 && bits == 32 {
		return fmt.Sprintf("address %s deleted", u.LinkAddress.String())
	}
	return ""
}

func (w *watcher) neighEvent(u netlink.NeighUpdate) string {
	l, mine := w.ours[u.LinkIndex]
	if !mine {
		return ""
	}
	if u.Family == unix.AF_BRIDGE {
		if u.Type == unix.RTM_DELNEIGH {
			return fmt.Sprintf("fdb entry %s on %s deleted", u.HardwareAddr, l.name)
		}
		return ""
	}
	switch {
	case u.Type == unix.RTM_DELNEIGH:
		return fmt.Sprintf("neighbor %s on %s deleted", u.IP, l.name)
	case u.State&netlink.NUD_PERMANENT == 0:
		return fmt.Sprintf("neighbor %s on %s is no longer permanent", u.IP, l.name)
	}
	return ""
}

// linkEvent tracks cframe's links and returns a reason to reconcile, or "".
func (w *watcher) linkEvent(u netlink.LinkUpdate) string {
	a := u.Attrs()
	prev, known := w.ours[a.Index]
	owned := linkFrom(u.Link).Owned()
	switch {
	case u.Header.Type == unix.RTM_DELLINK:
		if !known && !owned {
			return ""
		}
		delete(w.ours, a.Index)
		return fmt.Sprintf("link %s deleted", a.Name)
	case !owned:
		if !known {
			return ""
		}
		delete(w.ours, a.Index)
		return fmt.Sprintf("link %s lost its %s alias", a.Name, OwnerAlias)
	}
	now := watchedLink{name: a.Name, up: a.Flags&net.FlagUp != 0, mtu: a.MTU, mac: a.HardwareAddr}
	w.ours[a.Index] = now
	switch {
	case !known:
		return "" // listed at subscription, or just created by a reconcile
	case prev.up && !now.up:
		return fmt.Sprintf("link %s went down", now.name)
	case prev.mtu != now.mtu:
		return fmt.Sprintf("link %s mtu changed to %d", now.name, now.mtu)
	case !bytes.Equal(prev.mac, now.mac):
		return fmt.Sprintf("link %s address changed to %s", now.name, now.mac)
	case prev.name != now.name && !strings.HasPrefix(prev.name, tempLinkPrefix):
		return fmt.Sprintf("link %s renamed to %s", prev.name, now.name)
	}
	return ""
}
