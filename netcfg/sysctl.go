package netcfg

import (
	"fmt"
	"os"
	"strings"
)

// Sysctls: net.ipv4.ip_forward, which an edge needs on (it routes between
// the tunnel and its LAN). cframe only ever turns it on.

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// readIPForward reads net.ipv4.ip_forward.
func (s *session) readIPForward(r *reading) error {
	fw, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("netcfg: read ip_forward: %w", err)
	}
	r.a.IPForward = strings.TrimSpace(string(fw)) == "1"
	return nil
}

// planIPForward turns forwarding on, first of all.
func (p *planner) planIPForward() {
	if !p.a.IPForward {
		p.add(stageSysctl, ipForwardOn())
	}
}

func ipForwardOn() change {
	return change{desc: "sysctl net.ipv4.ip_forward=1", do: func(*session) error {
		return os.WriteFile(ipForwardPath, []byte("1\n"), 0o644)
	}}
}
