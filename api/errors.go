package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Error is an error that carries the HTTP status it is answered with. Handlers
// return it; the handler adapter writes it as {"error": Message}.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Message is what the client reads; it must not hold secrets.
	Message string
	// body, when set, is answered instead of {"error": Message}; it must
	// carry Message in its own "error" field.
	body any
	// notApplied marks a 503 refused before anything was proposed, so a
	// node that forwarded the request may send it to the next leader.
	notApplied bool
	// Code, when set, is answered as "code" beside "error": a reason a
	// program may act on without reading the message (CodePortTaken,
	// CodeNotOwner).
	Code string
}

// Codes of error answers, in the "code" field beside "error". A client acts
// on them instead of the message, which is for people and may change.
const (
	// CodePortTaken: the public port belongs to a route of another name
	// (409; an admin may force it).
	CodePortTaken = "port_taken"
	// CodeNotOwner: the route on the port belongs to another token, which
	// this token may neither take nor change (403). A register token is
	// told so only for ports and names within its own scope.
	CodeNotOwner = "not_owner"
	// CodeInvalidToken: the API knows no token with this secret (403; a
	// request without one gets 401).
	CodeInvalidToken = "invalid_token"
)

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Message) }

// errorf builds an *Error.
func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// badRequest turns a validation error (usually wrapping fsm.ErrInvalid) into a
// 400.
func badRequest(err error) *Error {
	return &Error{Status: http.StatusBadRequest, Message: message(err)}
}

// message is err's text without the "invalid: " that fsm puts in front of
// validation errors: the 400 already says so.
func message(err error) string {
	prefix := fsm.ErrInvalid.Error() + ": "
	msg := strings.TrimPrefix(err.Error(), prefix)
	return strings.Replace(msg, ": "+prefix, ": ", 1) // "create: invalid: …"
}

// errorBody is the JSON shape of every error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Commit outcomes, the values of drawbridge_commits_total's result label.
const (
	commitOK          = "ok"
	commitConflict    = "conflict"
	commitInvalid     = "invalid"
	commitNotFound    = "not_found"
	commitForbidden   = "forbidden"
	commitUnavailable = "unavailable"
	commitCapacity    = "capacity"
	commitError       = "error"
)

// classify maps a domain error from fsm.Result.Err to an HTTP status, a
// commit outcome and the answer's code ("" for none).
func classify(err error) (status int, outcome, code string) {
	switch {
	case errors.Is(err, fsm.ErrInvalid):
		return http.StatusBadRequest, commitInvalid, ""
	case errors.Is(err, fsm.ErrPortTaken):
		return http.StatusConflict, commitConflict, CodePortTaken
	case errors.Is(err, fsm.ErrNotFound):
		return http.StatusNotFound, commitNotFound, ""
	case errors.Is(err, fsm.ErrForbidden):
		// Apply refuses a scoped command only for a route another token
		// owns (two writers raced for one port).
		return http.StatusForbidden, commitForbidden, CodeNotOwner
	case errors.Is(err, fsm.ErrUnknownCommand):
		// The leader runs an older drawbridge than the node that proposed:
		// temporary while a rolling upgrade completes.
		return http.StatusServiceUnavailable, commitUnavailable, ""
	}
	return http.StatusInternalServerError, commitError, ""
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Every value the API answers marshals; this is a programming error.
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encode response: " + err.Error()})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers {"error": msg} with status.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

// writeText answers one line of plain text (health endpoints, meant for curl
// and probes).
func writeText(w http.ResponseWriter, status int, line string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(oneLine(line) + "\n"))
}

// oneLine folds line breaks so a multi-line error (an HAProxy alert) stays
// one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// fallbackWriter turns the mux's own plain-text 404 and 405 answers into
// drawbridge's JSON errors; anything else (redirects) passes through.
type fallbackWriter struct {
	http.ResponseWriter
	r       *http.Request
	wrote   bool
	swallow bool
}

func (f *fallbackWriter) WriteHeader(code int) {
	if f.wrote {
		return
	}
	f.wrote = true
	switch code {
	case http.StatusNotFound:
		f.swallow = true
		f.ResponseWriter.Header().Del("Content-Length")
		writeError(f.ResponseWriter, code, fmt.Sprintf("no such endpoint: %s", truncate(f.r.URL.Path)))
	case http.StatusMethodNotAllowed:
		f.swallow = true
		f.ResponseWriter.Header().Del("Content-Length")
		allow := f.ResponseWriter.Header().Get("Allow")
		writeError(f.ResponseWriter, code, fmt.Sprintf("method %s not allowed on %s (allowed: %s)",
			truncate(f.r.Method), truncate(f.r.URL.Path), allow))
	default:
		f.ResponseWriter.WriteHeader(code)
	}
}

func (f *fallbackWriter) Write(p []byte) (int, error) {
	if !f.wrote {
		f.WriteHeader(http.StatusOK)
	}
	if f.swallow {
		return len(p), nil
	}
	return f.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (f *fallbackWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// truncate keeps echoed client input short in messages.
func truncate(s string) string {
	const limit = 80
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}
