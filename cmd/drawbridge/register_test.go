package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api/client/clienttest"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// regToken is an obviously fake token for the register tests.
const regToken = "example-register-token-not-a-secret"

// clearRegisterEnv blanks every variable `register` reads, so the host's
// environment cannot leak into a test.
func clearRegisterEnv(t *testing.T) {
	for _, s := range registerSettings {
		for _, e := range s.env {
			t.Setenv(e, "")
		}
	}
	for _, e := range registerTokenEnv {
		t.Setenv(e, "")
	}
}

func TestRegisterConfigValidation(t *testing.T) {
	valid := map[string]string{
		"REPEAT_INTERVAL": "30", "FRONTEND_PORT": "8080", "BACKEND_PORT": "30808",
		"NAME": "unifi-adoption", "DST_IP": "10.0.0.5", "DRAWBRIDGE_API_TOKEN": regToken,
	}
	cases := []struct {
		name string
		env  map[string]string // merged over valid; "" unsets
		args []string
		want string
	}{
		{name: "missing frontend port", env: map[string]string{"FRONTEND_PORT": ""}, want: "public port is required"},
		{name: "frontend port 0", env: map[string]string{"FRONTEND_PORT": "0"}, want: `FRONTEND_PORT "0" must be a port number`},
		{name: "frontend port 70000", env: map[string]string{"FRONTEND_PORT": "70000"}, want: `FRONTEND_PORT "70000" must be a port number`},
		{name: "frontend port not a number", env: map[string]string{"FRONTEND_PORT": "abc"}, want: `FRONTEND_PORT "abc" must be a port number`},
		{name: "missing backend port", env: map[string]string{"BACKEND_PORT": ""}, want: "backend port is required"},
		{name: "backend port 70000", env: map[string]string{"BACKEND_PORT": "70000"}, want: `BACKEND_PORT "70000" must be a port number`},
		{name: "flag wins over env", args: []string{"--frontend-port", "0"}, want: `--frontend-port "0" must be a port number`},
		{name: "missing DST_IP", env: map[string]string{"DST_IP": ""}, want: "backend address is required"},
		{name: "DST_IP host name", env: map[string]string{"DST_IP": "node-1.example.com"}, want: `DST_IP "node-1.example.com" must be an IP address`},
		{name: "DST_IP garbage", env: map[string]string{"DST_IP": "10.0.0.300"}, want: `DST_IP "10.0.0.300" must be an IP address`},
		{name: "DST_IP unspecified", env: map[string]string{"DST_IP": "0.0.0.0"}, want: `DST_IP "0.0.0.0" must be an IP address`},
		{name: "missing name", env: map[string]string{"NAME": ""}, want: "route name is required"},
		{name: "invalid name", env: map[string]string{"NAME": "UniFi Adoption"}, want: `NAME "UniFi Adoption" must match`},
		{name: "no token", env: map[string]string{"DRAWBRIDGE_API_TOKEN": ""}, want: "no API token"},
		{name: "token with spaces", env: map[string]string{"DRAWBRIDGE_API_TOKEN": "two words"}, want: "contains spaces"},
		{name: "no webhook", env: map[string]string{"WEBHOOKS": ""}, want: "no drawbridge node to talk to"},
		{name: "webhook not http", env: map[string]string{"WEBHOOKS": "ftp://edge-1.example.com"}, want: "must be an http:// or https:// URL"},
		{name: "webhook with credentials", env: map[string]string{"WEBHOOKS": "https://user:pw@edge-1.example.com"}, want: "must not carry credentials"},
		{name: "TTL equal to interval", env: map[string]string{"TTL": "30s"}, want: "must be longer than the renewal interval"},
		{name: "TTL shorter than interval", env: map[string]string{"REPEAT_INTERVAL": "600", "TTL": "90s"}, want: "must be longer than the renewal interval"},
		{name: "TTL not a duration", env: map[string]string{"TTL": "soon"}, want: `TTL "soon" must be a positive duration`},
		{name: "interval negative", env: map[string]string{"REPEAT_INTERVAL": "-5"}, want: `REPEAT_INTERVAL "-5" must be a positive number`},
		{name: "bad balance", env: map[string]string{"BALANCE": "fastest"}, want: `BALANCE "fastest" must be roundrobin`},
		{name: "bad sticky", env: map[string]string{"STICKY": "maybe"}, want: `STICKY "maybe" must be true or false`},
		{name: "bad proxy protocol", env: map[string]string{"PROXY_PROTOCOL": "v3"}, want: `PROXY_PROTOCOL "v3" must be v1, v2 or off`},
		{name: "token file missing", args: []string{"--token-file", "/nonexistent/token"}, want: "cannot read the token file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := clienttest.New(t, regToken)
			clearRegisterEnv(t)
			env := map[string]string{"WEBHOOKS": api.Srv.URL}
			for k, v := range valid {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			for k, v := range env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			cmd := newRegisterCmd()
			cmd.SetArgs(tc.args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(&stderr)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := cmd.ExecuteContext(ctx)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("got %v (%T), want an exit error with code 2", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message %q does not say %q", err.Error(), tc.want)
			}
			if strings.Contains(err.Error()+stderr.String(), regToken) {
				t.Errorf("the token leaked into the output")
			}
			if n := api.Count(""); n != 0 {
				t.Errorf("%d requests sent for a bad configuration, want none", n)
			}
		})
	}
}

func TestRegisterConfigReportsEveryProblem(t *testing.T) {
	clearRegisterEnv(t)
	cmd := newRegisterCmd()
	cmd.SetArgs(nil)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	for _, want := range []string{"public port is required", "backend port is required", "route name is required",
		"backend address is required", "no API token", "no drawbridge node"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

func TestRegisterConfigDefaultsAndOptions(t *testing.T) {
	clearRegisterEnv(t)
	for k, v := range map[string]string{
		"FRONTEND_PORT": "3333", "BACKEND_PORT": "30333", "NAME": "stratum", "DST_IP": "2001:db8::5",
		"WEBHOOKS": "https://edge-1.example.com:9000, https://edge-2.example.com:9000/",
		"WEBHOOK":  "https://edge-1.example.com:9000/hooks/update-haproxy", "WEBHOOK_TOKEN": regToken,
		"BALANCE": "leastconn", "STICKY": "false", "PROXY_PROTOCOL": "v2", "HEALTH_CHECK": "true",
	} {
		t.Setenv(k, v)
	}
	cmd := newRegisterCmd()
	if err := cmd.ParseFlags([]string{"--owner", "stratum-0"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseRegisterConfig(cmd.Flags(), os.Getenv, os.ReadFile,
		func() (string, error) { return "ignored", nil })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interval != defaultRepeatInterval || cfg.TTL != 3*defaultRepeatInterval {
		t.Errorf("interval %v ttl %v, want %v and three times that", cfg.Interval, cfg.TTL, defaultRepeatInterval)
	}
	wantMembers := []string{"https://edge-1.example.com:9000", "https://edge-2.example.com:9000"}
	if fmt.Sprint(cfg.Members) != fmt.Sprint(wantMembers) {
		t.Errorf("members %q, want %q", cfg.Members, wantMembers)
	}
	if cfg.Token != regToken || cfg.Owner != "stratum-0" || cfg.Address != "2001:db8::5" {
		t.Errorf("token/owner/address not as configured: owner %q address %q", cfg.Owner, cfg.Address)
	}
	if cfg.Balance != "leastconn" || cfg.Sticky == nil || *cfg.Sticky || cfg.ProxyProtocol != "v2" ||
		cfg.HealthCheck == nil || !*cfg.HealthCheck {
		t.Errorf("route options not as configured: %+v", cfg)
	}
}

func TestRegisterMemberBaseURL(t *testing.T) {
	cases := map[string]string{
		"https://edge-1.example.com:9000":                        "https://edge-1.example.com:9000",
		"https://edge-1.example.com:9000/":                       "https://edge-1.example.com:9000",
		"https://edge-1.example.com:9000/hooks/update-haproxy":   "https://edge-1.example.com:9000",
		"https://edge-1.example.com:9000/hooks/update-haproxy/":  "https://edge-1.example.com:9000",
		"http://10.0.0.1:9000/hooks/my-hook":                     "http://10.0.0.1:9000",
		"https://lb.example.com/drawbridge/hooks/update-haproxy": "https://lb.example.com/drawbridge",
		"https://lb.example.com/drawbridge":                      "https://lb.example.com/drawbridge",
		"http://[2001:db8::1]:9000":                              "http://[2001:db8::1]:9000",
	}
	for in, want := range cases {
		got, err := memberBaseURL(in)
		if err != nil || got != want {
			t.Errorf("memberBaseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"edge-1.example.com:9000", "ftp://x", "https://", "https://x/?a=b"} {
		if got, err := memberBaseURL(in); err == nil {
			t.Errorf("memberBaseURL(%q) = %q, want an error", in, got)
		}
	}
}

// TestRegisterLegacyRecipeEnv runs the command as the recipe's sidecar was
// configured: WEBHOOK is the full hook URL and WEBHOOK_TOKEN the token.
func TestRegisterLegacyRecipeEnv(t *testing.T) {
	api := clienttest.New(t, regToken)
	clearRegisterEnv(t)
	for k, v := range map[string]string{
		"REPEAT_INTERVAL": "0.05", // seconds, as the recipe counts them
		"FRONTEND_PORT":   "8080",
		"BACKEND_PORT":    "30808",
		"NAME":            "unifi-adoption",
		"WEBHOOK":         api.Srv.URL + "/hooks/update-haproxy",
		"WEBHOOK_TOKEN":   regToken,
		"DST_IP":          "10.0.0.5",
	} {
		t.Setenv(k, v)
	}
	stderr := &testenv.Buffer{}
	cmd := newRegisterCmd()
	cmd.SetArgs(nil)
	cmd.SetOut(io.Discard)
	cmd.SetErr(stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- cmd.ExecuteContext(ctx) }()

	testenv.Eventually(t, 5*time.Second, "two registrations", func() bool { return api.Count("POST") >= 2 })
	p := api.Requests("POST")[0]
	if p.Path != "/v1/routes/8080/backends" || p.Auth != "Bearer "+regToken || p.Body.TTL != "150ms" ||
		p.Body.Name != "unifi-adoption" || p.Body.Address != "10.0.0.5" || p.Body.Port != 30808 {
		t.Errorf("registration %+v not as the recipe's variables say", p)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("register ended with %v, want nil (exit 0) after the signal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("register did not end after the signal")
	}
	if api.Count("DELETE") != 1 || api.HasBackend("10.0.0.5:30808") {
		t.Error("the backend was not deregistered")
	}
	if strings.Contains(stderr.String(), regToken) {
		t.Error("the token leaked into the logs")
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr)
	}
}
