package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// runtimeIdle is how long a kept-open runtime API connection may sit idle
// before it is replaced rather than used: HAProxy closes CLI connections
// after `stats timeout` (10 s unless set, and drawbridge does not set it),
// and a connection it closed could swallow a command without an answer.
const runtimeIdle = 5 * time.Second

// prompt ends every answer in the CLI's interactive mode; each answer
// itself ends with a newline.
var prompt = []byte("\n> ")

// runtimeConn is one connection to the live worker's runtime API (the stats
// socket), kept open in the CLI's interactive ("prompt") mode so that a
// burst of changes does not pay a connection, on both sides, per update.
// It belongs to one worker: the Manager closes it before every reload or
// restart, and when it notices a reload it did not make, so it does not
// talk to a worker on its way out (such a worker, kept alive by its
// clients, would still answer, and take some of the commands; see below).
// It is guarded by the Manager's opMu.
//
// Closing it is not enough: for a moment after the master names the new
// worker, the old one still accepts on the stats socket, which the workers
// share (measured on HAProxy 2.6.12 at 5,000 frontends: in 2 of 4 reloads
// the old worker answered connections opened 2 to 5 ms after the new worker
// was listed). A stopping worker takes `add map`, `del map` and `add
// server` but refuses `set server ... state`, so a change sent there is
// made in part in a process on its way out, fails, and costs a needless
// reload (2 in 60 server-only changes made right after a reload at 5,000
// routes, 0.7 s each). So a new connection asks the worker its PID and is
// used only when it is worker, the one the master names as current;
// otherwise it is dropped and dialled again, unless the master names the
// process that answered as its current worker: then HAProxy was reloaded
// by someone else, what that worker runs is unknown, and the caller
// reloads at once rather than wait for a worker that is gone.
type runtimeConn struct {
	sock   string
	master string // the master CLI, asked when another process answers
	// worker is the PID of the current worker (0: not known, any will do).
	worker int
	c      net.Conn
	used   time.Time
	buf    []byte
}

// close drops the connection; the next exchange dials a new one.
func (rc *runtimeConn) close() {
	if rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
}

// exchange sends line (n commands joined by ";") and returns their answers
// one after the other, as the non-interactive CLI prints them. Any error
// closes the connection: what HAProxy did with the line is then unknown,
// and the caller reloads.
func (rc *runtimeConn) exchange(ctx context.Context, line string, n int) (string, error) {
	if rc.c != nil && time.Since(rc.used) > runtimeIdle {
		rc.close()
	}
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if rc.c == nil {
		if err := rc.dial(ctx); err != nil {
			return "", err
		}
	}
	_ = rc.c.SetDeadline(deadline)
	out, err := rc.roundTrip(line, n)
	if err != nil {
		rc.close()
		return "", fmt.Errorf("runtime API %q: %w", truncateText(line, 300), err)
	}
	rc.used = time.Now()
	return out, nil
}

// workerRedial is how long dial waits before it tries again after reaching
// a worker other than the current one.
const workerRedial = 2 * time.Millisecond

// dial opens the connection in interactive mode and, when the current
// worker is known, keeps it only if that worker answered; until ctx ends it
// dials again.
func (rc *runtimeConn) dial(ctx context.Context) error {
	deadline, _ := ctx.Deadline()
	wrong := 0 // the last process that answered instead of the current worker
	fail := func(err error) error {
		rc.close()
		if wrong != 0 {
			return fmt.Errorf("runtime API %s: answered by process %d, not the current worker %d; then: %w", rc.sock, wrong, rc.worker, err)
		}
		return fmt.Errorf("runtime API %s: %w", rc.sock, err)
	}
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", rc.sock)
		if err != nil {
			return fail(err)
		}
		rc.c = c
		_ = c.SetDeadline(deadline)
		if _, err := rc.roundTrip("prompt", 1); err != nil {
			return fail(fmt.Errorf("interactive mode: %w", err))
		}
		if rc.worker == 0 {
			return nil
		}
		out, err := rc.roundTrip("show info", 1)
		if err != nil {
			return fail(fmt.Errorf("show info: %w", err))
		}
		pid, _ := strconv.Atoi(infoField(out, "Pid"))
		if pid == rc.worker {
			return nil
		}
		wrong = pid
		rc.close()
		if rc.master != "" && pid != 0 {
			if p, err := showProc(ctx, rc.master); err == nil && p.currentWorker() == pid {
				return fail(errOtherWorker)
			}
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(workerRedial):
		}
	}
}

// errOtherWorker is the master naming as current a worker this Manager did
// not see start.
var errOtherWorker = errors.New("the master names it as its current worker: HAProxy was reloaded outside drawbridge")

// errTrailing is an answer that goes on after the prompts it should end
// with: the connection is out of step with the commands.
var errTrailing = errors.New("answer continues after its last prompt")

// roundTrip writes line and reads until n prompts have come back.
func (rc *runtimeConn) roundTrip(line string, n int) (string, error) {
	if _, err := rc.c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	rc.buf = rc.buf[:0]
	var chunk [4096]byte
	for {
		k, err := rc.c.Read(chunk[:])
		rc.buf = append(rc.buf, chunk[:k]...)
		if got := bytes.Count(rc.buf, prompt); got >= n && bytes.HasSuffix(rc.buf, prompt) {
			if got > n {
				return "", errTrailing
			}
			// Each answer is followed by "> ": dropping those leaves the
			// answers as the one-shot CLI gives them.
			return string(bytes.ReplaceAll(rc.buf, prompt, []byte("\n"))), nil
		}
		if err != nil {
			return "", fmt.Errorf("%w after %q", err, truncateText(string(rc.buf), 300))
		}
	}
}
