package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The reference model: a deliberately naive route table (maps, no sharing, no
// sorting) implementing the documented semantics independently of State.

type refKey struct {
	addr string // canonical
	port int
}

type refBackend struct {
	owner string
	exp   time.Time
	ttl   time.Duration
}

type refRoute struct {
	name, balance string
	sticky        bool
	implicit      bool
	checkPort     int
	checkMode     string
	backends      map[refKey]refBackend
}

type refModel map[int]*refRoute

// refOutcome is what the model expects of a Result.
type refOutcome struct {
	err     error // sentinel, or nil
	port    int   // route Result.Route should show (0: Result.Route is nil)
	deleted bool
	expired int
}

// Generator pools: inputs with their validity (and canonical form) spelled
// out here rather than derived from the code under test. Each field picks
// from its invalid pool now and then, so about a third of commands are bad.
type addrCase struct{ in, canon string }

var (
	propPorts       = []int{80, 81, 82, 83}
	propBadPorts    = []int{0, 65536, -1}
	propNames       = []string{"a", "b", "c"}
	propBadNames    = []string{"B", "a#", "${x}", "a\n", ""}
	propAddrs       = []addrCase{{"10.0.0.1", "10.0.0.1"}, {"::ffff:10.0.0.1", "10.0.0.1"}, {"10.0.0.9", "10.0.0.9"}, {"10.0.0.10", "10.0.0.10"}, {"2001:DB8::1", "2001:db8::1"}, {"2001:db8::1", "2001:db8::1"}}
	propBadAddrs    = []string{"example.com", "0.0.0.0", "fe80::1%eth0", "224.0.0.1", "10.0.0.1\n"}
	propBPorts      = []int{8080, 8081}
	propOwners      = []string{"", "pod-1", "pod-2"}
	propBadOwners   = []string{"Pod", "pod 1"}
	propBalances    = []string{"roundrobin", "leastconn"}
	propBadBalances = []string{"rr", ""}
	propCheckPorts  = []int{0, 0, 31500}
	propBadCheck    = []int{-1, 65536}
	propCheckModes  = []string{"", "", CheckModeHTTP}
	propBadModes    = []string{"https", "tcp", "http\n"}
	plusOne         = time.FixedZone("plus-one", 3600)
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

type genRoute struct {
	route Route
	valid bool
	keys  map[refKey]refBackend
}

type gen struct{ r *rand.Rand }

// bad decides whether the next field is drawn from its invalid pool.
func (g gen) bad() bool { return g.r.IntN(25) == 0 }

// choose picks from good, or from bad now and then, and reports validity.
func choose[T any](g gen, good, bad []T) (T, bool) {
	if g.bad() {
		return pick(g.r, bad), false
	}
	return pick(g.r, good), true
}

func (g gen) lease() time.Time {
	switch n := g.r.IntN(5); n {
	case 0:
		return time.Time{}
	default:
		t := t0.Add(time.Duration(n) * time.Minute)
		if g.r.IntN(2) == 0 {
			t = t.In(plusOne) // same instant, other zone: stored as UTC
		}
		return t
	}
}

func (g gen) addr() (in, canon string) {
	if g.bad() {
		return pick(g.r, propBadAddrs), ""
	}
	a := pick(g.r, propAddrs)
	return a.in, a.canon
}

func (g gen) backend() (Backend, refKey, refBackend, bool) {
	in, canon := g.addr()
	port, pok := choose(g, propBPorts, propBadPorts)
	owner, ook := choose(g, propOwners, propBadOwners)
	b := Backend{Address: in, Port: port, Owner: owner, ExpiresAt: g.lease(), TTL: time.Duration(g.r.IntN(3)) * 30 * time.Second}
	tok := true
	if g.bad() {
		b.TTL, tok = -time.Second, false
	}
	return b, refKey{canon, port}, refBackend{owner, b.ExpiresAt, b.TTL}, canon != "" && pok && ook && tok
}

func (g gen) route(port int, name string, nameOK bool) genRoute {
	bal, bok := choose(g, propBalances, propBadBalances)
	r := NewRoute(port, name)
	r.Balance, r.Sticky, r.Implicit = bal, g.r.IntN(2) == 0, g.r.IntN(4) == 0
	cp, cpok := choose(g, propCheckPorts, propBadCheck)
	cm, cmok := choose(g, propCheckModes, propBadModes)
	r.CheckPort, r.CheckMode = cp, cm
	out := genRoute{valid: nameOK && bok && validPort(port) && cpok && cmok, keys: map[refKey]refBackend{}}
	for range g.r.IntN(4) {
		b, k, rb, ok := g.backend()
		if _, dup := out.keys[k]; dup || !ok {
			out.valid = false
		}
		out.keys[k] = rb
		r.Backends = append(r.Backends, b)
	}
	out.route = r
	return out
}

func (g gen) name() (string, bool) { return choose(g, propNames, propBadNames) }

func (g gen) port() (int, bool) { return choose(g, propPorts, propBadPorts) }

// optName is a name that may be empty ("any route").
func (g gen) optName() (string, bool) {
	if g.r.IntN(3) == 0 {
		return "", true
	}
	if g.bad() {
		return pick(g.r, propBadNames[:len(propBadNames)-1]), false // "" means "no name" here
	}
	return pick(g.r, propNames), true
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

func newRef(gr genRoute, implicit bool) *refRoute {
	r := &refRoute{name: gr.route.Name, balance: gr.route.Balance, sticky: gr.route.Sticky, implicit: implicit,
		checkPort: gr.route.CheckPort, checkMode: gr.route.CheckMode, backends: map[refKey]refBackend{}}
	for k, b := range gr.keys {
		r.backends[k] = b
	}
	return r
}

// step generates one command and applies it to the model.
func (g gen) step(m refModel) (Command, refOutcome) {
	bad := refOutcome{err: ErrInvalid}
	switch g.r.IntN(12) {
	case 0, 1: // UpsertRoute
		port, _ := g.port()
		name, ok := g.name()
		gr := g.route(port, name, ok)
		cmd := &UpsertRoute{Route: gr.route, Force: g.r.IntN(4) == 0}
		if !gr.valid {
			return cmd, bad
		}
		if old := m[port]; old != nil && old.name != name && !cmd.Force {
			return cmd, refOutcome{err: ErrPortTaken}
		}
		m[port] = newRef(gr, false)
		return cmd, refOutcome{port: port}
	case 2: // DeleteRoute
		port, _ := g.port()
		name, ok := g.optName()
		cmd := &DeleteRoute{Port: port, Name: name}
		old := m[port]
		switch {
		case !validPort(port) || !ok:
			return cmd, bad
		case old == nil:
			return cmd, refOutcome{err: ErrNotFound}
		case name != "" && old.name != name:
			return cmd, refOutcome{err: ErrPortTaken}
		}
		delete(m, port)
		return cmd, refOutcome{deleted: true}
	case 3, 4, 5, 6, 7: // RegisterBackend
		port, _ := g.port()
		name, ok := g.optName()
		b, k, rb, bok := g.backend()
		cmd := &RegisterBackend{Port: port, Name: name, Backend: b}
		valid := validPort(port) && ok && bok
		var create genRoute
		if g.r.IntN(2) == 0 {
			cport := port
			if g.r.IntN(10) == 0 {
				cport, _ = g.port()
			}
			cname, cok := name, ok
			if cname == "" || g.r.IntN(10) == 0 {
				cname, cok = g.name()
			}
			create = g.route(cport, cname, cok)
			cmd.Create = &create.route
			valid = valid && create.valid && cport == port && (name == "" || cname == name)
			if name == "" {
				name = cname
			}
		}
		if !valid {
			return cmd, bad
		}
		r := m[port]
		switch {
		case r == nil && cmd.Create == nil:
			return cmd, refOutcome{err: ErrNotFound}
		case r == nil:
			r = newRef(create, true)
		case name != "" && r.name != name:
			return cmd, refOutcome{err: ErrPortTaken}
		}
		if _, exists := r.backends[k]; !exists && len(r.backends) >= MaxBackendsPerRoute {
			return cmd, bad
		}
		r.backends[k] = rb
		m[port] = r
		return cmd, refOutcome{port: port}
	case 8, 9, 10: // DeregisterBackend
		port, _ := g.port()
		name, ok := g.optName()
		in, canon := g.addr()
		bport, _ := choose(g, propBPorts, propBadPorts)
		if r := m[port]; r != nil && len(r.backends) > 0 && g.r.IntN(2) == 0 {
			keys := make([]refKey, 0, len(r.backends))
			for k := range r.backends {
				keys = append(keys, k)
			}
			slices.SortFunc(keys, func(a, b refKey) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
			k := pick(g.r, keys) // sorted first: the generator must be deterministic too
			in, canon, bport = k.addr, k.addr, k.port
		}
		cmd := &DeregisterBackend{Port: port, Name: name, Address: in, BackendPort: bport}
		if !validPort(port) || !ok || canon == "" || !validPort(bport) {
			return cmd, bad
		}
		r := m[port]
		switch {
		case r == nil:
			return cmd, refOutcome{err: ErrNotFound}
		case name != "" && r.name != name:
			return cmd, refOutcome{err: ErrPortTaken}
		}
		k := refKey{canon, bport}
		if _, exists := r.backends[k]; !exists {
			return cmd, refOutcome{err: ErrNotFound}
		}
		delete(r.backends, k)
		if r.implicit && len(r.backends) == 0 {
			delete(m, port)
			return cmd, refOutcome{deleted: true}
		}
		return cmd, refOutcome{port: port}
	default: // ExpireLeases
		if g.bad() {
			return &ExpireLeases{}, bad
		}
		now := t0.Add(time.Duration(g.r.IntN(6)) * time.Minute)
		n := 0
		for port, r := range m {
			for k, b := range r.backends {
				if !b.exp.IsZero() && !b.exp.After(now) {
					delete(r.backends, k)
					n++
				}
			}
			if r.implicit && len(r.backends) == 0 {
				delete(m, port)
			}
		}
		return &ExpireLeases{Now: now}, refOutcome{expired: n}
	}
}

// compareToModel checks a State (and a Result) against the model.
func compareToModel(t *testing.T, step int, m refModel, s *State, res Result, want refOutcome) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d: %s", step, fmt.Sprintf(format, args...))
	}
	if want.err != nil {
		if !errors.Is(res.Err, want.err) {
			fail("Err = %v, want %v", res.Err, want.err)
		}
	} else if res.Err != nil {
		fail("Err = %v, want nil", res.Err)
	}
	if res.Deleted != want.deleted || res.Expired != want.expired {
		fail("Deleted, Expired = %v, %d, want %v, %d", res.Deleted, res.Expired, want.deleted, want.expired)
	}
	if (res.Route != nil) != (want.port != 0) {
		fail("Result.Route = %+v, want route on port %d", res.Route, want.port)
	}
	if res.Route != nil {
		if got, _ := s.Route(want.port); res.Route.Port != want.port || fmt.Sprint(got) != fmt.Sprint(*res.Route) {
			fail("Result.Route = %+v, table has %+v", *res.Route, got)
		}
	}
	routes := s.Routes()
	if len(routes) != len(m) {
		fail("%d routes, model has %d", len(routes), len(m))
	}
	for _, r := range routes {
		ref := m[r.Port]
		switch {
		case ref == nil:
			fail("unexpected route %d", r.Port)
		case r.Name != ref.name || r.Balance != ref.balance || r.Sticky != ref.sticky || r.Implicit != ref.implicit ||
			r.CheckPort != ref.checkPort || r.CheckMode != ref.checkMode:
			fail("route %d = %+v, model %+v", r.Port, r, ref)
		case len(r.Backends) != len(ref.backends):
			fail("route %d has %d backends, model %d", r.Port, len(r.Backends), len(ref.backends))
		}
		for i, b := range r.Backends {
			rb, ok := ref.backends[refKey{b.Address, b.Port}]
			if !ok || rb.owner != b.Owner || !rb.exp.Equal(b.ExpiresAt) || rb.ttl != b.TTL {
				fail("route %d backend %+v, model %+v (found %v)", r.Port, b, rb, ok)
			}
			if i > 0 { // sorted by address value then port, checked with netip directly
				pa, pb := netip.MustParseAddr(r.Backends[i-1].Address), netip.MustParseAddr(b.Address)
				if c := pa.Compare(pb); c > 0 || (c == 0 && r.Backends[i-1].Port >= b.Port) {
					fail("route %d backends out of order: %v", r.Port, r.Backends)
				}
			}
		}
	}
}

func TestPropertyAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			g := gen{r: rand.New(rand.NewPCG(seed, 0xd7a9b71d6e))}
			f, replica := New(), New()
			m := refModel{}
			var log [][]byte
			var results []Result
			outcomes := map[string]int{}
			for step := 1; step <= 3000; step++ {
				cmd, want := g.step(m)
				data, err := Encode(cmd)
				if err != nil {
					t.Fatal(err)
				}
				log = append(log, data)
				res := f.Apply(&raft.Log{Index: uint64(step), Type: raft.LogCommand, Data: data}).(Result)
				results = append(results, res)
				compareToModel(t, step, m, f.State(), res, want)
				checkInvariants(t, f.State())
				if f.State().Index != uint64(step) {
					t.Fatalf("step %d: Index = %d", step, f.State().Index)
				}
				outcomes[fmt.Sprintf("%s/%v", cmd.Type(), want.err)]++
				if step%500 == 0 {
					f = testSnapshotRestore(t, f) // continue on the restored copy
				}
			}
			// Replaying the same log elsewhere reaches the same state.
			for i, data := range log {
				replica.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: bytes.Clone(data)})
			}
			assertSameState(t, f.State(), replica.State())
			// So does the same log packed into batches, command by command.
			replayInBatches(t, g.r, log, results, f.State())
			keys := make([]string, 0, len(outcomes))
			for k := range outcomes {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				t.Logf("%-40s %d", k, outcomes[k])
			}
			if f.State().Len() == 0 || f.State().BackendCount() == 0 {
				t.Logf("final table is empty; generator may be too destructive")
			}
		})
	}
}
