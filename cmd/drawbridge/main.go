// Command drawbridge runs an edge node (agent) and talks to one (route,
// status, render). One static binary for agents, operators and sidecars.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// exitError carries a process exit code with its message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "drawbridge",
		Short:         "Many TCP ports on one public IP, replicated across edge nodes running HAProxy",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newAgentCmd(),
		newRouteCmd(),
		newStatusCmd(),
		newRenderCmd(),
		newRegisterCmd(),
		newMembersCmd(),
		newLeaveCmd(),
		newKeygenCmd(),
		newTLSCmd(),
		newRaftCmd(),
		newSnapshotCmd(),
		newControllerCmd(),
		newVersionCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "drawbridge %s\n", version)
		},
	}
}

func main() {
	err := newRootCmd().ExecuteContext(context.Background())
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "drawbridge: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(1)
}
