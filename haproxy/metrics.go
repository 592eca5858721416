package haproxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Manager's Prometheus collectors; a nil *metrics records
// nothing.
type metrics struct {
	reloads            prometheus.Counter
	runtimeUpdates     prometheus.Counter
	runtimeDuration    prometheus.Histogram
	reloadFailures     prometheus.Counter
	reloadDuration     prometheus.Histogram
	validationDuration prometheus.Histogram
	renderDuration     prometheus.Histogram
	validationFailures prometheus.Counter
	running            prometheus.Gauge
	workerRSS          prometheus.Gauge
	oldWorkers         prometheus.Gauge
	oldWorkerConns     prometheus.Gauge
	oldWorkersRSS      prometheus.Gauge
	oldWorkersStopped  prometheus.Counter
	// oldWorkerConnsClosed counts connections closed by stopping old
	// workers over the memory budget.
	oldWorkerConnsClosed prometheus.Counter
	appliedIndex         prometheus.Gauge
	// heldBack counts routes of the desired table that are not served.
	heldBack prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_reloads_total", Help: "Confirmed HAProxy reloads.",
		}),
		runtimeUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_runtime_updates_total", Help: "Server-only changes applied through the runtime API without a reload.",
		}),
		runtimeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drawbridge_haproxy_runtime_update_duration_seconds", Help: "Time to plan and apply one change through the runtime API.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_reload_failures_total", Help: "HAProxy reloads that failed or were not confirmed.",
		}),
		reloadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drawbridge_haproxy_reload_duration_seconds", Help: "Time from reload command to confirmed new worker.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		validationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drawbridge_haproxy_validation_duration_seconds", Help: "Duration of haproxy -c.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		renderDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "drawbridge_haproxy_render_duration_seconds", Help: "Duration of rendering the whole configuration before a check and reload.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		validationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_validation_failures_total", Help: "Rendered configurations haproxy -c rejected.",
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_running", Help: "1 when the HAProxy master is running.",
		}),
		workerRSS: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_worker_resident_bytes", Help: "Resident memory of the current HAProxy worker.",
		}),
		oldWorkers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_old_workers", Help: "HAProxy workers left from earlier reloads, still serving their connections.",
		}),
		oldWorkerConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_old_worker_connections", Help: "Connections held by old HAProxy workers.",
		}),
		oldWorkersRSS: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_old_workers_resident_bytes", Help: "Resident memory of the old HAProxy workers together.",
		}),
		oldWorkersStopped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_old_workers_stopped_total", Help: "Old HAProxy workers stopped because old workers exceeded their memory budget.",
		}),
		oldWorkerConnsClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_haproxy_old_worker_connections_closed_total", Help: "Connections closed by stopping old HAProxy workers over the memory budget.",
		}),
		appliedIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_applied_index", Help: "Route table index the live configuration runs in full (no route held back).",
		}),
		heldBack: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_haproxy_held_back_routes", Help: "Routes of the latest table that are not served: port cannot be bound, or their reload failed.",
		}),
	}
	for _, c := range []prometheus.Collector{m.reloads, m.runtimeUpdates, m.runtimeDuration, m.reloadFailures, m.reloadDuration,
		m.validationDuration, m.renderDuration, m.validationFailures, m.running, m.appliedIndex, m.heldBack,
		m.workerRSS, m.oldWorkers, m.oldWorkerConns, m.oldWorkersRSS, m.oldWorkersStopped, m.oldWorkerConnsClosed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register haproxy metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setRunning(up bool) {
	if m == nil {
		return
	}
	if up {
		m.running.Set(1)
	} else {
		m.running.Set(0)
	}
}
