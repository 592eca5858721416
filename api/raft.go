package api

import (
	"net/http"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// PeerRemover removes a server from the raft configuration; only the
// leader can. An *Error it returns is answered as is (404 for a name raft
// does not know, 409 for the leader itself); any other error is a 503.
type PeerRemover interface {
	RemovePeer(name string) error
}

// removePeerRequest is the body of POST /v1/raft/remove-peer.
type removePeerRequest struct {
	Name string `json:"name"`
}

// RemovedPeer is the answer of POST /v1/raft/remove-peer.
type RemovedPeer struct {
	Removed string `json:"removed"`
}

// handleRemovePeer removes a voter that is gone for good (a failed node
// keeps its vote until then, so that removing it never costs the quorum
// that removing it needs). It runs on the leader: writeEndpoint forwards it.
func (s *Server) handleRemovePeer(w http.ResponseWriter, r *http.Request) error {
	var req removePeerRequest
	if err := s.decodeBody(w, r, &req, decodeOptions{}); err != nil {
		return err
	}
	if err := fsm.ValidateName("name", req.Name); err != nil {
		return badRequest(err)
	}
	if r.Context().Value(validateOnlyKey{}) != nil {
		return errValidated
	}
	if s.peers == nil {
		return errorf(http.StatusNotImplemented, "this node cannot change raft membership")
	}
	if err := s.peers.RemovePeer(req.Name); err != nil {
		if e, ok := err.(*Error); ok {
			return e
		}
		return &Error{Status: http.StatusServiceUnavailable, notApplied: true, Message: "remove peer: " + err.Error()}
	}
	s.log.Warn("raft peer removed", "peer", req.Name)
	writeJSON(w, http.StatusOK, RemovedPeer{Removed: req.Name})
	return nil
}
