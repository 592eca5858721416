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

// needs keeps its count by the routes that changed since the table it last
// saw; over a random walk of tables (writes, a jump back to an older
// table, a restored table sharing nothing) it must always equal the count
// over the whole table, and Admit must refuse exactly what the whole count
// refuses.
func TestAdmitNeedsStaysExactIncrementally(t *testing.T) {
	s := haproxy.Settings{MaxConn: 10, DynamicPorts: haproxy.PortRange{First: 20010, Last: 20019}}
	info := &nodeInfo{cfg: &Config{NodeName: "edge-1"}, settings: s, fdLimit: 120, proxy: &haproxy.Manager{},
		peers: func() []cluster.Member { return nil }}
	full := func(st *fsm.State) int {
		n := 0
		for _, r := range st.Routes() {
			n += haproxy.RouteDescriptors(s, r.Port, len(r.Backends), r.HealthCheck)
		}
		return n
	}
	f := fsm.New()
	var seen []*fsm.State
	refused, admitted := 0, 0
	for i := 0; i < 400; i++ {
		port := 20000 + i*7%30
		var cmd fsm.Command
		switch i % 5 {
		case 0, 1:
			r := fsm.NewRoute(port, "r")
			r.HealthCheck = i%3 != 0
			for b := 0; b <= i%4; b++ {
				r.Backends = append(r.Backends, fsm.Backend{Address: "10.0.0.1", Port: 80 + b})
			}
			cmd = &fsm.UpsertRoute{Route: r, Force: true}
		case 2:
			cmd = &fsm.RegisterBackend{Port: port, Backend: fsm.Backend{Address: "10.0.0.2", Port: 90 + i%3}}
		case 3:
			cmd = &fsm.DeleteRoute{Port: port}
		default:
			cmd = &fsm.DeregisterBackend{Port: port, Address: "10.0.0.1", BackendPort: 80}
		}
		cur := f.State()
		next, err := cur.Preview(cmd)
		if next == nil {
			t.Fatalf("step %d: no preview (%v)", i, err)
		}
		have, want := full(cur), full(next)
		admitErr := info.Admit(cur, next)
		if got := info.needs(cur); got != have {
			t.Fatalf("step %d: needs %d, whole table %d", i, got, have)
		}
		if refuse := want > have && want > info.routeCapacity(); refuse != (admitErr != nil) {
			t.Fatalf("step %d: need %d -> %d, capacity %d: Admit said %v", i, have, want, info.routeCapacity(), admitErr)
		}
		if admitErr == nil {
			f.ApplyCommand(cur.Index+1, cmd)
			admitted++
		} else {
			refused++
		}
		seen = append(seen, f.State())
		switch {
		case i%50 == 49: // an older table again (a stale reader)
			old := seen[i/2]
			if got := info.needs(old); got != full(old) {
				t.Fatalf("step %d: older table: needs %d, whole %d", i, got, full(old))
			}
		case i%77 == 76: // a restored table shares no route with the last
			restored, err := fsm.NewState(f.State().Index, f.State().Routes())
			if err != nil {
				t.Fatal(err)
			}
			if got := info.needs(restored); got != full(restored) {
				t.Fatalf("step %d: restored table: needs %d, whole %d", i, got, full(restored))
			}
		}
	}
	if refused == 0 || admitted == 0 {
		t.Fatalf("the walk never reached capacity or never fit: %d refused, %d admitted", refused, admitted)
	}
}
