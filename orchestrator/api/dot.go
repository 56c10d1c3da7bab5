package api

import (
	"fmt"
	"io"
	"strings"
)

// Graphviz colours of link states.
var dotColor = map[string]string{LinkUp: "forestgreen", LinkPending: "orange", LinkDown: "red3", LinkIncompatible: "gray60"}

// WriteDOT writes t as a Graphviz graph (`cframectl topology -o dot | dot
// -Tsvg`): one node per edge, labelled with its networks and applied
// revision, and one line per link, coloured by state, dashed while no probe
// confirms it, labelled with its round-trip time or why it is not up.
func WriteDOT(w io.Writer, t Topology) error {
	var b strings.Builder
	fmt.Fprintf(&b, "graph cframe {\n  label=%q;\n  labelloc=t;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n",
		fmt.Sprintf("cframe mesh, revision %d", t.Revision))
	for _, e := range t.Edges {
		color := "forestgreen"
		switch {
		case e.State != StateOnline:
			color = "gray50"
		case e.LastError != "":
			color = "red3"
		}
		label := fmt.Sprintf("%s\n%s\nrev %d, %s", e.Name, strings.Join(e.CIDRs, "\n"), e.AppliedRevision, e.State)
		fmt.Fprintf(&b, "  %q [label=%q, color=%s];\n", e.Name, label, color)
	}
	for _, l := range t.Links {
		label := l.State
		if l.State == LinkUp && l.RTTMs > 0 {
			label = fmt.Sprintf("%.2f ms", l.RTTMs)
		} else if l.Reason != "" {
			label += ": " + l.Reason
		}
		style := "solid"
		if l.Probe != ProbeUp {
			style = "dashed"
		}
		fmt.Fprintf(&b, "  %q -- %q [color=%s, style=%s, label=%q];\n", l.A, l.B, dotColor[l.State], style, label)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
