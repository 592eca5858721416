package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestApplySemantics(t *testing.T) {
	web := route(8080, "web", be("10.0.0.1", 80))
	withMax := route(8080, "web")
	for i := range MaxBackendsPerRoute {
		withMax.Backends = append(withMax.Backends, be(fmt.Sprintf("10.1.%d.%d", i/200, i%200+1), 80))
	}
	reg := func(b Backend) *RegisterBackend { return &RegisterBackend{Port: 8080, Name: "web", Backend: b} }
	create := func(b Backend) *RegisterBackend {
		return &RegisterBackend{Port: 8080, Name: "web", Backend: b, Create: ptr(route(8080, "web"))}
	}

	tests := []struct {
		name    string
		setup   []Command
		cmd     Command
		err     error
		route   *Route // Result.Route
		deleted bool
		expired int
		want    []Route // table afterwards; nil = unchanged by a failing command
	}{
		// UpsertRoute.
		{name: "upsert creates explicit route",
			cmd:   &UpsertRoute{Route: implicit(web)},
			route: &web, want: []Route{web}},
		{name: "upsert same name replaces everything",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &UpsertRoute{Route: route(8080, "web", be("10.0.0.3", 81), be("10.0.0.2", 80))},
			route: ptr(route(8080, "web", be("10.0.0.2", 80), be("10.0.0.3", 81))),
			want:  []Route{route(8080, "web", be("10.0.0.2", 80), be("10.0.0.3", 81))}},
		{name: "upsert makes implicit route explicit",
			setup: []Command{create(be("10.0.0.1", 80))},
			cmd:   &UpsertRoute{Route: route(8080, "web")},
			route: ptr(route(8080, "web")), want: []Route{route(8080, "web")}},
		{name: "upsert other name conflicts",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &UpsertRoute{Route: route(8080, "api")}, err: ErrPortTaken},
		{name: "upsert other name with force",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &UpsertRoute{Route: route(8080, "api"), Force: true},
			route: ptr(route(8080, "api")), want: []Route{route(8080, "api")}},
		{name: "upsert other port coexists",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &UpsertRoute{Route: route(8081, "api")},
			route: ptr(route(8081, "api")), want: []Route{web, route(8081, "api")}},
		{name: "upsert invalid changes nothing",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &UpsertRoute{Route: route(8080, "web", be("example.com", 80))}, err: ErrInvalid},

		// DeleteRoute.
		{name: "delete",
			setup: []Command{&UpsertRoute{Route: web}, &UpsertRoute{Route: route(8081, "api")}},
			cmd:   &DeleteRoute{Port: 8080}, deleted: true, want: []Route{route(8081, "api")}},
		{name: "delete with matching name",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &DeleteRoute{Port: 8080, Name: "web"}, deleted: true, want: []Route{}},
		{name: "delete absent", cmd: &DeleteRoute{Port: 8080}, err: ErrNotFound},
		{name: "delete other name conflicts",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &DeleteRoute{Port: 8080, Name: "api"}, err: ErrPortTaken},

		// RegisterBackend.
		{name: "register without route", cmd: reg(be("10.0.0.1", 80)), err: ErrNotFound},
		{name: "register creates implicit route",
			cmd:   create(leased("10.0.0.1", 80, "pod-1", t0)),
			route: ptr(implicit(route(8080, "web", leased("10.0.0.1", 80, "pod-1", t0)))),
			want:  []Route{implicit(route(8080, "web", leased("10.0.0.1", 80, "pod-1", t0)))}},
		{name: "register create keeps create's backends",
			cmd:   &RegisterBackend{Port: 8080, Backend: be("10.0.0.2", 80), Create: ptr(web)},
			route: ptr(implicit(route(8080, "web", be("10.0.0.1", 80), be("10.0.0.2", 80)))),
			want:  []Route{implicit(route(8080, "web", be("10.0.0.1", 80), be("10.0.0.2", 80)))}},
		{name: "register adds backend in order",
			setup: []Command{&UpsertRoute{Route: route(8080, "web", be("10.0.0.1", 80), be("10.0.0.10", 80))}},
			cmd:   reg(be("10.0.0.9", 80)),
			route: ptr(route(8080, "web", be("10.0.0.1", 80), be("10.0.0.9", 80), be("10.0.0.10", 80))),
			want:  []Route{route(8080, "web", be("10.0.0.1", 80), be("10.0.0.9", 80), be("10.0.0.10", 80))}},
		{name: "register refreshes lease and owner",
			setup: []Command{create(leased("10.0.0.1", 80, "pod-1", t0))},
			cmd:   create(leased("::ffff:10.0.0.1", 80, "pod-2", t0.Add(time.Minute))),
			route: ptr(implicit(route(8080, "web", leased("10.0.0.1", 80, "pod-2", t0.Add(time.Minute))))),
			want:  []Route{implicit(route(8080, "web", leased("10.0.0.1", 80, "pod-2", t0.Add(time.Minute))))}},
		{name: "register refresh replaces ttl",
			setup: []Command{create(Backend{Address: "10.0.0.1", Port: 80, ExpiresAt: t0, TTL: time.Minute})},
			cmd:   create(Backend{Address: "10.0.0.1", Port: 80, ExpiresAt: t0.Add(time.Hour), TTL: time.Hour}),
			route: ptr(implicit(route(8080, "web", Backend{Address: "10.0.0.1", Port: 80, ExpiresAt: t0.Add(time.Hour), TTL: time.Hour}))),
			want:  []Route{implicit(route(8080, "web", Backend{Address: "10.0.0.1", Port: 80, ExpiresAt: t0.Add(time.Hour), TTL: time.Hour}))}},
		{name: "register refresh without lease clears it",
			setup: []Command{create(leased("10.0.0.1", 80, "pod-1", t0))},
			cmd:   reg(be("10.0.0.1", 80)),
			route: ptr(implicit(route(8080, "web", be("10.0.0.1", 80)))),
			want:  []Route{implicit(route(8080, "web", be("10.0.0.1", 80)))}},
		{name: "register into other name conflicts",
			setup: []Command{&UpsertRoute{Route: route(8080, "api")}},
			cmd:   create(be("10.0.0.1", 80)), err: ErrPortTaken},
		{name: "register create name claims port",
			setup: []Command{&UpsertRoute{Route: route(8080, "api")}},
			cmd:   &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80), Create: ptr(route(8080, "web"))}, err: ErrPortTaken},
		{name: "register without name joins any route",
			setup: []Command{&UpsertRoute{Route: route(8080, "api")}},
			cmd:   &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80)},
			route: ptr(route(8080, "api", be("10.0.0.1", 80))), want: []Route{route(8080, "api", be("10.0.0.1", 80))}},
		{name: "register create ignored when route exists",
			setup: []Command{&UpsertRoute{Route: route(8080, "web")}},
			cmd:   &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80), Create: ptr(func() Route { r := route(8080, "web"); r.Balance = BalanceFirst; return r }())},
			route: ptr(route(8080, "web", be("10.0.0.1", 80))), want: []Route{route(8080, "web", be("10.0.0.1", 80))}},
		{name: "register beyond max backends",
			setup: []Command{&UpsertRoute{Route: withMax}},
			cmd:   reg(be("10.9.9.9", 80)), err: ErrInvalid},
		{name: "register refresh at max backends",
			setup: []Command{&UpsertRoute{Route: withMax}},
			cmd:   reg(be(withMax.Backends[0].Address, 80)),
			route: &withMax, want: []Route{withMax}},

		// DeregisterBackend.
		{name: "deregister without route",
			cmd: &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 80}, err: ErrNotFound},
		{name: "deregister other name conflicts",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &DeregisterBackend{Port: 8080, Name: "api", Address: "10.0.0.1", BackendPort: 80}, err: ErrPortTaken},
		{name: "deregister absent backend",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 81}, err: ErrNotFound},
		{name: "deregister keeps explicit route when empty",
			setup: []Command{&UpsertRoute{Route: web}},
			cmd:   &DeregisterBackend{Port: 8080, Name: "web", Address: "::ffff:10.0.0.1", BackendPort: 80},
			route: ptr(route(8080, "web")), want: []Route{route(8080, "web")}},
		{name: "deregister removes implicit route with last backend",
			setup:   []Command{create(be("10.0.0.1", 80)), &UpsertRoute{Route: route(8081, "api")}},
			cmd:     &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 80},
			deleted: true, want: []Route{route(8081, "api")}},
		{name: "deregister keeps implicit route with backends left",
			setup: []Command{create(be("10.0.0.1", 80)), reg(be("10.0.0.2", 80))},
			cmd:   &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 80},
			route: ptr(implicit(route(8080, "web", be("10.0.0.2", 80)))),
			want:  []Route{implicit(route(8080, "web", be("10.0.0.2", 80)))}},

		// ExpireLeases.
		{name: "expire nothing",
			setup: []Command{create(leased("10.0.0.1", 80, "pod-1", t0))},
			cmd:   &ExpireLeases{Now: t0.Add(-time.Nanosecond)},
			want:  []Route{implicit(route(8080, "web", leased("10.0.0.1", 80, "pod-1", t0)))}},
		{name: "expire at the instant, implicit route removed, explicit kept, unleased kept",
			setup: []Command{
				create(leased("10.0.0.1", 80, "pod-1", t0)),
				&UpsertRoute{Route: route(8081, "api", leased("10.0.0.1", 80, "pod-1", t0))},
				&UpsertRoute{Route: route(8082, "db", be("10.0.0.5", 5432), leased("10.0.0.6", 5432, "", t0.Add(-time.Hour)),
					leased("10.0.0.7", 5432, "", t0.Add(time.Second)))},
				&RegisterBackend{Port: 8083, Backend: be("10.0.0.8", 80), Create: ptr(route(8083, "static"))},
			},
			cmd:     &ExpireLeases{Now: t0},
			expired: 3,
			want: []Route{
				route(8081, "api"),
				route(8082, "db", be("10.0.0.5", 5432), leased("10.0.0.7", 5432, "", t0.Add(time.Second))),
				implicit(route(8083, "static", be("10.0.0.8", 80))),
			}},
		{name: "expire with zero now is refused", cmd: &ExpireLeases{}, err: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			mustApply(t, f, tt.setup...)
			before := f.State()
			res := applyLog(t, f, tt.cmd)
			after := f.State()
			if after.Index != before.Index+1 {
				t.Errorf("Index = %d, want %d", after.Index, before.Index+1)
			}
			if tt.err != nil {
				if !errors.Is(res.Err, tt.err) {
					t.Fatalf("Err = %v, want %v", res.Err, tt.err)
				}
				if res.Route != nil || res.Deleted || res.Expired != 0 {
					t.Errorf("failed command reported %+v", res)
				}
				if after.Hash() != before.Hash() || !reflect.DeepEqual(after.Routes(), before.Routes()) {
					t.Errorf("failed command changed the table")
				}
			} else if res.Err != nil {
				t.Fatalf("Err = %v", res.Err)
			}
			if !reflect.DeepEqual(res.Route, tt.route) {
				t.Errorf("Result.Route = %+v, want %+v", res.Route, tt.route)
			}
			if res.Deleted != tt.deleted || res.Expired != tt.expired {
				t.Errorf("Deleted, Expired = %v, %d, want %v, %d", res.Deleted, res.Expired, tt.deleted, tt.expired)
			}
			if tt.want != nil {
				if got := after.Routes(); !reflect.DeepEqual(got, tt.want) {
					t.Errorf("table:\n got %+v\nwant %+v", got, tt.want)
				}
			}
			checkInvariants(t, after)
			testSnapshotRestore(t, f)
		})
	}
}

// checkInvariants asserts what every reachable State satisfies.
func checkInvariants(t testing.TB, s *State) {
	t.Helper()
	routes := s.Routes()
	backends := 0
	for i, r := range routes {
		if i > 0 && routes[i-1].Port >= r.Port {
			t.Fatalf("routes not strictly sorted by port: %d then %d", routes[i-1].Port, r.Port)
		}
		canon := r.Clone()
		if err := canon.Validate(); err != nil {
			t.Fatalf("route %d does not validate: %v", r.Port, err)
		}
		if !reflect.DeepEqual(canon, r) {
			t.Fatalf("route %d is not canonical:\n got %+v\nwant %+v", r.Port, r, canon)
		}
		if r.Implicit && len(r.Backends) == 0 {
			t.Fatalf("implicit route %d has no backends", r.Port)
		}
		for j := 1; j < len(r.Backends); j++ {
			if CompareBackends(r.Backends[j-1], r.Backends[j]) >= 0 {
				t.Fatalf("route %d backends not strictly sorted: %v", r.Port, r.Backends)
			}
		}
		backends += len(r.Backends)
	}
	if s.Len() != len(routes) || s.BackendCount() != backends {
		t.Fatalf("Len, BackendCount = %d, %d, want %d, %d", s.Len(), s.BackendCount(), len(routes), backends)
	}
}

func TestApplyUnknownAndGarbage(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		err     error
		unknown uint64
	}{
		{"unknown type", []byte{42, 1, '{', '}'}, ErrUnknownCommand, 1},
		{"unknown type ignorable", []byte{42 | 0x80, 1, '{', '}'}, nil, 0},
		{"unknown version", []byte{byte(CmdDeleteRoute), 9, '{', '}'}, ErrUnknownCommand, 1},
		{"unknown version ignorable", []byte{byte(CmdDeleteRoute) | 0x80, 9, '{', '}'}, nil, 0},
		{"known command that fails validation", []byte("\x02\x01{}"), ErrInvalid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			mustApply(t, f, &UpsertRoute{Route: route(80, "web")})
			before := f.State()
			out := f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: tt.data})
			res := out.(Result)
			if !errors.Is(res.Err, tt.err) || (tt.err == nil && res.Err != nil) {
				t.Errorf("Err = %v, want %v", res.Err, tt.err)
			}
			if s := f.State(); s.Index != 7 || s.Hash() != before.Hash() {
				t.Errorf("Index, Hash = %d, %s; want 7, unchanged", s.Index, s.Hash())
			}
			if got := f.UnknownCommands(); got != tt.unknown {
				t.Errorf("UnknownCommands = %d, want %d", got, tt.unknown)
			}
		})
	}

	for _, data := range [][]byte{nil, {1}, {1, 1, 'x'}} {
		t.Run(fmt.Sprintf("garbage %q panics", data), func(t *testing.T) {
			f := New()
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), "malformed") {
					t.Errorf("recover() = %v, want a malformed-entry panic", r)
				}
				if f.State().Index != 0 {
					t.Errorf("garbage advanced Index")
				}
			}()
			f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		})
	}
}

type foreignCommand struct{}

func (foreignCommand) Type() CommandType { return 77 }
func (foreignCommand) Validate() error   { return nil }

func TestApplyCommandEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		cmd  Command
		err  error
	}{
		{"nil", nil, ErrInvalid},
		{"typed nil", (*UpsertRoute)(nil), ErrInvalid},
		{"foreign type", foreignCommand{}, ErrUnknownCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			if res := f.ApplyCommand(3, tt.cmd); !errors.Is(res.Err, tt.err) {
				t.Errorf("Err = %v, want %v", res.Err, tt.err)
			}
			if f.State().Index != 3 || f.State().Len() != 0 {
				t.Errorf("state = %d routes at %d", f.State().Len(), f.State().Index)
			}
		})
	}
}

// ApplyCommand must neither modify its argument nor keep references into it.
func TestApplyCommandIsolatesCaller(t *testing.T) {
	f := New()
	cmd := &UpsertRoute{Route: route(80, "web", be("10.0.0.2", 80), be("::ffff:10.0.0.1", 80))}
	orig := cmd.Route.Clone()
	res := f.ApplyCommand(1, cmd)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if !reflect.DeepEqual(cmd.Route, orig) {
		t.Errorf("command modified: %+v", cmd.Route)
	}
	hash := f.State().Hash()
	cmd.Route.Backends[0].Address = "10.9.9.9"
	res.Route.Backends[0].Address = "10.9.9.8"
	got, _ := f.State().Route(80)
	got.Backends[0].Address = "10.9.9.7"
	s := f.State()
	s.hash.Store(nil) // recompute from the routes themselves
	if s.Hash() != hash {
		t.Errorf("state changed through a caller's slice: %+v", s.Routes())
	}
}

func TestSnapshotIsImmutable(t *testing.T) {
	f := New()
	mustApply(t, f, &UpsertRoute{Route: route(80, "web", be("10.0.0.1", 80))})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := f.State()
	mustApply(t, f,
		&RegisterBackend{Port: 80, Backend: be("10.0.0.2", 80)},
		&UpsertRoute{Route: route(81, "api")},
		&DeleteRoute{Port: 80})
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	got, err := ReadSnapshot(&sink.Buffer)
	if err != nil {
		t.Fatal(err)
	}
	assertSameState(t, want, got)
}

type failingSink struct{ memSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPersistCancelsOnError(t *testing.T) {
	f := New()
	mustApply(t, f, &UpsertRoute{Route: route(80, "web")})
	snap, _ := f.Snapshot()
	sink := &failingSink{}
	err := snap.Persist(sink)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Persist = %v, want disk full", err)
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink cancelled=%v closed=%v, want cancelled only", sink.cancelled, sink.closed)
	}
}

func TestRestoreRejects(t *testing.T) {
	good := `{"port":80,"name":"web","mode":"tcp","balance":"roundrobin","sticky":true,"health_check":true,"backends":[]}`
	tests := []struct {
		name string
		data string
		want string
	}{
		{"empty", ``, "read snapshot"},
		{"not json", `hello`, "read snapshot"},
		{"no format", `{"index":3,"routes":[]}`, "not a drawbridge snapshot"},
		{"newer format", `{"format":4,"index":3,"routes":{}}`, "format 4 is not supported"},
		{"trailing data", `{"format":1,"index":3,"routes":[]} {}`, "unexpected data"},
		{"routes not a list", `{"format":1,"index":3,"routes":{}}`, "routes"},
		{"invalid route", `{"format":1,"index":3,"routes":[` + strings.Replace(good, `"web"`, `"Web"`, 1) + `]}`, "invalid"},
		{"injected balance", `{"format":1,"index":3,"routes":[` + strings.Replace(good, `"roundrobin"`, `"roundrobin\nx"`, 1) + `]}`, "balance"},
		{"duplicate port", `{"format":1,"index":3,"routes":[` + good + `,` + good + `]}`, "two routes on port 80"},
		{"empty implicit route", `{"format":1,"index":3,"routes":[` + strings.Replace(good, `"sticky"`, `"implicit":true,"sticky"`, 1) + `]}`, "implicit route on port 80 has no backends"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			mustApply(t, f, &UpsertRoute{Route: route(81, "api")})
			before := f.State()
			ch := f.Changed()
			err := f.Restore(io.NopCloser(strings.NewReader(tt.data)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Restore = %v, want error containing %q", err, tt.want)
			}
			if f.State() != before {
				t.Errorf("failed restore replaced the state")
			}
			select {
			case <-ch:
				t.Errorf("failed restore signalled Changed")
			default:
			}
		})
	}
}

func TestRestoreAcceptsUnknownFieldsAndSortsRoutes(t *testing.T) {
	data := `{"format":1,"index":9,"written_by":"v2","routes":[
	 {"port":82,"name":"b","mode":"tcp","balance":"first","sticky":false,"health_check":true,"backends":[{"address":"10.0.0.2","port":1},{"address":"::ffff:10.0.0.1","port":1,"weight":5}],"future":1},
	 {"port":81,"name":"a","mode":"tcp","balance":"roundrobin","sticky":true,"health_check":true,"backends":null}]}`
	f := New()
	if err := f.Restore(io.NopCloser(strings.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	b := route(82, "b", be("10.0.0.1", 1), be("10.0.0.2", 1))
	b.Balance, b.Sticky = BalanceFirst, false
	if got, want := f.State().Routes(), []Route{route(81, "a"), b}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if f.State().Index != 9 {
		t.Errorf("Index = %d, want 9", f.State().Index)
	}
	checkInvariants(t, f.State())
}

func TestHash(t *testing.T) {
	empty := sha256.Sum256([]byte("[]"))
	if got := New().State().Hash(); got != hex.EncodeToString(empty[:]) {
		t.Errorf("empty hash = %s", got)
	}
	if got := (&State{}).Hash(); got != hex.EncodeToString(empty[:]) {
		t.Errorf("zero State hash = %s", got)
	}
	a, b := New(), New()
	mustApply(t, a,
		&UpsertRoute{Route: route(80, "web", be("10.0.0.1", 80), be("10.0.0.2", 80))},
		&UpsertRoute{Route: route(81, "api")})
	mustApply(t, b,
		&UpsertRoute{Route: route(81, "api")},
		&UpsertRoute{Route: route(80, "web", be("::ffff:10.0.0.2", 80))},
		&RegisterBackend{Port: 80, Backend: be("10.0.0.1", 80)})
	if res := applyLog(t, b, &DeleteRoute{Port: 1234}); !errors.Is(res.Err, ErrNotFound) { // advances Index only
		t.Fatalf("delete absent: %v", res.Err)
	}
	if a.State().Hash() != b.State().Hash() {
		t.Errorf("same table, different hash")
	}
	if a.State().Index == b.State().Index {
		t.Errorf("test wants different indexes")
	}
	mustApply(t, b, &RegisterBackend{Port: 80, Backend: leased("10.0.0.1", 80, "", t0)})
	if a.State().Hash() == b.State().Hash() {
		t.Errorf("a lease change must change the hash")
	}
}

func TestReplayIsDeterministic(t *testing.T) {
	log := [][]byte{}
	add := func(c Command) {
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, data)
	}
	add(&UpsertRoute{Route: route(80, "web", be("10.0.0.2", 80), be("10.0.0.1", 80))})
	add(&RegisterBackend{Port: 81, Backend: leased("2001:db8::1", 80, "pod-1", t0), Create: ptr(route(81, "api"))})
	add(&RegisterBackend{Port: 81, Backend: leased("10.0.0.1", 80, "pod-2", t0.Add(time.Minute))})
	add(&UpsertRoute{Route: route(80, "other")}) // conflict
	add(&ExpireLeases{Now: t0})
	add(&DeregisterBackend{Port: 80, Address: "10.0.0.2", BackendPort: 80})
	add(&UpsertRoute{Route: route(82, "db")})
	add(&DeleteRoute{Port: 82})

	a, b := New(), New()
	for i, data := range log {
		for _, f := range []*FSM{a, b} {
			f.Apply(&raft.Log{Index: uint64(i + 10), Type: raft.LogCommand, Data: bytes.Clone(data)})
		}
		assertSameState(t, a.State(), b.State())
	}
	if a.State().Index != uint64(len(log)+9) {
		t.Errorf("Index = %d", a.State().Index)
	}
	testSnapshotRestore(t, a)
}

func TestChanged(t *testing.T) {
	wait := func(t *testing.T, ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("Changed did not fire on %s", what)
		}
	}
	f := New()
	ch := f.Changed()
	select {
	case <-ch:
		t.Fatal("Changed fired before any change")
	default:
	}
	mustApply(t, f, &UpsertRoute{Route: route(80, "web")})
	wait(t, ch, "apply")

	ch = f.Changed()
	applyLog(t, f, &DeleteRoute{Port: 99}) // refused, but Index advances
	wait(t, ch, "refused command")

	ch = f.Changed()
	f.Apply(&raft.Log{Index: 50, Data: []byte{99 | 0x80, 1}})
	wait(t, ch, "ignored unknown command")

	data := persist(t, f)
	g := New()
	ch = g.Changed()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	wait(t, ch, "restore")

	// A consumer that never reads does not block Apply.
	for i := range 100 {
		applyLog(t, g, &UpsertRoute{Route: route(1000+i, "web")})
	}
}

// Readers, snapshots and Apply run concurrently; run with -race.
func TestConcurrentReaders(t *testing.T) {
	f := New()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				ch := f.Changed()
				s := f.State()
				_ = s.Hash()
				for _, r := range s.Routes() {
					_ = r.Backends
				}
				if snap, err := f.Snapshot(); err == nil {
					_ = snap.Persist(&memSink{})
				}
				select {
				case <-stop:
					return
				case <-ch:
				}
			}
		})
	}
	for i := range 500 {
		applyLog(t, f, &RegisterBackend{Port: 80 + i%7, Backend: be(fmt.Sprintf("10.0.0.%d", i%50+1), 80),
			Create: ptr(route(80+i%7, fmt.Sprintf("r%d", i%7)))})
	}
	close(stop)
	wg.Wait()
	checkInvariants(t, f.State())
}
