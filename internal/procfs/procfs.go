// Package procfs reads what drawbridge needs from Linux's /proc: a
// process's state and parent, and a process's live children. One copy for
// the HAProxy manager, its tests and the benchmarks.
package procfs

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
