package api

import (
	"fmt"
	"net/http"
	"time"
)

// Status is what GET /v1/status answers: this node's view of itself, the
// cluster and its HAProxy. The StatusSource fills everything but State, which
// the API takes from its StateReader so it matches what /v1/routes serves.
type Status struct {
	// Node is this node's name.
	Node string `json:"node"`
	// Role is RoleEdge or RoleWitness; the API reports "" as RoleEdge.
	Role string `json:"role"`
	// Version is the drawbridge build version.
	Version string `json:"version"`
	// UnknownCommands counts log entries this node skipped because a newer
	// drawbridge wrote them: its table may differ from the cluster's, and
	// it needs an upgrade. Such a node is not ready.
	UnknownCommands uint64        `json:"unknown_commands"`
	Raft            RaftStatus    `json:"raft"`
	State           StateStatus   `json:"state"`
	HAProxy         HAProxyStatus `json:"haproxy"`
	// Warnings are conditions an operator must act on, such as a cluster
	// running without gossip encryption or raft mutual TLS.
	Warnings []string `json:"warnings,omitempty"`
}

// RaftStatus is this node's raft view. It comes from the StatusSource alone:
// GET /v1/status is never forwarded, so a node that lost its leader still
// says so (Leader "") whether or not forwarding is configured.
type RaftStatus struct {
	// State is the raft role: "Leader", "Follower", "Candidate" or "Shutdown".
	State string `json:"state"`
	// Leader is the current leader's address or name, "" when unknown.
	Leader       string `json:"leader"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

// StateStatus summarises the applied route table.
type StateStatus struct {
	// Index is the raft index of the last entry applied to the table.
	Index uint64 `json:"index"`
	// Hash is fsm.State.Hash: equal on nodes that applied the same entries.
	Hash     string `json:"hash"`
	Routes   int    `json:"routes"`
	Backends int    `json:"backends"`
}

// HAProxyStatus is the state of this node's HAProxy as its manager reports it.
type HAProxyStatus struct {
	Running   bool `json:"running"`
	MasterPID int  `json:"master_pid,omitempty"`
	// Adopted reports that the agent found HAProxy already running at start
	// (an agent restart) and took it over instead of starting a new one.
	Adopted bool `json:"adopted"`
	// AppliedIndex is the latest state index HAProxy runs in full: with
	// routes held back (FailedPorts), the index is not applied.
	AppliedIndex uint64 `json:"applied_index"`
	// ServedIndex is the latest state index HAProxy runs except for the
	// routes held back in FailedPorts.
	ServedIndex uint64 `json:"served_index"`
	// DescriptorLimit is the node's file-descriptor limit; RouteCapacity
	// what it leaves for routes' listeners and health checks (after HAProxy
	// itself and its connections); RouteNeeds what this node's table needs
	// of it. The leader admits no write that fits no edge node.
	DescriptorLimit int `json:"descriptor_limit,omitempty"`
	RouteCapacity   int `json:"route_capacity,omitempty"`
	RouteNeeds      int `json:"route_needs,omitempty"`
	// ConfigHash identifies the rendered config HAProxy runs.
	ConfigHash   string    `json:"config_hash,omitempty"`
	Reloads      uint64    `json:"reloads"`
	LastReloadAt time.Time `json:"last_reload_at,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	// FailedPorts are routes of the table HAProxy does not serve on this
	// node, and why: a port another process holds (`haproxy -c` cannot see
	// those), or a reload that failed while the rest of the table applied.
	FailedPorts []FailedPort `json:"failed_ports,omitempty"`
	// DynamicPorts is the range whose routes change without a reload ("" when off).
	DynamicPorts string `json:"dynamic_ports,omitempty"`
	// RuntimeUpdates counts changes applied through the runtime API, no reload.
	RuntimeUpdates uint64 `json:"runtime_updates"`
	// Workers measures the current worker and the old workers reloads left.
	Workers WorkerStatus `json:"workers"`
}

// WorkerStatus is the memory and connections of HAProxy's workers. Old
// workers are left from reloads and live as long as their connections (up
// to hard-stop-after, or until the memory budget stops them).
type WorkerStatus struct {
	WorkerResidentBytes     uint64 `json:"worker_resident_bytes"`
	OldWorkers              int    `json:"old_workers"`
	OldWorkerConnections    int    `json:"old_worker_connections"`
	OldWorkersResidentBytes uint64 `json:"old_workers_resident_bytes"`
	// OldWorkersBudgetBytes is haproxy.old_workers_max_mb (0: no budget).
	OldWorkersBudgetBytes uint64 `json:"old_workers_budget_bytes"`
	// OldWorkersStopped and OldWorkerConnectionsClosed count what the budget stopped.
	OldWorkersStopped          uint64 `json:"old_workers_stopped"`
	OldWorkerConnectionsClosed uint64 `json:"old_worker_connections_closed"`
}

// FailedPort is one route this node's HAProxy could not serve.
type FailedPort struct {
	Port  int    `json:"port"`
	Name  string `json:"name"`
	Error string `json:"error"`
}

// status builds the full status: the source's view plus the local state.
func (s *Server) status() Status {
	st := s.statusSrc.Status()
	if st.Role == "" {
		st.Role = RoleEdge
	}
	state := s.currentState()
	st.State = StateStatus{
		Index:    state.Index,
		Hash:     state.Hash(),
		Routes:   state.Len(),
		Backends: state.BackendCount(),
	}
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.status())
	return nil
}

// handleHealthz answers liveness: the process serves HTTP.
func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) error {
	writeText(w, http.StatusOK, "ok")
	return nil
}

// handleReadyz answers readiness: HAProxy runs and runs a config at least as
// new as this node's route table. A load balancer (or the floating-IP owner
// check) should send traffic only to ready nodes. A witness runs no HAProxy:
// it is ready when it sees a raft leader. The answer is public, so it says
// ready or not and a fixed reason, never an internal error text.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) error {
	if reason := notReady(s.status()); reason != "" {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+reason)
		return nil
	}
	writeText(w, http.StatusOK, "ready")
	return nil
}

// notReady returns why the node st describes is not ready, or "".
func notReady(st Status) string {
	if st.Role == RoleWitness {
		if st.Raft.Leader == "" {
			return "witness sees no raft leader (election in progress or quorum lost); a witness runs no haproxy"
		}
		return ""
	}
	hp, index := st.HAProxy, st.State.Index
	switch {
	case !hp.Running:
		return "haproxy is not running"
	case st.UnknownCommands > 0:
		return fmt.Sprintf("this node skipped %d log entries written by a newer drawbridge: its table may differ from the cluster's; upgrade it", st.UnknownCommands)
	case len(hp.FailedPorts) > 0 && hp.ServedIndex >= index:
		// The port, not HAProxy's error text: that stays in /v1/status.
		return fmt.Sprintf("haproxy serves index %d except %d route(s) it holds back, e.g. port %d (details in /v1/status)",
			hp.ServedIndex, len(hp.FailedPorts), hp.FailedPorts[0].Port)
	case hp.AppliedIndex < index:
		// Only the fact: HAProxy's own errors (paths, alerts) stay in
		// /v1/status, behind a token.
		return "haproxy is behind the route table"
	}
	return ""
}
