package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

// table builds a State of n routes with one health-checked backend each.
func table(t *testing.T, n int) *fsm.State {
	t.Helper()
	f := fsm.New()
	for i := 0; i < n; i++ {
		r := fsm.NewRoute(20000+i, "r")
		r.Name = "r" + strings.Repeat("x", i%3) + string(rune('a'+i%26))
		r.Backends = []fsm.Backend{{Address: "10.0.0.1", Port: 80}}
		if res := f.ApplyCommand(uint64(i+1), &fsm.UpsertRoute{Route: r, Force: true}); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	return f.State()
}

// The leader admits a write when any alive edge node has room for the
// table it makes (a witness leader counts only its peers), refuses it with
// a CapacityError naming the need otherwise, and always admits a write that
// does not grow the need.
func TestAdmitAgainstTheLargestEdgeNode(t *testing.T) {
	s := haproxy.Settings{MaxConn: 10}
	// Route capacity 100 - 64 - 20 = 16 descriptors: 8 routes.
	self := &nodeInfo{cfg: &Config{NodeName: "edge-1"}, settings: s, fdLimit: 100, proxy: &haproxy.Manager{}}
	peer := func(name string, fd int, status cluster.MemberStatus) cluster.Member {
		return cluster.Member{Name: name, Status: status, Meta: cluster.Meta{Role: cluster.RoleEdge, FD: fd}}
	}
	eight, nine := table(t, 8), table(t, 9)

	self.peers = func() []cluster.Member { return nil }
	if err := self.Admit(eight, eight); err != nil {
		t.Fatalf("8 routes on 16 descriptors: %v", err)
	}
	err := self.Admit(eight, nine)
	var ce *api.CapacityError
	if !errors.As(err, &ce) || !strings.Contains(ce.Message, "would need 18 file descriptors") || !strings.Contains(ce.Message, "descriptor limit 100") {
		t.Fatalf("9 routes on 16 descriptors: %v", err)
	}
	if err := self.Admit(nine, eight); err != nil {
		t.Fatalf("a delete at capacity was refused: %v", err)
	}
	// A larger alive peer can run it; a dead one or a witness does not count.
	self.peers = func() []cluster.Member {
		return []cluster.Member{peer("edge-2", 1000, "alive")}
	}
	if err := self.Admit(eight, nine); err != nil {
		t.Fatalf("a peer with room exists: %v", err)
	}
	self.peers = func() []cluster.Member {
		w := peer("w", 1000, "alive")
		w.Meta.Role = cluster.RoleWitness
		return []cluster.Member{peer("edge-2", 1000, "dead"), w}
	}
	if err := self.Admit(eight, nine); err == nil {
		t.Fatal("a dead peer's or a witness's capacity admitted the write")
	}
	// A witness leader knows only its peers; none publishing: admit.
	witness := &nodeInfo{cfg: &Config{NodeName: "w"}, settings: s, peers: func() []cluster.Member { return nil }}
	if err := witness.Admit(eight, nine); err != nil {
		t.Fatalf("no capacity known, yet refused: %v", err)
	}
	witness.peers = func() []cluster.Member { return []cluster.Member{peer("edge-1", 16, "alive")} }
	if err := witness.Admit(eight, nine); err == nil || !strings.Contains(err.Error(), "edge-1") {
		t.Fatalf("witness leader: %v", err)
	}
}
