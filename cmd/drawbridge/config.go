package main

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/internal/agent"
)

// defaults are the embedded configuration. Keys listed here are also the
// keys DRAWBRIDGE_* variables can set (viper only maps env vars onto keys it
// knows).
var defaults = map[string]any{
	"node_name":                           "",
	"data_dir":                            "/var/lib/drawbridge",
	"dev":                                 false,
	"role":                                "edge",
	"join":                                []string{},
	"bootstrap_expect":                    0,
	"api.addr":                            ":9000",
	"api.token":                           "",
	"api.tokens":                          []any{},
	"api.token_file":                      "",
	"api.legacy_header":                   "X-Funkypenguin-Token",
	"api.tls_cert_file":                   "",
	"api.tls_key_file":                    "",
	"api.advertise":                       "",
	"api.forward_ca_file":                 "",
	"api.max_body_bytes":                  64 << 10,
	"api.hook_lease":                      "30m",
	"api.hold_timeout":                    "7s",
	"api.apply_timeout":                   "10s",
	"api.metrics_public":                  false,
	"raft.addr":                           ":9001",
	"raft.advertise":                      "",
	"raft.bootstrap":                      false,
	"raft.heartbeat_timeout":              "1s",
	"raft.election_timeout":               "1s",
	"raft.snapshot_threshold":             8192,
	"raft.snapshot_interval":              "2m",
	"raft.tls_ca_file":                    "",
	"raft.tls_cert_file":                  "",
	"raft.tls_key_file":                   "",
	"gossip.addr":                         ":9002",
	"gossip.advertise":                    "",
	"gossip.key":                          "",
	"gossip.key_file":                     "",
	"gossip.label":                        "drawbridge",
	"gossip.probe_interval":               "200ms",
	"gossip.probe_timeout":                "100ms",
	"gossip.suspicion_mult":               2,
	"gossip.gossip_interval":              "100ms",
	"gossip.allowed_cidrs":                []string{},
	"gossip.reap_after":                   "72h",
	"cluster.insecure":                    false,
	"haproxy.bin":                         "haproxy",
	"haproxy.dir":                         "",
	"haproxy.bind_address":                "",
	"haproxy.hard_stop_after":             "30m",
	"haproxy.max_reloads":                 50,
	"haproxy.maxconn":                     0,
	"haproxy.quiet_window":                "20ms",
	"haproxy.max_delay":                   "250ms",
	"haproxy.timeout_client":              "1h",
	"haproxy.timeout_server":              "1h",
	"haproxy.dynamic_ports":               "30000-32767",
	"haproxy.old_workers_max_mb":          256,
	"routes.deny_ports":                   []string{"22"},
	"routes.backend_cidrs":                []string{},
	"routes.allow_loopback_backends":      false,
	"limits.max_routes":                   1000,
	"limits.max_backends_per_route":       64,
	"limits.max_backends":                 4000,
	"limits.max_ttl":                      "24h",
	"limits.rate":                         50,
	"limits.burst":                        200,
	"limits.max_snapshot_bytes":           4 << 20,
	"haproxy.user":                        "",
	"haproxy.group":                       "",
	"haproxy.chroot":                      false,
	"floating_ip.provider":                "none",
	"floating_ip.address":                 "",
	"floating_ip.interface":               "",
	"floating_ip.prefix_len":              32,
	"floating_ip.priority":                0,
	"floating_ip.hold_down":               "3s",
	"floating_ip.lag_grace":               "5s",
	"floating_ip.exec.command":            "",
	"floating_ip.exec.timeout":            "10s",
	"floating_ip.exec.retries":            3,
	"floating_ip.digitalocean.token_file": "",
	"floating_ip.digitalocean.droplet_id": 0,
	"floating_ip.digitalocean.api_url":    "",
	"leases.interval":                     "5s",
	"leases.grace":                        "2m",
	"leases.max_fraction":                 0.5,
	"leases.force":                        false,
	"log.level":                           "info",
	"log.format":                          "text",
	// Runtime profiles on loopback only; off unless set.
	"debug.pprof_addr": "",
}

// devDefaults replace some defaults under --dev: everything on loopback, data
// in the working directory, a self-bootstrapped single node.
var devDefaults = map[string]any{
	"data_dir":             "./drawbridge-data",
	"api.addr":             "127.0.0.1:9000",
	"raft.addr":            "127.0.0.1:9001",
	"gossip.addr":          "127.0.0.1:9002",
	"raft.bootstrap":       true,
	"haproxy.bind_address": "127.0.0.1",

	// Dev agents share 127.0.0.1: with a range each, several on one
	// machine (tests, demos) would bind the same ports. Set it to try it.
	"haproxy.dynamic_ports": "off",
	// The README's local demo routes to a server on 127.0.0.1.
	"routes.allow_loopback_backends": true,
}

// flagKeys maps agent flags to config keys.
var flagKeys = map[string]string{
	"dev":                  "dev",
	"data-dir":             "data_dir",
	"node-name":            "node_name",
	"api-addr":             "api.addr",
	"raft-addr":            "raft.addr",
	"raft-advertise":       "raft.advertise",
	"gossip-addr":          "gossip.addr",
	"gossip-advertise":     "gossip.advertise",
	"join":                 "join",
	"bootstrap-expect":     "bootstrap_expect",
	"bootstrap":            "raft.bootstrap",
	"haproxy-bind-address": "haproxy.bind_address",
	"haproxy-bin":          "haproxy.bin",
	"haproxy-dir":          "haproxy.dir",
	"log-level":            "log.level",
}

// defaultConfigFile is read when --config is not given and the file exists.
const defaultConfigFile = "/etc/drawbridge/drawbridge.yaml"

// configFileInUse is the file loadConfig reads for --config value flag.
//
// A --dev agent reads only a file named with --config: the installed
// /etc/drawbridge/drawbridge.yaml describes the production node on this
// machine, and a dev agent must stay the zero-setup loopback node whatever is
// installed beside it.
func configFileInUse(flag string, dev bool) string {
	if flag != "" {
		return flag
	}
	if dev {
		return ""
	}
	if _, err := os.Stat(defaultConfigFile); err == nil {
		return defaultConfigFile
	}
	return ""
}

// devRequested reports whether --dev (or DRAWBRIDGE_DEV) asks for a dev
// agent, before any config file is read.
func devRequested(flags *pflag.FlagSet) bool {
	if f := flags.Lookup("dev"); f != nil && f.Changed {
		return f.Value.String() == "true"
	}
	dev, _ := strconv.ParseBool(os.Getenv("DRAWBRIDGE_DEV"))
	return dev
}

// loadConfig builds the Config from defaults, file, env and flags, then
// fills derived values and validates.
func loadConfig(configFile string, flags *pflag.FlagSet) (*agent.Config, error) {
	v := viper.New()
	for k, val := range defaults {
		v.SetDefault(k, val)
	}
	v.SetEnvPrefix("DRAWBRIDGE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for name, key := range flagKeys {
		if f := flags.Lookup(name); f != nil {
			if err := v.BindPFlag(key, f); err != nil {
				return nil, err
			}
		}
	}

	configFile = configFileInUse(configFile, devRequested(flags))
	if configFile != "" {
		v.SetConfigFile(configFile)
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config file %s: %w", configFile, err)
		}
	}
	if f := flags.Lookup("witness"); f != nil && f.Changed && f.Value.String() == "true" {
		v.Set("role", cluster.RoleWitness)
	}
	if v.GetBool("dev") {
		// Defaults rank below file, env and changed flags, so --dev only
		// changes what the operator left unset.
		for k, val := range devDefaults {
			v.SetDefault(k, val)
		}
	}

	var c agent.Config
	hooks := mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		stringToSliceHook,
		stringToTokenHook,
	)
	if err := v.Unmarshal(&c, viper.DecodeHook(hooks), func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = false
	}); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if configFile != "" {
		if err := checkUnknownKeys(v); err != nil {
			return nil, fmt.Errorf("config file %s: %w", configFile, err)
		}
	}
	if err := checkTokenKeys(v.Get("api.tokens")); err != nil {
		return nil, err
	}
	c.Fill()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := c.CheckTrust(); err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	return &c, nil
}

// stringToSliceHook lets env vars give lists as comma-separated strings.
func stringToSliceHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return data, nil
	}
	s := strings.TrimSpace(data.(string))
	if s == "" {
		return []string{}, nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts, nil
}

// checkUnknownKeys refuses config-file keys drawbridge does not know, so a
// typo never silently falls back to a default.
func checkUnknownKeys(v *viper.Viper) error {
	var unknown []string
	for _, k := range v.AllKeys() {
		if _, ok := defaults[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("unknown keys: %s", strings.Join(unknown, ", "))
	}
	return nil
}

// stringToTokenHook reads a bare string in api.tokens (or a comma-separated
// DRAWBRIDGE_API_TOKENS) as a single-token secret: an admin token, as
// api.token is.
func stringToTokenHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to != reflect.TypeFor[agent.TokenConfig]() {
		return data, nil
	}
	return agent.TokenConfig{Secret: strings.TrimSpace(data.(string))}, nil
}

// tokenKeys are the keys an api.tokens entry may have.
var tokenKeys = map[string]bool{
	"name": true, "role": true, "secret_file": true, "sha256": true, "ports": true,
	"names": true, "backend_cidrs": true, "max_ttl": true, "rate": true, "burst": true,
}

// checkTokenKeys refuses unknown keys in api.tokens entries, so a typo in
// a token's scope never silently widens it.
func checkTokenKeys(raw any) error {
	list, ok := raw.([]any)
	if !ok {
		return nil
	}
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			continue
		}
		var unknown []string
		for k := range m {
			if !tokenKeys[strings.ToLower(k)] {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			slices.Sort(unknown)
			return fmt.Errorf("api.tokens[%d]: unknown keys: %s", i, strings.Join(unknown, ", "))
		}
	}
	return nil
}
