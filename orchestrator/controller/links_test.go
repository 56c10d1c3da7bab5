package controller

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

// linkCounts, which never builds the links, counts what building every
// link with linkOf would: ends offline, current, behind or never heard
// from, some reporting probes (up or down) of some peers.
func TestLinkCountsMatchLinks(t *testing.T) {
	const rev = 7
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		ends := make([]linkEnd, 2+r.IntN(30))
		for i := range ends {
			ends[i].name = fmt.Sprintf("e%02d", i)
		}
		for i := range ends {
			if r.IntN(5) == 0 {
				continue // never heard from
			}
			st := &edgeStatus{online: r.IntN(4) > 0, last: bus.Status{AppliedRevision: uint64(rev - r.IntN(2))}}
			if r.IntN(3) == 0 {
				st.probes = map[string]peerProbe{}
				for range r.IntN(len(ends)) {
					st.probes[ends[r.IntN(len(ends))].name] = peerProbe{up: r.IntN(3) > 0}
				}
				st.probes["gone"] = peerProbe{up: true} // a peer no longer in the set
			}
			ends[i].st = st
		}
		want := map[string]int{api.LinkUp: 0, api.LinkPending: 0, api.LinkDown: 0}
		for i, a := range ends {
			for _, b := range ends[i+1:] {
				want[linkOf(a, b, rev, time.Time{}).State]++
			}
		}
		if got := linkCounts(ends, rev); !maps.Equal(got, want) {
			t.Errorf("seed %d, %d ends: counts %v, want %v", seed, len(ends), got, want)
		}
	}
}
