package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Node roles, the values of Status.Role and MemberStatus.Role.
const (
	// RoleEdge runs HAProxy and may hold the floating IP.
	RoleEdge = "edge"
	// RoleWitness is a raft voter only: no HAProxy, never the floating IP.
	// It lets a pair of edge nodes keep accepting writes when one dies.
	RoleWitness = "witness"
)

// Member liveness as gossip sees it, the values of MemberStatus.Status.
const (
	MemberAlive   = "alive"
	MemberSuspect = "suspect"
	MemberDead    = "dead"
	MemberLeft    = "left"
)

// ClusterSource reports the cluster as this node sees it, for
// GET /v1/cluster. It must be cheap: it is called per request.
type ClusterSource interface {
	Cluster() ClusterStatus
}

// ClusterStatus is what GET /v1/cluster answers.
type ClusterStatus struct {
	// Leader is the raft leader's name, "" when none is known.
	Leader  string         `json:"leader"`
	Members []MemberStatus `json:"members"`
	// FloatingIP is who holds the floating IP; nil when none is managed.
	FloatingIP *FloatingIPStatus `json:"floating_ip,omitempty"`
}

// MemberStatus is one member of the cluster.
type MemberStatus struct {
	Name string `json:"name"`
	// Role is RoleEdge or RoleWitness.
	Role string `json:"role"`
	// Status is MemberAlive, MemberSuspect, MemberDead or MemberLeft.
	Status string `json:"status"`
	// Voter reports that the member is a raft voter.
	Voter    bool   `json:"voter"`
	RaftAddr string `json:"raft_addr"`
	APIURL   string `json:"api_url"`
	// GossipAddr is the member's gossip address (host:port).
	GossipAddr string `json:"gossip_addr,omitempty"`
	Version    string `json:"version"`
	// RaftIndex is the last raft index the member applied to its route
	// table, when known.
	RaftIndex uint64 `json:"raft_index,omitempty"`
	// AppliedIndex is the state index of the config its HAProxy runs.
	AppliedIndex uint64 `json:"applied_index"`
	// ConfigHash identifies that config (empty on a witness).
	ConfigHash string `json:"config_hash,omitempty"`
	// Healthy reports HAProxy running the latest config the member knows
	// (for a witness: it sees a leader).
	Healthy   bool   `json:"healthy"`
	LastError string `json:"last_error,omitempty"`
	// Held counts routes its HAProxy holds back; HeldBack names the first
	// of their ports.
	Held     int   `json:"held,omitempty"`
	HeldBack []int `json:"held_back,omitempty"`
	// UnknownCommands counts log entries it skipped (written by a newer
	// drawbridge): it needs an upgrade.
	UnknownCommands uint64 `json:"unknown_commands,omitempty"`
	// RouteCapacity is the file descriptors the member has for routes'
	// listeners and health checks, as it publishes in gossip.
	RouteCapacity int `json:"route_capacity,omitempty"`
}

// FloatingIPStatus is the floating IP and who holds it.
type FloatingIPStatus struct {
	Address string `json:"address"`
	// Holder is the name of the node holding the address, "" when none.
	Holder string `json:"holder"`
	// Provider is how the address is moved: "digitalocean", "vip", "exec"…
	Provider     string    `json:"provider"`
	LastFailover *Failover `json:"last_failover,omitempty"`
}

// Failover is one move of the floating IP. In JSON, Duration is a Go
// duration string ("1.53s"), readable by people and by time.ParseDuration.
type Failover struct {
	At   time.Time
	From string
	To   string
	// Duration is how long the move took, from decision to confirmation.
	Duration time.Duration
	Reason   string
}

// failoverJSON is Failover's wire shape.
type failoverJSON struct {
	At       time.Time `json:"at"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	Duration string    `json:"duration"`
	Reason   string    `json:"reason,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (f Failover) MarshalJSON() ([]byte, error) {
	return json.Marshal(failoverJSON{At: f.At, From: f.From, To: f.To, Duration: f.Duration.String(), Reason: f.Reason})
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *Failover) UnmarshalJSON(b []byte) error {
	var v failoverJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	var d time.Duration
	if v.Duration != "" {
		var err error
		if d, err = time.ParseDuration(v.Duration); err != nil {
			return fmt.Errorf("failover duration: %w", err)
		}
	}
	*f = Failover{At: v.At, From: v.From, To: v.To, Duration: d, Reason: v.Reason}
	return nil
}

// Interface guards.
var (
	_ json.Marshaler   = Failover{}
	_ json.Unmarshaler = (*Failover)(nil)
)

// handleCluster answers GET /v1/cluster from this node's view (never
// forwarded: it must answer when the leader is gone).
func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) error {
	var cs ClusterStatus
	if s.cluster != nil {
		cs = s.cluster.Cluster()
	} else {
		cs = s.singleNodeCluster()
	}
	if cs.Members == nil {
		cs.Members = []MemberStatus{}
	}
	writeJSON(w, http.StatusOK, cs)
	return nil
}

// singleNodeCluster describes a node without a ClusterSource as a cluster
// of one, from its Status.
func (s *Server) singleNodeCluster() ClusterStatus {
	st := s.status()
	raftIndex := st.Raft.AppliedIndex
	if raftIndex == 0 {
		raftIndex = st.State.Index
	}
	return ClusterStatus{
		Leader: st.Raft.Leader,
		Members: []MemberStatus{{
			Name:            st.Node,
			Role:            st.Role,
			Status:          MemberAlive,
			Voter:           true,
			Version:         st.Version,
			RaftIndex:       raftIndex,
			AppliedIndex:    st.HAProxy.AppliedIndex,
			ConfigHash:      st.HAProxy.ConfigHash,
			Healthy:         notReady(st) == "",
			LastError:       st.HAProxy.LastError,
			Held:            len(st.HAProxy.FailedPorts),
			HeldBack:        failedPortNumbers(st.HAProxy.FailedPorts),
			UnknownCommands: st.UnknownCommands,
		}},
	}
}

// failedPortNumbers lists the ports of fs.
func failedPortNumbers(fs []FailedPort) []int {
	var out []int
	for _, f := range fs {
		out = append(out, f.Port)
	}
	return out
}
