// Package clienttest serves drawbridge's API to tests of its clients. API
// is a fake of the backend endpoints, for tests of programs that register
// backends (the Registrar, the register command): it records every request
// and answers as the real API does, unless told otherwise. RealAPI is the
// real API handler over an in-memory table, for tests of how a client
// handles the API's checks (token scope, ownership, policy).
package clienttest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Request is one request the fake received.
type Request struct {
	At     time.Time
	Method string
	Path   string // with the query
	Auth   string
	Body   Registration
	// HostPort and Name are a deregistration's path value and ?name=.
	HostPort, Name string
}

// Registration is the body of POST /v1/routes/{port}/backends as the fake
// decodes it (unknown fields refused, as the real API does).
type Registration struct {
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

// API imitates the register and deregister endpoints. Answers are 200
// (POST) and 200/404 (DELETE), 403 without the token, unless Answer says
// otherwise.
type API struct {
	Srv *httptest.Server

	token    string
	mu       sync.Mutex
	reqs     []Request
	backends map[string]bool
	// Answer, when set, may override the status of the n-th (0-based)
	// request with this method; 0 keeps the default. Set it before the
	// first request.
	Answer func(method string, n int) (status int, msg string)
}

// New starts a fake that accepts token, stopped when the test ends.
func New(tb testing.TB, token string) *API {
	tb.Helper()
	f := &API{token: token, backends: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/routes/{port}/backends", f.handle)
	mux.HandleFunc("DELETE /v1/routes/{port}/backends/{hostport}", f.handle)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.record(r, Request{})
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	f.Srv = httptest.NewServer(mux)
	tb.Cleanup(f.Srv.Close)
	return f
}

// URL is the fake's base URL.
func (f *API) URL() string { return f.Srv.URL }

func (f *API) record(r *http.Request, fr Request) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, q := range f.reqs {
		if q.Method == r.Method {
			n++
		}
	}
	fr.At, fr.Method, fr.Path, fr.Auth = time.Now(), r.Method, r.URL.RequestURI(), r.Header.Get("Authorization")
	f.reqs = append(f.reqs, fr)
	return n
}

func (f *API) handle(w http.ResponseWriter, r *http.Request) {
	fr := Request{HostPort: r.PathValue("hostport"), Name: r.URL.Query().Get("name")}
	if r.Method == http.MethodPost {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields() // as the real API does
		if err := dec.Decode(&fr.Body); err != nil {
			f.record(r, fr)
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	n := f.record(r, fr)
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		writeError(w, http.StatusForbidden, "invalid token")
		return
	}
	f.mu.Lock()
	answer := f.Answer
	f.mu.Unlock()
	if answer != nil {
		if status, msg := answer(r.Method, n); status != 0 {
			writeError(w, status, msg)
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodPost:
		key := fmt.Sprintf("%s:%d", fr.Body.Address, fr.Body.Port)
		f.backends[key] = true
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"port": r.PathValue("port"), "name": fr.Body.Name})
	case http.MethodDelete:
		if !f.backends[fr.HostPort] {
			writeError(w, http.StatusNotFound, "no backend "+fr.HostPort)
			return
		}
		delete(f.backends, fr.HostPort)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"route_deleted":true}`)
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Requests returns the requests received so far with method ("" for all).
func (f *API) Requests(method string) []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Request
	for _, r := range f.reqs {
		if method == "" || r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// Count is len(Requests(method)).
func (f *API) Count(method string) int { return len(f.Requests(method)) }

// HasBackend reports whether the backend "ip:port" is registered.
func (f *API) HasBackend(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backends[key]
}
