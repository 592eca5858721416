package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// testMember is one in-process node: raft + gossip + reconciler.
type testMember struct {
	name    string
	node    *Node
	fsm     *fsm.FSM
	members *Membership
	cluster *Cluster
	cancel  context.CancelFunc
	gossip  string
	raft    string
	stopped bool
	// api is the API URL the member gossips; a test may change it.
	api atomic.Value
	// reg holds the node's metrics.
	reg *prometheus.Registry
	// batches is what the member announces about batch log entries
	// (Meta.Batches): true unless started as an old build; a test may
	// change it.
	batches atomic.Bool
}

func (m *testMember) apiURL() string { return m.api.Load().(string) }

type memberOpts struct {
	role   string
	key    []byte
	label  string
	expect int
	dir    string
	// ca, when set, runs raft with mutual TLS and a certificate from ca
	// naming certName (default: the member's own name).
	ca       *tlsTestCA
	certName string
	// raftAddr, when set, is the raft address gossiped instead of the
	// member's own (a member lying about where it is).
	raftAddr string
	// oldBuild announces no support for batch log entries.
	oldBuild bool
}

func startMember(t *testing.T, name string, o memberOpts, join []string) *testMember {
	t.Helper()
	if o.role == "" {
		o.role = RoleEdge
	}
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	cfg := fastConfig(t, o.dir)
	cfg.NodeID = name
	cfg.Bootstrap = false
	if o.ca != nil {
		cn := o.certName
		if cn == "" {
			cn = name
		}
		cfg.TLS = o.ca.raftTLS(t, cn)
		cfg = tlsTimings(cfg)
	}
	gossipRaft := cfg.BindAddr
	if o.raftAddr != "" {
		gossipRaft = o.raftAddr
	}
	f := fsm.New()
	reg := prometheus.NewRegistry()
	n, err := New(cfg, f, testenv.Logger(t).With("node", name), reg)
	if err != nil {
		t.Fatal(err)
	}
	m := &testMember{name: name, node: n, fsm: f, gossip: testenv.FreeAddr(t), raft: cfg.BindAddr, reg: reg}
	m.api.Store("http://" + testenv.FreeAddr(t))
	m.batches.Store(!o.oldBuild)
	meta := func() Meta {
		return Meta{Role: o.role, RaftAddr: gossipRaft, APIURL: m.apiURL(), Bootstrapped: n.HasState(),
			Applied: f.State().Index, Healthy: true, Batches: m.batches.Load()}
	}
	m.members, err = NewMembership(GossipConfig{
		NodeName: name, BindAddr: m.gossip, Key: o.key, Label: o.label,
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond,
		GossipInterval: 20 * time.Millisecond, SuspicionMult: 2,
	}, meta, testenv.Logger(t).With("node", name))
	if err != nil {
		n.Shutdown()
		t.Fatal(err)
	}
	m.cluster = NewCluster(n, m.members, testenv.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	rec := NewReconciler(n, m.members, o.expect, testenv.Logger(t).With("node", name))
	rec.interval = 50 * time.Millisecond
	go rec.Run(ctx)
	go m.members.RunRefresh(ctx, 20*time.Millisecond)
	if len(join) > 0 {
		jctx, jcancel := context.WithTimeout(ctx, 10*time.Second)
		defer jcancel()
		if err := m.members.Join(jctx, join); err != nil {
			t.Fatalf("%s join: %v", name, err)
		}
	}
	t.Cleanup(m.crash)
	return m
}

// crash stops the member without leaving: peers see it fail.
func (m *testMember) crash() {
	if m.stopped {
		return
	}
	m.stopped = true
	m.cancel()
	m.members.Shutdown()
	m.node.Shutdown()
}

// leave stops the member gracefully.
func (m *testMember) leave() {
	if m.stopped {
		return
	}
	m.stopped = true
	m.cluster.Leave(2 * time.Second)
	m.cancel()
	m.node.Shutdown()
}

func leaderOf(ms ...*testMember) *testMember {
	for _, m := range ms {
		if !m.stopped && m.node.IsLeader() {
			return m
		}
	}
	return nil
}

func startThree(t *testing.T, o memberOpts) []*testMember {
	o.expect = 3
	a := startMember(t, "a", o, nil)
	b := startMember(t, "b", o, []string{a.gossip})
	c := startMember(t, "c", o, []string{b.gossip})
	ms := []*testMember{a, b, c}
	testenv.Eventually(t, 15*time.Second, "a leader and three voters", func() bool {
		l := leaderOf(ms...)
		return l != nil && len(l.cluster.Voters()) == 3
	})
	return ms
}

func TestBootstrapExpectFormsOneClusterAndReplicates(t *testing.T) {
	ms := startThree(t, memberOpts{key: make([]byte, 32), label: "test"})
	l := leaderOf(ms...)
	res, err := l.node.Apply(context.Background(), register(8080, "web", "10.0.0.1", 30080))
	if err != nil || res.Err != nil {
		t.Fatalf("apply: %v %v", err, res.Err)
	}
	testenv.Eventually(t, 5*time.Second, "every node applied the route", func() bool {
		for _, m := range ms {
			if _, ok := m.fsm.State().Route(8080); !ok {
				return false
			}
		}
		return true
	})
	// Followers point at the leader's API; the leader answers itself.
	for _, m := range ms {
		url, self, err := m.cluster.LeaderAPI()
		if err != nil {
			t.Fatalf("%s: LeaderAPI: %v", m.name, err)
		}
		if self != (m == l) || (!self && url != l.apiURL()) {
			t.Errorf("%s: LeaderAPI = %q self=%v, leader is %s", m.name, url, self, l.name)
		}
	}
	// Addresses, read per write, is Members' addresses without the rest.
	for _, m := range ms {
		var want []Address
		for _, mem := range m.cluster.Members().Members() {
			want = append(want, Address{Name: mem.Name, Addr: mem.Addr, RaftAddr: mem.Meta.RaftAddr, APIURL: mem.Meta.APIURL})
		}
		if got := m.cluster.Members().Addresses(); !slices.Equal(got, want) || len(got) != 3 {
			t.Errorf("%s: Addresses = %+v; Members say %+v", m.name, got, want)
		}
	}
	// wait=applied sees every alive edge node reach the index.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if lag, err := l.cluster.WaitApplied(ctx, res.Index); err != nil {
		t.Fatalf("wait applied: %v, lagging %v", err, lag)
	}
}

func TestLeaderCrashElectsNewLeaderAndCatchesUp(t *testing.T) {
	ms := startThree(t, memberOpts{})
	old := leaderOf(ms...)
	for i := 0; i < 5; i++ {
		if res, err := old.node.Apply(context.Background(), register(9000+i, fmt.Sprintf("s%d", i), "10.0.0.1", 1)); err != nil || res.Err != nil {
			t.Fatalf("apply: %v %v", err, res.Err)
		}
	}
	old.crash()
	var rest []*testMember
	for _, m := range ms {
		if m != old {
			rest = append(rest, m)
		}
	}
	testenv.Eventually(t, 10*time.Second, "a new leader", func() bool { return leaderOf(rest...) != nil })
	nl := leaderOf(rest...)
	if res, err := nl.node.Apply(context.Background(), register(9100, "after", "10.0.0.2", 1)); err != nil || res.Err != nil {
		t.Fatalf("apply on new leader: %v %v", err, res.Err)
	}
	// The crashed voter is reported and kept, not removed.
	if _, ok := nl.cluster.Voters()[old.name]; !ok {
		t.Errorf("crashed voter %s was removed from the configuration", old.name)
	}
	testenv.Eventually(t, 5*time.Second, "followers converge", func() bool {
		return rest[0].fsm.State().Hash() == rest[1].fsm.State().Hash() && rest[0].fsm.State().Len() == 6
	})
}

func TestGracefulLeaveRemovesVoter(t *testing.T) {
	testenv.SkipShort(t, "a three-node cluster through a graceful leave")
	ms := startThree(t, memberOpts{})
	l := leaderOf(ms...)
	var follower *testMember
	for _, m := range ms {
		if m != l {
			follower = m
			break
		}
	}
	follower.leave()
	// Asked of whoever leads now: leadership may move while the follower
	// leaves.
	testenv.Eventually(t, 10*time.Second, "the leaver removed from the voters", func() bool {
		l = leaderOf(ms...)
		if l == nil {
			return false
		}
		_, ok := l.cluster.Voters()[follower.name]
		return !ok
	})
	// The leader itself leaving hands leadership over first.
	l.leave()
	var rest []*testMember
	for _, m := range ms {
		if !m.stopped {
			rest = append(rest, m)
		}
	}
	testenv.Eventually(t, 10*time.Second, "the last member leads alone", func() bool {
		return len(rest) == 1 && rest[0].node.IsLeader()
	})
	if res, err := rest[0].node.Apply(context.Background(), register(9200, "solo", "10.0.0.3", 1)); err != nil || res.Err != nil {
		t.Fatalf("apply on the survivor: %v %v", err, res.Err)
	}
}

// A graceful leave that races another metadata refresh is still seen as a
// leave. Here the other refresh has recorded the Leaving flag but not yet
// broadcast it when the leave starts: the interleaving that, under load,
// had peers see a leaving voter fail and keep it in the configuration.
func TestLeaveRacingARefreshIsSeenAsALeave(t *testing.T) {
	a := startMember(t, "a", memberOpts{}, nil)
	b := startMember(t, "b", memberOpts{}, []string{a.gossip})
	testenv.Eventually(t, 5*time.Second, "b visible", func() bool { return len(a.members.Members()) == 2 })
	b.cancel() // no periodic refresh from here: the test plays it
	b.members.mu.Lock()
	b.members.leaving = true
	b.members.mu.Unlock()
	meta, err := b.members.encodeMeta()
	if err != nil {
		t.Fatal(err)
	}
	b.members.mu.Lock()
	b.members.lastMeta = meta // recorded, not yet broadcast
	b.members.mu.Unlock()
	if err := b.members.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	var status MemberStatus
	testenv.Eventually(t, 10*time.Second, "b gone", func() bool {
		for _, m := range a.members.Members() {
			if m.Name == "b" {
				status = m.Status
			}
		}
		return status != StatusAlive
	})
	if status != StatusLeft {
		t.Errorf("a sees b %s after its graceful leave, want %s", status, StatusLeft)
	}
}

func TestWitnessKeepsPairWritable(t *testing.T) {
	a := startMember(t, "edge-a", memberOpts{expect: 3}, nil)
	b := startMember(t, "edge-b", memberOpts{expect: 3}, []string{a.gossip})
	w := startMember(t, "witness", memberOpts{expect: 3, role: RoleWitness}, []string{a.gossip})
	ms := []*testMember{a, b, w}
	testenv.Eventually(t, 15*time.Second, "three voters", func() bool {
		l := leaderOf(ms...)
		return l != nil && len(l.cluster.Voters()) == 3
	})
	// Kill whichever edge node leads (or edge-a when the witness leads).
	victim := leaderOf(ms...)
	if victim == w {
		victim = a
	}
	victim.crash()
	var rest []*testMember
	for _, m := range ms {
		if m != victim {
			rest = append(rest, m)
		}
	}
	// The survivors may hold more than one election before one leader
	// settles: a write that loses its leader is tried again on the next.
	var lastErr error
	testenv.Eventually(t, 10*time.Second, "a write on the survivors", func() bool {
		l := leaderOf(rest...)
		if l == nil {
			return false
		}
		res, err := l.node.Apply(context.Background(), register(9300, "still", "10.0.0.4", 1))
		if err == nil && res.Err != nil {
			err = res.Err
		}
		lastErr = err
		return err == nil
	})
	if lastErr != nil {
		t.Fatalf("write after losing an edge node: %v", lastErr)
	}
	// Only edge nodes count for wait=applied; the witness never applies HAProxy.
	for _, lag := range leaderOf(rest...).cluster.Lagging(0) {
		t.Errorf("unexpected lag %v", lag)
	}
}

func TestGossipWrongKeyOrLabelCannotJoin(t *testing.T) {
	testenv.SkipShort(t, "gossip join attempts with wrong keys and labels")
	key := make([]byte, 32)
	key[0] = 1
	a := startMember(t, "a", memberOpts{key: key, label: "prod"}, nil)
	for name, o := range map[string]memberOpts{
		"wrong-key":   {key: make([]byte, 32), label: "prod"},
		"no-key":      {label: "prod"},
		"wrong-label": {key: key, label: "staging"},
	} {
		m := startMember(t, name, o, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		err := m.members.Join(ctx, []string{a.gossip})
		cancel()
		if err == nil {
			t.Errorf("%s joined a cluster it should not", name)
		}
		for _, mem := range a.members.Members() {
			if mem.Name == name {
				t.Errorf("%s appears in the cluster's members", name)
			}
		}
	}
	// The right key and label do join.
	ok := startMember(t, "right", memberOpts{key: key, label: "prod"}, []string{a.gossip})
	testenv.Eventually(t, 5*time.Second, "right member visible", func() bool { return len(ok.members.Members()) == 2 })
}

// startPair starts two edge members that form a pair and returns its
// leader and the other member.
func startPair(t *testing.T) (leader, other *testMember) {
	t.Helper()
	a := startMember(t, "a", memberOpts{expect: 2}, nil)
	b := startMember(t, "b", memberOpts{expect: 2}, []string{a.gossip})
	testenv.Eventually(t, 15*time.Second, "pair formed", func() bool {
		l := leaderOf(a, b)
		return l != nil && len(l.cluster.Voters()) == 2
	})
	leader, other = leaderOf(a, b), a
	if leader == a {
		other = b
	}
	return leader, other
}

func TestQuorumLossRefusesWritesWithExplanation(t *testing.T) {
	leader, survivor := startPair(t)
	leader.crash()
	var mu sync.Mutex
	var lastErr error
	testenv.Eventually(t, 10*time.Second, "the survivor to refuse writes with an explanation", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := survivor.node.Apply(ctx, register(9400, "x", "10.0.0.5", 1))
		mu.Lock()
		lastErr = err
		mu.Unlock()
		return err != nil && containsAll(err.Error(), "quorum", "raft recover")
	})
	t.Logf("survivor answers: %v", lastErr)
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestConsistentReadOnANewLeaderSeesEveryAcknowledgedWrite reads on each
// survivor the moment it becomes leader, after the old leader crashed right
// after acknowledging writes. A new leader learns that its predecessor's last
// entries were committed only when an entry of its own term commits, so a
// read that trusted its commit index before that could miss an acknowledged
// write.
func TestConsistentReadOnANewLeaderSeesEveryAcknowledgedWrite(t *testing.T) {
	ms := startThree(t, memberOpts{})
	old := leaderOf(ms...)
	type readResult struct {
		name    string
		err     error
		missing []int
	}
	results := make(chan readResult, len(ms))
	var (
		mu    sync.Mutex
		acked []int
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, m := range ms {
		if m == old {
			continue
		}
		obs := make(chan raft.Observation, 8)
		o := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
			lo, ok := o.Data.(raft.LeaderObservation)
			return ok && string(lo.LeaderID) == m.name
		})
		m.node.raft.RegisterObserver(o)
		t.Cleanup(func() { m.node.raft.DeregisterObserver(o) })
		go func() {
			select {
			case <-obs:
			case <-ctx.Done():
				return
			}
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			r := readResult{name: m.name, err: m.cluster.VerifyLeader(rctx)}
			st := m.fsm.State()
			mu.Lock()
			for _, port := range acked {
				if _, ok := st.Route(port); !ok {
					r.missing = append(r.missing, port)
				}
			}
			mu.Unlock()
			results <- r
		}()
	}
	for i := range 20 {
		port := 9000 + i
		if res, err := old.node.Apply(context.Background(), register(port, fmt.Sprintf("s%d", i), "10.0.0.1", 1)); err != nil || res.Err != nil {
			t.Fatalf("apply: %v %v", err, res.Err)
		}
		mu.Lock()
		acked = append(acked, port)
		mu.Unlock()
	}
	old.crash()
	select {
	case r := <-results:
		if r.err != nil {
			t.Fatalf("VerifyLeader on the new leader %s: %v", r.name, r.err)
		}
		if len(r.missing) > 0 {
			t.Errorf("a read on the new leader %s right after VerifyLeader misses acknowledged writes on ports %v", r.name, r.missing)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no survivor became leader within 15s")
	}
}

// TestConsistentReadBurstAddsOneBarrierPerTerm fires concurrent consistent
// reads at a new leader: they share one barrier, so the log grows by one
// entry per term, not one per read.
func TestConsistentReadBurstAddsOneBarrierPerTerm(t *testing.T) {
	n, _ := startNode(t, fastConfig(t, t.TempDir()))
	c := NewCluster(n, nil, nil)
	barriers := func() int {
		first, _ := n.store.FirstIndex()
		last, _ := n.store.LastIndex()
		count := 0
		for i := first; i <= last && i > 0; i++ {
			var l raft.Log
			if err := n.store.GetLog(i, &l); err == nil && l.Type == raft.LogBarrier {
				count++
			}
		}
		return count
	}
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				errs <- c.VerifyLeader(ctx)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: VerifyLeader: %v", round, err)
			}
		}
		if got := barriers(); got != 1 {
			t.Fatalf("round %d: %d barrier entries in the log after 16 concurrent reads in one term; want 1", round, got)
		}
	}
}

// TestLeaderLeaveRetriesARefusedTransfer: a pair's leader that leaves hands
// leadership over even when raft refuses the first attempts (it does while
// an election runs or another transfer is under way). A leader that left
// after one refused attempt would leave its survivor unable to elect itself:
// one voter of two cannot win an election.
func TestLeaderLeaveRetriesARefusedTransfer(t *testing.T) {
	leader, survivor := startPair(t)
	const refusals = 3
	var tries atomic.Int32
	leader.node.transferFault = func() error {
		if tries.Add(1) <= refusals {
			return raft.ErrLeadershipTransferInProgress
		}
		return nil
	}
	leader.leave()
	if n := tries.Load(); n <= refusals {
		t.Fatalf("the leave asked for %d transfers, all refused: it left without handing leadership over", n)
	}
	testenv.Eventually(t, 10*time.Second, "the survivor leads alone", func() bool {
		_, kept := survivor.cluster.Voters()[leader.name]
		return survivor.node.IsLeader() && !kept
	})
	if res, err := survivor.node.Apply(context.Background(), register(9210, "solo", "10.0.0.3", 1)); err != nil || res.Err != nil {
		t.Fatalf("apply on the survivor: %v %v", err, res.Err)
	}
}
