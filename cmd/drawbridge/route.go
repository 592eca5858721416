package main

import (
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

func newRouteCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "route",
		Short: "List, show, set and remove routes through an agent's API",
	}
	cf.register(cmd)
	cmd.AddCommand(newRouteLsCmd(&cf), newRouteGetCmd(&cf), newRouteSetCmd(&cf), newRouteRmCmd(&cf))
	return cmd
}

func newRouteLsCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list client.RouteList
			if printed, err := cf.call(cmd, "GET", "/v1/routes", nil, &list); err != nil || printed {
				return err
			}
			return printRoutes(cmd.OutOrStdout(), list.Routes)
		},
	}
}

func parsePortArg(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, &exitError{code: 2, err: fmt.Errorf("port %q must be a number from 1 to 65535", s)}
	}
	return p, nil
}

func newRouteGetCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get PORT",
		Short: "Show one route",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := parsePortArg(args[0])
			if err != nil {
				return err
			}
			var r fsm.Route
			if printed, err := cf.call(cmd, "GET", fmt.Sprintf("/v1/routes/%d", port), nil, &r); err != nil || printed {
				return err
			}
			return printRoutes(cmd.OutOrStdout(), []fsm.Route{r})
		},
	}
}

// routeSpec is the body of PUT /v1/routes/{port}.
type routeSpec struct {
	Name          string        `json:"name"`
	Balance       string        `json:"balance,omitempty"`
	Sticky        *bool         `json:"sticky,omitempty"`
	ProxyProtocol string        `json:"proxy_protocol,omitempty"`
	HealthCheck   *bool         `json:"health_check,omitempty"`
	Backends      []fsm.Backend `json:"backends"`
	Force         bool          `json:"force,omitempty"`
}

func newRouteSetCmd(cf *clientFlags) *cobra.Command {
	var spec routeSpec
	var backends []string
	var sticky, check bool
	cmd := &cobra.Command{
		Use:   "set PORT --name NAME [--backend IP:PORT]...",
		Short: "Create or replace the route on a public port",
		Example: `  drawbridge route set 8080 --name unifi --backend 10.0.0.5:30808 --backend 10.0.0.6:30808
  drawbridge route set 3333 --name stratum --balance leastconn --sticky=false --proxy-protocol v2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := parsePortArg(args[0])
			if err != nil {
				return err
			}
			if spec.Name == "" {
				return &exitError{code: 2, err: fmt.Errorf("--name is required")}
			}
			spec.Backends = []fsm.Backend{}
			for _, b := range backends {
				ap, err := netip.ParseAddrPort(b)
				if err != nil {
					return &exitError{code: 2, err: fmt.Errorf("--backend %q must be IP:PORT ([v6]:PORT for IPv6)", b)}
				}
				spec.Backends = append(spec.Backends, fsm.Backend{Address: ap.Addr().String(), Port: int(ap.Port())})
			}
			if cmd.Flags().Changed("sticky") {
				spec.Sticky = &sticky
			}
			if cmd.Flags().Changed("health-check") {
				spec.HealthCheck = &check
			}
			var r fsm.Route
			if printed, err := cf.call(cmd, "PUT", fmt.Sprintf("/v1/routes/%d", port), spec, &r); err != nil || printed {
				return err
			}
			return printRoutes(cmd.OutOrStdout(), []fsm.Route{r})
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Name, "name", "", "route name (owner of the port)")
	f.StringArrayVar(&backends, "backend", nil, "backend IP:PORT (repeatable)")
	f.StringVar(&spec.Balance, "balance", "", "roundrobin (default), leastconn, source, first or random")
	f.BoolVar(&sticky, "sticky", true, "stick clients to a backend by source address")
	f.StringVar(&spec.ProxyProtocol, "proxy-protocol", "", "send PROXY protocol to backends: v1 or v2")
	f.BoolVar(&check, "health-check", true, "health-check backends")
	f.BoolVar(&spec.Force, "force", false, "take the port even when another name owns it")
	return cmd
}

func newRouteRmCmd(cf *clientFlags) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "rm PORT",
		Short: "Remove the route on a public port",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			port, err := parsePortArg(args[0])
			if err != nil {
				return err
			}
			path := fmt.Sprintf("/v1/routes/%d", port)
			if name != "" {
				path += "?name=" + url.QueryEscape(name)
			}
			if printed, err := cf.call(cmd, "DELETE", path, nil, nil); err != nil || printed {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "route %d removed\n", port)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "only remove when the route has this name")
	return cmd
}

// printRoutes prints routes as a table, one line per route.
func printRoutes(w io.Writer, routes []fsm.Route) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tNAME\tBALANCE\tSTICKY\tPROXY\tCHECK\tBACKENDS")
	for _, r := range routes {
		proxy := r.ProxyProtocol
		if proxy == "" {
			proxy = "-"
		}
		var bs []string
		for _, b := range r.Backends {
			s := netip.AddrPortFrom(netip.MustParseAddr(b.Address), uint16(b.Port)).String()
			if !b.ExpiresAt.IsZero() {
				s += " (lease " + time.Until(b.ExpiresAt).Round(time.Second).String() + ")"
			}
			bs = append(bs, s)
		}
		backends := strings.Join(bs, ", ")
		if backends == "" {
			backends = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%t\t%s\t%t\t%s\n", r.Port, r.Name, r.Balance, r.Sticky, proxy, r.HealthCheck, backends)
	}
	return tw.Flush()
}
