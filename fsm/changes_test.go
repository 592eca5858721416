package fsm

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// naiveChanges compares two States by content, port by port: what
// ChangesSince must report (it may also report a route whose copy is
// equal, but never miss a different one).
func naiveChanges(prev, cur *State) map[int][2]*Route {
	out := map[int][2]*Route{}
	old := map[int]Route{}
	if prev != nil {
		for _, r := range prev.Routes() {
			old[r.Port] = r
		}
	}
	for _, r := range cur.Routes() {
		o, ok := old[r.Port]
		delete(old, r.Port)
		if !ok {
			out[r.Port] = [2]*Route{nil, ptr(r)}
		} else if !reflect.DeepEqual(o, r) {
			out[r.Port] = [2]*Route{ptr(o), ptr(r)}
		}
	}
	for port, o := range old {
		out[port] = [2]*Route{ptr(o), nil}
	}
	return out
}

func TestChangesSince(t *testing.T) {
	f := New()
	mustApply(t, f,
		&UpsertRoute{Route: route(8080, "web", be("10.0.0.1", 80))},
		&UpsertRoute{Route: route(8081, "api", be("10.0.0.2", 80))},
		&UpsertRoute{Route: route(8082, "db", be("10.0.0.3", 80))})
	before := f.State()
	if got := before.ChangesSince(before); got != nil {
		t.Fatalf("a State against itself: %+v", got)
	}
	applyLog(t, f, &DeleteRoute{Port: 9999}) // refused: the index moves, the table does not
	if got := f.State().ChangesSince(before); got != nil {
		t.Fatalf("a refused command changed routes: %+v", got)
	}
	mustApply(t, f,
		&DeleteRoute{Port: 8080},
		&RegisterBackend{Port: 8081, Backend: be("10.0.0.9", 81)},
		&UpsertRoute{Route: route(8083, "new", be("10.0.0.4", 80))})
	got := f.State().ChangesSince(before)
	want := []RouteChange{
		{Port: 8080, Old: ptr(route(8080, "web", be("10.0.0.1", 80)))},
		{Port: 8081, Old: ptr(route(8081, "api", be("10.0.0.2", 80))), New: ptr(route(8081, "api", be("10.0.0.2", 80), be("10.0.0.9", 81)))},
		{Port: 8083, New: ptr(route(8083, "new", be("10.0.0.4", 80)))},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("changes:\n got %+v\nwant %+v", got, want)
	}
	// The copies are the caller's: changing them changes no State.
	got[1].New.Backends[0].Port = 1
	if r, _ := f.State().Route(8081); r.Backends[0].Port != 80 {
		t.Fatal("ChangesSince handed out a route the State holds")
	}
	// Against nil: every route is new.
	if all := f.State().ChangesSince(nil); len(all) != 3 || all[0].Old != nil || all[0].New == nil {
		t.Fatalf("since nil: %+v", all)
	}
	// A restored table shares nothing with the one before: every route
	// is reported, and the result still matches by content.
	restored, err := NewState(f.State().Index, f.State().Routes())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(restored.ChangesSince(f.State())); n != 3 {
		t.Fatalf("restored table: %d changes, want 3 (one per route)", n)
	}
}

// Over random command sequences, ChangesSince between any two States
// reports every port whose route differs, with the right old and new
// routes, in port order.
func TestChangesSinceProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	f := New()
	var states []*State
	for i := range 300 {
		port := 8000 + rng.IntN(12)
		var c Command
		switch rng.IntN(4) {
		case 0:
			c = &UpsertRoute{Route: route(port, fmt.Sprintf("r%d", port), be("10.0.0.1", 1+rng.IntN(3))), Force: true}
		case 1:
			c = &DeleteRoute{Port: port}
		case 2:
			c = &RegisterBackend{Port: port, Backend: be("10.0.1.1", 1+rng.IntN(3))}
		default:
			c = &DeregisterBackend{Port: port, Address: "10.0.1.1", BackendPort: 1 + rng.IntN(3)}
		}
		applyLog(t, f, c)
		if i%7 == 0 {
			states = append(states, f.State())
		}
	}
	states = append(states, nil)
	for _, prev := range states {
		for _, cur := range states {
			if cur == nil {
				continue
			}
			want := naiveChanges(prev, cur)
			got := cur.ChangesSince(prev)
			for k, c := range got {
				if k > 0 && got[k-1].Port >= c.Port {
					t.Fatalf("changes out of order: %+v", got)
				}
				w, ok := want[c.Port]
				if !ok {
					if c.Old == nil || c.New == nil || !reflect.DeepEqual(*c.Old, *c.New) {
						t.Fatalf("port %d reported changed but is not: %+v", c.Port, c)
					}
					continue
				}
				if !reflect.DeepEqual(w[0], c.Old) || !reflect.DeepEqual(w[1], c.New) {
					t.Fatalf("port %d: got old %+v new %+v, want %+v %+v", c.Port, c.Old, c.New, w[0], w[1])
				}
				delete(want, c.Port)
			}
			if len(want) > 0 {
				t.Fatalf("missed changes: %+v", want)
			}
		}
	}
}

// BenchmarkChangesSince is the per-write cost of finding what one write
// changed in a table of 1,000 routes.
func BenchmarkChangesSince(b *testing.B) {
	f := benchTable(b)
	prev := f.State()
	next, err := prev.Preview(&RegisterBackend{Port: 10500, Name: "svc-500", Backend: be("10.9.9.9", 80)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(next.ChangesSince(prev)) != 1 {
			b.Fatal("want one change")
		}
	}
}
