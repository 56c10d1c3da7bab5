package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// bootModules are what the initramfs loads to reach the host's root: the
// virtio PCI transport, 9p over virtio and overlayfs (all modules in
// Debian's kernel). Their dependencies come from modules.dep.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// moduleOrder lists the .ko paths (relative to the modules directory) of
// names and their dependencies, each after what it depends on.
func moduleOrder(modDir string, names []string) ([]string, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // path -> its dependencies' paths
	byName := map[string]string{} // module name -> path
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		path, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[path] = strings.Fields(rest)
		byName[strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")] = path
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range deps[p] {
			visit(d)
		}
		order = append(order, p)
	}
	for _, n := range names {
		p, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("vm: module %s not in %s", n, modDir)
		}
		visit(p)
	}
	return order, nil
}

// cpio writes a newc archive (the initramfs format).
type cpio struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpio) entry(name string, mode uint32, rdev [2]int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	buf = append(buf, data...)
	buf = append(buf, make([]byte, pad4(len(data)))...)
	_, c.err = c.w.Write(buf)
}

func pad4(n int) int { return (4 - n%4) % 4 }

func (c *cpio) dir(name string)               { c.entry(name, 0o040755, [2]int{}, nil) }
func (c *cpio) file(name string, data []byte) { c.entry(name, 0o100755, [2]int{}, data) }
func (c *cpio) close() error                  { c.entry("TRAILER!!!", 0, [2]int{}, nil); return c.err }

// writeInitramfs writes the initramfs: busybox, the boot modules and /init.
func writeInitramfs(w io.Writer, release, init string) error {
	mods, err := moduleOrder(modulesDir(release), bootModules)
	if err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	c := &cpio{w: w}
	for _, d := range []string{"bin", "dev", "proc", "sys", "lower", "rw", "newroot", "mods"} {
		c.dir(d)
	}
	c.entry("dev/console", 0o020600, [2]int{5, 1}, nil)
	c.file("bin/busybox", bb)
	var load strings.Builder
	for i, m := range mods {
		data, err := os.ReadFile(filepath.Join(modulesDir(release), m))
		if err != nil {
			return err
		}
		name := fmt.Sprintf("mods/%02d-%s", i, filepath.Base(m))
		c.file(name, data)
		fmt.Fprintf(&load, "insmod /%s\n", name)
	}
	c.file("init", []byte(strings.Replace(init, "@LOAD_MODULES@\n", load.String(), 1)))
	return c.close()
}
