package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Hook actions of the recipe's payload.
const (
	hookAdd    = "add"
	hookDelete = "delete"
)

// hookPayload is the recipe's webhook body:
//
//	{"name": "unifi-adoption", "frontend-port": 8080, "backend-port": 30808,
//	 "dst-ip": "35.244.91.178", "action": "add"}
//
// Fields stay raw so each is checked with a message that names it, and so
// ports are accepted as JSON numbers or as strings, as the recipe's sidecars
// sent them. Unknown keys are ignored, as adnanh/webhook ignored them.
type hookPayload struct {
	Name         json.RawMessage `json:"name"`
	FrontendPort json.RawMessage `json:"frontend-port"`
	BackendPort  json.RawMessage `json:"backend-port"`
	DstIP        json.RawMessage `json:"dst-ip"`
	Action       json.RawMessage `json:"action"`
}

// hookRequest is a hookPayload that passed every check.
type hookRequest struct {
	name        string
	port        int
	backendPort int
	address     string // canonical IP literal
	action      string
}

// parse checks every field and reports all problems at once.
func (p hookPayload) parse() (hookRequest, error) {
	var (
		req  hookRequest
		errs []string
		err  error
	)
	fail := func(err error) { errs = append(errs, message(err)) }

	if req.name, err = readString("name", p.Name); err != nil {
		fail(err)
	} else if err := fsm.ValidateName("name", req.name); err != nil {
		fail(err)
	}
	if req.port, err = readFlexPort("frontend-port", p.FrontendPort); err != nil {
		fail(err)
	}
	if req.backendPort, err = readFlexPort("backend-port", p.BackendPort); err != nil {
		fail(err)
	}
	var ip string
	if ip, err = readString("dst-ip", p.DstIP); err != nil {
		fail(err)
	} else if req.address, err = fsm.CanonicalAddress(ip); err != nil {
		fail(fmt.Errorf("dst-ip: %w", err))
	}
	if req.action, err = readString("action", p.Action); err != nil {
		fail(err)
	} else if req.action != hookAdd && req.action != hookDelete {
		fail(fmt.Errorf("action %s must be %q or %q", quoteInput(req.action), hookAdd, hookDelete))
	}
	if len(errs) > 0 {
		return hookRequest{}, errorf(http.StatusBadRequest, "%s", strings.Join(errs, "; "))
	}
	return req, nil
}

// hookAddResponse answers a committed "add".
type hookAddResponse struct {
	Route *fsm.Route `json:"route"`
}

// hookDeleteResponse answers a committed "delete": the route as it remains,
// or null with deleted=true when its last backend went and the route with it.
type hookDeleteResponse struct {
	Route   *fsm.Route `json:"route"`
	Deleted bool       `json:"deleted"`
}

// handleHook serves POST /hooks/update-haproxy, the recipe's webhook.
//
// "add" registers dst-ip:backend-port as a backend of the route on
// frontend-port, creating the route (implicitly, named name) when there is
// none; the backend's lease of Config.HookLease is refreshed by each re-post,
// so a pod that died expires instead of lingering. "delete" removes that
// backend, and the route with its last backend when the hook created it.
// Unlike the recipe, the answer comes after the change is committed, a
// port owned by another name is a 409, and a bad token is refused.
func (s *Server) handleHook(w http.ResponseWriter, r *http.Request) error {
	var p hookPayload
	if err := s.decodeBody(w, r, &p, decodeOptions{allowUnknown: true}); err != nil {
		return err
	}
	req, err := p.parse()
	if err != nil {
		return err
	}
	if req.action == hookDelete {
		// No reserved-port check: removing what exists is always allowed,
		// even if the port became reserved after the route was made.
		cmd := &fsm.DeregisterBackend{Port: req.port, Name: req.name, Address: req.address, BackendPort: req.backendPort,
			Scope: scopeOf(identity(r.Context()))}
		if err := s.authorizeDelete(r, req.port, req.name); err != nil {
			return err
		}
		if err := validate(cmd); err != nil {
			return err
		}
		noteChange(r.Context(), cmd)
		res, err := s.commit(r.Context(), cmd)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, hookDeleteResponse{Route: res.Route, Deleted: res.Deleted})
		return nil
	}

	backend := fsm.Backend{Address: req.address, Port: req.backendPort, Owner: req.name}
	if lease := s.hookLease(identity(r.Context())); lease > 0 {
		backend.ExpiresAt = s.now().Add(lease).UTC()
		backend.TTL = lease
	}
	create := fsm.NewRoute(req.port, req.name)
	create.Implicit = true
	cmd := &fsm.RegisterBackend{Port: req.port, Name: req.name, Backend: backend, Create: &create}
	if err := s.admitRegistration(r, cmd); err != nil {
		return err
	}
	res, err := s.commit(r.Context(), cmd)
	if err != nil {
		return err
	}
	if res.Route == nil {
		return errors.New("register backend committed without a route in its result")
	}
	writeJSON(w, http.StatusOK, hookAddResponse{Route: res.Route})
	return nil
}
