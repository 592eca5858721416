package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
	"github.com/drawbridge-lb/drawbridge/internal/agent"
)

func newRenderCmd() *cobra.Command {
	var settings haproxy.Settings
	cmd := &cobra.Command{
		Use:   "render FILE",
		Short: "Render a route file to an HAProxy config on stdout (offline)",
		Long: `Render reads routes as JSON — the output of 'drawbridge route ls --json' or
'GET /v1/routes', or a plain array of routes — validates them exactly as the
agent would, and prints the HAProxy config the agent would load. FILE "-" reads
standard input. Nothing is contacted or changed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var data []byte
			var err error
			if args[0] == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
			} else {
				data, err = os.ReadFile(args[0])
			}
			if err != nil {
				return fmt.Errorf("read routes: %w", err)
			}
			routes, err := parseRouteFile(data)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			out, err := haproxy.RenderChecked(settings.WithDefaults(), agent.Frontends(routes))
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVar(&settings.BindAddress, "bind-address", "", "address frontends bind (default: all)")
	return cmd
}

// parseRouteFile accepts {"routes": [...]} or [...] and validates every
// route; defaults of NewRoute fill fields the file leaves out.
func parseRouteFile(data []byte) ([]fsm.Route, error) {
	data = bytes.TrimSpace(data)
	var raws []json.RawMessage
	if len(data) > 0 && data[0] == '[' {
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, fmt.Errorf("route file: %w", err)
		}
	} else {
		var wrapped struct {
			Routes []json.RawMessage `json:"routes"`
		}
		if err := json.Unmarshal(data, &wrapped); err != nil {
			return nil, fmt.Errorf("route file: %w", err)
		}
		raws = wrapped.Routes
	}
	routes := make([]fsm.Route, 0, len(raws))
	seen := map[int]string{}
	var errs []error
	for i, raw := range raws {
		var head struct {
			Port int    `json:"port"`
			Name string `json:"name"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			errs = append(errs, fmt.Errorf("route %d: %w", i, err))
			continue
		}
		r := fsm.NewRoute(head.Port, head.Name)
		if err := json.Unmarshal(raw, &r); err != nil {
			errs = append(errs, fmt.Errorf("route %d: %w", i, err))
			continue
		}
		if err := r.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("route %d (port %d): %w", i, r.Port, err))
			continue
		}
		if other, ok := seen[r.Port]; ok {
			errs = append(errs, fmt.Errorf("route %d: port %d is already used by %q", i, r.Port, other))
			continue
		}
		seen[r.Port] = r.Name
		routes = append(routes, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Port < routes[j].Port })
	return routes, nil
}
