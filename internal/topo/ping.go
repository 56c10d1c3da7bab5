package topo

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"time"
)

// Ping is a ping running in the background.
type Ping struct {
	done chan struct{}
	out  []byte
	err  error
}

// StartPing pings addr from namespace ns count times, interval apart.
func StartPing(ns string, addr netip.Addr, count int, interval time.Duration) *Ping {
	p := &Ping{done: make(chan struct{})}
	secs := int(time.Duration(count)*interval/time.Second) + 5
	cmd := exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-q", "-i", fmt.Sprintf("%.2f", interval.Seconds()),
		"-c", strconv.Itoa(count), "-w", strconv.Itoa(secs), addr.String())
	go func() {
		p.out, p.err = cmd.CombinedOutput()
		close(p.done)
	}()
	return p
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// Wait returns how many echo requests were sent and answered.
func (p *Ping) Wait() (sent, received int, err error) {
	<-p.done
	m := pingStats.FindSubmatch(p.out)
	if m == nil {
		return 0, 0, fmt.Errorf("ping: %v: %s", p.err, p.out)
	}
	sent, _ = strconv.Atoi(string(m[1]))
	received, _ = strconv.Atoi(string(m[2]))
	return sent, received, nil
}
