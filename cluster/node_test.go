package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// fastConfig is a single-node config with shortened timings.
func fastConfig(t testing.TB, dir string) Config {
	return Config{
		NodeID:    "n1",
		DataDir:   dir,
		BindAddr:  testenv.FreeAddr(t),
		Bootstrap: true,
		// Fast, but not so fast that a loaded 2-core machine running the
		// race detector starts elections between two heartbeats: at 50 ms
		// leaders stepped down mid-test (CI saw "leadership lost while
		// committing" and a voter removal never seen).
		HeartbeatTimeout:   150 * time.Millisecond,
		ElectionTimeout:    150 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		ApplyTimeout:       5 * time.Second,
	}
}

func startNode(t testing.TB, cfg Config) (*Node, *fsm.FSM) {
	t.Helper()
	f := fsm.New()
	n, err := New(cfg, f, testenv.Logger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cfg.Bootstrap {
		for !n.IsLeader() {
			select {
			case <-ctx.Done():
				t.Fatal("node never became leader")
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return n, f
}

func register(port int, name, ip string, bport int) *fsm.RegisterBackend {
	r := fsm.NewRoute(port, name)
	return &fsm.RegisterBackend{
		Port: port, Name: name,
		Backend: fsm.Backend{Address: ip, Port: bport, Owner: name},
		Create:  &r,
	}
}

func TestApplyCommitsAndReturnsDomainErrors(t *testing.T) {
	n, f := startNode(t, fastConfig(t, t.TempDir()))
	ctx := context.Background()

	res, err := n.Apply(ctx, register(8080, "web", "10.0.0.1", 30080))
	if err != nil || res.Err != nil {
		t.Fatalf("apply: %v / %v", err, res.Err)
	}
	if res.Route == nil || res.Route.Port != 8080 || len(res.Route.Backends) != 1 {
		t.Fatalf("unexpected result route: %+v", res.Route)
	}
	if got, ok := f.State().Route(8080); !ok || got.Name != "web" {
		t.Fatalf("state does not hold the route: %+v", got)
	}

	// A domain error is a result, not a commit failure.
	res, err = n.Apply(ctx, register(8080, "other", "10.0.0.2", 30080))
	if err != nil {
		t.Fatalf("conflict returned a commit error: %v", err)
	}
	if !errors.Is(res.Err, fsm.ErrPortTaken) {
		t.Fatalf("want ErrPortTaken, got %v", res.Err)
	}
	// Invalid input never reaches the log.
	before := n.Status().LastIndex
	res, err = n.Apply(ctx, register(0, "bad", "10.0.0.1", 1))
	if err != nil || !errors.Is(res.Err, fsm.ErrInvalid) {
		t.Fatalf("want ErrInvalid result, got %v / %v", err, res.Err)
	}
	if after := n.Status().LastIndex; after != before {
		t.Errorf("invalid command was logged: index %d -> %d", before, after)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := fastConfig(t, dir)
	cfg.SnapshotThreshold = 20
	cfg.SnapshotInterval = 50 * time.Millisecond
	cfg.TrailingLogs = 5
	n, f := startNode(t, cfg)
	for i := 0; i < 60; i++ {
		if res, err := n.Apply(context.Background(), register(10000+i, fmt.Sprintf("svc-%d", i), "10.0.0.1", 30000+i)); err != nil || res.Err != nil {
			t.Fatalf("apply %d: %v %v", i, err, res.Err)
		}
	}
	// Force a snapshot too, so restart goes through snapshot + log replay.
	if err := n.Snapshot(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for i := 60; i < 70; i++ {
		if res, err := n.Apply(context.Background(), register(10000+i, fmt.Sprintf("svc-%d", i), "10.0.0.1", 30000+i)); err != nil || res.Err != nil {
			t.Fatalf("apply %d: %v %v", i, err, res.Err)
		}
	}
	wantHash := f.State().Hash()
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}

	cfg.BindAddr = testenv.FreeAddr(t)
	n2, f2 := startNode(t, cfg)
	deadline := time.Now().Add(10 * time.Second)
	for f2.State().Len() != 70 {
		if time.Now().After(deadline) {
			t.Fatalf("after restart: %d routes, want 70", f2.State().Len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := f2.State().Hash(); got != wantHash {
		t.Errorf("state hash after restart %s, want %s", got, wantHash)
	}
	// And it still accepts writes.
	if res, err := n2.Apply(context.Background(), register(20000, "after", "10.0.0.9", 1)); err != nil || res.Err != nil {
		t.Fatalf("apply after restart: %v %v", err, res.Err)
	}
}

func TestApplyWithoutLeaderIsUnavailable(t *testing.T) {
	cfg := fastConfig(t, t.TempDir())
	cfg.Bootstrap = false // never bootstrapped, never joined: no leader
	n, _ := startNode(t, cfg)
	_, err := n.Apply(context.Background(), register(8080, "web", "10.0.0.1", 1))
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("want ErrNoLeader, got %v", err)
	}
	if want := "quorum"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not explain quorum", err)
	}
}

func TestApplyAfterShutdown(t *testing.T) {
	n, _ := startNode(t, fastConfig(t, t.TempDir()))
	n.Shutdown()
	_, err := n.Apply(context.Background(), register(8080, "web", "10.0.0.1", 1))
	if !errors.Is(err, ErrShutdown) {
		t.Fatalf("want ErrShutdown, got %v", err)
	}
	if err := n.Shutdown(); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
}

// applyMany starts count registrations on n at once (routes on ports from
// 20000) and returns a wait that gives each one's error: the commit's, or
// the table's refusal.
func applyMany(n *Node, count int) (wait func() []error) {
	var wg sync.WaitGroup
	errs := make([]error, count)
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := n.Apply(context.Background(), register(20000+i, fmt.Sprintf("c-%d", i), "10.0.0.1", 1000+i))
			if err == nil {
				err = res.Err
			}
			errs[i] = err
		}(i)
	}
	return func() []error { wg.Wait(); return errs }
}

func TestConcurrentAppliesAllCommit(t *testing.T) {
	for _, batches := range []bool{false, true} {
		t.Run(fmt.Sprintf("batches %v", batches), func(t *testing.T) {
			n, f := startNode(t, fastConfig(t, t.TempDir()))
			n.allowBatches(n.raft.CurrentTerm(), batches)
			before := n.raft.LastIndex()
			for _, err := range applyMany(n, 200)() {
				if err != nil {
					t.Error(err)
				}
			}
			if got := f.State().Len(); got != 200 {
				t.Errorf("%d routes, want 200", got)
			}
			entries := n.raft.LastIndex() - before
			if batches != (entries < 200) {
				t.Errorf("200 writes took %d log entries with batches %v", entries, batches)
			}
		})
	}
}

// TestReplayedWaitsForTheFSM restarts a node with a long log and checks
// that Replayed opens only once the route table itself holds the last
// command, however far ahead raft's AppliedIndex (entries handed to the
// fsm) runs. Before, HAProxy was fed as soon as AppliedIndex reached the
// log's end, and could be handed a half-replayed table.
func TestReplayedWaitsForTheFSM(t *testing.T) {
	dir := t.TempDir()
	cfg := fastConfig(t, dir)
	cfg.NoSync = true
	n, f := startNode(t, cfg)
	const routes = 3000
	var wg sync.WaitGroup
	errs := make(chan error, routes)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < routes; i += 16 {
				res, err := n.Apply(context.Background(), register(10000+i, fmt.Sprintf("svc-%d", i), "10.0.0.1", 30000))
				if err == nil {
					err = res.Err
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	target := f.State().Index
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}

	cfg.BindAddr = testenv.FreeAddr(t)
	f2 := fsm.New()
	n2, err := New(cfg, f2, testenv.Logger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Shutdown()
	if n2.bootTarget != target {
		t.Fatalf("boot target %d, want the last command's index %d", n2.bootTarget, target)
	}
	deadline := time.Now().Add(30 * time.Second)
	early := 0 // polls where raft said "applied" but the table was behind
	for !n2.Replayed() {
		if n2.raft.AppliedIndex() >= target && f2.State().Index < target {
			early++
		}
		if time.Now().After(deadline) {
			t.Fatalf("never replayed: table at %d, raft applied %d, target %d", f2.State().Index, n2.raft.AppliedIndex(), target)
		}
		time.Sleep(100 * time.Microsecond)
	}
	if got := f2.State(); got.Index < target || got.Len() != routes {
		t.Fatalf("Replayed with a half-replayed table: index %d of %d, %d of %d routes", got.Index, target, got.Len(), routes)
	}
	t.Logf("raft's AppliedIndex ran ahead of the table during %d polls", early)
}

// TestMetaStaysUnderMemberlistLimit: a node holding back many routes, with
// a long error and failover reason, still publishes metadata (memberlist
// drops metadata over 512 bytes): the held-back list is capped and the
// texts are shed first.
func TestMetaStaysUnderMemberlistLimit(t *testing.T) {
	held := make([]int, 500)
	for i := range held {
		held[i] = 10000 + i
	}
	m := &Membership{meta: func() Meta {
		return Meta{Role: RoleEdge, RaftAddr: "[2001:db8::1234:5678:9abc]:65535", APIURL: "https://edge-node-with-a-long-name.example.com:9000",
			Version: "v1.2.3-45-gabcdef0-dirty", Index: 1 << 40, Applied: 1 << 40, ConfigHash: strings.Repeat("a", 64),
			Error: strings.Repeat("e", 500), Held: len(held), HeldBack: held, Unknown: 3,
			FIP: &FIPMeta{Eligible: true, Holding: true, Epoch: 1 << 40, Priority: 100, LastAt: 1 << 50,
				LastFrom: "edge-node-with-a-long-name-2", LastMS: 123456, LastWhy: strings.Repeat("w", 200)},
			Leaving: true, Bootstrapped: true, Healthy: true, FD: 1 << 20, Batches: true}
	}}
	b, err := m.encodeMeta()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > memberlist.MetaMaxSize {
		t.Fatalf("meta is %d bytes, over memberlist's %d", len(b), memberlist.MetaMaxSize)
	}
	if !strings.Contains(string(b), `"hn":500`) || !strings.Contains(string(b), `"u":3`) {
		t.Fatalf("meta lost the counts: %s", b)
	}
}

// TestTransportDoesNotPipeline: both transports replicate synchronously;
// hashicorp/raft 1.7's pipeline can wedge a follower for good (see
// transportConfig).
func TestTransportDoesNotPipeline(t *testing.T) {
	plain := fastConfig(t, t.TempDir())
	secure := tlsTimings(fastConfig(t, t.TempDir()))
	secure.TLS = newTLSTestCA(t, "cluster CA").raftTLS(t, "n1")
	for name, cfg := range map[string]Config{"tcp": plain, "tls": secure} {
		t.Run(name, func(t *testing.T) {
			n, _ := startNode(t, cfg)
			_, err := n.transport.AppendEntriesPipeline("n2", raft.ServerAddress(testenv.FreeAddr(t)))
			if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
				t.Fatalf("AppendEntriesPipeline = %v, want pipelining off", err)
			}
		})
	}
}
