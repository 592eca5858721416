package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// LeaseGuard is the leader's mass-expiry guard: it holds back a lease expiry
// that would remove a large share of all backends at once (more often a
// clock jump or a broken registrar fleet than real deaths), says what it
// holds, and lets an operator release it.
type LeaseGuard interface {
	// HeldLeases reports what the guard holds back now.
	HeldLeases() HeldLeases
	// ReleaseHeld lets the held expiry through once and returns what it
	// releases; ErrNothingHeld when nothing is held.
	ReleaseHeld() (HeldLeases, error)
}

// ErrNothingHeld is ReleaseHeld's error when the guard holds nothing back.
var ErrNothingHeld = errors.New("the mass-expiry guard holds nothing back")

// HeldLeases is what GET /v1/leases answers.
type HeldLeases struct {
	// Held reports that an expiry is held back.
	Held bool `json:"held"`
	// Since is when it was first held back.
	Since time.Time `json:"since,omitzero"`
	// Expired of Total backends would go; MaxFraction is the share allowed.
	Expired     int         `json:"expired"`
	Total       int         `json:"total"`
	MaxFraction float64     `json:"max_fraction,omitempty"`
	Backends    []HeldLease `json:"backends"`
}

// HeldLease is one backend whose expiry is held back.
type HeldLease struct {
	Port      int       `json:"port"`
	Route     string    `json:"route"`
	Backend   string    `json:"backend"`
	ExpiredAt time.Time `json:"expired_at"`
}

// handleLeases serves GET /v1/leases on the leader (others forward it): what
// the mass-expiry guard holds back.
func (s *Server) handleLeases(w http.ResponseWriter, r *http.Request) error {
	h := HeldLeases{Backends: []HeldLease{}}
	if s.leases != nil {
		h = s.leases.HeldLeases()
		if h.Backends == nil {
			h.Backends = []HeldLease{}
		}
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

// handleReleaseLeases serves POST /v1/leases/release (admin): the held
// expiry goes through at the leader's next check.
func (s *Server) handleReleaseLeases(w http.ResponseWriter, r *http.Request) error {
	if s.leases == nil {
		return errorf(http.StatusNotFound, "%s", ErrNothingHeld)
	}
	h, err := s.leases.ReleaseHeld()
	if errors.Is(err, ErrNothingHeld) {
		return errorf(http.StatusNotFound, "%s", ErrNothingHeld)
	}
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "release held leases: %v", err)
	}
	auditOf(r.Context()).change = "release-held-leases expired=" + strconv.Itoa(h.Expired) + " total=" + strconv.Itoa(h.Total)
	writeJSON(w, http.StatusOK, h)
	return nil
}
