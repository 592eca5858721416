package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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
	// it. Each backend also gets at least its own TTL after the election:
	// one full lease to find the new leader. That grace is per backend, so a
	// long lease never holds back the expiry of short ones.
	Grace time.Duration
	// MaxFraction is the largest share of all backends one expiry may remove
	// (default 0.5). Larger sweeps are held back, logged with what they hold
	// and counted, until an operator releases them (Release) or Force is
	// set: a mass expiry is more often a clock jump or a broken registrar
	// fleet than real deaths.
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

// HeldLease is one backend whose expiry the mass-expiry guard holds back.
type HeldLease struct {
	Port      int
	Route     string
	Backend   string // "10.0.0.5:30808"
	ExpiredAt time.Time
}

// HeldLeases is what the mass-expiry guard holds back, if anything.
type HeldLeases struct {
	// Since is when the guard first held this sweep back (zero: nothing held).
	Since time.Time
	// Expired of Total backends would go; MaxFraction is the share allowed.
	Expired     int
	Total       int
	MaxFraction float64
	// Backends are the held backends, in port then address order.
	Backends []HeldLease
}

// LeaseReaper proposes ExpireLeases from the leader, stamped with the leader's
// clock. Followers never expire anything and Apply never reads a clock.
type LeaseReaper struct {
	cfg      LeaseConfig
	node     *Node
	now      func() time.Time
	log      *slog.Logger
	swept    prometheus.Counter
	held     prometheus.Counter
	heldNow  prometheus.Gauge
	reg      prometheus.Registerer
	mu       sync.Mutex
	holding  HeldLeases
	released bool // the operator let the held sweep through, once
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
		heldNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_leases_held_back",
			Help: "Backends whose lease ended but whose expiry the mass-expiry guard holds back (release with POST /v1/leases/release).",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.swept, r.held, r.heldNow)
	}
	return r
}

// Held reports what the mass-expiry guard holds back on this node (only a
// leader's reaper ever holds anything).
func (r *LeaseReaper) Held() HeldLeases {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.holding
	h.Backends = append([]HeldLease(nil), h.Backends...)
	return h
}

// ErrNothingHeld is Release's answer when the guard holds nothing back.
var ErrNothingHeld = errors.New("the mass-expiry guard holds nothing back")

// Release lets the sweep the guard holds back go through once, at the next
// check, and returns what it releases. Backends that expire later are
// guarded again.
func (r *LeaseReaper) Release() (HeldLeases, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holding.Since.IsZero() {
		return HeldLeases{}, ErrNothingHeld
	}
	r.released = true
	r.log.Warn("operator released the mass-expiry guard", "expired", r.holding.Expired, "total", r.holding.Total)
	h := r.holding
	h.Backends = append([]HeldLease(nil), h.Backends...)
	return h, nil
}

// Run expires leases while this node leads, until ctx ends.
func (r *LeaseReaper) Run(ctx context.Context) {
	defer func() {
		if r.reg != nil {
			r.reg.Unregister(r.swept)
			r.reg.Unregister(r.held)
			r.reg.Unregister(r.heldNow)
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
				r.setHolding(HeldLeases{})
			}
		case <-tick.C:
			if !since.IsZero() {
				r.sweep(ctx, since)
			}
		}
	}
}

func (r *LeaseReaper) setHolding(h HeldLeases) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.Since.IsZero() {
		r.released = false
	} else if !r.holding.Since.IsZero() {
		h.Since = r.holding.Since
	}
	r.holding = h
	r.heldNow.Set(float64(len(h.Backends)))
}

// sweep runs one expiry check; it returns how many backends were removed.
// A backend may go once its lease ended and this node has led for at least
// max(Grace, its TTL).
func (r *LeaseReaper) sweep(ctx context.Context, leaderSince time.Time) int {
	now := r.now()
	st := r.node.FSM().State()
	total := 0
	var due []fsm.LeaseRef
	var held []HeldLease
	for _, rt := range st.Routes() {
		for _, b := range rt.Backends {
			total++
			if b.ExpiresAt.IsZero() || b.ExpiresAt.After(now) {
				continue
			}
			if now.Before(leaderSince.Add(max(r.cfg.Grace, b.TTL))) {
				continue // this backend's own grace after the election
			}
			due = append(due, fsm.LeaseRef{Port: rt.Port, Address: b.Address, BackendPort: b.Port})
			held = append(held, HeldLease{Port: rt.Port, Route: rt.Name, Backend: b.Key(), ExpiredAt: b.ExpiresAt})
		}
	}
	if len(due) == 0 {
		r.setHolding(HeldLeases{})
		return 0
	}
	r.mu.Lock()
	released := r.released
	r.mu.Unlock()
	if !r.cfg.Force && !released && len(due) > r.cfg.MinBatch && float64(len(due)) > r.cfg.MaxFraction*float64(total) {
		r.held.Inc()
		r.setHolding(HeldLeases{Since: now, Expired: len(due), Total: total, MaxFraction: r.cfg.MaxFraction, Backends: held})
		names := make([]string, 0, min(len(held), 10))
		for _, h := range held[:min(len(held), 10)] {
			names = append(names, fmt.Sprintf("%d/%s", h.Port, h.Backend))
		}
		r.log.Warn("holding back a mass expiry: check clocks and registrars, then release it with POST /v1/leases/release (or set leases.force)",
			"expired", len(due), "total", total, "max_fraction", r.cfg.MaxFraction, "first", strings.Join(names, ","))
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, r.node.ApplyTimeout())
	defer cancel()
	res, err := r.node.Apply(ctx, &fsm.ExpireLeases{Now: now, Only: due})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		r.log.Warn("lease expiry failed", "err", err)
		return 0
	}
	r.setHolding(HeldLeases{})
	if res.Expired > 0 {
		r.swept.Add(float64(res.Expired))
		r.log.Info("expired leases", "backends", res.Expired)
	}
	return res.Expired
}
