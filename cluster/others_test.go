package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Others lists the other members without calling the metadata function:
// the floating-IP owner asks for peers from inside it (Owner.Claim →
// eligibility), and Members would call it again and deadlock on the
// owner's lock.
func TestOthersNeverReadsThisNodesMetadata(t *testing.T) {
	var inMeta atomic.Bool
	var reentered atomic.Bool
	var self *Membership
	meta := func() Meta {
		if inMeta.Load() {
			reentered.Store(true)
			return Meta{Role: RoleEdge}
		}
		inMeta.Store(true)
		defer inMeta.Store(false)
		if self != nil {
			// What the agent's metadata does through the owner's
			// eligibility: look at the other members.
			_ = self.Others()
		}
		return Meta{Role: RoleEdge}
	}
	cfg := func(name string) GossipConfig {
		return GossipConfig{NodeName: name, BindAddr: testenv.FreeAddr(t), ProbeInterval: 100 * time.Millisecond,
			ProbeTimeout: 50 * time.Millisecond, SuspicionMult: 2, GossipInterval: 20 * time.Millisecond}
	}
	a, err := NewMembership(cfg("a"), func() Meta { return Meta{Role: RoleEdge} }, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := NewMembership(cfg("b"), meta, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	self = b
	var addr string
	for _, m := range a.Members() {
		addr = m.Addr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Join(ctx, []string{addr}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "b to see a", func() bool { return len(b.Others()) == 1 })
	b.Refresh()
	if others := b.Others(); len(others) != 1 || others[0].Name != "a" {
		t.Errorf("Others() = %+v, want a alone", others)
	}
	if reentered.Load() {
		t.Error("Others called the metadata function from inside it")
	}
}
