package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
)

// Watch liveness: the change feed's consumer is recreated (on a surviving
// server) when its heartbeats stop for two intervals.
const (
	watchHeartbeat = time.Second
	watchExpiry    = 5 * time.Second
)

// jsStore is the embedded store: one JetStream key-value bucket.
type jsStore struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	bucket string
	stream string // the bucket's backing stream
	prefix string // "$KV.<bucket>.": the subject of key k is prefix+k
}

// OpenJetStream opens (creating it if needed) the key-value bucket that holds
// the store inside the controller's own embedded NATS server, with keys
// "edges.<name>" and "pins.<name>", stored on replicas servers of the NATS
// cluster (1 for a lone controller, 3 for a cluster).
//
// A JetStream bucket is the embedded store because the controller runs that
// server anyway: it adds no dependency and no process, and in a cluster of
// controllers JetStream replicates it by Raft, so a write is acknowledged
// once a majority of the replicas holds it. With file storage the bucket
// lives on disk in the server's JetStream store directory, which the
// controller puts under its data_dir; the controller runs the server with
// SyncAlways, so a write is on disk when it returns. Every write to the
// bucket is one message of its backing stream, so the stream sequence is a
// revision that increases monotonically, counts deletes (a delete leaves a
// marker message) and survives restarts. The bucket keeps one value per key
// (history 1), so the last sequence among the edge keys is the edge set's
// revision, and an edge write is conditional on it (the stream's expected
// last sequence for the subject filter of every edge key).
//
// Close does not close js's connection, which belongs to the caller.
func OpenJetStream(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "cframe controller store",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("store: jetstream bucket %q: %w", bucket, err)
	}
	return &jsStore{kv: kv, js: js, bucket: bucket, stream: "KV_" + bucket, prefix: "$KV." + bucket + "."}, nil
}

// Load reads the last entry of every key through a watcher, whose view is
// consistent: the latest entry of each key up to the highest sequence it
// delivered. The edge set's revision is the highest sequence among the edge
// keys, delete markers included (with history 1 a delete leaves its marker
// as the key's last entry); Latest is the highest sequence of all.
func (s *jsStore) Load(ctx context.Context) (State, error) {
	st := newState(0)
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return State{}, fmt.Errorf("store: %w", err)
	}
	defer w.Stop()
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
		case <-ctx.Done():
			return State{}, ctx.Err()
		}
		if !ok {
			return State{}, errors.New("store: watcher closed while loading")
		}
		if e == nil { // all current entries delivered
			return st, nil
		}
		kind, name, _ := strings.Cut(e.Key(), ".")
		if kind == KindEdge {
			st.Revision = max(st.Revision, e.Revision())
		}
		st.Latest = max(st.Latest, e.Revision())
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		if err := st.add(kind, name, e.Value(), e.Revision()); err != nil {
			return State{}, err
		}
	}
}

// Watch follows the bucket's stream with an ordered consumer, which the
// client recreates from the last sequence it delivered when the consumer's
// server goes away (heartbeats stop): the feed survives the loss of any one
// server of a cluster without a gap.
func (s *jsStore) Watch(ctx context.Context, after uint64) (<-chan Change, error) {
	cons, err := s.js.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.prefix + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    after + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("store: watch: %w", err)
	}
	out := make(chan Change, 256)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		ch, ok := s.change(m, meta.Sequence.Stream)
		if !ok {
			return
		}
		select {
		case out <- ch:
		case <-ctx.Done():
		}
	}, jetstream.PullHeartbeat(watchHeartbeat), jetstream.PullExpiry(watchExpiry))
	if err != nil {
		return nil, fmt.Errorf("store: watch: %w", err)
	}
	go func() {
		<-ctx.Done()
		cc.Stop()
		<-cc.Closed()
		close(out)
	}()
	return out, nil
}

// change decodes one message of the bucket's stream.
func (s *jsStore) change(m jetstream.Msg, seq uint64) (Change, bool) {
	kind, name, ok := strings.Cut(strings.TrimPrefix(m.Subject(), s.prefix), ".")
	if !ok || (kind != KindEdge && kind != KindPin) {
		return Change{}, false
	}
	ch, err := newChange(kind, name, m.Data(), seq, m.Headers().Get("KV-Operation") != "")
	return ch, err == nil
}

func (s *jsStore) PutEdge(ctx context.Context, e bus.Edge, expect uint64) (uint64, error) {
	v, err := encodeEdge(e)
	if err != nil {
		return 0, err
	}
	m := nats.NewMsg(s.prefix + KindEdge + "." + e.Name)
	m.Data = v
	return s.publishEdge(ctx, m, expect)
}

// DeleteEdge writes the key's delete marker, conditional on the edge set's
// revision like a put.
func (s *jsStore) DeleteEdge(ctx context.Context, name string, expect uint64) (uint64, error) {
	key := KindEdge + "." + name
	if _, err := s.kv.Get(ctx, key); errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
	} else if err != nil {
		return 0, fmt.Errorf("store: delete %s: %w", key, err)
	}
	return s.publishEdge(ctx, deleteMarker(s.prefix+key), expect)
}

// publishEdge stores m if the last message on any edge key is still at
// sequence expect: the stream checks it (and refuses a second such write
// while one is in flight), so two controllers validating against the same
// edge set cannot both write. The message ID is the write's own (its
// subject, content and expected revision): in a replicated stream, a write
// retried after its acknowledgement was lost — its stream leader died — is
// recognised by the new leader and acknowledged with the sequence it was
// stored at.
func (s *jsStore) publishEdge(ctx context.Context, m *nats.Msg, expect uint64) (uint64, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%s\x00", m.Subject, expect, m.Header.Get("KV-Operation"))
	h.Write(m.Data)
	id := hex.EncodeToString(h.Sum(nil)[:16])
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequenceForSubject(expect, s.prefix+KindEdge+".>"), jetstream.WithMsgID(id))
	if wrongLastSequence(err) {
		return 0, fmt.Errorf("store: %s: %w", m.Subject, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("store: write %s: %w", m.Subject, err)
	}
	return ack.Sequence, nil
}

func (s *jsStore) PinKey(ctx context.Context, name, key string) (Pin, error) {
	k := KindPin + "." + name
	for {
		rev, err := s.kv.Create(ctx, k, []byte(key))
		if err == nil {
			return Pin{Key: key, Created: true, Revision: rev}, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return Pin{}, fmt.Errorf("store: pin %s: %w", k, err)
		}
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile: try again
		}
		if err != nil {
			return Pin{}, fmt.Errorf("store: pin %s: %w", k, err)
		}
		return Pin{Key: string(e.Value()), Revision: e.Revision()}, nil
	}
}

func (s *jsStore) DeletePin(ctx context.Context, name string) (uint64, error) {
	return s.delete(ctx, KindPin+"."+name)
}

func (s *jsStore) Close() error { return nil }

// delete writes a delete marker conditional on the key's current revision,
// so it never deletes a key that is already absent. The marker is published
// directly (the bucket's Delete discards the sequence it was stored at).
func (s *jsStore) delete(ctx context.Context, key string) (uint64, error) {
	for {
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
		}
		if err != nil {
			return 0, fmt.Errorf("store: delete %s: %w", key, err)
		}
		ack, err := s.js.PublishMsg(ctx, deleteMarker(s.prefix+key), jetstream.WithExpectLastSequencePerSubject(e.Revision()))
		if wrongLastSequence(err) {
			continue // written meanwhile: look again
		}
		if err != nil {
			return 0, fmt.Errorf("store: delete %s: %w", key, err)
		}
		return ack.Sequence, nil
	}
}

// deleteMarker is a key-value delete in the bucket's format: the key's
// subject with the header KV-Operation: DEL.
func deleteMarker(subject string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set("KV-Operation", "DEL")
	return m
}

// wrongLastSequence reports the stream refusing a conditional write.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// ReadJetStreamDir loads the bucket kept in a JetStream store directory
// that no server is using (a lone controller's, before it joins a cluster):
// it runs a private, unlistening NATS server on the directory for the
// read. found is false when the directory holds no such bucket.
func ReadJetStreamDir(ctx context.Context, dir, bucket string) (st State, found bool, err error) {
	ns, err := server.NewServer(&server.Options{
		ServerName: "cframe-import",
		JetStream:  true,
		StoreDir:   dir,
		DontListen: true,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return st, false, fmt.Errorf("store: read %s: %w", dir, err)
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return st, false, fmt.Errorf("store: read %s: server did not start", dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		return st, false, fmt.Errorf("store: read %s: %w", dir, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return st, false, err
	}
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("store: read %s: %w", dir, err)
	}
	s := &jsStore{kv: kv, js: js, bucket: bucket, stream: "KV_" + bucket, prefix: "$KV." + bucket + "."}
	st, err = s.Load(ctx)
	return st, err == nil, err
}
