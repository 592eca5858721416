package floatingip

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Peer is another edge node as gossip sees it, with the floating-IP fields
// it publishes about itself.
type Peer struct {
	Name string
	// Alive is false when gossip suspects the node, declared it dead, or it
	// left. A suspected holder is treated as lost: suspicion needs a failed
	// direct probe and failed indirect probes through the other members.
	Alive bool
	// Eligible means the node says its HAProxy runs the latest config it
	// knows and it is not stopping.
	Eligible bool
	Priority int
	// Holding and Epoch are the node's claim: the epoch of a claim is one
	// more than any epoch its claimer had seen, so the newest claim wins.
	Holding bool
	Epoch   uint64
	// Last is the holder's record of how it got the address.
	Last *Failover
}

// Failover records one move of the floating IP.
type Failover struct {
	At       time.Time
	From     string
	To       string
	Duration time.Duration
	Reason   string
}

// View is the owner loop's window on the cluster.
type View interface {
	// Peers returns the other edge nodes (never this one).
	Peers() []Peer
	// Census counts the cluster's members, witnesses and this node
	// included: how many gossip sees alive, and how many it knows.
	Census() (alive, total int)
	// Changed returns a channel closed at the next membership change.
	Changed() <-chan struct{}
	// LocalHealth is gossip's view of this node's own health (memberlist's
	// Lifeguard awareness score): 0 is healthy; above 0, this node's own
	// probes failed without other members confirming, or others suspected
	// it: its own link is the likely trouble.
	LocalHealth() int
}

// Claim is this node's published floating-IP state (gossiped by the caller).
type Claim struct {
	Holding  bool
	Epoch    uint64
	Priority int
	Eligible bool
	Last     *Failover
}

// OwnerConfig tunes the owner loop.
type OwnerConfig struct {
	NodeName string
	Address  string
	Priority int
	// Interval between decisions when nothing changes (default 100ms).
	Interval time.Duration
	// VerifyInterval is how often a holder asks the provider whether it
	// still holds the address (default 1s; cloud providers: 5s).
	VerifyInterval time.Duration
	// AnnounceInterval is how often a holder whose provider implements
	// [Announcer] (vip) announces the address again (default 1s).
	AnnounceInterval time.Duration
	// HoldDown is how long a node that lost the address (to a newer claim,
	// or the provider says it moved) or whose view just recovered from a
	// minority waits before claiming again, whatever its view shows
	// (default 3s). Such a node is typically the one whose own link flaps:
	// its gossip marks the real holder dead for a while (the holder has not
	// yet refuted it), and a claim then would pull the address, and the
	// clients' ARP caches, to a node about to lose its link again. With the
	// newest-claim-wins rule it bounds moves when a link flaps; the price is
	// that when the winner of a conflict really dies within HoldDown, the
	// takeover waits for the rest of it.
	HoldDown time.Duration
	// RetryInterval after a failed claim (default 1s).
	RetryInterval time.Duration
	// StartupWait is how long a freshly started node that sees no other
	// edge node yet waits before claiming (default 2s): gossip may not
	// have joined, and a claim now would announce the address away from
	// a healthy holder it has not heard of.
	StartupWait time.Duration
	// MinorityClaimAfter: a node that sees at most half of a cluster of
	// three or more alive is probably the one cut off; it releases the
	// address and claims only after seeing so little this long (default
	// 30s, so a lone survivor of a double failure still takes over). After
	// the view recovers it waits HoldDown before claiming at all: its
	// gossip still marks as dead the members that declared it dead, and
	// the holder among them may be alive and serving.
	MinorityClaimAfter time.Duration
}

// Owner decides, on every edge node, whether this node should hold the
// floating IP, and moves it through a Provider:
//   - the current holder keeps the address while it is eligible (alive,
//     HAProxy running the latest config): no move back when a better node
//     returns;
//   - when no alive, eligible node holds it, the best eligible node by
//     priority (higher first) then name claims it at once;
//   - when two nodes hold it (a partition healed), the newer claim (higher
//     epoch) keeps it, the other releases;
//   - a holder that becomes ineligible (HAProxy died, apply failed) or
//     stops releases first, so the next node claims without waiting for
//     failure detection.
type Owner struct {
	cfg      OwnerConfig
	provider Provider
	view     View
	healthy  func() bool
	publish  func()
	log      *slog.Logger
	metrics  *ownerMetrics

	// mu guards the fields below. Claim holds it while it calls healthy,
	// so healthy must not call back into Claim (through gossip's metadata):
	// see the lock order in internal/agent/doc.go. view and publish are
	// only called without it.
	mu       sync.Mutex
	claim    Claim
	stopping bool
	maxEpoch uint64
	// quietUntil: after losing the address or rejoining from a minority,
	// this node does not claim until then (see HoldDown).
	quietUntil time.Time
	// joinBy: until then, a node that sees no other edge node does not
	// claim (set by Run; see StartupWait).
	joinBy time.Time
	// minoritySince: when this node started seeing at most half of the
	// cluster alive (zero: it sees a majority).
	minoritySince time.Time
	// announced: when this node last re-announced after winning a conflict.
	announced time.Time
	lostAt    time.Time // when this node first saw no eligible holder
	// suspectLogged: the current loss was logged as a suspect takeover.
	suspectLogged bool
	lastFrom      string // the holder before the address was lost
	why           string
	wake          chan struct{}
}

// NewOwner returns an owner loop. healthy reports this node's own
// eligibility (HAProxy running and current); publish is called after every
// change of Claim so the caller can gossip it at once.
func NewOwner(cfg OwnerConfig, p Provider, view View, healthy func() bool, publish func(), logger *slog.Logger, reg prometheus.Registerer) *Owner {
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.VerifyInterval <= 0 {
		cfg.VerifyInterval = time.Second
		if p.Name() == ProviderDigitalOcean {
			cfg.VerifyInterval = 5 * time.Second
		}
	}
	if cfg.HoldDown <= 0 {
		cfg.HoldDown = 3 * time.Second
	}
	if cfg.AnnounceInterval <= 0 {
		cfg.AnnounceInterval = time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.StartupWait <= 0 {
		cfg.StartupWait = 2 * time.Second
	}
	if cfg.MinorityClaimAfter <= 0 {
		cfg.MinorityClaimAfter = 30 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if publish == nil {
		publish = func() {}
	}
	return &Owner{
		cfg: cfg, provider: p, view: view, healthy: healthy, publish: publish,
		log:     logger.With("component", "floating-ip", "address", cfg.Address, "provider", p.Name()),
		metrics: newOwnerMetrics(reg),
		claim:   Claim{Priority: cfg.Priority},
		wake:    make(chan struct{}, 1),
	}
}

// Claim returns what this node publishes about the floating IP.
func (o *Owner) Claim() Claim {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.claim
	c.Eligible = !o.stopping && o.healthy()
	return c
}

// Provider returns the provider the owner moves the address with.
func (o *Owner) Provider() Provider { return o.provider }

// Poke asks for a decision now (e.g. after a local health change).
func (o *Owner) Poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Run decides and acts until ctx ends. It starts from what the provider
// says: an address still held from before a crash counts as the oldest
// claim, so a newer holder elsewhere wins.
func (o *Owner) Run(ctx context.Context) {
	o.mu.Lock()
	o.joinBy = time.Now().Add(o.cfg.StartupWait)
	o.mu.Unlock()
	if held, err := o.provider.Held(ctx); err == nil && held {
		o.mu.Lock()
		o.claim.Holding = true
		o.claim.Epoch = 0
		o.mu.Unlock()
		o.log.Info("holding the floating IP from before this start")
		o.publish()
	}
	tick := time.NewTicker(o.cfg.Interval)
	defer tick.Stop()
	lastVerify, lastAnnounce := time.Now(), time.Now()
	for {
		changed := o.view.Changed()
		o.step(ctx)
		if time.Since(lastVerify) >= o.cfg.VerifyInterval {
			o.verify(ctx)
			lastVerify = time.Now()
		}
		if time.Since(lastAnnounce) >= o.cfg.AnnounceInterval {
			o.refresh(ctx)
			lastAnnounce = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-o.wake:
		case <-tick.C:
		}
	}
}

// Stop releases the address if held, publishes that this node no longer
// holds it and is not eligible, so a peer claims at once. Call it before
// leaving gossip on a graceful stop.
func (o *Owner) Stop(ctx context.Context) {
	o.mu.Lock()
	o.stopping = true
	holding := o.claim.Holding
	o.mu.Unlock()
	if holding {
		o.release(ctx, "this node is stopping")
	}
	o.publish()
}

// rank orders candidates: higher priority first, then name.
func rank(aPrio int, aName string, bPrio int, bName string) int {
	if c := cmp.Compare(bPrio, aPrio); c != 0 {
		return c
	}
	return cmp.Compare(aName, bName)
}

func (o *Owner) step(ctx context.Context) {
	// Ask the view before taking o.mu: the view's caller may publish this
	// node's own Claim, which takes o.mu.
	peers := o.view.Peers()
	alive, total := o.view.Census()
	health := o.view.LocalHealth()
	o.mu.Lock()
	for _, p := range peers {
		if p.Epoch > o.maxEpoch {
			o.maxEpoch = p.Epoch
		}
	}
	stopping := o.stopping
	holding := o.claim.Holding
	epoch := o.claim.Epoch
	joining := len(peers) == 0 && time.Now().Before(o.joinBy)
	minority := total >= 3 && 2*alive <= total
	switch {
	case minority && o.minoritySince.IsZero():
		o.minoritySince = time.Now()
	case !minority && !o.minoritySince.IsZero():
		// Back in touch with most of the cluster: settle before claiming.
		// The members that declared this node dead are still dead in its
		// own view until they refute it; one of them may be the holder.
		o.minoritySince = time.Time{}
		o.quietUntil = time.Now().Add(o.cfg.HoldDown)
	}
	isolated := minority && time.Since(o.minoritySince) < o.cfg.MinorityClaimAfter
	// A holder lets go of a minority view at once when gossip also rates
	// its own network unhealthy, and otherwise only once the view has lasted
	// HoldDown: a healthy node can see a minority for a while when a
	// flapping member spreads rumours that the others are dead, whereas a
	// node really cut off fails its probes with nobody confirming, and its
	// score rises within a probe interval.
	cutOff := isolated && (health > 0 || time.Since(o.minoritySince) >= o.cfg.HoldDown)
	quiet := time.Now().Before(o.quietUntil)
	o.mu.Unlock()
	if stopping {
		return
	}
	eligible := o.healthy()
	o.metrics.holder.Set(b2f(holding))

	var holders []Peer // other alive, eligible holders
	for _, p := range peers {
		if p.Alive && p.Eligible && p.Holding {
			holders = append(holders, p)
		}
	}

	if holding {
		switch {
		case !eligible:
			o.release(ctx, "this node is not healthy (HAProxy not running the latest config)")
		case cutOff:
			// Most of the cluster is out of sight: this node is probably
			// the one cut off, and the others will claim. Letting go now
			// avoids two holders when the link comes back.
			o.release(ctx, fmt.Sprintf("this node sees only %d of %d members", alive, total))
		case len(holders) > 0:
			// Two holders: the newer claim wins; equal epochs go by rank.
			newest := slices.MaxFunc(holders, func(a, b Peer) int { return cmp.Compare(a.Epoch, b.Epoch) })
			older := newest.Epoch > epoch || (newest.Epoch == epoch && rank(newest.Priority, newest.Name, o.cfg.Priority, o.cfg.NodeName) < 0)
			if older {
				o.release(ctx, "a newer claim by "+newest.Name)
				o.mu.Lock()
				o.quietUntil = time.Now().Add(o.cfg.HoldDown)
				o.mu.Unlock()
			} else {
				o.reannounce(ctx, newest.Name)
			}
		}
		return
	}
	if len(holders) > 0 {
		// A holder is alive: any loss this node was timing is over, even
		// when it is not allowed to claim below (the suspect-takeover wait
		// counts from the last time the holder was seen).
		o.mu.Lock()
		o.lostAt, o.lastFrom, o.suspectLogged = time.Time{}, holders[0].Name, false
		o.mu.Unlock()
	}
	if !eligible || joining || isolated || quiet {
		// quiet: this node just lost the address or rejoined from a
		// minority; its view may still call the real holder dead (see
		// HoldDown).
		// joining: just started and no other edge node seen yet. Gossip
		// joins within milliseconds when peers are up; claiming before
		// that would take the address (and the client's ARP caches) from
		// a holder this node has not heard of, only to release it a
		// moment later.
		return
	}
	if len(holders) > 0 {
		return
	}
	// Nobody eligible holds the address. Note when that started and why.
	o.mu.Lock()
	if o.lostAt.IsZero() {
		o.lostAt = time.Now()
		if o.lastFrom == "" {
			o.lastFrom = lastHolder(peers)
		}
		o.why = lossReason(peers, o.lastFrom)
	}
	lostFor := time.Since(o.lostAt)
	o.mu.Unlock()
	if total >= 3 && !minority && lostFor < o.cfg.HoldDown && health > 0 {
		// Gossip says this node's own network is in trouble: the
		// holder it calls dead is probably alive, and will say so
		// within moments. A real failure seen by a healthy node
		// leaves the score at 0 (the other members confirm the
		// holder is unreachable), so this delays only suspect
		// takeovers, by at most HoldDown. A pair without a witness
		// cannot tell (nobody confirms), so it is left out, and so
		// is a lone survivor, which already waited
		// MinorityClaimAfter.
		o.logSuspectTakeover(health)
		return
	}
	best := o.cfg.NodeName
	bestPrio := o.cfg.Priority
	for _, p := range peers {
		if p.Alive && p.Eligible && rank(p.Priority, p.Name, bestPrio, best) < 0 {
			best, bestPrio = p.Name, p.Priority
		}
	}
	if best != o.cfg.NodeName {
		return
	}
	o.claimNow(ctx)
}

// reannounce repeats this node's claim after it won a conflict (at most once
// a second): the loser's announcements may have been the last the network
// heard, and an address already present is otherwise not announced again.
func (o *Owner) reannounce(ctx context.Context, loser string) {
	o.mu.Lock()
	due := time.Since(o.announced) >= time.Second
	if due {
		o.announced = time.Now()
	}
	o.mu.Unlock()
	if !due {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := o.provider.Claim(cctx); err != nil {
		o.log.Warn("re-announcing the floating IP failed", "err", err)
		return
	}
	o.log.Info("re-announced the floating IP after a conflict", "other_holder", loser)
}

// refresh announces the address again while this node holds it, when the
// provider supports it (see [Announcer]).
func (o *Owner) refresh(ctx context.Context) {
	a, ok := o.provider.(Announcer)
	if !ok {
		return
	}
	o.mu.Lock()
	holding, stopping := o.claim.Holding, o.stopping
	o.mu.Unlock()
	if !holding || stopping {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.Announce(actx); err != nil {
		o.log.Warn("announcing the floating IP again failed", "err", err)
	}
}

// lastHolder returns the peer with the newest claim, dead or alive.
func lastHolder(peers []Peer) string {
	var name string
	var epoch uint64
	for _, p := range peers {
		if p.Holding && (name == "" || p.Epoch > epoch) {
			name, epoch = p.Name, p.Epoch
		}
	}
	return name
}

// lossReason says why no eligible node holds the address.
func lossReason(peers []Peer, last string) string {
	for _, p := range peers {
		if p.Name != last {
			continue
		}
		switch {
		case !p.Alive:
			return "holder " + p.Name + " failed"
		case !p.Eligible:
			return "holder " + p.Name + " unhealthy or stopping"
		case !p.Holding:
			return "holder " + p.Name + " released it"
		}
	}
	if last == "" {
		return "no holder"
	}
	return "holder " + last + " gone"
}

// logSuspectTakeover says, once per loss, why this node does not claim yet.
func (o *Owner) logSuspectTakeover(health int) {
	o.mu.Lock()
	first := !o.suspectLogged
	o.suspectLogged = true
	why := o.why
	o.mu.Unlock()
	if first {
		o.log.Info("not claiming yet: gossip rates this node's own network unhealthy", "health_score", health, "reason", why, "wait_up_to", o.cfg.HoldDown)
	}
}

func (o *Owner) claimNow(ctx context.Context) {
	o.mu.Lock()
	from, why, lostAt := o.lastFrom, o.why, o.lostAt
	o.mu.Unlock()
	start := time.Now()
	o.metrics.claims.Inc()
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	err := o.provider.Claim(cctx)
	cancel()
	if err != nil {
		o.metrics.claimFailures.Inc()
		o.log.Warn("claim failed; retrying", "err", err, "retry_in", o.cfg.RetryInterval)
		select {
		case <-ctx.Done():
		case <-time.After(o.cfg.RetryInterval):
		}
		return
	}
	o.mu.Lock()
	stopping := o.stopping
	o.mu.Unlock()
	if stopping {
		// Stop ran while the claim was in flight: give it back.
		o.release(ctx, "this node is stopping")
		return
	}
	dur := time.Since(lostAt)
	if lostAt.IsZero() {
		dur = time.Since(start)
	}
	o.mu.Lock()
	o.maxEpoch++
	o.claim.Holding = true
	o.claim.Epoch = o.maxEpoch
	o.claim.Last = &Failover{At: time.Now(), From: from, To: o.cfg.NodeName, Duration: dur, Reason: why}
	o.lostAt, o.lastFrom, o.suspectLogged = time.Time{}, o.cfg.NodeName, false
	o.mu.Unlock()
	o.metrics.holder.Set(1)
	o.metrics.failover.Observe(dur.Seconds())
	o.log.Info("claimed the floating IP", "from", from, "reason", why, "after", dur.Round(time.Millisecond), "claim_took", time.Since(start).Round(time.Millisecond))
	o.publish()
}

func (o *Owner) release(ctx context.Context, why string) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := o.provider.Release(cctx)
	cancel()
	o.mu.Lock()
	o.claim.Holding = false
	o.mu.Unlock()
	o.metrics.holder.Set(0)
	if err != nil {
		o.log.Warn("release failed", "reason", why, "err", err)
	} else {
		o.log.Info("released the floating IP", "reason", why)
	}
	o.publish()
}

// verify asks the provider whether a holder still holds the address (a
// cloud API may have moved it on another node's claim).
func (o *Owner) verify(ctx context.Context) {
	o.mu.Lock()
	holding, stopping := o.claim.Holding, o.stopping
	o.mu.Unlock()
	if !holding || stopping {
		return
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	held, err := o.provider.Held(vctx)
	cancel()
	if err != nil || held {
		return
	}
	o.log.Warn("the provider says this node no longer holds the floating IP")
	o.mu.Lock()
	o.claim.Holding = false
	o.quietUntil = time.Now().Add(o.cfg.HoldDown)
	o.mu.Unlock()
	o.publish()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type ownerMetrics struct {
	holder        prometheus.Gauge
	claims        prometheus.Counter
	claimFailures prometheus.Counter
	failover      prometheus.Histogram
}

func newOwnerMetrics(reg prometheus.Registerer) *ownerMetrics {
	m := &ownerMetrics{
		holder: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drawbridge_floating_ip_holder", Help: "1 when this node holds the floating IP.",
		}),
		claims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_floating_ip_claims_total", Help: "Claims of the floating IP this node attempted.",
		}),
		claimFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drawbridge_floating_ip_claim_failures_total", Help: "Claims of the floating IP that failed.",
		}),
		failover: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drawbridge_floating_ip_failover_duration_seconds",
			Help:    "From this node seeing no eligible holder to its claim completing.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.holder, m.claims, m.claimFailures, m.failover)
	}
	return m
}
