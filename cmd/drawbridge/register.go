package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Defaults and bounds of `drawbridge register`.
const (
	// defaultRepeatInterval is how often the lease is renewed when
	// REPEAT_INTERVAL is not set.
	defaultRepeatInterval = 30 * time.Second
	// defaultTTLIntervals is the lease length, in renewal intervals, when
	// TTL is not set: two renewals may fail before the backend is dropped.
	defaultTTLIntervals = 3
	// maxRegisterTTL matches the longest lease the API accepts.
	maxRegisterTTL = 366 * 24 * time.Hour
	// registerRequestTimeout bounds one HTTP request to one member, so a
	// member that accepts connections but never answers is failed over.
	registerRequestTimeout = 10 * time.Second
	// deregisterBudget bounds deregistration on shutdown: well inside the
	// 30 s Kubernetes grants a pod between SIGTERM and SIGKILL.
	deregisterBudget = 10 * time.Second
	// registerBackoffBase is the first retry delay after a failure; it doubles
	// up to the renewal interval.
	registerBackoffBase = time.Second
	// deregisterBackoffBase and deregisterBackoffCap pace retries of the
	// final deregistration within deregisterBudget.
	deregisterBackoffBase = 250 * time.Millisecond
	deregisterBackoffCap  = 2 * time.Second
)

// registerConfig is the validated configuration of `drawbridge register`.
type registerConfig struct {
	// Interval is the time between renewals.
	Interval time.Duration
	// TTL is the lease each registration asks for; longer than Interval.
	TTL time.Duration
	// FrontendPort is the public port of the route.
	FrontendPort int
	// BackendPort is the port traffic is sent to on Address (the NodePort).
	BackendPort int
	// Name is the route's name; it claims the port.
	Name string
	// Address is the backend's IP literal, canonical (usually the node's IP
	// from the downward API's status.hostIP).
	Address string
	// Owner labels the backend (default: the pod's hostname when it is a
	// valid label); empty sends none.
	Owner string
	// Members are base URLs of drawbridge nodes, tried in order.
	Members []string
	// Token authenticates every request. Never logged.
	Token string
	// Route options, used only when the registration creates the route.
	Balance       string
	Sticky        *bool
	ProxyProtocol string
	HealthCheck   *bool
	// CAFile, when set, is the CA bundle that verifies HTTPS members.
	CAFile string
	// LogLevel is debug, info, warn or error.
	LogLevel slog.Level
}

// registerSettings maps each setting to its flag and the environment
// variables read when the flag is not given, in order of preference. The
// recipe's sidecar variables (REPEAT_INTERVAL, FRONTEND_PORT, BACKEND_PORT,
// NAME, WEBHOOK, WEBHOOK_TOKEN) keep working unchanged.
var registerSettings = []struct {
	flag, usage string
	env         []string
}{
	{"repeat-interval", "seconds (or a duration such as 30s) between renewals (default 30)", []string{"REPEAT_INTERVAL"}},
	{"ttl", "lease length, a duration such as 90s (default: three intervals)", []string{"TTL"}},
	{"frontend-port", "public port of the route", []string{"FRONTEND_PORT"}},
	{"backend-port", "port on DST_IP traffic goes to (the Service's nodePort)", []string{"BACKEND_PORT"}},
	{"name", "route name, [a-z0-9][a-z0-9._-]{0,62}", []string{"NAME"}},
	{"dst-ip", "backend IP address (in Kubernetes: the downward API's status.hostIP)", []string{"DST_IP"}},
	{"webhooks", "comma-separated base URLs of drawbridge nodes, tried in turn", []string{"WEBHOOKS"}},
	{"webhook", "one drawbridge URL; the recipe's .../hooks/update-haproxy URL is accepted", []string{"WEBHOOK"}},
	{"token-file", "file holding the API token (default: env DRAWBRIDGE_API_TOKEN or WEBHOOK_TOKEN)", []string{"DRAWBRIDGE_API_TOKEN_FILE"}},
	{"owner", "label stored with the backend (default: hostname, i.e. the pod name)", []string{"OWNER"}},
	{"balance", "balance of a route this creates: roundrobin, leastconn, source, first or random", []string{"BALANCE"}},
	{"sticky", "stick clients to a backend by source address, for a route this creates (true/false)", []string{"STICKY"}},
	{"proxy-protocol", "send the PROXY protocol to backends of a route this creates: v1, v2 or off", []string{"PROXY_PROTOCOL"}},
	{"health-check", "health-check backends of a route this creates (true/false)", []string{"HEALTH_CHECK"}},
	{"ca-file", "CA certificate that verifies HTTPS members", []string{"DRAWBRIDGE_CA_FILE"}},
	{"log-level", "debug, info, warn or error", []string{"DRAWBRIDGE_LOG_LEVEL"}},
}

// registerTokenEnv are the variables a token is read from when --token-file
// (or DRAWBRIDGE_API_TOKEN_FILE) is not set.
var registerTokenEnv = []string{"DRAWBRIDGE_API_TOKEN", "WEBHOOK_TOKEN"}

func newRegisterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Keep one backend of a route registered with a lease (the pod sidecar)",
		Long: `Register DST_IP:BACKEND_PORT as a backend of the route on FRONTEND_PORT,
named NAME, and renew its lease every REPEAT_INTERVAL until SIGTERM or SIGINT,
then deregister it and exit 0. If the pod dies without deregistering, the
lease (TTL, default three intervals) runs out and the backend is removed.

Every setting is a flag or an environment variable; a flag wins. The recipe's
sidecar variables work unchanged: REPEAT_INTERVAL, FRONTEND_PORT, BACKEND_PORT,
NAME, WEBHOOK (its .../hooks/update-haproxy URL is fine) and WEBHOOK_TOKEN.
Besides: DST_IP (required; in Kubernetes the downward API's status.hostIP),
WEBHOOKS (comma-separated node URLs, tried in turn), TTL, DRAWBRIDGE_API_TOKEN,
BALANCE, STICKY, PROXY_PROTOCOL, HEALTH_CHECK, OWNER.

Exit codes: 0 after a signal, 2 for bad configuration (nothing is sent).`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := parseRegisterConfig(cmd.Flags(), os.Getenv, os.ReadFile, os.Hostname)
			if err != nil {
				return err
			}
			client, err := registerHTTPClient(cfg.CAFile)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: cfg.LogLevel})).
				With("component", "register")
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				// After the first signal, a second one ends the process at
				// once instead of waiting for deregistration.
				<-ctx.Done()
				stop()
			}()
			return newRegistrar(cfg, client, log).run(ctx)
		},
	}
	f := cmd.Flags()
	for _, s := range registerSettings {
		f.String(s.flag, "", fmt.Sprintf("%s (env %s)", s.usage, strings.Join(s.env, ", ")))
	}
	// "--sticky" alone means true.
	f.Lookup("sticky").NoOptDefVal = "true"
	f.Lookup("health-check").NoOptDefVal = "true"
	return cmd
}

// parseRegisterConfig reads every setting from flags (when given) or the
// environment, and validates them all before anything is sent. Problems come
// back together as one *exitError with code 2.
func parseRegisterConfig(flags *pflag.FlagSet, getenv func(string) string,
	readFile func(string) ([]byte, error), hostname func() (string, error)) (registerConfig, error) {
	// get returns a setting's value and where it came from, for messages.
	get := func(flag string) (value, source string) {
		for _, s := range registerSettings {
			if s.flag != flag {
				continue
			}
			if f := flags.Lookup(flag); f != nil && f.Changed {
				return strings.TrimSpace(f.Value.String()), "--" + flag
			}
			for _, e := range s.env {
				if v := strings.TrimSpace(getenv(e)); v != "" {
					return v, e
				}
			}
			return "", fmt.Sprintf("%s (--%s)", strings.Join(s.env, " or "), flag)
		}
		panic("unknown register setting " + flag)
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	cfg := registerConfig{Interval: defaultRepeatInterval}

	if v, src := get("repeat-interval"); v != "" {
		d, err := parseSecondsOrDuration(v)
		if err != nil || d <= 0 {
			bad("%s %q must be a positive number of seconds (or a duration such as 30s)", src, v)
		} else {
			cfg.Interval = d
		}
	}
	cfg.TTL = defaultTTLIntervals * cfg.Interval
	if v, src := get("ttl"); v != "" {
		d, err := parseSecondsOrDuration(v)
		switch {
		case err != nil || d <= 0:
			bad("%s %q must be a positive duration such as 90s", src, v)
		case d > maxRegisterTTL:
			bad("%s %s must be at most %s", src, d, maxRegisterTTL)
		case d <= cfg.Interval:
			bad("%s %s must be longer than the renewal interval %s (three intervals or more is safest), or the backend drops out between renewals",
				src, d, cfg.Interval)
		default:
			cfg.TTL = d
		}
	}
	port := func(flag, what string) int {
		v, src := get(flag)
		if v == "" {
			bad("%s is required: set %s", what, src)
			return 0
		}
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			bad("%s %q must be a port number from 1 to 65535", src, v)
			return 0
		}
		return p
	}
	cfg.FrontendPort = port("frontend-port", "the public port")
	cfg.BackendPort = port("backend-port", "the backend port")

	if v, src := get("name"); v == "" {
		bad("the route name is required: set %s", src)
	} else if fsm.ValidateName("name", v) != nil {
		bad("%s %q must match [a-z0-9][a-z0-9._-]{0,62} (lower case letters, digits, '.', '_', '-')", src, v)
	} else {
		cfg.Name = v
	}

	if v, src := get("dst-ip"); v == "" {
		bad("the backend address is required: set %s to this node's IP (in Kubernetes: fieldRef status.hostIP)", src)
	} else if addr, err := fsm.CanonicalAddress(v); err != nil {
		bad("%s %q must be an IP address (v4 or v6; host names are not resolved)", src, v)
	} else {
		cfg.Address = addr
	}

	cfg.Members = parseRegisterMembers(flags, getenv, bad)

	cfg.Token = readRegisterToken(get, getenv, readFile, bad)

	if v, src := get("owner"); v != "" {
		if fsm.ValidateName("owner", v) != nil {
			bad("%s %q must match [a-z0-9][a-z0-9._-]{0,62}", src, v)
		} else {
			cfg.Owner = v
		}
	} else if h, err := hostname(); err == nil && fsm.ValidateName("owner", strings.ToLower(h)) == nil {
		cfg.Owner = strings.ToLower(h)
	}

	if v, src := get("balance"); v != "" {
		switch v {
		case fsm.BalanceRoundRobin, fsm.BalanceLeastConn, fsm.BalanceSource, fsm.BalanceFirst, fsm.BalanceRandom:
			cfg.Balance = v
		default:
			bad("%s %q must be roundrobin, leastconn, source, first or random", src, v)
		}
	}
	boolSetting := func(flag string) *bool {
		v, src := get(flag)
		if v == "" {
			return nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad("%s %q must be true or false", src, v)
			return nil
		}
		return &b
	}
	cfg.Sticky = boolSetting("sticky")
	cfg.HealthCheck = boolSetting("health-check")
	if v, src := get("proxy-protocol"); v != "" {
		switch strings.ToLower(v) {
		case "off", "none", "false":
			cfg.ProxyProtocol = fsm.ProxyProtocolOff
		case fsm.ProxyProtocolV1, fsm.ProxyProtocolV2:
			cfg.ProxyProtocol = strings.ToLower(v)
		default:
			bad("%s %q must be v1, v2 or off", src, v)
		}
	}
	if v, src := get("ca-file"); v != "" {
		if _, err := readFile(v); err != nil {
			bad("%s: cannot read %s: %v", src, v, err)
		}
		cfg.CAFile = v
	}
	cfg.LogLevel = slog.LevelInfo
	if v, src := get("log-level"); v != "" {
		if err := cfg.LogLevel.UnmarshalText([]byte(v)); err != nil {
			bad("%s %q must be debug, info, warn or error", src, v)
		}
	}

	if len(problems) > 0 {
		return registerConfig{}, &exitError{code: 2, err: fmt.Errorf("invalid register configuration, nothing was sent:\n  - %s",
			strings.Join(problems, "\n  - "))}
	}
	return cfg, nil
}

// parseSecondsOrDuration reads "600" as seconds (the recipe's
// REPEAT_INTERVAL) and anything else as a Go duration ("90s", "10m").
func parseSecondsOrDuration(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(secs) || math.Abs(secs) > maxRegisterTTL.Seconds() {
			return 0, fmt.Errorf("%s seconds is out of range", s)
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	return time.ParseDuration(s)
}

// parseRegisterMembers collects member base URLs: from --webhooks and
// --webhook when either is given, else from WEBHOOKS and WEBHOOK, in that
// order, without duplicates.
func parseRegisterMembers(flags *pflag.FlagSet, getenv func(string) string, bad func(string, ...any)) []string {
	type entry struct{ value, source string }
	var raw []entry
	for _, name := range []string{"webhooks", "webhook"} {
		if f := flags.Lookup(name); f != nil && f.Changed {
			raw = append(raw, entry{f.Value.String(), "--" + name})
		}
	}
	if len(raw) == 0 {
		for _, name := range []string{"WEBHOOKS", "WEBHOOK"} {
			if v := getenv(name); strings.TrimSpace(v) != "" {
				raw = append(raw, entry{v, name})
			}
		}
	}
	var members []string
	for _, e := range raw {
		for part := range strings.SplitSeq(e.value, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			base, err := memberBaseURL(part)
			if err != nil {
				bad("%s: %v", e.source, err)
				continue
			}
			if !slices.Contains(members, base) {
				members = append(members, base)
			}
		}
	}
	if len(members) == 0 && len(raw) == 0 {
		bad("no drawbridge node to talk to: set WEBHOOKS (comma-separated URLs such as https://edge-1.example.com:9000) or WEBHOOK (--webhooks, --webhook)")
	}
	return members
}

// memberBaseURL turns a configured URL into the base the API paths are
// appended to. The recipe's hook URL (https://host:9000/hooks/update-haproxy)
// becomes https://host:9000; a path prefix in front of it (a reverse proxy)
// is kept.
func memberBaseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q must be an http:// or https:// URL such as https://edge-1.example.com:9000", raw)
	}
	if u.User != nil {
		return "", fmt.Errorf("URL of %s must not carry credentials: the token comes from DRAWBRIDGE_API_TOKEN or WEBHOOK_TOKEN", u.Host)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q must not have a query or fragment", raw)
	}
	p := strings.TrimRight(u.Path, "/")
	if dir, hook := path.Split(p); hook != "" && path.Base(dir) == "hooks" {
		p = strings.TrimSuffix(strings.TrimRight(dir, "/"), "/hooks")
	}
	u.Path, u.RawPath = p, ""
	return u.String(), nil
}

// readRegisterToken reads the token from --token-file (or
// DRAWBRIDGE_API_TOKEN_FILE), else DRAWBRIDGE_API_TOKEN, else WEBHOOK_TOKEN.
// There is no --token flag: a token on the command line shows in ps.
func readRegisterToken(get func(string) (string, string), getenv func(string) string,
	readFile func(string) ([]byte, error), bad func(string, ...any)) string {
	var token, source string
	if file, src := get("token-file"); file != "" {
		b, err := readFile(file)
		if err != nil {
			bad("%s: cannot read the token file: %v", src, err)
			return ""
		}
		token, source = strings.TrimSpace(string(b)), src+" "+file
	} else {
		for _, e := range registerTokenEnv {
			if v := strings.TrimSpace(getenv(e)); v != "" {
				token, source = v, e
				break
			}
		}
	}
	switch {
	case source == "":
		bad("no API token: set DRAWBRIDGE_API_TOKEN or WEBHOOK_TOKEN (from a Secret), or --token-file")
		return ""
	case token == "":
		bad("%s is empty", source)
		return ""
	case strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		// The token itself is never echoed.
		bad("the token from %s contains spaces or control characters", source)
		return ""
	}
	return token
}

// registerHTTPClient returns the client the registrar uses, trusting caFile
// when set.
func registerHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificates in CA file %s", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Timeout: registerRequestTimeout, Transport: tr}, nil
}

// registerState is where the registrar stands, for logging state changes
// rather than heartbeats.
type registerState int

const (
	registerStarting registerState = iota
	registerOK
	registerFailing
)

// registrar keeps one backend registered: it renews the lease every
// interval, fails over between members, backs off on failure, and
// deregisters when its context ends. One goroutine drives it (run); it is not
// safe for concurrent use.
type registrar struct {
	cfg    registerConfig
	client *http.Client
	log    *slog.Logger

	// Injected for tests.
	sleep             func(ctx context.Context, d time.Duration) error
	now               func() time.Time
	jitter            func() float64 // in [0, 1)
	backoffBase       time.Duration
	deregisterTimeout time.Duration

	member      int // index of the member that answered last
	state       registerState
	failKind    string    // kind of the current failure, see registerError.kind
	failingFrom time.Time // first failure of the current streak
	attempts    int       // failed attempts in the current streak
	leaseEnd    time.Time // when the last accepted lease ends (zero: none yet)
	expiredLog  bool      // lease expiry was logged in this streak
}

func newRegistrar(cfg registerConfig, client *http.Client, log *slog.Logger) *registrar {
	return &registrar{
		cfg:               cfg,
		client:            client,
		log:               log,
		sleep:             sleepContext,
		now:               time.Now,
		jitter:            rand.Float64,
		backoffBase:       registerBackoffBase,
		deregisterTimeout: deregisterBudget,
	}
}

// sleepContext waits d or until ctx ends.
func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// run registers, renews until ctx ends, then deregisters (within
// deregisterTimeout, on a context of its own) and returns nil: a signal is a
// normal end.
func (r *registrar) run(ctx context.Context) error {
	r.log.Info("starting", "name", r.cfg.Name, "frontend_port", r.cfg.FrontendPort,
		"backend", r.backendKey(), "members", strings.Join(r.cfg.Members, ","),
		"interval", r.cfg.Interval, "ttl", r.cfg.TTL)
	failures := 0
	for ctx.Err() == nil {
		err := r.attempt(ctx)
		if ctx.Err() != nil {
			break
		}
		var wait time.Duration
		var re *registerError
		switch {
		case err == nil:
			failures = 0
			// Up to 10% early, so sidecars started together drift apart;
			// never late, so the lease margin is kept.
			wait = r.cfg.Interval - time.Duration(r.jitter()*float64(r.cfg.Interval)/10)
		case errors.As(err, &re) && !re.retryable():
			// The cluster answered and refused; an operator has to act
			// (free the port, fix the token). Ask again each interval.
			wait = r.cfg.Interval
		default:
			wait = r.backoff(failures, min(r.backoffBase, r.cfg.Interval), r.cfg.Interval)
			failures++
		}
		if r.sleep(ctx, wait) != nil {
			break
		}
	}
	r.deregister()
	return nil
}

// backoff is the n-th retry delay: base doubling up to ceiling, with the
// upper half jittered so retrying clients spread out.
func (r *registrar) backoff(n int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	return d/2 + time.Duration(r.jitter()*float64(d/2))
}

// attempt registers once, walking the members from the one that answered
// last: a member that cannot be reached or answers 5xx, 408 or 429 passes the
// attempt to the next one; any other answer ends it.
func (r *registrar) attempt(ctx context.Context) error {
	n := len(r.cfg.Members)
	var last error
	var errs []error
	for i := range n {
		idx := (r.member + i) % n
		started := r.now()
		err := r.post(ctx, idx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var re *registerError
		if err == nil || (errors.As(err, &re) && !re.retryable()) {
			if idx != r.member {
				r.log.Info("switched member", "from", r.cfg.Members[r.member], "to", r.cfg.Members[idx],
					"reason", errString(last))
				r.member = idx
			}
			if err == nil {
				r.succeeded(started)
			} else {
				r.failed(err)
			}
			return err
		}
		r.log.Debug("member failed", "member", r.cfg.Members[idx], "err", err)
		errs = append(errs, err)
		last = err
	}
	if len(errs) > 1 {
		// Every member failed: say why for each. Wrapping keeps the
		// *registerError reachable for errors.As.
		last = fmt.Errorf("all %d members failed: "+strings.TrimSuffix(strings.Repeat("%w; ", len(errs)), "; "),
			append([]any{len(errs)}, anySlice(errs)...)...)
	}
	r.failed(last)
	return last
}

func anySlice(errs []error) []any {
	out := make([]any, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// succeeded records an accepted registration sent at started and logs when
// that changes the state.
func (r *registrar) succeeded(started time.Time) {
	r.leaseEnd = started.Add(r.cfg.TTL)
	switch r.state {
	case registerStarting:
		r.log.Info("registered", "name", r.cfg.Name, "frontend_port", r.cfg.FrontendPort,
			"backend", r.backendKey(), "member", r.cfg.Members[r.member], "ttl", r.cfg.TTL)
	case registerFailing:
		r.log.Info("recovered", "member", r.cfg.Members[r.member],
			"failed_for", r.now().Sub(r.failingFrom).Round(time.Millisecond), "failed_attempts", r.attempts)
	default:
		r.log.Debug("renewed", "member", r.cfg.Members[r.member])
	}
	r.state, r.failKind, r.attempts, r.expiredLog = registerOK, "", 0, false
}

// failed records a failed attempt and logs when the state or the kind of
// failure changes, and once when the lease runs out meanwhile.
func (r *registrar) failed(err error) {
	kind := "error"
	var re *registerError
	if errors.As(err, &re) {
		kind = re.kind()
	}
	if r.state != registerFailing {
		r.failingFrom = r.now()
	}
	r.attempts++
	attrs := append([]any{"reason", errString(err)}, r.leaseAttrs()...)
	level := slog.LevelWarn
	if re != nil && !re.retryable() {
		level = slog.LevelError
	}
	switch {
	case r.state == registerOK:
		r.log.Log(context.Background(), level, "lost contact, retrying", attrs...)
	case r.state == registerStarting:
		r.log.Log(context.Background(), level, "cannot register yet, retrying", attrs...)
	case kind != r.failKind:
		r.log.Log(context.Background(), level, "still failing, for another reason", attrs...)
	}
	r.state, r.failKind = registerFailing, kind
	if !r.expiredLog && !r.leaseEnd.IsZero() && !r.now().Before(r.leaseEnd) {
		r.expiredLog = true
		r.log.Error("lease ran out: the backend is no longer routed until a registration succeeds",
			"backend", r.backendKey(), "lease_ended", r.leaseEnd.Format(time.RFC3339))
	}
}

// registerBody is the body of POST /v1/routes/{port}/backends.
type registerBody struct {
	Address       string `json:"address"`
	Port          int    `json:"port"`
	Owner         string `json:"owner,omitempty"`
	TTL           string `json:"ttl"`
	Name          string `json:"name"`
	Create        bool   `json:"create"`
	Balance       string `json:"balance,omitempty"`
	Sticky        *bool  `json:"sticky,omitempty"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
	HealthCheck   *bool  `json:"health_check,omitempty"`
}

// post registers (or refreshes) the backend on member idx.
func (r *registrar) post(ctx context.Context, idx int) error {
	body, err := json.Marshal(registerBody{
		Address: r.cfg.Address, Port: r.cfg.BackendPort, Owner: r.cfg.Owner,
		TTL: r.cfg.TTL.String(), Name: r.cfg.Name, Create: true,
		Balance: r.cfg.Balance, Sticky: r.cfg.Sticky, ProxyProtocol: r.cfg.ProxyProtocol, HealthCheck: r.cfg.HealthCheck,
	})
	if err != nil {
		return err
	}
	return r.send(ctx, idx, http.MethodPost, fmt.Sprintf("/v1/routes/%d/backends", r.cfg.FrontendPort), body)
}

// deregister removes the backend, trying every member in turn, pausing
// between rounds, until one confirms or deregisterTimeout passes. A missing
// backend, or a port that now belongs to another route, counts as done.
func (r *registrar) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), r.deregisterTimeout)
	defer cancel()
	p := fmt.Sprintf("/v1/routes/%d/backends/%s?name=%s", r.cfg.FrontendPort,
		url.PathEscape(r.backendKey()), url.QueryEscape(r.cfg.Name))
	var last error
	for round := 0; ; round++ {
		for i := range r.cfg.Members {
			idx := (r.member + i) % len(r.cfg.Members)
			err := r.send(ctx, idx, http.MethodDelete, p, nil)
			var re *registerError
			switch {
			case err == nil:
				r.log.Info("deregistered", "backend", r.backendKey(), "frontend_port", r.cfg.FrontendPort,
					"member", r.cfg.Members[idx])
				return
			case errors.As(err, &re) && (re.status == http.StatusNotFound || re.status == http.StatusConflict):
				r.log.Info("deregistered: backend already gone", "backend", r.backendKey(),
					"frontend_port", r.cfg.FrontendPort, "member", r.cfg.Members[idx], "answer", re.msg)
				return
			case errors.As(err, &re) && !re.retryable():
				r.log.Error("deregister refused; the lease will expire instead",
					append([]any{"reason", err.Error()}, r.leaseAttrs()...)...)
				return
			}
			last = err
			if ctx.Err() != nil {
				break
			}
		}
		if ctx.Err() != nil || r.sleep(ctx, r.backoff(round, deregisterBackoffBase, deregisterBackoffCap)) != nil {
			r.log.Error("deregister failed; the lease will expire instead",
				append([]any{"reason", errString(last), "gave_up_after", r.deregisterTimeout}, r.leaseAttrs()...)...)
			return
		}
	}
}

// leaseAttrs are log attributes for when the last accepted lease ends, if
// there was one.
func (r *registrar) leaseAttrs() []any {
	if r.leaseEnd.IsZero() {
		return nil
	}
	return []any{"lease_ends", r.leaseEnd.Format(time.RFC3339)}
}

// backendKey is the backend as the API names it: ip:port or [ipv6]:port.
func (r *registrar) backendKey() string {
	a, err := netip.ParseAddr(r.cfg.Address)
	if err != nil {
		return r.cfg.Address
	}
	return netip.AddrPortFrom(a, uint16(r.cfg.BackendPort)).String()
}

// send makes one request to member idx and turns anything but a 2xx into a
// *registerError.
func (r *registrar) send(ctx context.Context, idx int, method, p string, body []byte) error {
	member := r.cfg.Members[idx]
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, member+p, rd)
	if err != nil {
		return &registerError{member: member, err: err}
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.Token)
	req.Header.Set("User-Agent", "drawbridge-register/"+version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.client.Do(req)
	if err != nil {
		// The *url.Error repeats method and URL; the member says enough.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &registerError{member: member, err: err}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	msg := strings.TrimSpace(string(data))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return &registerError{member: member, status: resp.StatusCode, msg: msg, port: r.cfg.FrontendPort}
}

// registerError is a failed request to one member: a transport error
// (status 0) or an HTTP answer that is not 2xx.
type registerError struct {
	member string
	status int
	msg    string
	port   int
	err    error
}

// routeOwnerRE finds the owning route's name in a 409 answer.
var routeOwnerRE = regexp.MustCompile(`belongs to route "([^"]*)"`)

func (e *registerError) Error() string {
	switch {
	case e.status == 0:
		return fmt.Sprintf("%s unreachable: %v", e.member, e.err)
	case e.status == http.StatusConflict:
		if m := routeOwnerRE.FindStringSubmatch(e.msg); m != nil {
			return fmt.Sprintf("port %d owned by %q, another route (HTTP 409 from %s: %s)", e.port, m[1], e.member, e.msg)
		}
		return fmt.Sprintf("port %d owned by another route (HTTP 409 from %s: %s)", e.port, e.member, e.msg)
	case e.status == http.StatusUnauthorized || e.status == http.StatusForbidden:
		return fmt.Sprintf("token refused by %s (HTTP %d: %s): check DRAWBRIDGE_API_TOKEN / WEBHOOK_TOKEN", e.member, e.status, e.msg)
	}
	return fmt.Sprintf("HTTP %d from %s: %s", e.status, e.member, e.msg)
}

func (e *registerError) Unwrap() error { return e.err }

// retryable reports whether another member, or a later attempt, may
// succeed: the member was unreachable, failed (5xx), or asked to be retried.
func (e *registerError) retryable() bool {
	return e.status == 0 || e.status >= 500 ||
		e.status == http.StatusRequestTimeout || e.status == http.StatusTooManyRequests
}

// kind groups failures for logging: a change of kind is a state change.
func (e *registerError) kind() string {
	if e.status == 0 {
		return "unreachable"
	}
	return strconv.Itoa(e.status)
}
