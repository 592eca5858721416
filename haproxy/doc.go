// Package haproxy renders, checks and applies the HAProxy configuration of
// one drawbridge node.
//
// It takes plain values (Frontend, Server, Settings) so it knows nothing of
// the route table or of raft. Render is pure and deterministic; Manager owns
// the local HAProxy master-worker process.
//
// Why it works the way it does:
//
//   - HAProxy runs daemonized in its own session (-W -D -S master.sock), so
//     the agent stopping or crashing never stops traffic; a new Manager on the
//     same directory adopts the running master instead of restarting it.
//   - Submissions are coalesced (QuietWindow / MaxDelay) because one
//     `haproxy -c` and one reload per burst is what keeps a busy node cheap;
//     a single goroutine does every check, install and reload, so reloads are
//     strictly serialized (the master CLI refuses connections while the
//     master re-executes).
//   - Nothing reaches haproxy.cfg without passing `haproxy -W -c`. -W because
//     a master-worker accepts a configuration with no frontend, which plain -c
//     refuses.
//   - `haproxy -c` does not bind, so a port held by another process would only
//     fail at reload time and fail the whole reload. The Manager therefore
//     probes every port the live configuration does not serve yet and holds
//     back (Status.FailedPorts) the frontends it cannot bind, retrying them
//     every RetryInterval.
//   - A reload is confirmed through `show proc`: the master's reload counter
//     went up, its [failed: N] counter did not, and a worker with 0 reloads
//     exists. On failure haproxy.cfg.last-good is put back; the old workers
//     keep serving.
//   - When only the servers of existing backends change (and the backend's
//     balance takes dynamic servers), or routes in the dynamic port range
//     (Settings.DynamicPorts, see dynamic.go) are added, changed or removed,
//     the change is made through the runtime API (stats socket) on the
//     running worker at once: no render, no haproxy -c and no reload on the
//     way, so no old worker is left holding long-lived connections and the
//     cost does not grow with the table. The files catch up in the
//     background (files.go). Any error falls back to a reload. A new
//     runtime API connection is used only when the worker `show proc` names
//     as current answers it (runtimeconn.go): just after a reload the old
//     worker still accepts on the shared stats socket for a moment.
//   - Old workers (left by reloads, serving their long-lived connections)
//     are measured every HealthInterval in a loop of their own; above
//     Config.OldWorkersMaxBytes the oldest are stopped first (workers.go).
//   - MaxConn 0 (the default) leaves maxconn out so HAProxy sizes it from its
//     file-descriptor limit; a fixed value needs about two descriptors per
//     connection plus one per listener and server, and a reload that does
//     not fit fails.
package haproxy
