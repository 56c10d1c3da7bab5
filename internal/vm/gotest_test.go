package vm

import (
	"strings"
	"testing"
)

// TestFailures: the summary of a failed run holds the verdicts with what
// is indented under them, and the message a test streamed before its
// verdict.
func TestFailures(t *testing.T) {
	log := strings.Join([]string{
		"=== RUN   TestWalkthrough",
		"=== RUN   TestWalkthrough/three_adds",
		"    e2e_test.go:297: walkthrough, 3 edges: still failing after 15s",
		"    e2e_test.go:153: ---- hk-1.log ----",
		"        time=... level=INFO msg=\"connected\"",
		"--- FAIL: TestWalkthrough (64.42s)",
		"    --- FAIL: TestWalkthrough/three_adds (26.29s)",
		"=== RUN   TestGREWalkthrough",
		"--- PASS: TestGREWalkthrough (99.80s)",
		"FAIL",
	}, "\n")
	got := failures([]byte(log))
	for _, want := range []string{"--- FAIL: TestWalkthrough (64.42s)", "    --- FAIL: TestWalkthrough/three_adds (26.29s)", "e2e_test.go:297: walkthrough, 3 edges: still failing after 15s"} {
		if !strings.Contains(got, want) {
			t.Errorf("the summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "PASS") || strings.Contains(got, `msg="connected"`) {
		t.Errorf("the summary holds a passing verdict or a log dump's body:\n%s", got)
	}
}
