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
// connections close now) and what was closed is logged and counted. Reloads
// make room before they start (makeRoom), so the old workers stay within
// the budget rather than returning to it a check later. The
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
	if mb, err := strconv.ParseUint(infoField(out, "PoolAlloc_MB"), 10, 64); err == nil {
		return mb << 20
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
	if n, err := strconv.Atoi(infoField(out, "CurrConns")); err == nil {
		return n
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

// oldWorker is a worker left from an earlier reload, as measured.
type oldWorker struct {
	pid, reloads, conns int
	rss                 uint64
}

// oldestFirst sorts old workers by the reloads they survived, most first.
func oldestFirst(olds []oldWorker) {
	slices.SortFunc(olds, func(a, b oldWorker) int { return b.reloads - a.reloads })
}

// checkWorkers measures the workers and stops the oldest old workers while
// they hold more than the budget.
func (m *Manager) checkWorkers(ctx context.Context) {
	p, err := showProc(ctx, m.sockPath)
	if err != nil {
		// The master CLI does not answer while the master re-executes for
		// a reload, which under a stream of reloads is most of the time:
		// measure from /proc instead (the newest child is the current
		// worker), report only, and stop nothing on that guess. Reloads
		// make room before they start (makeRoom), so the budget holds
		// meanwhile.
		m.workersFromProc()
		return
	}
	m.noticeOutsideReload(p)
	var cur uint64
	var olds []oldWorker
	for _, w := range p.Workers {
		if w.Reloads == 0 {
			cur += m.workerMemory(ctx, w.PID)
			continue
		}
		olds = append(olds, oldWorker{pid: w.PID, reloads: w.Reloads, rss: m.workerMemory(ctx, w.PID), conns: workerConns(ctx, m.sockPath, w.PID)})
	}
	oldestFirst(olds)
	// Workers stopped earlier may take a while to exit (freeing a large
	// table under load): they still hold memory, but are not stopped or
	// counted again; one that ignores SIGTERM for stopGrace is killed.
	live, pending := m.notStopping(olds, true)
	var total uint64
	for _, o := range olds {
		total += o.rss
	}
	var stopped []oldWorker
	if budget := m.cfg.OldWorkersMaxBytes; budget > 0 && total-pending > budget {
		stopped = m.stopOldest(live, total-pending-budget, "old workers exceeded their memory budget")
	}
	// Reported: the old workers alive after this round, including those
	// stopped earlier that have not exited yet.
	count := len(olds) - len(stopped)
	conns := 0
	for _, o := range live {
		conns += max(o.conns, 0)
	}
	for _, s := range stopped { // a part of live
		conns -= max(s.conns, 0)
		total -= s.rss
	}
	m.update(func(s *Status) {
		s.Workers.WorkerRSS = cur
		s.Workers.OldWorkers = count
		s.Workers.OldWorkerConns = conns
		s.Workers.OldWorkersRSS = total
	})
	m.countStopped(stopped)
	if m.metrics != nil {
		m.metrics.oldWorkers.Set(float64(count))
		m.metrics.oldWorkerConns.Set(float64(conns))
		m.metrics.oldWorkersRSS.Set(float64(total))
		m.metrics.workerRSS.Set(float64(cur))
	}
}

// notStopping splits olds into those the budget has not stopped (in the
// same order) and the memory of those it has, which are on their way out.
// With prune, stopped workers that have exited are forgotten and those
// past stopGrace are killed.
func (m *Manager) notStopping(olds []oldWorker, prune bool) (live []oldWorker, pending uint64) {
	m.budgetMu.Lock()
	defer m.budgetMu.Unlock()
	seen := map[int]bool{}
	for _, o := range olds {
		seen[o.pid] = true
		at, ok := m.stopping[o.pid]
		if !ok {
			live = append(live, o)
			continue
		}
		pending += o.rss
		if prune && time.Since(at) > stopGrace {
			_ = syscall.Kill(o.pid, syscall.SIGKILL)
		}
	}
	if prune {
		for pid := range m.stopping {
			if !seen[pid] {
				delete(m.stopping, pid)
			}
		}
	}
	return live, pending
}

// stopOldest stops old workers from the front of olds (oldest first) until
// their memory together reaches excess, skipping any the budget stopped
// already, and returns those it stopped. Stopping is SIGTERM: HAProxy's
// hard stop, which closes the worker's connections now.
func (m *Manager) stopOldest(olds []oldWorker, excess uint64, why string) []oldWorker {
	m.budgetMu.Lock()
	defer m.budgetMu.Unlock()
	var stopped []oldWorker
	var freed uint64
	for _, o := range olds {
		if freed >= excess {
			break
		}
		if _, ok := m.stopping[o.pid]; ok {
			continue
		}
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
		freed += o.rss
		stopped = append(stopped, o)
		m.log.Warn("old haproxy worker stopped: "+why+", its connections are closed",
			"pid", o.pid, "reloads_survived", o.reloads, "connections_closed", max(o.conns, 0),
			"resident_mb", o.rss>>20, "budget_mb", m.cfg.OldWorkersMaxBytes>>20)
	}
	return stopped
}

// countStopped adds workers the budget stopped, and their connections, to
// the status and the metrics.
func (m *Manager) countStopped(stopped []oldWorker) {
	if len(stopped) == 0 {
		return
	}
	var closed uint64
	for _, o := range stopped {
		closed += uint64(max(o.conns, 0))
	}
	m.update(func(s *Status) {
		s.Workers.OldWorkersStopped += uint64(len(stopped))
		s.Workers.OldWorkerConnsClosed += closed
	})
	if m.metrics != nil {
		m.metrics.oldWorkersStopped.Add(float64(len(stopped)))
		m.metrics.oldWorkerConnsClosed.Add(float64(closed))
	}
}

// exitWait bounds how long a reload waits for the old workers makeRoom
// stopped to exit, and roomQueryTime how long it spends asking workers
// for their connections (each answer also bounded by workerQueryTimeout):
// workers slow to answer must not hold the reload for long.
const (
	exitWait      = time.Second
	roomQueryTime = 2 * time.Second
)

// makeRoom runs before a reload, which turns the current worker into an
// old one when it holds connections: if that would take the old workers
// past the budget, the oldest are stopped first and given up to exitWait
// to exit, so their memory is free before the new worker starts. Checking
// only after reloads would let the old workers sit above the budget until
// the next check that finds the master CLI answering, which under a stream
// of reloads can be seconds. The current worker itself is never stopped
// here: it serves until the new one is up, and the periodic check handles
// a single worker larger than the budget.
func (m *Manager) makeRoom(ctx context.Context, p procInfo) {
	budget := m.cfg.OldWorkersMaxBytes
	if budget == 0 {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, roomQueryTime)
	defer cancel()
	var olds []oldWorker
	var total uint64
	cur := map[int]uint64{} // the current worker(s), by PID
	for _, w := range p.Workers {
		if w.Reloads == 0 {
			cur[w.PID] = m.workerMemory(qctx, w.PID)
			total += cur[w.PID]
			continue
		}
		olds = append(olds, oldWorker{pid: w.PID, reloads: w.Reloads, rss: m.workerMemory(qctx, w.PID)})
	}
	oldestFirst(olds)
	live, _ := m.notStopping(olds, false)
	for _, o := range live {
		total += o.rss
	}
	if total <= budget {
		return // the common case: no worker is asked anything
	}
	for pid, rss := range cur {
		if workerConns(qctx, m.sockPath, pid) == 0 { // it exits on reload; -1, unknown, counts
			total -= rss
		}
	}
	if total <= budget {
		return
	}
	for i := range live {
		live[i].conns = workerConns(qctx, m.sockPath, live[i].pid)
	}
	stopped := m.stopOldest(live, total-budget, "the reload would take old workers past their memory budget")
	m.countStopped(stopped)
	deadline := time.Now().Add(exitWait)
	for _, o := range stopped {
		for processAlive(o.pid) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
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
