package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/internal/agent"
)

func newAgentCmd() *cobra.Command {
	var configFile string
	var checkOnly bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a drawbridge node: raft, API and the managed HAProxy",
		Long: `Run a drawbridge node. It keeps the replicated route table, serves the
webhook and REST API, and renders, validates and reloads its own HAProxy.

Configuration comes from --config (default /etc/drawbridge/drawbridge.yaml when
it exists), DRAWBRIDGE_* environment variables (DRAWBRIDGE_API_TOKEN,
DRAWBRIDGE_HAPROXY_BIND_ADDRESS, ...) and flags, later ones winning.

--dev runs one self-bootstrapped node on loopback with data in
./drawbridge-data and a generated token: the quickest way to try it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configFile, cmd.Flags())
			if err != nil {
				return err
			}
			if checkOnly {
				for _, w := range cfg.Warnings() {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
				}
				if err := cfg.CheckFiles(); err != nil {
					return fmt.Errorf("configuration names files the agent cannot use:\n%w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "configuration is valid (node %s)\n", cfg.NodeName)
				return nil
			}
			logger := newLogger(cfg.Log, cmd.ErrOrStderr()).With("node", cfg.NodeName)
			logger.Debug("garbage collector", "settings", agent.TuneGC(os.Getenv))
			a, err := agent.New(*cfg, agent.Deps{
				Logger:     logger,
				Stdout:     cmd.OutOrStdout(),
				Version:    version,
				ConfigFile: configFileInUse(configFile, devRequested(cmd.Flags())),
				ReloadConfig: func() (*agent.Config, error) {
					return loadConfig(configFile, cmd.Flags())
				},
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// SIGHUP reloads the API tokens (config file and secret files)
			// without a restart.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						if err := a.ReloadTokens(); err != nil {
							logger.Error("SIGHUP: tokens not reloaded; the previous ones stay", "err", err)
						} else {
							logger.Info("SIGHUP: tokens reloaded")
						}
					}
				}
			}()
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file (YAML/JSON/TOML)")
	f.BoolVar(&checkOnly, "check-config", false, "validate the configuration and exit")
	f.Bool("dev", false, "single node on loopback with embedded defaults")
	f.String("data-dir", "", "data directory (default /var/lib/drawbridge; ./drawbridge-data with --dev)")
	f.String("node-name", "", "node name (default: hostname)")
	f.String("api-addr", "", "API listen address (default :9000)")
	f.String("raft-addr", "", "raft listen address (default :9001)")
	f.String("raft-advertise", "", "raft address peers dial (default: --raft-addr)")
	f.String("gossip-addr", "", "gossip listen address, TCP and UDP (default :9002)")
	f.String("gossip-advertise", "", "gossip address peers reach (default: detected private IP)")
	f.StringArray("join", nil, "gossip address of a member to join (repeatable; retried until one answers)")
	f.Int("bootstrap-expect", 0, "form a new cluster once this many servers see each other")
	f.Bool("witness", false, "run as a witness: a raft voter without HAProxy that never holds the floating IP")
	f.Bool("bootstrap", false, "form a new cluster with this node as its only voter when it has no state")
	f.String("haproxy-bind-address", "", "address HAProxy frontends bind (default: all addresses)")
	f.String("haproxy-bin", "", "HAProxy binary (default haproxy)")
	f.String("haproxy-dir", "", "HAProxy runtime directory (default DATA_DIR/haproxy)")
	f.String("log-level", "", "debug, info, warn or error")
	return cmd
}

func newLogger(c agent.LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
