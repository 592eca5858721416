package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// encodeAll encodes cmds for a batch.
func encodeAll(t testing.TB, cmds ...Command) [][]byte {
	t.Helper()
	out := make([][]byte, len(cmds))
	for i, c := range cmds {
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = data
	}
	return out
}

// applyBatchLog packs entries into one batch entry, applies it at the next
// index and returns its results.
func applyBatchLog(t testing.TB, f *FSM, entries [][]byte) []Result {
	t.Helper()
	data, err := EncodeBatch(entries)
	if err != nil {
		t.Fatal(err)
	}
	out := f.Apply(&raft.Log{Index: f.State().Index + 1, Type: raft.LogCommand, Data: data})
	res, ok := out.([]Result)
	if !ok {
		t.Fatalf("Apply of a batch returned %T, want []Result", out)
	}
	if len(res) != len(entries) {
		t.Fatalf("%d results for %d commands", len(res), len(entries))
	}
	return res
}

// replayInBatches applies log (entry i answered results[i] when applied
// alone) to a fresh FSM packed into batches of one to eight commands, and
// checks every command's result and the final table against the one-by-one
// run.
func replayInBatches(t *testing.T, r *rand.Rand, log [][]byte, results []Result, want *State) {
	t.Helper()
	f := New()
	for i := 0; i < len(log); {
		n := min(1+r.IntN(8), len(log)-i)
		var got []Result
		if n == 1 {
			got = []Result{f.Apply(&raft.Log{Index: f.State().Index + 1, Type: raft.LogCommand, Data: bytes.Clone(log[i])}).(Result)}
		} else {
			got = applyBatchLog(t, f, log[i:i+n])
		}
		for j, res := range got {
			w := results[i+j]
			if fmt.Sprint(res.Err) != fmt.Sprint(w.Err) || res.Deleted != w.Deleted || res.Expired != w.Expired || !reflect.DeepEqual(res.Route, w.Route) {
				t.Fatalf("command %d in a batch of %d: result %+v, alone %+v", i+j+1, n, res, w)
			}
			if res.Index != f.State().Index {
				t.Fatalf("command %d: Index %d, the batch's entry is %d", i+j+1, res.Index, f.State().Index)
			}
		}
		i += n
	}
	if f.State().Hash() != want.Hash() || !reflect.DeepEqual(f.State().Routes(), want.Routes()) {
		t.Fatalf("table after the batches differs:\n got %+v\nwant %+v", f.State().Routes(), want.Routes())
	}
}

func TestBatchAppliesEachCommandInOrder(t *testing.T) {
	f := New()
	mustApply(t, f, &UpsertRoute{Route: route(80, "web", be("10.0.0.1", 8080))})
	before := f.State()
	ch := f.Changed()
	res := applyBatchLog(t, f, encodeAll(t,
		&UpsertRoute{Route: route(81, "api", be("10.0.0.2", 8080))},
		&UpsertRoute{Route: route(80, "other", be("10.0.0.3", 8080))}, // port taken: refused alone
		&RegisterBackend{Port: 81, Backend: be("10.0.0.4", 8080)},     // sees the first command
		&DeleteRoute{Port: 80},
	))
	if res[0].Err != nil || res[0].Route == nil || res[0].Route.Name != "api" {
		t.Fatalf("first command: %+v", res[0])
	}
	if !errors.Is(res[1].Err, ErrPortTaken) {
		t.Fatalf("second command: %v, want ErrPortTaken", res[1].Err)
	}
	if res[2].Err != nil || len(res[2].Route.Backends) != 2 {
		t.Fatalf("third command: %+v, want the route the first created with two backends", res[2])
	}
	if res[3].Err != nil || !res[3].Deleted {
		t.Fatalf("fourth command: %+v", res[3])
	}
	st := f.State()
	if st.Index != before.Index+1 {
		t.Fatalf("Index %d, want %d: one entry", st.Index, before.Index+1)
	}
	for i, r := range res {
		if r.Index != st.Index {
			t.Fatalf("result %d: Index %d, want the entry's %d", i, r.Index, st.Index)
		}
	}
	if _, ok := st.Route(80); ok || st.BackendCount() != 2 {
		t.Fatalf("table %+v", st.Routes())
	}
	select {
	case <-ch:
	default:
		t.Fatal("Changed not signalled")
	}
	// Before and after a snapshot, the same table.
	testSnapshotRestore(t, f)
}

func TestEncodeBatchRefuses(t *testing.T) {
	one := encodeAll(t, &DeleteRoute{Port: 80})[0]
	nested, err := EncodeBatch([][]byte{one, one})
	if err != nil {
		t.Fatal(err)
	}
	for name, entries := range map[string][][]byte{
		"none":   nil,
		"one":    {one},
		"empty":  {one, {}},
		"short":  {one, {1}},
		"nested": {one, nested},
	} {
		if _, err := EncodeBatch(entries); !errors.Is(err, ErrBatch) {
			t.Errorf("%s: %v, want ErrBatch", name, err)
		}
	}
}

func TestMalformedBatchPanics(t *testing.T) {
	one := encodeAll(t, &DeleteRoute{Port: 80})[0]
	good, err := EncodeBatch([][]byte{one, one})
	if err != nil {
		t.Fatal(err)
	}
	nested := append([]byte{byte(CmdBatch), batchVersion, byte(len(good))}, good...)
	nested = append(nested, byte(len(one)))
	nested = append(nested, one...)
	for name, data := range map[string][]byte{
		"truncated":    good[:len(good)-1],
		"length past":  append(append([]byte{}, good[:2]...), 0x7f, 1, 2),
		"one command":  good[:2+1+len(one)],
		"no commands":  good[:2],
		"nested batch": nested,
		"bad command":  append(append([]byte{}, good[:2+1+len(one)]...), 3, byte(CmdDeleteRoute), 2, '{'),
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), ErrMalformed.Error()) {
					t.Fatalf("recovered %v, want a panic on a malformed entry", r)
				}
			}()
			New().Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		})
	}
}

func TestBatchFromNewerBuild(t *testing.T) {
	one := encodeAll(t, &UpsertRoute{Route: route(80, "web", be("10.0.0.1", 8080))})[0]
	good, err := EncodeBatch([][]byte{one, one})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("newer batch version", func(t *testing.T) {
		f := New()
		data := bytes.Clone(good)
		data[1] = batchVersion + 1
		res, ok := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(Result)
		if !ok || !errors.Is(res.Err, ErrUnknownCommand) || f.UnknownCommands() != 1 || f.State().Len() != 0 || f.State().Index != 1 {
			t.Fatalf("result %+v, unknown %d, table %d routes at %d", res, f.UnknownCommands(), f.State().Len(), f.State().Index)
		}
	})
	t.Run("newer command inside", func(t *testing.T) {
		f := New()
		newer := []byte{99, 1, '{', '}'}
		ignorable := []byte{byte(99 | IgnoreUnknownFlag), 1, '{', '}'}
		res := applyBatchLog(t, f, [][]byte{newer, one, ignorable})
		if !errors.Is(res[0].Err, ErrUnknownCommand) || res[1].Err != nil || res[2].Err != nil {
			t.Fatalf("results %+v", res)
		}
		if f.UnknownCommands() != 1 || f.State().Len() != 1 {
			t.Fatalf("unknown %d, %d routes: want 1 and the known command applied", f.UnknownCommands(), f.State().Len())
		}
	})
}

func TestDecodeRefusesBatch(t *testing.T) {
	one := encodeAll(t, &DeleteRoute{Port: 80})[0]
	data, err := EncodeBatch([][]byte{one, one})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(data); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Decode(batch) = %v, want ErrMalformed", err)
	}
	if CmdBatch.String() != "batch" {
		t.Fatalf("CmdBatch.String() = %q", CmdBatch.String())
	}
}
