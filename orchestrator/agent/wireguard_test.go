package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWireGuardKey: generated once with mode 0600, the same key read back
// after, and a damaged file refused without quoting it.
func TestWireGuardKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", wireGuardKeyFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	k, created, err := loadWireGuardKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	again, created, err := loadWireGuardKey(path)
	if err != nil || created || again != k {
		t.Fatalf("restart: same key %v, created %v, %v", again == k, created, err)
	}
	secret := "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
	if err := os.WriteFile(path, []byte(secret+"xx"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadWireGuardKey(path); err == nil || strings.Contains(err.Error(), "c2Vj") {
		t.Errorf("damaged key file: %v", err)
	}
}
