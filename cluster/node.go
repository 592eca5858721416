// Package cluster replicates drawbridge's route table with hashicorp/raft:
// log and stable store in raft-boltdb, file snapshots, TCP transport. It hands
// committed entries to the fsm package and knows nothing of HTTP or HAProxy.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Errors returned by Apply when a change cannot be committed. All of them
// mean "try again later or elsewhere"; none means the change was refused on
// its merits (those come back in fsm.Result.Err).
var (
	// ErrNotLeader means this node is not the raft leader and cannot commit by
	// itself. The error text names the leader when one is known.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrNoLeader means no leader is known: an election is running, or a
	// majority of voters is unreachable (quorum lost).
	ErrNoLeader = errors.New("no raft leader")
	// ErrCommitTimeout means the entry was not committed in time; it may still
	// be committed later.
	ErrCommitTimeout = errors.New("commit timed out")
	// ErrShutdown means the node is stopping.
	ErrShutdown = errors.New("node is shutting down")
)

// Config is what a Node needs. Zero durations take the defaults below.
type Config struct {
	// NodeID is this node's raft server ID (its name).
	NodeID string
	// DataDir holds raft.db (log + stable store) and snapshots/.
	DataDir string
	// BindAddr is the raft TCP listen address, e.g. ":9001".
	BindAddr string
	// AdvertiseAddr is the address peers dial; defaults to BindAddr when that
	// names a host.
	AdvertiseAddr string
	// Bootstrap makes this node form a one-voter cluster when it has no state.
	Bootstrap bool
	// ApplyTimeout bounds how long Apply waits for a commit (default 10s).
	ApplyTimeout time.Duration
	// Raft timings (defaults: raft's own 1s, 1s, 500ms; commit timeout 10ms).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is the number of log entries between automatic
	// snapshots (default 8192); SnapshotInterval how often that is checked
	// (default 2m); TrailingLogs how many entries stay after a snapshot
	// (default 10240).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// NoSync turns off fsync of the raft log. Only for benchmarks and tests.
	NoSync bool
	// TLS, when set, makes every raft connection mutual TLS with this config
	// (used for both accepting and dialing; see LoadRaftTLS). Nil means
	// plain TCP.
	TLS *tls.Config
}

func (c *Config) setDefaults() {
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 10 * time.Second
	}
	d := raft.DefaultConfig()
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = d.LeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		// raft's 50ms default is how long followers may wait to learn that
		// an entry committed; every edge node renders from its own applied
		// state, so that wait is on the path from webhook to live route.
		// 10ms costs a few small RPCs per second on an idle LAN.
		c.CommitTimeout = 10 * time.Millisecond
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
}

// Validate reports configuration errors.
func (c Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("node id is empty")
	}
	if c.DataDir == "" {
		return errors.New("data dir is empty")
	}
	if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("raft bind address %q: %w", c.BindAddr, err)
	}
	if c.TLS != nil && c.TLS.GetCertificate != nil {
		cert, err := c.TLS.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || cert == nil || len(cert.Certificate) == 0 {
			return fmt.Errorf("raft tls: no certificate: %v", err)
		}
		leaf := cert.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return fmt.Errorf("raft tls: parse certificate: %w", err)
			}
		}
		if got := CertNodeName(leaf); got != c.NodeID {
			return fmt.Errorf("raft tls: the certificate names node %q but this node is %q: create its own with `drawbridge tls cert create --node %s`", got, c.NodeID, c.NodeID)
		}
	}
	return nil
}

// ValidateTimings checks the raft timings (after defaults) as raft checks
// them when the node starts, so a configuration check catches what would
// stop the node at start.
func (c Config) ValidateTimings() error {
	d := c
	d.setDefaults()
	rc := raft.DefaultConfig()
	rc.LocalID = "check"
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = d.HeartbeatTimeout, d.ElectionTimeout, d.LeaderLeaseTimeout
	rc.CommitTimeout, rc.SnapshotThreshold, rc.SnapshotInterval, rc.TrailingLogs = d.CommitTimeout, d.SnapshotThreshold, d.SnapshotInterval, d.TrailingLogs
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("raft timings (heartbeat %s, election %s, leader lease %s, snapshot interval %s): %w",
			d.HeartbeatTimeout, d.ElectionTimeout, d.LeaderLeaseTimeout, d.SnapshotInterval, err)
	}
	return nil
}

// Node is one raft member holding the route table.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	// layer is the TLS stream layer under transport (nil without TLS);
	// raftPtr is raft once it runs, for the layer's identity lookups.
	layer    *tlsStreamLayer
	raftPtr  atomic.Pointer[raft.Raft]
	store    *raftboltdb.BoltStore
	leaderCh chan bool
	metrics  *nodeMetrics

	// bootTarget is the index of the last command in the local log when
	// the node opened: the route table is replayed once it holds it.
	bootTarget uint64

	// proposals feed the batcher (batch.go); batchTerm is the raft term
	// in which the reconciler last found that every voter reads batch
	// entries (0: not found, write one entry per command).
	proposals chan *proposal
	batchTerm atomic.Uint64

	// transferFault, set by tests before a leave, fails a leadership
	// transfer before raft is asked, as raft itself does while an election
	// runs or another transfer is under way.
	transferFault func() error

	mu       sync.Mutex
	watchers []chan bool
	// departed names the members that asked to be removed (see
	// departing).
	departed map[string]bool
	closed   bool
	done     chan struct{}
}

// Status is a point-in-time view of this node's raft state.
type Status struct {
	NodeID       string `json:"node_id"`
	State        string `json:"state"`
	Leader       string `json:"leader,omitempty"`
	LeaderID     string `json:"leader_id,omitempty"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

// New opens (or creates) the node's raft state under cfg.DataDir, starts the
// transport and raft, and bootstraps a one-voter cluster when asked and there
// is no prior state. The fsm receives every committed entry.
func New(cfg Config, f *fsm.FSM, logger *slog.Logger, reg prometheus.Registerer) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "raft")
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	hlog := newHCLogger("raft", logger)

	store, err := raftboltdb.New(raftboltdb.Options{
		Path:   filepath.Join(cfg.DataDir, "raft.db"),
		NoSync: cfg.NoSync,
	})
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	n := &Node{cfg: cfg, log: logger, fsm: f, store: store, done: make(chan struct{}),
		proposals: make(chan *proposal, maxBatchCommands)}
	fail := func(err error) (*Node, error) {
		if n.transport != nil {
			n.transport.Close()
		}
		store.Close()
		return nil, err
	}
	logs, err := raft.NewLogCache(logCacheEntries, store)
	if err != nil {
		return fail(fmt.Errorf("raft log cache: %w", err))
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 3, hlog)
	if err != nil {
		return fail(fmt.Errorf("raft snapshot store: %w", err))
	}

	advertise := cfg.AdvertiseAddr
	if advertise == "" {
		advertise = cfg.BindAddr
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return fail(fmt.Errorf("raft advertise address %q: %w", advertise, err))
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return fail(fmt.Errorf("raft advertise address %q is not dialable: set an advertise address", advertise))
	}
	if cfg.TLS != nil {
		n.layer, err = newTLSStreamLayer(cfg.BindAddr, adv, cfg.TLS, logger)
		if err == nil {
			n.transport = newTLSTransport(n.layer, hlog)
		}
	} else {
		n.transport, err = raft.NewTCPTransportWithConfig(cfg.BindAddr, adv, transportConfig(hlog))
	}
	if err != nil {
		return fail(fmt.Errorf("raft transport on %s: %w", cfg.BindAddr, err))
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	n.leaderCh = make(chan bool, 8)
	rc.NotifyCh = n.leaderCh
	if err := raft.ValidateConfig(rc); err != nil {
		return fail(fmt.Errorf("raft config: %w", err))
	}

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, store, snaps)
		if err != nil {
			return fail(fmt.Errorf("inspect raft state: %w", err))
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter, ID: rc.LocalID, Address: n.transport.LocalAddr(),
			}}}
			if err := raft.BootstrapCluster(rc, logs, store, snaps, n.transport, conf); err != nil {
				return fail(fmt.Errorf("bootstrap raft: %w", err))
			}
			logger.Info("bootstrapped a new single-voter cluster", "node", cfg.NodeID)
		}
	}

	n.bootTarget = lastCommandIndex(store, 0)
	n.raft, err = raft.NewRaft(rc, f, logs, store, snaps, n.transport)
	if err != nil {
		return fail(fmt.Errorf("start raft: %w", err))
	}
	n.raftPtr.Store(n.raft)
	if n.layer != nil {
		// Until now no server is known at any address, so nothing was
		// dialed and every peer request was answered "not ready".
		n.layer.setIdentity(n.serversAt, n.handlePeerRequest)
	}
	n.metrics = newNodeMetrics(reg, n)
	go n.fanOutLeadership()
	go n.batchProposals()
	return n, nil
}

// fanOutLeadership copies raft's leadership notifications to every watcher
// without ever blocking raft.
func (n *Node) fanOutLeadership() {
	for {
		select {
		case <-n.done:
			return
		case isLeader := <-n.leaderCh:
			n.log.Info("leadership changed", "leader", isLeader)
			n.mu.Lock()
			for _, w := range n.watchers {
				select {
				case w <- isLeader:
				default:
					// Drop the stale value so the latest one always lands.
					select {
					case <-w:
					default:
					}
					w <- isLeader
				}
			}
			n.mu.Unlock()
		}
	}
}

// WatchLeadership returns a channel that receives true when this node becomes
// leader and false when it stops being leader. Slow readers see the latest
// value. The current state is delivered first.
func (n *Node) WatchLeadership() <-chan bool {
	ch := make(chan bool, 1)
	n.mu.Lock()
	n.watchers = append(n.watchers, ch)
	n.mu.Unlock()
	ch <- n.IsLeader()
	return ch
}

// Replayed reports whether the route table is current enough to hand to
// HAProxy after a restart: the fsm itself (not raft) has applied the last
// command of the local log as it was when the node opened, or, once a
// leader is known, every committed command (a log tail that was never
// committed may be replaced by the leader's). raft's AppliedIndex is not
// enough: it counts entries handed to the fsm, which may still be applying
// them, and a half-replayed table must never replace what HAProxy serves.
func (n *Node) Replayed() bool {
	applied := n.fsm.State().Index
	if applied >= n.bootTarget {
		return true
	}
	addr, _ := n.raft.LeaderWithID()
	commit := n.raft.CommitIndex()
	if addr == "" || commit == 0 || n.raft.AppliedIndex() < commit {
		return false
	}
	return applied >= lastCommandIndex(n.store, commit)
}

// lastCommandIndex returns the index of the last command entry in store at
// or below upTo (0: the last entry), or 0 when the retained log holds none
// (what came before is in the snapshot, which raft restores before it
// starts).
func lastCommandIndex(store raft.LogStore, upTo uint64) uint64 {
	first, err := store.FirstIndex()
	if err != nil {
		return 0
	}
	last, err := store.LastIndex()
	if err != nil {
		return 0
	}
	if upTo == 0 || upTo > last {
		upTo = last
	}
	for i := upTo; i >= first && i > 0; i-- {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return 0
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return 0
}

// HasState reports whether this node belongs to a cluster: it has a raft log
// or snapshot (bootstrapped, joined, or restored).
func (n *Node) HasState() bool { return n.raft.LastIndex() > 0 }

// IsLeader reports whether this node is the raft leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// FSM returns the state machine this node applies to.
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// Apply validates cmd, proposes it, waits for the commit and returns the
// route table's answer. The error is non-nil only when the change could not be
// committed (not leader, no leader, timeout, shutdown); a refusal on the
// merits (conflict, not found, invalid) is in Result.Err.
func (n *Node) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if err := cmd.Validate(); err != nil {
		return fsm.Result{Err: err}, nil
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	return n.ApplyEncoded(ctx, data)
}

// ApplyEncoded proposes an already encoded command.
func (n *Node) ApplyEncoded(ctx context.Context, data []byte) (fsm.Result, error) {
	if err := n.checkLeader(); err != nil {
		return fsm.Result{}, err
	}
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < timeout {
			timeout = d
		}
	}
	if timeout <= 0 {
		return fsm.Result{}, fmt.Errorf("%w: no time left before the request deadline", ErrCommitTimeout)
	}
	p := newProposal(data, timeout)
	if len(data) <= maxBatchedCommand && n.batching() {
		return n.propose(p)
	}
	n.answerFuture([]*proposal{p}, n.raft.Apply(data, timeout))
	return p.wait()
}

func (n *Node) checkLeader() error {
	switch n.raft.State() {
	case raft.Leader:
		return nil
	case raft.Shutdown:
		return ErrShutdown
	}
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return fmt.Errorf("%w: an election is in progress or a majority of voters is unreachable (quorum lost); writes resume when a majority is back, or run `drawbridge raft recover` on a stopped survivor", ErrNoLeader)
	}
	return fmt.Errorf("%w: the leader is %s (%s)", ErrNotLeader, id, addr)
}

// MaybeAppliedError is a commit failure after which the entry may still be
// committed: leadership was lost while the entry was in flight, and the next
// leader may carry it on. A client must not read it as "not applied".
type MaybeAppliedError struct{ Err error }

func (e *MaybeAppliedError) Error() string {
	return e.Err.Error() + "; the change may still be applied"
}

// Unwrap returns the underlying error.
func (e *MaybeAppliedError) Unwrap() error { return e.Err }

// MaybeApplied reports that the outcome is unknown.
func (e *MaybeAppliedError) MaybeApplied() bool { return true }

func (n *Node) translate(err error) error {
	switch {
	case errors.Is(err, raft.ErrLeadershipLost):
		return &MaybeAppliedError{Err: fmt.Errorf("%w: %v", ErrNotLeader, err)}
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %v", ErrCommitTimeout, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("commit: %w", err)
}

// WaitForLeader blocks until some leader is known (this node or another).
func (n *Node) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for raft leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Barrier waits until every entry committed before the call is applied to
// the local fsm. A new leader uses it before trusting its state.
func (n *Node) Barrier(timeout time.Duration) error {
	return n.translateOrNil(n.raft.Barrier(timeout).Error())
}

func (n *Node) translateOrNil(err error) error {
	if err == nil {
		return nil
	}
	return n.translate(err)
}

// Snapshot takes a raft snapshot now.
func (n *Node) Snapshot() error {
	return n.translateOrNil(n.raft.Snapshot().Error())
}

// Status returns this node's raft view.
func (n *Node) Status() Status {
	addr, id := n.raft.LeaderWithID()
	return Status{
		NodeID:       n.cfg.NodeID,
		State:        n.raft.State().String(),
		Leader:       string(addr),
		LeaderID:     string(id),
		Term:         n.raft.CurrentTerm(),
		LastIndex:    n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
	}
}

// Shutdown stops raft and closes the stores. It is safe to call twice.
func (n *Node) Shutdown() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	close(n.done)
	n.mu.Unlock()

	err := n.raft.Shutdown().Error()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	n.metrics.unregister()
	if err != nil {
		return fmt.Errorf("shut down raft: %w", err)
	}
	return nil
}
