package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// A batch entry (CmdBatch) holds several commands, each as Encode wrote
// it. They apply in order at the entry's index, as if each had an entry of
// its own at that index, and each has its own Result: one command's refusal
// changes nothing for the others. The leader packs the writes that wait
// while one entry commits into the next (cluster.Node), so raft stores,
// replicates and hands over one entry for many writes.
//
// A node built before batches cannot read one (it counts it unknown and its
// table falls behind), so the leader writes batches only while every voter
// and every member that may become one announces that it reads them
// (cluster.Meta.Batches).

// batchVersion is the batch layout this build writes and reads: after the
// type and version bytes, each command as a uvarint length and the command's
// bytes.
const batchVersion = 1

// ErrBatch refuses a batch Encode would never write: empty, an empty or
// nested entry.
var ErrBatch = errors.New("invalid batch")

// EncodeBatch packs encoded commands (Encode's output, two or more) into one
// log entry. Apply answers it with a []Result, one per command, in order.
func EncodeBatch(entries [][]byte) ([]byte, error) {
	if len(entries) < 2 {
		return nil, fmt.Errorf("%w: %d commands, need two or more", ErrBatch, len(entries))
	}
	size := 2
	for i, e := range entries {
		if len(e) < 2 {
			return nil, fmt.Errorf("%w: command %d is %d bytes", ErrBatch, i, len(e))
		}
		if isBatch(e) {
			return nil, fmt.Errorf("%w: command %d is itself a batch", ErrBatch, i)
		}
		size += binary.MaxVarintLen64 + len(e)
	}
	out := make([]byte, 0, size)
	out = append(out, byte(CmdBatch), batchVersion)
	for _, e := range entries {
		out = binary.AppendUvarint(out, uint64(len(e)))
		out = append(out, e...)
	}
	return out, nil
}

// splitBatch returns the commands of a batch payload (the bytes after type
// and version), sharing payload's memory. Anything EncodeBatch would not
// have written wraps ErrMalformed.
func splitBatch(payload []byte) ([][]byte, error) {
	var out [][]byte
	for len(payload) > 0 {
		n, k := binary.Uvarint(payload)
		if k <= 0 || n < 2 || n > uint64(len(payload)-k) {
			return nil, fmt.Errorf("%w: batch command %d: bad length", ErrMalformed, len(out))
		}
		e := payload[k : k+int(n)]
		if isBatch(e) {
			return nil, fmt.Errorf("%w: batch command %d is itself a batch", ErrMalformed, len(out))
		}
		out = append(out, e)
		payload = payload[k+int(n):]
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%w: batch of %d commands", ErrMalformed, len(out))
	}
	return out, nil
}

// isBatch reports whether a log entry is a batch (of any version).
func isBatch(data []byte) bool {
	return len(data) >= 2 && CommandType(data[0])&^IgnoreUnknownFlag == CmdBatch
}

// applyBatch applies a batch entry: every command in order at l.Index, the
// table published once. A batch version this build does not read is an
// unknown entry, like any other; a malformed batch or command panics, as
// Apply does for a malformed entry.
func (f *FSM) applyBatch(l *raft.Log) any {
	raw := CommandType(l.Data[0])
	if l.Data[1] != batchVersion {
		return f.unknownEntry(l.Index, &UnknownCommandError{Type: CmdBatch, Version: l.Data[1], Ignorable: raw&IgnoreUnknownFlag != 0})
	}
	entries, err := splitBatch(l.Data[2:])
	if err != nil {
		panic(fmt.Sprintf("drawbridge fsm: log entry %d: %v", l.Index, err))
	}
	cmds := make([]Command, len(entries))
	results := make([]Result, len(entries))
	for i, e := range entries {
		c, err := Decode(e)
		var unknown *UnknownCommandError
		switch {
		case errors.As(err, &unknown):
			if !unknown.Ignorable {
				f.unknown.Add(1)
				results[i].Err = err
			}
			results[i].Index = l.Index
		case err != nil:
			panic(fmt.Sprintf("drawbridge fsm: log entry %d, batch command %d: %v", l.Index, i, err))
		}
		cmds[i] = c
	}
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	st := f.state.Load().at(l.Index)
	for i, c := range cmds {
		if c != nil {
			st, results[i] = st.apply(l.Index, c)
		}
	}
	f.publish(st)
	return results
}
