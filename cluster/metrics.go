package cluster

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// nodeMetrics are the raft-side metrics. They are registered on the
// Registerer given to New (never the global registry) and unregistered at
// Shutdown so tests can start many nodes in one process.
type nodeMetrics struct {
	reg           prometheus.Registerer
	applyDuration prometheus.Histogram
	applyFailures prometheus.Counter
	// entryCommands is how many commands each entry the batcher wrote
	// carried (1: an ordinary entry).
	entryCommands prometheus.Histogram
	collectors    []prometheus.Collector
}

func newNodeMetrics(reg prometheus.Registerer, n *Node) *nodeMetrics {
	m := &nodeMetrics{
		reg: reg,
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drawbridge_raft_apply_duration_seconds",
			Help:    "Time from proposing a command to its commit and apply on the leader.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		applyFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_raft_apply_failures_total",
			Help: "Commands that could not be committed (not leader, timeout, shutdown).",
		}),
		entryCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drawbridge_raft_entry_commands",
			Help:    "Commands per log entry written while batching (group commit) is on; 1 is an ordinary entry.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
	}
	m.collectors = []prometheus.Collector{
		m.applyDuration,
		m.applyFailures,
		m.entryCommands,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drawbridge_raft_batching",
			Help: "1 when this node, as leader, may pack waiting writes into one batch entry (every voter announces it reads them).",
		}, func() float64 {
			if n.batching() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drawbridge_raft_leader",
			Help: "1 when this node is the raft leader.",
		}, func() float64 {
			if n.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drawbridge_raft_applied_index",
			Help: "Index of the last raft entry applied to the route table on this node.",
		}, func() float64 { return float64(n.raft.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drawbridge_raft_commit_index",
			Help: "Index of the last raft entry known to be committed.",
		}, func() float64 { return float64(n.raft.CommitIndex()) }),
	}
	if reg != nil {
		for _, c := range m.collectors {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *nodeMetrics) unregister() {
	if m == nil || m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
