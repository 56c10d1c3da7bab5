package topo

import (
	"os"
	"os/exec"
	"testing"
)

// SkipUnlessRoot skips a test that needs root (namespaces, netlink,
// iptables) or one of the given programs, saying which is missing.
func SkipUnlessRoot(t testing.TB, programs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, netlink and iptables")
	}
	for _, p := range append([]string{"ip"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s, which is not installed", p)
		}
	}
}
