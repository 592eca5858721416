package cluster

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Group commit. While one entry commits, the leader's writes queue; the next
// entry carries all of them (fsm.CmdBatch), so raft stores, replicates and
// hands over one entry for many writes, on every node. A write that finds
// nothing in flight goes at once, alone, in an ordinary entry: batching adds
// no wait. It is on only while the reconciler finds that every voter (and
// every member that may become one) reads batch entries, in this term.

const (
	// maxBatchCommands and maxBatchBytes bound one batch entry. Raft keeps
	// the last logCacheEntries entries in memory, so the byte bound caps
	// that cache: 16 MiB at worst. A route's command is a few hundred
	// bytes: 64 KiB is a batch of a hundred or more.
	maxBatchCommands = 128
	maxBatchBytes    = 64 << 10
	// logCacheEntries is how many of the last log entries raft keeps in
	// memory to replicate from. A follower keeping up reads only the
	// last few; one further behind reads the rest from disk.
	logCacheEntries = 256
	// maxBatchedCommand: a larger command (a whole table) goes alone.
	maxBatchedCommand = 16 << 10
)

// proposal is one write waiting for the batcher.
type proposal struct {
	data     []byte
	start    time.Time
	deadline time.Time
	done     chan proposalResult // buffered: the batcher never waits
}

type proposalResult struct {
	res fsm.Result
	err error
}

func newProposal(data []byte, timeout time.Duration) *proposal {
	now := time.Now()
	return &proposal{data: data, start: now, deadline: now.Add(timeout), done: make(chan proposalResult, 1)}
}

func (p *proposal) answer(res fsm.Result, err error) { p.done <- proposalResult{res, err} }

// wait returns p's answer.
func (p *proposal) wait() (fsm.Result, error) {
	r := <-p.done
	return r.res, r.err
}

// batching reports whether writes go through the batcher now.
func (n *Node) batching() bool {
	t := n.batchTerm.Load()
	return t != 0 && t == n.CurrentTerm()
}

// allowBatches records whether every voter reads batch entries, as found
// while this node led in term (0 or false: one entry per command). A later
// term turns batching off until the reconciler checks again.
func (n *Node) allowBatches(term uint64, ok bool) {
	if !ok {
		term = 0
	}
	n.batchTerm.Store(term)
}

// propose hands p to the batcher and waits for its commit.
func (n *Node) propose(p *proposal) (fsm.Result, error) {
	select {
	case n.proposals <- p:
	case <-n.done:
		return fsm.Result{}, ErrShutdown
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-n.done:
		return fsm.Result{}, ErrShutdown
	}
}

// batchProposals is the batcher: it takes the proposals waiting (up to the
// bounds), commits them as one entry, answers each, and starts again.
func (n *Node) batchProposals() {
	batch := make([]*proposal, 0, maxBatchCommands)
	var next *proposal
	for {
		if next == nil {
			select {
			case next = <-n.proposals:
			case <-n.done:
				return
			}
		}
		batch = append(batch[:0], next)
		size := len(next.data)
		next = nil
	fill:
		for len(batch) < maxBatchCommands {
			select {
			case p := <-n.proposals:
				if size+len(p.data) > maxBatchBytes {
					next = p
					break fill
				}
				batch = append(batch, p)
				size += len(p.data)
			default:
				break fill
			}
		}
		n.commitBatch(batch)
	}
}

// commitBatch commits batch's proposals (those with time left) as one entry
// and answers each with its own result. If batching was turned off while
// they waited, each goes in an entry of its own.
func (n *Node) commitBatch(batch []*proposal) {
	now := time.Now()
	live := batch[:0]
	var last time.Time
	for _, p := range batch {
		if !now.Before(p.deadline) {
			p.answer(fsm.Result{}, fmt.Errorf("%w: no time left before the request deadline", ErrCommitTimeout))
			continue
		}
		live = append(live, p)
		if p.deadline.After(last) {
			last = p.deadline
		}
	}
	switch {
	case len(live) == 0:
	case len(live) == 1 || !n.batching():
		if len(live) == 1 {
			n.metrics.entryCommands.Observe(1)
		}
		futs := make([]raft.ApplyFuture, len(live))
		for i, p := range live {
			futs[i] = n.raft.Apply(p.data, last.Sub(now))
		}
		for i := range live {
			n.answerFuture(live[i:i+1], futs[i])
		}
	default:
		entries := make([][]byte, len(live))
		for i, p := range live {
			entries[i] = p.data
		}
		data, err := fsm.EncodeBatch(entries)
		if err != nil {
			n.fail(live, err)
			return
		}
		n.metrics.entryCommands.Observe(float64(len(live)))
		n.answerFuture(live, n.raft.Apply(data, last.Sub(now)))
	}
}

// answerFuture waits for fut, the entry holding live's commands, and
// answers each of them.
func (n *Node) answerFuture(live []*proposal, fut raft.ApplyFuture) {
	if err := fut.Error(); err != nil {
		n.fail(live, n.translate(err))
		return
	}
	switch resp := fut.Response().(type) {
	case fsm.Result:
		// One command alone; or a whole batch the FSM could not read,
		// which answers every command the same.
		for _, p := range live {
			n.metrics.applyDuration.Observe(time.Since(p.start).Seconds())
			p.answer(resp, nil)
		}
	case []fsm.Result:
		if len(resp) != len(live) {
			n.fail(live, fmt.Errorf("batch of %d commands answered with %d results", len(live), len(resp)))
			return
		}
		for i, p := range live {
			n.metrics.applyDuration.Observe(time.Since(p.start).Seconds())
			p.answer(resp[i], nil)
		}
	default:
		n.fail(live, fmt.Errorf("unexpected apply response %T", fut.Response()))
	}
}

// fail answers every proposal in live with err.
func (n *Node) fail(live []*proposal, err error) {
	for _, p := range live {
		n.metrics.applyFailures.Inc()
		p.answer(fsm.Result{}, err)
	}
}
