package fsm

import (
	"errors"
	"testing"
	"time"
)

func TestExpireLeasesOnly(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := New()
	mustApply(t, f,
		&UpsertRoute{Route: route(8080, "a", leased("10.0.0.1", 1, "", t0), leased("10.0.0.2", 1, "", t0))},
		&UpsertRoute{Route: route(8081, "b", leased("10.0.0.1", 1, "", t0))},
	)
	// Only the named, expired backend goes; the other expired ones stay.
	res := applyLog(t, f, &ExpireLeases{Now: t0.Add(time.Second), Only: []LeaseRef{
		{Port: 8080, Address: "10.0.0.2", BackendPort: 1},
		{Port: 9999, Address: "10.0.0.2", BackendPort: 1}, // no such route: ignored
	}})
	if res.Err != nil || res.Expired != 1 {
		t.Fatalf("result %+v, want 1 expired", res)
	}
	if r, _ := f.State().Route(8080); len(r.Backends) != 1 || r.Backends[0].Address != "10.0.0.1" {
		t.Fatalf("route 8080: %+v", r)
	}
	if r, _ := f.State().Route(8081); len(r.Backends) != 1 {
		t.Fatalf("route 8081 lost a backend it was not asked to: %+v", r)
	}
	// Named but not yet expired at Now: stays.
	res = applyLog(t, f, &ExpireLeases{Now: t0.Add(-time.Second), Only: []LeaseRef{{Port: 8081, Address: "10.0.0.1", BackendPort: 1}}})
	if res.Expired != 0 {
		t.Fatalf("expired %d backends whose lease had not ended", res.Expired)
	}
	testSnapshotRestore(t, f)
}

// A scoped command never changes a route another token owns, even when
// the leader's check before proposing raced with another write.
func TestScopeOwnership(t *testing.T) {
	f := New()
	create := route(8080, "shared")
	mustApply(t, f, &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 1), Create: &create, Scope: "alpha"})
	if r, _ := f.State().Route(8080); r.Token != "alpha" {
		t.Fatalf("owner %q, want alpha (stamped from the scope)", r.Token)
	}
	before := f.State().Hash()
	for _, c := range []Command{
		&RegisterBackend{Port: 8080, Name: "shared", Backend: be("10.0.0.2", 1), Create: &create, Scope: "beta"},
		&UpsertRoute{Route: route(8080, "shared"), Scope: "beta"},
		&UpsertRoute{Route: route(8080, "other"), Force: true, Scope: "beta"},
		&DeregisterBackend{Port: 8080, Name: "shared", Address: "10.0.0.1", BackendPort: 1, Scope: "beta"},
		&DeleteRoute{Port: 8080, Name: "shared", Scope: "beta"},
	} {
		res := applyLog(t, f, c)
		if !errors.Is(res.Err, ErrForbidden) {
			t.Fatalf("%T by another token: %v, want ErrForbidden", c, res.Err)
		}
	}
	if f.State().Hash() != before {
		t.Fatal("a forbidden command changed the table")
	}
	// The owner, and an unscoped (admin) command, may.
	mustApply(t, f, &RegisterBackend{Port: 8080, Name: "shared", Backend: be("10.0.0.2", 1), Scope: "alpha"})
	mustApply(t, f, &DeleteRoute{Port: 8080})
	testSnapshotRestore(t, f)
}
