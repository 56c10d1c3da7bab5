package bus

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Publish sends v, JSON-encoded, on subject.
func Publish(nc *nats.Conn, subject string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	return nc.Publish(subject, b)
}

// Decode parses a message body into v (decompressing it first when its
// EncodingHeader says so), naming the subject on failure.
func Decode(m *nats.Msg, v any) error {
	b, err := Body(m)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", m.Subject, err)
	}
	return nil
}
