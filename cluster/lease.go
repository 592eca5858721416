package cluster

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// LeaseConfig tunes the leader's lease reaper.
type LeaseConfig struct {
	// Interval between expiry checks on the leader (default 5s).
	Interval time.Duration
	// Grace is how long a new leader waits before it expires anything, so an
	// election never wipes backends whose owners had no chance to renew with
	// it. The reaper also waits for the longest lease TTL it holds, so the
	// effective grace is at least one TTL.
	Grace time.Duration
	// MaxFraction is the largest share of all backends one expiry may remove
	// (default 0.5). Larger sweeps are refused, logged and counted unless
	// Force is set: a mass expiry is more often a clock jump or a broken
	// registrar fleet than real deaths.
	MaxFraction float64
	// MinBatch expiries of up to this many backends are always allowed,
	// whatever their share (default 3), so a small table still cleans up.
	MinBatch int
	// Force lifts the MaxFraction guard.
	Force bool
}

func (c *LeaseConfig) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	if c.MaxFraction <= 0 || c.MaxFraction > 1 {
		c.MaxFraction = 0.5
	}
	if c.MinBatch <= 0 {
		c.MinBatch = 3
	}
}

// LeaseReaper proposes ExpireLeases from the leader, stamped with the leader's
// clock. Followers never expire anything and Apply never reads a clock.
type LeaseReaper struct {
	cfg   LeaseConfig
	node  *Node
	now   func() time.Time
	log   *slog.Logger
	swept prometheus.Counter
	held  prometheus.Counter
	reg   prometheus.Registerer
}

// NewLeaseReaper returns a reaper for node. now defaults to time.Now.
func NewLeaseReaper(cfg LeaseConfig, node *Node, now func() time.Time, logger *slog.Logger, reg prometheus.Registerer) *LeaseReaper {
	cfg.setDefaults()
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &LeaseReaper{
		cfg: cfg, node: node, now: now, reg: reg,
		log: logger.With("component", "leases"),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_leases_expired_total",
			Help: "Backends removed because their lease ended.",
		}),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_leases_expiry_refused_total",
			Help: "Expiry sweeps refused because they would remove more than the allowed share of backends.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.swept, r.held)
	}
	return r
}

// Run expires leases while this node leads, until ctx ends.
func (r *LeaseReaper) Run(ctx context.Context) {
	defer func() {
		if r.reg != nil {
			r.reg.Unregister(r.swept)
			r.reg.Unregister(r.held)
		}
	}()
	leader := r.node.WatchLeadership()
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	var since time.Time // zero while not leader
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-leader:
			if isLeader && since.IsZero() {
				since = r.now()
			} else if !isLeader {
				since = time.Time{}
			}
		case <-tick.C:
			if !since.IsZero() {
				r.sweep(ctx, since)
			}
		}
	}
}

// sweep runs one expiry check; it returns how many backends were removed.
func (r *LeaseReaper) sweep(ctx context.Context, leaderSince time.Time) int {
	now := r.now()
	st := r.node.FSM().State()
	total, expired := 0, 0
	var longest time.Duration
	for _, rt := range st.Routes() {
		for _, b := range rt.Backends {
			total++
			if b.ExpiresAt.IsZero() {
				continue
			}
			if b.TTL > longest {
				longest = b.TTL
			}
			if !b.ExpiresAt.After(now) {
				expired++
			}
		}
	}
	grace := max(r.cfg.Grace, longest)
	if now.Before(leaderSince.Add(grace)) || expired == 0 {
		return 0
	}
	if !r.cfg.Force && expired > r.cfg.MinBatch && float64(expired) > r.cfg.MaxFraction*float64(total) {
		r.held.Inc()
		r.log.Warn("refusing to expire a large share of backends at once; check clocks and registrars, or set leases.force",
			"expired", expired, "total", total, "max_fraction", r.cfg.MaxFraction)
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, r.node.ApplyTimeout())
	defer cancel()
	res, err := r.node.Apply(ctx, &fsm.ExpireLeases{Now: now})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		r.log.Warn("lease expiry failed", "err", err)
		return 0
	}
	if res.Expired > 0 {
		r.swept.Add(float64(res.Expired))
		r.log.Info("expired leases", "backends", res.Expired)
	}
	return res.Expired
}
