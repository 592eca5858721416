package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Role is what a token may do.
type Role string

// Roles. The list is closed: a token with any other role is refused when the
// configuration is built.
const (
	// RoleAdmin may do everything: any route, force, snapshot restore,
	// deletes without a name, reads of every backend.
	RoleAdmin Role = "admin"
	// RoleRegister creates and updates routes, and registers and
	// deregisters backends, only within its ports, name globs and backend
	// CIDRs, and changes only the routes it owns (the route records its
	// owner's name through the log).
	RoleRegister Role = "register"
	// RoleRead may only read: the table, status, cluster and metrics.
	RoleRead Role = "read"
)

// LegacyTokenName is the name the single token of api.token / api.token_file
// / DRAWBRIDGE_API_TOKEN (the recipe's shared secret) is known by in audit
// lines, metrics and route ownership. A second legacy token is "legacy-2",
// and so on.
const LegacyTokenName = "legacy"

// Token is one API credential as the API keeps it: a name, a role and the
// SHA-256 of the secret. The secret itself is never kept.
type Token struct {
	// Name identifies the token in audit lines, metrics and route
	// ownership: [a-z0-9][a-z0-9._-]{0,62}.
	Name string
	// Role is RoleAdmin, RoleRegister or RoleRead.
	Role Role
	// SHA256 is the digest of the secret.
	SHA256 [sha256.Size]byte
	// Ports are the public ports a register token may route. Required for
	// RoleRegister ("1-65535" to allow any).
	Ports fsm.PortRanges
	// Names are globs (path.Match syntax: "unifi-*") the route names of a
	// register token must match. Required for RoleRegister ("*" for any).
	Names []string
	// BackendCIDRs narrow the backends a register token may name, on top of
	// the cluster's backend policy. Empty: what the policy allows.
	BackendCIDRs []netip.Prefix
	// MaxTTL bounds a register token's backend leases; its backends must
	// carry one. 0: the API's Limits.MaxTTL, and leases are optional.
	MaxTTL time.Duration
	// Rate and Burst override Limits.Rate and Limits.Burst for this token
	// (0: the defaults).
	Rate  float64
	Burst int
	// Legacy marks a token from the single-token configuration.
	Legacy bool
}

// HashSecret returns the digest a Token keeps for secret.
func HashSecret(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// ParseSHA256 reads a hex SHA-256 digest (64 hex digits, any case), as
// `sha256sum` prints it.
func ParseSHA256(s string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	s = strings.TrimSpace(s)
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return d, fmt.Errorf("sha256 must be 64 hex digits (sha256sum of the secret)")
	}
	copy(d[:], b)
	return d, nil
}

// LegacyTokens turns single-token secrets into admin tokens named
// LegacyTokenName, "legacy-2", ….
func LegacyTokens(secrets []string) []Token {
	out := make([]Token, 0, len(secrets))
	for i, s := range secrets {
		name := LegacyTokenName
		if i > 0 {
			name = fmt.Sprintf("%s-%d", LegacyTokenName, i+1)
		}
		out = append(out, Token{Name: name, Role: RoleAdmin, SHA256: HashSecret(s), Legacy: true})
	}
	return out
}

// validate checks one token; it never mentions the secret or its digest.
func (t Token) validate() error {
	if err := fsm.ValidateName("token name", t.Name); err != nil {
		return errors.New(message(err))
	}
	var errs []error
	switch t.Role {
	case RoleAdmin, RoleRead:
		if len(t.Ports) > 0 || len(t.Names) > 0 || len(t.BackendCIDRs) > 0 || t.MaxTTL > 0 {
			errs = append(errs, fmt.Errorf("ports, names, backend_cidrs and max_ttl only apply to role register, not %s", t.Role))
		}
	case RoleRegister:
		if len(t.Ports) == 0 {
			errs = append(errs, errors.New(`a register token needs ports (use "1-65535" to allow any)`))
		}
		if len(t.Names) == 0 {
			errs = append(errs, errors.New(`a register token needs names (globs; use "*" to allow any)`))
		}
		for _, g := range t.Names {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				errs = append(errs, fmt.Errorf("names: %q is not a valid glob", g))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("role %q must be admin, register or read", t.Role))
	}
	if t.MaxTTL < 0 {
		errs = append(errs, errors.New("max_ttl must not be negative"))
	}
	if t.Rate < 0 || t.Burst < 0 {
		errs = append(errs, errors.New("rate and burst must not be negative"))
	}
	if t.SHA256 == ([sha256.Size]byte{}) {
		errs = append(errs, errors.New("no secret (secret_file or sha256)"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("token %q: %w", t.Name, err)
	}
	return nil
}

// mayName reports whether a register token may use route name n.
func (t *Token) mayName(n string) bool {
	for _, g := range t.Names {
		if ok, _ := path.Match(g, n); ok {
			return true
		}
	}
	return false
}

// mayReach reports whether a register token may name backend address a.
func (t *Token) mayReach(a netip.Addr) bool {
	if len(t.BackendCIDRs) == 0 {
		return true
	}
	for _, p := range t.BackendCIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// tokenSet is an immutable, validated set of tokens.
type tokenSet struct {
	tokens []Token
}

// newTokenSet validates tokens: each one, unique names, no secret twice.
func newTokenSet(tokens []Token) (*tokenSet, error) {
	var errs []error
	names := map[string]bool{}
	digests := map[[sha256.Size]byte]string{}
	for _, t := range tokens {
		if err := t.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if names[t.Name] {
			errs = append(errs, fmt.Errorf("token name %q is used twice", t.Name))
		}
		names[t.Name] = true
		if other, dup := digests[t.SHA256]; dup {
			errs = append(errs, fmt.Errorf("tokens %q and %q have the same secret", other, t.Name))
		}
		digests[t.SHA256] = t.Name
	}
	if len(tokens) == 0 {
		errs = append(errs, errors.New("no API token configured: refusing to serve an API anyone could write to"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &tokenSet{tokens: append([]Token(nil), tokens...)}, nil
}

// match returns the token whose digest equals d, or nil. Every configured
// digest is compared in constant time and the loop never exits early, so
// timing tells nothing about which token, or whether any, matched.
func (s *tokenSet) match(d [sha256.Size]byte) *Token {
	found := -1
	for i := range s.tokens {
		eq := subtle.ConstantTimeCompare(d[:], s.tokens[i].SHA256[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil
	}
	return &s.tokens[found]
}

// tokenStore holds the current token set; reloads swap it atomically, so a
// request sees either the old set or the new one, never a mix.
type tokenStore struct {
	p atomic.Pointer[tokenSet]
}

func (s *tokenStore) load() *tokenSet { return s.p.Load() }

// SetTokens replaces the API's tokens (a reload on SIGHUP or when a token
// file changed). The new set is validated first; on error the current one
// stays. Requests in flight finish with the token they were authenticated
// with.
func (s *Server) SetTokens(tokens []Token) error {
	set, err := newTokenSet(tokens)
	if err != nil {
		return fmt.Errorf("api tokens: %w", err)
	}
	s.tokens.p.Store(set)
	s.limiter.reset()
	names := make([]string, 0, len(tokens))
	for _, t := range tokens {
		names = append(names, t.Name+"("+string(t.Role)+")")
	}
	s.log.Info("api tokens loaded", "tokens", strings.Join(names, ","))
	return nil
}

// TokenNames lists the configured tokens' names and roles, for status and
// tests; never secrets.
func (s *Server) TokenNames() map[string]Role {
	out := map[string]Role{}
	for _, t := range s.tokens.load().tokens {
		out[t.Name] = t.Role
	}
	return out
}
