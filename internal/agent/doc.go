// Package agent assembles one drawbridge node from the packages below it:
// the raft node and its route table (cluster, fsm), the managed HAProxy
// (haproxy), gossip membership and the floating-IP owner (cluster,
// cluster/floatingip) and the HTTP API (api). It owns what joins them: this
// node's status, the metadata it gossips, its eligibility for the floating
// IP, the wait for every edge node to apply an index, and the cluster view
// the API serves.
//
// cmd/drawbridge keeps the flags, loads the configuration (viper) into a
// Config, and calls New, Run and Shutdown. No package below this one
// imports it.
//
// # Lifecycle
//
// New checks and loads: it creates the data dir and takes its lock (a second
// agent on the same data dir stops here; nothing in the directory is touched
// before), resolves the API tokens
// (generating a --dev token), computes the reserved ports, reads the gossip
// key and the TLS material, and finds the HAProxy binary. It opens no port
// and starts no goroutine, so a configuration error stops the agent before
// it touches the network.
//
// Run starts the components in this order, each step relying on the ones
// before it:
//
//  1. the pid and node-name files in the data dir (drawbridge leave and
//     drawbridge raft recover read them);
//  2. raft: the stores open and the log replays into the route table;
//  3. HAProxy (edge nodes only): the running master is adopted, or one is
//     started from the last configuration on disk, so traffic is served
//     before this node hears from the cluster;
//  4. gossip: memberlist listens and publishes this node's metadata;
//  5. the floating-IP owner is built (edge nodes with a provider);
//  6. the API is built and its listener bound (and, when debug.pprof_addr
//     is set, the loopback listener of the runtime profiles);
//  7. the background loops start (HAProxy feed, which first waits until the
//     log has replayed; lease reaper; membership reconciler; gossip refresh
//     and reconnect; join; the floating-IP owner loop; the profiles'
//     server), then the API serves.
//
// Run returns when its context ends, when Shutdown is called, or when the
// API server fails. It then stops the components, giving up what others
// wait for first:
//
//  1. the floating-IP owner releases the address (at most 5 s), so a peer
//     claims it at once;
//  2. leadership is handed over and gossip says goodbye (at most 3 s) while
//     the API still answers, so forwarded writes find the new leader;
//  3. the background loops and the API server stop, and Run waits for them;
//  4. the HAProxy manager's loop stops. HAProxy itself keeps running and
//     serving: an agent that stops or crashes never stops traffic, and the
//     next agent adopts the running master;
//  5. raft shuts down and its stores close;
//  6. the pid file is removed and the data dir's lock released.
//
// When a start step fails, Run stops only what was started before it, in
// the same order, without the goodbyes of steps 1 and 2 (nothing was
// served yet): gossip shuts down, then steps 4 to 6. A Run that never
// starts (Shutdown first) still releases the lock.
//
// # Lock order
//
// Gossip asks for this node's metadata (Membership.Refresh → nodeInfo.meta)
// holding no lock of its own, and takes Membership.mu only after meta has
// returned. meta reads the HAProxy manager's status, then calls Owner.Claim,
// which holds Owner.mu while it asks nodeInfo.eligible; eligible takes the
// HAProxy manager's status lock and then nodeInfo.mu, one after the other,
// and may look at the other members through Membership.Others (which takes
// Membership.mu briefly and never calls meta). The owner asks gossip for its
// peers, and publishes, without holding Owner.mu. So locks nest only as
//
//	Owner.mu → haproxy.Manager.mu
//	Owner.mu → nodeInfo.mu
//	Owner.mu → Membership.mu
//
// and nothing that holds one of them calls meta. Keep it so: Members (not
// Others) from under Owner.mu, or meta from under Membership.mu, would
// take Owner.mu again and deadlock.
package agent
