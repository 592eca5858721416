package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cliTimeout bounds one master CLI exchange.
const cliTimeout = 2 * time.Second

// masterCommand sends one command to the master CLI socket and returns the
// answer. The master CLI is non-interactive: it answers once our side is
// half-closed and then closes the connection.
func masterCommand(ctx context.Context, sock, command string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", fmt.Errorf("master CLI %s: %w", sock, err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, command+"\n"); err != nil {
		return "", fmt.Errorf("master CLI %q: %w", command, err)
	}
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return string(out), fmt.Errorf("master CLI %q: %w", command, err)
	}
	return string(out), nil
}

// procInfo is the parsed answer of `show proc` on the master CLI.
type procInfo struct {
	MasterPID int
	Reloads   int // reloads of the master
	Failed    int // "[failed: N]"
	Version   string
	Workers   []workerInfo
}

// workerInfo is one worker line; Reloads counts the reloads it survived, so
// a freshly forked worker has 0.
type workerInfo struct {
	PID     int
	Reloads int
}

// errNoMaster reports a `show proc` answer without a master line.
var errNoMaster = errors.New("show proc: no master line in answer")

// parseShowProc parses lines such as
//
//	4981            master          1 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4
//	4982            worker          0               0d00h00m01s     2.6.12-1+deb12u4
func parseShowProc(out string) (procInfo, error) {
	var p procInfo
	found := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		reloads, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		switch f[1] {
		case "master":
			p.MasterPID, p.Reloads, found = pid, reloads, true
			p.Version = f[len(f)-1]
			if i := strings.Index(line, "[failed:"); i >= 0 {
				rest := strings.TrimSpace(line[i+len("[failed:"):])
				if j := strings.IndexByte(rest, ']'); j >= 0 {
					p.Failed, _ = strconv.Atoi(strings.TrimSpace(rest[:j]))
				}
			}
		case "worker":
			p.Workers = append(p.Workers, workerInfo{PID: pid, Reloads: reloads})
		}
	}
	if !found {
		return p, errNoMaster
	}
	return p, nil
}

// showProc asks the master for its process list.
func showProc(ctx context.Context, sock string) (procInfo, error) {
	out, err := masterCommand(ctx, sock, "show proc")
	if err != nil {
		return procInfo{}, err
	}
	return parseShowProc(out)
}

// hasNewWorker reports whether a worker forked by the latest (re)load exists.
func (p procInfo) hasNewWorker() bool {
	for _, w := range p.Workers {
		if w.Reloads == 0 {
			return true
		}
	}
	return false
}

// infoField is the value of field name in a `show info` answer ("" if it
// has none).
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// currentWorker is the PID of the worker that serves: the one that survived
// the fewest reloads (none, unless the last reload failed and the master
// kept it). 0 when the answer lists no worker.
func (p procInfo) currentWorker() int {
	pid, least := 0, -1
	for _, w := range p.Workers {
		if least < 0 || w.Reloads < least {
			pid, least = w.PID, w.Reloads
		}
	}
	return pid
}

// openFrontendPorts asks the current worker, through the master CLI, for
// the route frontends (fe_PORT) it has open: the ports it listens on. An
// isolated HAProxy's descriptors are another user's, so /proc cannot tell
// the agent (listeningPorts). Empty when the worker does not answer.
func openFrontendPorts(ctx context.Context, sock string) map[int]bool {
	ports := map[int]bool{}
	out, err := masterCommand(ctx, sock, "@1 show stat -1 1 -1")
	if err != nil {
		return ports
	}
	status := -1
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if strings.HasPrefix(line, "# ") {
			f[0] = strings.TrimPrefix(f[0], "# ")
			status = slices.Index(f, "status")
			continue
		}
		if status < 0 || len(f) <= status || f[1] != "FRONTEND" || f[status] != "OPEN" {
			continue
		}
		if p, err := strconv.Atoi(strings.TrimPrefix(f[0], "fe_")); err == nil && strings.HasPrefix(f[0], "fe_") {
			ports[p] = true
		}
	}
	return ports
}
