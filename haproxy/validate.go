package haproxy

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

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
func Validate(ctx context.Context, bin string, cfgPath string) error {
	out, err := exec.CommandContext(ctx, bin, "-W", "-c", "-f", cfgPath).CombinedOutput()
	if err == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || ctx.Err() != nil {
		return fmt.Errorf("run %s -c: %w", bin, errors.Join(err, ctx.Err()))
	}
	return &ValidationError{Path: cfgPath, Alerts: parseAlerts(string(out)), Output: string(out), Err: err}
}
