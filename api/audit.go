package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// ClientAddrHeader carries the original client's address on a request a
// follower forwards to the leader, so the leader's audit line names who
// asked and not only which node passed it on.
const ClientAddrHeader = "X-Drawbridge-Client-Addr"

// Values of drawbridge_api_writes_total's result label.
const (
	writeOK              = "ok"
	writeInvalid         = "invalid"
	writeUnauthenticated = "unauthenticated"
	writeForbidden       = "forbidden"
	writeNotFound        = "not_found"
	writeConflict        = "conflict"
	writeTooLarge        = "too_large"
	writeRateLimited     = "rate_limited"
	writeUnavailable     = "unavailable"
	writeNotApplied      = "not_applied"
	writeFailed          = "error"
	writeForwarded       = "forwarded"
)

// auditEntry collects what a write handler did, for its audit line.
type auditEntry struct {
	change    string // what the write asked for, e.g. "register-backend port=8080 …"
	index     uint64 // the raft index it committed at (0: none)
	forwarded bool   // the leader decided it and logged it
	result    string // overrides the result the status implies
}

type auditKey struct{}

// auditOf returns the request's audit entry; a throwaway one when the
// request is not audited (so handlers need not check).
func auditOf(ctx context.Context) *auditEntry {
	if a, ok := ctx.Value(auditKey{}).(*auditEntry); ok {
		return a
	}
	return &auditEntry{}
}

// noteChange records the command a write proposes.
func noteChange(ctx context.Context, cmd fsm.Command) {
	auditOf(ctx).change = describe(cmd)
}

// describe renders a command for an audit line: what it touches, never
// secrets (commands carry none).
func describe(cmd fsm.Command) string {
	var b strings.Builder
	b.WriteString(cmd.Type().String())
	switch c := cmd.(type) {
	case *fsm.UpsertRoute:
		fmt.Fprintf(&b, " port=%d name=%s backends=%d", c.Route.Port, c.Route.Name, len(c.Route.Backends))
		if c.Force {
			b.WriteString(" force=true")
		}
	case *fsm.DeleteRoute:
		fmt.Fprintf(&b, " port=%d", c.Port)
		if c.Name != "" {
			fmt.Fprintf(&b, " name=%s", c.Name)
		}
	case *fsm.RegisterBackend:
		fmt.Fprintf(&b, " port=%d name=%s backend=%s", c.Port, c.Name, c.Backend.Key())
		if c.Backend.TTL > 0 {
			fmt.Fprintf(&b, " ttl=%s", c.Backend.TTL)
		}
		if c.Create != nil {
			b.WriteString(" create=true")
		}
	case *fsm.DeregisterBackend:
		fmt.Fprintf(&b, " port=%d backend=%s", c.Port, fsm.Backend{Address: c.Address, Port: c.BackendPort}.Key())
		if c.Name != "" {
			fmt.Fprintf(&b, " name=%s", c.Name)
		}
	case *fsm.ReplaceTable:
		backends := 0
		for _, r := range c.Routes {
			backends += len(r.Backends)
		}
		fmt.Fprintf(&b, " routes=%d backends=%d", len(c.Routes), backends)
	}
	return b.String()
}

// writeResult names an answer's status for metrics and audit lines.
func writeResult(status int) string {
	switch status {
	case http.StatusOK:
		return writeOK
	case http.StatusBadRequest:
		return writeInvalid
	case http.StatusUnauthorized:
		return writeUnauthenticated
	case http.StatusForbidden:
		return writeForbidden
	case http.StatusNotFound:
		return writeNotFound
	case http.StatusConflict:
		return writeConflict
	case http.StatusRequestEntityTooLarge:
		return writeTooLarge
	case http.StatusTooManyRequests:
		return writeRateLimited
	case http.StatusServiceUnavailable:
		return writeUnavailable
	case http.StatusGatewayTimeout:
		return writeNotApplied
	}
	return writeFailed
}

// audit writes the one line every write leaves on the node that decided it:
// token name and role, remote address, the node that forwarded it (and the
// client address that node saw), what it asked to change, and the result.
// Never a header, never a secret.
func (s *Server) audit(r *http.Request, tok *Token, e *auditEntry, status int, reason string) {
	name, role := "-", ""
	if tok != nil {
		name, role = tok.Name, string(tok.Role)
	}
	result := writeResult(status)
	if e.result != "" {
		result = e.result
	}
	if e.forwarded {
		result = writeForwarded
	}
	s.metrics.writes.WithLabelValues(name, result).Inc()
	if e.forwarded {
		// The leader decided and wrote the audit line; this node only
		// counts what it passed on.
		return
	}
	attrs := []any{
		"token", name, "role", role, "remote", r.RemoteAddr,
		"method", r.Method, "path", truncate(r.URL.Path),
		"change", e.change, "result", result, "status", status,
	}
	if by := r.Header.Get(ForwardedByHeader); by != "" {
		attrs = append(attrs, "forwarded_by", truncate(by), "client", truncate(r.Header.Get(ClientAddrHeader)))
	}
	if e.index > 0 {
		attrs = append(attrs, "index", e.index)
	}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	s.audits.Info("audit", attrs...)
}
