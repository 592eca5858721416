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
			hold := holdBackend(t)
			port := testenv.FreePort(t)
			fes := []Frontend{route(port, "devices", hold)}
			m.Submit(1, fes)
			waitApplied(t, m, 1)
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

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
