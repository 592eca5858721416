package cluster

import (
	"time"

	"github.com/hashicorp/raft"
)

// The raft operations the rest of this package needs. Node is the only type
// that touches *raft.Raft or its own Config: the Cluster facade, the
// Reconciler and the LeaseReaper go through these methods, so what raft
// does for drawbridge is all in node.go, identity.go and this file.

// ID returns this node's raft server ID, which is its node name.
func (n *Node) ID() string { return n.cfg.NodeID }

// ApplyTimeout is how long a write waits to be committed.
func (n *Node) ApplyTimeout() time.Duration { return n.cfg.ApplyTimeout }

// Leader returns the leader this node knows of: its raft address and ID,
// both empty when none is known.
func (n *Node) Leader() (addr, id string) {
	a, i := n.raft.LeaderWithID()
	return string(a), string(i)
}

// CurrentTerm returns raft's current term.
func (n *Node) CurrentTerm() uint64 { return n.raft.CurrentTerm() }

// CommitIndex returns the latest index this node knows to be committed.
func (n *Node) CommitIndex() uint64 { return n.raft.CommitIndex() }

// AppliedIndex returns the latest index applied to the route table.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// verifyLeader starts a check with a quorum that this node still leads.
func (n *Node) verifyLeader() raft.Future { return n.raft.VerifyLeader() }

// barrier starts a barrier: it completes once every entry before it is
// applied (on a leader, after an entry of its own term commits).
func (n *Node) barrier(timeout time.Duration) raft.Future { return n.raft.Barrier(timeout) }

// Servers returns the servers of the latest raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	fut := n.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return nil, err
	}
	return fut.Configuration().Servers, nil
}

// transferLeadership hands leadership to another voter and waits.
func (n *Node) transferLeadership() error {
	if n.transferFault != nil {
		if err := n.transferFault(); err != nil {
			return err
		}
	}
	return n.raft.LeadershipTransfer().Error()
}

// addVoter adds id at addr as a voter (or re-points it), on the leader.
func (n *Node) addVoter(id, addr string, timeout time.Duration) error {
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout).Error()
}

// removeServer removes id from the configuration, on the leader.
func (n *Node) removeServer(id string, timeout time.Duration) error {
	return n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error()
}

// bootstrap forms a new cluster of servers; raft.ErrCantBootstrap when
// this node already has state.
func (n *Node) bootstrap(servers []raft.Server) error {
	return n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
}
