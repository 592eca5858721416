package fsm

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// t0 is the instant tests build leases around.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func be(addr string, port int) Backend { return Backend{Address: addr, Port: port} }

func leased(addr string, port int, owner string, exp time.Time) Backend {
	return Backend{Address: addr, Port: port, Owner: owner, ExpiresAt: exp}
}

func route(port int, name string, backends ...Backend) Route {
	r := NewRoute(port, name)
	r.Backends = append(r.Backends, backends...)
	return r
}

func implicit(r Route) Route {
	r.Implicit = true
	return r
}

func ptr[T any](v T) *T { return &v }

// applyLog encodes c and applies it to f through raft's entry point, as the
// next index, then round-trips f through a snapshot.
func applyLog(t testing.TB, f *FSM, c Command) Result {
	t.Helper()
	data, err := Encode(c)
	if err != nil {
		t.Fatalf("encode %T: %v", c, err)
	}
	out := f.Apply(&raft.Log{Index: f.State().Index + 1, Type: raft.LogCommand, Data: data})
	res, ok := out.(Result)
	if !ok {
		t.Fatalf("Apply returned %T, want Result", out)
	}
	return res
}

// mustApply applies c and fails the test on a domain error.
func mustApply(t testing.TB, f *FSM, cmds ...Command) {
	t.Helper()
	for _, c := range cmds {
		if res := applyLog(t, f, c); res.Err != nil {
			t.Fatalf("apply %T: %v", c, res.Err)
		}
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// persist snapshots f and returns the bytes Persist wrote.
func persist(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("persist left sink closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// testSnapshotRestore persists f, restores the bytes into a fresh FSM and
// checks both hold the same State.
func testSnapshotRestore(t testing.TB, f *FSM) *FSM {
	t.Helper()
	data := persist(t, f)
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatalf("restore: %v\nsnapshot: %s", err, data)
	}
	assertSameState(t, f.State(), g.State())
	return g
}

func assertSameState(t testing.TB, want, got *State) {
	t.Helper()
	if got.Index != want.Index {
		t.Errorf("Index = %d, want %d", got.Index, want.Index)
	}
	if got.Hash() != want.Hash() {
		t.Errorf("Hash = %s, want %s", got.Hash(), want.Hash())
	}
	if got.Len() != want.Len() || got.BackendCount() != want.BackendCount() {
		t.Errorf("Len/BackendCount = %d/%d, want %d/%d", got.Len(), got.BackendCount(), want.Len(), want.BackendCount())
	}
	if !reflect.DeepEqual(got.Routes(), want.Routes()) {
		t.Errorf("routes differ:\n got %+v\nwant %+v", got.Routes(), want.Routes())
	}
}
