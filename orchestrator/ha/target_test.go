package ha

import "testing"

// TestTargetNames: every kind of target survives its probe name, and the
// names of different targets differ.
func TestTargetNames(t *testing.T) {
	targets := []Target{{Kind: TargetPeer, Gateway: "hk-1"}, LANTarget("hk-1"), ForwardTarget("sz-1", "sz-2"), ForwardTarget("sz-2", "sz-1")}
	seen := map[string]bool{}
	for _, tg := range targets {
		name := tg.Name()
		if got := TargetOf(name); got != tg {
			t.Errorf("TargetOf(%q) = %+v, want %+v", name, got, tg)
		}
		if seen[name] {
			t.Errorf("two targets named %q", name)
		}
		seen[name] = true
	}
}
