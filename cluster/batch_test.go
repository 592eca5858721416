package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// burst applies n upserts at once on the leader l (ports from base; every
// tenth asks for port base-1, which a route of another name holds, so the
// table refuses it) and checks each answer is its own. It returns how many
// log entries the burst took.
func burst(t *testing.T, l *testMember, base, n int) uint64 {
	t.Helper()
	if res, err := l.node.Apply(context.Background(), &fsm.UpsertRoute{Route: fsm.NewRoute(base-1, fmt.Sprintf("taken%d", base))}); err != nil || res.Err != nil {
		t.Fatalf("route on port %d: %v %v", base-1, err, res.Err)
	}
	before := l.node.raft.LastIndex()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			port, name := base+i, fmt.Sprintf("r%d", base+i)
			if i%10 == 9 {
				port = base - 1
			}
			r := fsm.NewRoute(port, name)
			r.Backends = []fsm.Backend{{Address: "10.0.0.1", Port: 1000 + i}}
			res, err := l.node.Apply(context.Background(), &fsm.UpsertRoute{Route: r})
			switch {
			case err != nil:
				t.Errorf("write %d: %v", i, err)
			case i%10 == 9:
				if !errors.Is(res.Err, fsm.ErrPortTaken) {
					t.Errorf("write %d (port %d taken): %+v", i, port, res)
				}
			case res.Err != nil || res.Route == nil || res.Route.Port != port || res.Route.Name != name || res.Route.Backends[0].Port != 1000+i:
				t.Errorf("write %d answered %+v, want its own route on port %d", i, res, port)
			}
		}(i)
	}
	wg.Wait()
	return l.node.raft.LastIndex() - before
}

// sameTables waits until every member holds the leader's table.
func sameTables(t *testing.T, ms []*testMember) {
	t.Helper()
	l := leaderOf(ms...)
	testenv.Eventually(t, 10*time.Second, "every member holds the leader's table", func() bool {
		want := l.fsm.State()
		for _, m := range ms {
			st := m.fsm.State()
			if st.Index != want.Index || st.Hash() != want.Hash() {
				return false
			}
		}
		return true
	})
}

func TestBatchedWritesEachGetTheirOwnAnswer(t *testing.T) {
	ms := startThree(t, memberOpts{})
	l := leaderOf(ms...)
	testenv.Eventually(t, 5*time.Second, "the leader batches", l.node.batching)
	if testenv.MetricValue(t, l.reg, "drawbridge_raft_batching") != 1 {
		t.Fatal("drawbridge_raft_batching is not 1 on the batching leader")
	}
	const n = 300
	entries := burst(t, l, 20000, n)
	if entries >= n {
		t.Fatalf("%d writes took %d log entries: no batch", n, entries)
	}
	// The batcher counts what it wrote: the burst's entries, and the
	// route burst writes first, alone.
	if got := testenv.MetricValue(t, l.reg, "drawbridge_raft_entry_commands"); got != float64(entries+1) {
		t.Fatalf("drawbridge_raft_entry_commands counts %v entries, the log grew by %d", got, entries+1)
	}
	t.Logf("%d writes in %d log entries", n, entries)
	sameTables(t, ms)
	if got := l.fsm.State().Len(); got != n-n/10+1 {
		t.Fatalf("%d routes, want %d", got, n-n/10+1)
	}
}

func TestOldMemberKeepsBatchesOff(t *testing.T) {
	o := memberOpts{expect: 3}
	a := startMember(t, "a", o, nil)
	b := startMember(t, "b", o, []string{a.gossip})
	o.oldBuild = true
	c := startMember(t, "c", o, []string{b.gossip})
	ms := []*testMember{a, b, c}
	testenv.Eventually(t, 15*time.Second, "a leader and three voters", func() bool {
		l := leaderOf(ms...)
		return l != nil && len(l.cluster.Voters()) == 3
	})
	l := leaderOf(ms...)
	if entries := burst(t, l, 20000, 100); entries != 100 {
		t.Fatalf("100 writes took %d log entries with an old build voting, want one each", entries)
	}
	if testenv.MetricValue(t, l.reg, "drawbridge_raft_batching") != 0 {
		t.Fatal("drawbridge_raft_batching is not 0 with an old build voting")
	}
	// The old member is upgraded: batches start.
	c.batches.Store(true)
	testenv.Eventually(t, 5*time.Second, "the leader batches once every member reads batches", l.node.batching)
	if entries := burst(t, l, 21000, 100); entries >= 100 {
		t.Fatalf("100 writes took %d log entries after the upgrade: no batch", entries)
	}
	// A member that no longer reads them (a downgrade) stops them again.
	c.batches.Store(false)
	testenv.Eventually(t, 5*time.Second, "the leader stops batching", func() bool { return !l.node.batching() })
	if entries := burst(t, l, 22000, 100); entries != 100 {
		t.Fatalf("100 writes took %d log entries after the downgrade, want one each", entries)
	}
	sameTables(t, ms)
}

func TestOldMemberJoiningStopsBatches(t *testing.T) {
	l, other := startPair(t)
	testenv.Eventually(t, 5*time.Second, "the leader batches", l.node.batching)
	if entries := burst(t, l, 20000, 100); entries >= 100 {
		t.Fatalf("100 writes took %d log entries: no batch", entries)
	}
	// Keep writing while the old member joins.
	stop := make(chan struct{})
	var writes sync.WaitGroup
	writes.Add(1)
	var once sync.Once
	stopWrites := func() { once.Do(func() { close(stop) }); writes.Wait() }
	t.Cleanup(stopWrites) // before the members stop, even on failure
	go func() {
		defer writes.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			burst(t, l, 30000+(i%100)*25, 20)
		}
	}()
	c := startMember(t, "c", memberOpts{oldBuild: true}, []string{other.gossip})
	testenv.Eventually(t, 15*time.Second, "the old member votes", func() bool {
		_, ok := l.cluster.Voters()["c"]
		return ok
	})
	if l.node.batching() {
		t.Fatal("the leader batches with an old member voting")
	}
	stopWrites()
	for i := 0; i < 3; i++ {
		if entries := burst(t, l, 25000+i*200, 100); entries != 100 {
			t.Fatalf("100 writes took %d log entries with the old member voting, want one each", entries)
		}
	}
	// The leader turned batches off before it added the member; at most
	// the one batch already on its way to raft may follow the
	// configuration change.
	var log raft.Log
	first, _ := l.node.store.FirstIndex()
	last, _ := l.node.store.LastIndex()
	var added uint64
	var before, after int
	for i := first; i <= last; i++ {
		if err := l.node.store.GetLog(i, &log); err != nil {
			t.Fatal(err)
		}
		switch {
		case log.Type == raft.LogConfiguration && added == 0:
			for _, s := range raft.DecodeConfiguration(log.Data).Servers {
				if s.ID == "c" {
					added = i
				}
			}
		case log.Type == raft.LogCommand && log.Data[0] == byte(fsm.CmdBatch):
			if added == 0 {
				before++
			} else {
				after++
			}
		}
	}
	t.Logf("batches: %d before the old member was added at index %d, %d after, of %d entries", before, added, after, last-first+1)
	if before == 0 || added == 0 {
		t.Fatal("no batch before the old member joined, or no configuration adding it")
	}
	if after > 1 {
		t.Fatalf("%d batches after the configuration adding the old member", after)
	}
	sameTables(t, []*testMember{l, other, c})
}

func TestBatchingFollowsTheTerm(t *testing.T) {
	n, _ := startNode(t, fastConfig(t, t.TempDir()))
	term := n.raft.CurrentTerm()
	n.allowBatches(term, true)
	if !n.batching() {
		t.Fatal("not batching in the term it was allowed in")
	}
	n.allowBatches(term-1, true)
	if n.batching() {
		t.Fatal("batching on an earlier term's check")
	}
	n.allowBatches(term, false)
	if n.batching() {
		t.Fatal("batching after it was turned off")
	}
}

func TestBatcherAnswersExpiredProposalsUnapplied(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	data, err := fsm.Encode(register(8080, "web", "10.0.0.1", 30080))
	if err != nil {
		t.Fatal(err)
	}
	before := n.raft.LastIndex()
	p := newProposal(data, -time.Millisecond)
	n.commitBatch([]*proposal{p})
	res, err := p.wait()
	if !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("expired proposal answered %+v %v, want ErrCommitTimeout", res, err)
	}
	if n.raft.LastIndex() != before || f.State().Len() != 0 {
		t.Fatalf("log moved from %d to %d, %d routes: the expired proposal was written", before, n.raft.LastIndex(), f.State().Len())
	}
}

func TestBatcherAnswersShutdown(t *testing.T) {
	n, _ := startNode(t, fastConfig(t, t.TempDir()))
	n.allowBatches(n.raft.CurrentTerm(), true)
	wait := applyMany(n, 100)
	n.Shutdown()
	for _, err := range wait() { // none hangs
		if err != nil && !errors.Is(err, ErrShutdown) {
			t.Errorf("write during shutdown: %v, want nil or ErrShutdown", err)
		}
	}
}
