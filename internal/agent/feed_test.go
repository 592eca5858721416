package agent

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

// HAProxy is fed only the routes a write changed, the others carried over;
// over random writes (and a restored table sharing nothing with the one
// before) what it is fed must always equal converting the whole table, and
// what it was fed before must never change.
func TestFrontendsSinceEqualsTheWholeTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	f := fsm.New()
	var prev *fsm.State
	var fes []haproxy.Frontend
	var history [][]haproxy.Frontend
	var copies [][]haproxy.Frontend
	for i := range 400 {
		port := 20000 + rng.IntN(15)
		var cmd fsm.Command
		switch rng.IntN(5) {
		case 0, 1:
			r := fsm.NewRoute(port, fmt.Sprintf("r%d", rng.IntN(3)))
			r.HealthCheck = rng.IntN(2) == 0
			for b := range rng.IntN(3) {
				r.Backends = append(r.Backends, fsm.Backend{Address: "10.0.0.1", Port: 80 + b})
			}
			cmd = &fsm.UpsertRoute{Route: r, Force: true}
		case 2:
			cmd = &fsm.RegisterBackend{Port: port, Backend: fsm.Backend{Address: "10.0.0.2", Port: 90 + rng.IntN(3)}}
		case 3:
			cmd = &fsm.DeleteRoute{Port: port}
		default:
			cmd = &fsm.DeregisterBackend{Port: port, Address: "10.0.0.1", BackendPort: 80}
		}
		f.ApplyCommand(f.State().Index+1, cmd)
		st := f.State()
		if i%97 == 96 {
			restored, err := fsm.NewState(st.Index, st.Routes())
			if err != nil {
				t.Fatal(err)
			}
			st = restored
		}
		fes, prev = frontendsSince(fes, prev, st), st
		if want := Frontends(st.Routes()); !reflect.DeepEqual(fes, want) {
			t.Fatalf("step %d: fed\n%+v\nwant\n%+v", i, fes, want)
		}
		history = append(history, fes)
		copies = append(copies, deepCopyFrontends(fes))
	}
	for i := range history {
		if !reflect.DeepEqual(history[i], copies[i]) {
			t.Fatalf("what was fed at step %d changed afterwards", i)
		}
	}
}

func deepCopyFrontends(fes []haproxy.Frontend) []haproxy.Frontend {
	out := make([]haproxy.Frontend, len(fes))
	for i, fe := range fes {
		fe.Servers = slices.Clone(fe.Servers)
		out[i] = fe
	}
	return out
}
