package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cframe/cframe/internal/topo"
)

// iperfPort is the first port of the iperf3 servers on the far host; the
// multi-stream test uses one server per stream.
const iperfPort = 5201

// flow is what one iperf3 measurement moved.
type flow struct {
	Gbps        float64
	Bytes       float64
	Retransmits int
	// MSS is the sender's MSS right after the handshake (iperf3's
	// tcp_mss_default), i.e. after any clamping on the way.
	MSS int
}

// iperfResult is the part of iperf3's JSON output we read.
type iperfResult struct {
	Start struct {
		MSS int `json:"tcp_mss_default"`
	} `json:"start"`
	End struct {
		Received struct {
			Bytes float64 `json:"bytes"`
			BPS   float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs streams TCP streams from namespace from to addr for secs
// seconds, one iperf3 client process per stream (Debian's iperf3 3.12
// drives all -P streams from one thread, which would measure that thread
// rather than the path), and sums them.
func iperf(n *topo.Net, from string, addr netip.Addr, streams, secs int) (flow, error) {
	res := make([]iperfResult, streams)
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := n.Exec(from, "iperf3", "-c", addr.String(), "-p", strconv.Itoa(iperfPort+i), "-t", strconv.Itoa(secs), "-J")
			if jerr := json.Unmarshal([]byte(out), &res[i]); jerr != nil && err == nil {
				err = fmt.Errorf("iperf3 output: %w", jerr)
			}
			if err == nil && res[i].Error != "" {
				err = fmt.Errorf("iperf3: %s", res[i].Error)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	var f flow
	for i, r := range res {
		if errs[i] != nil {
			return flow{}, errs[i]
		}
		f.Gbps += r.End.Received.BPS / 1e9
		f.Bytes += r.End.Received.Bytes
		f.Retransmits += r.End.Sent.Retransmits
		f.MSS = r.Start.MSS
	}
	return f, nil
}

// startIperfServers starts one iperf3 server per port in namespace ns and
// waits until they listen.
func startIperfServers(n *topo.Net, ns string, count int) error {
	for i := range count {
		if _, err := n.Start(ns, "", "iperf3", "-s", "-p", strconv.Itoa(iperfPort+i)); err != nil {
			return err
		}
	}
	return topo.Eventually(10*time.Second, func() error {
		out, err := n.Exec(ns, "ss", "-Hltn")
		if err != nil {
			return err
		}
		for i := range count {
			if !strings.Contains(out, ":"+strconv.Itoa(iperfPort+i)+" ") {
				return fmt.Errorf("iperf3 server on port %d not listening yet", iperfPort+i)
			}
		}
		return nil
	})
}

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingRTT sends count echo requests back to back (ping -A: the next one as
// soon as the reply is in) and returns the round-trip times in
// microseconds; it fails when more than 1% go unanswered. Back to back, the
// CPUs never fall idle between pings: spaced out, the time an idle vCPU
// takes to wake up drowns the path's own latency (by hand: pings 2 ms apart
// moved by tens of µs from run to run, back to back by one or two).
func pingRTT(n *topo.Net, from string, addr netip.Addr, count int) (Sample, error) {
	out, err := n.Exec(from, "ping", "-n", "-A", "-W", "1", "-c", strconv.Itoa(count), addr.String())
	var s Sample
	for _, m := range pingTime.FindAllStringSubmatch(out, -1) {
		if ms, perr := strconv.ParseFloat(m[1], 64); perr == nil {
			s = append(s, ms*1000)
		}
	}
	if len(s) < count*99/100 {
		return s, fmt.Errorf("ping: %d of %d answered: %v", len(s), count, err)
	}
	return s, nil
}

// maxPayload finds the largest ICMP echo payload that reaches addr from
// namespace from with DF set (ping -M do), by binary search up to what a
// 1500-byte host MTU allows.
func maxPayload(n *topo.Net, from string, addr netip.Addr) (int, error) {
	fits := func(size int) bool {
		_, err := n.Exec(from, "ping", "-n", "-M", "do", "-c", "1", "-W", "1", "-s", strconv.Itoa(size), addr.String())
		return err == nil
	}
	lo, hi := 548, 1500-28+1 // lo fits on any IPv4 path; hi never does
	if !fits(lo) {
		return 0, fmt.Errorf("even a %d-byte payload does not cross", lo)
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if fits(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// cpuTimes are cumulative CPU times.
type cpuTimes struct {
	// procs is the user+system time of each process running in the edge
	// namespaces: the tunnel daemons, or cframe's controller and agents.
	procs map[int]time.Duration
	// kernel is the machine's system+irq+softirq time (/proc/stat), in
	// USER_HZ ticks.
	kernel float64
}

// userHZ is the unit of /proc/stat (100 per second on Linux).
const userHZ = 100

// readCPU snapshots the CPU time of every process in namespaces and the
// machine's kernel time.
func readCPU(namespaces ...string) (cpuTimes, error) {
	c := cpuTimes{procs: map[int]time.Duration{}}
	for _, ns := range namespaces {
		out, err := runCmd("ip", "netns", "pids", ns)
		if err != nil {
			return c, err
		}
		for _, f := range strings.Fields(out) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if u, err := topo.ProcUsage(pid); err == nil {
				c.procs[pid] = u.CPU
			}
		}
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for _, i := range []int{3, 6, 7} {
		if i < len(f) {
			v, _ := strconv.ParseFloat(f[i], 64)
			c.kernel += v
		}
	}
	return c, nil
}

// since returns the CPU seconds spent between c0 and c: by the processes
// alive at both snapshots, and by the kernel.
func (c cpuTimes) since(c0 cpuTimes) (procs, kernel float64) {
	for pid, t := range c.procs {
		if t0, ok := c0.procs[pid]; ok {
			procs += (t - t0).Seconds()
		}
	}
	return procs, (c.kernel - c0.kernel) / userHZ
}

var snmpIPLines = regexp.MustCompile(`(?m)^Ip: .*`)

// ipFragCreates returns the IPv4 FragCreates counter of namespace ns: the
// fragments its stack has made (of tunnel packets, on an edge).
func ipFragCreates(n *topo.Net, ns string) (int64, error) {
	out, err := n.Exec(ns, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	lines := snmpIPLines.FindAllString(out, 2)
	if len(lines) != 2 {
		return 0, fmt.Errorf("no Ip lines in /proc/net/snmp")
	}
	names, values := strings.Fields(lines[0]), strings.Fields(lines[1])
	for i, name := range names {
		if name == "FragCreates" && i < len(values) {
			return strconv.ParseInt(values[i], 10, 64)
		}
	}
	return 0, fmt.Errorf("no FragCreates in /proc/net/snmp")
}
