package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
)

// validateOnlyKey marks a request run through its handler only to validate
// it: commit stops it with errValidated before anything is proposed.
type validateOnlyKey struct{}

// errValidated is what commit returns to a validate-only run: the request
// decoded and passed every check the handler makes before committing.
var errValidated = errors.New("validated; not committed")

// validateHere runs a write through its handler up to the commit on a node
// that does not lead, so a request that is malformed, too large, or for a
// reserved port is answered here and never sent on with the client's
// token. The handlers check nothing of the table before they commit (that
// is the leader's to decide), so a request valid here is valid anywhere.
// The body is read within maxBody and put back for the forward.
func (s *Server) validateHere(w http.ResponseWriter, r *http.Request, maxBody int64, h handlerFunc) error {
	if s.leader == nil || r.Header.Get(ForwardedByHeader) != "" {
		return nil
	}
	if _, self, err := s.leader.LeaderAPI(); err == nil && self {
		return nil // the handler validates as it runs
	}
	var body []byte
	if r.Body != nil {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
			}
			return errorf(http.StatusBadRequest, "read request body: %v", err)
		}
	}
	check := r.Clone(context.WithValue(r.Context(), validateOnlyKey{}, true))
	check.Body = io.NopCloser(bytes.NewReader(body))
	err := h(discardWriter{header: http.Header{}}, check)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil && !errors.Is(err, errValidated) {
		return err
	}
	return nil
}

// discardWriter takes a validate-only run's output, which is never sent.
type discardWriter struct{ header http.Header }

func (d discardWriter) Header() http.Header         { return d.header }
func (d discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d discardWriter) WriteHeader(int)             {}
