package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cframe/cframe/bus"
)

// DefaultEtcdPrefix is the key prefix OpenEtcd uses when given none.
const DefaultEtcdPrefix = "/cframe/v1"

// etcdStore keeps the store in etcd v3 under prefix.
type etcdStore struct {
	cli    *clientv3.Client
	prefix string // with a trailing "/"
	// revKey is rewritten in the transaction of every edge change, so its
	// ModRevision is the edge set's revision (etcd's own revision is
	// global, and a deleted key leaves no revision behind).
	revKey string
}

// OpenEtcd connects to etcd and returns a store kept under prefix
// (DefaultEtcdPrefix if empty), with keys "<prefix>/edges/<name>" and
// "<prefix>/pins/<name>", and "<prefix>/edges-revision" marking the last edge
// change. Revisions are etcd's own: monotonic and durable; an edge's revision
// is its key's ModRevision. OpenEtcd fails if no
// endpoint answers a read within dialTimeout (5s if zero).
func OpenEtcd(ctx context.Context, endpoints []string, prefix string, dialTimeout time.Duration) (Store, error) {
	if dialTimeout <= 0 {
		dialTimeout = 5 * time.Second
	}
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	prefix = strings.TrimSuffix(prefix, "/") + "/"
	where := "etcd " + strings.Join(endpoints, ",")
	// The client's own log is noise: its errors come back from each call.
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: dialTimeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s: unreachable: %w", where, err)
		}
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return &etcdStore{cli: cli, prefix: prefix, revKey: prefix + "edges-revision"}, nil
}

// Load reads every key under the prefix in one request, which etcd serves
// from a single revision.
func (s *etcdStore) Load(ctx context.Context) (State, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return State{}, fmt.Errorf("store: %w", err)
	}
	st := newState(0)
	st.Latest = uint64(resp.Header.Revision)
	for _, kv := range resp.Kvs {
		if string(kv.Key) == s.revKey {
			st.Revision = uint64(kv.ModRevision)
			continue
		}
		kind, name, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), s.prefix), "/")
		if err := st.add(kind, name, kv.Value, uint64(kv.ModRevision)); err != nil {
			return State{}, err
		}
	}
	return st, nil
}

// Watch follows the prefix from etcd revision after+1. The client moves
// the watch to another endpoint by itself; a watch that etcd cancels (its
// history compacted) closes the feed.
func (s *etcdStore) Watch(ctx context.Context, after uint64) (<-chan Change, error) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wc := s.cli.Watch(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(int64(after)+1))
	out := make(chan Change, 256)
	go func() {
		defer close(out)
		defer cancel()
		for resp := range wc {
			if resp.Canceled || resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				kind, name, ok := strings.Cut(strings.TrimPrefix(string(ev.Kv.Key), s.prefix), "/")
				if !ok || (kind != KindEdge && kind != KindPin) {
					continue // the revision marker
				}
				ch, err := newChange(kind, name, ev.Kv.Value, uint64(ev.Kv.ModRevision), ev.Type == clientv3.EventTypeDelete)
				if err != nil {
					return
				}
				select {
				case out <- ch:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// PutEdge writes the edge and the revision marker in one transaction that
// first checks the marker's revision: the edge set's.
func (s *etcdStore) PutEdge(ctx context.Context, e bus.Edge, expect uint64) (uint64, error) {
	v, err := encodeEdge(e)
	if err != nil {
		return 0, err
	}
	key := s.key(KindEdge, e.Name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.revKey), "=", int64(expect))).
		Then(clientv3.OpPut(key, string(v)), clientv3.OpPut(s.revKey, e.Name)).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("store: put %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("store: put %s: %w", key, ErrConflict)
	}
	return uint64(resp.Header.Revision), nil
}

func (s *etcdStore) DeleteEdge(ctx context.Context, name string, expect uint64) (uint64, error) {
	key := s.key(KindEdge, name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0), clientv3.Compare(clientv3.ModRevision(s.revKey), "=", int64(expect))).
		Then(clientv3.OpDelete(key), clientv3.OpPut(s.revKey, name)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("store: delete %s: %w", key, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
		}
		return 0, fmt.Errorf("store: delete %s: %w", key, ErrConflict)
	}
	return uint64(resp.Header.Revision), nil
}

// PinKey creates the pin in a transaction that checks it is absent, and
// reads the pinned key otherwise.
func (s *etcdStore) PinKey(ctx context.Context, name, key string) (Pin, error) {
	k := s.key(KindPin, name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, key)).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return Pin{}, fmt.Errorf("store: pin %s: %w", k, err)
	}
	if resp.Succeeded {
		return Pin{Key: key, Created: true, Revision: uint64(resp.Header.Revision)}, nil
	}
	kv := resp.Responses[0].GetResponseRange().Kvs[0]
	return Pin{Key: string(kv.Value), Revision: uint64(kv.ModRevision)}, nil
}

func (s *etcdStore) DeletePin(ctx context.Context, name string) (uint64, error) {
	key := s.key(KindPin, name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("store: delete %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
	}
	return uint64(resp.Header.Revision), nil
}

func (s *etcdStore) Close() error { return s.cli.Close() }

func (s *etcdStore) key(kind, name string) string { return s.prefix + kind + "/" + name }
