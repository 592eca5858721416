package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/internal/agent"
)

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new random 32-byte gossip encryption key (base64)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k := make([]byte, 32)
			if _, err := rand.Read(k); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(k))
			return nil
		},
	}
}

func newMembersCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's members with their role, health and applied index",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.ClusterStatus
			if printed, err := cf.call(cmd, "GET", "/v1/cluster", nil, &st); err != nil || printed {
				return err
			}
			return printMembers(cmd.OutOrStdout(), st)
		},
	}
	cf.register(cmd)
	return cmd
}

func printMembers(w io.Writer, st api.ClusterStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tSTATUS\tVOTER\tLEADER\tINDEX\tHAPROXY\tCONFIG\tHEALTHY\tERROR")
	for _, m := range st.Members {
		leader := ""
		if m.Name == st.Leader {
			leader = "*"
		}
		hp := "-"
		if m.Role != cluster.RoleWitness {
			hp = fmt.Sprint(m.AppliedIndex)
		}
		hash := m.ConfigHash
		if len(hash) > 12 {
			hash = hash[:12]
		}
		if hash == "" {
			hash = "-"
		}
		errText := m.LastError
		if m.Held > 0 {
			errText = fmt.Sprintf("%d route(s) held back; %s", m.Held, errText)
		}
		if m.UnknownCommands > 0 {
			errText = fmt.Sprintf("upgrade: skipped %d newer log entries; %s", m.UnknownCommands, errText)
		}
		if errText == "" {
			errText = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%d\t%s\t%s\t%t\t%s\n", m.Name, m.Role, m.Status, m.Voter, leader, m.RaftIndex, hp, hash, m.Healthy, errText)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if fip := st.FloatingIP; fip != nil {
		fmt.Fprintf(w, "\nfloating IP %s (%s) held by %s\n", fip.Address, fip.Provider, orNone(fip.Holder))
		if f := fip.LastFailover; f != nil {
			fmt.Fprintf(w, "last failover %s ago: %s -> %s in %v (%s)\n", time.Since(f.At).Round(time.Second), orNone(f.From), f.To, f.Duration, f.Reason)
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func newLeaveCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Make the local agent leave the cluster gracefully and stop (HAProxy keeps serving)",
		Long: `leave signals the agent running on this machine (the process holding the lock
on its data directory; never a PID merely left in a file) to hand over
leadership, leave gossip, and stop. The
cluster removes it from the raft voters; HAProxy keeps serving its last config.
It is what SIGTERM (systemctl stop drawbridge) does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return signalAgent(cmd.OutOrStdout(), dataDir)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/drawbridge", "the agent's data directory")
	return cmd
}

func newRaftCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "raft", Short: "Inspect and repair raft membership (peers and recover offline, remove-peer online)"}
	var dataDir string
	peers := &cobra.Command{
		Use:   "peers",
		Short: "Print the raft peer set stored in a stopped node's data directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireStopped(dataDir); err != nil {
				return err
			}
			servers, err := cluster.ReadPeers(filepath.Join(dataDir, "raft"))
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE")
			for _, s := range servers {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.ID, s.Address, s.Suffrage)
			}
			return tw.Flush()
		},
	}
	var keep []string
	recover := &cobra.Command{
		Use:   "recover --data-dir DIR [--peer ID=ADDR]...",
		Short: "Rewrite a stopped node's raft peer set so it can continue without a lost majority",
		Long: `recover is the way out when a majority of voters is gone for good (for
example one node of a pair without a witness). Stop the agent on the survivor,
run recover on its data directory, start it again: it leads alone and accepts
writes. By default the new peer set is just this node (its ID and raft address
from the stored configuration); --peer ID=ADDR lists the peers to keep
instead. Never run it on more than one side of a partition.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireStopped(dataDir); err != nil {
				return err
			}
			dir := filepath.Join(dataDir, "raft")
			var servers []raft.Server
			for _, p := range keep {
				id, addr, ok := strings.Cut(p, "=")
				if !ok || id == "" || addr == "" {
					return &exitError{code: 2, err: fmt.Errorf("--peer %q must be ID=ADDR", p)}
				}
				servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Voter})
			}
			if len(servers) == 0 {
				self, err := selfPeer(dataDir, dir)
				if err != nil {
					return err
				}
				servers = []raft.Server{self}
			}
			if err := cluster.RecoverPeers(dir, servers, nil); err != nil {
				return err
			}
			var names []string
			for _, s := range servers {
				names = append(names, fmt.Sprintf("%s (%s)", s.ID, s.Address))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "raft peers of %s are now: %s\nstart the agent; it continues with this peer set\n", dataDir, strings.Join(names, ", "))
			return nil
		},
	}
	recover.Flags().StringArrayVar(&keep, "peer", nil, "peer to keep as ID=RAFT_ADDR (repeatable; default: this node alone)")
	for _, c := range []*cobra.Command{peers, recover} {
		c.Flags().StringVar(&dataDir, "data-dir", "/var/lib/drawbridge", "the stopped agent's data directory")
	}
	cmd.AddCommand(peers, recover, newRemovePeerCmd())
	return cmd
}

// newRemovePeerCmd is `drawbridge raft remove-peer NAME`: online, through
// the leader (any node forwards it there).
func newRemovePeerCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "remove-peer NAME",
		Short: "Remove a voter that is gone for good from the raft configuration (online, through the leader)",
		Long: `remove-peer removes a raft voter that will not come back: a failed node keeps
its vote (so that losing it does not also lose the quorum that removing it
needs), and gossip alone never removes a voter. A node that stops gracefully
removes itself. Any node's API takes the request and forwards it to the
leader; the leader cannot remove itself (stop it first: it hands leadership
over).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var out struct {
				Removed string `json:"removed"`
			}
			if err := c.do(cmd.Context(), "POST", "/v1/raft/remove-peer", map[string]string{"name": args[0]}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s from the raft voters\n", out.Removed)
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}

// selfPeer finds this node in the stored peer set: the node name the agent
// recorded in the data dir, matched against the stored configuration.
func selfPeer(dataDir, raftDir string) (raft.Server, error) {
	servers, err := cluster.ReadPeers(raftDir)
	if err != nil {
		return raft.Server{}, err
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "node-name"))
	if err != nil {
		return raft.Server{}, fmt.Errorf("cannot tell which peer this node is (%v): pass --peer ID=ADDR", err)
	}
	name := strings.TrimSpace(string(b))
	for _, s := range servers {
		if string(s.ID) == name {
			return s, nil
		}
	}
	return raft.Server{}, fmt.Errorf("node %q is not in the stored peer set: pass --peer ID=ADDR", name)
}

func newSnapshotCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "snapshot", Short: "Save the route table to a file, or restore it from one, through the API"}
	cf.register(cmd)
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Save the route table (from the leader) to FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", "/v1/snapshot?consistent=true", nil, &raw); err != nil {
				return err
			}
			tmp := args[0] + ".tmp"
			if err := os.WriteFile(tmp, raw, 0o600); err != nil {
				return err
			}
			if err := os.Rename(tmp, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "saved %d bytes to %s\n", len(raw), args[0])
			return nil
		},
	}
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the whole route table with the one saved in FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if !json.Valid(data) {
				return &exitError{code: 2, err: fmt.Errorf("%s is not a drawbridge snapshot (not JSON)", args[0])}
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			var body json.RawMessage
			if err := c.do(cmd.Context(), "POST", "/v1/snapshot", json.RawMessage(data), &body); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored: %s\n", strings.TrimSpace(string(body)))
			return nil
		},
	}
	cmd.AddCommand(save, restore)
	return cmd
}

// requireStopped refuses to work on a data directory an agent holds (its
// raft store would be locked, and changing it under the agent is unsafe).
func requireStopped(dataDir string) error {
	if pid, ok := agent.LockHolder(dataDir); ok {
		return fmt.Errorf("the agent (PID %d) still runs on %s: stop it first (drawbridge leave --data-dir %s)", pid, dataDir, dataDir)
	}
	return nil
}

// signalAgent sends SIGTERM to the agent of dataDir and waits for it to
// exit. The agent is the process holding the data dir's lock: a PID left
// in a file by an agent that crashed may by now name another process, and
// is never signalled.
func signalAgent(w io.Writer, dataDir string) error {
	pid, ok := agent.LockHolder(dataDir)
	if !ok {
		return fmt.Errorf("no agent is running on %s (nothing holds %s)", dataDir, agent.LockFile(dataDir))
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal agent %d: %w", pid, err)
	}
	fmt.Fprintf(w, "agent %d is leaving", pid)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			fmt.Fprintln(w, "; stopped (HAProxy keeps serving)")
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintln(w)
	return errors.New("agent still running after 30s")
}
