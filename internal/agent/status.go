package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
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
	// peers lists the members gossip knows (default: the cluster's); tests
	// set it.
	peers func() []cluster.Member
	// settings are this node's HAProxy settings, and fdLimit its
	// descriptor limit: its capacity for routes (see Admit).
	settings haproxy.Settings
	fdLimit  int

	needMu    sync.Mutex
	needState *fsm.State // the table needFor was last computed for
	needCount int

	// mu guards behindSince. Taken under Owner.mu (Claim → eligible),
	// never while calling out: see the lock order in doc.go.
	mu          sync.Mutex
	behindSince time.Time // when HAProxy fell behind the table (zero: current)
}

// eligible reports whether this node may hold the floating IP: HAProxy
// runs, and it runs this node's whole table, or has been behind it for less
// than the lag grace (an ordinary apply catches up in well under a second).
// A node that is behind for longer (a failed validation or reload, routes
// held back because their port cannot be bound), or that skipped log
// entries a newer drawbridge wrote (its table may differ: it needs an
// upgrade), is degraded: it is not eligible while an alive edge node that
// is neither exists, and it stays eligible when none does, since serving
// all but a few routes beats serving none.
func (s *nodeInfo) eligible() bool {
	if s.proxy == nil {
		return false
	}
	hs := s.proxy.Status()
	index := s.table.State().Index
	unknown := s.table.UnknownCommands()
	s.mu.Lock()
	if !hs.Running {
		s.mu.Unlock()
		return false
	}
	current := hs.AppliedIndex >= index
	if current {
		s.behindSince = time.Time{}
	} else if s.behindSince.IsZero() {
		s.behindSince = time.Now()
	}
	inGrace := !current && time.Since(s.behindSince) < s.cfg.FloatingIP.LagGrace
	s.mu.Unlock()
	if unknown == 0 && (current || inGrace) {
		return true
	}
	return !s.betterPeer()
}

// betterPeer reports whether another alive edge node runs its whole table
// and skipped no log entries, as gossip says.
func (s *nodeInfo) betterPeer() bool {
	peers := s.peers
	if peers == nil {
		if s.cluster == nil {
			return false
		}
		// Not Members: it reads this node's metadata, which asks the
		// floating-IP owner for its claim, whose lock the caller may
		// hold (Owner.Claim → eligible → betterPeer; see the lock order
		// in doc.go).
		peers = s.cluster.Members().Others
	}
	for _, m := range peers() {
		if m.Name == s.cfg.NodeName || m.Meta.Role != roleEdge || m.Status != cluster.StatusAlive || m.Meta.Leaving {
			continue
		}
		if m.Meta.Healthy && m.Meta.Unknown == 0 {
			return true
		}
	}
	return false
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
		Node:            s.cfg.NodeName,
		Version:         s.version,
		Role:            s.cfg.Role,
		UnknownCommands: s.table.UnknownCommands(),
		Raft: api.RaftStatus{
			State:        rs.State,
			Leader:       rs.LeaderID,
			LastIndex:    rs.LastIndex,
			CommitIndex:  rs.CommitIndex,
			AppliedIndex: rs.AppliedIndex,
		},
		Warnings: s.cfg.TrustWarnings(),
	}
	if s.proxy == nil {
		return st
	}
	hs := s.proxy.Status()
	st.HAProxy = api.HAProxyStatus{
		Running:         hs.Running,
		MasterPID:       hs.MasterPID,
		Adopted:         hs.Adopted,
		AppliedIndex:    hs.AppliedIndex,
		ServedIndex:     hs.ServedIndex,
		DescriptorLimit: s.fdLimit,
		RouteCapacity:   s.routeCapacity(),
		RouteNeeds:      s.needs(s.table.State()),
		ConfigHash:      hs.ConfigHash,
		Reloads:         hs.Reloads,
		LastReloadAt:    hs.LastReloadAt,
		LastError:       hs.LastError,
		LastErrorAt:     hs.LastErrorAt,

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
		Unknown:      s.table.UnknownCommands(),
		// This build's FSM applies batch entries (fsm.CmdBatch).
		Batches: true,
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
	if m.FD = s.routeCapacity(); m.FD == 0 {
		m.FD = -1 // room for nothing, not "unknown"
	}
	m.Held = len(hs.FailedPorts)
	for _, f := range hs.FailedPorts {
		m.HeldBack = append(m.HeldBack, f.Port)
	}
	if s.owner != nil {
		m.FIP = cluster.ClaimMeta(s.owner.Claim())
	}
	return m
}

// WaitApplied implements api.AppliedWaiter over gossip metadata.
func (s *nodeInfo) WaitApplied(ctx context.Context, index uint64) ([]api.Lag, error) {
	lags, err := s.cluster.WaitApplied(ctx, index)
	out := make([]api.Lag, 0, len(lags))
	for _, l := range lags {
		out = append(out, api.Lag{Node: l.Node, Applied: l.Applied, Error: l.Error, Held: l.Held, HeldBack: l.HeldBack})
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
			Name:            m.Name,
			Role:            m.Meta.Role,
			Status:          string(m.Status),
			Voter:           voter,
			RaftAddr:        m.Meta.RaftAddr,
			APIURL:          m.Meta.APIURL,
			GossipAddr:      m.Addr,
			Version:         m.Meta.Version,
			RaftIndex:       m.Meta.Index,
			AppliedIndex:    m.Meta.Applied,
			ConfigHash:      m.Meta.ConfigHash,
			Healthy:         m.Meta.Healthy && m.Alive(),
			LastError:       m.Meta.Error,
			Held:            m.Meta.Held,
			HeldBack:        m.Meta.HeldBack,
			UnknownCommands: m.Meta.Unknown,
			RouteCapacity:   m.Meta.FD,
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

var (
	_ api.Admitter        = (*nodeInfo)(nil)
	_ api.MemberAddresser = (*nodeInfo)(nil)
)

// MemberAddresses implements api.MemberAddresser: the addresses Cluster
// reports for every member (gossip's, and raft's for voters gossip does
// not know), without this node's metadata or the rest of the status.
func (s *nodeInfo) MemberAddresses() []api.MemberAddress {
	addrs := s.cluster.Members().Addresses()
	out := make([]api.MemberAddress, 0, len(addrs)+1)
	for _, a := range addrs {
		out = append(out, api.MemberAddress{Name: a.Name, RaftAddr: a.RaftAddr, GossipAddr: a.Addr, APIURL: a.APIURL})
	}
	servers, _ := s.node.Servers()
	added := false
	for _, v := range servers {
		known := slices.ContainsFunc(addrs, func(a cluster.Address) bool { return a.Name == string(v.ID) })
		if !known {
			out = append(out, api.MemberAddress{Name: string(v.ID), RaftAddr: string(v.Address)})
			added = true
		}
	}
	if added {
		slices.SortFunc(out, func(a, b api.MemberAddress) int { return strings.Compare(a.Name, b.Name) })
	}
	return out
}

// routeCapacity is how many descriptors this node has for routes.
func (s *nodeInfo) routeCapacity() int {
	return haproxy.RouteCapacity(s.settings, s.fdLimit)
}

// needs is the descriptors st's routes need beyond the fixed part. It is
// kept for the last table asked about and moved to the next one by the
// routes that changed between them, so a write costs a walk over the table
// (no copy of it) however large it is.
func (s *nodeInfo) needs(st *fsm.State) int {
	s.needMu.Lock()
	defer s.needMu.Unlock()
	if st == s.needState {
		return s.needCount
	}
	n := s.needCount
	if s.needState == nil {
		n = 0 // ChangesSince(nil) is the whole table
	}
	n += s.needDelta(st.ChangesSince(s.needState))
	s.needState, s.needCount = st, n
	return n
}

// needDelta is how many more descriptors the routes after changes need
// than the routes before them.
func (s *nodeInfo) needDelta(changes []fsm.RouteChange) int {
	d := 0
	for _, c := range changes {
		if c.Old != nil {
			d -= haproxy.RouteDescriptors(s.settings, c.Old.Port, len(c.Old.Backends), c.Old.HealthCheck)
		}
		if c.New != nil {
			d += haproxy.RouteDescriptors(s.settings, c.New.Port, len(c.New.Backends), c.New.HealthCheck)
		}
	}
	return d
}

// Admit implements api.Admitter: a write that makes the table need more
// descriptors than any alive edge node has for routes is refused, naming
// the need and the limit. A write that does not add to the need (a delete,
// a change in place) is always admitted, so a full node can be emptied.
// Nodes that publish no capacity (a witness, an older drawbridge) are not
// counted; when none does, everything is admitted.
func (s *nodeInfo) Admit(current, next *fsm.State) error {
	have := s.needs(current)
	need := have + s.needDelta(next.ChangesSince(current))
	if need <= have {
		return nil
	}
	best, bestNode, known := 0, "", false
	if s.proxy != nil {
		best, bestNode, known = s.routeCapacity(), s.cfg.NodeName, true
	}
	peers := s.peers
	if peers == nil && s.cluster != nil {
		peers = s.cluster.Members().Members
	}
	if peers != nil {
		for _, m := range peers() {
			if m.Name == s.cfg.NodeName || m.Meta.Role != roleEdge || !m.Alive() || m.Meta.FD == 0 {
				continue
			}
			if !known || m.Meta.FD > best {
				best, bestNode, known = m.Meta.FD, m.Name, true
			}
		}
	}
	if !known || need <= best {
		return nil
	}
	where := bestNode
	if bestNode == s.cfg.NodeName {
		where = fmt.Sprintf("%s, of its descriptor limit %d", bestNode, s.fdLimit)
	}
	return &api.CapacityError{Message: fmt.Sprintf(
		"no edge node can run this: the route table would need %d file descriptors for listeners and health checks "+
			"(one per route, one more per backend with health checks on), and the most any edge node has for them is %d "+
			"(%s, after what HAProxy and its connections keep); raise LimitNOFILE on the nodes, "+
			"turn health checks off, or remove routes", need, max(best, 0), where)}
}

// peerRemover serves POST /v1/raft/remove-peer with the raft node.
type peerRemover struct{ node *cluster.Node }

// RemovePeer implements api.PeerRemover.
func (p peerRemover) RemovePeer(name string) error {
	err := p.node.RemovePeer(name)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNotVoter):
		return &api.Error{Status: http.StatusNotFound, Message: err.Error()}
	case errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrShutdown), errors.Is(err, cluster.ErrCommitTimeout):
		return err
	}
	return &api.Error{Status: http.StatusConflict, Message: err.Error()}
}
