package bus

import (
	"testing"
	"time"
)

func TestReconnectWindow(t *testing.T) {
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{0, time.Second},
		{1, time.Second},
		{2, 2 * time.Second},
		{3, 4 * time.Second},
		{4, ReconnectSpread},
		{40, ReconnectSpread},
		{1 << 30, ReconnectSpread},
	} {
		if got := reconnectWindow(tc.attempt); got != tc.want {
			t.Errorf("reconnectWindow(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
	}
}

func TestReconnectDelayInWindow(t *testing.T) {
	for _, attempt := range []int{1, 3, 8} {
		lo, hi := reconnectFloor, reconnectFloor+reconnectWindow(attempt)
		var spread time.Duration
		first := ReconnectDelay(attempt)
		for range 200 {
			d := ReconnectDelay(attempt)
			if d < lo || d >= hi {
				t.Fatalf("ReconnectDelay(%d) = %s, outside [%s, %s)", attempt, d, lo, hi)
			}
			spread = max(spread, d-first, first-d)
		}
		if spread == 0 {
			t.Errorf("ReconnectDelay(%d): 200 waits all %s, not random", attempt, first)
		}
	}
}
