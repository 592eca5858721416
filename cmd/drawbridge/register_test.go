package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// regToken is an obviously fake token for the register tests.
const regToken = "example-register-token-not-a-secret"

// fakeRequest is one request the fake API received.
type fakeRequest struct {
	at     time.Time
	method string
	path   string // with the query
	auth   string
	body   registerBody
	// hostport and name are the deregistration's path value and ?name=.
	hostport, name string
}

// fakeAPI imitates the register/deregister endpoints of the drawbridge API.
// Answers are 200 (POST) and 200/404 (DELETE) unless answer says otherwise.
type fakeAPI struct {
	srv *httptest.Server

	mu       sync.Mutex
	reqs     []fakeRequest
	backends map[string]bool
	// answer, when set, may override the status of the n-th (0-based)
	// request with this method; 0 keeps the default.
	answer func(method string, n int) (status int, msg string)
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	f := &fakeAPI{backends: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/routes/{port}/backends", f.handle)
	mux.HandleFunc("DELETE /v1/routes/{port}/backends/{hostport}", f.handle)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.record(r, fakeRequest{})
		writeFakeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) record(r *http.Request, fr fakeRequest) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, q := range f.reqs {
		if q.method == r.Method {
			n++
		}
	}
	fr.at, fr.method, fr.path, fr.auth = time.Now(), r.Method, r.URL.RequestURI(), r.Header.Get("Authorization")
	f.reqs = append(f.reqs, fr)
	return n
}

func (f *fakeAPI) handle(w http.ResponseWriter, r *http.Request) {
	fr := fakeRequest{hostport: r.PathValue("hostport"), name: r.URL.Query().Get("name")}
	if r.Method == http.MethodPost {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields() // as the real API does
		if err := dec.Decode(&fr.body); err != nil {
			f.record(r, fr)
			writeFakeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	n := f.record(r, fr)
	if r.Header.Get("Authorization") != "Bearer "+regToken {
		writeFakeError(w, http.StatusForbidden, "invalid token")
		return
	}
	f.mu.Lock()
	answer := f.answer
	f.mu.Unlock()
	if answer != nil {
		if status, msg := answer(r.Method, n); status != 0 {
			writeFakeError(w, status, msg)
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodPost:
		key := fmt.Sprintf("%s:%d", fr.body.Address, fr.body.Port)
		f.backends[key] = true
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"port": r.PathValue("port"), "name": fr.body.Name})
	case http.MethodDelete:
		if !f.backends[fr.hostport] {
			writeFakeError(w, http.StatusNotFound, "no backend "+fr.hostport)
			return
		}
		delete(f.backends, fr.hostport)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"route_deleted":true}`)
	}
}

func writeFakeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// requests returns the requests received so far with method ("" for all).
func (f *fakeAPI) requests(method string) []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeRequest
	for _, r := range f.reqs {
		if method == "" || r.method == method {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeAPI) count(method string) int { return len(f.requests(method)) }

func (f *fakeAPI) hasBackend(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backends[key]
}

// testRegisterConfig is a valid configuration against members.
func testRegisterConfig(interval time.Duration, members ...string) registerConfig {
	return registerConfig{
		Interval: interval, TTL: 3 * interval,
		FrontendPort: 8080, BackendPort: 30808, Name: "unifi-adoption", Address: "10.0.0.5",
		Owner: "unifi-5d8f7", Members: members, Token: regToken,
	}
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines counts log lines holding msg=<msg>.
func (l *logBuffer) lines(msg string) int {
	return strings.Count(l.String(), "msg="+msg)
}

// startRegistrar runs r until the test ends or the returned cancel is called;
// done is closed when run returns (its error must be nil).
func startRegistrar(t *testing.T, r *registrar) (cancel func(), done <-chan struct{}) {
	t.Helper()
	ctx, cancelCtx := context.WithCancel(context.Background())
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := r.run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancelCtx()
		<-ch
	})
	return cancelCtx, ch
}

func newTestRegistrar(t *testing.T, cfg registerConfig) (*registrar, *logBuffer) {
	logs := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("register logs:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := newRegistrar(cfg, &http.Client{Timeout: 5 * time.Second}, log)
	r.deregisterTimeout = 3 * time.Second
	return r, logs
}

func waitDone(t *testing.T, done <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("%s did not finish within %v", what, within)
	}
}

// pollUntil fails the test when cond is not true within timeout.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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
			api := newFakeAPI(t)
			clearRegisterEnv(t)
			env := map[string]string{"WEBHOOKS": api.srv.URL}
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
			if n := api.count(""); n != 0 {
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

func TestRegisterRenewsAndDeregisters(t *testing.T) {
	api := newFakeAPI(t)
	const interval = 50 * time.Millisecond
	cfg := testRegisterConfig(interval, api.srv.URL)
	cfg.Balance, cfg.ProxyProtocol = "source", "v2"
	sticky := true
	cfg.Sticky = &sticky
	r, logs := newTestRegistrar(t, cfg)
	cancel, done := startRegistrar(t, r)

	pollUntil(t, 5*time.Second, "four registrations", func() bool { return api.count("POST") >= 4 })
	posts := api.requests("POST")
	first := posts[0]
	if first.path != "/v1/routes/8080/backends" || first.auth != "Bearer "+regToken {
		t.Errorf("first request %s with auth %q, want /v1/routes/8080/backends with the bearer token", first.path, first.auth)
	}
	want := registerBody{Address: "10.0.0.5", Port: 30808, Owner: "unifi-5d8f7", TTL: "150ms", Name: "unifi-adoption",
		Create: true, Balance: "source", Sticky: &sticky, ProxyProtocol: "v2"}
	if b := first.body; b.Address != want.Address || b.Port != want.Port || b.Owner != want.Owner || b.TTL != want.TTL ||
		b.Name != want.Name || !b.Create || b.Balance != want.Balance || b.Sticky == nil || !*b.Sticky ||
		b.ProxyProtocol != want.ProxyProtocol || b.HealthCheck != nil {
		t.Errorf("registration body %+v, want %+v", b, want)
	}
	for i := 1; i < len(posts); i++ {
		// Renewals come at the interval (at most 10% early), not faster.
		if gap := posts[i].at.Sub(posts[i-1].at); gap < interval*9/10-5*time.Millisecond {
			t.Errorf("renewal %d came %v after the previous one, want about %v", i, gap, interval)
		}
	}
	if n := logs.lines("registered"); n != 1 {
		t.Errorf("%d \"registered\" lines, want exactly one (no line per heartbeat)", n)
	}
	if n := strings.Count(logs.String(), "\n"); n > 3 {
		t.Errorf("%d log lines after %d renewals, want only state changes:\n%s", n, len(posts), logs)
	}

	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	dels := api.requests("DELETE")
	if len(dels) != 1 {
		t.Fatalf("%d deregistrations, want 1", len(dels))
	}
	if dels[0].hostport != "10.0.0.5:30808" || dels[0].name != "unifi-adoption" || dels[0].auth != "Bearer "+regToken {
		t.Errorf("deregistration %+v, want backend 10.0.0.5:30808 of route unifi-adoption with the token", dels[0])
	}
	if api.hasBackend("10.0.0.5:30808") {
		t.Error("backend still registered after deregistration")
	}
	if logs.lines("deregistered") != 1 {
		t.Errorf("no \"deregistered\" log line")
	}
	if strings.Contains(logs.String(), regToken) {
		t.Error("the token leaked into the logs")
	}
}

func TestRegisterDeregistersIPv6(t *testing.T) {
	api := newFakeAPI(t)
	cfg := testRegisterConfig(50*time.Millisecond, api.srv.URL)
	cfg.Address = "2001:db8::5"
	r, _ := newTestRegistrar(t, cfg)
	cancel, done := startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "registration", func() bool { return api.count("POST") >= 1 })
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	dels := api.requests("DELETE")
	if len(dels) != 1 || dels[0].hostport != "[2001:db8::5]:30808" {
		t.Fatalf("deregistrations %+v, want one of [2001:db8::5]:30808", dels)
	}
	if api.hasBackend("[2001:db8::5]:30808") {
		t.Error("backend still registered")
	}
}

func TestRegisterFailsOverToNextMember(t *testing.T) {
	// The first member is dead from the start.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	a, b := newFakeAPI(t), newFakeAPI(t)
	r, logs := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond, deadURL, a.srv.URL, b.srv.URL))
	cancel, done := startRegistrar(t, r)

	pollUntil(t, 5*time.Second, "registration on the second member", func() bool { return a.count("POST") >= 2 })
	if b.count("") != 0 {
		t.Errorf("third member got requests while the second answered")
	}
	if logs.lines(`"switched member"`) != 1 || !strings.Contains(logs.String(), "to="+a.srv.URL) {
		t.Errorf("want one \"switched member\" line to %s", a.srv.URL)
	}

	// The member it talks to dies: it carries on with the next one.
	a.srv.Close()
	pollUntil(t, 5*time.Second, "registration on the third member", func() bool { return b.count("POST") >= 2 })
	if !strings.Contains(logs.String(), "to="+b.srv.URL) {
		t.Errorf("no \"switched member\" line to %s", b.srv.URL)
	}
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	if b.count("DELETE") != 1 || b.hasBackend("10.0.0.5:30808") {
		t.Errorf("want the backend deregistered on the member that answered")
	}
}

func TestRegisterBacksOffOn503(t *testing.T) {
	api := newFakeAPI(t)
	const failures = 5
	api.answer = func(method string, n int) (int, string) {
		if method == http.MethodPost && n < failures {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	const interval = time.Second
	r, logs := newTestRegistrar(t, testRegisterConfig(interval, api.srv.URL))
	r.backoffBase = 10 * time.Millisecond
	var mu sync.Mutex
	var waits []time.Duration
	r.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return sleepContext(ctx, time.Millisecond) // the test does not wait for real
	}
	cancel, done := startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "registration after the 503s", func() bool { return api.count("POST") > failures+1 })
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")

	mu.Lock()
	defer mu.Unlock()
	if len(waits) < failures+1 {
		t.Fatalf("%d waits, want at least %d", len(waits), failures+1)
	}
	for i := range failures {
		// Doubling from 10ms, jittered within the upper half.
		ceil := r.backoffBase << i
		if waits[i] < ceil/2 || waits[i] > ceil {
			t.Errorf("backoff %d is %v, want between %v and %v", i, waits[i], ceil/2, ceil)
		}
	}
	if w := waits[failures]; w < interval*9/10 || w > interval {
		t.Errorf("wait after success is %v, want about the interval %v", w, interval)
	}
	if n := logs.lines(`"cannot register yet, retrying"`); n != 1 {
		t.Errorf("%d failure lines for %d identical failures, want one", n, failures)
	}
	if !strings.Contains(logs.String(), "no leader") {
		t.Error("the failure line does not give the reason")
	}
	if logs.lines("recovered") != 1 {
		t.Error("no \"recovered\" line")
	}
}

func TestRegisterBackoffIsCappedAtInterval(t *testing.T) {
	r := newRegistrar(testRegisterConfig(time.Second), nil, slog.New(slog.DiscardHandler))
	r.jitter = func() float64 { return 0.999 }
	for n := range 40 {
		if d := r.backoff(n, time.Second, 30*time.Second); d > 30*time.Second || d <= 0 {
			t.Fatalf("backoff(%d) = %v, want within (0, 30s]", n, d)
		}
	}
}

func TestRegisterConflictIsNotFailedOver(t *testing.T) {
	a, b := newFakeAPI(t), newFakeAPI(t)
	a.answer = func(method string, _ int) (int, string) {
		if method == http.MethodPost {
			return http.StatusConflict, `port taken: port 8080 belongs to route "minecraft"`
		}
		return 0, ""
	}
	const interval = time.Second
	r, logs := newTestRegistrar(t, testRegisterConfig(interval, a.srv.URL, b.srv.URL))
	waited := make(chan time.Duration, 10)
	r.sleep = func(ctx context.Context, d time.Duration) error {
		select {
		case waited <- d:
		default:
		}
		return sleepContext(ctx, time.Millisecond)
	}
	cancel, done := startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "two refused registrations", func() bool { return a.count("POST") >= 2 })
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	if n := b.count("POST"); n != 0 {
		t.Errorf("a 409 was retried on another member (%d requests)", n)
	}
	if !strings.Contains(logs.String(), `port 8080 owned by \"minecraft\"`) {
		t.Errorf("the conflict is not logged as the port owned by \"minecraft\"")
	}
	if n := logs.lines(`"cannot register yet, retrying"`); n != 1 {
		t.Errorf("%d conflict lines, want one", n)
	}
	if d := <-waited; d != interval {
		t.Errorf("waited %v after a refusal, want the interval %v", d, interval)
	}
}

func TestRegisterLogsLostContactAndRecovery(t *testing.T) {
	api := newFakeAPI(t)
	var mu sync.Mutex
	failing := false
	api.answer = func(method string, _ int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if method == http.MethodPost && failing {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	setFailing := func(v bool) { mu.Lock(); failing = v; mu.Unlock() }
	r, logs := newTestRegistrar(t, testRegisterConfig(30*time.Millisecond, api.srv.URL))
	r.backoffBase = 5 * time.Millisecond
	startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "registered", func() bool { return logs.lines("registered") == 1 })
	setFailing(true)
	pollUntil(t, 5*time.Second, "lost contact", func() bool { return logs.lines(`"lost contact, retrying"`) == 1 })
	pollUntil(t, 5*time.Second, "lease ran out", func() bool { return strings.Contains(logs.String(), "lease ran out") })
	setFailing(false)
	pollUntil(t, 5*time.Second, "recovered", func() bool { return logs.lines("recovered") == 1 })
	if n := logs.lines(`"lost contact, retrying"`); n != 1 {
		t.Errorf("%d lost-contact lines, want one", n)
	}
}

func TestRegisterDeregisterTriesEachMember(t *testing.T) {
	a, b := newFakeAPI(t), newFakeAPI(t)
	a.answer = func(method string, _ int) (int, string) {
		if method == http.MethodDelete {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	r, _ := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond, a.srv.URL, b.srv.URL))
	cancel, done := startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "registration", func() bool { return a.count("POST") >= 1 })
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	if a.count("DELETE") != 1 || b.count("DELETE") != 1 {
		t.Errorf("deregistrations: %d on the first member, %d on the second; want one each",
			a.count("DELETE"), b.count("DELETE"))
	}
}

func TestRegisterDeregisterIsBounded(t *testing.T) {
	api := newFakeAPI(t)
	api.answer = func(method string, _ int) (int, string) {
		if method == http.MethodDelete {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	r, logs := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond, api.srv.URL))
	r.deregisterTimeout = 300 * time.Millisecond
	cancel, done := startRegistrar(t, r)
	pollUntil(t, 5*time.Second, "registration", func() bool { return api.count("POST") >= 1 })
	cancel()
	waitDone(t, done, 5*time.Second, "run after cancel")
	if api.count("DELETE") < 2 {
		t.Errorf("%d deregistration attempts, want retries within the budget", api.count("DELETE"))
	}
	if !strings.Contains(logs.String(), "deregister failed; the lease will expire instead") {
		t.Error("giving up is not logged")
	}
}

// TestRegisterLegacyRecipeEnv runs the command as the recipe's sidecar was
// configured: WEBHOOK is the full hook URL and WEBHOOK_TOKEN the token.
func TestRegisterLegacyRecipeEnv(t *testing.T) {
	api := newFakeAPI(t)
	clearRegisterEnv(t)
	for k, v := range map[string]string{
		"REPEAT_INTERVAL": "0.05", // seconds, as the recipe counts them
		"FRONTEND_PORT":   "8080",
		"BACKEND_PORT":    "30808",
		"NAME":            "unifi-adoption",
		"WEBHOOK":         api.srv.URL + "/hooks/update-haproxy",
		"WEBHOOK_TOKEN":   regToken,
		"DST_IP":          "10.0.0.5",
	} {
		t.Setenv(k, v)
	}
	stderr := &logBuffer{}
	cmd := newRegisterCmd()
	cmd.SetArgs(nil)
	cmd.SetOut(io.Discard)
	cmd.SetErr(stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- cmd.ExecuteContext(ctx) }()

	pollUntil(t, 5*time.Second, "two registrations", func() bool { return api.count("POST") >= 2 })
	p := api.requests("POST")[0]
	if p.path != "/v1/routes/8080/backends" || p.auth != "Bearer "+regToken || p.body.TTL != "150ms" ||
		p.body.Name != "unifi-adoption" || p.body.Address != "10.0.0.5" || p.body.Port != 30808 {
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
	if api.count("DELETE") != 1 || api.hasBackend("10.0.0.5:30808") {
		t.Error("the backend was not deregistered")
	}
	if strings.Contains(stderr.String(), regToken) {
		t.Error("the token leaked into the logs")
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr)
	}
}

// devRoute reads the route on port from a dev agent: its backends, or ok
// false when there is none.
func devRoute(t *testing.T, a *testAgent, port int) (backends []struct {
	Address   string    `json:"address"`
	Port      int       `json:"port"`
	ExpiresAt time.Time `json:"expires_at"`
}, ok bool) {
	t.Helper()
	code, body := a.request("GET", fmt.Sprintf("/v1/routes/%d", port), bearer(), nil)
	if code == http.StatusNotFound {
		return nil, false
	}
	if code != http.StatusOK {
		t.Fatalf("get route %d: %d %s", port, code, body)
	}
	var r struct {
		Backends []struct {
			Address   string    `json:"address"`
			Port      int       `json:"port"`
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"backends"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decode route %s: %v", body, err)
	}
	return r.Backends, true
}

// TestRegisterDevAgent runs the registrar against a real agent and HAProxy:
// the route it creates carries traffic, the backend has a lease, and
// cancelling deregisters it (and so removes the implicit route).
func TestRegisterDevAgent(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgent(t)
	be := startBackend(t, "registered")
	fport := freePort(t)
	cfg := testRegisterConfig(200*time.Millisecond, a.url(""))
	cfg.Token, cfg.FrontendPort, cfg.BackendPort, cfg.Address = testToken, fport, be.port(), "127.0.0.1"
	r, _ := newTestRegistrar(t, cfg)
	cancel, done := startRegistrar(t, r)

	addr := fmt.Sprintf("127.0.0.1:%d", fport)
	poll(t, 10*time.Second, "registered route live through HAProxy", func() bool {
		got, err := dialRead(addr)
		return err == nil && got == "registered"
	})
	backends, ok := devRoute(t, a, fport)
	if !ok || len(backends) != 1 || backends[0].Port != be.port() || backends[0].ExpiresAt.IsZero() {
		t.Fatalf("route %d backends %+v, want one backend with a lease", fport, backends)
	}
	cancel()
	waitDone(t, done, 15*time.Second, "run after cancel")
	if _, ok := devRoute(t, a, fport); ok {
		t.Errorf("route %d still exists after deregistering its only backend", fport)
	}
}

// TestRegisterBinarySIGTERM runs `drawbridge register` as a process against a
// real agent: SIGTERM deregisters and exits 0 well within the 30 s a pod gets.
func TestRegisterBinarySIGTERM(t *testing.T) {
	requireHAProxy(t)
	if out, err := exec.Command(binPath, "register", "--help").CombinedOutput(); err != nil {
		t.Fatalf("drawbridge register --help: %v: %s", err, out)
	}
	a := startDevAgent(t)
	be := startBackend(t, "sidecar")
	fport := freePort(t)
	cmd := exec.Command(binPath, "register")
	cmd.Env = append(os.Environ(),
		"REPEAT_INTERVAL=1", "TTL=5s",
		fmt.Sprintf("FRONTEND_PORT=%d", fport), fmt.Sprintf("BACKEND_PORT=%d", be.port()),
		"NAME=sidecar", "DST_IP=127.0.0.1",
		"WEBHOOK="+a.url("/hooks/update-haproxy"), "WEBHOOK_TOKEN="+testToken,
		"DRAWBRIDGE_API_TOKEN=", "WEBHOOKS=")
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("register logs:\n%s", logs)
		}
	})
	poll(t, 10*time.Second, "sidecar route live", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", fport))
		return err == nil && got == "sidecar"
	})
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("register exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("register did not exit within 20s of SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if _, ok := devRoute(t, a, fport); ok {
		t.Errorf("route %d still exists after SIGTERM", fport)
	}
	if strings.Contains(logs.String(), testToken) {
		t.Error("the token leaked into the logs")
	}
}
