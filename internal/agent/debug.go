package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"time"
)

// DebugConfig holds settings for diagnosing a running agent. Everything in
// it is off by default.
type DebugConfig struct {
	// PprofAddr, when set, serves Go's runtime profiles (net/http/pprof:
	// CPU, heap, allocations, goroutines, mutex and block) on this
	// address. It must be a loopback IP literal with a port
	// ("127.0.0.1:6060", "[::1]:6060"): the profiles carry no token and
	// no authentication, so only a user logged into the node may fetch
	// them. The command line (/debug/pprof/cmdline) is not served.
	PprofAddr string `mapstructure:"pprof_addr"`
}

// maxProfileSeconds bounds one CPU profile or trace, so a local caller
// cannot keep the profiler (and its overhead) running for long.
const maxProfileSeconds = 60

// check refuses a profile address that is not loopback: a hostname could
// resolve to a public address, and 0.0.0.0 or a public IP would hand the
// profiles to anyone who can reach the node.
func (d DebugConfig) check() error {
	if d.PprofAddr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(d.PprofAddr)
	if err != nil {
		return fmt.Errorf("debug.pprof_addr %q: %w", d.PprofAddr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("debug.pprof_addr %q: the host must be a loopback IP (127.0.0.1 or ::1): profiles are served without authentication", d.PprofAddr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("debug.pprof_addr %q: port must be 0-65535", d.PprofAddr)
	}
	return nil
}

// pprofHandler serves net/http/pprof's endpoints but the command line, and
// caps ?seconds= for CPU profiles and traces.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	capped := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if s := r.URL.Query().Get("seconds"); s != "" {
				if n, err := strconv.Atoi(s); err != nil || n < 1 || n > maxProfileSeconds {
					http.Error(w, fmt.Sprintf("seconds must be 1-%d", maxProfileSeconds), http.StatusBadRequest)
					return
				}
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", capped(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", capped(pprof.Trace))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not served", http.StatusNotFound)
	})
	return mux
}

// servePprof serves the profiles on ln until ctx ends.
func servePprof(ctx context.Context, ln net.Listener, logger *slog.Logger) {
	srv := &http.Server{
		Handler:           pprofHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      (maxProfileSeconds + 10) * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("pprof listener stopped", "err", err)
		}
	case <-ctx.Done():
		_ = srv.Close()
		<-errc
	}
}
