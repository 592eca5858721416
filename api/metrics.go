package api

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the API's Prometheus collectors, registered on Deps.Registerer.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	commits      *prometheus.CounterVec
	forwarded    *prometheus.CounterVec
	writes       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drawbridge_http_requests_total",
			Help: "HTTP requests answered by the API, by handler and status code.",
		}, []string{"handler", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "drawbridge_http_request_duration_seconds",
			Help:    "Time to answer an API request, by handler (writes include the commit).",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"handler"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drawbridge_auth_failures_total",
			Help: "Requests refused for a missing or invalid token.",
		}, []string{"reason"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drawbridge_commits_total",
			Help: "Writes proposed by the API, by outcome.",
		}, []string{"result"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drawbridge_http_forwarded_total",
			Help: "Requests this node did not serve itself because it is not the leader, by result: ok (the leader answered), error (it could not be reached), no_leader, loop (a forwarded request reached a node that does not lead).",
		}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drawbridge_api_writes_total",
			Help: "Writes this node answered, by token name (\"-\" when no valid token) and result: ok, invalid, unauthenticated, forbidden, not_found, conflict, too_large, rate_limited, unavailable, not_applied, error, or forwarded (the leader decided).",
		}, []string{"token", "result"}),
	}
	// Known label values start at 0, so rates and alerts work before the
	// first failure.
	for _, r := range []string{authMissing, authInvalid, authForbidden, authLimited} {
		m.authFailures.WithLabelValues(r)
	}
	for _, r := range []string{commitOK, commitConflict, commitInvalid, commitNotFound, commitForbidden, commitUnavailable, commitCapacity} {
		m.commits.WithLabelValues(r)
	}
	for _, r := range []string{forwardOK, forwardFailed, forwardNoLeader, forwardLoop} {
		m.forwarded.WithLabelValues(r)
	}
	routes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "drawbridge_routes",
		Help: "Routes in this node's applied route table.",
	}, func() float64 { return float64(s.currentState().Len()) })
	backends := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "drawbridge_backends",
		Help: "Backends over all routes in this node's applied route table.",
	}, func() float64 { return float64(s.currentState().BackendCount()) })

	unknown := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "drawbridge_unknown_commands",
		Help: "Log entries this node skipped because a newer drawbridge wrote them; non-zero means upgrade this node.",
	}, func() float64 { return float64(s.statusSrc.Status().UnknownCommands) })

	for _, c := range []prometheus.Collector{m.requests, m.duration, m.authFailures, m.commits, m.forwarded, m.writes, routes, backends, unknown} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register api metrics: %w", err)
		}
	}
	return m, nil
}
