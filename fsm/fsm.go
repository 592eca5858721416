package fsm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// FSM is drawbridge's raft.FSM: a thin adapter that decodes committed log
// entries and applies them to the current State with the pure core
// (ApplyCommand). Readers call State (lock-free) and wait on Changed.
type FSM struct {
	writeMu sync.Mutex // serialises writers: raft never overlaps them, direct callers might
	state   atomic.Pointer[State]

	changedMu sync.Mutex
	changed   chan struct{}

	unknown atomic.Uint64
}

// Interface guard.
var _ raft.FSM = (*FSM)(nil)

// New returns an FSM holding an empty table at index 0.
func New() *FSM {
	f := &FSM{changed: make(chan struct{})}
	f.state.Store(&State{})
	return f
}

// State returns the current table. It never blocks and never returns nil; the
// State is immutable, so it may be kept and read from any goroutine.
func (f *FSM) State() *State { return f.state.Load() }

// Changed returns a channel that is closed the next time the state is
// replaced (every applied entry advances Index; Restore swaps the whole
// table). Call Changed before State so no change falls between them:
//
//	for {
//		ch := f.Changed()
//		render(f.State())
//		<-ch
//	}
//
// Apply never blocks on consumers: it closes the channel and makes a new one.
func (f *FSM) Changed() <-chan struct{} {
	f.changedMu.Lock()
	defer f.changedMu.Unlock()
	return f.changed
}

// UnknownCommands counts entries this node skipped because a newer drawbridge
// wrote them without IgnoreUnknownFlag: non-zero means this node's table may
// differ from the leader's and it should be upgraded.
func (f *FSM) UnknownCommands() uint64 { return f.unknown.Load() }

func (f *FSM) publish(s *State) {
	f.changedMu.Lock()
	defer f.changedMu.Unlock()
	f.state.Store(s)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply implements raft.FSM. It returns a Result (as a value), or for a batch
// entry (CmdBatch) a []Result, one per command. An entry
// written by a newer drawbridge (unknown type or payload version) does not
// change the table: Result.Err carries an *UnknownCommandError, or nothing
// when the writer marked the entry ignorable. Only an entry that cannot be
// decoded at all (ErrMalformed) panics: it means a corrupt log, and applying
// around it would let nodes diverge silently.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		// raft hands only commands to Apply; anything else is not ours.
		return f.advance(l.Index, Result{})
	}
	if isBatch(l.Data) {
		return f.applyBatch(l)
	}
	c, err := Decode(l.Data)
	var unknown *UnknownCommandError
	switch {
	case errors.As(err, &unknown):
		return f.unknownEntry(l.Index, unknown)
	case err != nil:
		panic(fmt.Sprintf("drawbridge fsm: log entry %d: %v", l.Index, err))
	}
	return f.ApplyCommand(l.Index, c)
}

// unknownEntry skips an entry a newer drawbridge wrote: silently when the
// writer marked it ignorable, else counted and answered with the error.
func (f *FSM) unknownEntry(index uint64, unknown *UnknownCommandError) Result {
	if unknown.Ignorable {
		return f.advance(index, Result{})
	}
	f.unknown.Add(1)
	return f.advance(index, Result{Err: unknown})
}

// advance moves Index without changing the table.
func (f *FSM) advance(index uint64, res Result) Result {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	f.publish(f.state.Load().at(index))
	return res
}

// ApplyCommand applies c as the entry at index: it validates a private copy
// of c (so a bad entry never changes the table), computes the next State and
// swaps it in, and always advances Index. It is deterministic: the result
// depends only on the current State, index and c.
func (f *FSM) ApplyCommand(index uint64, c Command) Result {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	next, res := f.state.Load().apply(index, c)
	f.publish(next)
	return res
}

// Snapshot implements raft.FSM. It captures the current State pointer: O(1),
// and later Applies cannot change what it persists.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.state.Load()}, nil
}

// Restore implements raft.FSM: it reads a snapshot (see ReadSnapshot) into a
// fresh State, and only if the whole snapshot is valid swaps it in and
// signals Changed. On error the current table is kept.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := ReadSnapshot(bufio.NewReader(rc))
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	f.publish(s)
	return nil
}

// fsmSnapshot is a State on its way to disk.
type fsmSnapshot struct {
	state *State
}

// Persist implements raft.FSMSnapshot: it writes the snapshot format and
// closes the sink, or cancels it on error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 64<<10)
	err := WriteSnapshot(w, s.state)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot at index %d: %w", s.state.Index, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot at index %d: close: %w", s.state.Index, err)
	}
	return nil
}

// Release implements raft.FSMSnapshot. Nothing to free: the State is shared.
func (s *fsmSnapshot) Release() {}
