package agent

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestEligibilitySeesHeldBackRoutesAndSkippedCommands runs a real HAProxy
// with a route whose port another process holds. The node is degraded: it
// stays eligible for the floating IP while no better edge node is alive
// (serving all but one route beats serving none), and is not eligible once
// one is. Skipped log entries (written by a newer drawbridge) degrade it
// the same way, even with every route served.
func TestEligibilitySeesHeldBackRoutesAndSkippedCommands(t *testing.T) {
	bin := testenv.HAProxy(t)
	m, err := haproxy.NewManager(haproxy.Config{
		Bin:            bin,
		Dir:            t.TempDir(),
		Settings:       haproxy.Settings{BindAddress: "127.0.0.1", MaxConn: 100},
		RetryInterval:  200 * time.Millisecond,
		HealthInterval: 100 * time.Millisecond,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = m.StopHAProxy(sctx)
	})
	squatter, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	taken := squatter.Addr().(*net.TCPAddr).Port
	free := testenv.FreePort(t)

	table := fsm.New()
	for i, port := range []int{free, taken} {
		r := fsm.NewRoute(port, "r"+strconv.Itoa(port))
		r.Backends = []fsm.Backend{{Address: "127.0.0.1", Port: 9}}
		if res := table.ApplyCommand(uint64(i+1), &fsm.UpsertRoute{Route: r}); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	m.Submit(table.State().Index, Frontends(table.State().Routes()))

	var peers []cluster.Member
	info := &nodeInfo{
		cfg:   &Config{NodeName: "edge-1", FloatingIP: FloatingIPConfig{LagGrace: 50 * time.Millisecond}},
		table: table,
		proxy: m,
		peers: func() []cluster.Member { return peers },
	}
	testenv.Eventually(t, 10*time.Second, "the taken port held back", func() bool {
		return m.Status().ServedIndex == 2 && len(m.Status().FailedPorts) == 1
	})
	if m.Status().AppliedIndex >= 2 {
		t.Fatalf("index with a held-back route counted as applied: %+v", m.Status())
	}
	info.eligible()                    // starts the lag grace
	time.Sleep(100 * time.Millisecond) // past the 50 ms lag grace
	if !info.eligible() {
		t.Fatal("a degraded node alone was made ineligible: nobody would hold the address")
	}
	healthy := cluster.Member{Name: "edge-2", Status: "alive", Meta: cluster.Meta{Role: cluster.RoleEdge, Healthy: true}}
	peers = []cluster.Member{healthy}
	if info.eligible() {
		t.Fatal("a node with a held-back route stays eligible beside a healthy peer")
	}
	// A peer that is itself degraded is no better.
	peers = []cluster.Member{{Name: "edge-2", Status: "alive", Meta: cluster.Meta{Role: cluster.RoleEdge, Healthy: true, Unknown: 1}}}
	if !info.eligible() {
		t.Fatal("made ineligible in favour of a peer that skipped commands")
	}

	// The port frees: every route served, eligible beside anyone.
	squatter.Close()
	testenv.Eventually(t, 10*time.Second, "every route served", func() bool { return m.Status().AppliedIndex >= 2 })
	peers = []cluster.Member{healthy}
	if !info.eligible() {
		t.Fatal("a node serving its whole table is not eligible")
	}

	// An entry of a command this drawbridge does not know: the table may
	// differ from the cluster's.
	table.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte{42, 1, '{', '}'}})
	m.Submit(table.State().Index, Frontends(table.State().Routes()))
	testenv.Eventually(t, 10*time.Second, "index 3 applied", func() bool { return m.Status().AppliedIndex >= 3 })
	if info.eligible() {
		t.Fatal("a node that skipped a newer command stays eligible beside a healthy peer")
	}
	peers = nil
	if !info.eligible() {
		t.Fatal("a node that skipped a command, alone, was made ineligible")
	}
}
