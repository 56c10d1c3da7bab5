package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cframe/cframe/bus"
)

// jsStore is the embedded store: one JetStream key-value bucket.
type jsStore struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	bucket string
}

// OpenJetStream opens (creating it if needed) the key-value bucket that holds
// the store inside the controller's own embedded NATS server, with keys
// "edges.<name>" and "pins.<name>".
//
// A JetStream bucket is the embedded store because the controller runs that
// server anyway: it adds no dependency and no process. With file storage the
// bucket lives on disk in the server's JetStream store directory, which the
// controller puts under its data_dir; the controller runs the server with
// SyncAlways, so a write is on disk when it returns. Every write to the
// bucket is one message of its backing stream, so the stream sequence is a
// revision that increases monotonically, counts deletes (a delete leaves a
// marker message) and survives restarts, and writes can be made conditional
// on a key's last sequence (compare-and-set). The bucket keeps one value per
// key (history 1).
//
// Close does not close js's connection, which belongs to the caller.
func OpenJetStream(ctx context.Context, js jetstream.JetStream, bucket string) (Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "cframe controller store",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("store: jetstream bucket %q: %w", bucket, err)
	}
	return &jsStore{kv: kv, js: js, bucket: bucket}, nil
}

// Load reads the last entry of every key through a watcher, whose view is
// consistent: the latest entry of each key up to the highest sequence it
// delivered. The edge set's revision is the highest sequence among the edge
// keys, delete markers included (with history 1 a delete leaves its marker
// as the key's last entry).
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
		if kind == kindEdges {
			st.Revision = max(st.Revision, e.Revision())
		}
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		if err := st.add(kind, name, e.Value(), e.Revision()); err != nil {
			return State{}, err
		}
	}
}

func (s *jsStore) PutEdge(ctx context.Context, e bus.Edge) (uint64, error) {
	v, err := encodeEdge(e)
	if err != nil {
		return 0, err
	}
	return s.put(ctx, kindEdges+"."+e.Name, v)
}

func (s *jsStore) PutPin(ctx context.Context, name, key string) error {
	_, err := s.put(ctx, kindPins+"."+name, []byte(key))
	return err
}

func (s *jsStore) DeleteEdge(ctx context.Context, name string) (uint64, error) {
	return s.delete(ctx, kindEdges+"."+name)
}

func (s *jsStore) DeletePin(ctx context.Context, name string) error {
	_, err := s.delete(ctx, kindPins+"."+name)
	return err
}

func (s *jsStore) Close() error { return nil }

func (s *jsStore) put(ctx context.Context, key string, v []byte) (uint64, error) {
	rev, err := s.kv.Put(ctx, key, v)
	if err != nil {
		return 0, fmt.Errorf("store: put %s: %w", key, err)
	}
	return rev, nil
}

// delete writes a delete marker conditional on the key's current revision,
// so it never deletes a key that is already absent. The marker is published
// directly (the bucket's Delete discards the sequence it was stored at), in
// the key-value format: subject "$KV.<bucket>.<key>", header KV-Operation: DEL.
func (s *jsStore) delete(ctx context.Context, key string) (uint64, error) {
	for {
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, fmt.Errorf("store: %s: %w", key, ErrNotFound)
		}
		if err != nil {
			return 0, fmt.Errorf("store: delete %s: %w", key, err)
		}
		m := nats.NewMsg("$KV." + s.bucket + "." + key)
		m.Header.Set("KV-Operation", "DEL")
		ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(e.Revision()))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			continue // written meanwhile: look again
		}
		if err != nil {
			return 0, fmt.Errorf("store: delete %s: %w", key, err)
		}
		return ack.Sequence, nil
	}
}
