package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/ha"
	"github.com/cframe/cframe/orchestrator/probe"
)

func TestChecksumChooserStart(t *testing.T) {
	now := time.Unix(1000, 0)
	saved := &checksumDecision{Setting: netcfg.ChecksumSafe, Evidence: evidenceProbes, Detail: "hk-1 (...)"}
	tests := []struct {
		mode     config.Checksum
		saved    *checksumDecision
		setting  netcfg.Checksum
		evidence string
		watching bool
	}{
		{config.ChecksumAuto, nil, netcfg.ChecksumFast, evidenceDefault, true},
		{"", nil, netcfg.ChecksumFast, evidenceDefault, true},
		{config.ChecksumAuto, saved, netcfg.ChecksumSafe, evidenceProbes, false},
		{config.ChecksumAuto, &checksumDecision{Setting: "bogus"}, netcfg.ChecksumFast, evidenceDefault, true},
		{config.ChecksumOn, nil, netcfg.ChecksumFast, evidenceConfig, false},
		{config.ChecksumOff, nil, netcfg.ChecksumSafe, evidenceConfig, false},
		{config.ChecksumOn, saved, netcfg.ChecksumFast, evidenceConfig, false},
	}
	for _, tt := range tests {
		c := newChecksumChooser(tt.mode, tt.saved, now)
		if d := c.Decision(); d.Setting != tt.setting || d.Evidence != tt.evidence || c.Watching() != tt.watching {
			t.Errorf("mode %q, saved %v: %+v watching %v, want %s (%s) watching %v", tt.mode, tt.saved, d, c.Watching(), tt.setting, tt.evidence, tt.watching)
		}
	}
}

// A round of what the probes see of each path.
type round map[string][2]bool // peer -> {ICMP up, UDP up}

func paths(r round) []pathProbes {
	var out []pathProbes
	for peer, up := range r {
		out = append(out, pathProbes{Peer: peer, ICMP: probe.State{Up: up[0], Known: true}, UDP: probe.State{Up: up[1], Known: true}})
	}
	return out
}

func TestChecksumChooserObserve(t *testing.T) {
	var (
		good    = [2]bool{true, true}
		broken  = [2]bool{true, false} // ICMP passes, UDP fails: evidence
		dead    = [2]bool{false, false}
		udpOnly = [2]bool{false, true}
	)
	ticks := int(checksumConfirm / checksumTick)
	repeat := func(n int, r round) []round {
		out := make([]round, n)
		for i := range out {
			out[i] = r
		}
		return out
	}
	cat := func(rs ...[]round) []round {
		var out []round
		for _, r := range rs {
			out = append(out, r...)
		}
		return out
	}
	tests := []struct {
		name   string
		rounds []round
		// switchAt is the round the setting falls back in, -1: never.
		switchAt int
	}{
		{"all paths good: stays fast", repeat(20, round{"a": good, "b": good}), -1},
		{"a path proves the setting broken: falls back once the evidence held", repeat(20, round{"a": good, "b": broken}), ticks},
		{"a peer dies (ICMP and UDP fail): a failover's matter, not the checksum's", repeat(20, round{"a": dead, "b": good}), -1},
		{"ICMP down, UDP up: no evidence", repeat(20, round{"a": udpOnly}), -1},
		{"evidence broken by a good round: starts over",
			cat(repeat(ticks, round{"a": broken}), repeat(1, round{"a": good}), repeat(ticks, round{"a": broken}), repeat(1, round{"a": good})), -1},
		{"evidence broken by the peer dying (failover): starts over",
			cat(repeat(ticks, round{"a": broken}), repeat(1, round{"a": dead}), repeat(ticks, round{"a": broken}), repeat(5, round{"a": dead})), -1},
		{"evidence moving between peers never held on one: stays fast",
			cat(repeat(ticks, round{"a": broken, "b": good}), repeat(ticks, round{"a": good, "b": broken}), repeat(ticks, round{"a": broken, "b": good})), -1},
		{"a peer leaving the set takes its evidence along",
			cat(repeat(ticks, round{"a": broken}), repeat(1, round{}), repeat(ticks, round{"a": broken})), -1},
		{"after the fall back nothing changes it again (no flapping)",
			cat(repeat(ticks+1, round{"a": broken}), repeat(20, round{"a": good}), repeat(20, round{"a": broken})), ticks},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := newChecksumChooser(config.ChecksumAuto, nil, now)
			switched := -1
			for i, r := range tt.rounds {
				now = now.Add(checksumTick)
				if c.Observe(now, paths(r)) {
					if switched >= 0 {
						t.Fatalf("switched again in round %d (first in %d)", i, switched)
					}
					switched = i
				}
			}
			if switched != tt.switchAt {
				t.Fatalf("switched in round %d, want %d (decision %+v)", switched, tt.switchAt, c.Decision())
			}
			if d := c.Decision(); switched >= 0 && (d.Setting != netcfg.ChecksumSafe || d.Evidence != evidenceProbes || !strings.Contains(d.Detail, "UDP down")) {
				t.Errorf("decision %+v", d)
			}
		})
	}
}

// An override never changes, whatever the probes see.
func TestChecksumChooserOverride(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, mode := range []config.Checksum{config.ChecksumOn, config.ChecksumOff} {
		c := newChecksumChooser(mode, nil, now)
		for i := range 20 {
			if c.Observe(now.Add(time.Duration(i)*checksumTick), paths(round{"a": {true, false}})) {
				t.Fatalf("%s: switched", mode)
			}
		}
	}
}

func TestLoadChecksum(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "checksum.json")
	if d, err := loadChecksum(p); d != nil || err != nil {
		t.Fatalf("no file: %v, %v", d, err)
	}
	os.WriteFile(p, []byte(`{"setting":"safe","evidence":"udp-fails-icmp-passes","detail":"hk-1","at":"2026-12-07T22:00:00Z"}`), 0o600)
	if d, err := loadChecksum(p); err != nil || d.Setting != netcfg.ChecksumSafe || d.Detail != "hk-1" {
		t.Fatalf("saved: %+v, %v", d, err)
	}
	os.WriteFile(p, []byte(`{`), 0o600)
	if _, err := loadChecksum(p); err == nil {
		t.Fatal("malformed file loaded")
	}
}

// UDP probes go to the remote gateways only, every half second; in a large
// mesh less often, so that the answers every gateway sends stay under the
// kernel's ICMP limit.
func TestUDPTargets(t *testing.T) {
	ts := []probe.Target{{Name: "hk-1"}, {Name: ha.LANTarget("sz-2").Name()}, {Name: ha.ForwardTarget("sz-1", "sz-2").Name()}}
	got := udpTargets(ts)
	if len(got) != 1 || got[0].Name != "hk-1" || got[0].Interval != probe.UDPInterval || got[0].DownAfter != 1750*time.Millisecond {
		t.Fatalf("udpTargets = %+v", got)
	}
	var many []probe.Target
	for i := range 1000 {
		many = append(many, probe.Target{Name: fmt.Sprintf("gw-%d", i)})
	}
	got = udpTargets(many)
	if perSecond := float64(len(got)) / got[0].Interval.Seconds(); len(got) != 1000 || perSecond > udpAnswersPerSecond {
		t.Fatalf("1000 gateways probed every %s: %.0f answers per second each gateway sends", got[0].Interval, perSecond)
	}
}
