package deb

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dpkgDeb runs dpkg-deb with args and returns its output.
func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestPackage builds the package and checks, with dpkg-deb, its control
// data, its files with their owners and modes, its conffiles, that its
// maintainer scripts parse and that it names cframe-edge cleanup.
func TestPackage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg-deb")
	}
	const version = "1.2.3+test"
	deb, err := Build(t.TempDir(), version)
	if err != nil {
		t.Fatal(err)
	}

	for field, want := range map[string]string{"Package": "cframe", "Version": version, "Architecture": "amd64"} {
		if got := strings.TrimSpace(dpkgDeb(t, "-f", deb, field)); got != want {
			t.Errorf("control %s = %q, want %q", field, got, want)
		}
	}
	if deps := dpkgDeb(t, "-f", deb, "Depends"); !strings.Contains(deps, "iptables") || !strings.Contains(deps, "adduser") {
		t.Errorf("Depends: %q, want iptables (the agent runs it) and adduser (postinst)", deps)
	}
	if desc := dpkgDeb(t, "-f", deb, "Description"); !strings.Contains(desc, "cframe-edge cleanup") {
		t.Errorf("Description does not name cframe-edge cleanup:\n%s", desc)
	}

	// "-rwxr-xr-x root/root 123 2024-01-01 00:00 ./usr/bin/cframe-edge"
	files := map[string]string{}
	line := regexp.MustCompile(`^(\S+) (\S+)\s+\d+ \S+ \S+ \./(.*)$`)
	for _, l := range strings.Split(strings.TrimSpace(dpkgDeb(t, "-c", deb)), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("dpkg-deb -c: unexpected line %q", l)
		}
		if m[2] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", m[3], m[2])
		}
		files[strings.TrimSuffix(m[3], "/")] = m[1]
	}
	for path, mode := range map[string]string{
		"usr/bin/cframe-controller":                    "-rwxr-xr-x",
		"usr/bin/cframe-edge":                          "-rwxr-xr-x",
		"usr/bin/cframectl":                            "-rwxr-xr-x",
		"lib/systemd/system/cframe-controller.service": "-rw-r--r--",
		"lib/systemd/system/cframe-edge.service":       "-rw-r--r--",
		"etc/cframe/controller.toml":                   "-rw-r-----",
		"etc/cframe/edge.toml":                         "-rw-------",
		"var/lib/cframe":                               "drwx------",
		"var/lib/cframe-edge":                          "drwx------",
		"usr/share/doc/cframe/README.Debian":           "-rw-r--r--",
	} {
		if files[path] != mode {
			t.Errorf("%s: mode %q, want %q", path, files[path], mode)
		}
	}

	info := t.TempDir()
	dpkgDeb(t, "-e", deb, info)
	conffiles, err := os.ReadFile(filepath.Join(info, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(conffiles)); strings.Join(got, " ") != "/etc/cframe/controller.toml /etc/cframe/edge.toml" {
		t.Errorf("conffiles: %v, want both configs", got)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if out, err := exec.Command("sh", "-n", filepath.Join(info, s)).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s, err, out)
		}
	}
	// A first installation enables and starts nothing.
	if b, err := os.ReadFile(filepath.Join(info, "postinst")); err != nil || regexp.MustCompile(`systemctl (enable|start|restart)|deb-systemd`).Match(b) {
		t.Errorf("postinst enables or starts a service (%v):\n%s", err, b)
	}

	root := t.TempDir()
	dpkgDeb(t, "-x", deb, root)
	for _, unit := range []string{"cframe-controller.service", "cframe-edge.service"} {
		b, err := os.ReadFile(filepath.Join(root, "lib/systemd/system", unit))
		if err != nil {
			t.Fatal(err)
		}
		exec := regexp.MustCompile(`(?m)^ExecStart=(\S+)`).FindSubmatch(b)
		if exec == nil || !strings.HasPrefix(string(exec[1]), "/usr/bin/") {
			t.Errorf("%s: ExecStart %q, want a program in /usr/bin", unit, exec)
		} else if files[strings.TrimPrefix(string(exec[1]), "/")] == "" {
			t.Errorf("%s runs %s, which the package does not hold", unit, exec[1])
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/share/doc/cframe/README.Debian")); err != nil || !strings.Contains(string(b), "cframe-edge cleanup") {
		t.Errorf("README.Debian does not name cframe-edge cleanup (%v)", err)
	}
}
