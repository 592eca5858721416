package haproxy

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// holdBackend greets each connection and keeps it open until the peer
// closes it.
func holdBackend(t *testing.T) int {
	t.Helper()
	return greetBackend(t, "hold", true)
}

// serveHolding makes m serve a route (index 1) on a free port to a backend
// that holds connections open, and returns the port, the backend and the
// table.
func serveHolding(t *testing.T, m *Manager) (port, hold int, fes []Frontend) {
	t.Helper()
	hold = holdBackend(t)
	port = testenv.FreePort(t)
	fes = []Frontend{route(port, "devices", hold)}
	m.Submit(1, fes)
	waitApplied(t, m, 1)
	return port, hold, fes
}

// TestManagerOldWorkers: a reload with long-lived connections open leaves
// an old worker, reported with its connections and memory; over the memory
// budget the old worker is stopped, its connections closed and counted,
// and the current worker keeps serving.
func TestManagerOldWorkers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		budget uint64
	}{
		{"no budget", 0},
		{"over budget", 1}, // any old worker is over one byte
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, t.TempDir())
			cfg.OldWorkersMaxBytes = tc.budget
			reg := prometheus.NewRegistry()
			cfg.Registerer = reg
			m := startManager(t, cfg)
			port, hold, fes := serveHolding(t, m)
			conns := []net.Conn{longLived(t, port), longLived(t, port)}

			other := testenv.FreePort(t)
			m.Submit(2, append(fes, route(other, "more", hold)))
			waitApplied(t, m, 2)
			if tc.budget == 0 {
				testenv.Eventually(t, 10*time.Second, "the old worker to be reported", func() bool {
					w := m.Status().Workers
					return w.OldWorkers == 1 && w.OldWorkerConns == 2 && w.OldWorkersRSS > 0 && w.WorkerRSS > 0
				})
				for _, c := range conns {
					_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
					if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
						t.Fatalf("long-lived connection closed without a budget: %v", err)
					}
				}
				if v := testenv.MetricValue(t, reg, "drawbridge_haproxy_old_worker_connections"); v != 2 {
					t.Errorf("old worker connections metric = %v", v)
				}
				return
			}
			testenv.Eventually(t, 10*time.Second, "the old worker to be stopped", func() bool {
				w := m.Status().Workers
				return w.OldWorkersStopped == 1 && w.OldWorkerConnsClosed == 2 && w.OldWorkers == 0
			})
			for _, c := range conns {
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
					t.Fatalf("connection of a stopped worker still open: %v", err)
				}
			}
			if v := testenv.MetricValue(t, reg, "drawbridge_haproxy_old_worker_connections_closed_total"); v != 2 {
				t.Errorf("closed connections metric = %v", v)
			}
			longLived(t, other) // the current worker serves
		})
	}
}

// TestManagerBudgetMakesRoomBeforeReload: a reload that would take the old
// workers past the budget stops the oldest first and waits for it to exit,
// so the old workers never hold more than the budget, not even until the
// next periodic check (here there is none).
func TestManagerBudgetMakesRoomBeforeReload(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.HealthInterval = time.Hour // only reloads enforce the budget here
	m := startManager(t, cfg)
	port, hold, fes := serveHolding(t, m)
	first := workerPIDs(t, dir)
	if len(first) != 1 {
		t.Fatalf("workers after the first apply: %v", first)
	}
	firstConns := []net.Conn{longLived(t, port), longLived(t, port)}
	// Room for one old worker, not two. Set before the next Submit, which
	// hands it to the apply loop; with no periodic check nothing else
	// reads it.
	m.cfg.OldWorkersMaxBytes = procRSS(first[0]) * 3 / 2

	fes = append(fes, route(testenv.FreePort(t), "more", hold))
	m.Submit(2, fes)
	waitApplied(t, m, 2)
	if !processAlive(first[0]) {
		t.Fatal("a reload stopped the only old worker, which fits the budget")
	}
	var second int
	for _, pid := range workerPIDs(t, dir) {
		if pid != first[0] {
			second = pid
		}
	}
	secondConns := []net.Conn{longLived(t, port), longLived(t, port)}

	fes = append(fes, route(testenv.FreePort(t), "again", hold))
	m.Submit(3, fes)
	waitApplied(t, m, 3)
	if processAlive(first[0]) {
		t.Fatalf("the oldest worker %d outlived a reload that took the old workers past the budget (workers %v)", first[0], workerPIDs(t, dir))
	}
	if !processAlive(second) {
		t.Fatalf("the worker %d the reload made old was stopped too: two old workers did not fit, one does", second)
	}
	if w := m.Status().Workers; w.OldWorkersStopped != 1 || w.OldWorkerConnsClosed != 2 {
		t.Errorf("stopped %d workers closing %d connections, want 1 and 2", w.OldWorkersStopped, w.OldWorkerConnsClosed)
	}
	for _, c := range firstConns {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection of the stopped worker still open: %v", err)
		}
	}
	for _, c := range secondConns {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("connection of the old worker within the budget closed: %v", err)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
