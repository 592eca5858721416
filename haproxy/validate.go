package haproxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// DefaultCheckTimeout bounds one `haproxy -c` when the caller's context has
// no deadline. A check takes about 0.4 s at 5,000 frontends; one that has
// not finished in a minute is hung, and it would hold the Manager's lock
// (and with it health checks and startup) for as long as it hangs.
const DefaultCheckTimeout = time.Minute

// checkWaitDelay is how long Validate waits for the output pipes after the
// check exited or was killed: a child left holding them cannot hold Validate.
const checkWaitDelay = time.Second

// ValidationError is returned by Validate when HAProxy rejects a
// configuration. Error() summarises the [ALERT] lines; Output keeps
// everything HAProxy printed.
type ValidationError struct {
	Path   string   // the file that was checked
	Alerts []string // [ALERT] messages without their "[ALERT] (pid) : " prefix
	Output string   // raw combined output of haproxy -c
	Err    error    // the exit error
}

func (e *ValidationError) Error() string {
	msgs := e.Alerts
	if len(msgs) == 0 {
		msgs = []string{strings.TrimSpace(e.Output)}
		if msgs[0] == "" && e.Err != nil {
			msgs[0] = e.Err.Error()
		}
	}
	return fmt.Sprintf("haproxy rejected %s: %s", e.Path, strings.Join(msgs, "; "))
}

func (e *ValidationError) Unwrap() error { return e.Err }

var alertRE = regexp.MustCompile(`^\[ALERT\]\s*\(\d+\)\s*:\s*(?:config\s*:\s*)?(.*)$`)

// parseAlerts extracts the messages of the [ALERT] lines of HAProxy output.
// The generic trailers ("Error(s) found in configuration file", "Fatal
// errors found") are dropped when a more specific alert is present. A
// message such as "parsing [/x/haproxy.cfg:12] : unknown keyword ..." keeps
// its file and line.
func parseAlerts(out string) []string {
	var specific, generic []string
	for _, line := range strings.Split(out, "\n") {
		m := alertRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		msg := strings.TrimSpace(m[1])
		if strings.HasPrefix(msg, "Error(s) found in configuration file") ||
			strings.HasPrefix(msg, "Fatal errors found in configuration") {
			generic = append(generic, msg)
			continue
		}
		specific = append(specific, msg)
	}
	if len(specific) > 0 {
		return specific
	}
	return generic
}

// Validate checks cfgPath with `bin -W -c -f cfgPath` (-W because the master
// runs in master-worker mode, where a configuration without any frontend is
// valid: plain -c refuses it for having no listener). A configuration HAProxy
// rejects yields a *ValidationError; failing to run bin at all yields a
// plain wrapped error. Note that -c does not bind: a port taken by another
// process passes validation (see the Manager's bind probe).
//
// The check is bounded: by ctx's deadline, else by DefaultCheckTimeout. On
// timeout its whole process group is killed and the error says so.
func Validate(ctx context.Context, bin string, cfgPath string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCheckTimeout)
		defer cancel()
	}
	cmd := boundedCommand(ctx, bin, "-W", "-c", "-f", cfgPath)
	// The environment the master gets: the check expands ${VAR} in the
	// configuration exactly as the master will, and a token passed to the
	// agent by environment is not HAProxy's to see, here either.
	cmd.Env = append([]string(nil), haproxyEnv...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			dl, _ := ctx.Deadline()
			return fmt.Errorf("run %s -c: no answer in time, killed (deadline was %s): %w",
				bin, dl.Format(time.RFC3339), errors.Join(err, ctx.Err()))
		}
		return fmt.Errorf("run %s -c: %w", bin, errors.Join(err, ctx.Err()))
	}
	return &ValidationError{Path: cfgPath, Alerts: parseAlerts(string(out)), Output: string(out), Err: err}
}

// boundedCommand is exec.CommandContext that, when ctx ends, kills the
// command's whole process group (a wrapper script's children too) and stops
// waiting for its output pipes checkWaitDelay later.
func boundedCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = checkWaitDelay
	return cmd
}
