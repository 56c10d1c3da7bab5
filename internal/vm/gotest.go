package vm

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// GoTest builds the test binary of package pkg (as `go test` names it,
// relative to the calling test's package) on the host and runs it on the
// stock kernel with -test.run=run, in the package's directory as go test
// does. o sets the VM (Command and Dir are GoTest's). t fails when the
// binary does, with the console saved as console.log in t.ArtifactDir()
// (test-out/ under `make test`) and its end in the message. It skips
// inside the VM, so a package can run its own tests there.
func GoTest(t *testing.T, pkg, run string, o Options) {
	t.Helper()
	if Inside() {
		t.Skip("inside the VM already")
	}
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	dir, err := exec.Command("go", "list", "-f", "{{.Dir}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	bin := t.TempDir()
	test := filepath.Join(bin, filepath.Base(strings.TrimSpace(string(dir)))+".test")
	if out, err := exec.Command("go", "test", "-c", "-o", test, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", pkg, err, out)
	}
	o.Command = []string{test, "-test.v", "-test.count=1", "-test.run=" + run,
		"-test.timeout=" + (o.Timeout - 30*time.Second).String()}
	o.Dir = strings.TrimSpace(string(dir))
	o.Share = append(o.Share, bin)
	var console bytes.Buffer
	if o.Out != nil {
		o.Out = io.MultiWriter(o.Out, &console)
	} else {
		o.Out = &console
	}
	start := time.Now()
	code, err := Run(context.Background(), o)
	log := console.Bytes()
	for _, l := range summary.FindAll(log, -1) {
		t.Log(strings.TrimSpace(string(l)))
	}
	t.Logf("%s -test.run=%q on %s: exit %d in %v", pkg, run, KernelRelease(), code, time.Since(start).Round(time.Second))
	if err == nil && code == 0 {
		return
	}
	path := filepath.Join(t.ArtifactDir(), "console.log")
	if werr := os.WriteFile(path, log, 0o644); werr != nil {
		t.Log(werr)
	}
	if err != nil {
		t.Fatalf("%v; console in %s, it ends:\n%s", err, path, lastLines(log, 80))
	}
	t.Fatalf("the tests failed on %s (exit %d); console in %s; the failures:\n%s\nthe end:\n%s",
		KernelRelease(), code, path, failures(log), lastLines(log, 30))
}

// summary matches go test -v's verdict lines.
var summary = regexp.MustCompile(`(?m)^\s*--- (PASS|FAIL|SKIP): .*$`)

// message matches the first line of a test's message (t.Log, t.Error...).
var message = regexp.MustCompile(`^\s+[\w.-]+_test\.go:\d+: `)

// failures are go test -v's "--- FAIL" lines of log, each with the
// messages indented under it (at most 20 lines), then the first lines of
// the last 30 test messages: go test -v streams a test's messages before
// its verdict, so a failing check's words are often not under it.
func failures(log []byte) string {
	var out, messages []string
	indent, n := -1, 0
	for _, l := range strings.Split(string(log), "\n") {
		if message.MatchString(l) {
			messages = append(messages, truncate(l, 300))
		}
		depth := len(l) - len(strings.TrimLeft(l, " "))
		switch {
		case strings.HasPrefix(strings.TrimLeft(l, " "), "--- FAIL"):
			indent, n = depth, 0
			out = append(out, l)
		case indent >= 0 && depth > indent && n < 20:
			n++
			out = append(out, l)
		default:
			indent = -1
		}
	}
	if len(messages) > 30 {
		messages = messages[len(messages)-30:]
	}
	return strings.Join(out, "\n") + "\nthe last test messages:\n" + strings.Join(messages, "\n")
}

// truncate is l cut to n bytes, marked when cut.
func truncate(l string, n int) string {
	if len(l) <= n {
		return l
	}
	return l[:n] + "…"
}
