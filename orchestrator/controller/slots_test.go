package controller

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestSlots: no more than the slots are taken at once; one more waits
// until its context is done, or until a slot is released.
func TestSlots(t *testing.T) {
	s := make(slots, 2)
	var releases []func()
	for range 2 {
		r, err := s.take(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.take(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third slot of two: %v, want the deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := s.take(context.Background())
		if err == nil {
			r()
		}
		got <- err
	}()
	releases[0]()
	if err := <-got; err != nil {
		t.Fatalf("a slot released, the waiting one: %v", err)
	}
	releases[1]()
	if len(s) != 0 {
		t.Fatalf("%d slots still taken", len(s))
	}
}
