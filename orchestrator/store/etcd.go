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

func (s *etcdStore) PutEdge(ctx context.Context, e bus.Edge) (uint64, error) {
	v, err := encodeEdge(e)
	if err != nil {
		return 0, err
	}
	key := s.key(kindEdges, e.Name)
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpPut(key, string(v)), clientv3.OpPut(s.revKey, e.Name)).Commit()
	if err != nil {
		return 0, fmt.Errorf("store: put %s: %w", key, err)
	}
	return uint64(resp.Header.Revision), nil
}

func (s *etcdStore) PutPin(ctx context.Context, name, key string) error {
	k := s.key(kindPins, name)
	if _, err := s.cli.Put(ctx, k, key); err != nil {
		return fmt.Errorf("store: put %s: %w", k, err)
	}
	return nil
}

func (s *etcdStore) DeleteEdge(ctx context.Context, name string) (uint64, error) {
	return s.delete(ctx, s.key(kindEdges, name), clientv3.OpPut(s.revKey, name))
}

func (s *etcdStore) DeletePin(ctx context.Context, name string) error {
	_, err := s.delete(ctx, s.key(kindPins, name))
	return err
}

func (s *etcdStore) Close() error { return s.cli.Close() }

func (s *etcdStore) key(kind, name string) string { return s.prefix + kind + "/" + name }

// delete removes key, and runs also, in a transaction that first checks the
// key exists.
func (s *etcdStore) delete(ctx context.Context, key string, also ...clientv3.Op) (uint64, error) {
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(append([]clientv3.Op{clientv3.OpDelete(key)}, also...)...).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("store: delete %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
	}
	return uint64(resp.Header.Revision), nil
}
