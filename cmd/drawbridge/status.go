package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/api"
)

func newStatusCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a node's raft, route table and HAProxy state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.Status
			if printed, err := cf.call(cmd, "GET", "/v1/status", nil, &st); err != nil || printed {
				return err
			}
			if err := printStatus(cmd.OutOrStdout(), st); err != nil {
				return err
			}
			var cl api.ClusterStatus
			if _, err := cf.call(cmd, "GET", "/v1/cluster", nil, &cl); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return printMembers(cmd.OutOrStdout(), cl)
		},
	}
	cf.register(cmd)
	return cmd
}

func printStatus(w io.Writer, st api.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	leader := st.Raft.Leader
	if leader == "" {
		leader = "(none)"
	}
	fmt.Fprintf(tw, "node\t%s (drawbridge %s)\n", st.Node, st.Version)
	fmt.Fprintf(tw, "raft\t%s, leader %s, last index %d, commit %d, applied %d\n",
		st.Raft.State, leader, st.Raft.LastIndex, st.Raft.CommitIndex, st.Raft.AppliedIndex)
	fmt.Fprintf(tw, "routes\t%d routes, %d backends at index %d (hash %.12s)\n",
		st.State.Routes, st.State.Backends, st.State.Index, st.State.Hash)
	h := st.HAProxy
	running := "not running"
	if h.Running {
		running = fmt.Sprintf("running (master pid %d", h.MasterPID)
		if h.Adopted {
			running += ", adopted"
		}
		running += ")"
	}
	fmt.Fprintf(tw, "haproxy\t%s, config of index %d (hash %.12s), %d reloads\n", running, h.AppliedIndex, h.ConfigHash, h.Reloads)
	if len(h.FailedPorts) > 0 && h.ServedIndex > h.AppliedIndex {
		fmt.Fprintf(tw, "served\tindex %d, except %d route(s) held back (below): index %d is not applied\n",
			h.ServedIndex, len(h.FailedPorts), h.ServedIndex)
	}
	for _, warn := range st.Warnings {
		fmt.Fprintf(tw, "WARNING\t%s\n", warn)
	}
	if h.RouteCapacity != 0 {
		fmt.Fprintf(tw, "capacity\t%d of %d file descriptors for routes' listeners and health checks in use (limit %d)\n",
			h.RouteNeeds, h.RouteCapacity, h.DescriptorLimit)
	}
	if st.UnknownCommands > 0 {
		fmt.Fprintf(tw, "UPGRADE\tthis node skipped %d log entries written by a newer drawbridge: its route table may differ from the cluster's; upgrade drawbridge on it\n",
			st.UnknownCommands)
	}
	if !h.LastReloadAt.IsZero() {
		fmt.Fprintf(tw, "last reload\t%s ago\n", time.Since(h.LastReloadAt).Round(time.Second))
	}
	if h.LastError != "" {
		fmt.Fprintf(tw, "last error\t%s (%s ago)\n", h.LastError, time.Since(h.LastErrorAt).Round(time.Second))
	}
	for _, f := range h.FailedPorts {
		fmt.Fprintf(tw, "held back\tport %d (%s): %s\n", f.Port, f.Name, f.Error)
	}
	if h.DynamicPorts != "" {
		fmt.Fprintf(tw, "dynamic ports\t%s: changes without a reload (%d so far)\n", h.DynamicPorts, h.RuntimeUpdates)
	}
	if h.Running {
		wk := h.Workers
		budget := "no budget"
		if wk.OldWorkersBudgetBytes > 0 {
			budget = fmt.Sprintf("budget %d MB", wk.OldWorkersBudgetBytes>>20)
		}
		fmt.Fprintf(tw, "workers\tcurrent %d MB; %d old workers holding %d connections, %d MB (%s)\n",
			wk.WorkerResidentBytes>>20, wk.OldWorkers, wk.OldWorkerConnections, wk.OldWorkersResidentBytes>>20, budget)
		if wk.OldWorkersStopped > 0 {
			fmt.Fprintf(tw, "budget stops\t%d old workers stopped, %d connections closed\n", wk.OldWorkersStopped, wk.OldWorkerConnectionsClosed)
		}
	}
	return tw.Flush()
}
