package main

import (
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/signal"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/drawbridge-lb/drawbridge/api/client"
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

// registration is what the Registrar keeps registered.
func (c registerConfig) registration() client.RegistrarConfig {
	return client.RegistrarConfig{
		Interval: c.Interval, TTL: c.TTL,
		FrontendPort: c.FrontendPort, Name: c.Name,
		Address: c.Address, BackendPort: c.BackendPort, Owner: c.Owner,
		Balance: c.Balance, Sticky: c.Sticky, ProxyProtocol: c.ProxyProtocol, HealthCheck: c.HealthCheck,
	}
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
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: cfg.LogLevel})).
				With("component", "register")
			c, err := client.New(client.Config{
				Members:   cfg.Members,
				Token:     cfg.Token,
				CAFile:    cfg.CAFile,
				Timeout:   registerRequestTimeout,
				UserAgent: "drawbridge-register/" + version,
				Logger:    log,
			})
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				// After the first signal, a second one ends the process at
				// once instead of waiting for deregistration.
				<-ctx.Done()
				stop()
			}()
			return client.NewRegistrar(cfg.registration(), c, log).Run(ctx)
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
