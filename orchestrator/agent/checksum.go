package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/probe"
)

// The VXLAN device's checksum setting (netcfg/ethtool.go). With
// checksum_offload = "auto" the agent runs the fast setting — transmit
// checksum offload on, a zero outer UDP checksum: what the kernel's VXLAN
// does at its best — and falls back to the safe one (offload off, outer
// checksum on) once the data plane proves a path breaks it. What breaks on
// such a path is what leaves with a partial inner checksum — TCP and UDP,
// never ICMP, which is checksummed in software — so the evidence is a
// remote gateway whose ICMP probes through the tunnel pass while its UDP
// probes (probe.OpenUDP) fail, without a break, for checksumConfirm. A
// gateway or path that dies fails both; failover (package ha) acts on ICMP
// alone, so the one is never taken for the other. The decision is saved in
// state_dir/checksum.json: a restarted agent does not break the traffic
// again, and the setting never flaps back (delete the file, or set
// checksum_offload, to choose again).

// checksumConfirm is how long the evidence must hold before the agent falls
// back; checksumTick is how often it looks. With the UDP probes' timing
// (udpTargets: down after 1.75 s without an answer in meshes of up to 125
// gateways) a break is acted on about five seconds after it began.
const (
	checksumConfirm = 2500 * time.Millisecond
	checksumTick    = 500 * time.Millisecond
)

// Evidence for a checksum setting, as logged, saved and exported.
const (
	// evidenceDefault: auto, nothing seen against the fast setting.
	evidenceDefault = "default"
	// evidenceConfig: edge.toml's checksum_offload chose.
	evidenceConfig = "config"
	// evidenceProbes: UDP probes through the tunnel failed while ICMP
	// probes passed.
	evidenceProbes = "udp-fails-icmp-passes"
)

// checksumDecision is the setting in force and why; saved as checksum.json.
type checksumDecision struct {
	Setting  netcfg.Checksum `json:"setting"`
	Evidence string          `json:"evidence"`
	// Detail names the paths and what their probes saw (evidenceProbes).
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// pathProbes is what the probes see of the path to one remote gateway.
type pathProbes struct {
	Peer      string
	ICMP, UDP probe.State
}

// checksumChooser decides the setting: a pure core, owned by the agent's
// loop, fed with what the probes see.
type checksumChooser struct {
	auto bool
	d    checksumDecision
	// since: per remote gateway, since when its probes have been evidence.
	since map[string]time.Time
}

// newChecksumChooser starts with the override of mode, else with saved
// (auto with an earlier decision), else with the fast setting.
func newChecksumChooser(mode config.Checksum, saved *checksumDecision, now time.Time) *checksumChooser {
	c := &checksumChooser{auto: mode == config.ChecksumAuto || mode == "", since: map[string]time.Time{}}
	switch {
	case mode == config.ChecksumOn:
		c.d = checksumDecision{Setting: netcfg.ChecksumFast, Evidence: evidenceConfig, At: now}
	case mode == config.ChecksumOff:
		c.d = checksumDecision{Setting: netcfg.ChecksumSafe, Evidence: evidenceConfig, At: now}
	case saved != nil && (saved.Setting == netcfg.ChecksumSafe || saved.Setting == netcfg.ChecksumFast):
		c.d = *saved
	default:
		c.d = checksumDecision{Setting: netcfg.ChecksumFast, Evidence: evidenceDefault, At: now}
	}
	return c
}

// Decision is the setting in force.
func (c *checksumChooser) Decision() checksumDecision { return c.d }

// Watching reports whether the probes can still change the setting: auto,
// and the fast setting in force.
func (c *checksumChooser) Watching() bool { return c.auto && c.d.Setting == netcfg.ChecksumFast }

// Observe takes what the probes see at now and reports whether the
// setting changed. A path is evidence while its ICMP probes pass and its
// UDP probes have a verdict and fail; the setting falls back to safe once
// any path has been evidence for checksumConfirm without a break.
func (c *checksumChooser) Observe(now time.Time, paths []pathProbes) bool {
	if !c.Watching() {
		return false
	}
	seen := map[string]bool{}
	var proven []string
	for _, p := range paths {
		if !p.ICMP.Up || !p.UDP.Known || p.UDP.Up {
			continue
		}
		seen[p.Peer] = true
		since, ok := c.since[p.Peer]
		if !ok {
			c.since[p.Peer] = now
			continue
		}
		if now.Sub(since) >= checksumConfirm {
			proven = append(proven, fmt.Sprintf("%s (ICMP up, RTT %s; UDP down since %s, %d of %d answered)",
				p.Peer, p.ICMP.RTT.Round(10*time.Microsecond), p.UDP.Since.UTC().Format(time.RFC3339Nano), p.UDP.Received, p.UDP.Sent))
		}
	}
	for peer := range c.since {
		if !seen[peer] {
			delete(c.since, peer)
		}
	}
	if len(proven) == 0 {
		return false
	}
	sort.Strings(proven)
	c.d = checksumDecision{Setting: netcfg.ChecksumSafe, Evidence: evidenceProbes, Detail: strings.Join(proven, "; "), At: now.UTC()}
	c.since = map[string]time.Time{}
	return true
}

func (a *Agent) checksumPath() string { return filepath.Join(a.cfg.StateDir, "checksum.json") }

// loadChecksum returns the saved decision, nil when there is none.
func loadChecksum(path string) (*checksumDecision, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var d checksumDecision
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}
