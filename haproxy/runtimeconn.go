package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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
// clients, would still answer; HAProxy 2.6 refuses server changes on its
// disabled proxies, but not every command). It is guarded by the Manager's
// opMu.
type runtimeConn struct {
	sock string
	c    net.Conn
	used time.Time
	buf  []byte
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
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", rc.sock)
		if err != nil {
			return "", fmt.Errorf("runtime API %s: %w", rc.sock, err)
		}
		rc.c = c
		_ = c.SetDeadline(deadline)
		if _, err := rc.roundTrip("prompt", 1); err != nil {
			rc.close()
			return "", fmt.Errorf("runtime API %s: interactive mode: %w", rc.sock, err)
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
