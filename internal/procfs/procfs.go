// Package procfs reads what drawbridge needs from Linux's /proc: a
// process's state, parent and CPU time, and a process's live children. One copy for
// the HAProxy manager, its tests and the benchmarks.
package procfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ParseStat returns the state and parent PID from the contents of a
// /proc/<pid>/stat file. The command name is skipped up to the last ')',
// so a name holding spaces or parentheses cannot shift the fields.
func ParseStat(b []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || f[0] == "" {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return f[0][0], ppid, err == nil
}

// Children lists the live (not zombie) children of pid that /proc shows.
func Children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if st, ppid, ok := ParseStat(b); ok && ppid == pid && st != 'Z' {
			out = append(out, c)
		}
	}
	return out
}

// clockTicks is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTicks = 100

// CPUTime returns the CPU time (user and system) pid has used so far.
func CPUTime(pid int) (time.Duration, error) {
	self, _, err := CPUTimes(pid)
	return self, err
}

// CPUTimes returns the CPU time (user and system) pid has used so far, and
// that of its children it has waited for (exited helpers, such as the
// `haproxy -c` checks the agent runs, or workers a master reaped).
func CPUTimes(pid int) (self, children time.Duration, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	var ticks [4]int64
	for k := range ticks {
		// utime, stime, cutime, cstime: fields 14-17 of stat(5), counted
		// here from the state (field 3).
		if ticks[k], err = strconv.ParseInt(f[11+k], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: bad CPU times", pid)
		}
	}
	return time.Duration(ticks[0]+ticks[1]) * time.Second / clockTicks,
		time.Duration(ticks[2]+ticks[3]) * time.Second / clockTicks, nil
}

// MachineBusy returns the CPU time all CPUs have spent running anything
// (user, nice, system, irq and softirq time from /proc/stat) since boot.
// Idle, I/O wait and time stolen by the hypervisor are left out, so the
// difference over a run is the work done, however busy the host was.
func MachineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
