package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

// TokenConfig is one entry of api.tokens: a named token with a role, whose
// secret the agent reads from SecretFile (and keeps only hashed) or whose
// SHA-256 is given. A bare string in the list (or in DRAWBRIDGE_API_TOKENS)
// is a single-token secret, an admin token like api.token.
type TokenConfig struct {
	Name string `mapstructure:"name"`
	// Role is admin, register or read.
	Role string `mapstructure:"role"`
	// SecretFile holds the secret (first non-comment line); SHA256 is the
	// hex digest of the secret instead (sha256sum). One of the two.
	SecretFile string `mapstructure:"secret_file"`
	SHA256     string `mapstructure:"sha256"`
	// Ports, Names and BackendCIDRs scope a register token: public ports
	// ("8080", "10000-10100"), route-name globs ("unifi-*") and the
	// networks its backends may be in.
	Ports        []string `mapstructure:"ports"`
	Names        []string `mapstructure:"names"`
	BackendCIDRs []string `mapstructure:"backend_cidrs"`
	// MaxTTL bounds a register token's leases (its backends must carry one).
	MaxTTL time.Duration `mapstructure:"max_ttl"`
	// Rate and Burst override limits.rate and limits.burst for this token.
	Rate  float64 `mapstructure:"rate"`
	Burst int     `mapstructure:"burst"`
	// Secret is a bare-string entry: a legacy single-token secret.
	Secret string `mapstructure:"-"`
}

// check validates a token entry's shape without reading its secret file.
func (t TokenConfig) check() error {
	if t.Secret != "" {
		return nil
	}
	if err := fsm.ValidateName("name", t.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if (t.SecretFile == "") == (t.SHA256 == "") {
		return fmt.Errorf("token %s: set secret_file or sha256 (one of them)", t.Name)
	}
	if t.SHA256 != "" {
		if _, err := api.ParseSHA256(t.SHA256); err != nil {
			return fmt.Errorf("token %s: %w", t.Name, err)
		}
	}
	if _, err := fsm.ParsePortRanges(t.Ports); err != nil {
		return fmt.Errorf("token %s: ports: %w", t.Name, err)
	}
	for _, g := range t.Names {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("token %s: names: %q is not a glob", t.Name, g)
		}
	}
	if _, err := api.ParseCIDRs(t.BackendCIDRs); err != nil {
		return fmt.Errorf("token %s: backend_cidrs: %w", t.Name, err)
	}
	switch api.Role(t.Role) {
	case api.RoleAdmin, api.RoleRegister, api.RoleRead:
	default:
		return fmt.Errorf("token %s: role %q must be admin, register or read", t.Name, t.Role)
	}
	return nil
}

// minSecretLen is the shortest secret the agent accepts.
const minSecretLen = 16

// readSecret returns the first non-empty, non-comment line of path.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			if len(t) < minSecretLen {
				return "", fmt.Errorf("secret in %s is too short: use at least %d characters (drawbridge keygen prints a good one)", path, minSecretLen)
			}
			return t, nil
		}
	}
	return "", fmt.Errorf("%s holds no secret", path)
}

// buildTokens turns the configuration into the API's tokens: the legacy
// single-token secrets (api.token, api.token_file, bare strings in
// api.tokens; under --dev without any token, a generated one) as admin
// tokens, then the scoped ones. Secrets are hashed here and not kept.
// legacy reports how many legacy tokens there are.
func buildTokens(cfg *Config, stdout io.Writer) (tokens []api.Token, legacy int, err error) {
	var secrets []string
	if cfg.API.Token != "" {
		secrets = append(secrets, cfg.API.Token)
	}
	var scoped []TokenConfig
	for _, t := range cfg.API.Tokens {
		if t.Secret != "" {
			secrets = append(secrets, t.Secret)
		} else {
			scoped = append(scoped, t)
		}
	}
	if cfg.API.TokenFile != "" {
		b, err := os.ReadFile(cfg.API.TokenFile)
		if err != nil {
			return nil, 0, fmt.Errorf("read api.token_file: %w", err)
		}
		for line := range strings.Lines(string(b)) {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				secrets = append(secrets, t)
			}
		}
	}
	for _, s := range secrets {
		if len(s) < minSecretLen {
			return nil, 0, errors.New("api token too short: use at least 16 characters (drawbridge keygen prints a good one)")
		}
	}
	if len(secrets) == 0 && len(scoped) == 0 {
		if !cfg.Dev {
			return nil, 0, errors.New("no API token configured: set api.tokens (scoped), or DRAWBRIDGE_API_TOKEN, api.token or api.token_file")
		}
		t, err := devToken(cfg.DataDir, stdout)
		if err != nil {
			return nil, 0, err
		}
		secrets = []string{t}
	}
	tokens = api.LegacyTokens(secrets)
	for _, t := range scoped {
		if err := t.check(); err != nil {
			return nil, 0, err
		}
		var digest [sha256.Size]byte
		if t.SecretFile != "" {
			secret, err := readSecret(t.SecretFile)
			if err != nil {
				return nil, 0, fmt.Errorf("token %s: %w", t.Name, err)
			}
			digest = api.HashSecret(secret)
		} else if digest, err = api.ParseSHA256(t.SHA256); err != nil {
			return nil, 0, fmt.Errorf("token %s: %w", t.Name, err)
		}
		ports, _ := fsm.ParsePortRanges(t.Ports)
		cidrs, _ := api.ParseCIDRs(t.BackendCIDRs)
		tokens = append(tokens, api.Token{
			Name: t.Name, Role: api.Role(t.Role), SHA256: digest,
			Ports: ports, Names: t.Names, BackendCIDRs: cidrs, MaxTTL: t.MaxTTL,
			Rate: t.Rate, Burst: t.Burst,
		})
	}
	return tokens, len(secrets), nil
}

// devToken returns the --dev token kept in the data dir, generating and
// announcing it the first time.
func devToken(dataDir string, stdout io.Writer) (string, error) {
	p := filepath.Join(dataDir, "dev-token")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) >= minSecretLen {
		fmt.Fprintf(stdout, "dev API token is in %s\n", p)
		return strings.TrimSpace(string(b)), nil
	}
	t, err := newToken()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(p, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("store dev token: %w", err)
	}
	fmt.Fprintf(stdout, "generated a dev API token (kept in %s):\n\n    export DRAWBRIDGE_API_TOKEN=%s\n\n", p, t)
	return t, nil
}

// legacyWarning is logged at start (and on reload) while a single shared
// token is configured.
const legacyWarning = "a single API token (api.token, api.token_file or DRAWBRIDGE_API_TOKEN) is an admin token every writer shares: any sidecar holding it can delete, replace or force any route and restore the whole table. Define scoped tokens in api.tokens instead (role register, with its ports, names and backend_cidrs, one per service) and keep an admin token for operators"

// tokenFiles are the files whose change reloads the tokens.
func (c *Config) tokenFiles(configFile string) []string {
	var files []string
	for _, f := range []string{configFile, c.API.TokenFile} {
		if f != "" {
			files = append(files, f)
		}
	}
	for _, t := range c.API.Tokens {
		if t.SecretFile != "" {
			files = append(files, t.SecretFile)
		}
	}
	return files
}

// ReloadTokens reads the tokens again, from a fresh configuration when
// Deps.ReloadConfig is set (the config file may have changed) and from
// their files, and swaps them into the API. On any error the current tokens
// stay and the error is returned. SIGHUP calls it; so does a change of any
// token file (watchTokenFiles).
func (a *Agent) ReloadTokens() error {
	a.tokenMu.Lock()
	defer a.tokenMu.Unlock()
	cfg := a.cfg
	if a.reloadConfig != nil {
		fresh, err := a.reloadConfig()
		if err != nil {
			return fmt.Errorf("reload tokens: %w", err)
		}
		cfg.API.Token, cfg.API.Tokens, cfg.API.TokenFile = fresh.API.Token, fresh.API.Tokens, fresh.API.TokenFile
	}
	tokens, legacy, err := buildTokens(&cfg, io.Discard)
	if err != nil {
		return fmt.Errorf("reload tokens: %w", err)
	}
	if a.server == nil {
		return errors.New("reload tokens: the API is not running")
	}
	if err := a.server.SetTokens(tokens); err != nil {
		return fmt.Errorf("reload tokens: %w", err)
	}
	a.cfg.API.Token, a.cfg.API.Tokens, a.cfg.API.TokenFile = cfg.API.Token, cfg.API.Tokens, cfg.API.TokenFile
	if legacy > 0 {
		a.log.Warn(legacyWarning)
	}
	return nil
}

// tokenFilesInterval is how often the token files are checked for changes.
const tokenFilesInterval = time.Second

// watchTokenFiles reloads the tokens when a token file (or the config
// file) changes: a rotated secret takes effect without a restart.
func (a *Agent) watchTokenFiles(ctx context.Context) {
	a.tokenMu.Lock()
	files := a.cfg.tokenFiles(a.configFile)
	a.tokenMu.Unlock()
	last := fingerprint(files)
	t := time.NewTicker(tokenFilesInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.tokenMu.Lock()
		files = a.cfg.tokenFiles(a.configFile)
		a.tokenMu.Unlock()
		now := fingerprint(files)
		if now == last {
			continue
		}
		last = now
		if err := a.ReloadTokens(); err != nil {
			a.log.Error("token files changed but the tokens were not reloaded; the previous ones stay", "err", err)
			continue
		}
		a.log.Info("token files changed: tokens reloaded")
	}
}

// fingerprint is a digest of the files' contents (missing files count as
// empty), compared between checks.
func fingerprint(files []string) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range files {
		b, _ := os.ReadFile(f)
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

// backendPolicy builds the API's backend policy from the config.
func (c *Config) backendPolicy() (api.BackendPolicy, error) {
	cidrs, err := api.ParseCIDRs(c.Routes.BackendCIDRs)
	if err != nil {
		return api.BackendPolicy{}, fmt.Errorf("routes.backend_cidrs: %w", err)
	}
	p := api.BackendPolicy{AllowLoopback: c.Routes.AllowLoopbackBackends, CIDRs: cidrs}
	if a, err := netip.ParseAddr(c.FloatingIP.Address); err == nil {
		p.DenyAddrs = append(p.DenyAddrs, a)
	}
	return p, nil
}

// ownEndpoints are this node's API, raft and gossip listeners, as bound and
// as advertised.
func (c *Config) ownEndpoints() []api.Endpoint {
	var out []api.Endpoint
	add := func(what, hostport string) {
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return
		}
		if host == "" {
			host = "0.0.0.0"
		}
		if ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port)); err == nil {
			out = append(out, api.Endpoint{Node: c.NodeName, What: what, Addr: ap})
		}
	}
	add("API", c.API.Addr)
	add("raft", c.Raft.Addr)
	add("raft", c.Raft.Advertise)
	add("gossip", c.Gossip.Addr)
	add("gossip", c.Gossip.Advertise)
	if u, err := url.Parse(c.API.Advertise); err == nil {
		add("API", u.Host)
	}
	return out
}

// metricsPublic reports whether /metrics is served without a token: when
// api.metrics_public says so, or when the API listens on loopback only
// (nobody else can reach it).
func (c *Config) metricsPublic() bool {
	if c.API.MetricsPublic {
		return true
	}
	host, _, err := net.SplitHostPort(c.API.Addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// apiLimits builds the API's limits from the config (zero: api's default).
func (c *Config) apiLimits() api.Limits {
	return api.Limits{
		MaxRoutes:           c.Limits.MaxRoutes,
		MaxBackendsPerRoute: c.Limits.MaxBackendsPerRoute,
		MaxBackends:         c.Limits.MaxBackends,
		MaxTTL:              c.Limits.MaxTTL,
		Rate:                c.Limits.Rate,
		Burst:               c.Limits.Burst,
	}
}
