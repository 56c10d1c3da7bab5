package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// CacheDir holds the unpacked kernel package: <CacheDir>/<release>/ with
// boot/vmlinuz-<release> and lib/modules/<release>. Remove it to take a newer
// kernel from the archive.
const CacheDir = "/var/cache/cframe-vm"

// metaPackage is Debian's stock kernel; it depends on linux-image-<release>.
const metaPackage = "linux-image-amd64"

// Prepare makes the stock kernel ready: on first use it resolves
// linux-image-amd64 to its versioned package, fetches it with apt-get
// download, unpacks it with dpkg-deb -x (it is never installed) and runs
// depmod -b on its modules. Later calls reuse the cache. Parallel test
// processes serialise on a lock file.
func Prepare(ctx context.Context) error {
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(CacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return err
	}
	if KernelRelease() != "" {
		return nil
	}
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return err
	}
	release := strings.TrimPrefix(pkg, "linux-image-")
	tmp, err := os.MkdirTemp(CacheDir, ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, "apt-get", "download", "-q", pkg); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("vm: apt-get download %s left %d packages", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, tmp, "dpkg-deb", "-x", debs[0], root); err != nil {
		return err
	}
	if _, err := run(ctx, tmp, "depmod", "-b", root, release); err != nil {
		return err
	}
	dst := filepath.Join(CacheDir, release)
	os.RemoveAll(dst)
	if err := os.Rename(root, dst); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(CacheDir, "release"), []byte(release+"\n"), 0o644)
}

// flock takes an exclusive lock on f (released when f is closed), waiting
// until it is free or ctx ends.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EWOULDBLOCK {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kernelPackage names the package linux-image-amd64 depends on, updating
// apt's lists once if they do not know it.
func kernelPackage(ctx context.Context) (string, error) {
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt == 1 {
			if _, err := run(ctx, "/", "apt-get", "update", "-qq"); err != nil {
				return "", err
			}
		}
		out, err := run(ctx, "/", "apt-cache", "depends", metaPackage)
		if err != nil {
			last = err
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
				return f[1], nil
			}
		}
		last = fmt.Errorf("vm: %s depends on no linux-image package", metaPackage)
	}
	return "", last
}

// KernelRelease is the prepared kernel's release (uname -r inside the VM),
// or "" before Prepare.
func KernelRelease() string {
	b, err := os.ReadFile(filepath.Join(CacheDir, "release"))
	if err != nil {
		return ""
	}
	r := strings.TrimSpace(string(b))
	if _, err := os.Stat(kernelImage(r)); err != nil {
		return ""
	}
	return r
}

func kernelImage(release string) string {
	return filepath.Join(CacheDir, release, "boot", "vmlinuz-"+release)
}

func modulesDir(release string) string {
	return filepath.Join(CacheDir, release, "lib", "modules", release)
}

// run runs a command in dir and returns its output, or an error that
// includes it.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("vm: %s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}
