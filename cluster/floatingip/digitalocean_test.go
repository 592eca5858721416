package floatingip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

const (
	testToken   = "dop_v1_FAKE-TOKEN-0123456789abcdef-not-a-real-token"
	testIP      = "203.0.113.7"
	testDroplet = 4242
	otherDrop   = 1717
)

// fakeDO is a local fake of the DigitalOcean reserved-IP API: the endpoints
// godo calls for Get, Assign and action polling, with knobs to answer errors
// and to keep actions in progress.
type fakeDO struct {
	t *testing.T

	mu      sync.Mutex
	holder  int // droplet the IP is assigned to, 0 = none
	exists  bool
	actions map[int]*fakeAction
	nextID  int

	// Knobs: answer the next N assign requests with this error.
	pending422 int
	other422   int // a 422 that is not a pending event
	rate429    int
	server500  int
	retryAfter string // Retry-After header on 429s
	// get500 answers the next N GET /v2/reserved_ips/{ip} with 500.
	get500 int
	// inProgressPolls keeps a new action in progress for this many polls.
	inProgressPolls int
	// errorAction makes new actions end as errored.
	errorAction bool

	// Observations.
	assigns     int // assign requests that got an action
	assignPosts int // every POST to the actions endpoint
	postTimes   []time.Time
	authBad     int // requests without the expected bearer token
	polls       int
}

type fakeAction struct {
	id        int
	droplet   int
	pollsLeft int
	errored   bool
	status    string
}

func newFakeDO(t *testing.T) (*fakeDO, *httptest.Server) {
	f := &fakeDO{t: t, exists: true, actions: map[int]*fakeAction{}, nextID: 1000}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/reserved_ips/{ip}", f.getIP)
	mux.HandleFunc("POST /v2/reserved_ips/{ip}/actions", f.postAction)
	mux.HandleFunc("GET /v2/reserved_ips/{ip}/actions/{id}", f.getAction)
	mux.HandleFunc("GET /v2/actions/{id}", f.getAction)
	mux.HandleFunc("GET /metadata/v1/id", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", testDroplet)
	})
	srv := httptest.NewServer(f.auth(mux))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeDO) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/metadata/") && r.Header.Get("Authorization") != "Bearer "+testToken {
			f.mu.Lock()
			f.authBad++
			f.mu.Unlock()
			writeJSON(w, http.StatusUnauthorized, map[string]string{"id": "unauthorized", "message": "Unable to authenticate you."})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeDO) ipJSON() map[string]any {
	var droplet any
	if f.holder != 0 {
		droplet = map[string]any{"id": f.holder, "name": fmt.Sprintf("edge-%d", f.holder)}
	}
	return map[string]any{"reserved_ip": map[string]any{
		"ip": testIP, "droplet": droplet, "region": map[string]any{"slug": "fra1"}, "locked": false,
	}}
}

func (f *fakeDO) getIP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.PathValue("ip") != testIP || !f.exists {
		writeJSON(w, http.StatusNotFound, map[string]string{"id": "not_found", "message": "The resource you were accessing could not be found."})
		return
	}
	if f.get500 > 0 {
		f.get500--
		writeJSON(w, http.StatusInternalServerError, map[string]string{"id": "server_error", "message": "Server Error"})
		return
	}
	writeJSON(w, http.StatusOK, f.ipJSON())
}

func (f *fakeDO) postAction(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.assignPosts++
	f.postTimes = append(f.postTimes, time.Now())
	if r.PathValue("ip") != testIP || !f.exists {
		writeJSON(w, http.StatusNotFound, map[string]string{"id": "not_found", "message": "The resource you were accessing could not be found."})
		return
	}
	var req struct {
		Type      string `json:"type"`
		DropletID int    `json:"droplet_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Type != "assign" || req.DropletID == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"id": "bad_request", "message": fmt.Sprintf("bad action %+v (%v)", req, err)})
		return
	}
	switch {
	case f.other422 > 0:
		f.other422--
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"id": "unprocessable_entity", "message": "The droplet must be in the same region as the reserved IP."})
		return
	case f.pending422 > 0:
		f.pending422--
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"id": "unprocessable_entity", "message": "Droplet already has a pending event."})
		return
	case f.rate429 > 0:
		f.rate429--
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.Header().Set("RateLimit-Remaining", "0")
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"id": "too_many_requests", "message": "API Rate limit exceeded."})
		return
	case f.server500 > 0:
		f.server500--
		writeJSON(w, http.StatusInternalServerError, map[string]string{"id": "server_error", "message": "Server Error"})
		return
	}
	f.assigns++
	f.nextID++
	a := &fakeAction{id: f.nextID, droplet: req.DropletID, pollsLeft: f.inProgressPolls, errored: f.errorAction, status: "in-progress"}
	f.actions[a.id] = a
	f.settle(a)
	writeJSON(w, http.StatusCreated, map[string]any{"action": f.actionJSON(a)})
}

// settle completes (or errors) a when its polls have run out.
func (f *fakeDO) settle(a *fakeAction) {
	if a.status != "in-progress" || a.pollsLeft > 0 {
		return
	}
	if a.errored {
		a.status = "errored"
		return
	}
	a.status = "completed"
	f.holder = a.droplet
}

func (f *fakeDO) actionJSON(a *fakeAction) map[string]any {
	return map[string]any{
		"id": a.id, "status": a.status, "type": "assign_ip",
		"resource_id": 3405695742, "resource_type": "reserved_ip",
		"started_at": "2025-01-01T00:00:00Z", "region_slug": "fra1",
	}
}

func (f *fakeDO) getAction(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	id, _ := strconv.Atoi(r.PathValue("id"))
	a, ok := f.actions[id]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"id": "not_found", "message": "no such action"})
		return
	}
	if a.pollsLeft > 0 {
		a.pollsLeft--
	}
	f.settle(a)
	writeJSON(w, http.StatusOK, map[string]any{"action": f.actionJSON(a)})
}

func (f *fakeDO) snapshot() (holder, assigns, posts, polls, authBad int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holder, f.assigns, f.assignPosts, f.polls, f.authBad
}

// newTestDO builds a digitalocean provider aimed at srv, with short timings.
func newTestDO(t *testing.T, srv *httptest.Server, mutate func(*Config)) (*DigitalOcean, *testenv.Buffer) {
	t.Helper()
	log, buf := testLogger(t)
	cfg := Config{
		Provider:      "digitalocean",
		Address:       testIP,
		NodeName:      "edge-1",
		DOToken:       testToken,
		DOAPIURL:      srv.URL,
		DOMetadataURL: srv.URL + "/metadata/v1/id",
		Logger:        log,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	d := p.(*DigitalOcean)
	d.pollInterval = 5 * time.Millisecond
	d.backoffMin = 5 * time.Millisecond
	d.backoffMax = 40 * time.Millisecond
	d.claimTimeout = 10 * time.Second
	return d, buf
}

func TestDigitalOceanClaimConverges(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(*fakeDO)
		wantAssigns int
		wantPosts   int
	}{
		{name: "unassigned, completes at once", wantAssigns: 1, wantPosts: 1},
		{name: "held by the peer", setup: func(f *fakeDO) { f.holder = otherDrop }, wantAssigns: 1, wantPosts: 1},
		{name: "in progress for 5 polls", setup: func(f *fakeDO) { f.inProgressPolls = 5 }, wantAssigns: 1, wantPosts: 1},
		{name: "already ours", setup: func(f *fakeDO) { f.holder = testDroplet }, wantAssigns: 0, wantPosts: 0},
		{name: "422 pending event twice", setup: func(f *fakeDO) { f.pending422 = 2 }, wantAssigns: 1, wantPosts: 3},
		{name: "429 twice", setup: func(f *fakeDO) { f.rate429 = 2 }, wantAssigns: 1, wantPosts: 3},
		{name: "500 three times", setup: func(f *fakeDO) { f.server500 = 3 }, wantAssigns: 1, wantPosts: 4},
		{name: "500 on the first look", setup: func(f *fakeDO) { f.get500 = 2 }, wantAssigns: 1, wantPosts: 1},
		{name: "everything at once", setup: func(f *fakeDO) {
			f.holder, f.pending422, f.rate429, f.server500, f.inProgressPolls = otherDrop, 1, 1, 1, 3
		}, wantAssigns: 1, wantPosts: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFakeDO(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			d, _ := newTestDO(t, srv, nil)
			if err := d.Claim(context.Background()); err != nil {
				t.Fatalf("Claim: %v", err)
			}
			holder, assigns, posts, _, authBad := f.snapshot()
			if holder != testDroplet {
				t.Errorf("holder = %d, want %d", holder, testDroplet)
			}
			if assigns != tc.wantAssigns || posts != tc.wantPosts {
				t.Errorf("assigns = %d (posts %d), want %d (posts %d)", assigns, posts, tc.wantAssigns, tc.wantPosts)
			}
			if authBad != 0 {
				t.Errorf("%d requests without the bearer token", authBad)
			}
			mustHeld(t, d, true)

			// A second Claim only looks.
			if err := d.Claim(context.Background()); err != nil {
				t.Fatalf("second Claim: %v", err)
			}
			if _, assigns2, _, _, _ := f.snapshot(); assigns2 != assigns {
				t.Errorf("second Claim assigned again")
			}
		})
	}
}

func TestDigitalOceanBacksOff(t *testing.T) {
	f, srv := newFakeDO(t)
	f.pending422 = 4
	d, _ := newTestDO(t, srv, nil)
	d.backoffMin = 20 * time.Millisecond
	d.backoffMax = 80 * time.Millisecond
	if err := d.Claim(context.Background()); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	f.mu.Lock()
	times := append([]time.Time(nil), f.postTimes...)
	f.mu.Unlock()
	if len(times) != 5 {
		t.Fatalf("%d assign requests, want 5", len(times))
	}
	// Waits are between half and all of 20, 40, 80, 80 ms: never a hot loop.
	for i, min := range []time.Duration{10, 20, 40, 40} {
		if gap := times[i+1].Sub(times[i]); gap < min*time.Millisecond {
			t.Errorf("retry %d came %s after the previous request, want >= %s", i+1, gap, min*time.Millisecond)
		}
	}
}

func TestDigitalOceanRetryAfter(t *testing.T) {
	f, srv := newFakeDO(t)
	f.rate429 = 1
	f.retryAfter = "1"
	d, _ := newTestDO(t, srv, nil)
	start := time.Now()
	if err := d.Claim(context.Background()); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("Claim took %s; Retry-After: 1 was not honoured", took)
	}
}

func TestDigitalOceanClaimErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(*fakeDO, *DigitalOcean)
		wantIs  error
		wantMsg string
	}{
		{name: "errored action", setup: func(f *fakeDO, _ *DigitalOcean) { f.errorAction = true; f.inProgressPolls = 2 },
			wantMsg: "errored"},
		{name: "reserved IP not in the account", setup: func(f *fakeDO, _ *DigitalOcean) { f.exists = false },
			wantIs: ErrReservedIPNotFound},
		{name: "422 that is not a pending event", setup: func(f *fakeDO, _ *DigitalOcean) { f.other422 = 1 },
			wantMsg: "same region"},
		{name: "pending forever, bounded", setup: func(f *fakeDO, d *DigitalOcean) {
			f.pending422 = 1 << 30
			d.claimTimeout = 300 * time.Millisecond
		}, wantMsg: "pending event"},
		{name: "never completes, bounded", setup: func(f *fakeDO, d *DigitalOcean) {
			f.inProgressPolls = 1 << 30
			d.claimTimeout = 300 * time.Millisecond
		}, wantIs: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFakeDO(t)
			d, _ := newTestDO(t, srv, nil)
			tc.setup(f, d)
			start := time.Now()
			err := d.Claim(context.Background())
			if err == nil {
				t.Fatal("Claim succeeded")
			}
			t.Logf("error: %v", err)
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tc.wantIs)
			}
			if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Claim took %s", took)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("error leaks the token")
			}
			mustHeld := func() {
				if held, _ := d.Held(context.Background()); held {
					t.Errorf("Held after a failed claim")
				}
			}
			mustHeld()
		})
	}
}

func TestDigitalOceanHolderHeldRelease(t *testing.T) {
	f, srv := newFakeDO(t)
	f.holder = otherDrop
	d, _ := newTestDO(t, srv, nil)
	var hr HolderReporter = d
	ctx := context.Background()

	if id, err := hr.Holder(ctx); err != nil || id != otherDrop {
		t.Fatalf("Holder = %d, %v; want %d", id, err, otherDrop)
	}
	if hr.Self() != testDroplet {
		t.Fatalf("Self = %d, want %d (from the metadata fake)", hr.Self(), testDroplet)
	}
	mustHeld(t, d, false)

	// Release is a no-op by design, held or not: the peer's assign moves it.
	if err := d.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, postsBefore, _, _ := f.snapshot()
	if err := d.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, _, posts, _, _ := f.snapshot(); posts != postsBefore {
		t.Errorf("Release sent an action")
	}
	mustHeld(t, d, true)

	f.mu.Lock()
	f.holder = 0
	f.mu.Unlock()
	if id, err := hr.Holder(ctx); err != nil || id != 0 {
		t.Fatalf("Holder of an unassigned IP = %d, %v; want 0", id, err)
	}

	f.mu.Lock()
	f.exists = false
	f.mu.Unlock()
	if _, err := d.Held(ctx); !errors.Is(err, ErrReservedIPNotFound) {
		t.Fatalf("Held on a missing IP: %v, want ErrReservedIPNotFound", err)
	}
}

func TestDigitalOceanDropletID(t *testing.T) {
	_, srv := newFakeDO(t)

	d, _ := newTestDO(t, srv, func(c *Config) { c.DODropletID = 99 })
	if d.Self() != 99 {
		t.Errorf("configured droplet id ignored: %d", d.Self())
	}

	// Metadata that answers garbage, and no metadata service at all.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "<html>captive portal</html>")
	}))
	defer bad.Close()
	deadURL := testenv.DeadURL(t) + "/metadata/v1/id"
	for name, url := range map[string]string{"garbage": bad.URL + "/metadata/v1/id", "unreachable": deadURL} {
		t.Run(name, func(t *testing.T) {
			_, err := New(Config{Provider: "digitalocean", Address: testIP, DOToken: testToken,
				DOAPIURL: srv.URL, DOMetadataURL: url})
			if err == nil || !strings.Contains(err.Error(), "not on a droplet? set floating_ip.digitalocean.droplet_id") {
				t.Fatalf("New = %v, want the droplet id hint", err)
			}
		})
	}
}

func TestDigitalOceanTokenFile(t *testing.T) {
	f, srv := newFakeDO(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ := newTestDO(t, srv, func(c *Config) { c.DOToken, c.DOTokenFile = "", file })
	if err := d.Claim(context.Background()); err != nil {
		t.Fatalf("Claim with a token file: %v", err)
	}
	if _, _, _, _, authBad := f.snapshot(); authBad != 0 {
		t.Fatalf("token from the file not sent")
	}

	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for name, c := range map[string]Config{
		"none":    {},
		"both":    {DOToken: testToken, DOTokenFile: file},
		"empty":   {DOTokenFile: empty},
		"missing": {DOTokenFile: filepath.Join(dir, "nope")},
	} {
		t.Run(name, func(t *testing.T) {
			c.Provider, c.Address, c.DODropletID, c.DOAPIURL = "digitalocean", testIP, 1, srv.URL
			_, err := New(c)
			if err == nil {
				t.Fatal("New accepted a bad token setting")
			}
			if strings.Contains(err.Error(), testToken) {
				t.Fatalf("error leaks the token: %v", err)
			}
		})
	}
}

func TestDigitalOceanNeverLogsToken(t *testing.T) {
	f, srv := newFakeDO(t)
	f.holder, f.pending422, f.rate429, f.server500, f.get500, f.inProgressPolls = otherDrop, 1, 1, 1, 1, 2
	d, logs := newTestDO(t, srv, nil)
	ctx := context.Background()
	if err := d.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.exists = false
	f.mu.Unlock()
	_, _ = d.Held(ctx)
	_ = d.Claim(ctx)

	// A component that logs its config does not leak the token either.
	cfg := Config{Provider: "digitalocean", Address: testIP, DOToken: testToken}
	d.log.Info("config", "floating_ip", cfg)
	d.log.Info(fmt.Sprintf("config %v %+v", cfg, cfg))

	l := logs.String()
	if strings.Contains(l, testToken) || strings.Contains(l, "FAKE-TOKEN") {
		t.Fatalf("token in logs:\n%s", l)
	}
	if !strings.Contains(l, "retrying") || !strings.Contains(l, "REDACTED") {
		t.Fatalf("expected retry and redacted-config lines in the logs:\n%s", l)
	}
}
