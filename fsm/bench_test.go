package fsm

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// benchTable returns an FSM holding 1,000 routes of 3 leased backends each.
func benchTable(b *testing.B) *FSM {
	b.Helper()
	f := New()
	for i := range 1000 {
		r := route(10000+i, fmt.Sprintf("svc-%d", i))
		for j := range 3 {
			r.Backends = append(r.Backends, leased(fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), 30000+i, "pod", t0))
		}
		f.ApplyCommand(uint64(i+1), &UpsertRoute{Route: r})
	}
	return f
}

// BenchmarkApplyRegister measures one committed RegisterBackend (decode,
// validate, copy-on-write, swap, notify) into a table of 1,000 routes. Most
// iterations refresh an existing backend's lease, as sidecars do.
func BenchmarkApplyRegister(b *testing.B) {
	f := benchTable(b)
	logs := make([]*raft.Log, 4096)
	for i := range logs {
		data, err := Encode(&RegisterBackend{Port: 10000 + i%1000, Name: fmt.Sprintf("svc-%d", i%1000),
			Backend: leased(fmt.Sprintf("10.%d.%d.%d", (i%1000)/250, (i%1000)%250, i%4+1), 30000+i%1000, "pod", t0.Add(time.Duration(i)*time.Second))})
		if err != nil {
			b.Fatal(err)
		}
		logs[i] = &raft.Log{Type: raft.LogCommand, Data: data}
	}
	index := f.State().Index
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l := logs[i%len(logs)]
		index++
		l.Index = index
		if res := f.Apply(l).(Result); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}

type discardSink struct{}

func (discardSink) Write(p []byte) (int, error) { return len(p), nil }
func (discardSink) Close() error                { return nil }
func (discardSink) ID() string                  { return "discard" }
func (discardSink) Cancel() error               { return nil }

var _ io.Writer = discardSink{}

// BenchmarkSnapshotPersist measures Snapshot plus Persist of 1,000 routes
// (3 backends each) into a sink that discards the bytes.
func BenchmarkSnapshotPersist(b *testing.B) {
	f := benchTable(b)
	b.ReportAllocs()
	for b.Loop() {
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if err := snap.Persist(discardSink{}); err != nil {
			b.Fatal(err)
		}
		snap.Release()
	}
}

// BenchmarkHash measures hashing 1,000 routes (computed once per State).
func BenchmarkHash(b *testing.B) {
	s := benchTable(b).State()
	b.ReportAllocs()
	for b.Loop() {
		s.hash.Store(nil)
		_ = s.Hash()
	}
}
