package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRaceReports(t *testing.T) {
	dir := t.TempDir()
	report := "==================\nWARNING: DATA RACE\nWrite at 0x00c000 by goroutine 7:\n  main.f()\n==================\n"
	logs := map[string]string{
		"sz-1.log":            "level=INFO msg=started\n" + report + "level=INFO msg=more\n",
		"controller.log":      "level=INFO msg=clean\n",
		"rogue/rogue.log":     report + report,
		"controller/data.txt": report, // not a log
	}
	for name, body := range logs {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := RaceReports(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d reports, want 3 (one in sz-1.log, two in rogue.log): %q", len(got), got)
	}
	for _, r := range got {
		if !strings.Contains(r, "Write at 0x00c000") || strings.Contains(r, "msg=more") {
			t.Errorf("report %q: want the report's body alone", r)
		}
	}
}
