package haproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
)

// stopGrace is how long an old worker stopped by the budget may take to
// exit before it is killed.
const stopGrace = 10 * time.Second

// Old workers: after a reload the previous worker keeps serving the
// connections it holds until they close, hard-stop-after fires or
// mworker-max-reloads kills it. Long-lived TCP (devices, stratum, games,
// MQTT) keeps them all alive, and each holds about as much memory as the
// current worker. hard-stop-after bounds them in time only: twelve reloads
// within its 30 minutes can hold twelve workers. The memory budget
// (Config.OldWorkersMaxBytes) bounds them in space: when the old workers
// together hold more than it, the oldest are stopped first (SIGTERM: their
// connections close now) and what was closed is logged and counted. The
// trade-off: a budget breaks long-lived connections earlier than
// hard-stop-after would, to keep the node from swapping or the OOM killer
// choosing a process itself; routes in the dynamic range never reload, so
// there they cost nothing.

// WorkerStats describes the HAProxy processes of this node.
type WorkerStats struct {
	// WorkerRSS is the resident memory of the current worker(s), bytes.
	WorkerRSS uint64
	// OldWorkers are workers left from earlier reloads, still serving the
	// connections they hold.
	OldWorkers int
	// OldWorkerConns is the connections those old workers hold.
	OldWorkerConns int
	// OldWorkersRSS is their resident memory together, bytes (pages shared
	// with the master count in each, so this errs on the high side).
	OldWorkersRSS uint64
	// OldWorkersStopped and OldWorkerConnsClosed count the old workers the
	// memory budget stopped and the connections they held.
	OldWorkersStopped    uint64
	OldWorkerConnsClosed uint64
	// BudgetBytes is Config.OldWorkersMaxBytes (0: no budget).
	BudgetBytes uint64
}

// procRSS returns the resident memory of pid in bytes (0 when unknown).
func procRSS(pid int) uint64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// workerQueryTimeout bounds asking one worker for its connections.
const workerQueryTimeout = 500 * time.Millisecond

// workerMemory is a worker's resident memory, or, when /proc hides it (an
// isolated HAProxy under ProtectProc=invisible), the memory its pools hold
// as the worker itself reports it (PoolAlloc_MB of show info).
func (m *Manager) workerMemory(ctx context.Context, pid int) uint64 {
	if rss := procRSS(pid); rss > 0 {
		return rss
	}
	out, err := masterCommand(ctx, m.sockPath, "@!"+strconv.Itoa(pid)+" show info")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "PoolAlloc_MB: "); ok {
			if mb, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
				return mb << 20
			}
		}
	}
	return 0
}

// workerConns asks worker pid, through the master CLI, how many
// connections it holds (-1 when it does not answer).
func workerConns(ctx context.Context, sock string, pid int) int {
	ctx, cancel := context.WithTimeout(ctx, workerQueryTimeout)
	defer cancel()
	out, err := masterCommand(ctx, sock, "@!"+strconv.Itoa(pid)+" show info")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "CurrConns: "); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return n
			}
		}
	}
	return -1
}

// runWorkers measures the workers every HealthInterval, apart from the
// apply loop: asking a slow old worker must never delay a change.
func (m *Manager) runWorkers(ctx context.Context) {
	tick := time.NewTicker(m.cfg.HealthInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			m.mu.Lock()
			stopped := m.stopped
			m.mu.Unlock()
			if !stopped {
				m.checkWorkers(ctx)
			}
		}
	}
}

// checkWorkers measures the workers and stops the oldest old workers while
// they hold more than the budget.
func (m *Manager) checkWorkers(ctx context.Context) {
	p, err := showProc(ctx, m.sockPath)
	if err != nil {
		// The master CLI does not answer while the master re-executes for
		// a reload, which under a stream of reloads is most of the time:
		// measure from /proc instead (the newest child is the current
		// worker), report only, and stop nothing on that guess.
		m.workersFromProc()
		return
	}
	m.noticeOutsideReload(p.Reloads)
	type old struct {
		pid, reloads, conns int
		rss                 uint64
	}
	var cur uint64
	var olds []old
	for _, w := range p.Workers {
		if w.Reloads == 0 {
			cur += m.workerMemory(ctx, w.PID)
			continue
		}
		olds = append(olds, old{pid: w.PID, reloads: w.Reloads, rss: m.workerMemory(ctx, w.PID), conns: workerConns(ctx, m.sockPath, w.PID)})
	}
	// Oldest first: the worker that survived the most reloads.
	slices.SortFunc(olds, func(a, b old) int { return b.reloads - a.reloads })
	// Workers stopped earlier may take a while to exit (freeing a large
	// table under load): they still hold memory, but are not stopped or
	// counted again; one that ignores SIGTERM for stopGrace is killed.
	var total, pending uint64
	live := olds[:0:0]
	seen := map[int]bool{}
	for _, o := range olds {
		seen[o.pid] = true
		total += o.rss
		if at, ok := m.stopping[o.pid]; ok {
			pending += o.rss
			if time.Since(at) > stopGrace {
				_ = syscall.Kill(o.pid, syscall.SIGKILL)
			}
			continue
		}
		live = append(live, o)
	}
	for pid := range m.stopping {
		if !seen[pid] {
			delete(m.stopping, pid)
		}
	}
	var stopped, closed, justStopped uint64
	budget := m.cfg.OldWorkersMaxBytes
	for budget > 0 && total-pending > budget && len(live) > 0 {
		o := live[0]
		live = live[1:]
		if err := syscall.Kill(o.pid, syscall.SIGTERM); err != nil {
			if errors.Is(err, syscall.EPERM) {
				// An isolated HAProxy's workers are another user's: only
				// CAP_KILL (the unit grants it) lets the agent stop them.
				m.log.Warn("cannot stop an old haproxy worker over the memory budget: the agent may not signal it (it lacks CAP_KILL)", "pid", o.pid)
			}
			continue
		}
		if m.stopping == nil {
			m.stopping = map[int]time.Time{}
		}
		m.stopping[o.pid] = time.Now()
		pending += o.rss
		justStopped += o.rss
		stopped++
		if o.conns > 0 {
			closed += uint64(o.conns)
		}
		m.log.Warn("old haproxy worker stopped: old workers exceeded their memory budget, its connections are closed",
			"pid", o.pid, "reloads_survived", o.reloads, "connections_closed", max(o.conns, 0),
			"resident_mb", o.rss>>20, "budget_mb", budget>>20)
	}
	// Reported: the old workers alive after this round, including those
	// stopped earlier that have not exited yet.
	count := len(olds) - int(stopped)
	total -= justStopped
	conns := 0
	for _, o := range live {
		conns += max(o.conns, 0)
	}
	m.update(func(s *Status) {
		s.Workers.WorkerRSS = cur
		s.Workers.OldWorkers = count
		s.Workers.OldWorkerConns = conns
		s.Workers.OldWorkersRSS = total
		s.Workers.OldWorkersStopped += stopped
		s.Workers.OldWorkerConnsClosed += closed
	})
	if m.metrics != nil {
		m.metrics.oldWorkers.Set(float64(count))
		m.metrics.oldWorkerConns.Set(float64(conns))
		m.metrics.oldWorkersRSS.Set(float64(total))
		m.metrics.workerRSS.Set(float64(cur))
		m.metrics.oldWorkersStopped.Add(float64(stopped))
		m.metrics.oldWorkerConnsClosed.Add(float64(closed))
	}
}

// workersFromProc reports the workers from the master's children in /proc:
// the newest is taken for the current worker, the others for old ones.
// Connections keep their last measured value.
func (m *Manager) workersFromProc() {
	m.mu.Lock()
	master := m.status.MasterPID
	m.mu.Unlock()
	kids := procfs.Children(master)
	if len(kids) == 0 {
		return
	}
	newest, newestStart := 0, uint64(0)
	for _, pid := range kids {
		if st := procStart(pid); st >= newestStart {
			newest, newestStart = pid, st
		}
	}
	var cur, old uint64
	n := 0
	for _, pid := range kids {
		if pid == newest {
			cur = procRSS(pid)
			continue
		}
		old += procRSS(pid)
		n++
	}
	m.update(func(s *Status) {
		s.Workers.WorkerRSS, s.Workers.OldWorkers, s.Workers.OldWorkersRSS = cur, n, old
	})
	if m.metrics != nil {
		m.metrics.oldWorkers.Set(float64(n))
		m.metrics.oldWorkersRSS.Set(float64(old))
		m.metrics.workerRSS.Set(float64(cur))
	}
}

// procStart returns the start time of pid in clock ticks since boot (0
// when unknown).
func procStart(pid int) uint64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64) // field 22: starttime
	return v
}
