package floatingip

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// fakeView is a settable cluster view: the owner logic is what is tested.
type fakeView struct {
	mu      sync.Mutex
	peers   []Peer
	changed chan struct{}
	// alive and total override the census (0: this node plus peers, as
	// their Alive says).
	alive, total int
	health       int
}

func (v *fakeView) LocalHealth() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.health
}

func (v *fakeView) setHealth(h int) {
	v.mu.Lock()
	v.health = h
	v.mu.Unlock()
}

func (v *fakeView) Census() (int, int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.total > 0 {
		return v.alive, v.total
	}
	alive := 1
	for _, p := range v.peers {
		if p.Alive {
			alive++
		}
	}
	return alive, 1 + len(v.peers)
}

func (v *fakeView) setCensus(alive, total int) {
	v.mu.Lock()
	v.alive, v.total = alive, total
	v.mu.Unlock()
}

func newFakeView(peers ...Peer) *fakeView {
	return &fakeView{peers: peers, changed: make(chan struct{})}
}

func (v *fakeView) Peers() []Peer {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Peer(nil), v.peers...)
}

func (v *fakeView) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

func (v *fakeView) set(peers ...Peer) {
	v.mu.Lock()
	v.peers = peers
	close(v.changed)
	v.changed = make(chan struct{})
	v.mu.Unlock()
}

// fakeProvider records calls; the real providers have their own tests.
type fakeProvider struct {
	mu       sync.Mutex
	held     bool
	claims   int
	releases int
	fail     error
}

func (p *fakeProvider) Name() string { return "fake" }
func (p *fakeProvider) Claim(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.claims++
	if p.fail != nil {
		return p.fail
	}
	p.held = true
	return nil
}
func (p *fakeProvider) Release(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releases++
	p.held = false
	return nil
}
func (p *fakeProvider) Held(context.Context) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held, nil
}
func (p *fakeProvider) counts() (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.claims, p.releases
}

type testOwner struct {
	*Owner
	prov    *fakeProvider
	view    *fakeView
	healthy *boolFlag
}

type boolFlag struct {
	mu sync.Mutex
	v  bool
}

func (b *boolFlag) get() bool  { b.mu.Lock(); defer b.mu.Unlock(); return b.v }
func (b *boolFlag) set(v bool) { b.mu.Lock(); b.v = v; b.mu.Unlock() }

func newTestOwner(name string, prio int, peers ...Peer) *testOwner {
	prov := &fakeProvider{}
	view := newFakeView(peers...)
	h := &boolFlag{v: true}
	o := NewOwner(OwnerConfig{NodeName: name, Address: "192.0.2.10", Priority: prio, Interval: 5 * time.Millisecond,
		VerifyInterval: 10 * time.Millisecond, HoldDown: time.Hour},
		prov, view, h.get, nil, nil, prometheus.NewRegistry())
	return &testOwner{Owner: o, prov: prov, view: view, healthy: h}
}

func (o *testOwner) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// settle runs enough decision rounds for the owner to act on its view.
func settle(o *testOwner) {
	for i := 0; i < 5; i++ {
		o.step(context.Background())
	}
}

func TestOwnerClaimsWhenNobodyHolds(t *testing.T) {
	o := newTestOwner("edge-a", 0)
	settle(o)
	if c := o.Claim(); !c.Holding || c.Epoch != 1 || c.Last == nil || c.Last.To != "edge-a" {
		t.Fatalf("claim: %+v", c)
	}
}

func TestOwnerBestCandidateClaimsOthersWait(t *testing.T) {
	for _, tc := range []struct {
		name     string
		self     string
		prio     int
		peer     Peer
		wantHold bool
	}{
		{"higher priority peer wins", "edge-a", 0, Peer{Name: "edge-b", Alive: true, Eligible: true, Priority: 10}, false},
		{"higher own priority wins", "edge-b", 10, Peer{Name: "edge-a", Alive: true, Eligible: true}, true},
		{"equal priority: lower name wins", "edge-a", 0, Peer{Name: "edge-b", Alive: true, Eligible: true}, true},
		{"equal priority: peer with lower name wins", "edge-b", 0, Peer{Name: "edge-a", Alive: true, Eligible: true}, false},
		{"ineligible better peer does not count", "edge-b", 0, Peer{Name: "edge-a", Alive: true, Eligible: false}, true},
		{"dead better peer does not count", "edge-b", 0, Peer{Name: "edge-a", Alive: false, Eligible: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newTestOwner(tc.self, tc.prio, tc.peer)
			settle(o)
			if got := o.Claim().Holding; got != tc.wantHold {
				t.Errorf("holding = %v, want %v", got, tc.wantHold)
			}
		})
	}
}

func TestOwnerHolderKeepsAddress(t *testing.T) {
	// A better node comes back while another holds: no move back.
	o := newTestOwner("edge-a", 100, Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 4})
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed from a healthy holder")
	}
	if c, _ := o.prov.counts(); c != 0 {
		t.Fatalf("%d provider claims against a healthy holder", c)
	}
}

func TestOwnerTakesOverFromFailedHolder(t *testing.T) {
	o := newTestOwner("edge-b", 0, Peer{Name: "edge-a", Alive: true, Eligible: true, Holding: true, Epoch: 3})
	o.run(t)
	o.view.set(Peer{Name: "edge-a", Alive: false, Eligible: true, Holding: true, Epoch: 3})
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "takeover", func() bool { return o.Claim().Holding })
	c := o.Claim()
	if c.Epoch != 4 || c.Last.From != "edge-a" || c.Last.Reason != "holder edge-a failed" {
		t.Errorf("claim after takeover: %+v %+v", c, c.Last)
	}
}

func TestOwnerUnhealthyHolderHandsOver(t *testing.T) {
	o := newTestOwner("edge-a", 0, Peer{Name: "edge-b", Alive: true, Eligible: true})
	o.run(t)
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "claim", func() bool { return o.Claim().Holding })
	o.healthy.set(false)
	o.Poke()
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "release", func() bool { return !o.Claim().Holding })
	if c := o.Claim(); c.Eligible {
		t.Error("an unhealthy node publishes itself eligible")
	}
	if _, r := o.prov.counts(); r != 1 {
		t.Errorf("releases = %d, want 1", r)
	}
}

func TestOwnerNewerClaimWinsAndNoBounce(t *testing.T) {
	// After a partition heals both hold; the newer claim keeps it.
	o := newTestOwner("edge-a", 100)
	settle(o) // holds with epoch 1
	o.view.set(Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 2})
	settle(o)
	if o.Claim().Holding {
		t.Fatal("older claim kept the address")
	}
	// The link flaps: edge-b looks briefly unreachable, then back. edge-a
	// lost a conflict a moment ago and another eligible node is alive, so
	// it does not grab the address back.
	o.view.set(Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: false, Epoch: 2}, Peer{Name: "edge-c", Alive: true, Eligible: true})
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed again inside the hold-down while another eligible node is alive")
	}
	claims, _ := o.prov.counts()
	if claims != 1 {
		t.Errorf("provider claims = %d, want 1", claims)
	}
}

func TestOwnerStopReleasesAndPublishes(t *testing.T) {
	var published int
	var mu sync.Mutex
	prov := &fakeProvider{}
	o := NewOwner(OwnerConfig{NodeName: "edge-a", Address: "192.0.2.10"}, prov, newFakeView(), func() bool { return true },
		func() { mu.Lock(); published++; mu.Unlock() }, nil, prometheus.NewRegistry())
	o.step(context.Background())
	if !o.Claim().Holding {
		t.Fatal("did not claim")
	}
	o.Stop(context.Background())
	if c := o.Claim(); c.Holding || c.Eligible {
		t.Errorf("after Stop: %+v", c)
	}
	if _, r := prov.counts(); r != 1 {
		t.Errorf("releases = %d", r)
	}
	o.step(context.Background())
	if o.Claim().Holding {
		t.Error("claimed again after Stop")
	}
	mu.Lock()
	defer mu.Unlock()
	if published < 2 {
		t.Errorf("published %d times, want a publish per change", published)
	}
}

func TestOwnerVerifyNoticesLostAddress(t *testing.T) {
	o := newTestOwner("edge-a", 0, Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 9})
	o.prov.held = true // held from before a crash: the oldest claim
	o.run(t)
	// It starts as holder (epoch 0), sees edge-b's newer claim, releases.
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "release to the newer holder", func() bool {
		_, r := o.prov.counts()
		return r == 1 && !o.Claim().Holding
	})
	// A cloud provider moves the address away: verify notices.
	o2 := newTestOwner("edge-z", 0)
	o2.run(t)
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "claim", func() bool { return o2.Claim().Holding })
	o2.prov.mu.Lock()
	o2.prov.held = false
	o2.prov.mu.Unlock()
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "verify drops the claim", func() bool { return !o2.Claim().Holding })
}

func TestOwnerRetriesFailedClaim(t *testing.T) {
	o := newTestOwner("edge-a", 0)
	o.prov.fail = errors.New("api down")
	o.cfg.RetryInterval = time.Millisecond
	o.step(context.Background())
	o.step(context.Background())
	if o.Claim().Holding {
		t.Fatal("holding after failed claims")
	}
	o.prov.mu.Lock()
	o.prov.fail = nil
	o.prov.mu.Unlock()
	o.step(context.Background())
	if !o.Claim().Holding {
		t.Fatal("no claim after the provider recovered")
	}
	if c, _ := o.prov.counts(); c != 3 {
		t.Errorf("claims = %d, want 3", c)
	}
}

func TestOwnerCutOffNodeReleasesAndWaits(t *testing.T) {
	o := newTestOwner("edge-a", 100)
	settle(o) // alone in a cluster of one: claims
	if !o.Claim().Holding {
		t.Fatal("did not claim")
	}
	// Now it sees 1 of 3 members alive and gossip rates its own network
	// unhealthy: it is the one cut off.
	o.view.set(Peer{Name: "edge-b", Alive: false, Eligible: true})
	o.view.setCensus(1, 3)
	o.view.setHealth(2)
	settle(o)
	if o.Claim().Holding {
		t.Fatal("a node that sees a minority kept the address")
	}
	// It does not claim back while the minority view lasts...
	o.cfg.MinorityClaimAfter = time.Hour
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed while cut off")
	}
	// ...unless it lasts long enough (a lone survivor of a double failure).
	o.cfg.MinorityClaimAfter = time.Millisecond
	time.Sleep(5 * time.Millisecond)
	settle(o)
	if !o.Claim().Holding {
		t.Fatal("a lone survivor never claimed")
	}
}

func TestOwnerWinnerReannounces(t *testing.T) {
	o := newTestOwner("edge-a", 0)
	settle(o) // epoch 1
	o.mu.Lock()
	o.claim.Epoch, o.maxEpoch = 5, 5
	o.mu.Unlock()
	o.view.set(Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 3})
	before, _ := o.prov.counts()
	settle(o)
	after, _ := o.prov.counts()
	if !o.Claim().Holding {
		t.Fatal("the newer claim gave the address up")
	}
	if after-before != 1 {
		t.Errorf("re-announcements: %d, want exactly 1 within a second", after-before)
	}
}

// announcingProvider is a fakeProvider that also counts announcements.
type announcingProvider struct {
	fakeProvider
	announced int
}

func (p *announcingProvider) Announce(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held {
		p.announced++
	}
	return nil
}

func (p *announcingProvider) announcements() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.announced
}

func TestOwnerHolderAnnouncesWhileHolding(t *testing.T) {
	prov := &announcingProvider{}
	view := newFakeView(Peer{Name: "edge-b", Alive: true, Eligible: true})
	h := &boolFlag{v: true}
	o := NewOwner(OwnerConfig{NodeName: "edge-a", Address: "192.0.2.10", Interval: 5 * time.Millisecond,
		AnnounceInterval: 10 * time.Millisecond, HoldDown: time.Hour},
		prov, view, h.get, nil, nil, prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "repeated announcements while holding", func() bool {
		return prov.announcements() >= 3
	})
	// Unhealthy: it releases and announces no more.
	h.set(false)
	o.Poke()
	testenv.EventuallyEvery(t, 5*time.Second, 2*time.Millisecond, "release", func() bool { return !o.Claim().Holding })
	n := prov.announcements()
	// Observation window: ten announcement intervals.
	time.Sleep(100 * time.Millisecond)
	if got := prov.announcements(); got != n {
		t.Errorf("%d announcements after the release", got-n)
	}
}

// TestOwnerSettlesAfterMinority: a node whose view just recovered from a
// minority still sees the holder as dead (gossip has not yet heard the
// holder refute its death); it must not claim during the hold-down, and
// claims after it if the holder is still gone.
func TestOwnerSettlesAfterMinority(t *testing.T) {
	o := newTestOwner("edge-a", 100, Peer{Name: "edge-b", Alive: false, Eligible: true, Holding: true, Epoch: 2})
	o.view.setCensus(1, 3)
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed while cut off")
	}
	// Back to 2 of 3 (the witness refuted first); edge-b still dead here.
	o.view.setCensus(2, 3)
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed from a holder its own stale view calls dead, right after rejoining")
	}
	o.mu.Lock()
	o.quietUntil = time.Now().Add(-time.Millisecond)
	o.mu.Unlock()
	settle(o)
	if c := o.Claim(); !c.Holding || c.Last.Reason != "holder edge-b failed" {
		t.Fatalf("no takeover after the hold-down from a holder still dead: %+v", c)
	}
}

// TestOwnerUnhealthyNodeDoesNotRushTakeover: gossip rates this node's own
// network unhealthy (its link flapped) and marks the holder dead on this
// node's word alone: it waits up to HoldDown for the holder to come back
// before claiming. A healthy node takes over at once; so does a pair
// without a witness, where nobody can confirm.
func TestOwnerUnhealthyNodeDoesNotRushTakeover(t *testing.T) {
	holderDead := Peer{Name: "edge-b", Alive: false, Eligible: true, Holding: true, Epoch: 2}
	o := newTestOwner("edge-a", 0, holderDead)
	o.view.setCensus(2, 3)
	o.view.setHealth(3)
	settle(o)
	if o.Claim().Holding {
		t.Fatal("an unhealthy node claimed from a holder only it calls dead")
	}
	// The holder comes back: nothing happened.
	o.view.set(Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 2})
	settle(o)
	if c, _ := o.prov.counts(); c != 0 || o.Claim().Holding {
		t.Fatalf("claims = %d after the holder came back", c)
	}
	// It dies for real and stays dead past the hold-down: claim.
	o.view.set(holderDead)
	settle(o)
	o.mu.Lock()
	o.lostAt = time.Now().Add(-2 * o.cfg.HoldDown)
	o.mu.Unlock()
	settle(o)
	if !o.Claim().Holding {
		t.Fatal("no takeover after the hold-down")
	}

	healthy := newTestOwner("edge-a", 0, holderDead)
	healthy.view.setCensus(2, 3)
	settle(healthy)
	if !healthy.Claim().Holding {
		t.Fatal("a healthy node waited to take over from a failed holder")
	}
	pair := newTestOwner("edge-a", 0, holderDead)
	pair.view.setHealth(3)
	settle(pair)
	if !pair.Claim().Holding {
		t.Fatal("a pair without a witness waited to take over")
	}
}

// TestOwnerHealthyHolderRidesOutMinorityRumour: a flapping member spreads
// "dead" rumours, and a healthy holder sees a minority for a moment; it keeps
// the address unless the view lasts HoldDown.
func TestOwnerHealthyHolderRidesOutMinorityRumour(t *testing.T) {
	o := newTestOwner("edge-a", 100)
	settle(o)
	if !o.Claim().Holding {
		t.Fatal("did not claim")
	}
	o.view.set(Peer{Name: "edge-b", Alive: false, Eligible: true})
	o.view.setCensus(1, 3)
	settle(o)
	if !o.Claim().Holding {
		t.Fatal("a healthy holder let go at the first sight of a minority")
	}
	o.view.setCensus(2, 3)
	settle(o)
	if !o.Claim().Holding {
		t.Fatal("lost the address after the rumour passed")
	}
	// A minority that lasts is believed, health or not.
	o.view.setCensus(1, 3)
	settle(o)
	o.mu.Lock()
	o.cfg.HoldDown = 10 * time.Millisecond
	o.minoritySince = time.Now().Add(-2 * o.cfg.HoldDown)
	o.mu.Unlock()
	settle(o)
	if o.Claim().Holding {
		t.Fatal("kept the address through a lasting minority view")
	}
}

// TestOwnerSuspectWaitCountsFromLastSighting: a node that could not claim
// for a while (quiet) but saw the holder alive meanwhile times a new loss
// from then, not from an older one.
func TestOwnerSuspectWaitCountsFromLastSighting(t *testing.T) {
	holderDead := Peer{Name: "edge-b", Alive: false, Eligible: true, Holding: true, Epoch: 2}
	o := newTestOwner("edge-a", 0, holderDead)
	o.cfg.HoldDown = 50 * time.Millisecond
	o.view.setCensus(2, 3)
	o.view.setHealth(3)
	settle(o) // a loss starts; the unhealthy node waits
	o.mu.Lock()
	o.quietUntil = time.Now().Add(time.Hour) // and then may not claim at all
	o.mu.Unlock()
	time.Sleep(2 * o.cfg.HoldDown)
	o.view.set(Peer{Name: "edge-b", Alive: true, Eligible: true, Holding: true, Epoch: 2})
	settle(o) // sees the holder alive while quiet
	o.view.set(holderDead)
	o.mu.Lock()
	o.quietUntil = time.Time{}
	o.mu.Unlock()
	settle(o)
	if o.Claim().Holding {
		t.Fatal("claimed at once on a loss timed from before the holder was last seen alive")
	}
}
