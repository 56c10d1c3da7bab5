// Command bench measures cframe side by side with the alternatives in one
// run (make bench): the data plane against the direct path and userspace
// tunnels, control-plane convergence and scale, and the edge reconcile at
// scale. It writes a markdown report and the same figures as JSON, and
// prints the report. Every comparison is a ratio of figures measured in the
// same run; absolute numbers on a shared VM are noisy.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// Options are shared by every part of the benchmark.
type Options struct {
	// Quick trades repetitions for a run under two minutes.
	Quick bool
	// Bin holds the built programs (make build).
	Bin string
	// Work is a scratch directory for configs, logs and builds.
	Work string
	// Log receives progress lines.
	Log io.Writer
	// Edges, when set, are the scale part's fleet sizes (--edges).
	Edges []int
}

// Logf prints a progress line.
func (o Options) Logf(format string, a ...any) {
	fmt.Fprintf(o.Log, "  "+format+"\n", a...)
}

// Section is one part of the report.
type Section struct {
	Title string
	// Markdown is the section body: tables and notes.
	Markdown string
	// Verdicts are one line per figure saying which is better.
	Verdicts []string
	// Figures are the same numbers for the JSON report.
	Figures any
	// Err is set when the part could not complete: the report says so and
	// the run exits non-zero once the report is written.
	Err string
}

// part is one benchmark of the report.
type part struct {
	name string
	run  func(Options) (Section, error)
}

// nsPrefix names every namespace the benchmark creates (--ns).
var nsPrefix = "cfbench"

func main() {
	if len(os.Args) > 1 && os.Args[1] == probeChildArg {
		probeChild(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == simWorkerArg {
		simWorker()
		return
	}
	quick := flag.Bool("quick", false, "fewer repetitions: the whole run in under two minutes")
	bin := flag.String("bin", "dist", "directory with the built programs (make build)")
	out := flag.String("out", "bench-out", "directory for bench.md and bench.json")
	flag.StringVar(&nsPrefix, "ns", nsPrefix, "prefix of the namespaces the run creates, and removes when it starts: another one lets two runs share a machine")
	only := flag.String("only", "", "run only the parts whose name contains this (dataplane, convergence, scale, reconcile, failover, observability)")
	edges := flag.String("edges", "", "fleet sizes of the scale part, comma-separated (default 1000,3000,10000; --quick 100,300)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail("the benchmark builds network namespaces: run it as root")
	}
	if err := topo.CleanupPrefix(nsPrefix); err != nil {
		fail("remove leftovers: %v", err)
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		fail("%v", err)
	}
	work, err := os.MkdirTemp("", "cframe-bench-")
	if err != nil {
		fail("%v", err)
	}
	o := Options{Quick: *quick, Bin: absBin, Work: work, Log: os.Stderr}
	for _, f := range strings.FieldsFunc(*edges, func(r rune) bool { return r == ',' }) {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fail("--edges: %q is not a number of edges", f)
		}
		o.Edges = append(o.Edges, n)
	}

	started := time.Now()
	var sections []Section
	var failed []string
	for _, p := range parts {
		if *only != "" && !strings.Contains(p.name, *only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "==> %s\n", p.name)
		t0 := time.Now()
		s, err := p.run(o)
		if err != nil {
			s.Err = err.Error()
			failed = append(failed, p.name)
			fmt.Fprintf(os.Stderr, "  %s failed: %v\n", p.name, err)
		}
		if s.Title == "" {
			s.Title = p.name
		}
		fmt.Fprintf(os.Stderr, "  (%s)\n", time.Since(t0).Round(time.Second))
		sections = append(sections, s)
	}
	// Removed here, not deferred: fail exits without running defers.
	os.RemoveAll(work)
	md, js := render(sections, *quick, time.Since(started))
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail("%v", err)
	}
	if err := os.WriteFile(filepath.Join(*out, "bench.md"), []byte(md), 0o644); err != nil {
		fail("%v", err)
	}
	if err := os.WriteFile(filepath.Join(*out, "bench.json"), js, 0o644); err != nil {
		fail("%v", err)
	}
	fmt.Print(md)
	fmt.Fprintf(os.Stderr, "\nreport: %s/bench.md, figures: %s/bench.json\n", *out, *out)
	if len(failed) > 0 {
		fail("%d part(s) did not complete: %s (see \"Not completed\" in the report)", len(failed), strings.Join(failed, ", "))
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	os.Exit(1)
}

// machine describes where the figures were measured.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s, %d CPUs, Linux %s, %s", model, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version())
}

func render(sections []Section, quick bool, took time.Duration) (string, []byte) {
	var b strings.Builder
	mode := "full"
	if quick {
		mode = "quick (--quick: fewer repetitions)"
	}
	fmt.Fprintf(&b, "# cframe benchmark\n\n- date: %s\n- machine: %s\n- run: %s, %s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), mode, took.Round(time.Second))
	b.WriteString("Every ratio compares figures measured side by side in this run. Absolute numbers on a shared VM are noisy; the ratios are what count.\n\n")
	type jsonSection struct {
		Title    string   `json:"title"`
		Verdicts []string `json:"verdicts"`
		Figures  any      `json:"figures"`
		Error    string   `json:"error,omitempty"`
	}
	doc := struct {
		Date     string        `json:"date"`
		Machine  string        `json:"machine"`
		Quick    bool          `json:"quick"`
		Sections []jsonSection `json:"sections"`
	}{Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(), Quick: quick}
	for _, s := range sections {
		fmt.Fprintf(&b, "## %s\n\n", s.Title)
		if s.Err != "" {
			fmt.Fprintf(&b, "**Not completed:** %s\n\n", s.Err)
		}
		b.WriteString(strings.TrimRight(s.Markdown, "\n") + "\n\n")
		if len(s.Verdicts) > 0 {
			b.WriteString("Which is better:\n\n")
			for _, v := range s.Verdicts {
				fmt.Fprintf(&b, "- %s\n", v)
			}
			b.WriteString("\n")
		}
		doc.Sections = append(doc.Sections, jsonSection{Title: s.Title, Verdicts: s.Verdicts, Figures: s.Figures, Error: s.Err})
	}
	js, _ := json.MarshalIndent(doc, "", "  ")
	return b.String(), js
}
