package api

import (
	"os/exec"
	"strings"
	"testing"
)

func TestWriteDOT(t *testing.T) {
	topo := Topology{
		Revision: 7,
		Edges: []TopologyEdge{
			{Name: "gz-3", CIDRs: []string{"172.20.0.0/16", "10.244.3.0/24"}, State: StateOnline, AppliedRevision: 7},
			{Name: "hk-1", CIDRs: []string{"172.31.0.0/16"}, State: StateOffline, AppliedRevision: 6},
			{Name: "sz-1", CIDRs: []string{"172.18.0.0/16"}, State: StateOnline, AppliedRevision: 7, LastError: "boom"},
		},
		Links: []Link{
			{A: "gz-3", B: "hk-1", State: LinkDown, Probe: ProbeUnknown, Reason: "hk-1 is offline"},
			{A: "gz-3", B: "sz-1", State: LinkUp, Probe: ProbeUp, RTTMs: 1.234},
			{A: "hk-1", B: "sz-1", State: LinkPending, Probe: ProbeUnknown},
		},
	}
	var b strings.Builder
	if err := WriteDOT(&b, topo); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"graph cframe {",
		`"gz-3" [label="gz-3\n172.20.0.0/16\n10.244.3.0/24\nrev 7, online", color=forestgreen];`,
		`"hk-1" [label="hk-1\n172.31.0.0/16\nrev 6, offline", color=gray50];`,
		`color=red3];`,
		`"gz-3" -- "sz-1" [color=forestgreen, style=solid, label="1.23 ms"];`,
		`"gz-3" -- "hk-1" [color=red3, style=dashed, label="down: hk-1 is offline"];`,
		`"hk-1" -- "sz-1" [color=orange, style=dashed, label="pending"];`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dot output lacks %s:\n%s", want, out)
		}
	}
	if !strings.HasSuffix(out, "}\n") || strings.Count(out, " -- ") != 3 {
		t.Fatalf("dot output:\n%s", out)
	}
	// Where Graphviz is installed, it must accept the output.
	if dot, err := exec.LookPath("dot"); err == nil {
		cmd := exec.Command(dot, "-Tsvg")
		cmd.Stdin = strings.NewReader(out)
		if res, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(res), "<svg") {
			t.Fatalf("dot -Tsvg: %v\n%s", err, res)
		}
	}
}
