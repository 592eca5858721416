package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// fakeClock is a settable clock for the reaper.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func leased(port int, ip string, expires time.Time, ttl time.Duration) *fsm.RegisterBackend {
	c := register(port, fmt.Sprintf("svc-%d", port), ip, 30000)
	c.Backend.ExpiresAt = expires
	c.Backend.TTL = ttl
	return c
}

func TestLeaseReaperWaitsGraceThenExpires(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	ttl := time.Minute
	for i := 0; i < 4; i++ {
		if res, err := n.Apply(ctx, leased(9100+i, "10.0.0.1", clock.Now().Add(ttl), ttl)); err != nil || res.Err != nil {
			t.Fatalf("register: %v %v", err, res.Err)
		}
	}
	// One backend without a lease never expires.
	if res, err := n.Apply(ctx, register(9200, "static", "10.0.0.2", 1)); err != nil || res.Err != nil {
		t.Fatalf("register: %v %v", err, res.Err)
	}
	r := NewLeaseReaper(LeaseConfig{Grace: 30 * time.Second, MaxFraction: 1}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	since := clock.Now()

	clock.Add(2 * ttl)
	// Leader for less than the grace (and less than one TTL): nothing goes.
	if got := r.sweep(ctx, clock.Now().Add(-30*time.Second)); got != 0 {
		t.Fatalf("expired %d inside the grace period", got)
	}
	// Long enough: the four leases go, implicit routes with them.
	if got := r.sweep(ctx, since); got != 4 {
		t.Fatalf("expired %d, want 4", got)
	}
	if f.State().Len() != 1 {
		t.Errorf("routes left: %d, want 1 (the static one)", f.State().Len())
	}
}

func TestLeaseReaperGuardsMassExpiry(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		if res, err := n.Apply(ctx, leased(9300+i, "10.0.0.1", clock.Now().Add(time.Second), time.Second)); err != nil || res.Err != nil {
			t.Fatalf("register: %v %v", err, res.Err)
		}
	}
	since := clock.Now()
	clock.Add(time.Hour)
	r := NewLeaseReaper(LeaseConfig{MaxFraction: 0.5}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	if got := r.sweep(ctx, since); got != 0 {
		t.Fatalf("guard let %d of 10 backends expire at once", got)
	}
	if f.State().BackendCount() != 10 {
		t.Fatalf("backends: %d", f.State().BackendCount())
	}
	forced := NewLeaseReaper(LeaseConfig{MaxFraction: 0.5, Force: true}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	if got := forced.sweep(ctx, since); got != 10 {
		t.Fatalf("forced sweep expired %d, want 10", got)
	}
}

func TestLeaseReaperRunsOnlyOnLeader(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if res, err := n.Apply(context.Background(), leased(9400, "10.0.0.1", clock.Now().Add(time.Second), time.Second)); err != nil || res.Err != nil {
		t.Fatalf("register: %v %v", err, res.Err)
	}
	r := NewLeaseReaper(LeaseConfig{Interval: 10 * time.Millisecond}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for f.State().Len() != 0 {
		// The clock only moves forward: the lease ends, then the one-TTL
		// grace after the reaper saw leadership passes.
		clock.Add(time.Second)
		if time.Now().After(deadline) {
			t.Fatal("the leader's reaper never expired the lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One long lease must not hold back the expiry of short ones after an
// election: each backend waits max(grace, its own TTL).
func TestLeaseReaperGraceIsPerBackend(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	since := clock.Now()
	// Both leases already ended when this node became leader.
	short := leased(9500, "10.0.0.1", since.Add(-time.Second), time.Minute)
	long := leased(9501, "10.0.0.2", since.Add(-time.Second), 24*time.Hour)
	for _, c := range []*fsm.RegisterBackend{short, long} {
		if res, err := n.Apply(ctx, c); err != nil || res.Err != nil {
			t.Fatalf("register: %v %v", err, res.Err)
		}
	}
	r := NewLeaseReaper(LeaseConfig{Grace: 30 * time.Second, MaxFraction: 1}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	clock.Add(59 * time.Second)
	if got := r.sweep(ctx, since); got != 0 {
		t.Fatalf("expired %d inside the short lease's own grace", got)
	}
	clock.Add(time.Second)
	if got := r.sweep(ctx, since); got != 1 {
		t.Fatalf("expired %d after one short TTL, want 1 (the 24h lease must not hold it back)", got)
	}
	if _, ok := f.State().Route(9501); !ok {
		t.Fatal("the 24h lease went before its own grace")
	}
	clock.Add(24 * time.Hour)
	if got := r.sweep(ctx, since); got != 1 {
		t.Fatalf("expired %d after the long TTL, want 1", got)
	}
}

// The guard says what it holds back, and an operator can release it.
func TestLeaseReaperGuardReportsAndReleases(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		if res, err := n.Apply(ctx, leased(9600+i, "10.0.0.1", clock.Now().Add(time.Second), time.Second)); err != nil || res.Err != nil {
			t.Fatalf("register: %v %v", err, res.Err)
		}
	}
	r := NewLeaseReaper(LeaseConfig{MaxFraction: 0.5}, n, clock.Now, testenv.Logger(t), prometheus.NewRegistry())
	if _, err := r.Release(); err != ErrNothingHeld {
		t.Fatalf("release with nothing held: %v", err)
	}
	since := clock.Now()
	clock.Add(time.Hour)
	if got := r.sweep(ctx, since); got != 0 {
		t.Fatalf("guard let %d expire", got)
	}
	h := r.Held()
	if h.Expired != 10 || h.Total != 10 || len(h.Backends) != 10 || h.Backends[0].Backend != "10.0.0.1:30000" || h.Backends[0].Port != 9600 {
		t.Fatalf("held: %+v", h)
	}
	if got := r.sweep(ctx, since); got != 0 {
		t.Fatal("the guard let go without a release")
	}
	if _, err := r.Release(); err != nil {
		t.Fatal(err)
	}
	if got := r.sweep(ctx, since); got != 10 {
		t.Fatalf("released sweep expired %d, want 10", got)
	}
	if h := r.Held(); !h.Since.IsZero() || f.State().BackendCount() != 0 {
		t.Fatalf("after release: held %+v, backends %d", h, f.State().BackendCount())
	}
}
