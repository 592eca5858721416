package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Offline tools for a stopped node's raft data dir (the layout New creates:
// raft.db plus snapshots/ in the data dir). They back `drawbridge raft
// recover` and `drawbridge raft peers`.

var (
	// ErrNoRaftState means the data dir holds no raft log, term or snapshot:
	// wrong directory, or a node that never joined a cluster.
	ErrNoRaftState = errors.New("no raft state in data dir")
	// ErrDataDirInUse means another process (normally the running agent)
	// holds the raft database open.
	ErrDataDirInUse = errors.New("raft data dir is in use: stop the agent first")
)

// offlineLockTimeout is how long the offline tools wait for the raft
// database's file lock before concluding that the agent holds it.
const offlineLockTimeout = time.Second

// offlineStores is a stopped node's raft storage, opened for the offline
// tools. Close it when done.
type offlineStores struct {
	store *raftboltdb.BoltStore
	snaps *raft.FileSnapshotStore
}

func (s *offlineStores) Close() error { return s.store.Close() }

// openOffline opens dataDir's raft storage, refusing when it has no raft
// state or another process has the database open. It never creates a
// database in a directory that has none.
func openOffline(dataDir string, readOnly bool, logger *slog.Logger) (*offlineStores, error) {
	path := filepath.Join(dataDir, "raft.db")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoRaftState, path)
	} else if err != nil {
		return nil, fmt.Errorf("raft store %s: %w", path, err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bbolt.Options{Timeout: offlineLockTimeout, ReadOnly: readOnly},
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s is locked by another process)", ErrDataDirInUse, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", path, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dataDir, 3, newHCLogger("raft", logger))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raft snapshot store in %s: %w", dataDir, err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("inspect raft state in %s: %w", dataDir, err)
	}
	if !has {
		store.Close()
		return nil, fmt.Errorf("%w: %s", ErrNoRaftState, dataDir)
	}
	return &offlineStores{store: store, snaps: snaps}, nil
}

// configuration returns the latest configuration in the stores, as raft
// itself would start with it: the newest snapshot's configuration, replaced
// by each configuration entry in the log after that snapshot. (Unlike
// raft.GetConfiguration this never writes, so it works on a read-only
// database.)
func (s *offlineStores) configuration() (raft.Configuration, error) {
	var conf raft.Configuration
	from, err := s.store.FirstIndex()
	if err != nil {
		return conf, fmt.Errorf("first log index: %w", err)
	}
	snaps, err := s.snaps.List()
	if err != nil {
		return conf, fmt.Errorf("list snapshots: %w", err)
	}
	if len(snaps) > 0 { // newest first
		conf = snaps[0].Configuration
		from = snaps[0].Index + 1
	}
	last, err := s.store.LastIndex()
	if err != nil {
		return conf, fmt.Errorf("last log index: %w", err)
	}
	for i := max(from, 1); i <= last; i++ {
		var entry raft.Log
		if err := s.store.GetLog(i, &entry); err != nil {
			return conf, fmt.Errorf("read log entry %d: %w", i, err)
		}
		if entry.Type == raft.LogConfiguration {
			if conf, err = decodeConfiguration(entry.Data); err != nil {
				return conf, fmt.Errorf("log entry %d: %w", i, err)
			}
		}
	}
	return conf, nil
}

// decodeConfiguration is raft.DecodeConfiguration, which panics on bad
// input, with the panic turned into an error.
func decodeConfiguration(data []byte) (conf raft.Configuration, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode raft configuration: %v", r)
		}
	}()
	return raft.DecodeConfiguration(data), nil
}

// offlineRaftConfig is a raft config good enough for the offline APIs,
// which validate it but neither elect nor replicate.
func offlineRaftConfig(logger *slog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = "drawbridge-offline"
	rc.Logger = newHCLogger("raft", logger)
	return rc
}

// RecoverPeers rewrites the peer set of a stopped node's raft data dir, so
// the node starts with exactly peers as its configuration. Its typical use
// is a pair without a witness that lost one node: give the survivor a peer
// set of just itself and it elects itself and accepts writes again; new
// nodes then join it as usual.
//
// It applies every entry in the local log, writes a snapshot carrying the
// new configuration and truncates the log (raft.RecoverCluster). That
// commits entries that may never have been committed before, which is the
// price of recovering without a quorum. Run it only when the lost nodes are
// not coming back with their old data, and never while the agent runs: it
// refuses with ErrDataDirInUse when the database is locked, and with
// ErrNoRaftState when there is nothing to recover.
func RecoverPeers(dataDir string, peers []raft.Server, logger *slog.Logger) error {
	if len(peers) == 0 {
		return errors.New("recover raft peers: the new peer set is empty; give at least this node")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "raft-recover")
	st, err := openOffline(dataDir, false, logger)
	if err != nil {
		return fmt.Errorf("recover raft peers: %w", err)
	}
	defer st.Close()

	before, err := st.configuration()
	if err != nil {
		return fmt.Errorf("recover raft peers: read current peers: %w", err)
	}
	conf := raft.Configuration{Servers: append([]raft.Server(nil), peers...)}
	// The fsm only carries state from the old log into the new snapshot;
	// raft.RecoverCluster says it must not be used afterwards.
	// The transport only encodes peer addresses into the snapshot's legacy
	// field; nothing is sent.
	_, trans := raft.NewInmemTransport("")
	if err := raft.RecoverCluster(offlineRaftConfig(logger), fsm.New(), st.store, st.store, st.snaps, trans, conf); err != nil {
		return fmt.Errorf("recover raft peers: %w", err)
	}
	logger.Warn("rewrote the raft peer set; start the agent to continue with it",
		"data_dir", dataDir, "old_peers", serversString(before.Servers), "new_peers", serversString(peers))
	return nil
}

// ReadPeers returns the latest raft configuration recorded in a stopped
// node's data dir: the newest snapshot's configuration, overridden by any
// configuration entries in the log after it (what raft itself would start
// with). Like RecoverPeers it refuses while the agent holds the database;
// ask a running agent over its API instead.
func ReadPeers(dataDir string) ([]raft.Server, error) {
	logger := slog.New(slog.DiscardHandler)
	st, err := openOffline(dataDir, true, logger)
	if err != nil {
		return nil, fmt.Errorf("read raft peers: %w", err)
	}
	defer st.Close()
	conf, err := st.configuration()
	if err != nil {
		return nil, fmt.Errorf("read raft peers: %w", err)
	}
	return conf.Servers, nil
}

func serversString(servers []raft.Server) string {
	parts := make([]string, len(servers))
	for i, p := range servers {
		parts[i] = fmt.Sprintf("%s=%s (%s)", p.ID, p.Address, p.Suffrage)
	}
	return strings.Join(parts, ", ")
}
