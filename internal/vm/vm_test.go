package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// boot runs o in the VM and returns the console, failing t when the VM
// reports no exit status.
func boot(t *testing.T, o Options) (int, string) {
	t.Helper()
	if Inside() {
		t.Skip("already inside the VM")
	}
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	o.Out = &console
	start := time.Now()
	code, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, lastLines(console.Bytes(), 60))
	}
	t.Logf("VM run of %s: exit %d in %v", o.Command[0], code, time.Since(start).Round(time.Millisecond))
	return code, console.String()
}

// TestVMRun boots the stock kernel and checks, from inside: its release, the
// host name, the environment and working directory, a writable share, the
// read-only host files under a writable overlay, and that the modules the
// host kernel lacks load.
func TestVMRun(t *testing.T) {
	share := t.TempDir()
	script := `set -e
echo "release=$(uname -r) host=$(hostname) vm=$CFRAME_VM x=$X cwd=$(pwd)" >"$OUT/report"
touch /etc/cframe-vm-overlay
modprobe wireguard
modprobe ip_gre
ip link add vmtestwg type wireguard
ip link add vmtestgre type gre remote 192.0.2.1 local 192.0.2.2
ip -o link show >>"$OUT/report"
exit 7`
	code, _ := boot(t, Options{
		Command:  []string{"/bin/sh", "-c", script},
		Dir:      "/usr/share",
		Env:      []string{"X=a b 'c'", "OUT=" + share},
		Share:    []string{share},
		Hostname: "vmtest-1",
	})
	if code != 7 {
		t.Fatalf("exit status %d, want 7", code)
	}
	var host syscall.Utsname
	syscall.Uname(&host)
	t.Logf("kernels tested: this machine's %s, Debian's stock %s", utsString(host.Release), KernelRelease())
	report, err := os.ReadFile(filepath.Join(share, "report"))
	if err != nil {
		t.Fatal(err)
	}
	want := "release=" + KernelRelease() + " host=vmtest-1 vm=1 x=a b 'c' cwd=/usr/share"
	if first, _, _ := strings.Cut(string(report), "\n"); first != want {
		t.Errorf("report %q, want %q", first, want)
	}
	for _, dev := range []string{"vmtestwg", "vmtestgre@NONE"} {
		if !strings.Contains(string(report), " "+dev+": ") {
			t.Errorf("no %s in the VM's links:\n%s", dev, report)
		}
	}
	if _, err := os.Stat("/etc/cframe-vm-overlay"); err == nil {
		t.Error("a write inside the VM reached the host's /etc")
	}
}

// TestVMRunSystemd boots systemd as PID 1 and runs the command as its unit.
func TestVMRunSystemd(t *testing.T) {
	share := t.TempDir()
	code, console := boot(t, Options{
		Command: []string{"/bin/sh", "-c", `echo "$(cat /proc/1/comm) $(systemctl is-system-running || true) $(systemctl is-active cframe-vm.service)" >"$OUT/report"; exit 3`},
		Env:     []string{"OUT=" + share},
		Share:   []string{share},
		Systemd: true,
	})
	if code != 3 {
		t.Fatalf("exit status %d, want 3\n%s", code, lastLines([]byte(console), 60))
	}
	report, err := os.ReadFile(filepath.Join(share, "report"))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(report)); len(f) != 3 || f[0] != "systemd" || f[2] != "activating" {
		t.Errorf("inside the unit: %q, want PID 1 systemd and the unit activating", report)
	}
}

// TestVMGoTest runs this package's TestVMInside on the stock kernel.
func TestVMGoTest(t *testing.T) {
	GoTest(t, ".", "^TestVMInside$", Options{Env: []string{"VMTEST=ok"}})
}

// TestVMInside runs only in the VM (through TestVMGoTest): the kernel is the
// prepared one, the environment came along and modules autoload.
func TestVMInside(t *testing.T) {
	if !Inside() {
		t.Skip("runs in the VM: TestVMGoTest")
	}
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if r := utsString(u.Release); r != KernelRelease() {
		t.Errorf("kernel %s, want %s", r, KernelRelease())
	}
	if os.Getenv("VMTEST") != "ok" {
		t.Error("the environment did not reach the test")
	}
	if out, err := exec.Command("ip", "link", "add", "vmtestgre0", "type", "gretap", "remote", "192.0.2.1").CombinedOutput(); err != nil {
		t.Errorf("gretap (ip_gre autoloaded): %v %s", err, out)
	}
}

// utsString is a NUL-terminated Utsname field as a string.
func utsString(f [65]int8) string {
	var b strings.Builder
	for _, c := range f {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}
