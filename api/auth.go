package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Header a drawbridge client may send its token in (besides Authorization).
const tokenHeader = "X-Drawbridge-Token"

// Auth failure reasons, the values of drawbridge_auth_failures_total's label.
const (
	authMissing = "missing"
	authInvalid = "invalid"
)

// authenticator checks request tokens against the configured ones. It keeps
// only SHA-256 digests, so comparisons are constant-time and of equal length
// whatever the tokens' lengths.
type authenticator struct {
	digests      [][sha256.Size]byte
	legacyHeader string
}

func newAuthenticator(tokens []string, legacyHeader string) *authenticator {
	a := &authenticator{legacyHeader: legacyHeader}
	for _, t := range tokens {
		a.digests = append(a.digests, sha256.Sum256([]byte(t)))
	}
	return a
}

// check returns "" when the request carries a valid token, else authMissing
// or authInvalid. Every presented token is compared with every configured one,
// without an early exit, so timing tells nothing about which part matched.
func (a *authenticator) check(r *http.Request) string {
	presented := a.presented(r)
	if len(presented) == 0 {
		return authMissing
	}
	match := 0
	for _, p := range presented {
		d := sha256.Sum256([]byte(p))
		for i := range a.digests {
			match |= subtle.ConstantTimeCompare(d[:], a.digests[i][:])
		}
	}
	if match == 1 {
		return ""
	}
	return authInvalid
}

// presented collects the tokens a request carries: "Authorization: Bearer",
// X-Drawbridge-Token, and the legacy header of the recipe's sidecars.
func (a *authenticator) presented(r *http.Request) []string {
	var out []string
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		if tok = strings.TrimSpace(tok); tok != "" {
			out = append(out, tok)
		}
	}
	for _, h := range []string{tokenHeader, a.legacyHeader} {
		if tok := r.Header.Get(h); tok != "" {
			out = append(out, tok)
		}
	}
	return out
}

// requireToken wraps next so it runs only for requests with a valid token.
// Failures are logged with the remote address, path and status only: never a
// header, never a token.
func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reason := s.auth.check(r)
		if reason == "" {
			next.ServeHTTP(w, r)
			return
		}
		s.metrics.authFailures.WithLabelValues(reason).Inc()
		status := http.StatusForbidden
		msg := "invalid token"
		if reason == authMissing {
			status = http.StatusUnauthorized
			msg = "missing token: send \"Authorization: Bearer <token>\" or the " + tokenHeader + " header"
			w.Header().Set("WWW-Authenticate", `Bearer realm="drawbridge"`)
		}
		s.log.Warn("request refused: authentication failed",
			"remote", r.RemoteAddr, "path", r.URL.Path, "status", status)
		writeError(w, status, msg)
	})
}
