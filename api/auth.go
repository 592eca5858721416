package api

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
)

// Header a drawbridge client may send its token in (besides Authorization).
const tokenHeader = "X-Drawbridge-Token"

// Auth failure reasons, the values of drawbridge_auth_failures_total's label.
const (
	authMissing   = "missing"
	authInvalid   = "invalid"
	authForbidden = "forbidden"
	authLimited   = "rate_limited"
)

// access is what an endpoint demands of a token.
type access int

const (
	accessPublic access = iota // no token
	accessRead                 // any valid token
	accessWrite                // admin or register
	accessAdmin                // admin only
)

// identityKey carries the authenticated *Token in a request's context.
type identityKey struct{}

// identity returns the token a request was authenticated with; nil on public
// endpoints.
func identity(ctx context.Context) *Token {
	t, _ := ctx.Value(identityKey{}).(*Token)
	return t
}

// authenticate returns the token the request carries, or a failure reason.
// Every presented token is hashed and compared with every configured digest
// in constant time; see tokenSet.match.
func (s *Server) authenticate(r *http.Request) (*Token, string) {
	presented := s.presented(r)
	if len(presented) == 0 {
		return nil, authMissing
	}
	set := s.tokens.load()
	var found *Token
	for _, p := range presented {
		if t := set.match(sha256.Sum256([]byte(p))); t != nil && found == nil {
			found = t
		}
	}
	if found == nil {
		return nil, authInvalid
	}
	return found, ""
}

// presented collects the tokens a request carries: "Authorization: Bearer",
// X-Drawbridge-Token, and the legacy header of the recipe's sidecars.
func (s *Server) presented(r *http.Request) []string {
	var out []string
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		if tok = strings.TrimSpace(tok); tok != "" {
			out = append(out, tok)
		}
	}
	for _, h := range []string{tokenHeader, s.cfg.LegacyHeader} {
		if tok := r.Header.Get(h); tok != "" {
			out = append(out, tok)
		}
	}
	return out
}

// requireToken wraps next so it runs only for requests whose token has the
// access the endpoint needs, within the token's rate limit. Failures are
// logged with the remote address, path, status and token name only: never a
// header, never a secret.
func (s *Server) requireToken(need access, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, reason := s.authenticate(r)
		if reason != "" {
			s.metrics.authFailures.WithLabelValues(reason).Inc()
			status := http.StatusForbidden
			msg := "invalid token"
			if reason == authMissing {
				status = http.StatusUnauthorized
				msg = "missing token: send \"Authorization: Bearer <token>\" or the " + tokenHeader + " header"
				w.Header().Set("WWW-Authenticate", `Bearer realm="drawbridge"`)
			}
			s.refuse(w, r, nil, reason, status, msg)
			return
		}
		if msg := roleRefusal(tok, need); msg != "" {
			s.metrics.authFailures.WithLabelValues(authForbidden).Inc()
			s.refuse(w, r, tok, authForbidden, http.StatusForbidden, msg)
			return
		}
		if wait, ok := s.limiter.allow(tok); !ok {
			s.metrics.authFailures.WithLabelValues(authLimited).Inc()
			w.Header().Set("Retry-After", retryAfter(wait))
			s.refuse(w, r, tok, authLimited, http.StatusTooManyRequests,
				"token "+tok.Name+" is over its rate limit; retry after "+retryAfter(wait)+"s")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, tok)))
	})
}

// refuse answers a request refused before its handler ran, with an audit
// line when it was a write.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, tok *Token, reason string, status int, msg string) {
	name := ""
	if tok != nil {
		name = tok.Name
	}
	if isWrite(r) {
		e := &auditEntry{}
		if reason == authMissing || reason == authInvalid {
			e.result = writeUnauthenticated
		}
		s.audit(r, tok, e, status, msg)
	} else {
		what := "request refused"
		if reason == authMissing || reason == authInvalid {
			what = "request refused: authentication failed"
		}
		s.log.Warn(what, "reason", reason, "token", name,
			"remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "status", status)
	}
	code := ""
	if reason == authInvalid {
		code = CodeInvalidToken
	}
	writeJSON(w, status, errorBody{Error: msg, Code: code})
}

// isWrite reports whether r changes state.
func isWrite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// roleRefusal says why tok may not use an endpoint that needs need, or "".
func roleRefusal(tok *Token, need access) string {
	switch {
	case need == accessAdmin && tok.Role != RoleAdmin:
		return "token " + tok.Name + " has role " + string(tok.Role) + "; this needs an admin token"
	case need == accessWrite && tok.Role == RoleRead:
		return "token " + tok.Name + " has role read; writes need an admin or register token"
	}
	return ""
}
