// Package deb builds cframe's Debian package with scripts/package.sh, for
// the tests that check its contents on the host and install it under a
// real systemd in the VM.
package deb

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Build runs scripts/package.sh with version into dir and returns the
// package's path.
func Build(dir, version string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command(filepath.Join(filepath.Dir(self), "..", "package.sh"), dir)
	cmd.Env = append(os.Environ(), "VERSION="+version)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("package.sh: %w\n%s", err, out)
	}
	path := filepath.Join(dir, fmt.Sprintf("cframe_%s_amd64.deb", version))
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	return path, nil
}
