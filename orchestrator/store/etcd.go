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
}

// OpenEtcd connects to etcd and returns a store kept under prefix
// (DefaultEtcdPrefix if empty), with keys "<prefix>/edges/<name>" and
// "<prefix>/pins/<name>". Revisions are etcd's own: global, monotonic and
// durable; an edge's revision is its key's ModRevision. OpenEtcd fails if no
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
	return &etcdStore{cli: cli, prefix: prefix}, nil
}

// Load reads every key under the prefix in one request, which etcd serves
// from a single revision.
func (s *etcdStore) Load(ctx context.Context) (State, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return State{}, fmt.Errorf("store: %w", err)
	}
	st := newState(uint64(resp.Header.Revision))
	for _, kv := range resp.Kvs {
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
	return s.put(ctx, s.key(kindEdges, e.Name), string(v))
}

func (s *etcdStore) PutPin(ctx context.Context, name, key string) (uint64, error) {
	return s.put(ctx, s.key(kindPins, name), key)
}

func (s *etcdStore) DeleteEdge(ctx context.Context, name string) (uint64, error) {
	return s.delete(ctx, s.key(kindEdges, name))
}

func (s *etcdStore) DeletePin(ctx context.Context, name string) (uint64, error) {
	return s.delete(ctx, s.key(kindPins, name))
}

func (s *etcdStore) Close() error { return s.cli.Close() }

func (s *etcdStore) key(kind, name string) string { return s.prefix + kind + "/" + name }

func (s *etcdStore) put(ctx context.Context, key, v string) (uint64, error) {
	resp, err := s.cli.Put(ctx, key, v)
	if err != nil {
		return 0, fmt.Errorf("store: put %s: %w", key, err)
	}
	return uint64(resp.Header.Revision), nil
}

// delete removes key in a transaction that first checks it exists.
func (s *etcdStore) delete(ctx context.Context, key string) (uint64, error) {
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
