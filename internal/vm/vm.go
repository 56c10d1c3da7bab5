// Package vm runs a command on Debian's stock kernel (linux-image-amd64)
// booted in QEMU (TCG: no KVM needed) over a read-only view of this
// machine's files, so tests can use kernel modules the host kernel lacks
// (ip_gre, wireguard, esp4, ...). Tests that boot it are named TestVM*:
// make test runs them in a phase of their own, after the host suite.
//
// The VM's root is the host's root, exported read-only over virtio-9p
// under a tmpfs overlay: every host path is the same inside, and writes
// stay in the VM. The kernel package's modules are bind-mounted at
// /lib/modules/<release> so that module autoloading works. A tiny
// initramfs (busybox-static) sets this up, switch_roots and runs the
// command (or boots systemd, which runs it as a unit); the command's exit
// status comes back through a small shared directory, and the VM powers
// off.
package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	qemu    = "qemu-system-x86_64"
	busybox = "/bin/busybox"
	systemd = "/usr/lib/systemd/systemd"
	// ctlDir is where the VM sees its control directory (run script, exit status).
	ctlDir = "/.cframe-vm"
	// msize is the 9p message size: larger is faster for big reads.
	msize = "262144"
)

// Options describe one VM run.
type Options struct {
	// Command is run inside the VM (looked up in PATH there).
	Command []string
	// Dir is the working directory inside the VM (a host path; "" = /).
	Dir string
	// Env is added to the command's environment (KEY=value); CFRAME_VM=1
	// is always set.
	Env []string
	// Share lists host directories mounted read-write at the same path
	// inside the VM (to get files out; the rest of the host is read-only).
	// The VM's /tmp is a fresh tmpfs: share a host temporary directory to
	// see it inside.
	Share []string
	// Out receives the serial console: the kernel's messages and the
	// command's output. Nil discards it.
	Out io.Writer
	// Hostname is the VM's host name ("" = "cframe-vm").
	Hostname string
	// Systemd boots /usr/lib/systemd/systemd as PID 1 and runs Command as
	// the service cframe-vm.service once basic.target is up; otherwise a
	// shell is PID 1 and runs Command directly.
	Systemd bool
	// Timeout bounds the whole run (0 = 10 minutes).
	Timeout time.Duration
	// MemMiB and CPUs size the VM (0 = 2048 MiB, 2 CPUs).
	MemMiB, CPUs int
}

// Inside reports whether this process runs inside the VM.
func Inside() bool { return os.Getenv("CFRAME_VM") == "1" }

// Available says why the VM cannot run here, or nil when it can: root,
// QEMU, a static busybox and the tools that fetch the kernel
// (scripts/deps.sh installs them).
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("vm: needs root")
	}
	for _, tool := range []string{qemu, "depmod", "apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("vm: %s missing (scripts/deps.sh installs it)", tool)
		}
	}
	f, err := elf.Open(busybox)
	if err != nil {
		return fmt.Errorf("vm: %s: %v (scripts/deps.sh installs busybox-static)", busybox, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("vm: %s is not static (scripts/deps.sh installs busybox-static)", busybox)
		}
	}
	return nil
}

// Run prepares the kernel, boots the VM, runs o.Command and returns its
// exit status. Runs on one machine take turns (o.Timeout starts with the
// turn). err is set when the VM did not report one (boot failure,
// timeout, QEMU error); the console (o.Out) says why.
func Run(ctx context.Context, o Options) (int, error) {
	if len(o.Command) == 0 {
		return -1, errors.New("vm: no command")
	}
	if err := Available(); err != nil {
		return -1, err
	}
	if err := Prepare(ctx); err != nil {
		return -1, err
	}
	// One VM at a time on this machine: under TCG each is CPU-bound, and
	// several would starve each other and the host's tests.
	lock, err := os.OpenFile(filepath.Join(CacheDir, ".run"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return -1, err
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return -1, err
	}
	release := KernelRelease()
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.MemMiB == 0 {
		o.MemMiB = 2048
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.Hostname == "" {
		o.Hostname = "cframe-vm"
	}
	if o.Dir == "" {
		o.Dir = "/"
	}
	ctl, err := os.MkdirTemp("", "cframe-vm-")
	if err != nil {
		return -1, err
	}
	defer os.RemoveAll(ctl)
	if err := os.WriteFile(filepath.Join(ctl, "run"), []byte(runScript(o)), 0o755); err != nil {
		return -1, err
	}
	initrd := filepath.Join(ctl, "initramfs")
	f, err := os.Create(initrd)
	if err != nil {
		return -1, err
	}
	err = writeInitramfs(f, release, initScript(o, release))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return -1, err
	}

	cmdline := "console=ttyS0 panic=-1 quiet"
	if o.Systemd {
		// The host's fstab and enabled units are not the VM's business.
		cmdline += " fstab=0 systemd.firstboot=0"
	}
	args := []string{"-accel", "tcg", "-machine", "pc", "-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", strconv.Itoa(o.MemMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernelImage(release), "-initrd", initrd, "-append", cmdline,
		"-serial", "stdio"}
	share := func(tag, path string, ro bool) {
		fs := "local,id=" + tag + ",path=" + path + ",security_model=passthrough,multidevs=remap"
		if ro {
			fs += ",readonly=on"
		}
		args = append(args, "-fsdev", fs, "-device", "virtio-9p-pci,fsdev="+tag+",mount_tag="+tag)
	}
	share("root", "/", true)
	share("ctl", ctl, false)
	for i, s := range o.Share {
		share(fmt.Sprintf("share%d", i), s, false)
	}

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	runErr := cmd.Run()
	status, err := os.ReadFile(filepath.Join(ctl, "status"))
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(status))); err == nil {
			return n, nil
		}
	}
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return -1, fmt.Errorf("vm: timed out after %v", o.Timeout)
	case runErr != nil:
		return -1, fmt.Errorf("vm: %s: %v", qemu, runErr)
	}
	return -1, errors.New("vm: the VM stopped without the command's exit status (see its console)")
}

// initScript is the initramfs's /init: load the boot modules, mount the
// host root read-only under a tmpfs overlay with the shares and the
// kernel's modules on it, and switch_root into the run script or systemd.
func initScript(o Options, release string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	p("#!/bin/busybox sh")
	p("/bin/busybox --install -s /bin")
	p("export PATH=/bin")
	p("mount -t devtmpfs dev /dev && mount -t proc proc /proc && mount -t sysfs sys /sys")
	p("fail() { echo \"cframe-vm: $*\"; poweroff -f; }")
	p("@LOAD_MODULES@")
	ninep := "-t 9p -o trans=virtio,version=9p2000.L,msize=" + msize
	p("mount %s,ro,cache=loose root /lower || fail cannot mount the host root", ninep)
	p("mount -t tmpfs -o mode=0755 rw /rw && mkdir /rw/upper /rw/work || fail tmpfs")
	p("mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail overlay")
	p("mount -t tmpfs -o mode=1777 tmp /newroot/tmp || fail tmpfs")
	// cache=mmap: the host sees writes at once, and binaries run from it.
	ninep += ",cache=mmap"
	p("mkdir -p /newroot%s && mount %s ctl /newroot%s || fail cannot mount the control directory", ctlDir, ninep, ctlDir)
	for i, s := range o.Share {
		p("mkdir -p /newroot%[1]s && mount %[2]s share%[3]d /newroot%[1]s || fail cannot mount %[1]s", quote(s), ninep, i)
	}
	mods := quote(modulesDir(release))
	p("mkdir -p /newroot/lib/modules/%s && mount --bind /newroot%s /newroot/lib/modules/%s || fail modules", release, mods, release)
	p("echo %s >/newroot/etc/hostname && hostname %s", quote(o.Hostname), quote(o.Hostname))
	if o.Systemd {
		d := "/newroot/etc/systemd/system"
		// The host's /.dockerenv would make systemd think it runs in a container.
		p("rm -f /newroot/.dockerenv")
		p("mkdir -p %s && ln -sf /dev/null %s/timers.target", d, d)
		p("cat >%s/cframe-vm.target <<'EOF'\n%sEOF", d, vmTarget)
		p("cat >%s/cframe-vm.service <<'EOF'\n%sEOF", d, vmService)
	}
	p("umount /proc /sys /dev")
	if o.Systemd {
		p("exec switch_root /newroot %s --unit=cframe-vm.target", systemd)
	} else {
		p("exec switch_root /newroot %s sh %s/run", busybox, ctlDir)
	}
	return b.String()
}

const vmTarget = `[Unit]
Description=cframe VM run
Requires=basic.target cframe-vm.service
After=basic.target
AllowIsolate=yes
`

var vmService = `[Unit]
Description=cframe VM command
[Service]
Type=oneshot
ExecStart=` + busybox + ` sh ` + ctlDir + `/run
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
`

// runScript runs o.Command with its environment, writes its exit status to
// the control directory and powers off. Without systemd it is PID 1 and
// first mounts what a system needs.
func runScript(o Options) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	bb := busybox
	if !o.Systemd {
		p("%s mount -t proc proc /proc", bb)
		p("%s mount -t sysfs sys /sys", bb)
		p("%s mount -t devtmpfs dev /dev", bb)
		p("%s mkdir -p /dev/pts /dev/shm", bb)
		p("%s mount -t devpts devpts /dev/pts", bb)
		p("%s mount -t tmpfs tmpfs /dev/shm", bb)
		p("%s mount -t tmpfs -o mode=0755 tmpfs /run", bb)
		p("%s mount -t cgroup2 cgroup2 /sys/fs/cgroup", bb)
		p("%s ip link set lo up", bb)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "CFRAME_VM=1"}
	for _, e := range append(env, o.Env...) {
		k, v, _ := strings.Cut(e, "=")
		p("export %s=%s", k, quote(v))
	}
	p("cd %s || exit 1", quote(o.Dir))
	var cmd []string
	for _, a := range o.Command {
		cmd = append(cmd, quote(a))
	}
	p("%s", strings.Join(cmd, " "))
	p("echo $? >%s/status", ctlDir)
	p("%s poweroff -f", bb)
	return b.String()
}

// quote quotes s for the shell.
func quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// lastLines is the end of a console log, for failure messages.
func lastLines(log []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(log, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
