// Package floatingip moves drawbridge's floating IP: the one public address
// users point DNS at, which must sit on a healthy edge node.
//
// The package answers HOW the address moves; the owner loop decides WHO
// holds it (by gossip health, not raft quorum: see "Pairs, quorum and the
// floating IP" in DESIGN.md). The loop talks to one [Provider], built by
// [New] from the `floating_ip` section of the configuration, and calls it
// from a single goroutine: Claim when this node should hold the address,
// Release when it should not (graceful stop, unhealthy), Held to compare
// what it wants with what is. Every call is idempotent.
//
// # Providers
//
//   - "digitalocean" ([DigitalOcean]): assigns a DigitalOcean reserved IP to
//     this droplet (godo) and polls the action until it completes, with
//     backoff on 422 "pending event", 429 and 5xx. The droplet id comes from
//     the config or the metadata service. Held means the API says the IP is
//     assigned to this droplet. Release is a no-op by design: the peer's
//     assign moves the IP in one step, whereas an unassign would take as
//     long and leave the IP pointing nowhere in between; so after Release,
//     Held stays true until the peer's assign completes. It also implements
//     [HolderReporter], so the loop can see who holds the IP before it
//     claims and never take it from a healthy holder.
//   - "vip" ([VIP], Linux): adds the address to a local interface over
//     netlink and announces it with gratuitous ARP; Release deletes it.
//     It implements [Announcer]: the holder announces again every second.
//     Held means the address is on the interface. For LANs, bare metal and
//     tests in network namespaces.
//   - "exec" ([Exec]): runs a user script, `SCRIPT claim|release IP NODE`,
//     serialized, with a timeout (the script's process group is killed) and
//     retries with backoff, logging its output. A script cannot be asked,
//     so Held means the last successful call was a claim; after a failed or
//     cancelled call the state is uncertain, Held is false and the next
//     Claim or Release runs the script again.
//   - "none" ([None]): drawbridge does not manage an address; Held is false.
//
// Secrets: the DigitalOcean token is read from a file or given by cmd (from
// DIGITALOCEAN_TOKEN), travels only in the Authorization header, and never
// reaches a log line; [Config] redacts it when logged.
package floatingip
