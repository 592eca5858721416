package agent

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/cluster/floatingip"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

// nodeInfo joins the raft node's, gossip's and the HAProxy manager's views:
// it is the API's StatusSource, AppliedWaiter and ClusterSource, and it
// supplies this node's gossip metadata. proxy is nil on a witness.
type nodeInfo struct {
	cfg     *Config
	version string
	node    *cluster.Node
	table   *fsm.FSM
	proxy   *haproxy.Manager
	cluster *cluster.Cluster
	owner   *floatingip.Owner // nil when no floating IP is managed

	mu          sync.Mutex
	behindSince time.Time // when HAProxy fell behind the table (zero: current)
}

// eligible reports whether this node may hold the floating IP: HAProxy runs,
// and it has not been behind this node's table for longer than the lag
// grace (a failed validation or reload keeps it behind; an ordinary apply
// catches up in well under a second).
func (s *nodeInfo) eligible() bool {
	if s.proxy == nil {
		return false
	}
	hs := s.proxy.Status()
	index := s.table.State().Index
	s.mu.Lock()
	defer s.mu.Unlock()
	if !hs.Running {
		return false
	}
	if hs.AppliedIndex >= index {
		s.behindSince = time.Time{}
		return true
	}
	if s.behindSince.IsZero() {
		s.behindSince = time.Now()
	}
	return time.Since(s.behindSince) < s.cfg.FloatingIP.LagGrace
}

var (
	_ api.StatusSource  = (*nodeInfo)(nil)
	_ api.AppliedWaiter = (*nodeInfo)(nil)
	_ api.ClusterSource = (*nodeInfo)(nil)
)

// Status implements api.StatusSource.
func (s *nodeInfo) Status() api.Status {
	rs := s.node.Status()
	st := api.Status{
		Node:    s.cfg.NodeName,
		Version: s.version,
		Role:    s.cfg.Role,
		Raft: api.RaftStatus{
			State:        rs.State,
			Leader:       rs.LeaderID,
			LastIndex:    rs.LastIndex,
			CommitIndex:  rs.CommitIndex,
			AppliedIndex: rs.AppliedIndex,
		},
	}
	if s.proxy == nil {
		return st
	}
	hs := s.proxy.Status()
	st.HAProxy = api.HAProxyStatus{
		Running:      hs.Running,
		MasterPID:    hs.MasterPID,
		Adopted:      hs.Adopted,
		AppliedIndex: hs.AppliedIndex,
		ConfigHash:   hs.ConfigHash,
		Reloads:      hs.Reloads,
		LastReloadAt: hs.LastReloadAt,
		LastError:    hs.LastError,
		LastErrorAt:  hs.LastErrorAt,

		DynamicPorts:   hs.DynamicPorts.String(),
		RuntimeUpdates: hs.RuntimeUpdates,
		Workers: api.WorkerStatus{
			WorkerResidentBytes:        hs.Workers.WorkerRSS,
			OldWorkers:                 hs.Workers.OldWorkers,
			OldWorkerConnections:       hs.Workers.OldWorkerConns,
			OldWorkersResidentBytes:    hs.Workers.OldWorkersRSS,
			OldWorkersBudgetBytes:      hs.Workers.BudgetBytes,
			OldWorkersStopped:          hs.Workers.OldWorkersStopped,
			OldWorkerConnectionsClosed: hs.Workers.OldWorkerConnsClosed,
		},
	}
	for _, f := range hs.FailedPorts {
		st.HAProxy.FailedPorts = append(st.HAProxy.FailedPorts, api.FailedPort{Port: f.Port, Name: f.Name, Error: f.Error})
	}
	return st
}

// meta is what this node gossips about itself.
func (s *nodeInfo) meta() cluster.Meta {
	m := cluster.Meta{
		Role:         s.cfg.Role,
		RaftAddr:     s.cfg.Raft.Advertise,
		APIURL:       s.cfg.API.Advertise,
		Version:      s.version,
		Bootstrapped: s.node.HasState(),
		Index:        s.table.State().Index,
	}
	if s.proxy == nil {
		m.Healthy = s.node.Status().Leader != ""
		return m
	}
	hs := s.proxy.Status()
	m.Applied = hs.AppliedIndex
	m.ConfigHash = hs.ConfigHash
	m.Error = hs.LastError
	m.Healthy = hs.Running && hs.AppliedIndex >= m.Index
	if s.owner != nil {
		m.FIP = fipMeta(s.owner.Claim())
	}
	return m
}

// WaitApplied implements api.AppliedWaiter over gossip metadata.
func (s *nodeInfo) WaitApplied(ctx context.Context, index uint64) ([]api.Lag, error) {
	lags, err := s.cluster.WaitApplied(ctx, index)
	out := make([]api.Lag, 0, len(lags))
	for _, l := range lags {
		out = append(out, api.Lag{Node: l.Node, Applied: l.Applied, Error: l.Error})
	}
	return out, err
}

// Cluster implements api.ClusterSource.
func (s *nodeInfo) Cluster() api.ClusterStatus {
	voters := s.cluster.Voters()
	st := api.ClusterStatus{Leader: s.node.Status().LeaderID}
	seen := map[string]bool{}
	members := s.cluster.Members().Members()
	st.FloatingIP = s.floatingIPStatus(members)
	for _, m := range members {
		seen[m.Name] = true
		_, voter := voters[m.Name]
		st.Members = append(st.Members, api.MemberStatus{
			Name:         m.Name,
			Role:         m.Meta.Role,
			Status:       m.Status,
			Voter:        voter,
			RaftAddr:     m.Meta.RaftAddr,
			APIURL:       m.Meta.APIURL,
			Version:      m.Meta.Version,
			RaftIndex:    m.Meta.Index,
			AppliedIndex: m.Meta.Applied,
			ConfigHash:   m.Meta.ConfigHash,
			Healthy:      m.Meta.Healthy && m.Alive(),
			LastError:    m.Meta.Error,
		})
	}
	// Voters gossip has never seen (or has forgotten) still count for quorum.
	for id, v := range voters {
		if !seen[id] {
			st.Members = append(st.Members, api.MemberStatus{Name: id, Status: "unknown", Voter: true, RaftAddr: string(v.Address)})
		}
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].Name < st.Members[j].Name })
	return st
}
