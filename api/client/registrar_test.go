package client

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api/client/clienttest"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// regToken is an obviously fake token for the registrar tests.
const regToken = "example-register-token-not-a-secret"

// testRegisterConfig is a valid registration.
func testRegisterConfig(interval time.Duration) RegistrarConfig {
	return RegistrarConfig{
		Interval: interval, TTL: 3 * interval,
		FrontendPort: 8080, BackendPort: 30808, Name: "unifi-adoption", Address: "10.0.0.5",
		Owner: "unifi-5d8f7",
	}
}

// lines counts log lines holding msg=<msg>.
func lines(logs *testenv.Buffer, msg string) int {
	return strings.Count(logs.String(), "msg="+msg)
}

// startRegistrar runs r until the test ends or the returned cancel is called;
// done is closed when Run returns (its error must be nil).
func startRegistrar(t *testing.T, r *Registrar) (cancel func(), done <-chan struct{}) {
	t.Helper()
	ctx, cancelCtx := context.WithCancel(context.Background())
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := r.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancelCtx()
		<-ch
	})
	return cancelCtx, ch
}

// newTestRegistrar is a Registrar of cfg through a Client of members, its
// logs (info and above) kept and shown when the test fails.
func newTestRegistrar(t *testing.T, cfg RegistrarConfig, members ...string) (*Registrar, *testenv.Buffer) {
	t.Helper()
	logs := &testenv.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("register logs:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := New(Config{Members: members, Token: regToken, HTTPClient: &http.Client{Timeout: 5 * time.Second}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistrar(cfg, c, log)
	r.deregisterTimeout = 3 * time.Second
	return r, logs
}

func TestRegistrarRenewsAndDeregisters(t *testing.T) {
	api := clienttest.New(t, regToken)
	const interval = 50 * time.Millisecond
	cfg := testRegisterConfig(interval)
	cfg.Balance, cfg.ProxyProtocol = "source", "v2"
	sticky := true
	cfg.Sticky = &sticky
	r, logs := newTestRegistrar(t, cfg, api.Srv.URL)
	cancel, done := startRegistrar(t, r)

	testenv.Eventually(t, 5*time.Second, "four registrations", func() bool { return api.Count("POST") >= 4 })
	posts := api.Requests("POST")
	first := posts[0]
	if first.Path != "/v1/routes/8080/backends" || first.Auth != "Bearer "+regToken {
		t.Errorf("first request %s with auth %q, want /v1/routes/8080/backends with the bearer token", first.Path, first.Auth)
	}
	want := clienttest.Registration{Address: "10.0.0.5", Port: 30808, Owner: "unifi-5d8f7", TTL: "150ms", Name: "unifi-adoption",
		Create: true, Balance: "source", Sticky: &sticky, ProxyProtocol: "v2"}
	if b := first.Body; b.Address != want.Address || b.Port != want.Port || b.Owner != want.Owner || b.TTL != want.TTL ||
		b.Name != want.Name || !b.Create || b.Balance != want.Balance || b.Sticky == nil || !*b.Sticky ||
		b.ProxyProtocol != want.ProxyProtocol || b.HealthCheck != nil {
		t.Errorf("registration body %+v, want %+v", b, want)
	}
	for i := 1; i < len(posts); i++ {
		// Renewals come at the interval (at most 10% early), not faster.
		if gap := posts[i].At.Sub(posts[i-1].At); gap < interval*9/10-5*time.Millisecond {
			t.Errorf("renewal %d came %v after the previous one, want about %v", i, gap, interval)
		}
	}
	if n := lines(logs, "registered"); n != 1 {
		t.Errorf("%d \"registered\" lines, want exactly one (no line per heartbeat)", n)
	}
	if n := strings.Count(logs.String(), "\n"); n > 3 {
		t.Errorf("%d log lines after %d renewals, want only state changes:\n%s", n, len(posts), logs)
	}

	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	dels := api.Requests("DELETE")
	if len(dels) != 1 {
		t.Fatalf("%d deregistrations, want 1", len(dels))
	}
	if dels[0].HostPort != "10.0.0.5:30808" || dels[0].Name != "unifi-adoption" || dels[0].Auth != "Bearer "+regToken {
		t.Errorf("deregistration %+v, want backend 10.0.0.5:30808 of route unifi-adoption with the token", dels[0])
	}
	if api.HasBackend("10.0.0.5:30808") {
		t.Error("backend still registered after deregistration")
	}
	if lines(logs, "deregistered") != 1 {
		t.Errorf("no \"deregistered\" log line")
	}
	if strings.Contains(logs.String(), regToken) {
		t.Error("the token leaked into the logs")
	}
}

func TestRegistrarDeregistersIPv6(t *testing.T) {
	api := clienttest.New(t, regToken)
	cfg := testRegisterConfig(50 * time.Millisecond)
	cfg.Address = "2001:db8::5"
	r, _ := newTestRegistrar(t, cfg, api.Srv.URL)
	cancel, done := startRegistrar(t, r)
	testenv.Eventually(t, 5*time.Second, "registration", func() bool { return api.Count("POST") >= 1 })
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	dels := api.Requests("DELETE")
	if len(dels) != 1 || dels[0].HostPort != "[2001:db8::5]:30808" {
		t.Fatalf("deregistrations %+v, want one of [2001:db8::5]:30808", dels)
	}
	if api.HasBackend("[2001:db8::5]:30808") {
		t.Error("backend still registered")
	}
}

func TestRegistrarFailsOverToNextMember(t *testing.T) {
	// The first member is dead from the start.
	deadURL := testenv.DeadURL(t)
	a, b := clienttest.New(t, regToken), clienttest.New(t, regToken)
	r, logs := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond), deadURL, a.Srv.URL, b.Srv.URL)
	cancel, done := startRegistrar(t, r)

	testenv.Eventually(t, 5*time.Second, "registration on the second member", func() bool { return a.Count("POST") >= 2 })
	if b.Count("") != 0 {
		t.Errorf("third member got requests while the second answered")
	}
	if lines(logs, `"switched member"`) != 1 || !strings.Contains(logs.String(), "to="+a.Srv.URL) {
		t.Errorf("want one \"switched member\" line to %s", a.Srv.URL)
	}

	// The member it talks to dies: it carries on with the next one.
	a.Srv.Close()
	testenv.Eventually(t, 5*time.Second, "registration on the third member", func() bool { return b.Count("POST") >= 2 })
	if !strings.Contains(logs.String(), "to="+b.Srv.URL) {
		t.Errorf("no \"switched member\" line to %s", b.Srv.URL)
	}
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	if b.Count("DELETE") != 1 || b.HasBackend("10.0.0.5:30808") {
		t.Errorf("want the backend deregistered on the member that answered")
	}
}

func TestRegistrarBacksOffOn503(t *testing.T) {
	api := clienttest.New(t, regToken)
	const failures = 5
	api.Answer = func(method string, n int) (int, string) {
		if method == http.MethodPost && n < failures {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	const interval = time.Second
	r, logs := newTestRegistrar(t, testRegisterConfig(interval), api.Srv.URL)
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
	testenv.Eventually(t, 5*time.Second, "registration after the 503s", func() bool { return api.Count("POST") > failures+1 })
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")

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
	if n := lines(logs, `"cannot register yet, retrying"`); n != 1 {
		t.Errorf("%d failure lines for %d identical failures, want one", n, failures)
	}
	if !strings.Contains(logs.String(), "no leader") {
		t.Error("the failure line does not give the reason")
	}
	if lines(logs, "recovered") != 1 {
		t.Error("no \"recovered\" line")
	}
}

func TestRegistrarBackoffIsCappedAtInterval(t *testing.T) {
	r := NewRegistrar(testRegisterConfig(time.Second), nil, nil)
	r.jitter = func() float64 { return 0.999 }
	for n := range 40 {
		if d := r.backoff(n, time.Second, 30*time.Second); d > 30*time.Second || d <= 0 {
			t.Fatalf("backoff(%d) = %v, want within (0, 30s]", n, d)
		}
	}
}

func TestRegistrarConflictIsNotFailedOver(t *testing.T) {
	a, b := clienttest.New(t, regToken), clienttest.New(t, regToken)
	a.Answer = func(method string, _ int) (int, string) {
		if method == http.MethodPost {
			return http.StatusConflict, `port taken: port 8080 belongs to route "minecraft"`
		}
		return 0, ""
	}
	const interval = time.Second
	r, logs := newTestRegistrar(t, testRegisterConfig(interval), a.Srv.URL, b.Srv.URL)
	waited := make(chan time.Duration, 10)
	r.sleep = func(ctx context.Context, d time.Duration) error {
		select {
		case waited <- d:
		default:
		}
		return sleepContext(ctx, time.Millisecond)
	}
	cancel, done := startRegistrar(t, r)
	testenv.Eventually(t, 5*time.Second, "two refused registrations", func() bool { return a.Count("POST") >= 2 })
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	if n := b.Count("POST"); n != 0 {
		t.Errorf("a 409 was retried on another member (%d requests)", n)
	}
	if !strings.Contains(logs.String(), `port 8080 owned by \"minecraft\"`) {
		t.Errorf("the conflict is not logged as the port owned by \"minecraft\"")
	}
	if n := lines(logs, `"cannot register yet, retrying"`); n != 1 {
		t.Errorf("%d conflict lines, want one", n)
	}
	if d := <-waited; d != interval {
		t.Errorf("waited %v after a refusal, want the interval %v", d, interval)
	}
}

func TestRegistrarLogsLostContactAndRecovery(t *testing.T) {
	api := clienttest.New(t, regToken)
	var mu sync.Mutex
	failing := false
	api.Answer = func(method string, _ int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if method == http.MethodPost && failing {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	setFailing := func(v bool) { mu.Lock(); failing = v; mu.Unlock() }
	r, logs := newTestRegistrar(t, testRegisterConfig(30*time.Millisecond), api.Srv.URL)
	r.backoffBase = 5 * time.Millisecond
	startRegistrar(t, r)
	testenv.Eventually(t, 5*time.Second, "registered", func() bool { return lines(logs, "registered") == 1 })
	setFailing(true)
	testenv.Eventually(t, 5*time.Second, "lost contact", func() bool { return lines(logs, `"lost contact, retrying"`) == 1 })
	testenv.Eventually(t, 5*time.Second, "lease ran out", func() bool { return strings.Contains(logs.String(), "lease ran out") })
	setFailing(false)
	testenv.Eventually(t, 5*time.Second, "recovered", func() bool { return lines(logs, "recovered") == 1 })
	if n := lines(logs, `"lost contact, retrying"`); n != 1 {
		t.Errorf("%d lost-contact lines, want one", n)
	}
}

func TestRegistrarDeregisterTriesEachMember(t *testing.T) {
	a, b := clienttest.New(t, regToken), clienttest.New(t, regToken)
	a.Answer = func(method string, _ int) (int, string) {
		if method == http.MethodDelete {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	r, _ := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond), a.Srv.URL, b.Srv.URL)
	cancel, done := startRegistrar(t, r)
	testenv.Eventually(t, 5*time.Second, "registration", func() bool { return a.Count("POST") >= 1 })
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	if a.Count("DELETE") != 1 || b.Count("DELETE") != 1 {
		t.Errorf("deregistrations: %d on the first member, %d on the second; want one each",
			a.Count("DELETE"), b.Count("DELETE"))
	}
}

func TestRegistrarDeregisterIsBounded(t *testing.T) {
	api := clienttest.New(t, regToken)
	api.Answer = func(method string, _ int) (int, string) {
		if method == http.MethodDelete {
			return http.StatusServiceUnavailable, "not committed: no leader"
		}
		return 0, ""
	}
	r, logs := newTestRegistrar(t, testRegisterConfig(50*time.Millisecond), api.Srv.URL)
	r.deregisterTimeout = 300 * time.Millisecond
	cancel, done := startRegistrar(t, r)
	testenv.Eventually(t, 5*time.Second, "registration", func() bool { return api.Count("POST") >= 1 })
	cancel()
	testenv.WaitClosed(t, done, 5*time.Second, "run after cancel")
	if api.Count("DELETE") < 2 {
		t.Errorf("%d deregistration attempts, want retries within the budget", api.Count("DELETE"))
	}
	if !strings.Contains(logs.String(), "deregister failed; the lease will expire instead") {
		t.Error("giving up is not logged")
	}
}
