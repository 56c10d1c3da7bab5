package topo

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Pid is the process id of the program: "ip netns exec" replaces itself
// with the program, so this is the program's own pid.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Usage is a process's memory and CPU use as /proc reports it.
type Usage struct {
	// RSS and PeakRSS are VmRSS and VmHWM in bytes.
	RSS, PeakRSS int64
	// CPU is the user plus system time used so far (10 ms resolution).
	CPU time.Duration
}

// clockTick is the unit of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// ProcUsage reads the usage of process pid from /proc.
func ProcUsage(pid int) (Usage, error) {
	var u Usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "VmRSS:":
				u.RSS = kb << 10
			case "VmHWM:":
				u.PeakRSS = kb << 10
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the parenthesised command name (which may hold spaces):
	// state is field 3, utime and stime are fields 14 and 15.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return u, fmt.Errorf("topo: short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("topo: bad /proc/%d/stat", pid)
	}
	u.CPU = time.Duration(utime+stime) * clockTick
	return u, nil
}
