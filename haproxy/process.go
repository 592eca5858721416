package haproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
)

// processAlive reports whether pid names a running process. A zombie counts
// as dead: a daemonized master is reparented to PID 1, which may not reap it.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		// Missing from /proc is not proof of death: under the unit's
		// ProtectProc=invisible an isolated HAProxy (another user) is
		// hidden. A signal 0 still tells: EPERM means it exists.
		err := syscall.Kill(pid, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	st, _, ok := procfs.ParseStat(b)
	return ok && st != 'Z' && st != 'X'
}

func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: invalid content %q", path, b)
	}
	return pid, nil
}

// startMaster launches a daemonized HAProxy master-worker on the config at
// m.cfgPath and waits until its master CLI answers. The daemon runs in its
// own session with stdio on a file, so neither the agent exiting nor its
// pipes being closed affects it.
func (m *Manager) startMaster(ctx context.Context) (procInfo, error) {
	_ = os.Remove(m.pidPath)
	logPath := filepath.Join(m.cfg.Dir, "haproxy.start.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return procInfo{}, fmt.Errorf("start haproxy: %w", err)
	}
	defer logf.Close()
	sockMode := "600"
	if m.cfg.isolated() {
		sockMode = "660" // HAProxy's user owns it; the agent reaches it through the group
	}
	cmd, err := m.masterCommand("-W", "-D",
		"-S", m.sockPath+",mode,"+sockMode,
		"-p", m.pidPath,
		"-f", m.cfgPath)
	if err != nil {
		return procInfo{}, fmt.Errorf("start haproxy: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return procInfo{}, fmt.Errorf("start haproxy: %w", err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err = <-waitErr:
	case <-time.After(m.cfg.ReloadTimeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its own session and group
		err = fmt.Errorf("did not daemonize within %v", m.cfg.ReloadTimeout)
		<-waitErr
	}
	if err != nil {
		out, _ := os.ReadFile(logPath)
		if alerts := parseAlerts(string(out)); len(alerts) > 0 {
			return procInfo{}, fmt.Errorf("start haproxy: %s", strings.Join(alerts, "; "))
		}
		return procInfo{}, fmt.Errorf("start haproxy: %w: %s", err, strings.TrimSpace(string(out)))
	}
	deadline := time.Now().Add(m.cfg.ReloadTimeout)
	for {
		pid, perr := readPIDFile(m.pidPath)
		if perr == nil {
			p, err := showProc(ctx, m.sockPath)
			if err == nil && p.MasterPID == pid {
				return p, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			// A worker that exits at once (it could not chroot, say) leaves
			// the master waiting: its alert says why.
			out, _ := os.ReadFile(logPath)
			if alerts := parseAlerts(string(out)); len(alerts) > 0 {
				return procInfo{}, fmt.Errorf("start haproxy: master CLI %s not answering within %v: %s", m.sockPath, m.cfg.ReloadTimeout, strings.Join(alerts, "; "))
			}
			return procInfo{}, fmt.Errorf("start haproxy: master CLI %s not answering within %v", m.sockPath, m.cfg.ReloadTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopMaster stops the master pid and its workers: SIGUSR1 (soft stop:
// workers finish their connections) until ctx ends or grace passes, then
// SIGTERM, then SIGKILL for anything left.
func stopMaster(ctx context.Context, pid int, grace time.Duration) error {
	if pid <= 1 {
		return nil // never signal init or "every process"
	}
	workers := procfs.Children(pid)
	allDead := func() bool {
		if processAlive(pid) {
			return false
		}
		for _, w := range workers {
			if processAlive(w) {
				return false
			}
		}
		return true
	}
	waitDead := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			if allDead() {
				return true
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !processAlive(pid) {
		for _, w := range workers {
			_ = syscall.Kill(w, syscall.SIGKILL)
		}
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGUSR1)
	if waitDead(grace) {
		return nil
	}
	workers = append(workers, procfs.Children(pid)...)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitDead(time.Second) {
		return nil
	}
	workers = append(workers, procfs.Children(pid)...)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for _, w := range workers {
		_ = syscall.Kill(w, syscall.SIGKILL)
	}
	ctx = context.WithoutCancel(ctx)
	if !waitDead(2 * time.Second) {
		return fmt.Errorf("stop haproxy: master %d still alive after SIGKILL", pid)
	}
	return nil
}

// probePort reports whether host:port can be bound now. HAProxy -c does not
// bind, so without this a port held by another process would only show up
// as a failed reload.
func probePort(host string, port int) error {
	network := "tcp"
	if host == "" {
		network, host = "tcp4", "0.0.0.0"
	}
	l, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

// boundPorts returns the ports of the bind lines of a configuration this
// package rendered: "bind HOST:PORT" or, for the dynamic range,
// "bind HOST:A-B,HOST:C-D".
func boundPorts(cfg []byte) *portSet {
	ports := &portSet{}
	for _, line := range strings.Split(string(cfg), "\n") {
		line = strings.TrimSpace(line)
		addrs, ok := strings.CutPrefix(line, "bind ")
		if !ok {
			continue
		}
		for _, addr := range strings.Split(addrs, ",") {
			i := strings.LastIndexByte(addr, ':')
			a, b, isRange := strings.Cut(addr[i+1:], "-")
			if !isRange {
				b = a
			}
			first, err1 := strconv.Atoi(a)
			last, err2 := strconv.Atoi(b)
			if err1 != nil || err2 != nil || first < 1 || last > 65535 || last-first > MaxDynamicPorts {
				continue
			}
			for p := first; p <= last; p++ {
				ports.add(p)
			}
		}
	}
	return ports
}

// listeningPorts returns the TCP ports that the master pid or its workers
// listen on, from /proc: the socket inodes of their descriptors, matched
// against the LISTEN entries of /proc/self/net/tcp and tcp6. It is empty
// when /proc cannot tell (not Linux, no permission: an isolated HAProxy's
// descriptors are another user's).
func listeningPorts(pid int) map[int]bool {
	ports := map[int]bool{}
	if pid <= 1 {
		return ports
	}
	inodes := map[string]int{} // socket inode -> port, listening sockets only
	// /proc/self/net, not /proc/net: the unit's ProcSubset=pid hides the
	// latter (HAProxy shares the agent's network namespace).
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 || fields[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			i := strings.LastIndexByte(fields[1], ':')
			port, err := strconv.ParseUint(fields[1][i+1:], 16, 16)
			if err != nil {
				continue
			}
			inodes[fields[9]] = int(port)
		}
	}
	if len(inodes) == 0 {
		return ports
	}
	for _, p := range append([]int{pid}, procfs.Children(pid)...) {
		dir := filepath.Join("/proc", strconv.Itoa(p), "fd")
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			link, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			if port, ok := inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")]; ok {
				ports[port] = true
			}
		}
	}
	return ports
}

// portSet is a set of TCP ports: a bit per port, so a lookup (made for every
// route of every update) is an index, not a hash, at any table size.
type portSet struct{ bits [1024]uint64 }

func (s *portSet) has(p int) bool {
	return p > 0 && p <= 65535 && s.bits[p>>6]&(1<<(p&63)) != 0
}

func (s *portSet) add(p int) {
	if p > 0 && p <= 65535 {
		s.bits[p>>6] |= 1 << (p & 63)
	}
}

func (s *portSet) del(p int) {
	if p > 0 && p <= 65535 {
		s.bits[p>>6] &^= 1 << (p & 63)
	}
}
