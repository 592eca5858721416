package floatingip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// execOutputLimit caps the script output kept for logs and errors.
	execOutputLimit = 4 << 10
	// execWaitDelay bounds how long Wait keeps reading output after the
	// script exited or was killed, when a stray child still holds the pipe.
	execWaitDelay = time.Second
	// defaultExecBackoff is the wait before the first retry; it doubles for
	// every further retry.
	defaultExecBackoff = 200 * time.Millisecond
)

// holdState is what the exec provider knows about the address.
type holdState int

const (
	stateReleased  holdState = iota // last successful call was a release (or none was made)
	stateHeld                       // last successful call was a claim
	stateUncertain                  // the last call failed or was cancelled midway
)

// Exec is the "exec" provider: it runs a user script,
// `SCRIPT claim|release IP NODE`, directly (no shell), one call at a time,
// with a timeout per run and retries with exponential backoff. The script
// runs in its own process group, which is killed as a whole on timeout or
// cancellation so helpers it started die with it. Its combined output
// (truncated to 4 KiB) is logged at info when it succeeds and at warn when it
// fails.
//
// There is no way to ask a script whether the address is held, so Held
// reports what the last successful call did. A call that failed or was
// cancelled leaves the state uncertain: Held reports false, and both Claim
// and Release run the script again rather than assume.
type Exec struct {
	command string
	addr    string
	node    string
	timeout time.Duration
	retries int
	backoff time.Duration
	log     *slog.Logger

	// sem serializes calls: a token is taken for a whole call (all its
	// retries), and waiting for it respects the caller's context.
	sem chan struct{}

	mu    sync.Mutex
	state holdState
}

var _ Provider = (*Exec)(nil)

func newExec(cfg Config) (*Exec, error) {
	if cfg.ExecCommand == "" {
		return nil, errors.New("floating_ip: exec provider needs a command (floating_ip.exec_command)")
	}
	if cfg.Address == "" {
		return nil, errors.New("floating_ip: address is required for the exec provider")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("floating_ip: exec provider needs the node name")
	}
	if cfg.ExecTimeout < 0 {
		return nil, fmt.Errorf("floating_ip: exec timeout %s is negative", cfg.ExecTimeout)
	}
	if cfg.ExecRetries < 0 {
		return nil, fmt.Errorf("floating_ip: exec retries %d is negative", cfg.ExecRetries)
	}
	if cfg.ExecTimeout == 0 {
		cfg.ExecTimeout = DefaultExecTimeout
	}
	if cfg.ExecRetries == 0 {
		cfg.ExecRetries = DefaultExecRetries
	}
	return &Exec{
		command: cfg.ExecCommand,
		addr:    cfg.Address,
		node:    cfg.NodeName,
		timeout: cfg.ExecTimeout,
		retries: cfg.ExecRetries,
		backoff: defaultExecBackoff,
		log:     cfg.Logger,
		sem:     make(chan struct{}, 1),
	}, nil
}

// Name returns "exec".
func (e *Exec) Name() string { return ProviderExec }

// Claim runs `SCRIPT claim IP NODE` unless the last successful call already
// claimed the address.
func (e *Exec) Claim(ctx context.Context) error {
	return e.call(ctx, "claim", stateHeld)
}

// Release runs `SCRIPT release IP NODE` unless the address is known not to be
// held here: it was never claimed by this process, or the last successful
// call released it. A script is never asked to release an address this node
// did not claim, since a naive script could take it from the real holder.
func (e *Exec) Release(ctx context.Context) error {
	return e.call(ctx, "release", stateReleased)
}

// Held reports whether the last successful call was a claim.
func (e *Exec) Held(context.Context) (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state == stateHeld, nil
}

func (e *Exec) getState() holdState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

func (e *Exec) setState(s holdState) {
	e.mu.Lock()
	e.state = s
	e.mu.Unlock()
}

// call runs the script for action with retries, serialized with every other
// call, and records target as the state when it succeeds.
func (e *Exec) call(ctx context.Context, action string, target holdState) error {
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("exec %s: waiting for the previous call: %w", action, ctx.Err())
	}
	defer func() { <-e.sem }()

	if e.getState() == target {
		return nil
	}
	attempts := 1 + e.retries
	wait := e.backoff
	var lastErr error
	for i := 1; i <= attempts; i++ {
		if i > 1 {
			if err := sleepCtx(ctx, wait); err != nil {
				e.setState(stateUncertain)
				return fmt.Errorf("exec %s: %w (after %d attempt(s), last: %w)", action, err, i-1, lastErr)
			}
			wait *= 2
		}
		out, err := e.runOnce(ctx, action)
		if err == nil {
			e.log.Info("floating IP script succeeded", "action", action, "attempt", i, "output", out)
			e.setState(target)
			return nil
		}
		lastErr = err
		e.setState(stateUncertain)
		e.log.Warn("floating IP script failed", "action", action, "attempt", i, "of", attempts,
			"err", err, "output", out)
		if ctx.Err() != nil {
			return fmt.Errorf("exec %s: %w (attempt %d: %w)", action, ctx.Err(), i, err)
		}
	}
	return fmt.Errorf("exec %s: failed after %d attempt(s): %w", action, attempts, lastErr)
}

// runOnce runs the script once, bounded by the timeout, and returns its
// combined output (truncated).
func (e *Exec) runOnce(parent context.Context, action string) (string, error) {
	ctx, cancel := context.WithTimeout(parent, e.timeout)
	defer cancel()

	var out limitedBuffer
	cmd := exec.CommandContext(ctx, e.command, action, e.addr, e.node)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Kill the whole process group: the script and anything it started.
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = execWaitDelay

	err := cmd.Run()
	text := out.String()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// The script succeeded but left a child holding its output open;
		// the call is done, the rest of the output is not waited for.
		e.log.Warn("floating IP script left a process holding its output", "action", action)
		err = nil
	}
	if err == nil {
		return text, nil
	}
	if ctx.Err() != nil && parent.Err() == nil {
		// Our own timeout, not the caller's: say so.
		err = fmt.Errorf("%w (timed out, process group killed after %s)", err, e.timeout)
	}
	if text != "" {
		err = fmt.Errorf("%w: output: %s", err, text)
	}
	return text, err
}

// limitedBuffer keeps the first execOutputLimit bytes written to it and
// counts the rest. It is safe for concurrent writes (stdout and stderr are
// the same writer, but os/exec may copy them from different goroutines).
type limitedBuffer struct {
	mu      sync.Mutex
	buf     []byte
	dropped int
}

// Write implements io.Writer; it never fails.
func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := min(execOutputLimit-len(b.buf), len(p))
	b.buf = append(b.buf, p[:room]...)
	b.dropped += len(p) - room
	return len(p), nil
}

// String returns the kept output, trimmed, valid UTF-8, with a note when
// bytes were dropped.
func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(strings.ToValidUTF8(string(b.buf), "\uFFFD"))
	if b.dropped > 0 {
		s += fmt.Sprintf(" …[%d more bytes]", b.dropped)
	}
	return s
}
