//go:build nocontroller

package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// newControllerCmd stands in for the Kubernetes controller in a binary
// built with -tags nocontroller: an edge node's agent does not need
// client-go, which triples the size of the binary.
func newControllerCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "controller",
		Short:  "Not in this build (built with -tags nocontroller)",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return &exitError{code: 2, err: errors.New("this drawbridge was built without the Kubernetes controller (-tags nocontroller); use the container image or a default build")}
		},
	}
}
